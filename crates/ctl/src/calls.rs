//! `handover calls`, `handover hangup` and `handover reload` over any
//! worker's gRPC `Admin` service (mutual TLS with an admin or worker
//! certificate): the cluster's confirmed calls (that worker's replica of
//! the call table), ending one (through the replicated log, by whichever
//! worker owns it), and settings reloaded from that worker's file (through
//! the log, on every worker).

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Args;

use handover_worker::rpc::pb;

use crate::status::admin_channel;

#[derive(Debug, Args)]
pub struct CallsArgs {
    /// A worker's gRPC address (its `--peer` GRPC_ADDR).
    #[arg(long, default_value = "127.0.0.1:7001")]
    grpc: SocketAddr,
    /// Only calls whose caller or callee URI contains this.
    #[arg(long, value_name = "TEXT")]
    user: Option<String>,
    /// Only calls answered at least this many seconds ago.
    #[arg(long, value_name = "SECONDS", default_value_t = 0)]
    min_age_s: u64,
    /// Only calls owned by this worker (its Raft id).
    #[arg(long, value_name = "ID")]
    worker: Option<u64>,
    /// At most this many calls.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
    /// Print JSON (one object: the calls and how many more matched).
    #[arg(long)]
    json: bool,
    /// Cluster credentials (`ca.crt`, `tls.crt`, `tls.key`: an admin or
    /// worker certificate) [default: the ones `handover up` left for this
    /// port, if any; else no TLS].
    #[arg(long, value_name = "DIR")]
    cluster_tls: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct HangupArgs {
    /// The call's Call-ID (either leg's, as `handover calls` shows them).
    call_id: String,
    /// A worker's gRPC address (its `--peer` GRPC_ADDR).
    #[arg(long, default_value = "127.0.0.1:7001")]
    grpc: SocketAddr,
    /// Cluster credentials, as for `handover calls`.
    #[arg(long, value_name = "DIR")]
    cluster_tls: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// A worker's gRPC address: it reads its `--config` again.
    #[arg(long, default_value = "127.0.0.1:7001")]
    grpc: SocketAddr,
    /// Cluster credentials, as for `handover calls`.
    #[arg(long, value_name = "DIR")]
    cluster_tls: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct LeaveArgs {
    /// The id of the worker to remove.
    id: u64,
    /// Any member's gRPC address.
    #[arg(long, default_value = "127.0.0.1:7001")]
    grpc: SocketAddr,
    /// Cluster credentials, as for `handover calls`.
    #[arg(long, value_name = "DIR")]
    cluster_tls: Option<std::path::PathBuf>,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

pub fn calls(a: &CallsArgs) -> anyhow::Result<()> {
    let req = pb::CallsRequest {
        user: a.user.clone().unwrap_or_default(),
        min_age_s: a.min_age_s,
        owner: a.worker.unwrap_or(0),
        limit: a.limit.max(1),
    };
    let list = runtime()?.block_on(async {
        let mut c = pb::admin_client::AdminClient::new(
            admin_channel(a.grpc, a.cluster_tls.as_deref()).await?,
        );
        let r = c
            .calls(req)
            .await
            .map_err(|s| anyhow::anyhow!("calls failed: {}", s.message()))?;
        anyhow::Ok(r.into_inner())
    })?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    let age = |at: u64| (at > 0).then(|| now.saturating_sub(at) / 1_000);
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    if a.json {
        let calls: Vec<serde_json::Value> = list
            .calls
            .iter()
            .map(|c| {
                serde_json::json!({
                    "call_id": text(&c.call_id), "b_call_id": text(&c.b_call_id),
                    "owner": c.owner, "version": c.version,
                    "answered_unix_ms": c.answered_unix_ms, "age_s": age(c.answered_unix_ms),
                    "from": c.from, "to": c.to, "target": c.target,
                })
            })
            .collect();
        let v = serde_json::json!({
            "worker": list.id, "applied": list.applied, "calls": calls, "more": list.more,
        });
        println!("{v}");
        return Ok(());
    }
    println!(
        "{:<40} {:>5} {:>7}  {:<28} {:<28} TARGET",
        "CALL-ID", "OWNER", "AGE", "FROM", "TO"
    );
    for c in &list.calls {
        println!(
            "{:<40} {:>5} {:>7}  {:<28} {:<28} {}",
            text(&c.call_id),
            c.owner,
            age(c.answered_unix_ms).map_or("-".into(), |s| format!("{s}s")),
            c.from,
            c.to,
            c.target
        );
    }
    println!(
        "{} calls{} (worker {}'s replica, applied index {})",
        list.calls.len(),
        if list.more > 0 {
            format!(", {} more not shown (--limit)", list.more)
        } else {
            String::new()
        },
        list.id,
        list.applied
    );
    Ok(())
}

pub fn hangup(a: &HangupArgs) -> anyhow::Result<()> {
    let r = runtime()?.block_on(async {
        let mut c = pb::admin_client::AdminClient::new(
            admin_channel(a.grpc, a.cluster_tls.as_deref()).await?,
        );
        let r = c
            .hangup(pb::HangupRequest {
                call_id: a.call_id.clone().into_bytes(),
            })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        anyhow::Ok(r.into_inner())
    })?;
    println!(
        "hanging up {} (owned by worker {}): BYE to both legs once the cluster commits it",
        a.call_id, r.owner
    );
    Ok(())
}

pub fn leave(a: &LeaveArgs) -> anyhow::Result<()> {
    let r = runtime()?.block_on(async {
        let mut c = pb::admin_client::AdminClient::new(
            admin_channel(a.grpc, a.cluster_tls.as_deref()).await?,
        );
        let r = c
            .leave(pb::LeaveRequest { id: a.id })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        anyhow::Ok(r.into_inner())
    })?;
    println!("worker {} removed; Raft voters now {:?}", a.id, r.voters);
    Ok(())
}

pub fn reload(a: &ReloadArgs) -> anyhow::Result<()> {
    let r = runtime()?.block_on(async {
        let mut c = pb::admin_client::AdminClient::new(
            admin_channel(a.grpc, a.cluster_tls.as_deref()).await?,
        );
        let r = c
            .reload(pb::ReloadRequest {})
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?;
        anyhow::Ok(r.into_inner())
    })?;
    println!(
        "generation {}: {} routes, {} trusted prefixes, read by worker {}; every worker applies it from the log",
        r.generation, r.routes, r.trusted, r.id
    );
    Ok(())
}
