#!/usr/bin/env python3
"""Stream benchmark: SIP over TCP and over TLS through the handover edge
and through Kamailio, the same SIPp load, side by side in one run.

    benches/compare_streams.py [--rate 1000] [--seconds 10] [--repeat 2] [--out docs/benchmarks-streams.md]

For each transport (tcp, tls) and each system:
  edge       handover edge, 1 data-plane thread (and its 1 stream thread),
             --listen-tcp / --listen-tls (a certificate made for the run)
  kamailio   Kamailio (Debian; tls.so from kamailio-tls-modules) as a
             stateless proxy: force_rport, dispatcher hash on Call-ID,
             record_route, forward(); tlsf, children=1, tcp_children=1

SIPp uac.xml runs `-t t1` (every call on one connection, as a trunk does)
and calls through the system to two SIPp uas.xml on UDP. SIPp has no TLS
here, so for tls its TCP connection goes through socat, which opens the
TLS connection to the system (socat's CPU is the client's, not counted).
Reported: calls ok/failed, the system's CPU seconds (utime+stime of all
its processes and threads, read once per process from /proc), calls per
CPU-second and the ratio to Kamailio on the same transport; and the
edge's resident memory per open connection (its RSS with N idle TCP
connections minus without, --idle-connections). Loopback only; every run
is bounded in calls and time. Needs: sipp, kamailio, kamailio-tls-modules,
socat, openssl, a release build (cargo build --release -p handover).
"""
import argparse, os, shutil, socket, subprocess, sys, tempfile, time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIPP = os.path.join(ROOT, "tests", "sipp")
HANDOVER = os.path.join(ROOT, "target", "release", "handover")
TICK = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def free_port(kind=socket.SOCK_STREAM):
    while True:
        s = socket.socket(socket.AF_INET, kind)
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        # Free for both UDP and TCP (SIP shares ports).
        other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM)
        try:
            other.bind(("127.0.0.1", p))
            return p
        except OSError:
            continue
        finally:
            other.close()


def tree(pid):
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


def cpu_seconds(pids):
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
            total += int(f[11]) + int(f[12])  # utime, stime: every thread's
        except FileNotFoundError:
            pass
    return total / TICK


def rss_bytes(pid):
    return int(open(f"/proc/{pid}/statm").read().split()[1]) * PAGE


def wait_port(port, within=10.0):
    end = time.time() + within
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"nothing listens on 127.0.0.1:{port}")


def certificate(tmp):
    cert, key = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return cert, key


