//! `handover worker`'s flags, resolved with the `[worker]` section of
//! the file into [`handover_worker::sip::Settings`]; the worker itself is
//! the `handover-worker` crate.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use handover_call::TransferMode;
use handover_worker::sip::Settings;

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// TOML configuration file (its `[worker]` section; flags override it).
    #[arg(long)]
    config: Option<std::path::PathBuf>,
    /// The cluster's hashing key, 32 hex digits, the same on every node
    /// (overrides `[cluster] hash_key`; required with --peer).
    #[arg(long, value_parser = crate::parse_hash_key)]
    hash_key: Option<(u64, u64)>,
    /// A trusted peer (PBX, trunk) by address prefix, e.g. 10.0.0.0/8
    /// (repeat; replaces the file's `trusted`): its P-Asserted-Identity,
    /// P-Preferred-Identity and Remote-Party-ID pass between the legs;
    /// anyone else's are removed.
    #[arg(long = "trusted", value_name = "CIDR")]
    trusted: Vec<handover_call::trust::Cidr>,
    /// A header to treat as an identity header beside P-Asserted-Identity,
    /// P-Preferred-Identity and Remote-Party-ID, e.g. Diversion (repeat;
    /// replaces the file's `identity_headers`): removed unless a trusted
    /// peer sent it.
    #[arg(long = "identity-header", value_name = "NAME", value_parser = header_name)]
    identity_headers: Vec<String>,
    /// Send trusted targets `P-Asserted-Identity: <sip:USER@REALM>` for a
    /// caller who authenticated by digest (RFC 3325; needs --users).
    #[arg(long)]
    assert_identity: bool,
    /// Address to receive SIP from the edge on [default: 127.0.0.1:5080].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// The edge: where requests this worker originates are sent, `IP:PORT`
    /// or `HOST:PORT` (looked up at start, waiting up to 60 s for the name)
    /// [default: 127.0.0.1:5060].
    #[arg(long, value_parser = edge_addr)]
    edge: Option<String>,
    /// The edge's advertised address, named in our Via and Contact
    /// [default: --edge].
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// Where calls go: `MATCH=IP:PORT[*WEIGHT][,IP:PORT…]` where MATCH is a
    /// user, PREFIX*, @DOMAIN or * (repeat; replaces the file's routes);
    /// then `;transfer=passthrough|local`, `;transport=udp|tcp|tls|ws|wss`
    /// and, over TLS or WSS, `;tls_name=NAME` (the name the targets' certificates carry),
    /// over UDP, `;tcp_above=BYTES` (larger INVITEs over TCP, RFC 3261
    /// §18.1.1: 1300).
    #[arg(long = "route", value_name = "MATCH=IP:PORT")]
    routes: Vec<String>,
    /// Admin HTTP address for /metrics, /healthz, /readyz [default: 127.0.0.1:9101].
    #[arg(long)]
    admin: Option<SocketAddr>,
    /// Seconds after its answer at which a call is hung up on both legs
    /// (no call whose phones vanished lives forever) [default: 14400].
    #[arg(long)]
    max_call_age_s: Option<u64>,
    /// Seconds a callee may ring unanswered before it is cancelled and the
    /// route's next target tried (the caller gets 408 when none is left)
    /// [default: 120].
    #[arg(long)]
    ring_timeout_s: Option<u64>,
    /// Largest datagram to the edge carrying several messages: what one
    /// received message makes the worker send to its `--edge` goes as one
    /// datagram when it fits (edges of this version or later read it).
    /// 0: every message alone [default: 8192].
    #[arg(long)]
    bundle_bytes: Option<usize>,
    /// Who carries out transfers (REFER) on routes that do not say:
    /// `passthrough` (the phones; REFER and NOTIFY relayed) or `local` (the
    /// B2BUA calls the target and re-INVITEs the transferee)
    /// [default: passthrough].
    #[arg(long)]
    transfer_mode: Option<TransferMode>,
    /// Calls this worker holds at most; a new INVITE past it is answered
    /// 503 with Retry-After [default: 100000].
    #[arg(long)]
    max_calls: Option<usize>,
    /// Calls one source address (a phone, a trunk, as the edge saw it) may
    /// hold at this worker; past it, 503 with Retry-After (0: no limit)
    /// [default: 0].
    #[arg(long)]
    max_calls_per_source: Option<usize>,
    /// SIP timer T1 in milliseconds (RFC 3261: 500; lower only on a network
    /// known to be faster) [default: 500].
    #[arg(long)]
    t1_ms: Option<u64>,
    /// The users file of digest authentication (`handover passwd` writes
    /// it): phones must authenticate (overrides `[worker.registrar] users`).
    #[arg(long)]
    users: Option<std::path::PathBuf>,
    /// The digest realm (overrides `[worker.registrar] realm`)
    /// [default: handover].
    #[arg(long)]
    realm: Option<String>,
    /// Digest algorithms offered, in order, comma-separated: `MD5`,
    /// `SHA-256` (overrides `[worker.registrar] algorithms`)
    /// [default: MD5,SHA-256]. Phones built on libre 1.x (baresip 1.x)
    /// give up on any challenge they cannot answer: offer them `MD5` only.
    #[arg(long, value_delimiter = ',')]
    digest_algorithms: Vec<handover_call::registrar::digest::Algorithm>,
    /// Relay mode: the PBX that is the registrar of a domain,
    /// `[DOMAIN=]IP:PORT[,IP:PORT…]` (repeat; no domain: any; replaces the
    /// file's `upstream`). Its REGISTERs go there with a Path through the
    /// edge, so the PBX's calls reach the phone on its flow.
    #[arg(long = "registrar-upstream", value_name = "[DOMAIN=]IP:PORT")]
    registrar_upstream: Vec<String>,
    /// Seconds a digest nonce lives; past it right credentials get a new
    /// challenge with `stale=true` (overrides `[worker.registrar]
    /// nonce_ttl_s`) [default: 300].
    #[arg(long)]
    nonce_ttl_s: Option<u64>,
    /// Write call detail records, one JSON line per call, to this file
    /// (`-`: standard output; docs/records.md). With replication each
    /// record is written once, by the worker serving its call's shard.
    #[arg(long, value_name = "PATH")]
    records: Option<std::path::PathBuf>,
    /// Rotate the records' file past this many MiB (0: never).
    #[arg(long, default_value_t = 100)]
    records_rotate_mb: u64,
    /// Rotate the records' file once it is this many seconds old (0: never).
    #[arg(long, default_value_t = 86_400)]
    records_rotate_s: u64,
    #[command(flatten)]
    cluster: crate::cli::cluster::ClusterArgs,
}

