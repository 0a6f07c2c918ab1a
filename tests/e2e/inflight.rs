//! Requests in flight when the worker that relayed them dies (issue 22):
//! what the phones see must be the answer, or a clean retry, never a call
//! left up on one side.

use std::time::Duration;

use crate::support::*;

/// Each caller puts its callee on hold 2 s after the answer; the callee
/// answers the hold 8 s after it arrives. While every hold is in flight
/// (the callers have their 100 Trying and will not send it again), the
/// worker with the most calls is SIGKILLed. Its calls' records carry the
/// hold (`PendingRequest`); the workers that adopt them resend it to the
/// callee, relay the callee's late 200 to the caller as the answer to its
/// own re-INVITE, and ACK it. Every call must then be held, resumed and
/// hung up on both sides.
#[test]
fn a_hold_in_flight_when_its_worker_is_killed_is_answered_through_the_new_owner() {
    const CALLS: u32 = 30;
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let held = free_udp_port();
    let mut uas = sipp_uas_on(dir.path(), "uas_held_late.xml", held, &["-d", "8000"]);
    let (c, host, port) =
        crate::failover::three_workers(dir.path(), &[format!("held=127.0.0.1:{held}")]);
    let host = host.as_str();
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    let (uac, stat) = sipp_uac_with(
        dir.path(),
        "uac_hold_later.xml",
        "held",
        edge,
        30,
        CALLS,
        2_000,
    );
    let (per, victim) = crate::failover::busiest_when_up(host, port, f64::from(CALLS), 0);
    // The last hold goes out 2 s after the last answer.
    std::thread::sleep(Duration::from_millis(2_600));
    assert!(sigkill_worker(c.worker + victim), "worker {victim} killed");
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), u64::from(CALLS), 0),
        "{r:?}: every call held, resumed and hung up"
    );
    uas.expect_calls(u64::from(CALLS));
    let survivors: Vec<u16> = (0..3).filter(|&i| i != victim).collect();
    let resumed = summed(host, port, &survivors, "handover_requests_resumed_total");
    assert!(
        resumed >= per[victim as usize],
        "each of the killed worker's {} calls had its hold resumed by a survivor ({resumed})",
        per[victim as usize]
    );
    eprintln!(
        "hold in flight at a kill: worker {} had {} calls, {resumed} holds resumed by the survivors; {CALLS}/{CALLS} calls held, resumed and hung up",
        victim + 1,
        per[victim as usize]
    );
}

/// A worker that dies after its new calls' records are committed and
/// before their 2xx reach the callers (fault injection withholds the
/// commits from its SIP loop, so the 2xx stay held, then SIGKILL): the
/// callers are past their 180 and will not send their INVITE again. The
/// 2xx rides beside each first record; the workers that adopt the calls
/// send it to the callers, who ACK it, and every call is answered and
/// hung up on both sides.
#[test]
fn calls_whose_2xx_never_left_a_killed_worker_are_answered_by_the_new_owner() {
    const CALLS: u32 = 30;
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas(dir.path(), b);
    let (c, host, port) = crate::failover::three_workers(dir.path(), &[format!("*=127.0.0.1:{b}")]);
    let host = host.as_str();
    let o = fault(
        &dir.path().join("data").join("worker-1"),
        1,
        &["--withhold-commits"],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    // 30 calls over 1 s, each hung up by its caller 1 s after the answer.
    let (uac, stat) = sipp_uac(dir.path(), edge, 30, CALLS, 1_000);
    // All answered by the callee and committed well before the hold limit
    // (4 s) would let worker 1's 2xx go without a commit.
    std::thread::sleep(Duration::from_millis(2_000));
    let held = metric(
        &http_get(&format!("http://{host}:{port}/metrics")).1,
        "handover_calls_started_total",
    );
    assert!(held > 0.0, "worker 1 took calls");
    assert!(sigkill_worker(c.worker), "worker 1 killed");
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), u64::from(CALLS), 0),
        "{r:?}: every call answered and hung up"
    );
    uas.expect_calls(u64::from(CALLS));
    let resent = summed(host, port, &[1, 2], "handover_adopted_oks_resent_total");
    assert!(
        resent >= held,
        "each of worker 1's {held} calls had its 2xx sent by a survivor ({resent})"
    );
    eprintln!(
        "2xx held at a kill: worker 1 had {held} calls, {resent} 2xx sent by the survivors; {CALLS}/{CALLS} calls answered and hung up"
    );
}

/// A BYE relayed by a worker cut off from the others while its lease still
/// runs: the call's removal cannot be committed, and the worker that takes
/// the shard over adopts a call that is over. Once the partition heals the
/// cut-off worker's removal is applied (a removal is final, whoever owns
/// the shard now) and the new owner forgets the call: no call is left up
/// on any worker, in the gauges or in the replicated table.
#[test]
fn byes_relayed_by_a_cut_off_worker_leave_no_call_up_once_it_heals() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let b = free_udp_port();
    let mut uas = sipp_uas(dir.path(), b);
    let c = crate::kube::by_name(dir.path(), b, &[]);
    wait_all_shards_served(&format!("127.0.0.1:{}", c.grpc), 3);
    let host = "127.0.0.1";
    // 40 calls over 1 s, each hung up by its caller 3 s after the answer:
    // the BYEs go out 3 to 4 s after the start.
    let t0 = tokio::time::Instant::now();
    let (uac, stat) = sipp_uac(dir.path(), c.edge_sip, 40, 40, 3_000);
    let (per, w) = crate::failover::busiest_when_up(host, c.admin, 40.0, 0);
    // Cut the busiest worker off 2.7 s in, for 8 s: its lease (2 s at
    // most) covers the BYEs of its calls, which it relays but cannot
    // commit; the others declare it dead and adopt its calls meanwhile.
    std::thread::sleep(Duration::from_millis(2_700).saturating_sub(t0.elapsed()));
    let o = fault(dir.path(), w + 1, &["--isolate-ms", "8000"]);
    assert!(o.status.success(), "isolate: {}", stderr(&o));
    let r = finish_uac(uac, &stat);
    assert_eq!(
        (r.exit, r.successful, r.failed),
        (Some(0), 40, 0),
        "{r:?}: every call hung up"
    );
    uas.expect_calls(40);
    let everyone: Vec<u16> = (0..3).collect();
    let replicated = |i: u16| {
        let o = admin_cmd("status", &format!("127.0.0.1:{}", c.grpc + i), &["--json"]);
        serde_json::from_slice::<serde_json::Value>(&o.stdout)
            .ok()
            .and_then(|v| v["calls"].as_u64())
    };
    let clear = wait_for(Duration::from_secs(20), || {
        summed(host, c.admin, &everyone, "handover_calls_active") == 0.0
            && (0..3).all(|i| replicated(i) == Some(0))
    });
    let active: Vec<f64> = (0..3)
        .map(|i| summed(host, c.admin, &[i], "handover_calls_active"))
        .collect();
    let table: Vec<Option<u64>> = (0..3).map(replicated).collect();
    let ended = summed(
        host,
        c.admin,
        &everyone,
        "handover_calls_ended_elsewhere_total",
    );
    assert!(
        clear,
        "no call left up after the partition healed: active {active:?}, replicated {table:?}"
    );
    assert!(
        ended > 0.0,
        "the new owners adopted calls the cut-off worker had hung up, and forgot them"
    );
    eprintln!(
        "BYEs during a partition: worker {} had {} calls; the new owners forgot {ended} calls it had hung up once it healed; none left up",
        w + 1,
        per[w as usize]
    );
}
