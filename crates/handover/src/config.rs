//! The TOML configuration file.
//!
//! Unknown keys are errors (`deny_unknown_fields`): a misspelt timer key that
//! is silently ignored is a production incident. Values with rules beyond
//! their type are read with their position, so an error names the key and
//! the line.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use handover_sip::Limits;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The whole file. Every section and key is optional; defaults are what
/// `handover check-config` prints for an empty file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    sip: SipSection,
    #[serde(default)]
    cluster: ClusterSection,
    #[serde(default)]
    edge: EdgeSection,
    #[serde(default)]
    worker: WorkerSection,
}

/// `[worker]`: the B2BUA (`handover worker`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WorkerSection {
    /// Address to receive SIP from the edge on.
    listen: Option<Spanned<String>>,
    /// The edge: where requests the worker originates go.
    edge: Option<Spanned<String>>,
    /// The edge's advertised address, if not `edge`.
    advertise: Option<Spanned<String>>,
    /// Admin HTTP address.
    admin: Option<Spanned<String>>,
    /// Seconds after its answer at which a call is hung up on both legs.
    max_call_age_s: Option<u64>,
    /// Seconds a callee may ring before it counts as not answering.
    ring_timeout_s: Option<Spanned<u64>>,
    /// Transfer mode of routes that do not set one.
    transfer_mode: Option<Spanned<String>>,
    /// SIP timer T1, milliseconds.
    t1_ms: Option<Spanned<u64>>,
    /// Calls held at most.
    max_calls: Option<Spanned<usize>>,
    /// Calls held at most per source address; 0 = no limit.
    max_calls_per_source: Option<usize>,
    /// Trusted peers by address prefix (`["10.0.0.0/8", …]`): their
    /// identity headers pass between the legs.
    trusted: Option<Spanned<Vec<String>>>,
    /// More headers treated as identity headers (`["Diversion"]`).
    identity_headers: Option<Spanned<Vec<String>>>,
    /// Assert digest-authenticated callers to trusted targets.
    assert_identity: Option<bool>,
    /// Where calls go, tried in order.
    #[serde(default)]
    routes: Vec<RouteSection>,
    #[serde(default)]
    replication: ReplicationSection,
    #[serde(default)]
    registrar: RegistrarSection,
}

/// `[worker.registrar]`: REGISTER (RFC 3261 §10) and digest authentication.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegistrarSection {
    /// Shorter registrations get 423 with Min-Expires.
    min_expires: Option<u32>,
    /// Longer ones are shortened to this.
    max_expires: Option<u32>,
    /// Of a contact that names no expiry.
    default_expires: Option<u32>,
    /// Bindings per address-of-record at most (past it: 403).
    max_contacts: Option<usize>,
    /// AORs held at most in the cluster (new ones past it: 503).
    max_aors: Option<usize>,
    /// Bindings at most whose phone is behind one source address; 0 = no limit.
    max_bindings_per_source: Option<usize>,
    /// Domains served (the To host); empty = any.
    domains: Option<Vec<String>>,
    /// The users file (HA1 hashes, `handover passwd`); set = phones must
    /// authenticate (REGISTER: 401; calls from untrusted sources: 407).
    users: Option<String>,
    /// The digest realm.
    realm: Option<String>,
    /// Digest algorithms offered, in order (`SHA-256`, `MD5`).
    algorithms: Option<Spanned<Vec<String>>>,
    /// Seconds a nonce lives (then `stale=true`).
    nonce_ttl_s: Option<u64>,
    /// Failed authentications from one source within a minute before it
    /// is answered 403 and ignored for `ban_s`; 0 = never.
    max_failures: Option<u32>,
    ban_s: Option<u64>,
    /// Relay mode: PBXs that are the registrars of some domains,
    /// `["[DOMAIN=]IP:PORT[,IP:PORT…]", …]`: their REGISTERs go there with
    /// a Path through the edge.
    upstream: Option<Spanned<Vec<String>>>,
    /// Seconds between OPTIONS pings to each binding (keeps NAT bindings
    /// open; an unanswered one drops the binding); 0 = none.
    ping_interval_s: Option<u32>,
}

/// `[worker.replication]`: Raft (`--id`, `--peer`, …). Without `id` (or
/// `id_from_hostname`) and `peers`, a worker does not replicate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplicationSection {
    /// This worker's id among `peers`.
    id: Option<Spanned<u64>>,
    /// Take the id from the host name's trailing `-N` plus one.
    id_from_hostname: Option<bool>,
    /// Every member, this one included: `["ID=GRPC_ADDR,SIP_ADDR", …]`.
    peers: Option<Spanned<Vec<String>>>,
    /// Address to bind gRPC on, when not this worker's peer address.
    grpc_listen: Option<Spanned<String>>,
    /// Group-commit window, milliseconds (0: none).
    commit_window_ms: Option<Spanned<u64>>,
    /// Directory of the Raft log.
    data: Option<String>,
    /// Cluster credentials (`ca.crt`, `tls.crt`, `tls.key`; `{id}` is
    /// replaced by this worker's id).
    tls_dir: Option<String>,
    /// Plain HTTP/2 on a gRPC address that is not loopback.
    insecure: Option<bool>,
    /// MiB free on the log's disk below which new calls and REGISTERs get 503.
    min_free_mb: Option<u64>,
}

/// `[[worker.routes]]`: one route; at most one of `user`, `prefix`,
/// `domain` (none: any call), and its targets (`IP:PORT` or `IP:PORT*WEIGHT`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSection {
    user: Option<String>,
    prefix: Option<String>,
    domain: Option<String>,
    targets: Spanned<Vec<String>>,
    /// `passthrough` or `local` (default: `[worker] transfer_mode`).
    transfer: Option<Spanned<String>>,
    /// `udp` (default), `tcp`, `tls`, `ws` or `wss`: how the targets are reached.
    transport: Option<Spanned<String>>,
    /// Over TLS or WSS: the name the targets' certificates carry
    /// (default: their IP addresses).
    tls_name: Option<Spanned<String>>,
    /// Over UDP, to targets that take TCP too: requests larger than this
    /// many bytes go over TCP (RFC 3261 §18.1.1 says 1300).
    tcp_above: Option<Spanned<u16>>,
}

