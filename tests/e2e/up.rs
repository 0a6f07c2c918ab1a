//! `handover up` (an edge and a B2BUA worker) with SIPp as caller and
//! callee: basic calls end to end, and nothing either side sees names the
//! worker.

use std::time::Duration;

use crate::support::*;

#[test]
fn up_carries_basic_calls_and_hides_the_worker() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas_traced(dir.path(), uas_port);
    let c = cluster(&[format!("b=127.0.0.1:{uas_port}")], &[]);
    let (sip, worker, _admin, worker_admin) =
        (c.sip, c.worker, c.admin.clone(), c.worker_admin.clone());
    // Several hundred calls a second, as the worker issue asks.
    let calls = 2000;
    let (uac, stat) = sipp_uac(
        dir.path(),
        format!("127.0.0.1:{sip}").parse().unwrap(),
        400,
        calls,
        0,
    );
    let r = finish_uac(uac, &stat);
    println!("up: {r:?}");
    assert_eq!(r.exit, Some(0), "every call succeeded: {r:?}");
    assert_eq!((r.successful, r.failed), (u64::from(calls), 0));
    // The callee's side: every call ended there with the caller's BYE.
    uas.expect_calls(u64::from(calls));

    let m = |text: &str, s: &str| metric(text, s);
    assert!(wait_for(Duration::from_secs(2), || {
        m(
            &http_get(&format!("http://{worker_admin}/metrics")).1,
            "handover_calls_ended_total{cause=\"hangup\"}",
        ) >= f64::from(calls)
    }));
    let text = http_get(&format!("http://{worker_admin}/metrics")).1;
    assert_eq!(m(&text, "handover_calls_started_total"), f64::from(calls));
    assert_eq!(m(&text, "handover_calls_answered_total"), f64::from(calls));
    assert_eq!(
        m(&text, "handover_calls_ended_total{cause=\"failed\"}"),
        0.0
    );
    assert_eq!(m(&text, "handover_calls_active"), 0.0);
    // Call-setup latency histograms: one sample per call each.
    assert_eq!(
        m(&text, "handover_invite_answer_seconds_count"),
        f64::from(calls)
    );
    assert_eq!(
        m(&text, "handover_invite_first_response_seconds_count"),
        f64::from(calls)
    );
    assert!(
        text.contains("handover_invite_answer_seconds_bucket{le=\"0.1\"}"),
        "buckets, not a summary"
    );
    assert!(text.contains("handover_retransmissions_total"), "{text}");
    assert!(text.contains("handover_transactions_active"), "{text}");

    // Topology hiding: caller and callee only ever see the edge's address.
    let logs = sipp_message_logs(dir.path());
    assert!(
        logs.len() > 10_000,
        "SIPp logged the messages ({} bytes)",
        logs.len()
    );
    assert!(
        !logs.contains(&format!(":{worker}")),
        "a message named the worker's port {worker}"
    );
    assert!(
        logs.contains(&format!("127.0.0.1:{sip}")),
        "the edge's address is what they see"
    );
}

