//! Replicated calls (issue 6): `handover up --workers 3` with SIPp as every
//! phone; the worker carrying the most calls is killed with SIGKILL while
//! its calls are up. Every call must then still be re-INVITEd (hold and
//! resume, from either side) and hung up (from either side), each request
//! reaching the other party through the worker that took the shard over.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::*;

/// Active calls on worker `i` (admin port = first + i).
fn active(host: &str, port: u16, i: u16) -> f64 {
    let (code, text) = http_get(&format!("http://{host}:{}/metrics", port + i));
    if code != 200 {
        return 0.0;
    }
    metric(&text, "handover_calls_active")
}

/// Waits (10 s at most) until the three workers whose admin ports are
/// `port` + i hold `calls` calls between them, then `settle_ms` more (the
/// last answers reach their callers: a 2xx waits for its commit); each
/// worker's calls and the busiest worker.
pub(crate) fn busiest_when_up(
    host: &str,
    port: u16,
    calls: f64,
    settle_ms: u64,
) -> (Vec<f64>, u16) {
    assert!(
        wait_for(Duration::from_secs(10), || (0..3)
            .map(|i| active(host, port, i))
            .sum::<f64>()
            >= calls),
        "all calls up"
    );
    std::thread::sleep(Duration::from_millis(settle_ms));
    let per: Vec<f64> = (0..3).map(|i| active(host, port, i)).collect();
    let w = (0..3u16)
        .max_by(|&a, &b| per[a as usize].total_cmp(&per[b as usize]))
        .unwrap();
    (per, w)
}

fn adopted(host: &str, port: u16, i: u16) -> f64 {
    let (code, text) = http_get(&format!("http://{host}:{}/metrics", port + i));
    if code != 200 {
        return 0.0;
    }
    metric(&text, "handover_calls_adopted_total")
}

/// `handover up --workers 3` (replicated, its data under `dir`) with these
/// routes, once every worker is ready (it has the map and has caught up)
/// and all three are in the map, so no shard moves while calls are set
/// up. Returns the cluster and its first worker's admin host and port
/// (worker i's is port + i).
pub(crate) fn three_workers(dir: &std::path::Path, routes: &[String]) -> (Cluster, String, u16) {
    let grpc = format!("127.0.0.1:{}", free_tcp_ports(3));
    let data = dir.join("data");
    let c = cluster(
        routes,
        &[
            "--workers",
            "3",
            "--worker-grpc",
            &grpc,
            "--data",
            data.to_str().unwrap(),
        ],
    );
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let (host, port) = (host.to_string(), port.parse::<u16>().unwrap());
    assert!(
        wait_for(Duration::from_secs(15), || (0..3)
            .all(|i| http_get(&format!("http://{host}:{}/readyz", port + i))
                .0
                == 200)),
        "the three workers became ready"
    );
    wait_members(&grpc, 3);
    (c, host, port)
}