/// `[edge]`: the stateless front door (`handover edge`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EdgeSection {
    /// Address to receive SIP on (`IP:PORT`).
    listen: Option<Spanned<String>>,
    /// Address written into Via and Record-Route, when it differs from `listen`.
    advertise: Option<Spanned<String>>,
    /// This edge's own address inside the cluster (`IP` or `IP:PORT`; the
    /// port defaults to `listen`'s), when several edges share `advertise`.
    internal_advertise: Option<Spanned<String>>,
    /// SIP servers behind the edge (`["IP:PORT", …]`).
    backends: Option<Spanned<Vec<String>>>,
    /// Data-plane threads; 0 = one per CPU.
    threads: Option<usize>,
    /// `auto`, `uring` or `epoll`.
    io: Option<Spanned<String>>,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`).
    admin: Option<Spanned<String>>,
    /// SO_RCVBUF per socket, bytes.
    recv_buffer_bytes: Option<usize>,
    /// SO_SNDBUF per socket, bytes.
    send_buffer_bytes: Option<usize>,
    /// Record-Route dialog-creating requests.
    record_route: Option<bool>,
    /// Refused datagrams allowed per source address per second; 0 = no limit.
    bad_input_per_source: Option<u32>,
    /// New dialogs allowed per source address per second; 0 = no limit.
    new_dialogs_per_source: Option<u32>,
    /// Seconds a source over twice that in a second is banned; 0 = never.
    ban_s: Option<u32>,
    /// Replicated workers' gRPC addresses: route by their shard map.
    cluster: Option<Spanned<Vec<String>>>,
    /// Cluster credentials for the map watch (`ca.crt`, `tls.crt`, `tls.key`).
    cluster_tls: Option<String>,
    /// Seconds to keep serving after SIGTERM with /readyz failing.
    drain_s: Option<u64>,
    /// SIP over TCP on this address (`IP:PORT`; often the UDP one).
    listen_tcp: Option<Spanned<String>>,
    /// SIP over TLS on this address (`IP:PORT`, 5061 by convention).
    listen_tls: Option<Spanned<String>>,
    /// SIP over WebSocket (RFC 7118) on this address.
    listen_ws: Option<Spanned<String>>,
    /// SIP over secure WebSocket on this address (the TLS certificate).
    listen_wss: Option<Spanned<String>>,
    /// PEM certificate chain of the TLS listener (re-read when it changes).
    tls_cert: Option<String>,
    /// PEM private key of the TLS listener.
    tls_key: Option<String>,
    /// PEM CA certificates; with it, TLS clients must present a
    /// certificate that chains to one (trunks).
    tls_client_ca: Option<String>,
    /// PEM CA certificates a TLS route target's certificate must chain to
    /// (default: the system's roots).
    tls_upstream_ca: Option<String>,
    /// Stream connections at most, in all.
    max_connections: Option<usize>,
    /// Stream connections at most from one IP address.
    max_connections_per_source: Option<usize>,
    /// Seconds a stream connection may stay silent before it is closed.
    stream_idle_s: Option<Spanned<u64>>,
    /// Milliseconds for a TLS handshake, and for a message once its first
    /// byte came, before the connection is closed.
    stream_message_timeout_ms: Option<Spanned<u64>>,
    /// Load balancers (CIDR) whose TCP/TLS connections start with a
    /// PROXY protocol v2 header naming the client.
    proxy_protocol_from: Option<Spanned<Vec<String>>>,
    /// Networks (CIDR) workers' requests may not be sent to, besides the
    /// built-in ones (link-local, multicast, …).
    deny_destinations: Option<Spanned<Vec<String>>>,
    /// Exceptions to the denied networks (a PBX's subnet).
    allow_destinations: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    health: HealthSection,
}

/// `[edge.health]`: OPTIONS probes of the backends.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthSection {
    interval_ms: Option<u64>,
    timeout_ms: Option<Spanned<u64>>,
    down_after: Option<Spanned<u32>>,
    up_after: Option<Spanned<u32>>,
}

/// `[sip]`: limits of the SIP message layer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SipSection {
    /// Largest SIP message accepted, in bytes (requests above it get 413).
    max_message_bytes: Option<Spanned<usize>>,
    /// Longest Request-URI accepted, in bytes (requests above it get 414).
    max_uri_bytes: Option<Spanned<usize>>,
}

/// `[cluster]`: settings every node of one cluster must share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClusterSection {
    /// 32 hex digits: the key of the hash that maps Call-IDs to shards and
    /// makes stateless branches. Keep it secret so outsiders cannot aim
    /// calls at one shard; every edge and worker must use the same one.
    hash_key: Option<Spanned<String>>,
}

/// The effective configuration, after defaults and validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Config {
    /// `[sip]`
    pub(crate) sip: Sip,
    /// `[cluster]`
    pub(crate) cluster: Cluster,
    /// `[edge]`
    pub(crate) edge: Edge,
    /// `[worker]`
    pub(crate) worker: Worker,
}

/// A `[cluster] hash_key` or `--hash-key` value: 32 hex digits.
pub(crate) fn parse_hash_key(s: &str) -> Result<(u64, u64), String> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "must be exactly 32 hex digits (128 bits), got {} characters",
            s.len()
        ));
    }
    let k0 = u64::from_str_radix(&s[..16], 16).map_err(|e| e.to_string())?;
    let k1 = u64::from_str_radix(&s[16..], 16).map_err(|e| e.to_string())?;
    Ok((k0, k1))
}

/// The key a process hashes with: `--hash-key`, else the file's, else the
/// built-in default, which is public (it is in this repository): anyone
/// can compute where a Call-ID lands and aim at one worker. So a process
/// that is one node of several (a replicated worker, an edge of a
/// cluster) refuses to start on it, and says how to set one.
pub(crate) fn hashing(
    flag: Option<(u64, u64)>,
    file: Option<(u64, u64)>,
    several_nodes: bool,
) -> anyhow::Result<handover_sip::ids::Hashing> {
    match flag.or(file) {
        Some((k0, k1)) => Ok(handover_sip::ids::Hashing::with_key(k0, k1)),
        None if several_nodes => anyhow::bail!(
            "a cluster needs a hashing key of its own, the same on every node: set \
             [cluster] hash_key or --hash-key (32 hex digits, e.g. from `openssl rand -hex 16`); \
             the built-in default is public"
        ),
        None => Ok(handover_sip::ids::Hashing::default()),
    }
}

fn mode_name<S: serde::Serializer>(
    m: &handover_call::TransferMode,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.serialize_str(match m {
        handover_call::TransferMode::Passthrough => "passthrough",
        handover_call::TransferMode::Local => "local",
    })
}

/// Effective `[worker]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Worker {
    pub(crate) listen: String,
    pub(crate) edge: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) advertise: Option<String>,
    pub(crate) admin: String,
    pub(crate) max_call_age_s: u64,
    pub(crate) ring_timeout_s: u64,
    #[serde(serialize_with = "mode_name")]
    pub(crate) transfer_mode: handover_call::TransferMode,
    pub(crate) t1_ms: u64,
    pub(crate) max_calls: usize,
    pub(crate) max_calls_per_source: usize,
    /// Trusted peers' prefixes, as given.
    pub(crate) trusted: Vec<String>,
    /// Header names treated as identity headers beside RFC 3325's.
    pub(crate) identity_headers: Vec<String>,
    /// P-Asserted-Identity from digest users to trusted targets.
    pub(crate) assert_identity: bool,
    /// Routes in the command-line form (`MATCH=TARGET[,TARGET…]`).
    pub(crate) routes: Vec<String>,
    pub(crate) replication: Replication,
    pub(crate) registrar: Registrar,
}

