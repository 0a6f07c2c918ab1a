//! `handover edge` with real SIPp user agents on loopback, in both I/O
//! modes: 2,000 calls spread over backends with every in-dialog request at the
//! backend that got the INVITE; a backend killed and restarted; malformed
//! input answered or dropped while calls go on; a junk flood from another
//! source; a call flood from one source over its new-dialog budget.

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::Duration;

use crate::support::*;

fn start_backends(dir: &Path, n: usize) -> (Vec<Uas>, Vec<u16>) {
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    let procs = ports.iter().map(|&p| sipp_uas_probed(dir, p)).collect();
    std::thread::sleep(Duration::from_millis(300));
    (procs, ports)
}

fn backend_args(ports: &[u16]) -> Vec<String> {
    ports
        .iter()
        .flat_map(|p| ["--backend".to_string(), format!("127.0.0.1:{p}")])
        .collect()
}

fn edge_with(io: &str, ports: &[u16], extra: &[&str]) -> EdgeProc {
    let mut args: Vec<String> = vec!["--io".into(), io.into(), "--threads".into(), "2".into()];
    args.extend(backend_args(ports));
    let mut a: Vec<&str> = args.iter().map(String::as_str).collect();
    a.extend_from_slice(extra);
    spawn_edge(&a)
}

fn spread_and_dialogs(io: &str) {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut uas, ports) = start_backends(dir.path(), 3);
    let edge = edge_with(
        io,
        &ports,
        &["--probe-interval-ms", "500", "--probe-timeout-ms", "300"],
    );
    let text = scrape(&edge);
    assert_eq!(
        metric(&text, &format!("handover_edge_io_mode{{mode=\"{io}\"}}")),
        1.0,
        "{text}"
    );

    let calls = 2000;
    let (uac, stat) = sipp_uac(dir.path(), edge.sip, 500, calls, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!(r.exit, Some(0), "every call succeeded: {r:?}");
    assert_eq!((r.successful, r.failed), (u64::from(calls), 0));
    // Every call ended at one callee with its BYE; a BYE or ACK at the
    // wrong UAS would be an unexpected message there.
    expect_calls_total(&mut uas.iter_mut().collect::<Vec<_>>(), u64::from(calls));
    // Spread: INVITE, ACK and BYE of a call go to one backend, so each
    // backend gets three requests per call it owns; each owns about a third.
    assert!(wait_for(Duration::from_secs(2), || {
        let t = scrape(&edge);
        (0..3)
            .map(|i| {
                metric(
                    &t,
                    &format!("handover_edge_backend_forwards_total{{backend=\"{i}\"}}"),
                )
            })
            .sum::<f64>()
            >= f64::from(calls * 3)
    }));
    let text = scrape(&edge);
    let per: Vec<f64> = (0..3)
        .map(|i| {
            metric(
                &text,
                &format!("handover_edge_backend_forwards_total{{backend=\"{i}\"}}"),
            )
        })
        .collect();
    let total: f64 = per.iter().sum();
    assert_eq!(
        total,
        f64::from(calls * 3),
        "INVITE, ACK and BYE each forwarded once: {per:?}"
    );
    for (i, n) in per.iter().enumerate() {
        assert_eq!(n % 3.0, 0.0, "backend {i} got whole calls only: {per:?}");
        let share = n / total;
        assert!(
            (0.23..=0.43).contains(&share),
            "backend {i} share {share:.3} outside 1/3 ± 0.10: {per:?}"
        );
    }
    println!("{io}: {calls} calls, per-backend requests {per:?}");
}

