//! The flow that started the project: a handset admin guide's blind
//! transfer, through `handover up`. B (talking to A) sends REFER
//! (Refer-To: C); A answers 202 and NOTIFYs; B hangs up; A calls C, who
//! answers. The B2BUA relays REFER and NOTIFY between the legs
//! (passthrough mode); A's new call to C is a new call through the cluster.

use std::path::Path;

use crate::support::*;

/// One transfer flow through `edge`: B runs `scenarios.0` on `b_port`
/// (`-key target TARGET`) and answers; 300 ms later A runs `scenarios.1`
/// calling user b, `calls.0` calls at `calls.1` per second. Returns (A's
/// exit code, B's): 0 when every call went as its scenario says.
fn flow(
    dir: &Path,
    edge: &str,
    scenarios: (&str, &str),
    target: &str,
    b_port: u16,
    calls: (&str, &str),
) -> (Option<i32>, Option<i32>) {
    let sf = |f: &str| scenario(f).to_string_lossy().into_owned();
    let b_port = b_port.to_string();
    let mut b = sipp(
        dir,
        &[
            "-sf",
            &sf(scenarios.0),
            "-i",
            "127.0.0.1",
            "-p",
            &b_port,
            "-m",
            calls.0,
            "-key",
            "target",
            target,
            edge,
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let a_port = free_udp_port().to_string();
    let mut a = sipp(
        dir,
        &[
            "-sf",
            &sf(scenarios.1),
            "-i",
            "127.0.0.1",
            "-p",
            &a_port,
            "-s",
            "b",
            "-m",
            calls.0,
            "-r",
            calls.1,
            edge,
        ],
    );
    let a_exit = a.0.wait().unwrap().code();
    let b_exit = b.0.wait().unwrap().code();
    // A's and B's logs: no unexpected, automatic-response, discarded or
    // dead-call event on either side (SIPp exits 0 despite those).
    assert_sipp_logs_clean(dir);
    (a_exit, b_exit)
}

#[test]
fn blind_transfer_through_up_one_then_a_hundred_concurrently() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (b_port, c_port) = (free_udp_port(), free_udp_port());
    let mut c_uas = sipp_uas_traced(dir.path(), c_port);
    let c = cluster(
        &[
            format!("b=127.0.0.1:{b_port}"),
            format!("c=127.0.0.1:{c_port}"),
        ],
        &[],
    );
    let (sip, worker, _admin, worker_admin) =
        (c.sip, c.worker, c.admin.clone(), c.worker_admin.clone());
    let edge = format!("127.0.0.1:{sip}");
    // B names C by C's own address, as a phone that knows C would: A must
    // be told only the edge's.
    let target = format!("sip:c@127.0.0.1:{c_port}");
    // One transfer.
    let seed = ("transfer_b.xml", "transfer_a.xml");
    let (a, b) = flow(dir.path(), &edge, seed, &target, b_port, ("1", "1"));
    assert_eq!((a, b), (Some(0), Some(0)), "A and B completed the flow");
    // Then a hundred, up to twenty starting each second.
    let (a, b) = flow(dir.path(), &edge, seed, &target, b_port, ("100", "20"));
    assert_eq!((a, b), (Some(0), Some(0)), "every transfer completed");

    let logs = sipp_message_logs(dir.path());
    assert!(
        !logs.contains(&format!(":{worker}")),
        "nothing anyone saw names the worker"
    );
    let refer_tos: Vec<&str> = logs
        .lines()
        .filter(|l| l.starts_with("Refer-To:"))
        .collect();
    // B logs the 101 it sent; A logs the 101 it received, rewritten.
    assert_eq!(refer_tos.len(), 202, "{refer_tos:?}");
    assert_eq!(
        refer_tos
            .iter()
            .filter(|l| **l == format!("Refer-To: <sip:c@{edge}>"))
            .count(),
        101,
        "every REFER reached A naming the edge, not C"
    );
    let b_named = format!("Referred-By: <sip:b@127.0.0.1:{b_port}>");
    assert_eq!(
        logs.lines().filter(|l| *l == b_named).count(),
        101,
        "only B's own log names B in Referred-By; A saw the edge"
    );
    // At C: 101 INVITEs, each with Referred-By, each naming only the edge.
    let c_log = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.to_string_lossy().contains("uas_") && p.to_string_lossy().ends_with("_messages.log")
        })
        .expect("C's message log");
    let c = std::fs::read_to_string(c_log).unwrap();
    let invites: Vec<&str> = c.split("INVITE sip:").skip(1).collect();
    assert_eq!(invites.len(), 101, "C got every transferred call");
    for inv in &invites {
        let head = inv.split("\r\n\r\n").next().unwrap_or("");
        assert!(
            head.contains("Referred-By:"),
            "INVITE at C carries Referred-By:\n{head}"
        );
        assert!(
            head.contains(&format!("Via: SIP/2.0/UDP {edge};")),
            "Via names the edge:\n{head}"
        );
        assert!(
            !head.contains(&format!(":{b_port}")),
            "nothing at C names B's address (Referred-By rewritten):\n{head}"
        );
    }
    // Every REFER A got and every NOTIFY B got carries a Contact, and it
    // names the edge with the call's key (RFC 3515 §2.1, RFC 6665), never
    // the phone on the other leg.
    for (prefix, method, n) in [
        ("transfer_a_", "REFER", 101),
        ("transfer_b_", "NOTIFY", 101),
    ] {
        let got = received_headers(&sipp_message_logs_of(dir.path(), prefix), method, "Contact");
        assert_eq!(got.len(), n, "{method}s received");
        for c in &got {
            let c = c
                .as_deref()
                .unwrap_or_else(|| panic!("a {method} without Contact"));
            assert!(
                c.contains(&format!("@{edge};k=")) || c.contains(&format!("<sip:{edge};k=")),
                "{method} Contact names the edge with a key: {c}"
            );
        }
    }
    let text = http_get(&format!("http://{worker_admin}/metrics")).1;
    assert_eq!(
        metric(&text, "handover_calls_answered_total"),
        202.0,
        "A-B and A-C, 101 times"
    );
    assert_eq!(
        metric(&text, "handover_calls_ended_total{cause=\"failed\"}"),
        0.0
    );
    assert_eq!(
        metric(
            &text,
            "handover_transfers_total{kind=\"blind\",mode=\"passthrough\",result=\"accepted\"}"
        ),
        101.0,
        "every REFER accepted, counted: {text}"
    );
    // C finished each of A's 101 calls with A's BYE.
    c_uas.expect_calls(101);
}

