//! What a worker runs with ([`Settings`], resolved by the binary), the
//! users file, and the error the worker stops with when its replica does.

use super::*;

/// Everything a worker runs with, resolved (file, then flags) by the
/// binary.
#[derive(Debug)]
pub struct Settings {
    /// Where SIP from the edge comes in.
    pub listen: SocketAddr,
    /// The edge: where requests this worker originates go.
    pub edge: SocketAddr,
    /// The edge's advertised address (our Via and Contact), if not `edge`.
    pub advertise: Option<SocketAddr>,
    /// The admin HTTP address (/metrics, /healthz, /readyz).
    pub admin: SocketAddr,
    /// `MATCH=IP:PORT[*WEIGHT][,…]` routes (see [`handover_call::Routes`]).
    pub routes: Vec<String>,
    pub max_call_age_s: u64,
    pub ring_timeout_s: u64,
    /// Largest datagram of several messages to the edge (0: one each).
    pub bundle_bytes: usize,
    pub transfer_mode: TransferMode,
    pub t1_ms: u64,
    /// The cluster's hashing key (the edge's: a call's shard is the one
    /// the edge routes by).
    pub hashing: Hashing,
    pub trusted: handover_call::trust::Trusted,
    /// Headers treated as identity headers beside RFC 3325's.
    pub identity_headers: Vec<String>,
    /// P-Asserted-Identity from digest users to trusted targets.
    pub assert_identity: bool,
    /// Calls held at most (new ones past it get 503 with Retry-After).
    pub max_calls: usize,
    /// Calls held at most per source address (0: no limit).
    pub max_calls_per_source: usize,
    /// `[sip]` limits (message and URI sizes), as the edge applies them.
    pub limits: handover_sip::Limits,
    /// Raft replication, or none (one worker holds every call).
    pub replication: Option<crate::replica::Settings>,
    /// The registrar (its `wall_epoch_ms` is set at start).
    pub registrar: handover_call::registrar::Config,
    /// Digest authentication of phones; `None`: off.
    pub auth: Option<Auth>,
    /// Relay mode: the PBXs that are the registrars of some domains.
    pub upstreams: handover_call::registrar::Upstreams,
    /// Call detail records (docs/records.md): where they are written;
    /// `None`: off.
    pub records: Option<crate::records::Settings>,
    /// Reads `--config` again for a reload ([`crate::reload`]); `None`:
    /// no file.
    pub reload: Option<crate::replica::Reloader>,
}

/// Digest authentication settings (see `handover_call::registrar::digest`).
#[derive(Debug, Clone)]
pub struct Auth {
    /// The users file (HA1 hashes), read at start and again when it changes.
    pub users: std::path::PathBuf,
    pub realm: String,
    /// Offered in this order.
    pub algorithms: Vec<handover_call::registrar::digest::Algorithm>,
    pub nonce_ttl_s: u64,
    /// Failures from one source within a minute before it is answered 403
    /// and ignored for `ban_s`.
    pub max_failures: u32,
    pub ban_s: u64,
}

pub(super) fn read_users(
    path: &std::path::Path,
) -> anyhow::Result<handover_call::registrar::digest::Users> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the users file {}", path.display()))?;
    handover_call::registrar::digest::Users::parse(&text)
        .map_err(|e| anyhow::anyhow!("users file {}: {e}", path.display()))
}

pub(super) fn modified(path: &std::path::Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// The worker stopped because its replica did: serving on would mean
/// calls it cannot replicate behind green health checks. The process
/// exits [`ReplicaEnded::EXIT_CODE`] so the others take its shards over
/// and the orchestrator restarts it.
#[derive(Debug)]
pub struct ReplicaEnded;

impl ReplicaEnded {
    /// The process's exit code (EX_SOFTWARE).
    pub const EXIT_CODE: u8 = 70;
}

impl std::fmt::Display for ReplicaEnded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the Raft replica ended (see the log above); the worker stops with it")
    }
}

impl std::error::Error for ReplicaEnded {}