/// `--new-dialogs-per-source 20` (`--ban-s 0`: the ban that would follow
/// is unit-tested in `proxy.rs`): one source calling at 100 calls/s gets
/// 503 (Retry-After) past 20 new calls a second, and its answered calls go
/// on to their end; another source calling at the same time is not held
/// back at all.
#[test]
fn a_source_over_its_new_dialog_budget_gets_503_and_others_are_served() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut uas, ports) = start_backends(dir.path(), 1);
    let edge = edge_with(
        "auto",
        &ports,
        &["--new-dialogs-per-source", "20", "--ban-s", "0"],
    );
    let flood = sipp_uac_at(
        dir.path(),
        "127.0.0.1",
        "uac_or_503.xml",
        "b",
        edge.sip,
        (100, 300, 0),
    );
    let calm = sipp_uac_at(
        dir.path(),
        "127.0.0.2",
        "uac.xml",
        "b",
        edge.sip,
        (10, 30, 0),
    );
    let (f, c) = (finish_uac(flood.0, &flood.1), finish_uac(calm.0, &calm.1));
    assert_eq!(
        (c.exit, c.successful, c.failed),
        (Some(0), 30, 0),
        "the other source: {c:?}"
    );
    // Every call of the flooding source ended as its scenario says: a
    // whole call, or a 503 with Retry-After it ACKed.
    assert_eq!((f.exit, f.successful, f.failed), (Some(0), 300, 0), "{f:?}");
    // The calls the caller saw refused, one log line each (its scenario
    // logs the Retry-After it was given).
    let logs = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with("_logs.log"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
        .collect::<String>();
    let refused = logs.matches("refused, Retry-After 1").count() as u64;
    // 300 calls at 100/s span 3 or 4 seconds of 20 each.
    assert!(
        (200..=260).contains(&refused),
        "about 20 calls a second got through, the rest were refused: {refused}"
    );
    // The refused calls never reached the callee.
    uas[0].expect_calls(300 - refused + 30);
    // The edge answered each (a 503 retransmitted to a retransmitted
    // INVITE counts twice) and ended each one's ACK itself. (Its counters
    // reach /metrics every 100 ms.)
    let count = |series: &str| metric(&scrape(&edge), series);
    let answered = "handover_edge_replies_total{status=\"503\"}";
    let acks = "handover_edge_drops_total{reason=\"ack_of_our_answer\"}";
    wait_for(Duration::from_secs(2), || count(acks) >= refused as f64);
    assert!(count(answered) >= refused as f64, "{}", count(answered));
    assert!(count(acks) >= refused as f64, "{}", count(acks));
}

#[test]
fn edge_spreads_calls_and_keeps_dialogs_together_uring() {
    spread_and_dialogs("uring");
}

#[test]
fn edge_spreads_calls_and_keeps_dialogs_together_epoll() {
    spread_and_dialogs("epoll");
}

#[test]
fn edge_routes_around_a_dead_backend_and_takes_it_back() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut uas, ports) = start_backends(dir.path(), 3);
    let edge = edge_with(
        "auto",
        &ports,
        &[
            "--probe-interval-ms",
            "200",
            "--probe-timeout-ms",
            "150",
            "--down-after",
            "2",
            "--up-after",
            "2",
        ],
    );
    let fwd = |i: usize| {
        metric(
            &scrape(&edge),
            &format!("handover_edge_backend_forwards_total{{backend=\"{i}\"}}"),
        )
    };
    let up = |i: usize| {
        metric(
            &scrape(&edge),
            &format!("handover_edge_backend_up{{backend=\"{i}\"}}"),
        )
    };
    // 100 calls a second for 12 s, each held 500 ms.
    let (uac, stat) = sipp_uac(dir.path(), edge.sip, 100, 1200, 500);
    std::thread::sleep(Duration::from_secs(2));
    assert!(fwd(1) > 0.0, "backend 1 took calls before it died");
    let mut dead = uas.remove(1);
    dead.checked_by_test("killed on purpose; its calls are judged by the UAC's counts below");
    drop(dead); // SIGKILL
    assert!(
        wait_for(Duration::from_secs(3), || up(1) == 0.0),
        "backend 1 marked down"
    );
    // Threads flush their counters every 100 ms: let the last ones land.
    std::thread::sleep(Duration::from_millis(300));
    let at_down = fwd(1);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        fwd(1),
        at_down,
        "nothing is sent to a backend while it is down"
    );
    // Back on the same port.
    uas.push(sipp_uas_probed(dir.path(), ports[1]));
    assert!(
        wait_for(Duration::from_secs(3), || up(1) == 1.0),
        "backend 1 marked up again"
    );
    assert!(
        wait_for(Duration::from_secs(3), || fwd(1) > at_down),
        "backend 1 takes its shards back"
    );
    // The caller's log is not held to the strict rule here: the calls of
    // the killed backend fail on purpose (counted below), and a 200 that
    // a survivor resends after its call ended shows there as a dead call.
    let r = finish_uac_unchecked(uac, &stat);
    assert_eq!(r.successful + r.failed, 1200, "{r:?}");
    assert!(
        r.failed <= 120,
        "at most the dead backend's share of ~1.5 s of calls fails: {r:?}"
    );
    // The calls that were up at backend 1 when it died lost their callee
    // (plain backends keep no shared state). Their BYE retransmissions were
    // not sent to the dead backend forever: once it was marked down they
    // went to a survivor, which (SIPp) answers an unknown BYE with 200 and
    // logs it. That is why the UAC can count such calls as successful.
    let rerouted: usize = [ports[0], ports[2]]
        .iter()
        .map(|p| {
            std::fs::read_to_string(dir.path().join(format!("uas-{p}.err")))
                .unwrap_or_default()
                .matches("unexpected BYE")
                .count()
        })
        .sum();
    assert!(
        rerouted > 0,
        "in-dialog requests of the dead backend's calls reached a survivor"
    );
    println!(
        "kill/restart: {r:?}; BYEs of the dead backend's calls rerouted to survivors: {rerouted}"
    );
    // Every call the UAC counted as successful ended at a callee that
    // answered it, with its BYE: the two survivors and the restarted one
    // (its statistics file starts again), plus the killed one's calls
    // that ended before the kill (read before it died: not kept).
    // The survivors' unexpected BYEs are the point of this test, so their
    // logs are read above instead of by the strict check.
    for u in &mut uas {
        u.checked_by_test("a backend is killed: survivors get its calls' BYEs, counted above");
    }
}