#[test]
fn transfer_failure_paths_through_up() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (b_port, busy_port) = (free_udp_port(), free_udp_port());
    let mut busy = sipp_uas_with(dir.path(), "uas_busy.xml", busy_port);
    let c = cluster(
        &[
            format!("b=127.0.0.1:{b_port}"),
            format!("busy=127.0.0.1:{busy_port}"),
        ],
        &[],
    );
    let edge = format!("127.0.0.1:{}", c.sip);
    let target = format!("sip:busy@127.0.0.1:{busy_port}");
    let calls = "10";
    let (a_exit, b_exit) = flow(
        dir.path(),
        &edge,
        ("transfer_b_fail.xml", "transfer_a_fail.xml"),
        &target,
        b_port,
        (calls, "5"),
    );
    // Each scenario checks every answer it expects (400, 400, 481, 403, 202,
    // 491, the NOTIFYs' sipfrags, the re-INVITE's 200, the NOTIFY after the
    // BYE); exit 0 means all ten calls went exactly so on both sides.
    let errs: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("_errors.log"))
        .flat_map(|p| error_lines(&p))
        .collect();
    assert_eq!((a_exit, b_exit), (Some(0), Some(0)), "errors: {errs:?}");
    let text = http_get(&format!("http://{}/metrics", c.worker_admin)).1;
    let t = |result: &str| {
        metric(
            &text,
            &format!(
                "handover_transfers_total{{kind=\"blind\",mode=\"passthrough\",result=\"{result}\"}}"
            ),
        )
    };
    // Per call: one refused (403), two accepted; two final NOTIFYs, both
    // failures (486, 603). The 400s and the 491 never reached A.
    assert_eq!(t("rejected"), 10.0);
    assert_eq!(t("accepted"), 20.0);
    assert_eq!(t("failed"), 20.0);
    assert_eq!(t("succeeded"), 0.0);
    assert_eq!(metric(&text, "handover_calls_active"), 0.0);
    // The busy target refused each of A's ten calls (486, ACKed).
    busy.expect_calls(10);
}

