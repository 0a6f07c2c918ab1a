//! The local admin socket: a Unix socket in the worker's data directory
//! (`admin-ID.sock`, mode 0600) serving the gRPC `Local` service: drain
//! (`handover drain`) and, in builds with the cargo feature
//! `fault-injection`, fault injection ([`crate::fault`]). Neither is on
//! the cluster port: only a process of the worker's own user (or root)
//! on its own machine (in Kubernetes, `kubectl exec` into its pod) can
//! drain it or inject a fault. Each connection's peer is checked
//! (`SO_PEERCRED`) besides the file's mode; a refusal is counted as
//! `handover_cluster_refused_total{reason="local_user"}`.

use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use tokio::sync::{mpsc, oneshot};

use crate::fault::Faults;
use crate::rpc::pb;
use crate::tls::REFUSED;

/// The local admin socket of worker `id` whose data directory is `data`.
pub fn socket_path(data: &Path, id: u64) -> PathBuf {
    data.join(format!("admin-{id}.sock"))
}

/// Binds the socket at `path` with mode 0600 before it listens (so no
/// one connects in between), replacing a stale one a dead worker left
/// (its log's lock, taken before, says no live worker has this id here).
pub(crate) fn bind(path: &Path) -> anyhow::Result<std::os::unix::net::UnixListener> {
    if let Ok(m) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt as _;
        anyhow::ensure!(
            m.file_type().is_socket(),
            "{} exists and is not a socket: remove it",
            path.display()
        );
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let addr = socket2::SockAddr::unix(path).with_context(|| {
        format!(
            "{} cannot be a Unix socket's path (at most 107 bytes): use a shorter --data",
            path.display()
        )
    })?;
    let s = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
        .context("cannot open a Unix socket")?;
    s.bind(&addr)
        .with_context(|| format!("cannot bind the admin socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot restrict {} to its owner", path.display()))?;
    s.listen(16)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// Whether a peer of user `peer` may use a socket owned by `owner`.
fn may_use(peer: u32, owner: u32) -> bool {
    peer == owner || peer == 0
}

/// Serves the `Local` service on `listener` (inside the replica's runtime).
pub(crate) fn serve(
    listener: std::os::unix::net::UnixListener,
    path: PathBuf,
    drain: mpsc::UnboundedSender<oneshot::Sender<bool>>,
    faults: Faults,
) -> anyhow::Result<()> {
    let owner = std::fs::metadata(&path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .uid();
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let (tx, rx) = mpsc::channel::<std::io::Result<tokio::net::UnixStream>>(4);
    tokio::spawn(async move {
        loop {
            let s = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "admin socket accept");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let uid = s.peer_cred().map(|c| c.uid()).ok();
            if !uid.is_some_and(|u| may_use(u, owner)) {
                metrics::counter!(REFUSED, "reason" => "local_user").increment(1);
                tracing::warn!(?uid, owner, "admin socket: another user refused");
                continue;
            }
            if tx.send(Ok(s)).await.is_err() {
                return;
            }
        }
    });
    let router = tonic::transport::Server::builder()
        .add_service(pb::local_server::LocalServer::new(Local { drain, faults }));
    tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        if let Err(e) = router.serve_with_incoming(incoming).await {
            tracing::error!(error = %e, "admin socket server stopped");
        }
    });
    Ok(())
}

struct Local {
    drain: mpsc::UnboundedSender<oneshot::Sender<bool>>,
    #[cfg_attr(not(feature = "fault-injection"), allow(dead_code))]
    faults: Faults,
}

#[tonic::async_trait]
impl pb::local_server::Local for Local {
    async fn drain(
        &self,
        _: tonic::Request<pb::DrainRequest>,
    ) -> Result<tonic::Response<pb::DrainReply>, tonic::Status> {
        let (tx, rx) = oneshot::channel();
        self.drain
            .send(tx)
            .map_err(|_| tonic::Status::unavailable("replica stopped"))?;
        let drained = tokio::time::timeout(Duration::from_secs(10), rx)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false);
        tracing::info!(drained, "drain asked on the admin socket");
        Ok(tonic::Response::new(pb::DrainReply { drained }))
    }

    async fn isolate(
        &self,
        req: tonic::Request<pb::IsolateRequest>,
    ) -> Result<tonic::Response<pb::IsolateReply>, tonic::Status> {
        #[cfg(feature = "fault-injection")]
        {
            let req = req.into_inner();
            if req.panic_replica {
                tracing::warn!("fault injection: the replica thread will panic");
                self.faults.ask_panic();
            } else if req.withhold_commits {
                tracing::warn!("fault injection: commits withheld from the SIP loop");
                self.faults.withhold_commits();
            } else {
                tracing::warn!(
                    ms = req.millis,
                    "fault injection: Raft traffic cut both ways"
                );
                self.faults.isolate(req.millis);
            }
            Ok(tonic::Response::new(pb::IsolateReply {}))
        }
        #[cfg(not(feature = "fault-injection"))]
        {
            let _ = req;
            Err(tonic::Status::unimplemented(
                "this handover was built without fault injection (cargo feature fault-injection)",
            ))
        }
    }
}

/// A client channel to the admin socket at `path`.
pub async fn connect(path: &Path) -> anyhow::Result<tonic::transport::Channel> {
    anyhow::ensure!(
        path.exists(),
        "no admin socket at {} (is a replicated worker running with this --data and id?)",
        path.display()
    );
    let p = path.to_path_buf();
    // The URI is not used: every connection goes to the socket.
    tonic::transport::Endpoint::from_static("http://localhost")
        .connect_timeout(Duration::from_secs(3))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = p.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(p).await?,
                ))
            }
        }))
        .await
        .with_context(|| format!("cannot connect to the admin socket {}", path.display()))
}

/// The admin socket in `data`: worker `id`'s, or the only one there.
pub fn find(data: &Path, id: Option<u64>) -> anyhow::Result<PathBuf> {
    if let Some(id) = id {
        return Ok(socket_path(data, id));
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(data)
        .with_context(|| format!("cannot read the data directory {}", data.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("admin-") && n.ends_with(".sock"))
        })
        .collect();
    found.sort();
    match found.len() {
        1 => Ok(found.remove(0)),
        0 => anyhow::bail!(
            "no admin socket (admin-ID.sock) in {}: is a replicated worker running with this --data?",
            data.display()
        ),
        _ => anyhow::bail!(
            "several workers' admin sockets in {}: say which with --id",
            data.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_owner_and_root_may_use_the_socket() {
        assert!(may_use(1000, 1000));
        assert!(may_use(0, 1000));
        assert!(!may_use(1001, 1000));
        assert!(!may_use(65534, 0));
    }

    #[test]
    fn the_socket_is_made_for_its_owner_alone_and_replaces_a_stale_one() {
        let dir = tempfile::tempdir().unwrap();
        let p = socket_path(dir.path(), 2);
        let first = bind(&p).unwrap();
        drop(first);
        // What a killed worker leaves behind is replaced.
        let l = bind(&p).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o600);
        assert!(std::os::unix::net::UnixStream::connect(&p).is_ok());
        drop(l);
        assert_eq!(find(dir.path(), None).unwrap(), p);
        // A file that is not a socket is left alone.
        let f = dir.path().join("admin-3.sock");
        std::fs::write(&f, b"x").unwrap();
        assert!(bind(&f).unwrap_err().to_string().contains("not a socket"));
        assert!(
            find(dir.path(), None)
                .unwrap_err()
                .to_string()
                .contains("--id")
        );
        let long = dir.path().join("d".repeat(120)).join("admin-1.sock");
        assert!(bind(&long).is_err());
    }
}
