#!/usr/bin/env python3
"""Registrar benchmark: the same SIPp REGISTER load (one new address-of-record
per request, tests/sipp/register_bench.xml) against each system, in one run
on this machine, side by side; then the memory a binding costs.

    benches/compare_registrar.py [--rates 1000,2000] [--seconds 10] [--repeat 3]
                                 [--bindings 20000] [--batches 2] [--raft-log-mb MIB]
                                 [--memory-only] [--out docs/benchmarks-registrar.md]

Systems:
  up-3       handover up --workers 3: bindings replicated with Raft (the 200
             waits for the commit), REGISTERs keyed by AOR over the workers
  up-1       handover up, one worker (no replication)
  kamailio   Kamailio (Debian): registrar + usrloc in memory (db_mode 0),
             save("location"); 2 children (the machine's cores)

Reported per system and rate: registrations answered 200 and failed, CPU
seconds of the system's processes (utime+stime from /proc, `up`'s
supervisor excluded), registrations per CPU-second, the median of the
--repeat runs with their range, and the ratio to Kamailio from the same
round. Memory: --bindings AORs registered in --batches equal batches;
each worker's RSS growth from the end of the first batch to the end of
the last, per binding per replica (every worker holds every binding);
with --raft-log-mb the workers' in-memory Raft log is bounded lower than
its default (32 MiB), so it is compacted during the measure. No authentication on either side (the digest check is the same
HMAC and hash work on each).

Loopback only; every run bounded by its count and a timeout. Needs sipp,
kamailio and a release build (cargo build --release -p handover).
"""
import argparse, os, statistics, subprocess, sys, tempfile, time, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import compare_edge as ce  # noqa: E402  (free ports, CPU of a process tree)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kamailio_cfg(tmp, port):
    cfg = os.path.join(tmp, "kamailio-registrar.cfg")
    with open(cfg, "w") as f:
        f.write(f"""#!KAMAILIO
debug=0
log_stderror=yes
fork=yes
children=2
listen=udp:127.0.0.1:{port}
disable_tcp=yes
auto_aliases=no
mpath="/usr/lib/x86_64-linux-gnu/kamailio/modules/"
loadmodule "pv.so"
loadmodule "sl.so"
loadmodule "tm.so"
loadmodule "siputils.so"
loadmodule "usrloc.so"
loadmodule "registrar.so"
modparam("usrloc", "db_mode", 0)
modparam("registrar", "max_expires", 3600)
request_route {{
    if (method == "REGISTER") {{
        if (!save("location")) {{ sl_reply_error(); }}
        exit;
    }}
    sl_send_reply("404", "Not here");
}}
""")
    return cfg


