//! Mutual TLS on the cluster port: who may speak gRPC to a worker, and as
//! whom.
//!
//! Every party holds a certificate from the cluster's CA, in a directory
//! laid out as a cert-manager Secret (`ca.crt`, `tls.crt`, `tls.key`). Its
//! DNS names say what it is:
//!
//! | name                | holder            | may                                  |
//! |---------------------|-------------------|--------------------------------------|
//! | `member-N.handover` | the worker with id N | send Raft messages as N; status, map watch; fault injection on itself |
//! | `worker.handover`   | every worker (as a server) | — (what edges and tools check) |
//! | `edge.handover`     | edges             | watch the shard map, status          |
//! | `admin.handover`    | `handover status` | status, map watch                    |
//!
//! A worker connecting to member N checks N's certificate for
//! `member-N.handover`; edges and tools check `worker.handover`. The
//! server requires a client certificate chaining to the CA (rustls'
//! WebPKI verifier), then each RPC checks the names it needs
//! (`Caller`). The files are re-read when `tls.crt` changes (a
//! cert-manager renewal), by the server at its next accept and by clients
//! at their next connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls;

/// The name every worker's certificate carries, as a server.
pub const WORKER_NAME: &str = "worker.handover";
/// An edge's role name: it may watch the shard map and read status.
pub const EDGE_NAME: &str = "edge.handover";
/// A tool's role name (`handover status`): status and the map watch.
pub const ADMIN_NAME: &str = "admin.handover";

/// The name of member `id`'s certificate.
pub fn member_name(id: u64) -> String {
    format!("member-{id}.handover")
}

/// Refused cluster connections and calls, by reason.
pub const REFUSED: &str = "handover_cluster_refused_total";

/// The reasons of [`REFUSED`].
pub const REFUSED_REASONS: [&str; 4] = ["handshake", "role", "impersonation", "local_user"];

/// A directory of cluster credentials (`ca.crt`, `tls.crt`, `tls.key`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsDir(pub PathBuf);

impl TlsDir {
    /// `{id}` in the path is replaced by `id` (one flag for a StatefulSet
    /// whose pods each mount `member-N`).
    pub fn for_member(path: &Path, id: u64) -> Self {
        Self(PathBuf::from(
            path.to_string_lossy().replace("{id}", &id.to_string()),
        ))
    }

    fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// When `tls.crt` last changed (None: unreadable).
    pub fn changed(&self) -> Option<SystemTime> {
        std::fs::metadata(self.file("tls.crt"))
            .and_then(|m| m.modified())
            .ok()
    }

    fn read(&self) -> anyhow::Result<Files> {
        let read = |n: &str| {
            std::fs::read(self.file(n))
                .with_context(|| format!("cluster TLS: cannot read {}", self.file(n).display()))
        };
        Ok(Files {
            ca: read("ca.crt")?,
            cert: read("tls.crt")?,
            key: read("tls.key")?,
        })
    }

    /// Checks the directory can be used, both ways (at start, so a bad
    /// path fails the process, not its first connection).
    pub fn check(&self) -> anyhow::Result<()> {
        self.server_config()?;
        self.client_config(WORKER_NAME)?;
        Ok(())
    }

    /// The server's config: a client certificate from the CA required,
    /// HTTP/2 by ALPN.
    pub fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        let f = self.read()?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = f.roots(&self.file("ca.crt"))?;
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::clone(&provider),
        )
        .build()
        .context("cluster TLS: ca.crt")?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .context("cluster TLS")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                f.certs(&self.file("tls.crt"))?,
                f.key(&self.file("tls.key"))?,
            )
            .context("cluster TLS: tls.crt and tls.key")?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// A client's config for tonic: this directory's identity, the
    /// server checked for `name`.
    pub fn client_config(&self, name: &str) -> anyhow::Result<tonic::transport::ClientTlsConfig> {
        let f = self.read()?;
        // Parsed here so a bad file is named (tonic only says "invalid").
        f.roots(&self.file("ca.crt"))?;
        f.certs(&self.file("tls.crt"))?;
        f.key(&self.file("tls.key"))?;
        Ok(tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&f.ca))
            .identity(tonic::transport::Identity::from_pem(&f.cert, &f.key))
            .domain_name(name))
    }
}

