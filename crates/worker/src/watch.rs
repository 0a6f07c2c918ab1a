//! The shard map as the edge follows it: `Admin.WatchMap` streams from
//! every member the cluster's name has, the newest map applied (the edge's
//! only link to the cluster's state; `handover edge --cluster`).

use std::net::SocketAddr;

use crate::tls::{TlsDir, WORKER_NAME};

/// Follows the cluster's shard map: a `WatchMap` stream from every member
/// at once (each reconnecting when it breaks), applying each map newer than
/// the last. A member that is cut off or frozen goes silent or stale; the
/// others still bring the new epoch. The members' SIP addresses are looked
/// up at each map and again every few seconds, so a worker that comes
/// back under the same name with a new IP (a rescheduled pod) is reached.
/// `apply` gets each new map: the members' SIP addresses (in id order)
/// and each shard's owner as an index into them (`None`: no owner, or one
/// whose address is not known yet), with the epoch. Never returns.
pub async fn watch_map(
    mut apply: impl FnMut(&[SocketAddr], &[Option<usize>], u64),
    cluster: &[String],
    tls: Option<&TlsDir>,
) {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<crate::rpc::pb::MapView>(64);
    for addr in cluster {
        tokio::spawn(watch_name(addr.clone(), tls.cloned(), tx.clone()));
    }
    let mut current: Option<crate::rpc::pb::MapView> = None;
    let mut resolved: std::collections::HashMap<u64, SocketAddr> = Default::default();
    let mut applied: Option<(u64, Vec<SocketAddr>)> = None;
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        tokio::select! {
            view = rx.recv() => {
                let Some(view) = view else { return };
                let Some(map) = &view.map else { continue };
                let epoch = current.as_ref().and_then(|v| v.map.as_ref()).map_or(0, |m| m.epoch);
                if map.epoch <= epoch {
                    continue;
                }
                if map.owners.len() != handover_sip::ids::SHARDS {
                    tracing::warn!(shards = map.owners.len(), "a shard map of the wrong size; ignored");
                    continue;
                }
                current = Some(view);
            }
            _ = every.tick() => {}
        }
        let Some(view) = &current else { continue };
        let Some(map) = &view.map else { continue };
        let mut ids: Vec<u64> = view.sip.keys().copied().collect();
        ids.sort_unstable();
        for id in &ids {
            let name = &view.sip[id];
            let found = tokio::time::timeout(
                std::time::Duration::from_secs(2),
                tokio::net::lookup_host(name.as_str()),
            )
            .await;
            match found {
                Ok(Ok(addrs)) => {
                    // IPv4 first, as the workers' own lookups do.
                    let all: Vec<SocketAddr> = addrs.collect();
                    if let Some(a) = all.iter().find(|a| a.is_ipv4()).or(all.first()) {
                        resolved.insert(*id, *a);
                    }
                }
                // Keep the last address a name had.
                _ => tracing::debug!(worker = id, %name, "cannot look the worker's SIP address up"),
            }
        }
        let unknown = SocketAddr::from(([0, 0, 0, 0], 0));
        let members: Vec<SocketAddr> = ids
            .iter()
            .map(|id| resolved.get(id).copied().unwrap_or(unknown))
            .collect();
        if applied.as_ref() == Some(&(map.epoch, members.clone())) {
            continue;
        }
        let owners: Vec<Option<usize>> = map
            .owners
            .iter()
            .map(|o| {
                let i = ids.iter().position(|id| id == o)?;
                (members[i] != unknown).then_some(i)
            })
            .collect();
        apply(&members, &owners, map.epoch);
        tracing::info!(epoch = map.epoch, ?members, "shard map applied");
        applied = Some((map.epoch, members));
    }
}

/// Every address `name` has, each watched ([`watch_member`]), looked up
/// again every 5 s: a headless Service's name lists every worker pod, so
/// one `--cluster` name follows workers that join and leave.
async fn watch_name(
    name: String,
    tls: Option<TlsDir>,
    tx: tokio::sync::mpsc::Sender<crate::rpc::pb::MapView>,
) {
    let mut watching: std::collections::HashMap<SocketAddr, tokio::task::JoinHandle<()>> =
        Default::default();
    let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
    loop {
        every.tick().await;
        if tx.is_closed() {
            break;
        }
        let found = tokio::time::timeout(
            std::time::Duration::from_secs(2),
            tokio::net::lookup_host(name.as_str()),
        )
        .await;
        // Keep watching what the name had while it cannot be looked up.
        let Ok(Ok(addrs)) = found else {
            tracing::debug!(%name, "cannot look the cluster's members up");
            continue;
        };
        // IPv4 when the name has any, as the workers' own lookups do
        // (`localhost` also names ::1, where nothing may listen).
        let mut now: std::collections::HashSet<SocketAddr> = addrs.collect();
        if now.iter().any(|a| a.is_ipv4()) {
            now.retain(|a| a.is_ipv4());
        }
        watching.retain(|a, task| {
            let keep = now.contains(a) && !task.is_finished();
            if !keep {
                task.abort();
            }
            keep
        });
        for a in now {
            watching.entry(a).or_insert_with(|| {
                tracing::debug!(%name, addr = %a, "watching a member's shard map");
                tokio::spawn(watch_member(a.to_string(), tls.clone(), tx.clone()))
            });
        }
    }
    for (_, task) in watching {
        task.abort();
    }
}

/// One member's map stream, forwarded to `tx`; reconnects forever.
async fn watch_member(
    addr: String,
    tls: Option<TlsDir>,
    tx: tokio::sync::mpsc::Sender<crate::rpc::pb::MapView>,
) {
    use tokio_stream::StreamExt as _;
    loop {
        let scheme = if tls.is_some() { "https" } else { "http" };
        // HTTP/2 pings find a frozen member (its TCP connection stays open).
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))
            .expect("a valid URI")
            .connect_timeout(std::time::Duration::from_secs(1))
            .http2_keep_alive_interval(std::time::Duration::from_secs(1))
            .keep_alive_timeout(std::time::Duration::from_secs(2));
        // Read at each connection: a renewed certificate is used from the
        // next one on.
        if let Some(d) = &tls {
            match d
                .client_config(WORKER_NAME)
                .and_then(|c| Ok(endpoint.clone().tls_config(c)?))
            {
                Ok(e) => endpoint = e,
                Err(e) => {
                    tracing::warn!(error = %e, "cluster TLS");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
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