/// The value of `name` in the first SIP message of `log` (a SIPp message
/// log) whose first line starts with `first`, and that message's headers.
fn logged_header(log: &str, first: &str, name: &str) -> Option<String> {
    let at = log.find(&format!("\n{first}"))?;
    log[at + 1..]
        .lines()
        .take_while(|l| !l.is_empty())
        .find_map(|l| l.strip_prefix(&format!("{name}: ")))
        .map(str::to_string)
}

fn tag_of(v: &str) -> String {
    v.split(";tag=")
        .nth(1)
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .to_string()
}

/// Waits until B's own call to C (a SIPp UAC logging to `uac_*`) is
/// answered, then writes the Refer-To B sends: `uri` with a Replaces naming
/// B's dialog with the cluster as B knows it (to-tag the cluster's,
/// from-tag B's own), escaped.
fn replacing_b2(dir: &Path, uri: &str) -> String {
    assert!(
        wait_for(std::time::Duration::from_secs(5), || {
            logged_header(&sipp_message_logs_of(dir, "uac_"), "SIP/2.0 200", "To").is_some()
        }),
        "B's call to C was answered"
    );
    let log = sipp_message_logs_of(dir, "uac_");
    let cid = logged_header(&log, "SIP/2.0 200", "Call-ID").unwrap();
    let ours = tag_of(&logged_header(&log, "SIP/2.0 200", "To").unwrap());
    let bs = tag_of(&logged_header(&log, "SIP/2.0 200", "From").unwrap());
    format!(
        "{uri}?Replaces={}%3Bto-tag%3D{ours}%3Bfrom-tag%3D{bs}",
        cid.replace('@', "%40")
    )
}

