//! `handover load`: every scenario of the mix through `handover up` with
//! zero failures in both transfer modes, and its failure counting against
//! SIPp callees that reject, drop and delay on purpose.

use std::process::Command;

use crate::support::*;

/// Runs `handover load ARGS --json`; (exit code, report).
pub(crate) fn load(args: &[&str]) -> (Option<i32>, serde_json::Value) {
    let out = Command::new(env!("CARGO_BIN_EXE_handover"))
        .arg("load")
        .args(args)
        .arg("--json")
        .output()
        .expect("handover load runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&text).unwrap_or_else(|e| {
        panic!(
            "load printed no JSON report ({e}):\n{text}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

fn n(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut x = v;
    for p in path {
        x = &x[*p];
    }
    x.as_u64().unwrap_or_else(|| panic!("{path:?} in {v}"))
}

/// Runs `handover load` through cluster `c` (its callees on port `lp`)
/// and asserts that every call succeeded, at both ends; the report.
fn all_succeed(
    c: &Cluster,
    lp: u16,
    mode: &str,
    rate: u32,
    calls: u64,
    hold_ms: u32,
    mix: &str,
) -> serde_json::Value {
    let (target, listen) = (format!("127.0.0.1:{}", c.sip), format!("127.0.0.1:{lp}"));
    let (rate, n_calls, hold) = (rate.to_string(), calls.to_string(), hold_ms.to_string());
    let (code, r) = load(&[
        "--target",
        &target,
        "--listen",
        &listen,
        "--rate",
        &rate,
        "--calls",
        &n_calls,
        "--hold-ms",
        &hold,
        "--mix",
        mix,
    ]);
    assert_eq!(code, Some(0), "{mode}: {r:#}");
    assert_eq!(
        (
            n(&r, &["counts", "succeeded"]),
            n(&r, &["counts", "failed"]),
            n(&r, &["counts", "callee_legs_failed"])
        ),
        (calls, 0, 0),
        "{mode}: {r:#}"
    );
    r
}

#[test]
fn load_plays_every_scenario_through_up_in_both_transfer_modes() {
    let _g = serial();
    for mode in ["passthrough", "local"] {
        let lp = free_udp_port();
        let c = cluster(&[format!("*=127.0.0.1:{lp}")], &["--transfer-mode", mode]);
        let r = all_succeed(
            &c,
            lp,
            mode,
            40,
            80,
            300,
            "basic=1,hold=1,blind=1,attended=1",
        );
        for s in ["basic", "hold", "blind", "attended"] {
            assert_eq!(
                r["by_scenario"][s][0].as_u64(),
                Some(20),
                "{mode} {s}: {r:#}"
            );
        }
        // The worker saw the transfers the generator played, in this mode.
        let text = http_get(&format!("http://{}/metrics", c.worker_admin)).1;
        for kind in ["blind", "attended"] {
            assert_eq!(
                metric(
                    &text,
                    &format!(
                        "handover_transfers_total{{kind=\"{kind}\",mode=\"{mode}\",result=\"succeeded\"}}"
                    )
                ),
                20.0,
                "{mode} {kind}"
            );
        }
        assert_eq!(metric(&text, "handover_calls_active"), 0.0);
    }
}

/// Issue 22: attended transfers through three replicated workers, where
/// the transferor's two calls usually live on two workers (two in three),
/// in both modes, against the generator's strict peers (C answers 481 to
/// a Replaces that is not exactly its dialog). Every transfer succeeds,
/// and the workers say how many REFERs named a call of another worker.
#[test]
fn attended_transfers_across_three_workers_in_both_modes() {
    let _g = serial();
    for mode in ["passthrough", "local"] {
        let lp = free_udp_port();
        let c = cluster(
            &[format!("*=127.0.0.1:{lp}")],
            &["--workers", "3", "--transfer-mode", mode],
        );
        wait_members(&c.grpc, 3);
        wait_all_shards_served(&c.grpc, 3);
        all_succeed(&c, lp, mode, 25, 200, 1000, "attended=1");
        let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
        let port: u16 = port.parse().unwrap();
        let sum = |series: &str| -> f64 {
            (0..3)
                .map(|i| {
                    metric(
                        &http_get(&format!("http://{host}:{}/metrics", port + i)).1,
                        series,
                    )
                })
                .sum()
        };
        let across = sum("handover_replaces_elsewhere_total{request=\"refer\"}");
        let succeeded = sum(&format!(
            "handover_transfers_total{{kind=\"attended\",mode=\"{mode}\",result=\"succeeded\"}}"
        ));
        eprintln!("{mode}: 200 attended transfers, {across} with their two calls on two workers");
        assert_eq!(
            succeeded, 200.0,
            "{mode}: the workers saw every transfer succeed"
        );
        assert!(
            across >= 100.0,
            "{mode}: at least 100 transfers had their two calls on two workers: {across}"
        );
    }
}

/// The same the moment `up --workers 3` is ready, while its workers join
/// and shards move to them: every transfer succeeds, and nothing a caller
/// sends is dropped for long. Before the shards a worker hands over were
/// released (`MemberReleased`), each join left a third of them dark for
/// a lease (2 s): INVITEs were dropped and retransmitted, the transferees
/// hung up before the consultation call was answered, and 2 to 7 of 200
/// transfers failed.
#[test]
fn attended_transfers_placed_as_three_workers_start_all_succeed() {
    let _g = serial();
    let lp = free_udp_port();
    let c = cluster(
        &[format!("*=127.0.0.1:{lp}")],
        &["--workers", "3", "--transfer-mode", "local"],
    );
    let r = all_succeed(&c, lp, "local", 20, 200, 1000, "attended=1");
    let (host, port) = c.worker_admin.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let dropped: f64 = (0..3)
        .map(|i| {
            metric(
                &http_get(&format!("http://{host}:{}/metrics", port + i)).1,
                "handover_worker_not_served_total",
            )
        })
        .sum();
    eprintln!(
        "200 attended transfers from the first ready moment: {} retransmissions, {dropped} datagrams dropped as not (yet) served",
        n(&r, &["counts", "retransmissions"])
    );
}

#[test]
fn load_counts_failures_by_cause_against_callees_that_reject_drop_and_delay() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (busy, lossy, slow) = (free_udp_port(), free_udp_port(), free_udp_port());
    let [mut busy_uas, mut lossy_uas, mut slow_uas] = [
        sipp_uas_with(dir.path(), "uas_busy.xml", busy),
        sipp_uas_with(dir.path(), "uas_lossy.xml", lossy),
        sipp_uas_with(dir.path(), "uas_slow.xml", slow),
    ];
    let run = |port: u16, calls: &str| {
        let (target, listen) = (
            format!("127.0.0.1:{port}"),
            format!("127.0.0.1:{}", free_udp_port()),
        );
        load(&[
            "--target",
            &target,
            "--listen",
            &listen,
            "--callee",
            "x",
            "--rate",
            "20",
            "--calls",
            calls,
            "--hold-ms",
            "100",
            "--t1-ms",
            "100",
        ])
    };
    // Rejected: every call fails, with the status line as its cause.
    let (code, r) = run(busy, "20");
    assert_eq!(code, Some(1), "failures make the exit code 1");
    assert_eq!(n(&r, &["counts", "failed"]), 20, "{r:#}");
    assert_eq!(r["failures"]["486 Busy Here"].as_u64(), Some(20), "{r:#}");
    // Dropped (10% of INVITEs and of 200s lost at the callee): the
    // generator retransmits and re-ACKs; every call succeeds.
    let (code, r) = run(lossy, "60");
    assert_eq!(code, Some(0), "{r:#}");
    assert_eq!(n(&r, &["counts", "succeeded"]), 60, "{r:#}");
    assert!(n(&r, &["counts", "retransmissions"]) > 0, "{r:#}");
    // Delayed 300 ms before the 200: the setup latency says so.
    let (code, r) = run(slow, "10");
    assert_eq!(code, Some(0), "{r:#}");
    let p50 = r["setup_latency"]["p50_ms"].as_f64().unwrap();
    assert!((300.0..1000.0).contains(&p50), "p50 {p50} ms: {r:#}");
    // What each callee saw: 20 refused, 60 and 10 answered and hung up.
    busy_uas.expect_calls(20);
    lossy_uas.expect_calls(60);
    slow_uas.expect_calls(10);
}

#[test]
fn load_refuses_what_it_should_not_do() {
    for (args, says) in [
        (
            vec!["--target", "10.1.2.3:5060"],
            "--target 10.1.2.3:5060 is not a loopback address",
        ),
        (
            vec!["--mix", "basic,fax"],
            "--mix: scenario `fax` is not one of",
        ),
        (vec!["--rate", "0"], "--rate 0 is out of range"),
        (
            vec!["--threads", "2", "--mix", "basic,blind"],
            "--threads 2 plays only basic and hold calls",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_handover"))
            .arg("load")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "one line: {err}");
    }
}