/// Issue 6's failover test: hundreds of calls up over three replicated
/// workers, the one with the most calls SIGKILLed, and every call carried
/// on through the survivors. 150 calls are held, resumed and hung up by
/// the caller, starting 4.5 s after each answer (so the first re-INVITEs of
/// the dead worker's calls go out just after the kill, while nobody serves
/// them: SIPp retransmits until a survivor takes over, and the time from
/// the kill to the first of them answered is what a user waits); 150 are
/// held, resumed and hung up by the callee 15 s after its answer. Each BYE
/// must reach the other party: the callers' callee logs a BYE for each of
/// its 150 calls, and the callees' callers only finish on one.
#[test]
fn a_killed_workers_calls_are_reinvited_and_hung_up_from_both_sides() {
    const CALLS: u32 = 150;
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (held, holds) = (free_udp_port(), free_udp_port());
    let mut uas_held = sipp_uas_traced_with(dir.path(), "uas_held.xml", held);
    let mut uas_holds = sipp_uas_with(dir.path(), "uas_holds_later.xml", holds);
    let (c, host, port) = three_workers(
        dir.path(),
        &[
            format!("held=127.0.0.1:{held}"),
            format!("holds=127.0.0.1:{holds}"),
        ],
    );
    let host = host.as_str();
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (uac_a, stat_a) = sipp_uac_with(
        dir.path(),
        "uac_hold_later.xml",
        "held",
        edge,
        100,
        CALLS,
        4_500,
    );
    let (uac_b, stat_b) = sipp_uac_with(dir.path(), "uac_held.xml", "holds", edge, 100, CALLS, 0);
    let all = f64::from(2 * CALLS);
    let up = wait_for(Duration::from_secs(12), || {
        (0..3).map(|i| active(host, port, i)).sum::<f64>() >= all
    });
    // Let the last answers reach the callers: a call in setup when its
    // worker dies is the caller's to retry (its INVITE is retransmitted to
    // the new owner), not one to take over.
    std::thread::sleep(Duration::from_millis(500));
    let per: Vec<f64> = (0..3).map(|i| active(host, port, i)).collect();
    assert!(up, "all {all} calls were answered before the kill: {per:?}");
    let victim = (0..3u16)
        .max_by(|&a, &b| per[a as usize].total_cmp(&per[b as usize]))
        .unwrap();
    let victim_calls = per[victim as usize];
    assert!(victim_calls > 0.0, "{per:?}");
    // A call A heard 200 for is committed already (the 2xx waits for it).
    // SIGKILL: no drain, no goodbye.
    assert!(sigkill_worker(c.worker + victim), "worker {victim} killed");
    let t0 = Instant::now();
    let killed_at = day_seconds(std::time::SystemTime::now());
    let survivors: Vec<u16> = (0..3).filter(|&i| i != victim).collect();
    let took_over = wait_for(Duration::from_secs(14), || {
        survivors
            .iter()
            .map(|&i| adopted(host, port, i))
            .sum::<f64>()
            >= victim_calls
    });
    let takeover = t0.elapsed();
    let adopted_n: f64 = survivors.iter().map(|&i| adopted(host, port, i)).sum();
    assert!(
        took_over,
        "the survivors took over the victim's {victim_calls} calls (adopted {adopted_n})"
    );
    let a = finish_uac(uac_a, &stat_a);
    let b = finish_uac(uac_b, &stat_b);
    // From the callers' message log: each call's first hold re-INVITE and
    // the 200 that answered it. Those of the dead worker's calls sent
    // before the takeover wait for it; the others are answered at once.
    let msgs = sipp_log(&sipp_message_logs_of(dir.path(), "uac_hold_later_"));
    // Per call: 0 until the INVITE's 200, 1 until the hold goes out, 2 (with
    // its first send time) until its 200, then 3. Retransmissions of the
    // INVITE fall in 0, of the hold in 2.
    let mut phase: std::collections::HashMap<&str, (u8, f64)> = Default::default();
    let mut waits: Vec<(f64, f64)> = Vec::new(); // (first re-INVITE, its 200), day seconds
    for (t, out, first, call_id) in &msgs {
        let e = phase.entry(call_id.as_str()).or_insert((0, 0.0));
        match (e.0, *out) {
            (0, false) if first.starts_with("SIP/2.0 200") => e.0 = 1,
            (1, true) if first.starts_with("INVITE ") => *e = (2, *t),
            (2, false) if first.starts_with("SIP/2.0 200") => {
                waits.push((e.1, *t));
                e.0 = 3;
            }
            _ => {}
        }
    }
    let first_hold = waits.iter().map(|w| w.0).fold(f64::INFINITY, f64::min);
    assert!(
        killed_at < first_hold,
        "the kill ({killed_at:.3}) must come before the first hold re-INVITE ({first_hold:.3}); \
         here the calls were too slow to come up"
    );
    let (delayed, first_after, longest) = gap_waits(&waits, killed_at);
    // The BYEs that reached the callers' callee, one per call.
    let byes: std::collections::HashSet<String> =
        sipp_log(&sipp_message_logs_of(dir.path(), "uas_held_"))
            .into_iter()
            .filter(|(_, out, first, _)| !*out && first.starts_with("BYE "))
            .map(|(_, _, _, call_id)| call_id)
            .collect();
    eprintln!(
        "failover: worker {} killed with {victim_calls} of {all} calls up; all adopted {:.1} s after the kill; \
         {} hold re-INVITEs waited for the takeover, the first answered {:.1} s after the kill (longest wait {:.1} s); \
         callers' hold/resume/BYE: {}/{CALLS} ok, callees' hold/resume/BYE: {}/{CALLS} ok; BYEs at the callee: {}",
        victim + 1,
        takeover.as_secs_f64(),
        delayed,
        first_after,
        longest,
        a.successful,
        b.successful,
        byes.len()
    );
    assert_eq!(
        (a.exit, a.successful, a.failed),
        (Some(0), u64::from(CALLS), 0),
        "callers: {a:?}"
    );
    assert_eq!(
        (b.exit, b.successful, b.failed),
        (Some(0), u64::from(CALLS), 0),
        "callees' side: {b:?}"
    );
    assert_eq!(
        waits.len(),
        CALLS as usize,
        "every hold re-INVITE answered (callers' log)"
    );
    assert!(
        delayed > 0,
        "some of the dead worker's calls sent their re-INVITE before the takeover: {waits:?}"
    );
    assert_eq!(
        byes.len(),
        CALLS as usize,
        "each caller's BYE reached its callee"
    );
    // Both callees finished every call as their scenarios say (the
    // callers' BYEs at one, the callee-side hold, resume and BYE at the
    // other), and each call got exactly one BYE.
    uas_held.expect_calls(u64::from(CALLS));
    uas_holds.expect_calls(u64::from(CALLS));
    assert_one_bye_per_call(
        &sipp_message_logs_of(dir.path(), "uas_held_"),
        CALLS as usize,
    );
    // Every call ended on a survivor: none is left up.
    let left: f64 = survivors.iter().map(|&i| active(host, port, i)).sum();
    assert_eq!(left, 0.0, "calls still up after every BYE");
}

/// Asserts, from a callee's SIPp message log, that `calls` calls each got
/// exactly one BYE transaction (retransmissions share a branch): a BYE
/// relayed twice, by a worker that lost its lease and by the new owner,
/// would show up as a second one.
fn assert_one_bye_per_call(log: &str, calls: usize) {
    let per = bye_branches_per_call(log);
    let twice: Vec<_> = per.iter().filter(|(_, b)| b.len() != 1).collect();
    assert!(
        twice.is_empty(),
        "calls with more than one BYE at the callee: {twice:?}"
    );
    assert_eq!(per.len(), calls, "calls that got their BYE at the callee");
}

/// `handover status --json` of the worker at `grpc`.
fn status(grpc: &str) -> Option<serde_json::Value> {
    let o = admin_cmd("status", grpc, &["--json"]);
    serde_json::from_slice(&o.stdout).ok()
}