def start(system, tmp, port, extra=()):
    """Starts `system` on `port`; returns (process, worker admin base or None, workers)."""
    if system.startswith("up"):
        n = int(system.split("-")[1])
        wadmin = ce.free_port()
        # Worker i's admin port is the first's + i: take a run of free ones.
        while any(not port_free(wadmin + i) for i in range(n)):
            wadmin = ce.free_port()
        cmd = [ce.HANDOVER, "up", "--listen", f"127.0.0.1:{port}",
               "--worker-listen", f"127.0.0.1:{ce.free_port()}",
               "--admin", f"127.0.0.1:{ce.free_port()}", "--worker-admin", f"127.0.0.1:{wadmin}",
               "--workers", str(n)]
        if n > 1:
            grpc = ce.free_port()
            while any(not port_free(grpc + i) for i in range(n)):
                grpc = ce.free_port()
            cmd += ["--worker-grpc", f"127.0.0.1:{grpc}", "--data", os.path.join(tmp, f"data-{port}")]
        cmd += list(extra)
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(6.0 if n > 1 else 2.0)
        return p, wadmin, n
    p = subprocess.Popen(["kamailio", "-f", kamailio_cfg(tmp, port), "-DD", "-E", "-x", "tlsf",
                          "-m", "1024", "-M", "64", "-w", tmp, "-Y", tmp],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    return p, None, 0


def port_free(port):
    import socket
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def stop(p):
    p.terminate()
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def register(tmp, port, rate, n, timeout, start_at=0):
    stat = os.path.join(tmp, f"reg-{port}-{rate}-{time.time_ns()}.csv")
    # AOR u<call number>; a second batch (start_at) gets its own prefix,
    # so its AORs are new ones.
    scenario = os.path.join(ROOT, "tests", "sipp", "register_bench.xml")
    if start_at:
        text = open(scenario).read().replace("u[call_number]", f"b{start_at}u[call_number]")
        scenario = os.path.join(tmp, f"register_bench_{start_at}.xml")
        open(scenario, "w").write(text)
    subprocess.run(
        ["sipp", "-sf", scenario, "-i", "127.0.0.1",
         "-p", str(ce.free_port()), "-r", str(rate), "-m", str(n), "-nostdin", "-buff_size", "4194304",
         "-timeout", f"{timeout}s", "-trace_stat", "-fd", "1", "-stf", stat, f"127.0.0.1:{port}"],
        cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=timeout + 30)
    lines = open(stat).read().splitlines()
    head, last = lines[0].split(";"), lines[-1].split(";")
    col = {k: i for i, k in enumerate(head)}
    return int(last[col["SuccessfulCall(C)"]]), int(last[col["FailedCall(C)"]])


def pids_of(p, system):
    pids = ce.tree(p.pid)
    if system.startswith("up"):
        pids = [x for x in pids if x != p.pid]  # edge and workers, not the supervisor
    return pids


def throughput(system, tmp, rate, seconds):
    port = ce.free_port()
    p, _, _ = start(system, tmp, port)
    try:
        pids = pids_of(p, system)
        c0 = ce.cpu_seconds(pids)
        ok, failed = register(tmp, port, rate, rate * seconds, seconds + 30)
        time.sleep(0.3)
        cpu = ce.cpu_seconds(pids) - c0
        return {"ok": ok, "failed": failed, "cpu": cpu, "per_cpu_s": ok / cpu if cpu else 0.0}
    finally:
        stop(p)


def rss_kb(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def gauge(text, name):
    return next((float(l.split()[-1]) for l in text.splitlines() if l.startswith(name + " ")), 0.0)


def memory(tmp, bindings, batches=2, raft_log_mb=None):
    """Bytes per binding per replica: the growth of each worker's RSS from
    the end of the first of `batches` equal batches of new AORs to the end
    of the last, each read once the answers' 64·T1 (32 s) of repeating to
    retransmissions is over. The marginal cost: what the first batch's
    transient peak (answers, Raft batches) left in the allocator is reused
    by the next, the same size at the same rate, as in a cluster that has
    run a while."""
    port = ce.free_port()
    extra = ["--raft-log-mb", str(raft_log_mb)] if raft_log_mb else []
    p, wadmin, n = start("up-3", tmp, port, extra)
    try:
        workers = [x for x in ce.tree(p.pid)
                   if x != p.pid and "worker" in open(f"/proc/{x}/cmdline").read()]
        size = bindings // batches
        oks, failed, before = [], 0, None
        for b in range(batches):
            # Each batch's AORs continue the previous ones' numbering.
            ok, f = register(tmp, port, 2000, size, size // 2000 + 60, start_at=b * size)
            oks.append(ok)
            failed += f
            time.sleep(40.0)
            if b == 0:
                before = {w: rss_kb(w) for w in workers}
        texts = [urllib.request.urlopen(f"http://127.0.0.1:{wadmin + i}/metrics", timeout=5).read().decode()
                 for i in range(n)]
        held = [gauge(t, "handover_registrations_active") for t in texts]
        after = {w: rss_kb(w) for w in workers}
        added = max(sum(oks[1:]), 1)
        per = [(after[w] - before[w]) * 1024 / added for w in workers]
        return {"registered": sum(oks), "failed": failed, "held_per_worker": held,
                "bytes_per_binding": per, "rss_before_kb": list(before.values()),
                "rss_after_kb": list(after.values()), "first": oks[0], "second": sum(oks[1:]),
                "batches": batches, "raft_log_mb": raft_log_mb,
                "log_bytes": [gauge(t, "handover_raft_log_bytes") for t in texts],
                "snapshot_bytes": [gauge(t, "handover_raft_snapshot_bytes") for t in texts]}
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="1000,2000")
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bindings", type=int, default=20000)
    ap.add_argument("--batches", type=int, default=2)
    ap.add_argument("--raft-log-mb", type=int, default=None)
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--systems", default="up-3,up-1,kamailio")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks-registrar.md"))
    args = ap.parse_args()
    for tool in ["sipp", "kamailio"]:
        if subprocess.run(["which", tool], stdout=subprocess.DEVNULL).returncode != 0:
            sys.exit(f"{tool} is not installed (scripts/install-deps.sh installs sipp; apt install kamailio)")
    if not os.path.exists(ce.HANDOVER):
        sys.exit("no release build: cargo build --release -p handover")
    systems = args.systems.split(",")
    rates = [int(r) for r in args.rates.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for rate in ([] if args.memory_only else rates):
            runs = {s: [] for s in systems}
            for i in range(args.repeat):
                # Alternate the order, so no system always runs first.
                order = systems if i % 2 == 0 else list(reversed(systems))
                for s in order:
                    r = throughput(s, tmp, rate, args.seconds)
                    runs[s].append(r)
                    print(f"{s} {rate}/s run {i + 1}: {r['ok']} ok, {r['failed']} failed, "
                          f"{r['cpu']:.2f} CPU-s, {r['per_cpu_s']:.0f}/CPU-s", flush=True)
            for s in systems:
                vals = [r["per_cpu_s"] for r in runs[s]]
                ratios = []
                if "kamailio" in runs and s != "kamailio":
                    ratios = [a["per_cpu_s"] / k["per_cpu_s"] for a, k in zip(runs[s], runs["kamailio"])
                              if k["per_cpu_s"]]
                rows.append({
                    "system": s, "rate": rate, "median": statistics.median(vals),
                    "lo": min(vals), "hi": max(vals),
                    "ok": sum(r["ok"] for r in runs[s]), "failed": sum(r["failed"] for r in runs[s]),
                    "ratio": statistics.median(ratios) if ratios else None,
                    "ratio_lo": min(ratios) if ratios else None, "ratio_hi": max(ratios) if ratios else None,
                })
        mem = memory(tmp, args.bindings, args.batches, args.raft_log_mb) if "up-3" in systems else None
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    out = [
        "# Registrar benchmark",
        "",
        "`benches/compare_registrar.py "
        + ("" if args.memory_only else f"--rates {args.rates} --seconds {args.seconds} --repeat {args.repeat} ")
        + f"--bindings {args.bindings} --batches {args.batches}"
        + (f" --raft-log-mb {args.raft_log_mb}" if args.raft_log_mb else "")
        + (" --memory-only" if args.memory_only else "")
        + f"` on {os.cpu_count()} CPUs ({cpu}), "
        f"{time.strftime('%Y-%m-%d')}. SIPp `register_bench.xml`: one REGISTER per new "
        "address-of-record, answered 200 (handover: after the Raft commit with 3 workers).",
    ]
    if rows:
        out += [
            "",
            "| system | REGISTERs/s offered | registrations per CPU-second (median) | range "
            "| vs Kamailio (median of rounds) | ok | failed |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
    for r in rows:
        ratio = (f"{r['ratio']:.2f}× ({r['ratio_lo']:.2f}–{r['ratio_hi']:.2f})"
                 if r["ratio"] is not None else "—")
        out.append(f"| {r['system']} | {r['rate']} | {r['median']:,.0f} | {r['lo']:,.0f}–{r['hi']:,.0f} | "
                   f"{ratio} | {r['ok']} | {r['failed']} |")
    if mem:
        per = ", ".join(f"{b:.0f}" for b in mem["bytes_per_binding"])
        out += [
            "",
            f"Memory: {mem['registered']} AORs registered to `up --workers 3"
            + (f" --raft-log-mb {mem['raft_log_mb']}" if mem["raft_log_mb"] else "")
            + f"` ({mem['failed']} failed) in {mem['batches']} batches, "
            f"{mem['first']} then {mem['second']} more; bindings held per worker {mem['held_per_worker']}; "
            f"RSS growth per binding per replica after the first batch: {per} bytes "
            f"(workers' RSS {mem['rss_before_kb']} → {mem['rss_after_kb']} KiB); at the end the in-memory "
            f"Raft log held {[int(b) for b in mem['log_bytes']]} bytes and the last snapshot "
            f"{[int(b) for b in mem['snapshot_bytes']]} bytes (on disk only once written).",
        ]
    text = "\n".join(out) + "\n"
    with open(args.out, "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main()
