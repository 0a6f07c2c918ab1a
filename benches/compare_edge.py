#!/usr/bin/env python3
"""Edge benchmark: the same SIPp load through each system, one run each,
on this machine, side by side.

    benches/compare_edge.py [--rate 2000] [--seconds 10] [--out docs/benchmarks-edge.md]

Systems (each forwards to the same two SIPp UASes, hashing on Call-ID):
  direct           SIPp UAC -> one UAS, no proxy (the load generator's own cost)
  edge-uring       handover edge, 1 thread, io_uring
  edge-epoll       handover edge, 1 thread, epoll + recvmmsg
  kamailio         Kamailio (Debian) stateless dispatcher: ds_select_dst hash
                   on Call-ID, record_route, forward(); tlsf allocator, 1 worker
  udp-floor        the edge's I/O loop with no SIP work (datagrams only)

Reported: calls ok/failed, retransmissions, CPU seconds of the proxy
(utime+stime of all its processes from /proc), calls and datagrams per
CPU-second, and ratios to Kamailio. Loopback only; every run is bounded by
--seconds and a timeout. Needs: sipp (sip-tester), kamailio, a release build
(cargo build --release -p handover -p handover-benches).
"""
import argparse, os, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIPP = os.path.join(ROOT, "tests", "sipp")
HANDOVER = os.path.join(ROOT, "target", "release", "handover")
FLOOR = os.path.join(ROOT, "target", "release", "udp-floor")
TICK = os.sysconf("SC_CLK_TCK")


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime (fields 14, 15)
        except FileNotFoundError:
            pass
    return total / TICK


def sched(pids):
    """(kernel CPU seconds, voluntary context switches) of pids, every
    thread's switches summed (a process's own status counts only its main
    thread): how much of a system's CPU is the kernel's, and how often its
    threads sleep and are woken, which a message-per-wakeup design pays per
    datagram."""
    kernel, switches = 0, 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            kernel += int(f[12])
            for t in os.listdir(f"/proc/{pid}/task"):
                for line in open(f"/proc/{pid}/task/{t}/status"):
                    if line.startswith("voluntary_ctxt_switches:"):
                        switches += int(line.split()[1])
        except FileNotFoundError:
            pass
    return kernel / TICK, switches


def tree(pid):
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            kids = open(f"/proc/{p}/task/{p}/children").read().split()
        except FileNotFoundError:
            kids = []
        todo += [int(k) for k in kids]
    return out