struct Files {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl Files {
    fn certs(&self, path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
        let certs: Vec<_> = CertificateDer::pem_slice_iter(&self.cert)
            .collect::<Result<_, _>>()
            .with_context(|| format!("cluster TLS: {}", path.display()))?;
        anyhow::ensure!(
            !certs.is_empty(),
            "cluster TLS: {}: no certificate",
            path.display()
        );
        Ok(certs)
    }

    fn key(&self, path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
        PrivateKeyDer::from_pem_slice(&self.key)
            .with_context(|| format!("cluster TLS: {}", path.display()))
    }

    fn roots(&self, path: &Path) -> anyhow::Result<rustls::RootCertStore> {
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_slice_iter(&self.ca) {
            let c = c.with_context(|| format!("cluster TLS: {}", path.display()))?;
            roots
                .add(c)
                .with_context(|| format!("cluster TLS: {}", path.display()))?;
        }
        anyhow::ensure!(
            !roots.is_empty(),
            "cluster TLS: {}: no certificate",
            path.display()
        );
        Ok(roots)
    }
}

/// Who called, as its verified certificate says (the server verified the
/// chain in the handshake; this reads the names).
#[derive(Debug, Clone)]
pub(crate) enum Caller {
    /// The cluster port runs without TLS (a loopback-only worker, or
    /// `--cluster-insecure`): everyone is trusted as before.
    Anyone,
    /// A verified end-entity certificate.
    Cert(Arc<Vec<CertificateDer<'static>>>),
    /// TLS is on and the connection has no certificate (cannot happen past
    /// the verifier; refused).
    Nobody,
}

impl Caller {
    /// The caller of `req`, given whether the port runs TLS.
    pub(crate) fn of<T>(req: &tonic::Request<T>, tls: bool) -> Self {
        if !tls {
            return Self::Anyone;
        }
        match req.peer_certs() {
            Some(c) if !c.is_empty() => Self::Cert(c),
            _ => Self::Nobody,
        }
    }

    /// Whether the certificate is valid for `name` (always, without TLS).
    pub(crate) fn is(&self, name: &str) -> bool {
        match self {
            Self::Anyone => true,
            Self::Nobody => false,
            Self::Cert(chain) => {
                let Ok(server) = ServerName::try_from(name) else {
                    return false;
                };
                webpki::EndEntityCert::try_from(&chain[0])
                    .is_ok_and(|c| c.verify_is_valid_for_subject_name(&server).is_ok())
            }
        }
    }

    /// Whether it may read status and watch the map: any role.
    pub(crate) fn may_watch(&self) -> bool {
        self.is(EDGE_NAME) || self.is(ADMIN_NAME) || self.is(WORKER_NAME)
    }

