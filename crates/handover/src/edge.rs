//! `handover edge`: flags, configuration, and the process around
//! [`handover_edge::Edge`] (admin port, signals).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use handover_edge::{Edge, EdgeConfig, HealthConfig, IoMode};
use handover_sip::ids::Hashing;

use crate::config::Config;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub(crate) enum Io {
    /// io_uring where the kernel and seccomp allow it, else epoll.
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll + recvmmsg/sendmmsg.
    Epoll,
}

#[derive(Debug, Args)]
pub(crate) struct EdgeArgs {
    /// TOML configuration file (its `[edge]` section; flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to receive SIP on [default: 127.0.0.1:5060].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address to name in Via and Record-Route, if not --listen.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// A SIP server behind the edge (repeat for each).
    #[arg(long = "backend", value_name = "IP:PORT")]
    backends: Vec<SocketAddr>,
    /// Data-plane threads (0 = one per CPU).
    #[arg(long)]
    threads: Option<usize>,
    /// I/O mode.
    #[arg(long, value_enum)]
    io: Option<Io>,
    /// Admin HTTP address for /metrics, /healthz, /readyz [default: 127.0.0.1:9100].
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Milliseconds between OPTIONS probes of each backend (0 = off).
    #[arg(long)]
    probe_interval_ms: Option<u64>,
    /// Milliseconds to wait for a probe's answer.
    #[arg(long)]
    probe_timeout_ms: Option<u64>,
    /// Unanswered probes in a row before a backend is down.
    #[arg(long)]
    down_after: Option<u32>,
    /// Answered probes in a row before a backend is up again.
    #[arg(long)]
    up_after: Option<u32>,
    /// Do not add Record-Route (in-dialog requests then go straight to the backend).
    #[arg(long)]
    no_record_route: bool,
    /// Refused datagrams allowed per source address per second (0 = no limit).
    #[arg(long)]
    bad_input_per_source: Option<u32>,
    /// A replicated worker's gRPC address (repeat for each): the edge then
    /// routes by the cluster's shard map, watched from the first that
    /// answers, instead of hashing over probed backends (probes are off).
    #[arg(long = "cluster", value_name = "GRPC_ADDR")]
    cluster: Vec<SocketAddr>,
}

/// Builds the edge's settings: file (or defaults), then flags.
fn settings(a: &EdgeArgs) -> anyhow::Result<(EdgeConfig, SocketAddr)> {
    let file = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::defaults(),
    };
    let e = &file.edge;
    let parse = |s: &str| s.parse::<SocketAddr>().expect("validated by config");
    let backends = if a.backends.is_empty() {
        e.backends.iter().map(|b| parse(b)).collect()
    } else {
        a.backends.clone()
    };
    let io = match a.io {
        Some(Io::Auto) => IoMode::Auto,
        Some(Io::Uring) => IoMode::Uring,
        Some(Io::Epoll) => IoMode::Epoll,
        None => match e.io.as_str() {
            "uring" => IoMode::Uring,
            "epoll" => IoMode::Epoll,
            _ => IoMode::Auto,
        },
    };
    let health = HealthConfig {
        // With a cluster, the shard map says who is up, not probes.
        interval_ms: if a.cluster.is_empty() {
            a.probe_interval_ms.unwrap_or(e.health.interval_ms)
        } else {
            0
        },
        timeout_ms: a.probe_timeout_ms.unwrap_or(e.health.timeout_ms),
        down_after: a.down_after.unwrap_or(e.health.down_after),
        up_after: a.up_after.unwrap_or(e.health.up_after),
    };
    health
        .validate()
        .map_err(|m| anyhow::anyhow!("probe settings: {m} (--probe-interval-ms, --probe-timeout-ms, --down-after, --up-after)"))?;
    let hashing = match file.cluster.hash_key_value {
        Some((k0, k1)) => Hashing::with_key(k0, k1),
        None => Hashing::default(),
    };
    let cfg = EdgeConfig {
        listen: a.listen.unwrap_or_else(|| parse(&e.listen)),
        advertise: a.advertise.or_else(|| e.advertise.as_deref().map(parse)),
        backends,
        threads: a.threads.unwrap_or(e.threads),
        io,
        recv_buffer_bytes: e.recv_buffer_bytes,
        send_buffer_bytes: e.send_buffer_bytes,
        record_route: e.record_route && !a.no_record_route,
        bad_input_per_source: a.bad_input_per_source.unwrap_or(e.bad_input_per_source),
        health,
        hashing,
        limits: file.sip.limits(),
    };
    Ok((cfg, a.admin.unwrap_or_else(|| parse(&e.admin))))
}