#[test]
fn up_relays_hold_and_resume_busy_and_cancel() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (held, busy, ring, late) = (
        free_udp_port(),
        free_udp_port(),
        free_udp_port(),
        free_udp_port(),
    );
    let mut uas = [
        sipp_uas_with(dir.path(), "uas_held.xml", held),
        sipp_uas_with(dir.path(), "uas_busy.xml", busy),
        sipp_uas_with(dir.path(), "uas_ring.xml", ring),
        sipp_uas_with(dir.path(), "uas_answer_cancelled.xml", late),
    ];
    let c = cluster(
        &[
            format!("held=127.0.0.1:{held}"),
            format!("busy=127.0.0.1:{busy}"),
            format!("ring=127.0.0.1:{ring}"),
            format!("late=127.0.0.1:{late}"),
        ],
        &[],
    );
    let (sip, _worker, _admin, worker_admin) =
        (c.sip, c.worker, c.admin.clone(), c.worker_admin.clone());
    let edge: std::net::SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    // Each flow: the caller's scenario checks every step (the SDP direction
    // attributes of hold and resume included); exit 0 means all calls did.
    for (scenario, user, calls) in [
        ("uac_hold.xml", "held", 40),
        ("uac_busy.xml", "busy", 40),
        ("uac_cancel.xml", "ring", 40),
        // The callee's 2xx crosses the CANCEL: the caller hears 487 all
        // the same, the callee is ACKed and hung up (its scenario waits
        // for both).
        ("uac_cancel.xml", "late", 40),
    ] {
        let (uac, stat) = sipp_uac_with(dir.path(), scenario, user, edge, 20, calls, 0);
        let r = finish_uac(uac, &stat);
        assert_eq!(r.exit, Some(0), "{scenario}: {r:?}");
        assert_eq!(
            (r.successful, r.failed),
            (u64::from(calls), 0),
            "{scenario}"
        );
    }
    // Each callee finished its 40 calls: held, resumed and hung up;
    // refused 486; cancelled while ringing; answered as cancelled, then
    // ACKed and hung up.
    for u in &mut uas {
        u.expect_calls(40);
    }
    let text = http_get(&format!("http://{worker_admin}/metrics")).1;
    assert_eq!(metric(&text, "handover_calls_started_total"), 160.0);
    assert_eq!(
        metric(&text, "handover_calls_answered_total"),
        40.0,
        "only the held calls were answered (a 2xx after the CANCEL answers nothing)"
    );
    assert_eq!(
        metric(&text, "handover_calls_ended_total{cause=\"failed\"}"),
        120.0,
        "busy and cancelled (twice)"
    );
}

#[test]
fn up_hangs_up_calls_at_the_maximum_call_age() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas_with(dir.path(), "uas.xml", uas_port);
    let c = cluster(
        &[format!("b=127.0.0.1:{uas_port}")],
        &["--max-call-age-s", "1"],
    );
    let (sip, _worker, _admin, worker_admin) =
        (c.sip, c.worker, c.admin.clone(), c.worker_admin.clone());
    // Neither phone hangs up: the worker does, on both legs, after 1 s.
    let edge: std::net::SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_wait_bye.xml", "b", edge, 10, 20, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!(r.exit, Some(0), "every caller got its BYE: {r:?}");
    assert_eq!((r.successful, r.failed), (20, 0));
    // Every callee got its BYE from the worker.
    uas.expect_calls(20);
    let text = http_get(&format!("http://{worker_admin}/metrics")).1;
    assert_eq!(
        metric(&text, "handover_calls_ended_total{cause=\"torn_down\"}"),
        20.0
    );
}

#[test]
fn up_recovers_lost_packets_by_retransmission() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas_with(dir.path(), "uas_lossy.xml", uas_port);
    let c = cluster(&[format!("b=127.0.0.1:{uas_port}")], &[]);
    let (sip, _worker, _admin, worker_admin) =
        (c.sip, c.worker, c.admin.clone(), c.worker_admin.clone());
    // 10% of INVITEs, 200s and BYEs lost at either phone, each way: every
    // call still completes, through the phones' retransmissions and ours.
    let edge: std::net::SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    let (uac, stat) = sipp_uac_with(dir.path(), "uac_lossy.xml", "b", edge, 20, 100, 0);
    let r = finish_uac(uac, &stat);
    println!("lossy: {r:?}");
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!((r.successful, r.failed), (100, 0));
    let text = http_get(&format!("http://{worker_admin}/metrics")).1;
    let retrans = metric(&text, "handover_retransmissions_total");
    println!("worker retransmissions: {retrans}");
    assert!(
        retrans > 0.0,
        "handover's own timers resent what the phones dropped"
    );
    uas.expect_calls(100);
}