#[test]
fn attended_transfer_through_up_reaches_the_replaced_dialog() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (b_port, c_port) = (free_udp_port(), free_udp_port());
    let mut c_uas = sipp_uas_traced(dir.path(), c_port);
    // No route for "desk": only the Replaces can take A's new call to C.
    let c = cluster(
        &[
            format!("b=127.0.0.1:{b_port}"),
            format!("c=127.0.0.1:{c_port}"),
        ],
        &[],
    );
    let edge_addr: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let edge = edge_addr.to_string();
    // B's second call: B (as a caller) talks to C through the cluster and
    // hangs up after 6 s.
    let (b2, b2_stat) = sipp_uac_with(dir.path(), "uac.xml", "c", edge_addr, 1, 1, 6000);
    let target = replacing_b2(dir.path(), &format!("sip:desk@127.0.0.1:{c_port}"));
    let (a_exit, b_exit) = flow(
        dir.path(),
        &edge,
        ("transfer_b.xml", "transfer_a_attended.xml"),
        &target,
        b_port,
        ("1", "10"),
    );
    let b2 = finish_uac(b2, &b2_stat);
    assert_eq!(
        (a_exit, b_exit, b2.exit),
        (Some(0), Some(0), Some(0)),
        "A, B and B's second call completed"
    );
    // At C: the first INVITE is B's call; the second is A's, and its
    // Replaces names C's dialog of B's call exactly as C knows it.
    let c_log = sipp_message_logs_of(dir.path(), "uas_");
    let invites: Vec<&str> = c_log.split("\nINVITE sip:").skip(1).collect();
    assert_eq!(invites.len(), 2, "C got B's call and A's");
    let field = |m: &str, name: &str| {
        m.lines()
            .take_while(|l| !l.is_empty())
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .map(str::to_string)
    };
    let first_cid = field(invites[0], "Call-ID").unwrap();
    let first_from_tag = tag_of(&field(invites[0], "From").unwrap());
    let c_tag = tag_of(&logged_header(&c_log, "SIP/2.0 200", "To").unwrap());
    assert_eq!(
        field(invites[1], "Replaces").as_deref(),
        Some(format!("{first_cid};to-tag={c_tag};from-tag={first_from_tag}").as_str()),
        "A's INVITE at C:\n{}",
        invites[1]
    );
    assert_ne!(field(invites[1], "Call-ID").unwrap(), first_cid);
    // Nothing A saw names B's call: not its Call-ID on either leg.
    let a_log = sipp_message_logs_of(dir.path(), "transfer_a_attended_");
    let b2_cid = logged_header(
        &sipp_message_logs_of(dir.path(), "uac_"),
        "SIP/2.0 200",
        "Call-ID",
    )
    .unwrap();
    assert!(!a_log.is_empty());
    assert!(
        !a_log.contains(&b2_cid) && !a_log.contains(&b2_cid.replace('@', "%40")),
        "A saw B's own Call-ID {b2_cid}"
    );
    let text = http_get(&format!("http://{}/metrics", c.worker_admin)).1;
    assert_eq!(
        metric(
            &text,
            "handover_transfers_total{kind=\"attended\",mode=\"passthrough\",result=\"accepted\"}"
        ),
        1.0
    );
    // C's two calls (B's, then A's) each ended with a BYE.
    c_uas.expect_calls(2);
}

