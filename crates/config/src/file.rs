//! The file as written: every section and key optional, unknown keys
//! refused, values kept with their positions (`Spanned`) so that
//! [`super::Config::parse`] can name the line of a bad one.

use serde::Deserialize;
use toml::Spanned;

/// The whole file. Every section and key is optional; defaults are what
/// `handover check-config` prints for an empty file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct File {
    #[serde(default)]
    pub(super) sip: SipSection,
    #[serde(default)]
    pub(super) cluster: ClusterSection,
    #[serde(default)]
    pub(super) edge: EdgeSection,
    #[serde(default)]
    pub(super) worker: WorkerSection,
}

/// `[worker]`: the B2BUA (`handover worker`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct WorkerSection {
    /// Address to receive SIP from the edge on.
    pub(super) listen: Option<Spanned<String>>,
    /// The edge: where requests the worker originates go.
    pub(super) edge: Option<Spanned<String>>,
    /// The edge's advertised address, if not `edge`.
    pub(super) advertise: Option<Spanned<String>>,
    /// Admin HTTP address.
    pub(super) admin: Option<Spanned<String>>,
    /// Seconds after its answer at which a call is hung up on both legs.
    pub(super) max_call_age_s: Option<u64>,
    /// Seconds a callee may ring before it counts as not answering.
    pub(super) ring_timeout_s: Option<Spanned<u64>>,
    /// Largest datagram of several messages to the edge; 0 = one each.
    pub(super) bundle_bytes: Option<Spanned<usize>>,
    /// Transfer mode of routes that do not set one.
    pub(super) transfer_mode: Option<Spanned<String>>,
    /// SIP timer T1, milliseconds.
    pub(super) t1_ms: Option<Spanned<u64>>,
    /// Calls held at most.
    pub(super) max_calls: Option<Spanned<usize>>,
    /// Calls held at most per source address; 0 = no limit.
    pub(super) max_calls_per_source: Option<usize>,
    /// Trusted peers by address prefix (`["10.0.0.0/8", …]`): their
    /// identity headers pass between the legs.
    pub(super) trusted: Option<Spanned<Vec<String>>>,
    /// More headers treated as identity headers (`["Diversion"]`).
    pub(super) identity_headers: Option<Spanned<Vec<String>>>,
    /// Assert digest-authenticated callers to trusted targets.
    pub(super) assert_identity: Option<bool>,
    /// Where calls go, tried in order.
    #[serde(default)]
    pub(super) routes: Vec<RouteSection>,
    #[serde(default)]
    pub(super) replication: ReplicationSection,
    #[serde(default)]
    pub(super) registrar: RegistrarSection,
}

/// `[worker.registrar]`: REGISTER (RFC 3261 §10) and digest authentication.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RegistrarSection {
    /// Shorter registrations get 423 with Min-Expires.
    pub(super) min_expires: Option<u32>,
    /// Longer ones are shortened to this.
    pub(super) max_expires: Option<u32>,
    /// Of a contact that names no expiry.
    pub(super) default_expires: Option<u32>,
    /// Bindings per address-of-record at most (past it: 403).
    pub(super) max_contacts: Option<usize>,
    /// AORs held at most in the cluster (new ones past it: 503).
    pub(super) max_aors: Option<usize>,
    /// Bindings at most whose phone is behind one source address; 0 = no limit.
    pub(super) max_bindings_per_source: Option<usize>,
    /// Domains served (the To host); empty = any.
    pub(super) domains: Option<Vec<String>>,
    /// The users file (HA1 hashes, `handover passwd`); set = phones must
    /// authenticate (REGISTER: 401; calls from untrusted sources: 407).
    pub(super) users: Option<String>,
    /// The digest realm.
    pub(super) realm: Option<String>,
    /// Digest algorithms offered, in order (`SHA-256`, `MD5`).
    pub(super) algorithms: Option<Spanned<Vec<String>>>,
    /// Seconds a nonce lives (then `stale=true`).
    pub(super) nonce_ttl_s: Option<u64>,
    /// Failed authentications from one source within a minute before it
    /// is answered 403 and ignored for `ban_s`; 0 = never.
    pub(super) max_failures: Option<u32>,
    pub(super) ban_s: Option<u64>,
    /// Relay mode: PBXs that are the registrars of some domains,
    /// `["[DOMAIN=]IP:PORT[,IP:PORT…]", …]`: their REGISTERs go there with
    /// a Path through the edge.
    pub(super) upstream: Option<Spanned<Vec<String>>>,
    /// Seconds between OPTIONS pings to each binding (keeps NAT bindings
    /// open; an unanswered one drops the binding); 0 = none.
    pub(super) ping_interval_s: Option<u32>,
}

