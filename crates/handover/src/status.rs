//! `handover status`: one worker's view of the replicated cluster, over its
//! gRPC `Admin` service.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Args;

use handover_worker::rpc::pb;

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// A worker's gRPC address (its `--peer` GRPC_ADDR) [default: 127.0.0.1:7001].
    #[arg(long, default_value = "127.0.0.1:7001")]
    grpc: SocketAddr,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: &StatusArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let s = rt.block_on(async {
        let mut c = tokio::time::timeout(
            std::time::Duration::from_secs(3),
            pb::admin_client::AdminClient::connect(format!("http://{}", a.grpc)),
        )
        .await
        .map_err(|_| anyhow::anyhow!("no answer from {} within 3 s", a.grpc))?
        .with_context(|| {
            format!(
                "cannot reach a worker's gRPC at {} (is it a replicated worker's --peer address?)",
                a.grpc
            )
        })?;
        let s = c
            .status(pb::StatusRequest {})
            .await
            .context("status call failed")?;
        anyhow::Ok(s.into_inner())
    })?;
    if a.json {
        let per: serde_json::Map<String, serde_json::Value> = s
            .calls_per_worker
            .iter()
            .map(|(k, v)| (k.to_string(), (*v).into()))
            .collect();
        let v = serde_json::json!({
            "id": s.id, "leader": s.leader, "term": s.term, "commit": s.commit,
            "applied": s.applied, "epoch": s.epoch, "calls": s.calls,
            "owned_shards": s.owned_shards, "serving_shards": s.serving_shards,
            "members_up": s.members_up, "calls_per_worker": per,
            "serving_map": s.serving_map.iter().map(|b| format!("{b:02x}")).collect::<String>(),
            "serving_since_unix_ms": s.serving_since_unix_ms, "at_unix_ms": s.at_unix_ms,
            "lease_until_unix_ms": s.lease_until_unix_ms,
            "aors": s.aors, "bindings": s.bindings,
            "bindings_per_worker": s.bindings_per_worker.iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
        });
        println!("{v}");
        return Ok(());
    }
    println!("asked worker   {} ({})", s.id, a.grpc);
    println!(
        "leader         {}",
        if s.leader == 0 {
            "none".to_string()
        } else {
            s.leader.to_string()
        }
    );
    println!("term           {}", s.term);
    println!("commit index   {} (applied here: {})", s.commit, s.applied);
    println!("shard map      epoch {}", s.epoch);
    println!("members up     {:?}", s.members_up);
    println!("calls          {} replicated", s.calls);
    let mut per: Vec<_> = s.calls_per_worker.iter().collect();
    per.sort();
    for (w, n) in per {
        println!("  worker {w:<6} {n} calls");
    }
    println!(
        "registrations  {} addresses-of-record, {} bindings",
        s.aors, s.bindings
    );
    let mut per: Vec<_> = s.bindings_per_worker.iter().collect();
    per.sort();
    for (w, n) in per {
        println!("  worker {w:<6} {n} bindings");
    }
    println!(
        "this worker    owns {} shards, serves {}",
        s.owned_shards, s.serving_shards
    );
    Ok(())
}

/// `handover fault isolate`: tests' fault injection.
#[derive(Debug, Args)]
pub(crate) struct FaultArgs {
    /// The worker's gRPC address.
    #[arg(long)]
    grpc: SocketAddr,
    /// Cut the worker's Raft traffic both ways for this many milliseconds.
    #[arg(long, default_value_t = 0)]
    isolate_ms: u64,
    /// Make the worker's Raft replica thread panic instead.
    #[arg(long)]
    panic_replica: bool,
}

pub(crate) fn fault(a: &FaultArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async {
        let mut c = pb::admin_client::AdminClient::connect(format!("http://{}", a.grpc))
            .await
            .with_context(|| format!("cannot reach a worker's gRPC at {}", a.grpc))?;
        c.isolate(pb::IsolateRequest {
            millis: a.isolate_ms,
            panic_replica: a.panic_replica,
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        anyhow::Ok(())
    })
}