#[test]
fn local_mode_transfers_a_transferee_without_refer_support() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (b_port, c_port) = (free_udp_port(), free_udp_port());
    let mut c_uas = sipp_uas_with(dir.path(), "uas_target.xml", c_port);
    let c = cluster(
        &[
            format!("b=127.0.0.1:{b_port};transfer=local"),
            format!("c=127.0.0.1:{c_port}"),
        ],
        // The phones here are trusted peers: they are told the new
        // party's identity (P-Asserted-Identity, RFC 3325).
        &["--trusted", "127.0.0.0/8"],
    );
    let edge = format!("127.0.0.1:{}", c.sip);
    let target = format!("sip:c@127.0.0.1:{c_port}");
    for (calls, rate) in [("1", "1"), ("50", "10")] {
        let (a_exit, b_exit) = flow(
            dir.path(),
            &edge,
            ("transfer_b_local.xml", "uac_transferee.xml"),
            &target,
            b_port,
            (calls, rate),
        );
        // A checks it got a re-INVITE with C's offer (never a REFER) and its
        // BYE is answered; B checks 202, NOTIFY 100, NOTIFY 200 terminated,
        // then the B2BUA's BYE; C (below) that the INVITE had no offer and
        // the ACK brought A's answer.
        assert_eq!((a_exit, b_exit), (Some(0), Some(0)), "{calls} transfer(s)");
    }
    // The target finished all 51 calls (offerless INVITE, A's answer in
    // the ACK, A's BYE).
    c_uas.expect_calls(51);
    // A's re-INVITE tells it who it now talks to: C, not B.
    let pai = received_headers(
        &sipp_message_logs_of(dir.path(), "uac_transferee_"),
        "INVITE",
        "P-Asserted-Identity",
    );
    assert_eq!(pai.len(), 51, "a re-INVITE per transfer at A");
    for p in &pai {
        let p = p.as_deref().expect("the re-INVITE names the new party");
        assert!(p.starts_with("<sip:c@"), "names C: {p}");
    }
    let text = http_get(&format!("http://{}/metrics", c.worker_admin)).1;
    let t = |result: &str| {
        metric(
            &text,
            &format!(
                "handover_transfers_total{{kind=\"blind\",mode=\"local\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(t("accepted"), 51.0);
    assert_eq!(t("succeeded"), 51.0);
    assert_eq!(metric(&text, "handover_calls_active"), 0.0);
    assert_eq!(
        metric(
            &text,
            "handover_transfer_seconds_count{kind=\"blind\",mode=\"local\"}"
        ),
        51.0
    );
}

#[test]
fn local_mode_attended_transfer_bridges_a_with_c_and_hangs_up_b_twice() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (b_port, c_port) = (free_udp_port(), free_udp_port());
    let mut c_uas = sipp_uas_traced_with(dir.path(), "uas_target_reinvite.xml", c_port);
    let c = cluster(
        &[
            format!("b=127.0.0.1:{b_port};transfer=local"),
            format!("c=127.0.0.1:{c_port}"),
        ],
        // The phones here are trusted peers: they are told the new
        // party's identity (P-Asserted-Identity, RFC 3325).
        &["--trusted", "127.0.0.0/8"],
    );
    let edge_addr: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let edge = edge_addr.to_string();
    // B's second call: B calls C and waits for the B2BUA to hang it up.
    let (b2, b2_stat) = sipp_uac_with(dir.path(), "uac_wait_bye.xml", "c", edge_addr, 1, 1, 0);
    let target = replacing_b2(dir.path(), &format!("sip:c@127.0.0.1:{c_port}"));
    let (a_exit, b_exit) = flow(
        dir.path(),
        &edge,
        ("transfer_b_local.xml", "uac_transferee.xml"),
        &target,
        b_port,
        ("1", "10"),
    );
    // A: a re-INVITE with C's offer, then its BYE answered. B: 202, NOTIFY
    // 100 and 200, BYE on this call; B's other call: BYE too. C: an
    // offerless re-INVITE in the dialog it had with B, A's answer in the
    // ACK, then A's BYE.
    let b2 = finish_uac(b2, &b2_stat);
    assert_eq!(
        (a_exit, b_exit, b2.exit),
        (Some(0), Some(0), Some(0)),
        "A, B, and B's call to C"
    );
    // C: one call (B's), re-INVITEd, ended by A's BYE.
    c_uas.expect_calls(1);
    // Each remaining party is told who it now talks to: C's re-INVITE (in
    // the dialog it had with B) names A, A's names C.
    let c_pai = received_headers(
        &sipp_message_logs_of(dir.path(), "uas_"),
        "INVITE",
        "P-Asserted-Identity",
    );
    assert_eq!(c_pai.len(), 2, "B's call, then the re-INVITE");
    let p = c_pai[1]
        .as_deref()
        .expect("C's re-INVITE names the new party");
    assert!(
        !p.contains(&format!(":{b_port}")) && !p.starts_with("<sip:b"),
        "not B: {p}"
    );
    let a_pai = received_headers(
        &sipp_message_logs_of(dir.path(), "uac_transferee_"),
        "INVITE",
        "P-Asserted-Identity",
    );
    let p = a_pai[0]
        .as_deref()
        .expect("A's re-INVITE names the new party");
    assert!(p.starts_with("<sip:c@"), "names C: {p}");
    let c_log = sipp_message_logs_of(dir.path(), "uas_");
    assert_eq!(
        c_log.matches("\nINVITE sip:").count(),
        2,
        "C got B's call and the B2BUA's re-INVITE, no new call"
    );
    assert!(c_log.contains("\nBYE sip:"), "A's BYE reached C");
    let text = http_get(&format!("http://{}/metrics", c.worker_admin)).1;
    assert_eq!(
        metric(
            &text,
            "handover_transfers_total{kind=\"attended\",mode=\"local\",result=\"succeeded\"}"
        ),
        1.0
    );
    assert_eq!(metric(&text, "handover_calls_active"), 0.0);
}

#[test]
fn local_mode_failed_transfers_keep_the_call() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (b_port, busy, ring) = (free_udp_port(), free_udp_port(), free_udp_port());
    let mut targets = [
        sipp_uas_with(dir.path(), "uas_busy.xml", busy),
        sipp_uas_with(dir.path(), "uas_ring.xml", ring),
    ];
    let c = cluster(
        &[
            format!("b=127.0.0.1:{b_port};transfer=local"),
            format!("busy=127.0.0.1:{busy}"),
            format!("ring=127.0.0.1:{ring}"),
        ],
        &["--ring-timeout-s", "1"],
    );
    let edge = format!("127.0.0.1:{}", c.sip);
    // A busy target, then one that only rings (cancelled at the ring
    // timeout): each time B hears NOTIFY 100 then the failure, resumes the
    // call with a re-INVITE that reaches A, and hangs up.
    for user in ["busy", "ring"] {
        let target = format!("sip:{user}@127.0.0.1:5060");
        let (a_exit, b_exit) = flow(
            dir.path(),
            &edge,
            ("transfer_b_local_fail.xml", "uac_transferee_fail.xml"),
            &target,
            b_port,
            ("5", "5"),
        );
        assert_eq!((a_exit, b_exit), (Some(0), Some(0)), "target {user}");
    }
    // Five calls each: refused 486, or cancelled at the ring timeout.
    for t in &mut targets {
        t.expect_calls(5);
    }
    let text = http_get(&format!("http://{}/metrics", c.worker_admin)).1;
    let t = |result: &str| {
        metric(
            &text,
            &format!(
                "handover_transfers_total{{kind=\"blind\",mode=\"local\",result=\"{result}\"}}"
            ),
        )
    };
    assert_eq!(
        (t("accepted"), t("failed"), t("succeeded")),
        (10.0, 10.0, 0.0)
    );
    assert_eq!(metric(&text, "handover_calls_unanswered_total"), 5.0);
    assert_eq!(metric(&text, "handover_calls_active"), 0.0);
}