#[test]
fn a_stopped_workers_full_socket_counts_its_drops_and_calls_go_on() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas(dir.path(), uas_port);
    let c = cluster(&[format!("b=127.0.0.1:{uas_port}")], &[]);
    let drops = || {
        metric(
            &http_get(&format!("http://{}/metrics", c.worker_admin)).1,
            "handover_worker_receive_buffer_drops_total",
        )
    };
    assert_eq!(drops(), 0.0, "the counter is there from the start");
    // The worker stopped (a long pause) while 40,000 datagrams of a
    // kilobyte reach its SIP socket: more than any receive buffer holds.
    let pid = worker_pid(c.worker);
    signal(pid, "STOP");
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let to: std::net::SocketAddr = format!("127.0.0.1:{}", c.worker).parse().unwrap();
    let junk = [b'x'; 1000];
    for _ in 0..40_000 {
        let _ = s.send_to(&junk, to);
    }
    signal(pid, "CONT");
    assert!(
        wait_for(Duration::from_secs(10), || drops() > 0.0),
        "the kernel's drops are counted"
    );
    let n = drops();
    assert!(n < 40_000.0, "the buffer held some: {n} dropped");
    println!("dropped at the worker's socket: {n} of 40000");
    // The worker read what its buffer held and goes on carrying calls.
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (uac, stat) = sipp_uac(dir.path(), edge, 50, 50, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.successful, r.failed), (50, 0), "{r:?}");
    uas.expect_calls(50);
}

#[test]
fn up_answers_bad_input_and_other_calls_are_unharmed() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let uas_port = free_udp_port();
    let mut uas = sipp_uas_with(dir.path(), "uas.xml", uas_port);
    let c = cluster(&[format!("b=127.0.0.1:{uas_port}")], &[]);
    let (sip, _worker, _admin, _worker_admin) =
        (c.sip, c.worker, c.admin.clone(), c.worker_admin.clone());
    let edge: std::net::SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    let (uac, stat) = sipp_uac(dir.path(), edge, 50, 200, 0);

    let s = std::net::UdpSocket::bind("127.0.0.5:0").unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let me = s.local_addr().unwrap();
    // Like a phone over UDP: the request is sent again if no answer comes
    // (a datagram can be lost on a busy machine), up to four times.
    let ask = |msg: String| -> String {
        let mut buf = [0u8; 4096];
        for _ in 0..4 {
            s.send_to(msg.as_bytes(), edge).unwrap();
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if !text.starts_with("SIP/2.0 100") {
                    return text.lines().next().unwrap_or("").to_string();
                }
            }
        }
        panic!("no answer to four sends of:\n{msg}");
    };
    let base = |method: &str, extra: &str, cid: &str| {
        format!(
            "{method} sip:b@{edge} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{cid}\r\nMax-Forwards: 70\r\n\
From: <sip:x@{me}>;tag=x\r\nTo: <sip:b@{edge}>{extra}\r\nCall-ID: {cid}\r\nCSeq: 1 {method}\r\nContent-Length: 0\r\n\r\n"
        )
    };
    // A BYE for a dialog nobody has: the worker says 481.
    assert_eq!(
        ask(base("BYE", ";tag=nobody", "bad-bye")),
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    );
    // OPTIONS outside a dialog: 200 from the worker.
    assert_eq!(ask(base("OPTIONS", "", "opt-1")), "SIP/2.0 200 OK");
    // No Call-ID: the edge answers 400 naming the header; it never reaches a worker.
    let no_cid = base("OPTIONS", "", "nocid").replace("Call-ID: nocid\r\n", "");
    assert_eq!(ask(no_cid), "SIP/2.0 400 Missing Call-ID header");
    // CSeq method not the request's: 400.
    let bad_cseq = base("OPTIONS", "", "cseq-1").replace("CSeq: 1 OPTIONS", "CSeq: 1 INVITE");
    assert_eq!(
        ask(bad_cseq),
        "SIP/2.0 400 CSeq method does not match request method"
    );
    // Numbers at and past their limits: the largest CSeq RFC 3261 allows
    // is served; anything a peer could overflow us with is refused 400,
    // and nothing crashes (the calls around it go on, checked below).
    let opt = |name: &str, value: &str, cid: &str| {
        base("OPTIONS", "", cid).replacen(
            "Content-Length: 0\r\n",
            &format!("{name}: {value}\r\nContent-Length: 0\r\n"),
            1,
        )
    };
    let max_cseq =
        base("OPTIONS", "", "cseq-max").replace("CSeq: 1 OPTIONS", "CSeq: 2147483647 OPTIONS");
    assert_eq!(ask(max_cseq), "SIP/2.0 200 OK");
    for (cid, msg) in [
        (
            "cseq-big",
            base("OPTIONS", "", "cseq-big")
                .replace("CSeq: 1 OPTIONS", "CSeq: 18446744073709551616 OPTIONS"),
        ),
        (
            "mf-big",
            base("OPTIONS", "", "mf-big")
                .replace("Max-Forwards: 70", "Max-Forwards: 18446744073709551616"),
        ),
        (
            "cl-big",
            base("OPTIONS", "", "cl-big")
                .replace("Content-Length: 0", "Content-Length: 18446744073709551616"),
        ),
    ] {
        let line = ask(msg);
        assert!(line.starts_with("SIP/2.0 400 "), "{cid}: {line}");
    }
    // Headers whose numbers the B2BUA reads later pass through harmlessly
    // out of a dialog (answered as any OPTIONS).
    for (name, value) in [
        ("Session-Expires", "18446744073709551615"),
        ("Expires", "18446744073709551615"),
        (
            "Subscription-State",
            "active;expires=99999999999999999999999",
        ),
        ("Min-SE", "18446744073709551615"),
    ] {
        assert_eq!(
            ask(opt(name, value, &format!("x-{name}"))),
            "SIP/2.0 200 OK",
            "{name}"
        );
    }
    // Junk: dropped, nothing comes back.
    s.send_to(b"\x00\x01\x02 junk", edge).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut buf = [0u8; 512];
    assert!(s.recv_from(&mut buf).is_err(), "junk is not answered");

    let r = finish_uac(uac, &stat);
    assert_eq!(r.exit, Some(0), "the calls around it are unharmed: {r:?}");
    assert_eq!((r.successful, r.failed), (200, 0));
    // None of the bad input reached the callee.
    uas.expect_calls(200);
}