def uas(tmp, port):
    return subprocess.Popen(
        ["sipp", "-sf", os.path.join(SIPP, "uas.xml"), "-i", "127.0.0.1", "-p", str(port),
         "-aa", "-nostdin", "-buff_size", "4194304"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def uac(tmp, port, rate, calls, timeout):
    stat = os.path.join(tmp, f"uac-{port}.csv")
    try:
        subprocess.run(
            ["sipp", "-sf", os.path.join(SIPP, "uac.xml"), "-i", "127.0.0.1", "-p", str(free_port()),
             "-t", "t1", "-s", "b", "-r", str(rate), "-m", str(calls), "-nostdin",
             "-timeout", f"{timeout}s", "-trace_stat", "-fd", "1", "-stf", stat, f"127.0.0.1:{port}"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + 30)
    except subprocess.TimeoutExpired:
        print(f"sipp did not exit within {timeout + 30} s; killed", file=sys.stderr)
    lines = open(stat).read().splitlines()
    head, last = lines[0].split(";"), lines[-1].split(";")
    col = lambda n: int(last[head.index(n)])
    return {"ok": col("SuccessfulCall(C)"), "failed": col("FailedCall(C)"), "retrans": col("Retransmissions(C)")}


def kamailio_cfg(tmp, transport, port, backends, cert, key):
    lst = os.path.join(tmp, "dispatcher.list")
    with open(lst, "w") as f:
        for b in backends:
            f.write(f"1 sip:127.0.0.1:{b}\n")
    tls_cfg = os.path.join(tmp, "tls-module.cfg")
    with open(tls_cfg, "w") as f:
        f.write(f"[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
                f"private_key = {key}\ncertificate = {cert}\n\n[client:default]\nverify_certificate = no\n")
    udp = free_port(socket.SOCK_DGRAM)
    listen = f"listen=udp:127.0.0.1:{udp}\n" + (
        f"listen=tcp:127.0.0.1:{port}\n" if transport == "tcp" else f"listen=tls:127.0.0.1:{port}\nenable_tls=yes\n")
    tls = f'loadmodule "tls.so"\nmodparam("tls", "config", "{tls_cfg}")\n' if transport == "tls" else ""
    cfg = os.path.join(tmp, f"kamailio-{transport}.cfg")
    with open(cfg, "w") as f:
        f.write(f"""#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=1
tcp_children=1
{listen}auto_aliases=no
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
{tls}loadmodule "pv.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "dispatcher.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "nathelper.so"
modparam("dispatcher", "list_file", "{lst}")
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    force_rport();
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


def run(system, transport, args, tmp, cert, key):
    b1, b2 = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_DGRAM)
    servers = [uas(tmp, b1), uas(tmp, b2)]
    time.sleep(0.5)
    port = free_port()
    procs, shim = [], None
    try:
        if system == "edge":
            udp = free_port(socket.SOCK_DGRAM)
            flag = ["--listen-tcp", f"127.0.0.1:{port}"] if transport == "tcp" else \
                ["--listen-tls", f"127.0.0.1:{port}", "--tls-cert", cert, "--tls-key", key]
            proxy = subprocess.Popen(
                [HANDOVER, "edge", "--drain-s", "0", "--listen", f"127.0.0.1:{udp}", "--admin", "127.0.0.1:0",
                 "--threads", "1", "--io", "epoll", "--backend", f"127.0.0.1:{b1}", "--backend",
                 f"127.0.0.1:{b2}", "--probe-interval-ms", "0",
                 "--max-connections-per-source", str(args.idle_connections + 100)] + flag,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            cfg = kamailio_cfg(tmp, transport, port, [b1, b2], cert, key)
            proxy = subprocess.Popen(["kamailio", "-f", cfg, "-DD", "-E", "-x", "tlsf", "-m", "512", "-M", "64",
                                      "-w", tmp, "-Y", tmp],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(proxy)
        wait_port(port)
        target = port
        if transport == "tls":
            # SIPp -> TCP -> socat -> TLS -> the system.
            target = free_port()
            shim = subprocess.Popen(
                ["socat", f"TCP-LISTEN:{target},bind=127.0.0.1,reuseaddr,fork",
                 f"OPENSSL:127.0.0.1:{port},verify=0"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_port(target)
        time.sleep(1.0)
        pids = tree(proxy.pid)
        cpu0 = cpu_seconds(pids)
        r = uac(tmp, target, args.rate, args.rate * args.seconds, args.seconds + 40)
        time.sleep(0.3)
        r["cpu"] = cpu_seconds(pids) - cpu0
        if system == "edge" and args.idle_connections and transport == "tcp":
            before = rss_bytes(proxy.pid)
            idle = []
            for _ in range(args.idle_connections):
                idle.append(socket.create_connection(("127.0.0.1", port)))
            time.sleep(1.0)
            r["rss_per_conn"] = (rss_bytes(proxy.pid) - before) / args.idle_connections
            for s in idle:
                s.close()
        return r
    finally:
        for p in servers + procs + ([shim] if shim else []):
            if p.poll() is None:
                p.kill()
                p.wait()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000, help="calls per second offered")
    ap.add_argument("--seconds", type=int, default=10, help="length of each run")
    ap.add_argument("--repeat", type=int, default=2, help="runs of each system and transport, alternating")
    ap.add_argument("--idle-connections", type=int, default=2000,
                    help="idle TCP connections held to measure the edge's memory per connection")
    ap.add_argument("--out", default=None, help="write a markdown table here too")
    args = ap.parse_args()
    for tool, pkg in [("sipp", "sip-tester"), ("kamailio", "kamailio"), ("socat", "socat"), ("openssl", "openssl")]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed: apt-get install {pkg}")
    if not os.path.exists("/usr/lib/x86_64-linux-gnu/kamailio/modules/tls.so"):
        sys.exit("Kamailio's tls module is missing: apt-get install kamailio-tls-modules")
    if not os.path.exists(HANDOVER):
        sys.exit(f"{HANDOVER} missing: cargo build --release -p handover")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        cert, key = certificate(tmp)
        for transport in ["tcp", "tls"]:
            for i in range(args.repeat):
                for system in (["edge", "kamailio"] if i % 2 == 0 else ["kamailio", "edge"]):
                    r = run(system, transport, args, tmp, cert, key)
                    r.update(system=system, transport=transport, run=i + 1)
                    rows.append(r)
                    print(r, flush=True)
    lines = [
        f"Offered: {args.rate} calls/s for {args.seconds} s ({args.rate * args.seconds} calls) per run, SIPp uac.xml "
        f"`-t t1` -> system -> 2 x uas.xml (UDP), loopback, {os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}; "
        "for tls SIPp's connection goes through socat (not counted).",
        "",
        "| transport | system | run | calls ok | failed | retransmissions | system CPU s | calls / CPU-s | vs Kamailio, same transport and run |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        cps = r["ok"] / r["cpu"] if r["cpu"] else 0.0
        kam = next((k for k in rows if k["system"] == "kamailio" and k["transport"] == r["transport"]
                    and k["run"] == r["run"]), None)
        kcps = kam["ok"] / kam["cpu"] if kam and kam["cpu"] else 0.0
        ratio = f"{cps / kcps:.2f}x" if kcps and r["system"] == "edge" else "-"
        lines.append(f"| {r['transport']} | {r['system']} | {r['run']} | {r['ok']} | {r['failed']} | {r['retrans']} | "
                     f"{r['cpu']:.2f} | {cps:,.0f} | {ratio} |")
    mem = [r["rss_per_conn"] for r in rows if "rss_per_conn" in r]
    if mem:
        per = sum(mem) / len(mem)
        lines += ["", f"Edge memory per idle TCP connection: {per / 1024:.1f} KiB "
                      f"({args.idle_connections} connections, resident set before and after), "
                      f"about {(1 << 30) / per:,.0f} connections per GiB."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table + "\n")


if __name__ == "__main__":
    main()