/// Issue 22 with SIPp: an attended transfer through three workers whose
/// two calls are owned by different workers (by construction: the test
/// sets the hashing key and picks Call-IDs whose shards two different
/// workers serve), against a target that answers 481 to a Replaces that
/// is not exactly its dialog (`uas_strict_target.xml`).
#[test]
fn attended_transfer_across_workers_reaches_a_strict_target() {
    attended_across_workers(false);
}

/// The same, with the worker that owns B's call to C killed (SIGKILL)
/// after A's call to B is answered and before B's REFER: the REFER's
/// worker reads B's other call from the replicated table all the same,
/// and B's call to C ends through the worker that took it over.
#[test]
fn attended_transfer_across_workers_survives_the_other_calls_owner_dying() {
    attended_across_workers(true);
}

fn attended_across_workers(kill_other_owner: bool) {
    const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (b_port, c_port) = (free_udp_port(), free_udp_port());
    let mut c_uas = sipp_uas_with(dir.path(), "uas_strict_target.xml", c_port);
    let data = dir.path().join("data");
    let c = cluster(
        &[
            format!("b=127.0.0.1:{b_port}"),
            format!("c=127.0.0.1:{c_port}"),
        ],
        &[
            "--workers",
            "3",
            "--hash-key",
            KEY,
            "--data",
            data.to_str().unwrap(),
        ],
    );
    wait_members(&c.grpc, 3);
    wait_all_shards_served(&c.grpc, 3);
    let owner = call_id_owner(&c.grpc, 3, KEY);
    // SIPp's `-cid_str PREFIX%u` makes the first call's Call-ID PREFIX1.
    let (a_prefix, b2_cid, b2_owner) = (0..100)
        .map(|i| (format!("xa{i}-"), format!("xb{i}")))
        .find_map(|(a, b)| {
            let (x, y) = (owner(&format!("{a}1"))?, owner(&b)?);
            (x != y).then_some((a, b, y))
        })
        .expect("two Call-IDs on two workers");
    let edge = format!("127.0.0.1:{}", c.sip);
    let sf = |f: &str| scenario(f).to_string_lossy().into_owned();
    // B's call to C, held 12 s (C is told of it first: the dialog a
    // Replaces must name).
    let b2_port = free_udp_port().to_string();
    let mut b2 = sipp(
        dir.path(),
        &[
            "-sf",
            &sf("uac.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            &b2_port,
            "-s",
            "c",
            "-m",
            "1",
            "-d",
            "12000",
            "-cid_str",
            &b2_cid,
            &edge,
        ],
    );
    let target = replacing_b2(dir.path(), &format!("sip:desk@127.0.0.1:{c_port}"));
    // B refers 4 s after answering A (time to kill a worker first).
    let mut b = sipp(
        dir.path(),
        &[
            "-sf",
            &sf("transfer_b_later.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            &b_port.to_string(),
            "-m",
            "1",
            "-d",
            "4000",
            "-key",
            "target",
            &target,
            &edge,
        ],
    );
    std::thread::sleep(std::time::Duration::from_millis(300));
    let a_port = free_udp_port().to_string();
    let cid_str = format!("{a_prefix}%u");
    let mut a = sipp(
        dir.path(),
        &[
            "-sf",
            &sf("transfer_a_attended.xml"),
            "-i",
            "127.0.0.1",
            "-p",
            &a_port,
            "-s",
            "b",
            "-m",
            "1",
            "-r",
            "1",
            "-cid_str",
            &cid_str,
            &edge,
        ],
    );
    let (ahost, aport) = c.worker_admin.rsplit_once(':').unwrap();
    let aport: u16 = aport.parse().unwrap();
    let summed = |which: &[u16], series: &str| summed(ahost, aport, which, series);
    let mut alive: Vec<u16> = vec![0, 1, 2];
    if kill_other_owner {
        // Both calls answered (B's to C, A's to B), the REFER 4 s away.
        assert!(
            wait_for(std::time::Duration::from_secs(5), || summed(
                &alive,
                "handover_calls_answered_total"
            ) >= 2.0),
            "both calls answered"
        );
        std::thread::sleep(std::time::Duration::from_millis(300));
        assert!(
            sigkill_worker(c.worker + b2_owner),
            "the owner of B's call to C killed"
        );
        alive.retain(|&w| w != b2_owner);
    }
    let (a_exit, b_exit) = (a.0.wait().unwrap().code(), b.0.wait().unwrap().code());
    let b2_exit = b2.0.wait().unwrap().code();
    assert_sipp_logs_clean(dir.path());
    assert_eq!(
        (a_exit, b_exit, b2_exit),
        (Some(0), Some(0), Some(0)),
        "A, B and B's call to C completed"
    );
    // C took B's call, then A's with a Replaces naming it exactly (its
    // scenario refuses anything else with 481 and a failed call); B's call
    // to C ended with its BYE, through its new owner if one was killed.
    c_uas.expect_calls(2);
    let read_elsewhere = summed(
        &alive,
        "handover_replaces_elsewhere_total{request=\"refer\"}",
    );
    let refer_worker = owner(&format!("{a_prefix}1")).expect("A's call has an owner");
    if kill_other_owner && read_elsewhere == 0.0 {
        // The kill's takeover can win the race with B's REFER (a slow
        // machine, a late poll): the dead worker's shards went to the
        // REFER's worker, which then held B's other call itself, adopted
        // from the same table.
        assert!(
            summed(&[refer_worker], "handover_calls_adopted_total") >= 1.0,
            "the REFER's worker neither read B's other call from the table nor adopted it"
        );
        eprintln!("the REFER's worker had adopted B's other call before the REFER");
    } else {
        assert_eq!(
            read_elsewhere, 1.0,
            "the REFER's worker read B's other call from the table"
        );
    }
    if kill_other_owner {
        assert!(
            summed(&alive, "handover_calls_adopted_total") >= 1.0,
            "B's call to C was taken over"
        );
    }
}