fn hangups(host: &str, port: u16, i: u16) -> f64 {
    let (_, text) = http_get(&format!("http://{host}:{}/metrics", port + i));
    metric(&text, "handover_calls_ended_total{cause=\"hangup\"}")
}

#[test]
fn the_raft_leader_killed_under_calls_comes_back_and_catches_up() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas(dir.path(), b);
    let base = free_tcp_ports(3);
    let grpc = |i: u16| format!("127.0.0.1:{}", base + i);
    let data = dir.path().join("data");
    let c = cluster(
        &[format!("b=127.0.0.1:{b}")],
        &[
            "--workers",
            "3",
            "--worker-grpc",
            &grpc(0),
            "--data",
            data.to_str().unwrap(),
        ],
    );
    wait_members(&grpc(0), 3);
    let leader = status(&grpc(0)).unwrap()["leader"].as_u64().unwrap() as u16;
    assert!((1..=3).contains(&leader));
    let li = leader - 1;
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    // 100 calls of 8 s at 25/s: the leader dies while they are up. (A call
    // still in setup on a killed worker is lost: its held 2xx goes nowhere;
    // these tests kill only once every answer reached its caller.)
    let (uac, stat) = sipp_uac(dir.path(), edge, 25, 100, 8_000);
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || (0..3)
            .map(|i| active(host, port, i))
            .sum::<f64>()
            >= 100.0),
        "all calls up"
    );
    std::thread::sleep(Duration::from_millis(500));
    // The premise: the leader carries calls of its own when it dies.
    let leader_calls = active(host, port, li);
    assert!(
        leader_calls > 0.0,
        "the leader (worker {leader}) had calls up when it was killed"
    );
    let pid = worker_pid(c.worker + li);
    let argv: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    signal(pid, "9");
    let t0 = Instant::now();
    let other = grpc(if li == 0 { 1 } else { 0 });
    assert!(
        wait_for(Duration::from_secs(10), || status(&other).is_some_and(
            |s| {
                let l = s["leader"].as_u64().unwrap_or(0);
                l != 0 && l != u64::from(leader)
            }
        )),
        "a new leader"
    );
    let election = t0.elapsed();
    let r = finish_uac(uac, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 100, 0), "{r:?}");
    uas.expect_calls(100);
    // The killed worker comes back with its log and catches up.
    let commit = status(&other).unwrap()["commit"].as_u64().unwrap();
    let _back = Proc(
        std::process::Command::new(&argv[0])
            .args(&argv[1..])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    let t1 = Instant::now();
    assert!(
        wait_for(Duration::from_secs(15), || status(&grpc(li)).is_some_and(
            |s| {
                s["applied"].as_u64().unwrap_or(0) >= commit
                    && s["members_up"].as_array().is_some_and(|m| m.len() == 3)
            }
        )),
        "the restarted worker caught up to commit {commit} and rejoined"
    );
    let catch_up = t1.elapsed();
    let (a, o) = (status(&grpc(li)).unwrap(), status(&other).unwrap());
    assert_eq!(a["calls"], o["calls"], "the same call table");
    assert_eq!(a["epoch"], o["epoch"], "the same map");
    eprintln!(
        "leader failover: worker {leader} (the leader) killed with {leader_calls} calls up; new leader after {:.1} s; \
         100/100 calls ok; restarted, it caught up to commit {commit} and rejoined in {:.1} s",
        election.as_secs_f64(),
        catch_up.as_secs_f64()
    );
}