/// `[worker.replication]`: Raft (`--id`, `--peer`, …). Without `id` (or
/// `id_from_hostname`) and `peers`, a worker does not replicate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplicationSection {
    /// This worker's id among `peers`.
    pub(super) id: Option<Spanned<u64>>,
    /// Take the id from the host name's trailing `-N` plus one.
    pub(super) id_from_hostname: Option<bool>,
    /// Every member, this one included: `["ID=GRPC_ADDR,SIP_ADDR", …]`.
    pub(super) peers: Option<Spanned<Vec<String>>>,
    /// Address to bind gRPC on, when not this worker's peer address.
    pub(super) grpc_listen: Option<Spanned<String>>,
    /// Join a running cluster through this member's gRPC address.
    pub(super) join: Option<Spanned<String>>,
    /// The peers by pattern (`{ordinal}`, `{id}`), with `founders`.
    pub(super) peer_template: Option<String>,
    /// The cluster's first voters, ids 1..=founders.
    pub(super) founders: Option<u64>,
    /// Seconds out of the map before the leader removes a voter (0: never).
    pub(super) remove_down_after_s: Option<u64>,
    /// Group-commit window, milliseconds (0: none).
    pub(super) commit_window_ms: Option<Spanned<u64>>,
    /// Directory of the Raft log.
    pub(super) data: Option<String>,
    /// Cluster credentials (`ca.crt`, `tls.crt`, `tls.key`; `{id}` is
    /// replaced by this worker's id).
    pub(super) tls_dir: Option<String>,
    /// Plain HTTP/2 on a gRPC address that is not loopback.
    pub(super) insecure: Option<bool>,
    /// MiB free on the log's disk below which new calls and REGISTERs get 503.
    pub(super) min_free_mb: Option<u64>,
    /// MiB of entries the in-memory Raft log holds before a snapshot.
    pub(super) raft_log_mb: Option<Spanned<u64>>,
}

/// `[[worker.routes]]`: one route; at most one of `user`, `prefix`,
/// `domain` (none: any call), and its targets (`IP:PORT` or `IP:PORT*WEIGHT`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RouteSection {
    pub(super) user: Option<String>,
    pub(super) prefix: Option<String>,
    pub(super) domain: Option<String>,
    pub(super) targets: Spanned<Vec<String>>,
    /// `passthrough` or `local` (default: `[worker] transfer_mode`).
    pub(super) transfer: Option<Spanned<String>>,
    /// `udp` (default), `tcp`, `tls`, `ws` or `wss`: how the targets are reached.
    pub(super) transport: Option<Spanned<String>>,
    /// Over TLS or WSS: the name the targets' certificates carry
    /// (default: their IP addresses).
    pub(super) tls_name: Option<Spanned<String>>,
    /// Over UDP, to targets that take TCP too: requests larger than this
    /// many bytes go over TCP (RFC 3261 §18.1.1 says 1300).
    pub(super) tcp_above: Option<Spanned<u16>>,
}