def uas(tmp, port):
    return subprocess.Popen(
        ["sipp", "-sf", os.path.join(SIPP, "uas.xml"), "-i", "127.0.0.1", "-p", str(port),
         "-aa", "-nostdin", "-buff_size", "4194304"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def uac(tmp, target, rate, calls, timeout):
    stat = os.path.join(tmp, f"uac-{target[1]}.csv")
    exit = None
    try:
        exit = subprocess.run(
            ["sipp", "-sf", os.path.join(SIPP, "uac.xml"), "-i", "127.0.0.1", "-p", str(free_port()),
             "-s", "b", "-r", str(rate), "-m", str(calls), "-nostdin", "-buff_size", "4194304",
             "-timeout", f"{timeout}s", "-trace_stat", "-fd", "1", "-stf", stat, f"{target[0]}:{target[1]}"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + 30).returncode
    except subprocess.TimeoutExpired:
        # A SIPp that outlives its own -timeout (seen when overloaded) is
        # killed; its last statistics line (written every second) counts.
        print(f"sipp at {rate}/s did not exit within {timeout + 30} s; killed", file=sys.stderr)
    lines = open(stat).read().splitlines()
    head, last = lines[0].split(";"), lines[-1].split(";")
    col = lambda n: int(last[head.index(n)])
    return {"ok": col("SuccessfulCall(C)"), "failed": col("FailedCall(C)"),
            "retrans": col("Retransmissions(C)"), "exit": exit}


def kamailio_cfg(tmp, port, backends):
    lst = os.path.join(tmp, "dispatcher.list")
    with open(lst, "w") as f:
        for b in backends:
            f.write(f"1 sip:127.0.0.1:{b}\n")
    cfg = os.path.join(tmp, "kamailio.cfg")
    with open(cfg, "w") as f:
        f.write(f"""#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=1
listen=udp:127.0.0.1:{port}
disable_tcp=yes
auto_aliases=no
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "pv.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "dispatcher.so"
loadmodule "siputils.so"
loadmodule "textops.so"
modparam("dispatcher", "list_file", "{lst}")
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ forward(); exit; }}
        sl_send_reply("404", "Not here"); exit;
    }}
    if (is_method("INVITE")) {{ record_route(); }}
    if (!ds_select_dst("1", "0")) {{ sl_send_reply("503", "Service Unavailable"); exit; }}
    forward();
    exit;
}}
""")
    return cfg


def scrape(admin, name):
    text = urllib.request.urlopen(f"http://{admin}/metrics", timeout=5).read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines() if l.startswith(name))


def run(system, args, tmp):
    b1, b2 = free_port(), free_port()
    servers = [uas(tmp, b1), uas(tmp, b2)]
    time.sleep(0.5)
    port, admin = free_port(), f"127.0.0.1:{free_port()}"
    proxy, target = None, ("127.0.0.1", port)
    try:
        if system == "direct":
            target = ("127.0.0.1", b1)
        elif system.startswith("edge"):
            io = system.split("-")[1]
            proxy = subprocess.Popen(
                [HANDOVER, "edge", "--drain-s", "0", "--listen", f"127.0.0.1:{port}", "--admin", admin, "--threads", "1",
                 "--io", io, "--backend", f"127.0.0.1:{b1}", "--backend", f"127.0.0.1:{b2}",
                 "--probe-interval-ms", "0"],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            proxy.stdout.readline()
        elif system == "kamailio":
            cfg = kamailio_cfg(tmp, port, [b1, b2])
            proxy = subprocess.Popen(["kamailio", "-f", cfg, "-DD", "-E", "-x", "tlsf", "-m", "512", "-M", "32",
                                      "-w", tmp, "-Y", tmp],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        elif system == "udp-floor":
            proxy = subprocess.Popen([FLOOR, f"127.0.0.1:{port}", f"127.0.0.1:{b1}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            proxy.stdout.readline()
        time.sleep(1.0)
        pids = tree(proxy.pid) if proxy else []
        cpu0 = cpu_seconds(pids)
        t0 = time.time()
        r = uac(tmp, target, args.rate, args.rate * args.seconds, args.seconds + 40)
        r["wall"] = time.time() - t0
        time.sleep(0.3)
        r["cpu"] = cpu_seconds(pids) - cpu0 if proxy else None
        if system.startswith("edge"):
            r["datagrams"] = scrape(admin, "handover_edge_datagrams_received_total")
        elif system == "udp-floor":
            proxy.send_signal(signal.SIGKILL)
            out = proxy.communicate()[0].split()
            r["datagrams"] = float(out[-1]) if out and out[-1].isdigit() else 0.0
        elif system == "kamailio":
            r["datagrams"] = 6.0 * (r["ok"] + r["failed"])  # INVITE 180 200 ACK BYE 200 per call
        return r
    finally:
        for p in servers + ([proxy] if proxy else []):
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000, help="calls per second offered")
    ap.add_argument("--seconds", type=int, default=10, help="length of each run")
    ap.add_argument("--systems", default="direct,edge-uring,edge-epoll,kamailio,udp-floor")
    ap.add_argument("--out", default=None, help="write a markdown table here too")
    args = ap.parse_args()
    for tool in ["sipp", "kamailio"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install {'sip-tester' if tool == 'sipp' else tool}")
    for b in [HANDOVER, FLOOR]:
        if not os.path.exists(b):
            sys.exit(f"{b} missing: cargo build --release -p handover -p handover-benches")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in args.systems.split(","):
            rows[s] = run(s, args, tmp)
            print(s, rows[s], flush=True)
    kam = rows.get("kamailio")
    kam_cps = kam["ok"] / kam["cpu"] if kam and kam["cpu"] else None
    lines = [
        f"Offered: {args.rate} calls/s for {args.seconds} s ({args.rate * args.seconds} calls), "
        f"SIPp uac.xml -> proxy -> 2 x uas.xml, loopback, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}.",
        "",
        "| system | calls ok | failed | retransmissions | proxy CPU s | calls / CPU-s | datagrams / CPU-s | calls/CPU-s vs Kamailio |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for s, r in rows.items():
        cpu = r.get("cpu")
        cps = r["ok"] / cpu if cpu else None
        dps = r.get("datagrams", 0) / cpu if cpu else None
        ratio = f"{cps / kam_cps:.2f}x" if cps and kam_cps and s != "udp-floor" else "-"
        lines.append(
            f"| {s} | {r['ok']} | {r['failed']} | {r['retrans']} | {cpu:.2f} | {cps:,.0f} | {dps:,.0f} | {ratio} |"
            if cpu else f"| {s} | {r['ok']} | {r['failed']} | {r['retrans']} | - | - | - | - |")
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