/// A callee whose 200 says `Session-Expires: 18446744073709551615` once
/// crashed the worker (`Instant + Duration` overflowed) and, replicated,
/// the next owner too. Now the interval is clamped: every call goes on to
/// its BYE, and calls after them still work.
#[test]
fn up_survives_a_session_timer_of_u64_max_seconds() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (huge, ok) = (free_udp_port(), free_udp_port());
    let mut huge_uas = sipp_uas_with(dir.path(), "uas_huge_timer.xml", huge);
    let mut ok_uas = sipp_uas_with(dir.path(), "uas.xml", ok);
    let c = cluster(
        &[
            format!("huge=127.0.0.1:{huge}"),
            format!("b=127.0.0.1:{ok}"),
        ],
        &[],
    );
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (uac, stat) = sipp_uac_with(dir.path(), "uac.xml", "huge", edge, 10, 10, 500);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 10, 0), "{r:?}");
    let (uac, stat) = sipp_uac(dir.path(), edge, 10, 10, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 10, 0),
        "the worker is still up: {r:?}"
    );
    huge_uas.expect_calls(10);
    ok_uas.expect_calls(10);
}

#[test]
fn up_fails_over_to_the_next_target_on_503() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (down, ok) = (free_udp_port(), free_udp_port());
    let [mut down_uas, mut ok_uas] = [
        sipp_uas_with(dir.path(), "uas_unavailable.xml", down),
        sipp_uas_with(dir.path(), "uas.xml", ok),
    ];
    let c = cluster(&[format!("b=127.0.0.1:{down},127.0.0.1:{ok}")], &[]);
    let (sip, _worker, _admin, worker_admin) =
        (c.sip, c.worker, c.admin.clone(), c.worker_admin.clone());
    // Half the calls pick the out-of-service target first (equal weights):
    // they fail over to the other, and every call connects.
    let edge: std::net::SocketAddr = format!("127.0.0.1:{sip}").parse().unwrap();
    let (uac, stat) = sipp_uac(dir.path(), edge, 20, 60, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!(r.exit, Some(0), "{r:?}");
    assert_eq!((r.successful, r.failed), (60, 0));
    let text = http_get(&format!("http://{worker_admin}/metrics")).1;
    let failovers = metric(&text, "handover_route_failovers_total");
    println!("failovers: {failovers}");
    assert!(
        (10.0..=50.0).contains(&failovers),
        "about half of 60 calls failed over: {failovers}"
    );
    // Each failover is one call refused 503 by the first target; every
    // call was answered and hung up by the second.
    down_uas.expect_calls(failovers as u64);
    ok_uas.expect_calls(60);
}