/// Effective `[worker.registrar]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Registrar {
    pub(crate) min_expires: u32,
    pub(crate) max_expires: u32,
    pub(crate) default_expires: u32,
    pub(crate) max_contacts: usize,
    pub(crate) max_aors: usize,
    pub(crate) max_bindings_per_source: usize,
    pub(crate) domains: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) users: Option<String>,
    pub(crate) realm: String,
    pub(crate) algorithms: Vec<String>,
    pub(crate) nonce_ttl_s: u64,
    pub(crate) max_failures: u32,
    pub(crate) ban_s: u64,
    pub(crate) upstream: Vec<String>,
    pub(crate) ping_interval_s: u32,
}

/// Effective `[worker.replication]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Replication {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<u64>,
    pub(crate) id_from_hostname: bool,
    pub(crate) peers: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) grpc_listen: Option<String>,
    pub(crate) commit_window_ms: u64,
    pub(crate) data: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_dir: Option<String>,
    pub(crate) insecure: bool,
    pub(crate) min_free_mb: u64,
}

/// An edge's address inside the cluster: `IP:PORT`, or a bare `IP` (a
/// pod's, from the downward API) on the port of `listen` (`IP:PORT`).
pub(crate) fn internal_addr(s: &str, listen: &str) -> Result<std::net::SocketAddr, String> {
    if let Ok(a) = s.parse() {
        return Ok(a);
    }
    let port = listen
        .parse::<std::net::SocketAddr>()
        .map_or(5060, |l| l.port());
    match s.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
        Ok(ip) if !ip.is_unspecified() => Ok(std::net::SocketAddr::new(ip, port)),
        Ok(_) => Err(format!("`{s}` is no address to reach this edge at")),
        Err(_) => Err(format!(
            "`{s}` is not an IP or IP:PORT address (host names are not resolved)"
        )),
    }
}

/// Effective `[edge]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Edge {
    pub(crate) listen: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) advertise: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) internal_advertise: Option<String>,
    pub(crate) backends: Vec<String>,
    pub(crate) threads: usize,
    pub(crate) io: String,
    pub(crate) admin: String,
    pub(crate) recv_buffer_bytes: usize,
    pub(crate) send_buffer_bytes: usize,
    pub(crate) record_route: bool,
    pub(crate) bad_input_per_source: u32,
    pub(crate) new_dialogs_per_source: u32,
    pub(crate) ban_s: u32,
    /// Replicated workers' gRPC addresses (`IP:PORT` or `HOST:PORT`).
    pub(crate) cluster: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) cluster_tls: Option<String>,
    pub(crate) drain_s: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) listen_tcp: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) listen_tls: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) listen_ws: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) listen_wss: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_client_ca: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) tls_upstream_ca: Option<String>,
    pub(crate) max_connections: usize,
    pub(crate) max_connections_per_source: usize,
    pub(crate) stream_idle_s: u64,
    pub(crate) stream_message_timeout_ms: u64,
    pub(crate) proxy_protocol_from: Vec<String>,
    /// None: the private ranges (`handover_edge::Destinations::PRIVATE`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) deny_destinations: Option<Vec<String>>,
    pub(crate) allow_destinations: Vec<String>,
    pub(crate) health: Health,
}

/// Effective `[edge.health]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Health {
    pub(crate) interval_ms: u64,
    pub(crate) timeout_ms: u64,
    pub(crate) down_after: u32,
    pub(crate) up_after: u32,
}

/// Effective `[sip]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Sip {
    /// See the file key of the same name.
    pub(crate) max_message_bytes: usize,
    /// See the file key of the same name.
    pub(crate) max_uri_bytes: usize,
}

/// Effective `[cluster]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Cluster {
    /// "default" when the published default key is in use, else "set".
    pub(crate) hash_key: &'static str,
    #[serde(skip)]
    /// The key, when set.
    pub(crate) hash_key_value: Option<(u64, u64)>,
}

impl Sip {
    /// As the SIP layer's limits.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_message_bytes: self.max_message_bytes,
            max_uri_bytes: self.max_uri_bytes,
        }
    }
}

