//! `handover edge`: the process around [`handover_edge::Edge`] (admin
//! port, the shard map watched, signals and drain); its flags and settings
//! are `handover_config::cli::edge`'s.

use std::sync::Arc;

use anyhow::Context as _;
use handover_config::cli::edge::{EdgeArgs, Settings, settings};
use handover_edge::Edge;

pub(crate) fn run(args: EdgeArgs) -> anyhow::Result<()> {
    crate::init_tracing();
    let Settings {
        edge: cfg,
        admin: admin_addr,
        cluster,
        cluster_tls,
        drain_s,
    } = settings(&args)?;
    if let Some(t) = &cluster_tls {
        t.check()?;
    }
    let handle = handover_worker::admin::install_recorder("edge")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(async move {
        let listener = handover_worker::admin::bind(admin_addr).await?;
        let admin_local = listener.local_addr()?;
        let edge = Edge::start(cfg)?;
        println!(
            "handover edge listening on udp {} (io: {})",
            edge.local_addr(),
            edge.io_mode().as_str()
        );
        for t in [
            handover_sip::Transport::Tcp,
            handover_sip::Transport::Tls,
            handover_sip::Transport::Ws,
            handover_sip::Transport::Wss,
        ] {
            if let Some(a) = edge.listener(t) {
                println!("handover edge listening on {t} {a}");
            }
        }
        println!("metrics: http://{admin_local}/metrics");
        if !cluster.is_empty() {
            // Nobody owns anything until the first map arrives.
            edge.set_members(&[], &vec![None; handover_sip::ids::SHARDS], 0);
            println!("routing by the cluster's shard map from {:?}", cluster);
        }
        // Ready while the edge routes somewhere and is not draining.
        let draining = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let ready: Arc<dyn Fn() -> bool + Send + Sync> = {
            let routes = edge.ready_fn();
            let draining = Arc::clone(&draining);
            Arc::new(move || !draining.load(std::sync::atomic::Ordering::Relaxed) && routes())
        };
        let admin = tokio::spawn(handover_worker::admin::serve(listener, handle, ready));
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        // The futures below borrow the edge: done with them before it stops.
        {
            // The probe loop never ends the process: only a signal does.
            let health = async {
                if let Err(e) = edge.health_loop().await {
                    tracing::error!(error = %e, "health probes stopped; backends stay as they are");
                }
                std::future::pending::<()>().await
            };
            let watch = async {
                if cluster.is_empty() {
                    std::future::pending::<()>().await;
                }
                handover_worker::watch::watch_map(
                    |members, owners, epoch| edge.set_members(members, owners, epoch),
                    &cluster,
                    cluster_tls.as_ref(),
                )
                .await;
            };
            tokio::pin!(health, watch);
            let drain = tokio::select! {
                () = &mut health => false,
                () = &mut watch => false,
                _ = tokio::signal::ctrl_c() => false,
                _ = term.recv() => true,
            };
            if drain && drain_s > 0 {
                // SIGTERM (Kubernetes' stop): fail /readyz so the Service and
                // the load balancer take this edge out, keep forwarding what
                // still arrives meanwhile, then stop.
                draining.store(true, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(seconds = drain_s, "draining: not ready, still forwarding");
                println!("draining for {} s (SIGINT stops at once)", drain_s);
                tokio::select! {
                    () = tokio::time::sleep(std::time::Duration::from_secs(drain_s)) => {}
                    () = &mut health => {}
                    () = &mut watch => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
        }
        tracing::info!("stopping");
        admin.abort();
        edge.shutdown();
        Ok(())
    })
}
