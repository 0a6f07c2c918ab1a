//! `handover status`: one worker's view of the replicated cluster, over its
//! gRPC `Admin` service.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Args;

use handover_worker::rpc::pb;

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A worker's gRPC address (its `--peer` GRPC_ADDR) [default: 127.0.0.1:7001].
    #[arg(long, default_value = "127.0.0.1:7001")]
    grpc: SocketAddr,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Cluster credentials (`ca.crt`, `tls.crt`, `tls.key`; any cluster
    /// certificate will do, e.g. `admin.handover`) [default: the ones
    /// `handover up` left for this port, if any; else no TLS].
    #[arg(long, value_name = "DIR")]
    cluster_tls: Option<std::path::PathBuf>,
}

/// Where `handover up` leaves credentials for `handover status` of the
/// worker whose gRPC port is `port` (removed when `up` stops).
pub fn up_credentials(port: u16) -> std::path::PathBuf {
    let base = std::env::var_os("HOME")
        .map(|h| std::path::PathBuf::from(h).join(".cache"))
        .unwrap_or_else(std::env::temp_dir);
    base.join("handover").join("up").join(port.to_string())
}

/// A channel to a worker's gRPC at `addr`, with `dir`'s credentials, or
/// `up`'s for that port when there are some, or none.
pub async fn admin_channel(
    addr: SocketAddr,
    dir: Option<&std::path::Path>,
) -> anyhow::Result<tonic::transport::Channel> {
    let dir = dir.map(std::path::Path::to_path_buf).or_else(|| {
        let d = up_credentials(addr.port());
        d.join("tls.crt").exists().then_some(d)
    });
    let tls = match dir {
        None => None,
        Some(d) => {
            Some(handover_worker::tls::TlsDir(d).client_config(handover_worker::tls::WORKER_NAME)?)
        }
    };
    tokio::time::timeout(
        std::time::Duration::from_secs(3),
        handover_worker::tls::channel(&addr.to_string(), tls),
    )
    .await
    .map_err(|_| anyhow::anyhow!("no answer from {addr} within 3 s"))?
    .with_context(|| {
        format!(
            "cannot reach a worker's gRPC at {addr} (is it a replicated worker's --peer address?)"
        )
    })
}

pub fn run(a: &StatusArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let s = rt.block_on(async {
        let mut c = pb::admin_client::AdminClient::new(
            admin_channel(a.grpc, a.cluster_tls.as_deref()).await?,
        );
        let s = c
            .status(pb::StatusRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("status call failed: {}", s.message()))?;
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
            "config_generation": s.config_generation,
            "voters": s.voters, "learners": s.learners, "changing": s.changing,
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
    println!(
        "settings       generation {}{}",
        s.config_generation,
        if s.config_generation == 0 {
            " (as each worker started)"
        } else {
            " (handover reload)"
        }
    );
    println!(
        "raft members   voters {:?}, learners {:?}{}",
        s.voters,
        s.learners,
        if s.changing {
            ", a change in progress"
        } else {
            ""
        }
    );
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

/// The admin socket a `drain` or `fault` names.
#[derive(Debug, Args)]
pub struct LocalArgs {
    /// The worker's data directory (its --data).
    #[arg(long, default_value = "handover-data", value_name = "DIR")]
    data: std::path::PathBuf,
    /// The worker's id [default: the only worker with an admin socket in
    /// DIR].
    #[arg(long)]
    id: Option<u64>,
}

/// `handover drain`: a worker on this machine hands its shards and calls
/// to the others, over its local admin socket.
#[derive(Debug, Args)]
pub struct DrainArgs {
    #[command(flatten)]
    at: LocalArgs,
}

/// A current-thread runtime and a client of the admin socket `at` names.
fn local_client(
    at: &LocalArgs,
) -> anyhow::Result<(
    tokio::runtime::Runtime,
    pb::local_client::LocalClient<tonic::transport::Channel>,
)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    let path = handover_worker::local::find(&at.data, at.id)?;
    let ch = rt.block_on(handover_worker::local::connect(&path))?;
    Ok((rt, pb::local_client::LocalClient::new(ch)))
}

pub fn drain(a: &DrainArgs) -> anyhow::Result<()> {
    let (rt, mut c) = local_client(&a.at)?;
    let r = rt
        .block_on(c.drain(pb::DrainRequest {}))
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    anyhow::ensure!(
        r.into_inner().drained,
        "not drained within 10 s (is the cluster's leader reachable?)"
    );
    println!(
        "drained: the others serve this worker's shards and calls; it serves none until restarted"
    );
    Ok(())
}

/// `handover fault`: tests' fault injection (builds with the cargo feature
/// `fault-injection`).
#[cfg(feature = "fault-injection")]
#[derive(Debug, Args)]
pub struct FaultArgs {
    #[command(flatten)]
    at: LocalArgs,
    /// Cut the worker's Raft traffic both ways for this many milliseconds.
    #[arg(long, default_value_t = 0)]
    isolate_ms: u64,
    /// Make the worker's Raft replica thread panic instead.
    #[arg(long)]
    panic_replica: bool,
    /// Instead: stop telling the worker's SIP loop of commits (its new
    /// calls' 2xx stay held).
    #[arg(long)]
    withhold_commits: bool,
}

#[cfg(feature = "fault-injection")]
pub fn fault(a: &FaultArgs) -> anyhow::Result<()> {
    let (rt, mut c) = local_client(&a.at)?;
    rt.block_on(c.isolate(pb::IsolateRequest {
        millis: a.isolate_ms,
        panic_replica: a.panic_replica,
        withhold_commits: a.withhold_commits,
    }))
    .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
    Ok(())
}
