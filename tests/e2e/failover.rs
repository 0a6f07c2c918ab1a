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

fn adopted(host: &str, port: u16, i: u16) -> f64 {
    let (code, text) = http_get(&format!("http://{host}:{}/metrics", port + i));
    if code != 200 {
        return 0.0;
    }
    metric(&text, "handover_calls_adopted_total")
}

#[test]
fn a_killed_workers_calls_are_reinvited_and_hung_up_from_both_sides() {
    let _g = serial();
    let dir = tempfile::tempdir().unwrap();
    let (held, holds) = (free_udp_port(), free_udp_port());
    let _uas_held = sipp_uas_with(dir.path(), "uas_held.xml", held);
    let _uas_holds = sipp_uas_with(dir.path(), "uas_holds_later.xml", holds);
    let grpc = format!("127.0.0.1:{}", free_tcp_ports(3));
    let data = dir.path().join("data");
    let c = cluster(
        &[
            format!("held=127.0.0.1:{held}"),
            format!("holds=127.0.0.1:{holds}"),
        ],
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
    let port: u16 = port.parse().unwrap();
    // Every worker ready (it has the map and has caught up), and all three
    // in the map, so no shard moves while calls are set up.
    assert!(
        wait_for(Duration::from_secs(15), || (0..3)
            .all(|i| http_get(&format!("http://{host}:{}/readyz", port + i))
                .0
                == 200)),
        "the three workers became ready"
    );
    wait_members(&grpc, 3);
    let edge: std::net::SocketAddr = format!("127.0.0.1:{}", c.sip).parse().unwrap();
    // 60 calls where the caller holds, resumes and hangs up 15 s after the
    // answer; 60 where the callee does, 15 s after its answer.
    let (uac_a, stat_a) = sipp_uac_with(
        dir.path(),
        "uac_hold_later.xml",
        "held",
        edge,
        40,
        60,
        15_000,
    );
    let (uac_b, stat_b) = sipp_uac_with(dir.path(), "uac_held.xml", "holds", edge, 40, 60, 0);
    let up = wait_for(Duration::from_secs(10), || {
        (0..3).map(|i| active(host, port, i)).sum::<f64>() >= 120.0
    });
    // Let the last answers reach the callers: a call in setup when its
    // worker dies is the caller's to retry (its INVITE is retransmitted to
    // the new owner), not one to take over.
    std::thread::sleep(Duration::from_millis(1000));
    let per: Vec<f64> = (0..3).map(|i| active(host, port, i)).collect();
    assert!(up, "all 120 calls were answered before the kill: {per:?}");
    let victim = (0..3u16)
        .max_by(|&a, &b| per[a as usize].total_cmp(&per[b as usize]))
        .unwrap();
    let victim_calls = per[victim as usize];
    assert!(victim_calls > 0.0, "{per:?}");
    // A call A heard 200 for is committed already (the 2xx waits for it).
    // SIGKILL: no drain, no goodbye.
    let pattern = format!("worker --listen 127.0.0.1:{}", c.worker + victim);
    let killed = std::process::Command::new("pkill")
        .args(["-9", "-f", "--", &pattern])
        .status()
        .unwrap();
    assert!(killed.success(), "worker {victim} killed");
    let t0 = Instant::now();
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
    eprintln!(
        "failover: worker {} killed with {victim_calls} of 120 calls up; all adopted {:.1} s after the kill; \
         callers' hold/resume/BYE: {}/60 ok, callees' hold/resume/BYE: {}/60 ok",
        victim + 1,
        takeover.as_secs_f64(),
        a.successful,
        b.successful
    );
    assert_eq!(
        (a.exit, a.successful, a.failed),
        (Some(0), 60, 0),
        "callers: {a:?}"
    );
    assert_eq!(
        (b.exit, b.successful, b.failed),
        (Some(0), 60, 0),
        "callees' side: {b:?}"
    );
    // Every call ended on a survivor: none is left up.
    let left: f64 = survivors.iter().map(|&i| active(host, port, i)).sum();
    assert_eq!(left, 0.0, "calls still up after every BYE");
}