#[test]
fn up_relays_callee_hold_callee_bye_glare_and_no_answer() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (holds, glare, ring) = (free_udp_port(), free_udp_port(), free_udp_port());
    let mut uas = [
        sipp_uas_with(dir.path(), "uas_holds.xml", holds),
        sipp_uas_with(dir.path(), "uas_glare.xml", glare),
        sipp_uas_with(dir.path(), "uas_ring.xml", ring),
    ];
    let c = cluster(
        &[
            format!("holds=127.0.0.1:{holds}"),
            format!("glare=127.0.0.1:{glare}"),
            format!("ring=127.0.0.1:{ring}"),
        ],
        &["--ring-timeout-s", "1"],
    );
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    // The callee holds (a=sendonly, expects a=recvonly), resumes and hangs
    // up; both re-INVITEs of a glare get through after the B2BUA's 491 and
    // a retry; a callee that only rings is cancelled after the ring timeout
    // and the caller hears 408. Each scenario checks every step on its side
    // (SDP directions included); exit 0 means every call did.
    for (scenario, user, calls) in [
        ("uac_held.xml", "holds", 30),
        ("uac_glare.xml", "glare", 30),
        ("uac_noanswer.xml", "ring", 10),
    ] {
        let (uac, stat) = sipp_uac_with(dir.path(), scenario, user, edge, 10, calls, 0);
        let r = finish_uac(uac, &stat);
        assert_eq!(r.exit, Some(0), "{scenario}: {r:?}");
        assert_eq!(
            (r.successful, r.failed),
            (u64::from(calls), 0),
            "{scenario}"
        );
    }
    for (u, calls) in uas.iter_mut().zip([30, 30, 10]) {
        u.expect_calls(calls);
    }
    let text = http_get(&format!("http://{}/metrics", c.worker_admin)).1;
    assert_eq!(metric(&text, "handover_calls_started_total"), 70.0);
    assert_eq!(metric(&text, "handover_calls_answered_total"), 60.0);
    assert_eq!(
        metric(&text, "handover_calls_ended_total{cause=\"hangup\"}"),
        60.0
    );
    assert_eq!(
        metric(&text, "handover_calls_ended_total{cause=\"failed\"}"),
        10.0,
        "the unanswered calls"
    );
    assert_eq!(metric(&text, "handover_calls_unanswered_total"), 10.0);
    assert_eq!(metric(&text, "handover_calls_active"), 0.0);
}

#[test]
fn up_with_three_workers_spreads_calls_and_keeps_each_on_one_worker() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas(dir.path(), b);
    let c = cluster(&[format!("b=127.0.0.1:{b}")], &["--workers", "3"]);
    wait_members(&c.grpc, 3);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (uac, stat) = sipp_uac(dir.path(), edge, 100, 300, 0);
    let r = finish_uac(uac, &stat);
    assert_eq!((r.exit, r.successful, r.failed), (Some(0), 300, 0), "{r:?}");
    // Worker i's admin is on the first one's port + i.
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let per: Vec<f64> = (0..3)
        .map(|i| {
            let text = http_get(&format!("http://{host}:{}/metrics", port + i)).1;
            // Every call a worker started, it also ended: both legs of a
            // call stayed on that worker.
            assert_eq!(
                metric(&text, "handover_calls_started_total"),
                metric(&text, "handover_calls_ended_total{cause=\"hangup\"}"),
                "worker {i}"
            );
            metric(&text, "handover_calls_started_total")
        })
        .collect();
    assert_eq!(per.iter().sum::<f64>(), 300.0, "{per:?}");
    assert!(
        per.iter().all(|n| *n >= 50.0),
        "each worker takes a share: {per:?}"
    );
    uas.expect_calls(300);
}

