#!/usr/bin/env python3
"""B2BUA benchmark: calls per CPU-second of `handover up` (edge + worker,
CPU of both processes) against Kamailio as a stateful proxy (tm + dialog +
record_route; a B2BUA does about twice a proxy's work per call), same SIPp
load, one run each; then memory per active call of the worker, holding many
long calls.

    benches/compare_b2bua.py [--rate 1000] [--seconds 10] [--hold 20000] [--memory-only] [--workers 3]

Loopback only; every run bounded. Needs sipp, kamailio and a release build
(cargo build --release -p handover).
"""
import argparse, os, shutil, socket, subprocess, sys, tempfile, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_edge as ce  # noqa: E402  (helpers: ports, CPU, SIPp runs)


def kamailio_stateful_cfg(tmp, port, backend):
    cfg = os.path.join(tmp, "kamailio-stateful.cfg")
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
loadmodule "tm.so"
loadmodule "rr.so"
loadmodule "maxfwd.so"
loadmodule "siputils.so"
loadmodule "textops.so"
loadmodule "dialog.so"
request_route {{
    if (!mf_process_maxfwd_header("10")) {{ sl_send_reply("483", "Too Many Hops"); exit; }}
    if (has_totag()) {{
        if (loose_route()) {{ t_relay(); exit; }}
        if (is_method("ACK")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
        sl_send_reply("404", "Not here"); exit;
    }}
    if (is_method("CANCEL")) {{ if (t_check_trans()) {{ t_relay(); }} exit; }}
    t_check_trans();
    if (is_method("INVITE")) {{ record_route(); dlg_manage(); }}
    $du = "sip:127.0.0.1:{backend}";
    t_relay();
    exit;
}}
""")
    return cfg


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def free_run(n):
    """The first of `n` consecutive ports free for TCP and UDP on loopback."""
    for _ in range(200):
        base = ce.free_port()
        if base + n > 65535:
            continue
        ok = True
        for i in range(n):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                t = socket.socket(socket.AF_INET, kind)
                try:
                    t.bind(("127.0.0.1", base + i))
                except OSError:
                    ok = False
                finally:
                    t.close()
        if ok:
            return base
    raise SystemExit("no run of free ports")


def start(system, tmp, port, admin, worker_admin, backend, workers=1):
    if system == "handover-up":
        grpc = ["--worker-grpc", f"127.0.0.1:{free_run(workers)}"] if workers > 1 else []
        p = subprocess.Popen(
            [ce.HANDOVER, "up", "--listen", f"127.0.0.1:{port}", "--worker-listen", f"127.0.0.1:{free_run(workers)}",
             "--admin", admin, "--worker-admin", worker_admin, "--route", f"b=127.0.0.1:{backend}",
             "--workers", str(workers)] + grpc,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        p = subprocess.Popen(["kamailio", "-f", kamailio_stateful_cfg(tmp, port, backend), "-DD", "-E",
                              "-x", "tlsf", "-m", "1024", "-M", "64", "-w", tmp, "-Y", tmp],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    return p


def throughput(system, args, tmp):
    b = ce.free_port()
    uas = ce.uas(tmp, b)
    port, admin, wadmin = ce.free_port(), f"127.0.0.1:{ce.free_port()}", f"127.0.0.1:{ce.free_port()}"
    p = start(system, tmp, port, admin, wadmin, b)
    try:
        pids = ce.tree(p.pid)
        if system == "handover-up":
            pids = [x for x in pids if x != p.pid]  # edge and worker, not the supervisor
        c0 = ce.cpu_seconds(pids)
        r = ce.uac(tmp, ("127.0.0.1", port), args.rate, args.rate * args.seconds, args.seconds + 40)
        time.sleep(0.3)
        r["cpu"] = ce.cpu_seconds(pids) - c0
        return r
    finally:
        for x in (uas, p):
            x.terminate()
        for x in (uas, p):
            try:
                x.wait(timeout=5)
            except subprocess.TimeoutExpired:
                x.kill()


def memory(args, tmp):
    """Worker RSS per call with `--hold` calls up at once (long calls); with
    `--workers` N, each worker's (calls spread over them, every call's
    record on every worker)."""
    b = ce.free_port()
    uas = ce.uas(tmp, b)
    n = args.workers
    first = free_run(n)
    port, admin, wadmin = ce.free_port(), f"127.0.0.1:{ce.free_port()}", f"127.0.0.1:{first}"
    p = start("handover-up", tmp, port, admin, wadmin, b, n)
    if n > 1:
        time.sleep(4)  # a leader, and the shard map
    try:
        workers = [x for x in ce.tree(p.pid) if x != p.pid and "worker" in open(f"/proc/{x}/cmdline").read()]
        bases = [rss_kb(w) for w in workers]
        base = bases[0]
        rate = 2000
        seconds = args.hold // rate + 1
        uac = subprocess.Popen(
            ["sipp", "-sf", os.path.join(ce.SIPP, "uac.xml"), "-i", "127.0.0.1", "-p", str(ce.free_port()),
             "-s", "b", "-r", str(rate), "-m", str(args.hold), "-d", "600000", "-nostdin", "-buff_size", "4194304",
             "-timeout", f"{seconds + 60}s", f"127.0.0.1:{port}"],
            cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + seconds + 40
        active = 0
        while time.time() < deadline:
            time.sleep(2)
            active = 0
            for i in range(n):
                text = ce.urllib.request.urlopen(f"http://127.0.0.1:{first + i}/metrics", timeout=5).read().decode()
                active += next((float(l.split()[-1]) for l in text.splitlines()
                                if l.startswith("handover_calls_active ")), 0)
            if active >= args.hold:
                break
        time.sleep(2)
        peaks = [rss_kb(w) for w in workers]
        # Again once the calls' transactions are over (64·T1 = 32 s after
        # the last answer): what held calls cost, not calls being set up.
        time.sleep(40)
        settleds = [rss_kb(w) for w in workers]
        uac.kill()
        per = lambda now: sum(a - b0 for a, b0 in zip(now, bases)) / n * 1024 / max(active, 1)
        if n > 1:
            print(f"workers' RSS kB: idle {bases}, up {peaks}, 40 s later {settleds}", flush=True)
        return {"calls": int(active), "rss_base_kb": base, "rss_kb": peaks[0],
                "bytes_per_call": per(peaks),
                "rss_settled_kb": settleds[0],
                "settled_bytes_per_call": per(settleds)}
    finally:
        uas.kill()
        p.terminate()
        p.wait(timeout=10)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--hold", type=int, default=20000, help="calls held at once for the memory figure")
    ap.add_argument("--memory-only", action="store_true", help="only the memory figure (no Kamailio needed)")
    ap.add_argument("--workers", type=int, default=1,
                    help="workers of `handover up` for the memory figure (per worker, records replicated)")
    args = ap.parse_args()
    if args.memory_only:
        with tempfile.TemporaryDirectory() as tmp:
            mem = memory(args, tmp)
        print(f"Worker memory: {mem['calls']} calls up, RSS {mem['rss_base_kb']} kB idle -> {mem['rss_kb']} kB, "
              f"{mem['bytes_per_call']:,.0f} bytes per active call; 40 s later (their transactions over) "
              f"{mem['rss_settled_kb']} kB, {mem['settled_bytes_per_call']:,.0f} bytes per held call")
        return
    for tool in ["sipp", "kamailio"]:
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed")
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for s in ["handover-up", "kamailio-stateful"]:
            rows[s] = throughput(s, args, tmp)
            print(s, rows[s], flush=True)
        mem = memory(args, tmp)
        print("memory", mem, flush=True)
    k = rows["kamailio-stateful"]
    kcps = k["ok"] / k["cpu"] if k["cpu"] else 0
    print(f"\nOffered {args.rate} calls/s for {args.seconds} s; SIPp uac.xml -> system -> uas.xml; {time.strftime('%Y-%m-%d')}\n")
    print("| system | calls ok | failed | retransmissions | CPU s | calls / CPU-s | vs Kamailio stateful |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for s, r in rows.items():
        cps = r["ok"] / r["cpu"] if r["cpu"] else 0
        print(f"| {s} | {r['ok']} | {r['failed']} | {r['retrans']} | {r['cpu']:.2f} | {cps:,.0f} | {cps / kcps:.2f}x |")
    print(f"\nWorker memory: {mem['calls']} calls up, RSS {mem['rss_base_kb']} kB idle -> {mem['rss_kb']} kB, "
          f"{mem['bytes_per_call']:,.0f} bytes per active call; 40 s later (their transactions over) "
              f"{mem['rss_settled_kb']} kB, {mem['settled_bytes_per_call']:,.0f} bytes per held call")


if __name__ == "__main__":
    main()
