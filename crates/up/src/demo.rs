//! `handover up --demo`: once the cluster has formed, `handover load`
//! plays calls and transfers against it and prints what happened.

use std::net::SocketAddr;

use super::{Kids, UpArgs};

/// Waits (at most 30 s) until every worker of a replicated `up` reports
/// all of them in the map and the shards served between them sum to all
/// of them, as `handover status` reads it; then a moment for the edge's
/// map watch. False when that did not happen in time.
fn wait_formed(a: &UpArgs) -> anyhow::Result<bool> {
    use handover_worker::rpc::pb;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let n = usize::from(a.workers);
    let grpc: Vec<SocketAddr> = (0..a.workers)
        .filter_map(|i| {
            let port = a.worker_grpc.port().checked_add(i)?;
            Some(SocketAddr::new(a.worker_grpc.ip(), port))
        })
        .collect();
    let formed = rt.block_on(async {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            let mut served = 0u64;
            let mut all_in = true;
            for g in &grpc {
                let s = async {
                    let mut c = pb::admin_client::AdminClient::new(
                        handover_ctl::status::admin_channel(*g, None).await?,
                    );
                    anyhow::Ok(c.status(pb::StatusRequest {}).await?.into_inner())
                }
                .await;
                match s {
                    Ok(s) => {
                        served += s.serving_shards;
                        all_in &= s.members_up.len() == n;
                    }
                    Err(_) => all_in = false,
                }
            }
            if all_in && served == handover_sip::ids::SHARDS as u64 {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                return true;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        false
    });
    Ok(formed)
}

/// The demo: waits for the cluster, plays calls and transfers against it,
/// prints the summary and where to look next.
pub(super) fn demo(
    a: &UpArgs,
    kids: &mut Kids,
    stop: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<()> {
    // Give the children a moment to bind; a child that fails to start
    // (a port in use) has said why on stderr by then.
    std::thread::sleep(std::time::Duration::from_millis(1500));
    for c in &mut kids.0 {
        if let Some(s) = c.try_wait()? {
            anyhow::bail!(
                "a cluster process exited ({s}) before the demo could start; see its error above"
            );
        }
    }
    // A replicated cluster serves calls once its workers have formed it:
    // a leader, every worker in the map, every shard served. Calls sent
    // before that meet shards nobody serves yet (the edge answers 503; seen
    // on a busy machine, where forming took longer than the pause above).
    if a.workers >= 2 && !a.no_replication && !wait_formed(a)? {
        eprintln!(
            "handover up: the cluster did not serve every shard within 30 s; the demo starts anyway"
        );
    }
    let args = handover_load::cli::LoadArgs {
        target: a.listen,
        listen: a.demo_listen,
        rate: 20.0,
        calls: 200,
        duration_s: None,
        hold_ms: 1500,
        max_concurrent: 1000,
        mix: "basic=6,hold=2,blind=1,attended=1".into(),
        t1_ms: 500,
        json: false,
        allow_remote: false,
        callee: "b".into(),
        threads: 1,
        io: "auto".into(),
    };
    println!(
        "demo: 200 calls at 20/s (basic, hold/resume, blind and attended transfers), the load generator on {}",
        a.demo_listen
    );
    let ok = handover_load::cli::run_until(&args, stop)?;
    if stop.load(std::sync::atomic::Ordering::Relaxed) {
        println!("demo: stopped before its 200 calls were played (Ctrl-C or SIGTERM)");
        return Ok(());
    }
    println!(
        "demo: {}. Look at http://{}/metrics and http://{}/metrics (edge, first worker); the cluster stays up until Ctrl-C.",
        if ok {
            "every call succeeded"
        } else {
            "some calls failed (causes above)"
        },
        a.admin,
        a.worker_admin
    );
    Ok(())
}