/// A configuration error, with where it is.
#[derive(Debug)]
pub(crate) struct ConfigError {
    path: PathBuf,
    /// 1-based line and column, when the error has a position.
    at: Option<(usize, usize)>,
    /// The offending line, for display.
    line: Option<String>,
    key: Option<&'static str>,
    message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.path.display())?;
        if let Some((l, c)) = self.at {
            write!(f, ":{l}:{c}")?;
        }
        write!(f, ": ")?;
        if let Some(k) = self.key {
            write!(f, "key `{k}`: ")?;
        }
        write!(f, "{}", self.message)?;
        if let (Some((l, _)), Some(line)) = (self.at, &self.line) {
            write!(f, "\n  {l} | {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

fn locate(src: &str, at: usize) -> (usize, usize, String) {
    let at = at.min(src.len());
    let before = &src[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    let col = before[start..].chars().count() + 1;
    let text = src[start..].lines().next().unwrap_or("").to_string();
    (line, col, text)
}

impl Config {
    /// Defaults, as for an empty file.
    pub(crate) fn defaults() -> Self {
        Self::parse(Path::new("<defaults>"), "").expect("defaults are valid")
    }

    /// Reads and validates `path`.
    pub(crate) fn load(path: &Path) -> Result<Self, ConfigError> {
        let src = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_owned(),
            at: None,
            line: None,
            key: None,
            message: format!("cannot read the file: {e}"),
        })?;
        Self::parse(path, &src)
    }

    /// Parses and validates `src`, read from `path`.
    pub(crate) fn parse(path: &Path, src: &str) -> Result<Self, ConfigError> {
        let err = |span: Option<Range<usize>>, key: Option<&'static str>, message: String| {
            let (at, line) = match span.map(|s| locate(src, s.start)) {
                Some((l, c, text)) => (Some((l, c)), Some(text)),
                None => (None, None),
            };
            ConfigError {
                path: path.to_owned(),
                at,
                line,
                key,
                message,
            }
        };
        let file: File =
            toml::from_str(src).map_err(|e| err(e.span(), None, e.message().trim().to_string()))?;

        let defaults = Limits::default();
        let value = |v: &Option<Spanned<usize>>, d: usize| v.as_ref().map_or(d, |s| *s.get_ref());
        let sip = Sip {
            max_message_bytes: value(&file.sip.max_message_bytes, defaults.max_message_bytes),
            max_uri_bytes: value(&file.sip.max_uri_bytes, defaults.max_uri_bytes),
        };
        let span_of = |v: &Option<Spanned<usize>>| v.as_ref().map(Spanned::span);
        if !(512..=65_535).contains(&sip.max_message_bytes) {
            return Err(err(
                span_of(&file.sip.max_message_bytes),
                Some("sip.max_message_bytes"),
                format!(
                    "{} is out of range: it must be between 512 and 65535 (a UDP datagram)",
                    sip.max_message_bytes
                ),
            ));
        }
        if sip.max_uri_bytes < 64 || sip.max_uri_bytes > sip.max_message_bytes {
            return Err(err(
                span_of(&file.sip.max_uri_bytes),
                Some("sip.max_uri_bytes"),
                format!(
                    "{} is out of range: it must be at least 64 and at most sip.max_message_bytes ({})",
                    sip.max_uri_bytes, sip.max_message_bytes
                ),
            ));
        }
        debug_assert!(sip.limits().validate().is_ok());

        let hash_key_value = match &file.cluster.hash_key {
            None => None,
            Some(k) => match parse_hash_key(k.get_ref()) {
                Ok(v) => Some(v),
                Err(m) => return Err(err(Some(k.span()), Some("cluster.hash_key"), m)),
            },
        };
        let e = &file.edge;
        let addr = |v: &Option<Spanned<String>>,
                    key: &'static str,
                    default: &str|
         -> Result<String, ConfigError> {
            match v {
                None => Ok(default.to_string()),
                Some(s) => match s.get_ref().parse::<std::net::SocketAddr>() {
                    Ok(_) => Ok(s.get_ref().clone()),
                    Err(_) => Err(err(
                        Some(s.span()),
                        Some(key),
                        format!(
                            "`{}` is not an IP:PORT address (host names are not resolved)",
                            s.get_ref()
                        ),
                    )),
                },
            }
        };
        let listen = addr(&e.listen, "edge.listen", "127.0.0.1:5060")?;
        let advertise = match &e.advertise {
            None => None,
            Some(_) => Some(addr(&e.advertise, "edge.advertise", "")?),
        };
        let internal_advertise = match &e.internal_advertise {
            None => None,
            Some(s) => Some(
                internal_addr(s.get_ref(), &listen)
                    .map_err(|m| err(Some(s.span()), Some("edge.internal_advertise"), m))?
                    .to_string(),
            ),
        };
        let admin = addr(&e.admin, "edge.admin", "127.0.0.1:9100")?;
        let listen_tcp = match &e.listen_tcp {
            None => None,
            Some(_) => Some(addr(&e.listen_tcp, "edge.listen_tcp", "")?),
        };
        let listen_tls = match &e.listen_tls {
            None => None,
            Some(_) => Some(addr(&e.listen_tls, "edge.listen_tls", "")?),
        };
        let listen_ws = match &e.listen_ws {
            None => None,
            Some(_) => Some(addr(&e.listen_ws, "edge.listen_ws", "")?),
        };
        let listen_wss = match &e.listen_wss {
            None => None,
            Some(_) => Some(addr(&e.listen_wss, "edge.listen_wss", "")?),
        };
        for (l, key) in [
            (&e.listen_tls, "edge.listen_tls"),
            (&e.listen_wss, "edge.listen_wss"),
        ] {
            if let Some(l) = l
                && (e.tls_cert.is_none() || e.tls_key.is_none())
            {
                return Err(err(
                    Some(l.span()),
                    Some(key),
                    "a TLS listener needs tls_cert and tls_key (PEM files)".to_string(),
                ));
            }
        }
        let sd = handover_edge::StreamConfig::default();
        let stream_idle_s = e
            .stream_idle_s
            .as_ref()
            .map_or(sd.idle_timeout.as_secs(), |v| *v.get_ref());
        if !(1..=86_400).contains(&stream_idle_s) {
            return Err(err(
                e.stream_idle_s.as_ref().map(Spanned::span),
                Some("edge.stream_idle_s"),
                format!("{stream_idle_s} is out of range: 1..=86400 s"),
            ));
        }
        let stream_message_timeout_ms = e
            .stream_message_timeout_ms
            .as_ref()
            .map_or(sd.message_timeout.as_millis() as u64, |v| *v.get_ref());
        if !(100..=600_000).contains(&stream_message_timeout_ms) {
            return Err(err(
                e.stream_message_timeout_ms.as_ref().map(Spanned::span),
                Some("edge.stream_message_timeout_ms"),
                format!("{stream_message_timeout_ms} is out of range: 100..=600000 ms"),
            ));
        }
        let cidrs = |t: &Option<Spanned<Vec<String>>>, key: &'static str| {
            let mut v = Vec::new();
            if let Some(t) = t {
                for c in t.get_ref() {
                    c.parse::<handover_sip::Cidr>()
                        .map_err(|e| err(Some(t.span()), Some(key), e.to_string()))?;
                    v.push(c.clone());
                }
            }
            Ok::<_, ConfigError>(v)
        };
        let proxy_protocol_from = cidrs(&e.proxy_protocol_from, "edge.proxy_protocol_from")?;
        let deny_destinations = match &e.deny_destinations {
            None => None,
            Some(_) => Some(cidrs(&e.deny_destinations, "edge.deny_destinations")?),
        };
        let allow_destinations = cidrs(&e.allow_destinations, "edge.allow_destinations")?;
        let mut backends = Vec::new();
        if let Some(b) = &e.backends {
            for v in b.get_ref() {
                if v.parse::<std::net::SocketAddr>().is_err() {
                    return Err(err(
                        Some(b.span()),
                        Some("edge.backends"),
                        format!("`{v}` is not an IP:PORT address (host names are not resolved)"),
                    ));
                }
                backends.push(v.clone());
            }
        }
        let io = match &e.io {
            None => "auto".to_string(),
            Some(s) if matches!(s.get_ref().as_str(), "auto" | "uring" | "epoll") => {
                s.get_ref().clone()
            }
            Some(s) => {
                return Err(err(
                    Some(s.span()),
                    Some("edge.io"),
                    format!("`{}` is not one of auto, uring, epoll", s.get_ref()),
                ));
            }
        };
        let mut cluster = Vec::new();
        if let Some(c) = &e.cluster {
            for v in c.get_ref() {
                let Some(a) = handover_worker::peers::host_port(v) else {
                    return Err(err(
                        Some(c.span()),
                        Some("edge.cluster"),
                        format!("`{v}` is not an IP:PORT or HOST:PORT address"),
                    ));
                };
                cluster.push(a);
            }
        }
        let hd = handover_edge::HealthConfig::default();
        let h = &e.health;
        let health = Health {
            interval_ms: h.interval_ms.unwrap_or(hd.interval_ms),
            timeout_ms: h
                .timeout_ms
                .as_ref()
                .map_or(hd.timeout_ms, |v| *v.get_ref()),
            down_after: h
                .down_after
                .as_ref()
                .map_or(hd.down_after, |v| *v.get_ref()),
            up_after: h.up_after.as_ref().map_or(hd.up_after, |v| *v.get_ref()),
        };
        if health.interval_ms != 0 && health.timeout_ms > health.interval_ms {
            return Err(err(
                h.timeout_ms.as_ref().map(Spanned::span),
                Some("edge.health.timeout_ms"),
                format!(
                    "{} must not exceed edge.health.interval_ms ({})",
                    health.timeout_ms, health.interval_ms
                ),
            ));
        }
        for (v, key) in [
            (&h.down_after, "edge.health.down_after"),
            (&h.up_after, "edge.health.up_after"),
        ] {
            if let Some(v) = v
                && *v.get_ref() == 0
            {
                return Err(err(
                    Some(v.span()),
                    Some(key),
                    "must be at least 1".to_string(),
                ));
            }
        }
        let w = &file.worker;
        let mut routes = Vec::new();
        let mut check = handover_call::Routes::default();
        for (i, r) in w.routes.iter().enumerate() {
            let key = "worker.routes.targets";
            let m = match (&r.user, &r.prefix, &r.domain) {
                (None, None, None) => "*".to_string(),
                (Some(u), None, None) => u.clone(),
                (None, Some(p), None) => format!("{p}*"),
                (None, None, Some(d)) => format!("@{d}"),
                _ => {
                    return Err(err(
                        Some(r.targets.span()),
                        Some("worker.routes"),
                        format!("route {} sets more than one of user, prefix, domain", i + 1),
                    ));
                }
            };
            let mut spec = format!("{m}={}", r.targets.get_ref().join(","));
            if let Some(t) = &r.transfer {
                t.get_ref()
                    .parse::<handover_call::TransferMode>()
                    .map_err(|e| err(Some(t.span()), Some("worker.routes.transfer"), e))?;
                spec += &format!(";transfer={}", t.get_ref());
            }
            if let Some(t) = &r.transport {
                spec += &format!(";transport={}", t.get_ref());
            }
            if let Some(n) = &r.tls_name {
                spec += &format!(";tls_name={}", n.get_ref());
            }
            if let Some(n) = &r.tcp_above {
                spec += &format!(";tcp_above={}", n.get_ref());
            }
            check.add(&spec).map_err(|e| {
                err(
                    Some(r.targets.span()),
                    Some(key),
                    format!("route {}: {e}", i + 1),
                )
            })?;
            routes.push(spec);
        }
        let t1_ms = w.t1_ms.as_ref().map_or(500, |v| *v.get_ref());
        if !(1..=4000).contains(&t1_ms) {
            return Err(err(
                w.t1_ms.as_ref().map(Spanned::span),
                Some("worker.t1_ms"),
                format!("{t1_ms} is out of range: 1..=4000 ms (T2 is 4 s)"),
            ));
        }
        let transfer_mode = match &w.transfer_mode {
            None => handover_call::TransferMode::default(),
            Some(t) => t
                .get_ref()
                .parse()
                .map_err(|e| err(Some(t.span()), Some("worker.transfer_mode"), e))?,
        };
        let ring_timeout_s = w.ring_timeout_s.as_ref().map_or(120, |s| *s.get_ref());
        if !(1..=3600).contains(&ring_timeout_s) {
            return Err(err(
                w.ring_timeout_s.as_ref().map(Spanned::span),
                Some("worker.ring_timeout_s"),
                format!("{ring_timeout_s} is out of range: 1..=3600 seconds"),
            ));
        }
        let max_calls = w.max_calls.as_ref().map_or(100_000, |v| *v.get_ref());
        if max_calls == 0 {
            return Err(err(
                w.max_calls.as_ref().map(Spanned::span),
                Some("worker.max_calls"),
                "must be at least 1".to_string(),
            ));
        }
        let mut trusted = Vec::new();
        if let Some(t) = &w.trusted {
            for v in t.get_ref() {
                v.parse::<handover_call::trust::Cidr>()
                    .map_err(|e| err(Some(t.span()), Some("worker.trusted"), e.to_string()))?;
                trusted.push(v.clone());
            }
        }
        let mut identity_headers = Vec::new();
        if let Some(h) = &w.identity_headers {
            for v in h.get_ref() {
                handover_call::trust::check_header_name(v)
                    .map_err(|e| err(Some(h.span()), Some("worker.identity_headers"), e))?;
                identity_headers.push(v.clone());
            }
        }
        let r = &w.replication;
        let mut peers = Vec::new();
        if let Some(p) = &r.peers {
            for v in p.get_ref() {
                handover_worker::peers::parse_peer(v).map_err(|e| {
                    err(
                        Some(p.span()),
                        Some("worker.replication.peers"),
                        e.to_string(),
                    )
                })?;
                peers.push(v.clone());
            }
        }
        let commit_window_ms = r.commit_window_ms.as_ref().map_or(40, |v| *v.get_ref());
        if commit_window_ms > 1_000 {
            return Err(err(
                r.commit_window_ms.as_ref().map(Spanned::span),
                Some("worker.replication.commit_window_ms"),
                format!(
                    "{commit_window_ms} is out of range: 0..=1000 ms (a new call's 2xx waits for it)"
                ),
            ));
        }
        let replication = Replication {
            id: r.id.as_ref().map(|v| *v.get_ref()),
            id_from_hostname: r.id_from_hostname.unwrap_or(false),
            peers,
            grpc_listen: match &r.grpc_listen {
                None => None,
                Some(_) => Some(addr(&r.grpc_listen, "worker.replication.grpc_listen", "")?),
            },
            commit_window_ms,
            data: r
                .data
                .clone()
                .unwrap_or_else(|| "handover-data".to_string()),
            tls_dir: r.tls_dir.clone(),
            insecure: r.insecure.unwrap_or(false),
            min_free_mb: r.min_free_mb.unwrap_or(64),
        };
        if replication.id.is_some() && replication.id_from_hostname {
            return Err(err(
                r.id.as_ref().map(Spanned::span),
                Some("worker.replication.id"),
                "set id or id_from_hostname, not both".to_string(),
            ));
        }
        let g = &w.registrar;
        let rd = handover_call::registrar::Config::default();
        let algorithms = match &g.algorithms {
            // MD5 first: phones that read only the first challenge mostly
            // know only MD5 (SIPp 3.6, libre-based phones refuse a first
            // challenge they cannot answer); fleets that all speak
            // SHA-256 put it first.
            None => vec!["MD5".to_string(), "SHA-256".to_string()],
            Some(a) => {
                for v in a.get_ref() {
                    v.parse::<handover_call::registrar::digest::Algorithm>()
                        .map_err(|e| err(Some(a.span()), Some("worker.registrar.algorithms"), e))?;
                }
                if a.get_ref().is_empty() {
                    return Err(err(
                        Some(a.span()),
                        Some("worker.registrar.algorithms"),
                        "name at least one of SHA-256, MD5".to_string(),
                    ));
                }
                a.get_ref().clone()
            }
        };
        let registrar = Registrar {
            min_expires: g.min_expires.unwrap_or(rd.min_expires),
            max_expires: g.max_expires.unwrap_or(rd.max_expires).max(1),
            default_expires: g.default_expires.unwrap_or(rd.default_expires),
            max_contacts: g.max_contacts.unwrap_or(rd.max_contacts),
            max_aors: g.max_aors.unwrap_or(rd.max_aors),
            max_bindings_per_source: g
                .max_bindings_per_source
                .unwrap_or(rd.max_bindings_per_source),
            domains: g.domains.clone().unwrap_or_default(),
            users: g.users.clone(),
            realm: g.realm.clone().unwrap_or_else(|| "handover".to_string()),
            algorithms,
            nonce_ttl_s: g.nonce_ttl_s.unwrap_or(300),
            max_failures: g.max_failures.unwrap_or(10),
            ban_s: g.ban_s.unwrap_or(60),
            ping_interval_s: g.ping_interval_s.unwrap_or(0),
            upstream: match &g.upstream {
                None => Vec::new(),
                Some(u) => {
                    let mut check = handover_call::registrar::Upstreams::default();
                    for v in u.get_ref() {
                        check.add(v).map_err(|e| {
                            err(Some(u.span()), Some("worker.registrar.upstream"), e)
                        })?;
                    }
                    u.get_ref().clone()
                }
            },
        };
        let worker = Worker {
            listen: addr(&w.listen, "worker.listen", "127.0.0.1:5080")?,
            edge: match &w.edge {
                // A name (a Kubernetes Service's) is looked up when the
                // worker starts.
                Some(s) => handover_worker::peers::host_port(s.get_ref()).ok_or_else(|| {
                    err(
                        Some(s.span()),
                        Some("worker.edge"),
                        format!("`{}` is not an IP:PORT or HOST:PORT address", s.get_ref()),
                    )
                })?,
                None => "127.0.0.1:5060".to_string(),
            },
            advertise: match &w.advertise {
                None => None,
                Some(_) => Some(addr(&w.advertise, "worker.advertise", "")?),
            },
            admin: addr(&w.admin, "worker.admin", "127.0.0.1:9101")?,
            max_call_age_s: w.max_call_age_s.unwrap_or(14_400),
            ring_timeout_s,
            transfer_mode,
            t1_ms,
            max_calls,
            max_calls_per_source: w.max_calls_per_source.unwrap_or(0),
            trusted,
            identity_headers,
            assert_identity: w.assert_identity.unwrap_or(false),
            routes,
            replication,
            registrar,
        };
        let ed = handover_edge::EdgeConfig::default();
        let edge = Edge {
            listen,
            advertise,
            internal_advertise,
            backends,
            threads: e.threads.unwrap_or(0),
            io,
            admin,
            recv_buffer_bytes: e.recv_buffer_bytes.unwrap_or(ed.recv_buffer_bytes),
            send_buffer_bytes: e.send_buffer_bytes.unwrap_or(ed.send_buffer_bytes),
            record_route: e.record_route.unwrap_or(ed.record_route),
            bad_input_per_source: e.bad_input_per_source.unwrap_or(ed.bad_input_per_source),
            new_dialogs_per_source: e
                .new_dialogs_per_source
                .unwrap_or(ed.new_dialogs_per_source),
            ban_s: e.ban_s.unwrap_or(ed.ban_s),
            cluster,
            cluster_tls: e.cluster_tls.clone(),
            drain_s: e.drain_s.unwrap_or(5),
            listen_tcp,
            listen_tls,
            listen_ws,
            listen_wss,
            tls_cert: e.tls_cert.clone(),
            tls_key: e.tls_key.clone(),
            tls_client_ca: e.tls_client_ca.clone(),
            tls_upstream_ca: e.tls_upstream_ca.clone(),
            max_connections: e.max_connections.unwrap_or(sd.max_connections),
            max_connections_per_source: e.max_connections_per_source.unwrap_or(sd.max_per_source),
            stream_idle_s,
            stream_message_timeout_ms,
            proxy_protocol_from,
            deny_destinations,
            allow_destinations,
            health,
        };
        Ok(Config {
            worker,
            edge,
            sip,
            cluster: Cluster {
                hash_key: if hash_key_value.is_some() {
                    "set"
                } else {
                    "default"
                },
                hash_key_value,
            },
        })
    }

    /// The effective configuration as TOML (secrets shown only as "set").
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string(self).expect("plain data serialises")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, String> {
        Config::parse(Path::new("t.toml"), s).map_err(|e| e.to_string())
    }

    #[test]
    fn empty_file_gives_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.sip.max_message_bytes, 65_535);
        assert_eq!(c.cluster.hash_key, "default");
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let e = parse("[sip]\nmax_message_bytes = 4000\nmax_uri_byte = 100\n").unwrap_err();
        assert!(e.starts_with("t.toml:3:1: "), "{e}");
        assert!(e.contains("unknown field `max_uri_byte`"), "{e}");
        assert!(e.contains("max_uri_bytes"), "suggests the right key: {e}");
    }

    #[test]
    fn out_of_range_value_is_named_with_key_and_line() {
        let e = parse("\n[sip]\n\nmax_message_bytes = 70000\n").unwrap_err();
        assert!(
            e.starts_with("t.toml:4:21: key `sip.max_message_bytes`: 70000 is out of range"),
            "{e}"
        );
        let e = parse("[sip]\nmax_message_bytes = 1000\nmax_uri_bytes = 2000\n").unwrap_err();
        assert!(e.contains("t.toml:3:17: key `sip.max_uri_bytes`"), "{e}");
    }

    #[test]
    fn an_edges_internal_address_takes_a_bare_ip_on_the_listen_port() {
        let c = parse("[edge]\nlisten = \"0.0.0.0:5070\"\ninternal_advertise = \"10.1.2.3\"\n")
            .unwrap();
        assert_eq!(c.edge.internal_advertise.as_deref(), Some("10.1.2.3:5070"));
        let c = parse("[edge]\ninternal_advertise = \"fd00::1\"\n").unwrap();
        assert_eq!(c.edge.internal_advertise.as_deref(), Some("[fd00::1]:5060"));
        let c = parse("[edge]\ninternal_advertise = \"10.1.2.3:6000\"\n").unwrap();
        assert_eq!(c.edge.internal_advertise.as_deref(), Some("10.1.2.3:6000"));
        let e = parse("[edge]\n\ninternal_advertise = \"0.0.0.0\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:3:"), "{e}");
        assert!(e.contains("edge.internal_advertise"), "{e}");
        let e = parse("[edge]\ninternal_advertise = \"edge-0\"\n").unwrap_err();
        assert!(e.contains("host names are not resolved"), "{e}");
    }

    #[test]
    fn wrong_type_and_syntax_errors_have_lines() {
        let e = parse("[sip]\nmax_message_bytes = \"big\"\n").unwrap_err();
        assert!(e.starts_with("t.toml:2:"), "{e}");
        let e = parse("[sip\n").unwrap_err();
        assert!(e.starts_with("t.toml:1:"), "{e}");
    }

    #[test]
    fn hash_key() {
        let c = parse("[cluster]\nhash_key = \"000102030405060708090a0b0c0d0e0f\"\n").unwrap();
        assert_eq!(
            c.cluster.hash_key_value,
            Some((0x0001020304050607, 0x08090a0b0c0d0e0f))
        );
        assert!(!c.to_toml().contains("0001"), "the secret is never printed");
        let e = parse("[cluster]\nhash_key = \"xyz\"\n").unwrap_err();
        assert!(
            e.contains("t.toml:2:12: key `cluster.hash_key`: must be exactly 32 hex digits"),
            "{e}"
        );
    }

    #[test]
    fn every_worker_and_edge_flag_has_a_key() {
        let c = parse(
            "[edge]\ncluster = [\"handover-worker-0.handover-worker:7001\", \"127.0.0.1:7002\"]\ndrain_s = 9\n\
             [worker]\ntrusted = [\"10.0.0.0/8\", \"192.0.2.7\"]\n\
             identity_headers = [\"Diversion\"]\nassert_identity = true\n\
             [worker.replication]\nid = 2\npeers = [\"1=127.0.0.1:7001,127.0.0.1:5081\", \"2=127.0.0.1:7002,127.0.0.1:5082\"]\n\
             grpc_listen = \"0.0.0.0:7002\"\ncommit_window_ms = 0\ndata = \"/var/lib/handover\"\n",
        )
        .unwrap();
        assert_eq!(c.edge.cluster.len(), 2);
        assert_eq!(c.edge.drain_s, 9);
        assert_eq!(c.edge.new_dialogs_per_source, 0, "off unless set");
        assert_eq!(c.worker.trusted, ["10.0.0.0/8", "192.0.2.7"]);
        assert_eq!(c.worker.identity_headers, ["Diversion"]);
        assert!(c.worker.assert_identity);
        let r = &c.worker.replication;
        assert_eq!((r.id, r.peers.len(), r.commit_window_ms), (Some(2), 2, 0));
        assert_eq!(r.grpc_listen.as_deref(), Some("0.0.0.0:7002"));
        assert_eq!(r.data, "/var/lib/handover");
        // Defaults, written once here.
        let d = parse("").unwrap();
        assert_eq!(d.worker.replication.commit_window_ms, 40);
        assert_eq!(d.worker.replication.data, "handover-data");
        assert_eq!(d.edge.drain_s, 5);
        assert!(
            d.to_toml().contains("[worker.replication]"),
            "{}",
            d.to_toml()
        );
    }

    #[test]
    fn stream_keys_and_their_rules() {
        let c = parse(
            "[edge]\nlisten_tcp = \"0.0.0.0:5060\"\nlisten_tls = \"0.0.0.0:5061\"\n\
             tls_cert = \"/tls/tls.crt\"\ntls_key = \"/tls/tls.key\"\ntls_client_ca = \"/tls/ca.crt\"\ntls_upstream_ca = \"/trunks/ca.crt\"\n\
             max_connections = 1000\nmax_connections_per_source = 8\nstream_idle_s = 120\n\
             stream_message_timeout_ms = 5000\nproxy_protocol_from = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let e = &c.edge;
        assert_eq!(
            (e.listen_tcp.as_deref(), e.listen_tls.as_deref()),
            (Some("0.0.0.0:5060"), Some("0.0.0.0:5061"))
        );
        assert_eq!((e.max_connections, e.max_connections_per_source), (1000, 8));
        assert_eq!((e.stream_idle_s, e.stream_message_timeout_ms), (120, 5000));
        assert_eq!(e.proxy_protocol_from, ["10.0.0.0/8"]);
        assert_eq!(e.tls_upstream_ca.as_deref(), Some("/trunks/ca.crt"));
        let d = parse("").unwrap();
        assert_eq!(d.edge.listen_tcp, None, "no stream listener unless asked");
        assert_eq!(
            (d.edge.max_connections_per_source, d.edge.stream_idle_s),
            (64, 300)
        );
        let e = parse("[edge]\nlisten_tls = \"127.0.0.1:5061\"\n").unwrap_err();
        assert!(e.contains("needs tls_cert and tls_key"), "{e}");
        let e = parse("[edge]\nstream_message_timeout_ms = 5\n").unwrap_err();
        assert!(e.contains("out of range"), "{e}");
        let e = parse("[edge]\nproxy_protocol_from = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(e.contains("prefix length"), "{e}");
    }

    #[test]
    fn trust_keys_and_their_rules() {
        let c = parse(
            "[edge]\ncluster_tls = \"/etc/handover-cluster\"\ndeny_destinations = []\n\
             allow_destinations = [\"10.20.0.0/24\"]\n\
             [worker.replication]\ntls_dir = \"/etc/c/member-{id}\"\ninsecure = true\nmin_free_mb = 128\n",
        )
        .unwrap();
        assert_eq!(c.edge.cluster_tls.as_deref(), Some("/etc/handover-cluster"));
        assert_eq!(c.edge.deny_destinations.as_deref(), Some(&[][..]));
        assert_eq!(c.edge.allow_destinations, ["10.20.0.0/24"]);
        let r = &c.worker.replication;
        assert_eq!(
            (r.tls_dir.as_deref(), r.insecure, r.min_free_mb),
            (Some("/etc/c/member-{id}"), true, 128)
        );
        let d = parse("").unwrap();
        assert_eq!(
            d.edge.deny_destinations, None,
            "the private ranges by default"
        );
        assert_eq!(d.worker.replication.min_free_mb, 64);
        let e = parse("[edge]\ndeny_destinations = [\"10.0.0.0/8\", \"x\"]\n").unwrap_err();
        assert!(e.contains("edge.deny_destinations"), "{e}");
    }

    #[test]
    fn registrar_keys_and_their_rules() {
        let c = parse(
            "[worker.registrar]\nmin_expires = 30\nmax_contacts = 3\ndomains = [\"example.com\"]\n\
             users = \"/etc/handover/users\"\nrealm = \"example.com\"\nalgorithms = [\"SHA-256\"]\n\
             upstream = [\"pbx.example.com=192.0.2.10:5060,192.0.2.11:5060\"]\n",
        )
        .unwrap();
        let r = &c.worker.registrar;
        assert_eq!(
            (r.min_expires, r.max_contacts, r.max_expires),
            (30, 3, 3600)
        );
        assert_eq!(
            (r.users.as_deref(), r.realm.as_str()),
            (Some("/etc/handover/users"), "example.com")
        );
        assert_eq!(
            (r.algorithms.as_slice(), r.upstream.len()),
            (&["SHA-256".to_string()][..], 1)
        );
        let d = parse("").unwrap().worker.registrar;
        assert_eq!(d.algorithms, ["MD5", "SHA-256"], "MD5 first by default");
        assert_eq!((d.nonce_ttl_s, d.max_failures, d.ban_s), (300, 10, 60));
        let e = parse("[worker.registrar]\nalgorithms = [\"SHA-1\"]\n").unwrap_err();
        assert!(e.contains("key `worker.registrar.algorithms`"), "{e}");
        let e = parse("[worker.registrar]\nupstream = [\"pbx=nowhere\"]\n").unwrap_err();
        assert!(e.contains("key `worker.registrar.upstream`"), "{e}");
    }

    #[test]
    fn replication_keys_name_the_rule_broken() {
        let e = parse("[worker.replication]\npeers = [\"1=localhost:7001\"]\n").unwrap_err();
        assert!(e.contains("key `worker.replication.peers`"), "{e}");
        assert!(e.contains("expected ID=GRPC_ADDR,SIP_ADDR"), "{e}");
        let e = parse("[worker.replication]\ncommit_window_ms = 5000\n").unwrap_err();
        assert!(
            e.contains(
                "t.toml:2:20: key `worker.replication.commit_window_ms`: 5000 is out of range"
            ),
            "{e}"
        );
        let e = parse("[worker.replication]\nid = 1\nid_from_hostname = true\n").unwrap_err();
        assert!(e.contains("set id or id_from_hostname, not both"), "{e}");
        let e = parse("[worker]\ntrusted = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(e.contains("key `worker.trusted`"), "{e}");
        let e = parse("[worker]\nidentity_headers = [\"Bad Header\"]\n").unwrap_err();
        assert!(e.contains("key `worker.identity_headers`"), "{e}");
        let e = parse("[edge]\ncluster = [\"not an address\"]\n").unwrap_err();
        assert!(e.contains("key `edge.cluster`"), "{e}");
    }

    #[test]
    fn edge_section() {
        let c = parse("[edge]\nlisten = \"127.0.0.1:5080\"\nbackends = [\"127.0.0.1:5070\"]\nio = \"epoll\"\n[edge.health]\ninterval_ms = 200\ntimeout_ms = 100\n").unwrap();
        assert_eq!(c.edge.listen, "127.0.0.1:5080");
        assert_eq!(c.edge.backends, vec!["127.0.0.1:5070".to_string()]);
        assert_eq!(c.edge.health.interval_ms, 200);
        let e = parse("[edge]\nbackends = [\"pbx.example:5060\"]\n").unwrap_err();
        assert!(
            e.contains("t.toml:2:12: key `edge.backends`: `pbx.example:5060` is not an IP:PORT"),
            "{e}"
        );
        let e = parse("[edge]\nio = \"kqueue\"\n").unwrap_err();
        assert!(
            e.contains("key `edge.io`: `kqueue` is not one of auto, uring, epoll"),
            "{e}"
        );
        let e = parse("[edge.health]\ninterval_ms = 100\ntimeout_ms = 500\n").unwrap_err();
        assert!(
            e.contains("t.toml:3:14: key `edge.health.timeout_ms`"),
            "{e}"
        );
        let e = parse("[edge]\nlisten_on = \"x\"\n").unwrap_err();
        assert!(e.contains("t.toml:2:1: unknown field `listen_on`"), "{e}");
    }

    #[test]
    fn worker_edge_may_be_a_name() {
        let c = parse("[worker]\nedge = \"handover-edge-internal:5060\"\n").unwrap();
        assert_eq!(c.worker.edge, "handover-edge-internal:5060");
        let e = parse("[worker]\nedge = \"handover edge\"\n").unwrap_err();
        assert!(
            e.contains(
                "t.toml:2:8: key `worker.edge`: `handover edge` is not an IP:PORT or HOST:PORT"
            ),
            "{e}"
        );
    }

    #[test]
    fn worker_section_and_routes() {
        let c = parse("[worker]\nmax_call_age_s = 60\n[[worker.routes]]\nuser = \"b\"\ntargets = [\"127.0.0.1:5071*2\", \"127.0.0.1:5072\"]\n[[worker.routes]]\ntargets = [\"127.0.0.1:5079\"]\n").unwrap();
        assert_eq!(
            c.worker.routes,
            vec![
                "b=127.0.0.1:5071*2,127.0.0.1:5072".to_string(),
                "*=127.0.0.1:5079".to_string()
            ]
        );
        assert_eq!(c.worker.max_call_age_s, 60);
        let e =
            parse("[[worker.routes]]\nprefix = \"+44\"\ntargets = [\"pbx:5060\"]\n").unwrap_err();
        assert!(
            e.contains("t.toml:3:11: key `worker.routes.targets`: route 1:"),
            "{e}"
        );
        let e =
            parse("[[worker.routes]]\nuser = \"a\"\ndomain = \"x\"\ntargets = [\"127.0.0.1:1\"]\n")
                .unwrap_err();
        assert!(e.contains("more than one of user, prefix, domain"), "{e}");
        let e = parse("[[worker.routes]]\nusr = \"a\"\ntargets = [\"127.0.0.1:1\"]\n").unwrap_err();
        assert!(e.contains("unknown field `usr`"), "{e}");
        let c = parse("[[worker.routes]]\nuser = \"carrier\"\ntargets = [\"203.0.113.5:5061\"]\ntransport = \"tls\"\ntls_name = \"sip.carrier.example\"\n").unwrap();
        assert_eq!(
            c.worker.routes,
            ["carrier=203.0.113.5:5061;transport=tls;tls_name=sip.carrier.example"]
        );
        let c = parse(
            "[[worker.routes]]\nuser = \"pbx\"\ntargets = [\"192.0.2.7:5060\"]\ntcp_above = 1300\n",
        )
        .unwrap();
        assert_eq!(c.worker.routes, ["pbx=192.0.2.7:5060;tcp_above=1300"]);
        let e = parse("[[worker.routes]]\nuser = \"c\"\ntargets = [\"203.0.113.5:5061\"]\ntls_name = \"x.example\"\n").unwrap_err();
        assert!(e.contains("needs `;transport=tls`"), "{e}");
        let e = parse("[worker]\nt1_ms = 0\n").unwrap_err();
        assert!(e.contains("key `worker.t1_ms`"), "{e}");
        let e = parse("[worker]\ntransfer_mode = \"magic\"\n").unwrap_err();
        assert!(
            e.contains("key `worker.transfer_mode`: transfer mode `magic` is not one of: passthrough, local"),
            "{e}"
        );
        let e = parse("[[worker.routes]]\ntargets = [\"127.0.0.1:1\"]\ntransfer = \"lokal\"\n")
            .unwrap_err();
        assert!(e.contains("key `worker.routes.transfer`"), "{e}");
        let c = parse("[worker]\ntransfer_mode = \"local\"\n[[worker.routes]]\nuser = \"b\"\ntargets = [\"127.0.0.1:1\"]\ntransfer = \"passthrough\"\n").unwrap();
        assert_eq!(c.worker.transfer_mode, handover_call::TransferMode::Local);
        assert_eq!(c.worker.routes, ["b=127.0.0.1:1;transfer=passthrough"]);
        let e = parse("[worker]\nring_timeout_s = 0\n").unwrap_err();
        assert!(
            e.contains("t.toml:2:18: key `worker.ring_timeout_s`: 0 is out of range"),
            "{e}"
        );
    }

    #[test]
    fn hash_key_bad() {
        let e = parse("[cluster]\nhash_key = \"xyz\"\n").unwrap_err();
        assert!(
            e.contains("t.toml:2:12: key `cluster.hash_key`: must be exactly 32 hex digits"),
            "{e}"
        );
    }
}