fn edge_addr(s: &str) -> Result<String, String> {
    handover_worker::peers::host_port(s)
        .ok_or_else(|| format!("`{s}` is not an IP:PORT or HOST:PORT address"))
}

/// What a reload reads again from `path`: the file's routes, trusted
/// peers and identity headers, each unless its flags replaced it at start
/// (flags still win, as they did).
fn reloader(path: std::path::PathBuf, a: &WorkerArgs) -> handover_worker::replica::Reloader {
    let routes = a.routes.clone();
    let trusted: Vec<String> = a.trusted.iter().map(ToString::to_string).collect();
    let identity_headers = a.identity_headers.clone();
    handover_worker::replica::Reloader(std::sync::Arc::new(move || {
        let w = crate::Config::load(&path)
            .map_err(|e| e.to_string())?
            .worker;
        let pick = |flags: &Vec<String>, file: Vec<String>| {
            if flags.is_empty() {
                file
            } else {
                flags.clone()
            }
        };
        Ok(handover_worker::reload::Settings {
            routes: pick(&routes, w.routes),
            trusted: pick(&trusted, w.trusted),
            identity_headers: pick(&identity_headers, w.identity_headers),
            ..Default::default()
        })
    }))
}

/// The effective settings: file (or defaults), then flags.
pub fn settings(a: WorkerArgs) -> anyhow::Result<Settings> {
    let reload = a.config.clone().map(|p| reloader(p, &a));
    let file = match &a.config {
        Some(p) => crate::Config::load(p)?,
        None => crate::Config::defaults(),
    };
    let w = file.worker;
    let parse = |s: &str| s.parse::<SocketAddr>().expect("validated by config");
    let cluster = a.cluster.over(&w.replication);
    let replication = match crate::cli::cluster::configured(&cluster)? {
        None => None,
        Some((id, peers)) => {
            let bind = cluster.grpc_listen.map(|a| a.ip()).or_else(|| {
                let me = peers.iter().find(|p| p.id == id)?;
                handover_worker::peers::resolve_now(&me.grpc)
                    .ok()
                    .map(|a| a.ip())
            });
            let tls = crate::cli::cluster::cluster_tls(&cluster, id, bind)?;
            Some(handover_worker::replica::Settings {
                id,
                peers,
                data: cluster.data.clone().expect("set by over()"),
                grpc_listen: cluster.grpc_listen,
                commit_window: Duration::from_millis(
                    cluster.commit_window_ms.expect("set by over()"),
                ),
                tls,
                min_free_bytes: cluster
                    .min_free_mb
                    .expect("set by over()")
                    .saturating_mul(1 << 20),
                log_bytes: usize::try_from(
                    cluster
                        .raft_log_mb
                        .expect("set by over()")
                        .saturating_mul(1 << 20),
                )
                .unwrap_or(usize::MAX),
                records: None,
                reload: None,
                join: cluster.join.clone(),
                remove_down_after: match cluster.remove_down_after_s.expect("set by over()") {
                    0 => None,
                    s => Some(Duration::from_secs(s)),
                },
            })
        }
    };
    let trusted = if a.trusted.is_empty() {
        w.trusted
            .iter()
            .map(|t| t.parse().expect("validated by config"))
            .collect()
    } else {
        a.trusted
    };
    Ok(Settings {
        listen: a.listen.unwrap_or_else(|| parse(&w.listen)),
        edge: handover_worker::peers::resolve_waiting(
            a.edge.as_deref().unwrap_or(&w.edge),
            Duration::from_secs(60),
        )
        .context("--edge")?,
        advertise: a.advertise.or_else(|| w.advertise.as_deref().map(parse)),
        admin: a.admin.unwrap_or_else(|| parse(&w.admin)),
        routes: if a.routes.is_empty() {
            w.routes
        } else {
            a.routes
        },
        max_call_age_s: a.max_call_age_s.unwrap_or(w.max_call_age_s),
        ring_timeout_s: a.ring_timeout_s.unwrap_or(w.ring_timeout_s),
        bundle_bytes: a.bundle_bytes.unwrap_or(w.bundle_bytes),
        transfer_mode: a.transfer_mode.unwrap_or(w.transfer_mode),
        t1_ms: a.t1_ms.unwrap_or(w.t1_ms),
        max_calls: a.max_calls.unwrap_or(w.max_calls),
        max_calls_per_source: a.max_calls_per_source.unwrap_or(w.max_calls_per_source),
        limits: file.sip.limits(),
        // The edge's key: a call's shard must be the one the edge routes by.
        hashing: crate::hashing(
            a.hash_key,
            file.cluster.hash_key_value,
            !cluster.peers.is_empty(),
        )?,
        trusted: handover_call::trust::Trusted(trusted),
        identity_headers: if a.identity_headers.is_empty() {
            w.identity_headers
        } else {
            a.identity_headers
        },
        assert_identity: a.assert_identity || w.assert_identity,
        replication,
        reload,
        records: a.records.map(|path| handover_worker::records::Settings {
            path,
            rotate_bytes: a.records_rotate_mb.saturating_mul(1 << 20),
            rotate_after: Duration::from_secs(a.records_rotate_s),
        }),
        upstreams: {
            let mut u = handover_call::registrar::Upstreams::default();
            let specs = if a.registrar_upstream.is_empty() {
                &w.registrar.upstream
            } else {
                &a.registrar_upstream
            };
            for spec in specs {
                u.add(spec)
                    .map_err(|e| anyhow::anyhow!("--registrar-upstream: {e}"))?;
            }
            u
        },
        registrar: handover_call::registrar::Config {
            min_expires: w.registrar.min_expires,
            max_expires: w.registrar.max_expires,
            default_expires: w.registrar.default_expires,
            max_contacts: w.registrar.max_contacts,
            max_aors: w.registrar.max_aors,
            max_bindings_per_source: w.registrar.max_bindings_per_source,
            domains: w.registrar.domains.clone(),
            ping_interval_s: w.registrar.ping_interval_s,
            ..Default::default()
        },
        auth: a
            .users
            .or_else(|| w.registrar.users.as_ref().map(Into::into))
            .map(|users| handover_worker::sip::Auth {
                users,
                realm: a.realm.unwrap_or_else(|| w.registrar.realm.clone()),
                algorithms: if a.digest_algorithms.is_empty() {
                    w.registrar
                        .algorithms
                        .iter()
                        .map(|s| s.parse().expect("validated by config"))
                        .collect()
                } else {
                    a.digest_algorithms.clone()
                },
                nonce_ttl_s: a.nonce_ttl_s.unwrap_or(w.registrar.nonce_ttl_s),
                max_failures: w.registrar.max_failures,
                ban_s: w.registrar.ban_s,
            }),
    })
}

/// A header name for `--identity-header`.
fn header_name(s: &str) -> Result<String, String> {
    handover_call::trust::check_header_name(s).map(|()| s.to_string())
}