    /// Lists and ends calls (`handover calls`, `handover hangup`): an
    /// operator's certificate or a worker's, never an edge's.
    pub(crate) fn may_control(&self) -> bool {
        self.is(ADMIN_NAME) || self.is(WORKER_NAME)
    }
}

/// A gRPC channel to `to` (`HOST:PORT`), over TLS with `tls`.
pub async fn channel(
    to: &str,
    tls: Option<tonic::transport::ClientTlsConfig>,
) -> anyhow::Result<tonic::transport::Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut e = tonic::transport::Endpoint::from_shared(format!("{scheme}://{to}"))?
        .connect_timeout(std::time::Duration::from_secs(1))
        .tcp_nodelay(true);
    if let Some(cfg) = tls {
        e = e.tls_config(cfg)?;
    }
    Ok(e.connect().await?)
}

/// The gRPC listener's connections after a TLS handshake each (in its own
/// task, 5 s at most, 256 at once: a slow or flooding client holds up
/// nobody). The server's credentials are re-read when `tls.crt` changes.
/// Failed handshakes (no certificate, another CA, not TLS, no room) are
/// counted.
pub(crate) fn tls_incoming(
    listener: tokio::net::TcpListener,
    dir: TlsDir,
) -> tokio_stream::wrappers::ReceiverStream<
    std::io::Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let room = std::sync::Arc::new(tokio::sync::Semaphore::new(256));
    tokio::spawn(async move {
        let mut loaded: Option<(Option<std::time::SystemTime>, tokio_rustls::TlsAcceptor)> = None;
        loop {
            let Ok((sock, from)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let changed = dir.changed();
            if loaded.as_ref().is_none_or(|(at, _)| *at != changed) {
                match dir.server_config() {
                    Ok(cfg) => loaded = Some((changed, tokio_rustls::TlsAcceptor::from(cfg))),
                    Err(e) => {
                        tracing::error!(error = %e, "cluster TLS: keeping the old credentials")
                    }
                }
            }
            let Some((_, acceptor)) = loaded.clone() else {
                continue;
            };
            let Ok(permit) = std::sync::Arc::clone(&room).try_acquire_owned() else {
                metrics::counter!(REFUSED, "reason" => "handshake").increment(1);
                continue;
            };
            let _ = sock.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tokio::time::timeout(std::time::Duration::from_secs(5), acceptor.accept(sock))
                    .await
                {
                    Ok(Ok(s)) => {
                        let _ = tx.send(Ok(s)).await;
                    }
                    Ok(Err(e)) => {
                        metrics::counter!(REFUSED, "reason" => "handshake").increment(1);
                        tracing::warn!(%from, error = %e, "cluster TLS handshake refused");
                    }
                    Err(_) => {
                        metrics::counter!(REFUSED, "reason" => "handshake").increment(1);
                        tracing::warn!(%from, "cluster TLS handshake timed out");
                    }
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Makes a throw-away cluster CA and every party's credentials under
/// `dir` (`handover up`, tests): `member-N/` for ids `1..=members`,
/// `edge/`, `admin/`, each with `ca.crt`, `tls.crt`, `tls.key` (keys
/// readable by the owner only).
pub fn throwaway(dir: &Path, members: u64) -> anyhow::Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name.push(
        rcgen::DnType::CommonName,
        "handover cluster CA (throw-away)",
    );
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let mut parties: Vec<(String, Vec<String>)> = (1..=members)
        .map(|id| {
            (
                format!("member-{id}"),
                vec![member_name(id), WORKER_NAME.to_owned()],
            )
        })
        .collect();
    parties.push(("edge".into(), vec![EDGE_NAME.into()]));
    parties.push(("admin".into(), vec![ADMIN_NAME.into()]));
    for (sub, names) in parties {
        let key = KeyPair::generate()?;
        let server = sub.starts_with("member-");
        let mut params = CertificateParams::new(names)?;
        params.extended_key_usages = if server {
            vec![
                rcgen::ExtendedKeyUsagePurpose::ServerAuth,
                rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth]
        };
        let cert = params.signed_by(&key, &issuer)?;
        let d = dir.join(sub);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("ca.crt"), ca_cert.pem())?;
        std::fs::write(d.join("tls.crt"), cert.pem())?;
        write_private(&d.join("tls.key"), key.serialize_pem().as_bytes())?;
    }
    Ok(())
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throwaway_credentials_name_each_party_and_load_both_ways() {
        let dir = std::env::temp_dir().join(format!("handover-tls-test-{}", std::process::id()));
        throwaway(&dir, 3).unwrap();
        for sub in ["member-1", "member-3", "edge", "admin"] {
            TlsDir(dir.join(sub)).check().unwrap();
        }
        let chain = |sub: &str| {
            let pem = std::fs::read(dir.join(sub).join("tls.crt")).unwrap();
            Caller::Cert(Arc::new(
                CertificateDer::pem_slice_iter(&pem)
                    .collect::<Result<Vec<_>, _>>()
                    .unwrap(),
            ))
        };
        let m2 = chain("member-2");
        assert!(m2.is(&member_name(2)) && m2.is(WORKER_NAME) && m2.may_watch());
        assert!(!m2.is(&member_name(1)) && !m2.is(&member_name(22)));
        let edge = chain("edge");
        assert!(edge.may_watch() && !edge.is(&member_name(1)) && !edge.is(WORKER_NAME));
        assert!(Caller::Anyone.is(&member_name(7)));
        assert!(!Caller::Nobody.may_watch());
        let p = TlsDir::for_member(Path::new("/etc/handover/member-{id}"), 3);
        assert_eq!(p.0, Path::new("/etc/handover/member-3"));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.join("edge/tls.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(mode & 0o077, 0, "keys are the owner's only");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