#[test]
fn a_worker_paused_past_its_lease_serves_nothing_when_it_wakes() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas_traced(dir.path(), b);
    let base = free_tcp_ports(3);
    let grpc0 = format!("127.0.0.1:{base}");
    let c = cluster(
        &[format!("b=127.0.0.1:{b}")],
        &["--workers", "3", "--worker-grpc", &grpc0],
    );
    wait_members(&grpc0, 3);
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    // 45 calls hung up by the caller 12 s after the answer: the freeze
    // below comes within a few seconds of the answers, so no BYE can reach
    // the worker between reading its hangup count and stopping it (with a
    // 4 s hold a slow CI machine had BYEs flowing at that moment and one
    // slipped in between the two).
    let (uac, stat) = sipp_uac(dir.path(), edge, 30, 45, 12_000);
    // Let the last answers reach the callers (a 2xx waits for its commit).
    let (per, w) = busiest_when_up(host, port, 45.0, 500);
    let before = hangups(host, port, w);
    let pid = worker_pid(c.worker + w);
    // Frozen (a long GC pause, a stalled VM, a cut network): what reaches
    // it queues in its socket until the cluster gives its shards away. The
    // callers' BYEs come after the takeover, so they reach it only if the
    // edge happened to follow the map from this very worker; a request
    // sent straight to it stands for what any peer had in flight.
    signal(pid, "STOP");
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let me = probe.local_addr().unwrap();
    let options = format!(
        "OPTIONS sip:{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK-frozen-1\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@{me}>;tag=frozen\r\nTo: <sip:{edge}>\r\n\
         Call-ID: frozen-probe-1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    );
    probe
        .send_to(options.as_bytes(), ("127.0.0.1", c.worker + w))
        .unwrap();
    // And a BYE for every call, as the edge would forward the caller's,
    // straight to the frozen worker: it owns some of these calls, and
    // when it wakes its lease is long over. Relayed, one would reach the
    // callee before the caller's own BYE (through the new owner), which
    // the callee's log shows as a second BYE or a dead call's message.
    let byes = inflight_byes(&sipp_message_logs_of(dir.path(), "uac_"), edge, me);
    assert_eq!(byes.len(), 45, "a BYE for each call from the callers' log");
    for bye in &byes {
        probe
            .send_to(bye.as_bytes(), ("127.0.0.1", c.worker + w))
            .unwrap();
    }
    let r = finish_uac(uac, &stat);
    signal(pid, "CONT");
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 45, 0),
        "{r:?}: {}",
        sipp_errors(dir.path())
    );
    // Awake: its lease ended long ago, so what queued is dropped, not
    // relayed behind the new owner's back. Judged by the peers first: the
    // callee got exactly one BYE per call and nothing a finished call
    // should not get (a dead-call or unexpected event in its log), and
    // nothing answered the requests sent to the frozen worker.
    std::thread::sleep(Duration::from_millis(1500));
    uas.expect_calls(45);
    assert_one_bye_per_call(&sipp_message_logs_of(dir.path(), "uas_"), 45);
    probe
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 2048];
    if let Ok((n, _)) = probe.recv_from(&mut buf) {
        panic!(
            "the woken worker answered a request that queued while its lease ran out:\n{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    // Its own account agrees.
    let (_, text) = http_get(&format!("http://{host}:{}/metrics", port + w));
    assert_eq!(
        metric(&text, "handover_calls_ended_total{cause=\"hangup\"}"),
        before,
        "the paused worker hung up nothing after waking"
    );
    assert!(
        metric(&text, "handover_worker_not_served_total") >= 46.0,
        "it dropped what queued while it was frozen (the OPTIONS and 45 BYEs at least)"
    );
    // And it rejoins.
    wait_members(&grpc0, 3);
    eprintln!(
        "pause: worker {} frozen with {} calls; 45/45 calls hung up through the others; on waking it dropped {} queued datagrams and rejoined",
        w + 1,
        per[w as usize],
        metric(&text, "handover_worker_not_served_total")
    );
}

/// One BYE per call in a UAC's message log (`uac.xml`: its INVITE's 200
/// gives the dialog), as the edge forwards a caller's BYE to a worker: the
/// edge's Via with the call's key on top, then a Via naming `reply_to`
/// (so an answer, if any comes, reaches the test).
fn inflight_byes(
    log: &str,
    edge: std::net::SocketAddr,
    reply_to: std::net::SocketAddr,
) -> Vec<String> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for block in log
        .split("----------------------------------------------- ")
        .skip(1)
    {
        let lines: Vec<&str> = block.lines().collect();
        if !lines.get(1).is_some_and(|l| l.contains("received")) {
            continue;
        }
        let body: Vec<&str> = lines[2..]
            .iter()
            .copied()
            .skip_while(|l| l.is_empty())
            .collect();
        let header = |name: &str| {
            body.iter()
                .take_while(|l| !l.is_empty())
                .find_map(|l| l.strip_prefix(&format!("{name}:")))
                .map(|v| v.trim().to_string())
        };
        if !body.first().is_some_and(|l| l.starts_with("SIP/2.0 200"))
            || !header("CSeq").is_some_and(|c| c.ends_with("INVITE"))
        {
            continue;
        }
        let (Some(cid), Some(from), Some(to), Some(contact)) = (
            header("Call-ID"),
            header("From"),
            header("To"),
            header("Contact"),
        ) else {
            continue;
        };
        if !seen.insert(cid.clone()) {
            continue;
        }
        let uri = contact
            .trim_start_matches('<')
            .split('>')
            .next()
            .unwrap_or("")
            .to_string();
        let k = uri
            .split(";k=")
            .nth(1)
            .map(|k| k.split([';', '>']).next().unwrap_or(""))
            .unwrap_or("");
        out.push(format!(
            "BYE {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {edge};branch=z9hG4bK-inflight-{n};k={k}\r\n\
             Via: SIP/2.0/UDP {reply_to};branch=z9hG4bK-inflight-a-{n}\r\nMax-Forwards: 69\r\n\
             From: {from}\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            n = out.len()
        ));
    }
    out
}

/// The first lines of every SIPp error file in `dir`.
fn sipp_errors(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        if e.path().extension().is_some_and(|x| x == "err") {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            out.push_str(&text.lines().take(12).collect::<Vec<_>>().join("\n"));
        }
    }
    out
}

#[test]
fn sigterm_drains_a_worker_and_its_calls_go_on_elsewhere() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas(dir.path(), b);
    let base = free_tcp_ports(3);
    let grpc0 = format!("127.0.0.1:{base}");
    let c = cluster(
        &[format!("b=127.0.0.1:{b}")],
        &["--workers", "3", "--worker-grpc", &grpc0],
    );
    wait_members(&grpc0, 3);
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    // 60 calls hung up by the caller 8 s after the answer.
    let (uac, stat) = sipp_uac(dir.path(), edge, 30, 60, 8_000);
    let (per, w) = busiest_when_up(host, port, 60.0, 500);
    let pid = worker_pid(c.worker + w);
    let t0 = Instant::now();
    signal(pid, "TERM");
    // It hands its shards over, then exits on its own.
    assert!(
        wait_for(Duration::from_secs(15), || exited(pid)),
        "the worker exited after draining"
    );
    let took = t0.elapsed();
    let survivors: Vec<u16> = (0..3).filter(|&i| i != w).collect();
    // They serve its shards once the handover wait (a lease) has passed.
    assert!(
        wait_for(Duration::from_secs(10), || {
            survivors
                .iter()
                .map(|&i| adopted(host, port, i))
                .sum::<f64>()
                >= per[w as usize]
        }),
        "the others took over all its {} calls",
        per[w as usize]
    );
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 60, 0),
        "{r:?}: {}",
        sipp_errors(dir.path())
    );
    uas.expect_calls(60);
    eprintln!(
        "drain: worker {} (SIGTERM) handed over {} calls and exited in {:.1} s; 60/60 calls hung up through the others",
        w + 1,
        per[w as usize],
        took.as_secs_f64()
    );
}

