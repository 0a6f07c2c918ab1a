//! `handover edge`'s flags, resolved with the `[edge]` section of the file
//! into the edge's [`Settings`]; the process around the edge is the
//! binary's.

use clap::{Args, ValueEnum};
use handover_edge::{EdgeConfig, HealthConfig, IoMode};
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Config;

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Io {
    /// io_uring where the kernel and seccomp allow it, else epoll.
    Auto,
    /// io_uring or fail.
    Uring,
    /// epoll + recvmmsg/sendmmsg.
    Epoll,
}

#[derive(Debug, Args)]
pub struct EdgeArgs {
    /// TOML configuration file (its `[edge]` section; flags override it).
    #[arg(long)]
    config: Option<PathBuf>,
    /// The cluster's hashing key, 32 hex digits, the same on every node
    /// (overrides `[cluster] hash_key`; required with --cluster).
    #[arg(long, value_parser = crate::parse_hash_key)]
    hash_key: Option<(u64, u64)>,
    /// Address to receive SIP on [default: 127.0.0.1:5060].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address to name in Via and Record-Route, if not --listen.
    #[arg(long)]
    advertise: Option<SocketAddr>,
    /// This edge's own address inside the cluster, where workers reach it
    /// (`IP`, on --listen's port, or `IP:PORT`; in Kubernetes the pod's
    /// IP). Set it on every edge when several share --advertise: the edge
    /// then names itself beside each flow it holds, so a worker's answers
    /// and requests for a phone on that flow come to this edge, where its
    /// connection is. Replaces the file's `internal_advertise`.
    #[arg(long, value_name = "IP[:PORT]")]
    internal_advertise: Option<String>,
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
    /// New dialogs (INVITE, REGISTER, SUBSCRIBE… without a To tag) allowed
    /// per source address per second; past it the edge answers 503 with
    /// Retry-After (0 = no limit) [default: 0].
    #[arg(long)]
    new_dialogs_per_source: Option<u32>,
    /// With --new-dialogs-per-source: a source that starts twice its
    /// budget in one second has its new dialogs dropped unanswered for
    /// this many seconds (0: never) [default: 10].
    #[arg(long)]
    ban_s: Option<u32>,
    /// A replicated worker's gRPC address (repeat for each): the edge then
    /// routes by the cluster's shard map, watched from the first that
    /// answers, instead of hashing over probed backends (probes are off).
    /// `IP:PORT` or `HOST:PORT`; the workers' SIP addresses come with the
    /// map (names looked up again every few seconds), so `--backend` is
    /// not needed then.
    /// Replaces the file's `cluster`.
    #[arg(long = "cluster", value_name = "GRPC_ADDR", value_parser = grpc_addr)]
    cluster: Vec<String>,
    /// Mutual TLS to the workers' gRPC: a directory with the cluster CA
    /// (`ca.crt`) and the edges' certificate and key (`tls.crt`,
    /// `tls.key`, naming `edge.handover`), as a cert-manager Secret holds
    /// them. Replaces the file's `cluster_tls`.
    #[arg(long, value_name = "DIR")]
    cluster_tls: Option<std::path::PathBuf>,
    /// Seconds to keep serving after SIGTERM with /readyz failing, so the
    /// load balancer stops sending here first (0: stop at once)
    /// [default: 5].
    #[arg(long)]
    drain_s: Option<u64>,
    /// Also take SIP over TCP on this address (often the UDP one: SIP
    /// uses the same port for both).
    #[arg(long, value_name = "IP:PORT")]
    listen_tcp: Option<SocketAddr>,
    /// Also take SIP over TLS on this address (5061 by convention; needs
    /// --tls-cert and --tls-key).
    #[arg(long, value_name = "IP:PORT")]
    listen_tls: Option<SocketAddr>,
    /// Also take SIP over WebSocket (RFC 7118, subprotocol `sip`) here.
    #[arg(long, value_name = "IP:PORT")]
    listen_ws: Option<SocketAddr>,
    /// Also take SIP over secure WebSocket here (browsers; the TLS
    /// certificate: needs --tls-cert and --tls-key).
    #[arg(long, value_name = "IP:PORT")]
    listen_wss: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener, leaf first (re-read
    /// within a second when it changes).
    #[arg(long)]
    tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listener.
    #[arg(long)]
    tls_key: Option<PathBuf>,
    /// PEM CA certificates: TLS clients must present a certificate that
    /// chains to one (trunks); without it none is asked for.
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// PEM CA certificates: a route target reached over TLS
    /// (`;transport=tls`) must present a certificate that chains to one
    /// and names it [default: the system's trusted roots].
    #[arg(long)]
    pub tls_upstream_ca: Option<PathBuf>,
    /// Stream (TCP, TLS) connections at most, in all [default: 16384].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Stream connections at most from one IP address [default: 64].
    #[arg(long)]
    max_connections_per_source: Option<usize>,
    /// Seconds a stream connection may stay silent [default: 300].
    #[arg(long)]
    stream_idle_s: Option<u64>,
    /// Milliseconds for a TLS handshake, and for each message once its
    /// first byte came [default: 10000].
    #[arg(long)]
    stream_message_timeout_ms: Option<u64>,
    /// A load balancer (CIDR, repeat) whose TCP and TLS connections start
    /// with a PROXY protocol v2 header naming the client; replaces the
    /// file's `proxy_protocol_from`.
    #[arg(long = "proxy-protocol-from", value_name = "CIDR", value_parser = |s: &str| s.parse::<handover_sip::Cidr>())]
    proxy_protocol_from: Vec<handover_sip::Cidr>,
    /// A network (CIDR, repeat) workers' requests may not be sent to
    /// (their 403), besides the built-in link-local, multicast and
    /// broadcast ranges; replaces the file's `deny_destinations` and the
    /// default, the private ranges (10/8, 172.16/12, 192.168/16,
    /// 100.64/10, fc00::/7). A registered phone's flow is never denied.
    #[arg(long = "deny-destination", value_name = "CIDR", value_parser = |s: &str| s.parse::<handover_sip::Cidr>())]
    deny_destinations: Vec<handover_sip::Cidr>,
    /// An exception to the denied networks (repeat; a PBX's subnet);
    /// replaces the file's `allow_destinations`.
    #[arg(long = "allow-destination", value_name = "CIDR", value_parser = |s: &str| s.parse::<handover_sip::Cidr>())]
    allow_destinations: Vec<handover_sip::Cidr>,
}

/// What `handover edge` runs with, flags over the file.
#[derive(Debug)]
pub struct Settings {
    /// The edge itself.
    pub edge: EdgeConfig,
    /// Its admin port (metrics, probes).
    pub admin: SocketAddr,
    /// Replicated workers' gRPC addresses to watch the map from.
    pub cluster: Vec<String>,
    /// The edge's cluster credentials.
    pub cluster_tls: Option<handover_worker::tls::TlsDir>,
    /// How long SIGTERM keeps forwarding with /readyz failing.
    pub drain_s: u64,
}

/// Builds the edge's settings: file (or defaults), then flags.
pub fn settings(a: &EdgeArgs) -> anyhow::Result<Settings> {
    let file = match &a.config {
        Some(p) => Config::load(p)?,
        None => Config::defaults(),
    };
    let e = &file.edge;
    let parse = |s: &str| s.parse::<SocketAddr>().expect("validated by config");
    let cluster = if a.cluster.is_empty() {
        e.cluster.clone()
    } else {
        a.cluster.clone()
    };
    let mut backends: Vec<SocketAddr> = if a.backends.is_empty() {
        e.backends.iter().map(|b| parse(b)).collect()
    } else {
        a.backends.clone()
    };
    // With a cluster the map fills the slots; one per member it watches.
    // Until then a slot holds an address no datagram comes from.
    while backends.len() < cluster.len() {
        backends.push(SocketAddr::from(([0, 0, 0, 0], backends.len() as u16 + 1)));
    }
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
        interval_ms: if cluster.is_empty() {
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
    let hashing = crate::hashing(a.hash_key, file.cluster.hash_key_value, !cluster.is_empty())?;
    let listen = a.listen.unwrap_or_else(|| parse(&e.listen));
    let internal_advertise = match &a.internal_advertise {
        Some(s) => Some(
            crate::internal_addr(s, &listen.to_string())
                .map_err(|m| anyhow::anyhow!("--internal-advertise: {m}"))?,
        ),
        None => e.internal_advertise.as_deref().map(parse),
    };
    let cfg = EdgeConfig {
        listen,
        advertise: a.advertise.or_else(|| e.advertise.as_deref().map(parse)),
        internal_advertise,
        backends,
        threads: a.threads.unwrap_or(e.threads),
        io,
        recv_buffer_bytes: e.recv_buffer_bytes,
        send_buffer_bytes: e.send_buffer_bytes,
        record_route: e.record_route && !a.no_record_route,
        bad_input_per_source: a.bad_input_per_source.unwrap_or(e.bad_input_per_source),
        new_dialogs_per_source: a.new_dialogs_per_source.unwrap_or(e.new_dialogs_per_source),
        ban_s: a.ban_s.unwrap_or(e.ban_s),
        health,
        hashing,
        limits: file.sip.limits(),
        destinations: {
            let parsed = |file: &[String]| -> Vec<handover_sip::Cidr> {
                file.iter()
                    .map(|c| c.parse().expect("validated by config"))
                    .collect()
            };
            let allow = if a.allow_destinations.is_empty() {
                parsed(&e.allow_destinations)
            } else {
                a.allow_destinations.clone()
            };
            let deny = match (&a.deny_destinations[..], &e.deny_destinations) {
                ([], None) => handover_edge::Destinations::private(),
                ([], Some(f)) => parsed(f),
                (flag, _) => flag.to_vec(),
            };
            handover_edge::Destinations::new(allow, deny)
        },
        streams: {
            let tls_files = match (
                a.tls_cert
                    .clone()
                    .or_else(|| e.tls_cert.clone().map(PathBuf::from)),
                a.tls_key
                    .clone()
                    .or_else(|| e.tls_key.clone().map(PathBuf::from)),
            ) {
                (Some(cert), Some(key)) => Some(handover_edge::TlsFiles {
                    cert,
                    key,
                    client_ca: a
                        .tls_client_ca
                        .clone()
                        .or_else(|| e.tls_client_ca.clone().map(PathBuf::from)),
                }),
                _ => None,
            };
            let tls = a.listen_tls.or_else(|| e.listen_tls.as_deref().map(parse));
            let ws = a.listen_ws.or_else(|| e.listen_ws.as_deref().map(parse));
            let wss = a.listen_wss.or_else(|| e.listen_wss.as_deref().map(parse));
            if (tls.is_some() || wss.is_some()) && tls_files.is_none() {
                anyhow::bail!(
                    "--listen-tls and --listen-wss need --tls-cert and --tls-key (PEM files)"
                );
            }
            let idle_s = a.stream_idle_s.unwrap_or(e.stream_idle_s);
            let message_ms = a
                .stream_message_timeout_ms
                .unwrap_or(e.stream_message_timeout_ms);
            if idle_s == 0 || message_ms < 100 {
                anyhow::bail!(
                    "--stream-idle-s must be at least 1 and --stream-message-timeout-ms at least 100"
                );
            }
            handover_edge::StreamConfig {
                tcp: a.listen_tcp.or_else(|| e.listen_tcp.as_deref().map(parse)),
                tls,
                ws,
                wss,
                tls_files,
                max_connections: a.max_connections.unwrap_or(e.max_connections),
                max_per_source: a
                    .max_connections_per_source
                    .unwrap_or(e.max_connections_per_source),
                idle_timeout: std::time::Duration::from_secs(idle_s),
                message_timeout: std::time::Duration::from_millis(message_ms),
                max_message_bytes: file.sip.max_message_bytes,
                upstream_ca: a
                    .tls_upstream_ca
                    .clone()
                    .or_else(|| e.tls_upstream_ca.clone().map(PathBuf::from)),
                proxy_protocol_from: if a.proxy_protocol_from.is_empty() {
                    e.proxy_protocol_from
                        .iter()
                        .map(|c| c.parse().expect("validated by config"))
                        .collect()
                } else {
                    a.proxy_protocol_from.clone()
                },
                ..Default::default()
            }
        },
    };
    Ok(Settings {
        edge: cfg,
        admin: a.admin.unwrap_or_else(|| parse(&e.admin)),
        cluster_tls: match (&a.cluster_tls, &e.cluster_tls) {
            (Some(d), _) => Some(handover_worker::tls::TlsDir(d.clone())),
            (None, Some(d)) => Some(handover_worker::tls::TlsDir(d.into())),
            (None, None) => None,
        },
        cluster,
        drain_s: a.drain_s.unwrap_or(e.drain_s),
    })
}

fn grpc_addr(s: &str) -> Result<String, String> {
    handover_worker::peers::host_port(s)
        .ok_or_else(|| format!("`{s}` is not an IP:PORT or HOST:PORT address"))
}