pub(crate) fn run(args: EdgeArgs) -> anyhow::Result<()> {
    crate::init_tracing();
    let (cfg, admin_addr) = settings(&args)?;
    let handle = crate::admin::install_recorder("edge")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let listener = crate::admin::bind(admin_addr).await?;
        let admin_local = listener.local_addr()?;
        let edge = Edge::start(cfg)?;
        println!(
            "handover edge listening on udp {} (io: {})",
            edge.local_addr(),
            edge.io_mode().as_str()
        );
        println!("metrics: http://{admin_local}/metrics");
        if !args.cluster.is_empty() {
            // Nobody owns anything until the first map arrives.
            edge.set_owners(&vec![None; crate::cluster::SHARDS], 0);
            println!("routing by the cluster's shard map from {:?}", args.cluster);
        }
        let ready: Arc<dyn Fn() -> bool + Send + Sync> = Arc::new(edge.ready_fn());
        let admin = tokio::spawn(crate::admin::serve(listener, handle, ready));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // The probe loop never ends the process: only a signal does.
        let health = async {
            if let Err(e) = edge.health_loop().await {
                tracing::error!(error = %e, "health probes stopped; backends stay as they are");
            }
            std::future::pending::<()>().await
        };
        let watch = async {
            if args.cluster.is_empty() {
                std::future::pending::<()>().await;
            }
            watch_map(&edge, &args.cluster).await;
        };
        tokio::select! {
            () = health => {}
            () = watch => {}
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping");
        admin.abort();
        edge.shutdown();
        Ok(())
    })
}

/// Follows the cluster's shard map: a `WatchMap` stream from every member
/// at once (each reconnecting when it breaks), applying each map newer than
/// the last. A member that is cut off or frozen goes silent or stale; the
/// others still bring the new epoch. Never returns.
async fn watch_map(edge: &Edge, cluster: &[SocketAddr]) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::rpc::pb::MapView>(64);
    for &addr in cluster {
        tokio::spawn(watch_member(addr, tx.clone()));
    }
    let mut epoch = 0;
    while let Some(view) = rx.recv().await {
        let Some(map) = view.map else { continue };
        if map.epoch <= epoch {
            continue;
        }
        if map.owners.len() != crate::cluster::SHARDS {
            tracing::warn!(
                shards = map.owners.len(),
                "a shard map of the wrong size; ignored"
            );
            continue;
        }
        let sip: std::collections::HashMap<u64, SocketAddr> = view
            .sip
            .iter()
            .filter_map(|(id, a)| Some((*id, a.parse().ok()?)))
            .collect();
        let owners: Vec<Option<SocketAddr>> =
            map.owners.iter().map(|o| sip.get(o).copied()).collect();
        edge.set_owners(&owners, map.epoch);
        epoch = map.epoch;
        tracing::info!(epoch, "shard map applied");
    }
}

/// One member's map stream, forwarded to `tx`; reconnects forever.
async fn watch_member(addr: SocketAddr, tx: tokio::sync::mpsc::Sender<crate::rpc::pb::MapView>) {
    use tokio_stream::StreamExt as _;
    loop {
        // HTTP/2 pings find a frozen member (its TCP connection stays open).
        let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .expect("a valid URI")
            .connect_timeout(std::time::Duration::from_secs(1))
            .http2_keep_alive_interval(std::time::Duration::from_secs(1))
            .keep_alive_timeout(std::time::Duration::from_secs(2));
        let stream = match endpoint.connect().await {
            Ok(ch) => {
                crate::rpc::pb::admin_client::AdminClient::new(ch)
                    .watch_map(crate::rpc::pb::WatchRequest {})
                    .await
            }
            Err(e) => {
                tracing::debug!(%addr, error = %e, "cluster member not reachable");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut stream = match stream {
            Ok(s) => s.into_inner(),
            Err(e) => {
                tracing::debug!(%addr, error = %e, "map watch refused");
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                continue;
            }
        };
        tracing::debug!(%addr, "watching the shard map");
        while let Some(Ok(view)) = stream.next().await {
            if tx.send(view).await.is_err() {
                return;
            }
        }
        tracing::debug!(%addr, "map watch ended; reconnecting");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
