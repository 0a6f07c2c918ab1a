//! Requests in flight when the worker that relayed them dies (issue 22):
//! what the phones see must be the answer, or a clean retry, never a call
//! left up on one side.

use std::time::Duration;

use crate::support::*;

/// Each caller puts its callee on hold 2 s after the answer; the callee
/// answers the hold 8 s after it arrives. While every hold is in flight
/// (the callers have their 100 Trying and will not send it again), the
/// worker with the most calls is SIGKILLed. Its calls' records carry the
/// hold (`PendingInvite`); the workers that adopt them resend it to the
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
    let resumed = summed(host, port, &survivors, "handover_reinvites_resumed_total");
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