/// `[edge]`: the stateless front door (`handover edge`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EdgeSection {
    /// Address to receive SIP on (`IP:PORT`).
    pub(super) listen: Option<Spanned<String>>,
    /// Address written into Via and Record-Route, when it differs from `listen`.
    pub(super) advertise: Option<Spanned<String>>,
    /// This edge's own address inside the cluster (`IP` or `IP:PORT`; the
    /// port defaults to `listen`'s), when several edges share `advertise`.
    pub(super) internal_advertise: Option<Spanned<String>>,
    /// SIP servers behind the edge (`["IP:PORT", …]`).
    pub(super) backends: Option<Spanned<Vec<String>>>,
    /// Data-plane threads; 0 = one per CPU.
    pub(super) threads: Option<usize>,
    /// `auto`, `uring` or `epoll`.
    pub(super) io: Option<Spanned<String>>,
    /// Admin HTTP address (`/metrics`, `/healthz`, `/readyz`).
    pub(super) admin: Option<Spanned<String>>,
    /// SO_RCVBUF per socket, bytes.
    pub(super) recv_buffer_bytes: Option<usize>,
    /// SO_SNDBUF per socket, bytes.
    pub(super) send_buffer_bytes: Option<usize>,
    /// Record-Route dialog-creating requests.
    pub(super) record_route: Option<bool>,
    /// Refused datagrams allowed per source address per second; 0 = no limit.
    pub(super) bad_input_per_source: Option<u32>,
    /// New dialogs allowed per source address per second; 0 = no limit.
    pub(super) new_dialogs_per_source: Option<u32>,
    /// Seconds a source over twice that in a second is banned; 0 = never.
    pub(super) ban_s: Option<u32>,
    /// Replicated workers' gRPC addresses: route by their shard map.
    pub(super) cluster: Option<Spanned<Vec<String>>>,
    /// Cluster credentials for the map watch (`ca.crt`, `tls.crt`, `tls.key`).
    pub(super) cluster_tls: Option<String>,
    /// Seconds to keep serving after SIGTERM with /readyz failing.
    pub(super) drain_s: Option<u64>,
    /// SIP over TCP on this address (`IP:PORT`; often the UDP one).
    pub(super) listen_tcp: Option<Spanned<String>>,
    /// SIP over TLS on this address (`IP:PORT`, 5061 by convention).
    pub(super) listen_tls: Option<Spanned<String>>,
    /// SIP over WebSocket (RFC 7118) on this address.
    pub(super) listen_ws: Option<Spanned<String>>,
    /// SIP over secure WebSocket on this address (the TLS certificate).
    pub(super) listen_wss: Option<Spanned<String>>,
    /// PEM certificate chain of the TLS listener (re-read when it changes).
    pub(super) tls_cert: Option<String>,
    /// PEM private key of the TLS listener.
    pub(super) tls_key: Option<String>,
    /// PEM CA certificates; with it, TLS clients must present a
    /// certificate that chains to one (trunks).
    pub(super) tls_client_ca: Option<String>,
    /// PEM CA certificates a TLS route target's certificate must chain to
    /// (default: the system's roots).
    pub(super) tls_upstream_ca: Option<String>,
    /// Stream connections at most, in all.
    pub(super) max_connections: Option<usize>,
    /// Stream connections at most from one IP address.
    pub(super) max_connections_per_source: Option<usize>,
    /// Seconds a stream connection may stay silent before it is closed.
    pub(super) stream_idle_s: Option<Spanned<u64>>,
    /// Milliseconds for a TLS handshake, and for a message once its first
    /// byte came, before the connection is closed.
    pub(super) stream_message_timeout_ms: Option<Spanned<u64>>,
    /// Load balancers (CIDR) whose TCP/TLS connections start with a
    /// PROXY protocol v2 header naming the client.
    pub(super) proxy_protocol_from: Option<Spanned<Vec<String>>>,
    /// Networks (CIDR) workers' requests may not be sent to, besides the
    /// built-in ones (link-local, multicast, …).
    pub(super) deny_destinations: Option<Spanned<Vec<String>>>,
    /// Exceptions to the denied networks (a PBX's subnet).
    pub(super) allow_destinations: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(super) health: HealthSection,
}

/// `[edge.health]`: OPTIONS probes of the backends.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct HealthSection {
    pub(super) interval_ms: Option<u64>,
    pub(super) timeout_ms: Option<Spanned<u64>>,
    pub(super) down_after: Option<Spanned<u32>>,
    pub(super) up_after: Option<Spanned<u32>>,
}

/// `[sip]`: limits of the SIP message layer.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SipSection {
    /// Largest SIP message accepted, in bytes (requests above it get 413).
    pub(super) max_message_bytes: Option<Spanned<usize>>,
    /// Longest Request-URI accepted, in bytes (requests above it get 414).
    pub(super) max_uri_bytes: Option<Spanned<usize>>,
}

/// `[cluster]`: settings every node of one cluster must share.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ClusterSection {
    /// 32 hex digits: the key of the hash that maps Call-IDs to shards and
    /// makes stateless branches. Keep it secret so outsiders cannot aim
    /// calls at one shard; every edge and worker must use the same one.
    pub(super) hash_key: Option<Spanned<String>>,
}