/// The corpus files of `handover-sip` with a refusal verdict.
fn refused_corpus() -> Vec<(String, String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../sip/testdata/corpus");
    crate::corpus_format::load_dir(&dir)
        .into_iter()
        .filter(|c| c.expect != "ok")
        .map(|c| (c.name, c.expect, c.bytes))
        .collect()
}

fn malformed_input(io: &str) {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (mut uas, ports) = start_backends(dir.path(), 2);
    let edge = edge_with(io, &ports, &["--probe-interval-ms", "0"]);
    let (uac, stat) = sipp_uac(dir.path(), edge.sip, 100, 400, 0);

    // Our own socket on another loopback address, so the junk does not
    // count against the UAC's source.
    let sock = UdpSocket::bind("127.0.0.3:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let mut buf = vec![0u8; 70_000];
    let corpus = refused_corpus();
    assert!(corpus.len() >= 25, "{}", corpus.len());
    for (name, expect, bytes) in &corpus {
        sock.send_to(bytes, edge.sip).unwrap();
        let got = sock.recv_from(&mut buf);
        if let Some(status) = expect
            .strip_prefix("reply ")
            .and_then(|r| r.split(' ').next())
        {
            let (n, from) =
                got.unwrap_or_else(|e| panic!("{name}: expected a {status} answer, got {e}"));
            assert_eq!(from, edge.sip);
            let line = String::from_utf8_lossy(&buf[..n])
                .lines()
                .next()
                .unwrap_or("")
                .to_string();
            assert!(
                line.starts_with(&format!("SIP/2.0 {status} ")),
                "{name}: got {line:?}"
            );
        } else {
            assert!(
                got.is_err(),
                "{name}: expected a silent drop, got an answer"
            );
        }
        // Stay under the per-source budget of bad input (100 a second).
        std::thread::sleep(Duration::from_millis(15));
    }
    // A flood of junk from one more source is cut off by its budget.
    let flood = UdpSocket::bind("127.0.0.4:0").unwrap();
    for i in 0..20_000u32 {
        let _ = flood.send_to(&i.to_le_bytes().repeat(50), edge.sip);
    }
    let r = finish_uac(uac, &stat);
    assert_eq!(r.exit, Some(0), "calls are unharmed: {r:?}");
    assert_eq!((r.successful, r.failed), (400, 0));
    // None of the refused input reached a backend as a call or a request.
    expect_calls_total(&mut uas.iter_mut().collect::<Vec<_>>(), 400);
    let text = scrape(&edge);
    let drops = |reason: &str| {
        metric(
            &text,
            &format!("handover_edge_drops_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(drops("not_sip") >= 3.0, "{text}");
    assert!(
        drops("rate_limited") > 1000.0,
        "the flood hit its source's limit: {}",
        drops("rate_limited")
    );
    // Each refused corpus message was answered once with its status.
    for status in ["400", "505"] {
        let want = corpus
            .iter()
            .filter(|(_, e, _)| e.starts_with(&format!("reply {status} ")))
            .count();
        assert!(want > 0, "the corpus has {status} cases");
        assert_eq!(
            metric(
                &text,
                &format!("handover_edge_replies_total{{status=\"{status}\"}}")
            ),
            want as f64,
            "{status} answers"
        );
    }
}

#[test]
fn edge_answers_or_drops_malformed_input_while_calls_go_on_uring() {
    malformed_input("uring");
}

#[test]
fn edge_answers_or_drops_malformed_input_while_calls_go_on_epoll() {
    malformed_input("epoll");
}

#[test]
fn edge_admin_endpoints_and_startup_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (mut uas, ports) = start_backends(dir.path(), 1);
    let edge = edge_with("auto", &ports, &["--probe-interval-ms", "0"]);
    assert_eq!(http_get(&format!("{}/healthz", edge.admin)).0, 200);
    assert_eq!(http_get(&format!("{}/readyz", edge.admin)).0, 200);
    assert_eq!(http_get(&format!("{}/nope", edge.admin)).0, 404);
    let text = scrape(&edge);
    assert!(text.contains("handover_build_info{"), "{text}");
    // The same UDP port again: a clear error, not a silent share.
    let port = edge.sip.port().to_string();
    let o = handover(&[
        "edge",
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--admin",
        "127.0.0.1:0",
        "--backend",
        "127.0.0.1:9",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("already in use"), "{}", stderr(&o));
    let o = handover(&["edge", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"]);
    assert!(stderr(&o).contains("no backends"), "{}", stderr(&o));
    let o = handover(&["edge", "--backend", "pbx.example:5060"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let _: SocketAddr = edge.sip;
    uas[0].expect_no_calls();
}

/// A worker's bundle (several messages in one datagram, what a worker sends
/// its edge): each message goes on as if it had come alone, in order; the
/// same bytes from anyone else, or a bundle that does not add up, are
/// dropped whole and counted.
fn bundles(io: &str) {
    let _g = serial();
    let worker = UdpSocket::bind("127.0.0.1:0").unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    let stranger = UdpSocket::bind("127.0.0.4:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    let wport = worker.local_addr().unwrap().port();
    let cport = client.local_addr().unwrap().port();
    let edge = edge_with(io, &[wport], &["--probe-interval-ms", "0"]);
    let msg = |n: u32| {
        format!(
            "MESSAGE sip:carol@127.0.0.1:{cport} SIP/2.0\r\n\
             Via: SIP/2.0/UDP 127.0.0.1:{wport};branch=z9hG4bK-bundle-{n}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:w@127.0.0.1>;tag=w{n}\r\n\
             To: <sip:carol@127.0.0.1>\r\n\
             Call-ID: bundle-{n}\r\n\
             CSeq: {n} MESSAGE\r\n\
             Content-Type: text/plain\r\n\
             Content-Length: 5\r\n\r\nhello"
        )
        .into_bytes()
    };
    let mut b = handover_sip::Bundler::new(8192);
    for n in 1..=3 {
        assert!(b.push(&msg(n)).is_none());
    }
    let bundle = b.finish().unwrap().to_vec();
    assert!(handover_sip::is_bundle(&bundle));
    let mut buf = vec![0u8; 70_000];
    let mut got = |what: &str| -> Vec<String> {
        let mut ids = Vec::new();
        while let Ok((n, _)) = client.recv_from(&mut buf) {
            let m = handover_sip::scan(&buf[..n]).unwrap_or_else(|e| panic!("{what}: {e:?}"));
            ids.push(String::from_utf8_lossy(m.call_id()).into_owned());
        }
        ids
    };

    worker.send_to(&bundle, edge.sip).unwrap();
    assert_eq!(
        got("a worker's bundle"),
        ["bundle-1", "bundle-2", "bundle-3"]
    );
    stranger.send_to(&bundle, edge.sip).unwrap();
    let mut bad = handover_sip::BUNDLE_MAGIC.to_vec();
    bad.extend_from_slice(&[0, 200]);
    bad.extend_from_slice(&msg(4));
    worker.send_to(&bad, edge.sip).unwrap();
    assert_eq!(
        got("a stranger's and a malformed bundle"),
        Vec::<String>::new()
    );
    // Still serving: a lone message from the worker goes on.
    worker.send_to(&msg(5), edge.sip).unwrap();
    assert_eq!(got("a lone message"), ["bundle-5"]);
    let drops = |reason: &str| {
        metric(
            &scrape(&edge),
            &format!("handover_edge_drops_total{{reason=\"{reason}\"}}"),
        )
    };
    assert!(wait_for(Duration::from_secs(2), || {
        drops("bundle_not_from_worker") == 1.0 && drops("bundle_malformed") == 1.0
    }));
    assert_eq!(
        metric(&scrape(&edge), "handover_edge_bundles_received_total"),
        1.0
    );
}

#[test]
fn a_workers_bundle_goes_on_as_its_messages_uring() {
    bundles("uring");
}

#[test]
fn a_workers_bundle_goes_on_as_its_messages_epoll() {
    bundles("epoll");
}