/// The demo, with one worker and with three (issue 22: its attended
/// transfers, whose two calls then usually live on two workers, pass too;
/// it starts at the cluster's first ready moment, while shards move).
#[test]
fn up_demo_plays_calls_and_transfers_and_prints_a_summary() {
    let _g = serial();
    for workers in ["1", "3"] {
        demo(workers);
    }
}

fn demo(workers: &str) {
    // Worker i listens on the first port + i: consecutive ports, kept from
    // later picks (the demo's own port once fell on worker 2's).
    let (sip, worker, demo) = (free_sip_port(), free_udp_ports(4), free_udp_port());
    let (admin, worker_admin, grpc, tls, wss) = (
        free_tcp_port(),
        free_tcp_ports(4),
        free_tcp_ports(4),
        free_tcp_port(),
        free_tcp_port(),
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_handover"))
        .arg("up")
        .arg("--demo")
        .args(["--workers", workers])
        .args(["--worker-grpc", &format!("127.0.0.1:{grpc}")])
        .args(["--listen", &format!("127.0.0.1:{sip}")])
        .args(["--listen-tls", &format!("127.0.0.1:{tls}")])
        .args(["--listen-wss", &format!("127.0.0.1:{wss}")])
        .args(["--worker-listen", &format!("127.0.0.1:{worker}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--worker-admin", &format!("127.0.0.1:{worker_admin}")])
        .args(["--demo-listen", &format!("127.0.0.1:{demo}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    while tokio::time::Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_secs(1)) {
            Ok(l) => {
                let done = l.starts_with("demo: every call") || l.starts_with("demo: some calls");
                seen.push(l);
                if done {
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Err(_) => break,
        }
    }
    assert!(
        stops_on_sigterm(&mut child, Duration::from_secs(30)),
        "up stops within 30 s of SIGTERM"
    );
    let text = seen.join("\n");
    assert!(
        text.contains(&format!("edge metrics: http://127.0.0.1:{admin}/metrics")),
        "{text}"
    );
    assert!(
        text.contains("calls: 200 started, 200 answered, 200 succeeded, 0 failed"),
        "{text}"
    );
    for s in ["| basic |", "| hold |", "| blind |", "| attended |"] {
        assert!(text.contains(s), "{s} in the summary:\n{text}");
    }
    assert!(text.contains("demo: every call succeeded"), "{text}");
    eprintln!("demo with {workers} worker(s): every call succeeded");
}

/// `child`'s stdout, a line at a time.
fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    let out = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Sends SIGTERM and waits up to `within` for `child` to exit; SIGKILL
/// and false when it does not.
fn stops_on_sigterm(child: &mut std::process::Child, within: Duration) -> bool {
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < within {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// SIGTERM while the demo plays stops the demo and the whole cluster
/// (the demo's load generator used to take the signal for itself, and
/// `up` then waited for another one, its workers running on).
#[test]
fn up_demo_stops_on_sigterm_while_the_demo_plays() {
    let _g = serial();
    let (sip, worker, demo) = (free_sip_port(), free_udp_ports(2), free_udp_port());
    let (admin, worker_admin) = (free_tcp_port(), free_tcp_ports(2));
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_handover"))
        .arg("up")
        .arg("--demo")
        .args(["--workers", "1"])
        .args(["--listen", &format!("127.0.0.1:{sip}")])
        .args(["--worker-listen", &format!("127.0.0.1:{worker}")])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .args(["--worker-admin", &format!("127.0.0.1:{worker_admin}")])
        .args(["--demo-listen", &format!("127.0.0.1:{demo}")])
        .args(["--udp-only"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let rx = stdout_lines(&mut child);
    let mut seen = Vec::new();
    let t0 = tokio::time::Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Ok(l) = rx.recv_timeout(Duration::from_secs(1)) {
            let playing = l.starts_with("demo: 200 calls");
            seen.push(l);
            if playing {
                break;
            }
        }
    }
    assert!(
        seen.iter().any(|l| l.starts_with("demo: 200 calls")),
        "the demo started: {seen:?}"
    );
    // A second into the demo's 10 s of calls.
    std::thread::sleep(Duration::from_secs(1));
    let workers: Vec<u32> = worker_pids(&format!("127.0.0.1:{worker}"));
    assert!(!workers.is_empty(), "a worker runs");
    assert!(
        stops_on_sigterm(&mut child, Duration::from_secs(20)),
        "up stops within 20 s of SIGTERM during the demo"
    );
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(
        rest.iter().any(|l| l.starts_with("demo: stopped before"))
            && !rest.iter().any(|l| l.starts_with("demo: every call")),
        "the demo says it was stopped: {rest:?}"
    );
    // Its worker went with it.
    for pid in workers {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "worker {pid} stopped"
        );
    }
}

/// PIDs of `handover worker` processes listening on `listen`.
fn worker_pids(listen: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmd) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmd.split(|&b| b == 0).collect();
        if args.iter().any(|a| *a == b"worker")
            && args
                .windows(2)
                .any(|w| w[0] == b"--listen" && w[1] == listen.as_bytes())
        {
            pids.push(pid);
        }
    }
    pids
}

#[test]
fn up_names_a_port_in_use_and_the_flag_that_moves_it() {
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = handover(&[
        "up",
        "--route",
        "b=127.0.0.1:5071",
        "--listen",
        &format!("127.0.0.1:{port}"),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "udp 127.0.0.1:{port} is already in use: pick another address with --listen"
        )),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
}

/// `handover up` on free ports with two replicated workers, its temporary
/// directory `tmp`, in a process group of its own; returns it once its
/// edge is ready, with the processes it started.
fn up_in(tmp: &std::path::Path) -> (UpProc, Vec<u32>) {
    let (sip, worker) = (free_sip_port(), free_udp_ports(5));
    let (admin, worker_admin, grpc) = (free_tcp_port(), free_tcp_ports(5), free_tcp_ports(5));
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_handover"));
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let up = UpProc {
        child: cmd
            .args(["up", "--workers", "2", "--udp-only"])
            .args(["--listen", &format!("127.0.0.1:{sip}")])
            .args(["--worker-listen", &format!("127.0.0.1:{worker}")])
            .args(["--admin", &format!("127.0.0.1:{admin}")])
            .args(["--worker-admin", &format!("127.0.0.1:{worker_admin}")])
            .args(["--worker-grpc", &format!("127.0.0.1:{grpc}")])
            .env("TMPDIR", tmp)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("handover up starts"),
    };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    assert!(
        wait_for(Duration::from_secs(20), || agent
            .get(&format!("http://127.0.0.1:{admin}/readyz"))
            .call()
            .is_ok_and(|r| r.status().as_u16() == 200)),
        "the cluster became ready"
    );
    let kids = std::process::Command::new("pgrep")
        .args(["-P", &up.child.id().to_string()])
        .output()
        .unwrap();
    let kids: Vec<u32> = String::from_utf8_lossy(&kids.stdout)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert_eq!(kids.len(), 3, "an edge and two workers: {kids:?}");
    (up, kids)
}

#[test]
fn up_killed_takes_its_processes_along_and_a_stopped_up_leaves_no_directory() {
    let _g = serial();
    // SIGKILL leaves `up` no chance to stop its edge and workers: the
    // kernel tells them (they asked to be told when it is gone).
    let tmp = tempfile::tempdir().unwrap();
    let (mut up, kids) = up_in(tmp.path());
    signal(up.child.id(), "KILL");
    let _ = up.child.wait();
    assert!(
        wait_for(Duration::from_secs(10), || kids.iter().all(|&k| exited(k))),
        "the edge and workers stopped with up: still running {:?}",
        kids.iter().filter(|&&k| !exited(k)).collect::<Vec<_>>()
    );
    // Stopped by a signal it handles, `up` stops its processes and removes
    // the directory it made for their data (no later run would use it).
    let tmp = tempfile::tempdir().unwrap();
    let (mut up, kids) = up_in(tmp.path());
    let made: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        made.iter().any(|n| n.starts_with("handover-up-")),
        "its data directory is under TMPDIR: {made:?}"
    );
    signal(up.child.id(), "TERM");
    assert!(up.child.wait().unwrap().success());
    assert!(kids.iter().all(|&k| exited(k)));
    let left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