/// `handover drain` on a worker's local admin socket (what an operator
/// runs in its pod before maintenance): the worker hands its shards and
/// calls to the others and stays up, serving none and not ready, while
/// every call goes on to its BYE through the others on both sides.
#[test]
fn handover_drain_on_the_admin_socket_hands_a_worker_over_and_it_stays_up() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas(dir.path(), b);
    let mut c = crate::kube::by_name(dir.path(), b, &[]);
    let host = "127.0.0.1";
    // 40 calls hung up by the caller 8 s after the answer.
    let (uac, stat) = sipp_uac(dir.path(), c.edge_sip, 20, 40, 8_000);
    let (per, w) = busiest_when_up(host, c.admin, 40.0, 500);
    let ready = |i: u16| http_get(&format!("http://{host}:{}/readyz", c.admin + i)).0;
    assert_eq!(ready(w), 200, "ready before the drain");
    let id = (w + 1).to_string();
    let data = dir.path().to_string_lossy().into_owned();
    let o = handover(&["drain", "--data", &data, "--id", &id]);
    assert!(o.status.success(), "drain: {}", stderr(&o));
    assert!(stdout(&o).contains("drained"), "{}", stdout(&o));
    let survivors: Vec<u16> = (0..3).filter(|&i| i != w).collect();
    assert!(
        wait_for(Duration::from_secs(10), || summed(
            host,
            c.admin,
            &survivors,
            "handover_calls_adopted_total"
        ) >= per[w as usize]),
        "the others took over its {} calls",
        per[w as usize]
    );
    assert!(
        c._workers[w as usize].0.try_wait().unwrap().is_none(),
        "the drained worker is still running"
    );
    assert!(
        wait_for(Duration::from_secs(3), || ready(w) == 503),
        "a drained worker is not ready"
    );
    let other = format!("127.0.0.1:{}", c.grpc + survivors[0]);
    let v: serde_json::Value =
        serde_json::from_slice(&admin_cmd("status", &other, &["--json"]).stdout).unwrap();
    let up: Vec<u64> = v["members_up"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(serde_json::Value::as_u64)
        .collect();
    assert!(!up.contains(&u64::from(w + 1)), "members up: {up:?}");
    // Out of the map, still a Raft voter: a drain is not a leave (the
    // worker comes back with the same id after its restart).
    assert_eq!(v["voters"], serde_json::json!([1, 2, 3]), "{v}");
    assert_eq!(v["learners"], serde_json::json!([]), "{v}");
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 40, 0),
        "{r:?}: {}",
        sipp_errors(dir.path())
    );
    uas.expect_calls(40);
    eprintln!(
        "handover drain: worker {} handed over {} calls and stayed up (not ready); 40/40 calls hung up through the others",
        w + 1,
        per[w as usize]
    );
}

/// The project's seed flow after a failover: A calls B; the worker with
/// the most of these calls is SIGKILLed; then B sends REFER (Refer-To: C)
/// on its call, A answers 202 and NOTIFYs, B hangs up, A calls C, who
/// answers. The REFER, NOTIFY and BYE of the killed worker's calls go
/// through the workers that took its shards over.
#[test]
fn a_killed_workers_calls_are_transferred_through_the_others() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (b_port, c_port) = (free_udp_port(), free_udp_port());
    let mut c_uas = sipp_uas_traced(dir.path(), c_port);
    let (c, host, port) = three_workers(
        dir.path(),
        &[
            format!("b=127.0.0.1:{b_port}"),
            format!("c=127.0.0.1:{c_port}"),
        ],
    );
    let host = host.as_str();
    let edge = format!("127.0.0.1:{}", c.sip);
    let sf = |f: &str| scenario(f).to_string_lossy().into_owned();
    // Its message log's times are in UTC, like the test's clock.
    let sipp = |args: &[&str]| sipp(dir.path(), args);
    let calls = 30;
    let target = format!("sip:c@127.0.0.1:{c_port}");
    let mut b = sipp(&[
        "-sf",
        &sf("transfer_b_later.xml"),
        "-i",
        "127.0.0.1",
        "-p",
        &b_port.to_string(),
        "-m",
        &calls.to_string(),
        // REFER 4 s after each answer: just after the kill below.
        "-d",
        "4000",
        "-key",
        "target",
        &target,
        &edge,
    ]);
    std::thread::sleep(Duration::from_millis(300));
    let a_port = free_udp_port().to_string();
    let mut a = sipp(&[
        "-sf",
        &sf("transfer_a.xml"),
        "-i",
        "127.0.0.1",
        "-p",
        &a_port,
        "-s",
        "b",
        "-m",
        &calls.to_string(),
        "-r",
        "30",
        &edge,
    ]);
    // Answered calls per worker (a counter: the calls end soon after).
    let answered = |i: u16| summed(host, port, &[i], "handover_calls_answered_total");
    let up = wait_for(Duration::from_secs(8), || {
        (0..3).map(answered).sum::<f64>() >= f64::from(calls)
    });
    // Let the last answers reach the callers; the first REFERs go 4 s
    // after their answers, after the kill.
    std::thread::sleep(Duration::from_millis(300));
    let per: Vec<f64> = (0..3).map(answered).collect();
    if !up {
        // What the phones saw, for the failure message.
        for e in std::fs::read_dir(dir.path()).unwrap() {
            let p = e.unwrap().path();
            let name = p.to_string_lossy().into_owned();
            if name.ends_with("errors.log") || name.ends_with("messages.log") {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                eprintln!("{name}:\n{}", &text[..text.len().min(3000)]);
            }
        }
    }
    assert!(
        up,
        "all {calls} A-B calls answered before the kill: {per:?}"
    );
    let victim = (0..3u16)
        .max_by(|&x, &y| per[x as usize].total_cmp(&per[y as usize]))
        .unwrap();
    let victim_calls = per[victim as usize];
    assert!(victim_calls > 0.0, "{per:?}");
    assert!(sigkill_worker(c.worker + victim), "worker {victim} killed");
    let t0 = Instant::now();
    let killed_at = day_seconds(std::time::SystemTime::now());
    let survivors: Vec<u16> = (0..3).filter(|&i| i != victim).collect();
    let took_over = wait_for(Duration::from_secs(10), || {
        summed(host, port, &survivors, "handover_calls_adopted_total") >= victim_calls
    });
    let takeover = t0.elapsed();
    assert!(
        took_over,
        "the survivors took over the victim's {victim_calls} calls"
    );
    let end = std::time::SystemTime::now() + Duration::from_secs(90);
    let (a_exit, b_exit) = loop {
        if let (Some(x), Some(y)) = (a.0.try_wait().unwrap(), b.0.try_wait().unwrap()) {
            break (x.code(), y.code());
        }
        assert!(
            std::time::SystemTime::now() < end,
            "A and B finish within 90 s"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let series =
        "handover_transfers_total{kind=\"blind\",mode=\"passthrough\",result=\"accepted\"}";
    // Counters reach /metrics at the workers' next stats flush.
    wait_for(Duration::from_secs(3), || {
        summed(host, port, &survivors, series) >= f64::from(calls)
    });
    let accepted = summed(host, port, &survivors, series);
    if accepted < f64::from(calls) {
        for &i in &survivors {
            let text = http_get(&format!("http://{host}:{}/metrics", port + i)).1;
            eprintln!(
                "worker {i}: {}",
                text.lines()
                    .filter(|l| l.starts_with("handover_transfers_total")
                        || l.starts_with("handover_calls_adopted")
                        || l.starts_with("handover_calls_answered"))
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
    }
    // Calls C got: distinct Call-IDs of the INVITEs in its log.
    let c_invites = sipp_log(&sipp_message_logs_of(dir.path(), "uas_"))
        .into_iter()
        .filter(|(_, out, first, _)| !*out && first.starts_with("INVITE "))
        .map(|(_, _, _, call_id)| call_id)
        .collect::<std::collections::HashSet<_>>()
        .len();
    // From B's message log: when each call's REFER first went out and
    // when its 202 came back. Calls of the killed worker wait for the
    // takeover (B retransmits); the others are answered at once.
    let b_log = sipp_message_logs_of(dir.path(), "transfer_b_later_");
    assert!(!b_log.is_empty(), "B's message log");
    let msgs = sipp_log(&b_log);
    let mut waits: Vec<(f64, f64)> = Vec::new(); // (first REFER, 202), day seconds
    let mut sent: std::collections::HashMap<&str, f64> = Default::default();
    for (t, out, first, call_id) in &msgs {
        if *out && first.starts_with("REFER ") {
            sent.entry(call_id.as_str()).or_insert(*t);
        } else if !*out
            && first.starts_with("SIP/2.0 202")
            && let Some(s0) = sent.remove(call_id.as_str())
        {
            waits.push((s0, *t));
        }
    }
    assert_eq!(
        waits.len(),
        calls as usize,
        "every REFER answered 202 (B's log)"
    );
    let (delayed, first_after, longest) = gap_waits(&waits, killed_at);
    eprintln!(
        "failover transfer: worker {} killed with {victim_calls} of {calls} calls up, adopted {:.1} s after the kill; \
         {} REFERs waited for the takeover (B retransmitting), the first answered {:.1} s after the kill, the longest wait {:.1} s; \
         {accepted} REFERs accepted by the survivors, C got {c_invites} INVITEs; A exit {a_exit:?}, B exit {b_exit:?}",
        victim + 1,
        takeover.as_secs_f64(),
        delayed,
        first_after,
        longest
    );
    assert_eq!(
        (a_exit, b_exit),
        (Some(0), Some(0)),
        "every transfer completed on both sides (A: 202, NOTIFY, BYE from B, C answers; B: 202, NOTIFY)"
    );
    assert_eq!(
        accepted,
        f64::from(calls),
        "every REFER went through a survivor, the killed worker's calls' too"
    );
    assert_eq!(
        c_invites, calls as usize,
        "C was called once per transfer (calls with an INVITE at C)"
    );
    // C finished every call, A's BYE included; A's and B's logs are clean.
    c_uas.expect_calls(calls as u64);
    assert_sipp_logs_clean(dir.path());
    let left: f64 = survivors.iter().map(|&i| active(host, port, i)).sum();
    assert_eq!(left, 0.0, "calls still up after every BYE");
}

/// What one `handover status` answer says a worker served: these shards
/// (a bitmap), over `from..=to` in wall-clock milliseconds (from the last
/// change of the set to the answer, or to its lease's end if earlier).
struct Held {
    worker: u16,
    map: Vec<u8>,
    from: u64,
    to: u64,
}

impl Held {
    fn of(worker: u16, s: &serde_json::Value) -> Self {
        let hex = s["serving_map"].as_str().expect("status has serving_map");
        let map = (0..hex.len() / 2)
            .map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap())
            .collect();
        let ms = |k: &str| {
            s[k].as_u64()
                .unwrap_or_else(|| panic!("status has {k}: {s}"))
        };
        Self {
            worker,
            map,
            from: ms("serving_since_unix_ms"),
            to: ms("at_unix_ms").min(ms("lease_until_unix_ms")),
        }
    }

    fn serves_any(&self) -> bool {
        self.map.iter().any(|b| *b != 0)
    }
}

/// A shard two workers served at one moment: (shard, worker index, worker
/// index, unix ms).
type TwoServers = (usize, u16, u16, u64);

/// Compares every two answers of different workers whose stretches share
/// a moment: (pairs compared, of those with `cut_off` serving something,
/// shards both served with the moment).
fn overlaps(held: &[Held], cut_off: u16) -> (usize, usize, Vec<TwoServers>) {
    let (mut compared, mut with_cut_off, mut both) = (0, 0, Vec::new());
    for (i, a) in held.iter().enumerate() {
        for b in &held[i + 1..] {
            let (lo, hi) = (a.from.max(b.from), a.to.min(b.to));
            if a.worker == b.worker || lo > hi {
                continue;
            }
            compared += 1;
            if (a.worker == cut_off && a.serves_any()) || (b.worker == cut_off && b.serves_any()) {
                with_cut_off += 1;
            }
            for (k, (x, y)) in a.map.iter().zip(&b.map).enumerate() {
                let common = x & y;
                for bit in (0..8).filter(|bit| common & (1 << bit) != 0) {
                    both.push((k * 8 + bit, a.worker, b.worker, lo));
                }
            }
        }
    }
    (compared, with_cut_off, both)
}

/// Of requests sent around a kill at `killed_at` (each its first send and
/// its answer, in day seconds): how many waited for the takeover (over
/// 0.5 s), how long after the kill the first of those was answered, and
/// the longest wait.
fn gap_waits(waits: &[(f64, f64)], killed_at: f64) -> (usize, f64, f64) {
    let delayed: Vec<&(f64, f64)> = waits.iter().filter(|(s0, t)| t - s0 > 0.5).collect();
    let first_after = delayed
        .iter()
        .map(|(_, t)| t - killed_at)
        .fold(f64::INFINITY, f64::min);
    let longest = waits.iter().map(|(s0, t)| t - s0).fold(0.0, f64::max);
    (delayed.len(), first_after, longest)
}

/// Seconds since midnight UTC.
fn day_seconds(t: std::time::SystemTime) -> f64 {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap();
    (d.as_secs() % 86_400) as f64 + f64::from(d.subsec_micros()) / 1e6
}

/// Every message of a SIPp `-trace_msg` log (written with TZ=UTC): its
/// time in seconds since midnight, whether SIPp sent it, its first line
/// and its Call-ID.
fn sipp_log(text: &str) -> Vec<(f64, bool, String, String)> {
    let mut out = Vec::new();
    for block in text
        .split("----------------------------------------------- ")
        .skip(1)
    {
        let mut lines = block.lines();
        let stamp = lines.next().unwrap_or("");
        let Some(clock) = stamp.split_whitespace().nth(1) else {
            continue;
        };
        let parts: Vec<f64> = clock.split(':').filter_map(|x| x.parse().ok()).collect();
        if parts.len() != 3 {
            continue;
        }
        let t = parts[0] * 3600.0 + parts[1] * 60.0 + parts[2];
        let what = lines.next().unwrap_or("");
        let body: Vec<&str> = lines.skip_while(|l| l.is_empty()).collect();
        let first = body.first().copied().unwrap_or("").to_string();
        let call_id = body
            .iter()
            .find_map(|l| l.strip_prefix("Call-ID:"))
            .unwrap_or("")
            .trim()
            .to_string();
        out.push((t, what.contains("sent"), first, call_id));
    }
    out
}

/// A partition, not a crash: the worker with the most calls keeps running
/// (SIP, admin) while every Raft message to and from it is dropped
/// (`handover fault --isolate-ms` on its admin socket, in the tests'
/// build with the cargo feature `fault-injection`). Its lease runs
/// out, the others declare it dead and take its shards; at no sample do
/// the workers serve more than the 4096 shards between them, the cut-off
/// worker hangs up nothing once its lease is over, every call is hung up
/// through the others, and it rejoins when the partition heals.
#[test]
fn a_partitioned_worker_gives_its_shards_up_and_no_shard_has_two_servers() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas_traced(dir.path(), b);
    let c = crate::kube::by_name(dir.path(), b, &[]);
    let host = "127.0.0.1";
    // 60 calls hung up by the caller 6 s after the answer: after the
    // partitioned worker's lease (2 s) is over, mostly before the cluster
    // moves its shards (3 s without its renewals, then a 2 s handover
    // wait). A BYE that reached it while its lease still ran would be
    // relayed but not committed: the others would then adopt a call that
    // is over until the partition heals (see docs/architecture.md and
    // `inflight::byes_relayed_by_a_cut_off_worker_…`); the timing keeps
    // this test on the lease gate.
    let (uac, stat) = sipp_uac(dir.path(), c.edge_sip, 40, 60, 6_000);
    // Let the last answers reach the callers (a 2xx waits for its commit).
    let (per, w) = busiest_when_up(host, c.admin, 60.0, 150);
    let grpc = |i: u16| format!("127.0.0.1:{}", c.grpc + i);
    let o = fault(dir.path(), w + 1, &["--isolate-ms", "12000"]);
    assert!(o.status.success(), "isolate: {}", stderr(&o));
    let t0 = Instant::now();
    let mut hangups_after_lease = None;
    let mut survivors_most = 0u64;
    // Every answer says which shards its worker served over which stretch
    // of wall-clock time; answers read one after another are compared
    // over the time they share.
    let mut held: Vec<Held> = Vec::new();
    while t0.elapsed() < Duration::from_secs(11) {
        let answers: Vec<Option<serde_json::Value>> = (0..3).map(|i| status(&grpc(i))).collect();
        for (i, a) in answers.iter().enumerate() {
            if let Some(a) = a {
                held.push(Held::of(i as u16, a));
            }
        }
        let serving: Vec<u64> = answers
            .iter()
            .map(|a| {
                a.as_ref()
                    .map_or(0, |s| s["serving_shards"].as_u64().unwrap_or(0))
            })
            .collect();
        survivors_most = survivors_most.max(
            (0..3u16)
                .filter(|&i| i != w)
                .map(|i| serving[i as usize])
                .sum(),
        );
        if hangups_after_lease.is_none() && t0.elapsed() > Duration::from_millis(2500) {
            hangups_after_lease = Some(hangups(host, c.admin, w));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let r = finish_uac(uac, &stat);
    let h = hangups(host, c.admin, w);
    let (_, text) = http_get(&format!("http://{host}:{}/metrics", c.admin + w));
    let dropped = metric(&text, "handover_worker_not_served_total");
    // Healed at 12 s: it rejoins.
    wait_members(&grpc(0), 3);
    let left: f64 = (0..3).map(|i| active(host, c.admin, i)).sum();
    eprintln!(
        "partition: worker {} cut off with {} of 60 calls; the others served up to {survivors_most} shards; it hung up {} calls after its lease ended, dropped {dropped} datagrams; \
         {}/60 calls hung up; {left} calls left up; it rejoined",
        w + 1,
        per[w as usize],
        h - hangups_after_lease.unwrap_or(h),
        r.successful
    );
    let (compared, with_cut_off, two_servers) = overlaps(&held, w);
    eprintln!(
        "partition: {compared} pairs of answers shared a moment ({with_cut_off} with the cut-off worker serving); {} shard-moments with two servers",
        two_servers.len()
    );
    assert!(
        two_servers.is_empty(),
        "no shard had two servers at one moment; (shard, worker index, worker index, unix ms): {:?} of {}",
        &two_servers[..two_servers.len().min(10)],
        two_servers.len()
    );
    assert!(
        with_cut_off > 0,
        "the check compared the cut-off worker while it still served with the others"
    );
    assert_eq!(
        survivors_most, 4096,
        "the others took every shard of the cut-off worker"
    );
    assert_eq!(
        Some(h),
        hangups_after_lease,
        "the cut-off worker hung up nothing after its lease ended"
    );
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 60, 0),
        "{r:?}: {}",
        sipp_errors(dir.path())
    );
    assert_eq!(left, 0.0, "no call left up anywhere after every BYE");
    // The callee's view: every call ended once, with exactly one BYE;
    // nothing reached it twice from the cut-off worker and the new owner.
    uas.expect_calls(60);
    assert_one_bye_per_call(&sipp_message_logs_of(dir.path(), "uas_"), 60);
}

/// A replica thread that dies (a panic in raft-rs, a bug of ours) must not
/// leave its worker serving calls it can no longer replicate while its
/// health checks answer 200: the worker exits (70), the others take its
/// shards and calls over, and every call is hung up on both sides.
#[test]
fn a_worker_whose_replica_thread_dies_exits_and_the_others_carry_its_calls() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas(dir.path(), b);
    let mut c = crate::kube::by_name(dir.path(), b, &[]);
    let host = "127.0.0.1";
    // 40 calls hung up by the caller 10 s after the answer.
    let (uac, stat) = sipp_uac(dir.path(), c.edge_sip, 20, 40, 10_000);
    let (per, w) = busiest_when_up(host, c.admin, 40.0, 500);
    let o = fault(dir.path(), w + 1, &["--panic-replica"]);
    assert!(o.status.success(), "fault: {}", stderr(&o));
    let mut exit = None;
    assert!(
        wait_for(Duration::from_secs(5), || {
            exit = c._workers[w as usize].0.try_wait().unwrap();
            exit.is_some()
        }),
        "the worker whose replica died exited"
    );
    assert_eq!(exit.unwrap().code(), Some(70), "exit status 70");
    let survivors: Vec<u16> = (0..3).filter(|&i| i != w).collect();
    assert!(
        wait_for(Duration::from_secs(10), || summed(
            host,
            c.admin,
            &survivors,
            "handover_calls_adopted_total"
        ) >= per[w as usize]),
        "the others took over its {} calls",
        per[w as usize]
    );
    let r = finish_uac(uac, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 40, 0), "{r:?}");
    uas.expect_calls(40);
    eprintln!(
        "replica panic: worker {} exited 70 with {} calls up; the others carried all 40 to their BYE",
        w + 1,
        per[w as usize]
    );
}
