//! The handover edge: the stateless front door (docs/architecture.md, "The edge").
//!
//! It owns the UDP data plane (one `SO_REUSEPORT` socket and one loop per
//! thread, io_uring or epoll + recvmmsg), the routing table of shards to
//! backends, and the OPTIONS health probes that keep that table true. It
//! keeps no per-call state. What to do with each datagram is decided by the
//! sans-IO [`proxy::Proxy`]; the socket loops are `handover-io`'s.
//!
//! Order of use: [`Edge::start`] binds and starts the data plane; run
//! [`Edge::health_loop`] on a tokio runtime; [`Edge::shutdown`] stops.
#![forbid(unsafe_code)]

pub mod framing;
pub mod health;
pub mod metrics;
pub mod proxy;
pub mod routing;
pub mod stream;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use handover_sip::Limits;
use handover_sip::build::Request;
use handover_sip::ids::Hashing;
use handover_sip::{Flow, Transport};
use tokio::time::Instant;

pub use health::{Health, HealthConfig};

pub use handover_io::IoMode;
pub use proxy::{BadInputLimiter, Destinations, Drop, Outcome, Peer, Proxy};
pub use routing::Table;
pub use stream::{StreamConfig, TlsFiles};

/// Everything the edge needs to start.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Address to receive SIP on.
    pub listen: SocketAddr,
    /// Address written into Via and Record-Route (defaults to `listen`).
    pub advertise: Option<SocketAddr>,
    /// This edge's address inside the cluster, when several edges share
    /// `advertise` (see `Proxy::with_internal`).
    pub internal_advertise: Option<SocketAddr>,
    /// The SIP servers behind the edge.
    pub backends: Vec<SocketAddr>,
    /// Data-plane threads (0 = one per CPU).
    pub threads: usize,
    /// I/O mode.
    pub io: IoMode,
    /// `SO_RCVBUF` per socket (bursts overflow small buffers silently).
    pub recv_buffer_bytes: usize,
    /// `SO_SNDBUF` per socket.
    pub send_buffer_bytes: usize,
    /// Record-Route dialog-creating requests so in-dialog requests come
    /// back through the edge.
    pub record_route: bool,
    /// Refused datagrams allowed per source address per second (0 = no limit).
    pub bad_input_per_source: u32,
    /// New dialogs (requests without a To tag) allowed per source address
    /// per second; past it, 503 with Retry-After (0 = no limit).
    pub new_dialogs_per_source: u32,
    /// Seconds a source that starts twice its new-dialog budget in one
    /// second has its new dialogs dropped unanswered (0: never).
    pub ban_s: u32,
    /// Health probes.
    pub health: HealthConfig,
    /// Cluster hash key.
    pub hashing: Hashing,
    /// SIP limits.
    pub limits: Limits,
    /// TCP and TLS listeners and their limits.
    pub streams: StreamConfig,
    /// Where workers' requests may go ([`Destinations`]).
    pub destinations: Destinations,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 5060)),
            advertise: None,
            internal_advertise: None,
            backends: Vec::new(),
            threads: 0,
            io: IoMode::Auto,
            recv_buffer_bytes: 8 << 20,
            send_buffer_bytes: 8 << 20,
            record_route: true,
            bad_input_per_source: 100,
            // Off: `handover load` and trunks start hundreds of calls a
            // second from one address; an edge on the Internet sets it
            // (deploy/k8s/base/handover.toml).
            new_dialogs_per_source: 0,
            ban_s: 10,
            health: HealthConfig::default(),
            hashing: Hashing::default(),
            limits: Limits::default(),
            streams: StreamConfig::default(),
            destinations: Destinations::default(),
        }
    }
}

/// Why the edge could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The listen address is taken.
    #[error("{0} is already in use: stop what listens there or pick another address with --listen")]
    AddressInUse(SocketAddr),
    /// Binding or configuring a socket failed.
    #[error("cannot open UDP socket on {addr}: {source}")]
    Socket {
        /// The address.
        addr: SocketAddr,
        /// The cause.
        source: std::io::Error,
    },
    /// io_uring was required and is refused here.
    #[error("io_uring is not available here ({0}); use --io epoll or --io auto")]
    UringUnavailable(std::io::Error),
    /// No backends.
    #[error("no backends: give at least one --backend HOST:PORT")]
    NoBackends,
    /// A backend listed twice.
    #[error("backend {0} is listed twice")]
    DuplicateBackend(SocketAddr),
    /// Health settings broken.
    #[error("health settings: {0}")]
    Health(&'static str),
    /// The TLS listener's certificate, key or client CA cannot be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A TCP or TLS listen address is taken or cannot be bound.
    #[error("cannot listen on {addr} ({transport}): {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Its transport.
        transport: Transport,
        /// The cause.
        source: std::io::Error,
    },
}

struct Shared {
    proxy: Proxy,
    table: ArcSwap<Table>,
    stop: AtomicBool,
    /// Open stream connections (empty without stream listeners).
    registry: Arc<stream::Registry>,
    /// Opens outbound TCP connections (set once a stream thread runs).
    connector: std::sync::OnceLock<stream::Connector>,
}

/// A running edge.
#[derive(Debug)]
pub struct Edge {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    local: SocketAddr,
    mode: IoMode,
    cfg: EdgeConfig,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Edge {
    /// Binds the sockets, picks the I/O mode and starts the data plane.
    pub fn start(cfg: EdgeConfig) -> Result<Self, StartError> {
        if cfg.backends.is_empty() {
            return Err(StartError::NoBackends);
        }
        for (i, b) in cfg.backends.iter().enumerate() {
            if cfg.backends[..i].contains(b) {
                return Err(StartError::DuplicateBackend(*b));
            }
        }
        cfg.health.validate().map_err(StartError::Health)?;
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.threads
        };
        let mode = match cfg.io {
            IoMode::Epoll => IoMode::Epoll,
            IoMode::Uring => {
                handover_io::uring_available().map_err(StartError::UringUnavailable)?;
                IoMode::Uring
            }
            IoMode::Auto => match handover_io::uring_available() {
                Ok(()) => IoMode::Uring,
                Err(e) => {
                    tracing::warn!(error = %e, "io_uring refused here (old kernel or seccomp); using epoll + recvmmsg");
                    IoMode::Epoll
                }
            },
        };

        // A plain bind first: SO_REUSEPORT would otherwise let us share a
        // port another process of ours already serves, silently.
        let mut listen = cfg.listen;
        if listen.port() != 0 {
            match std::net::UdpSocket::bind(listen) {
                Ok(s) => drop(s),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                    return Err(StartError::AddressInUse(listen));
                }
                Err(source) => {
                    return Err(StartError::Socket {
                        addr: listen,
                        source,
                    });
                }
            }
        }
        let mut sockets = Vec::with_capacity(threads);
        for _ in 0..threads {
            let s =
                handover_io::bind_reuseport(listen, cfg.recv_buffer_bytes, cfg.send_buffer_bytes)
                    .map_err(|source| StartError::Socket {
                    addr: listen,
                    source,
                })?;
            if listen.port() == 0 {
                listen =
                    s.local_addr()
                        .ok()
                        .and_then(|a| a.as_socket())
                        .ok_or(StartError::Socket {
                            addr: listen,
                            source: std::io::Error::other("no local address"),
                        })?;
            }
            sockets.push(s);
        }
        if let Some(s) = sockets.first() {
            tracing::info!(
                recv_buffer = s.recv_buffer_size().unwrap_or(0),
                send_buffer = s.send_buffer_size().unwrap_or(0),
                "socket buffers (the kernel caps them at net.core.rmem_max/wmem_max)"
            );
        }
        let advertised = cfg.advertise.unwrap_or(listen);
        let mut proxy = Proxy::new(advertised, cfg.hashing, cfg.limits, cfg.record_route)
            .with_destinations(cfg.destinations.clone());
        if let Some(i) = cfg.internal_advertise {
            proxy = proxy.with_internal(i);
        }
        let (stream_listeners, stream_addrs) = bind_streams(&cfg.streams, threads)?;
        for (t, a) in &stream_addrs {
            // Advertised as the UDP address is, on the listener's port.
            let adv = match cfg.advertise {
                Some(ad) => SocketAddr::new(ad.ip(), a.port()),
                None => *a,
            };
            proxy = proxy.with_listener(*t, adv);
        }
        let tls = match (cfg.streams.needs_tls(), &cfg.streams.tls_files) {
            (false, _) => None,
            (true, None) => {
                return Err(StartError::Tls(
                    "a TLS or WSS listener needs a certificate and a key".into(),
                ));
            }
            (true, Some(f)) => Some(ArcSwap::from_pointee(
                stream::tls_acceptor(f).map_err(StartError::Tls)?,
            )),
        };
        let upstream =
            ArcSwap::from_pointee(stream::tls_connector(&cfg.streams).map_err(StartError::Tls)?);
        let table = Table::new(
            cfg.backends.clone(),
            vec![true; cfg.backends.len()],
            1,
            &cfg.hashing,
        );
        metrics::backend_gauges(table.backends(), table.up(), table.epoch());
        metrics::mode_gauges(mode.as_str(), threads);
        let registry = Arc::new(stream::Registry::default());
        let shared = Arc::new(Shared {
            proxy,
            table: ArcSwap::from_pointee(table),
            stop: AtomicBool::new(false),
            registry: Arc::clone(&registry),
            connector: std::sync::OnceLock::new(),
        });
        tracing::info!(%listen, %advertised, threads, io = mode.as_str(), backends = cfg.backends.len(), "edge started");
        let mut handles = Vec::with_capacity(threads * 2);
        if !stream_listeners.is_empty() {
            for (t, a) in &stream_addrs {
                tracing::info!(transport = %t, listen = %a, "stream listener");
            }
            stream::register_metrics(&stream_addrs.iter().map(|(t, _)| *t).collect::<Vec<_>>());
            let streams = Arc::new(stream::Streams {
                cfg: cfg.streams.clone(),
                registry,
                tls,
                upstream,
                limiter: parking_lot::Mutex::new(
                    BadInputLimiter::new(cfg.bad_input_per_source, 12)
                        .with_new_dialogs(cfg.new_dialogs_per_source)
                        .with_ban(cfg.ban_s),
                ),
                start: Instant::now(),
                counters: stream::Streams::counters(),
            });
            for (i, ls) in stream_listeners.into_iter().enumerate() {
                let shared = Arc::clone(&shared);
                let streams = Arc::clone(&streams);
                // Messages from streams go to the workers from the edge's
                // own UDP address (a copy of a data-plane socket, used for
                // sending only): their answers, which a peer may send to
                // where the request came from rather than to the Via, come
                // back to the data plane.
                let out = sockets[i % sockets.len()]
                    .try_clone()
                    .map(std::net::UdpSocket::from)
                    .map_err(|source| StartError::Socket {
                        addr: listen,
                        source,
                    })?;
                let h = std::thread::Builder::new()
                    .name(format!("edge-stream-{i}"))
                    .spawn(move || {
                        if let Err(e) = stream::run_thread(shared, streams, ls, out, i == 0) {
                            tracing::error!(error = %e, thread = i, "edge stream thread stopped");
                        }
                    })
                    .map_err(|source| StartError::Socket {
                        addr: listen,
                        source,
                    })?;
                handles.push(h);
            }
        }

        for (i, sock) in sockets.into_iter().enumerate() {
            let shared = Arc::clone(&shared);
            let backends = cfg.backends.len();
            let limit = (
                cfg.bad_input_per_source,
                cfg.new_dialogs_per_source,
                cfg.ban_s,
            );
            let h = std::thread::Builder::new()
                .name(format!("edge-{i}"))
                .spawn(move || {
                    let mut t = Thread::new(shared, backends, limit);
                    let r = handover_io::run(&sock, mode, &mut t);
                    t.local.flush(&t.handles);
                    if let Err(e) = r {
                        tracing::error!(error = %e, thread = i, "edge data-plane thread stopped");
                    }
                })
                .map_err(|source| StartError::Socket {
                    addr: listen,
                    source,
                })?;
            handles.push(h);
        }
        Ok(Self {
            shared,
            threads: handles,
            local: listen,
            mode,
            cfg,
        })
    }

    /// The address the edge receives on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// The address of the edge's listener for transport `t` (UDP: [`Edge::local_addr`]).
    pub fn listener(&self, t: Transport) -> Option<SocketAddr> {
        match t {
            Transport::Udp => Some(self.local),
            t => self.shared.proxy.listener(t),
        }
    }

    /// Stream connections open now.
    pub fn connections(&self) -> usize {
        self.shared.registry.len()
    }

    /// The I/O mode in use.
    pub fn io_mode(&self) -> IoMode {
        self.mode
    }

    /// Ready to take traffic: at least one backend is up.
    pub fn ready(&self) -> bool {
        !self.shared.stop.load(Ordering::Relaxed)
            && self.shared.table.load().up().iter().any(|u| *u)
    }

    /// A closure answering [`Edge::ready`], for the admin server.
    pub fn ready_fn(&self) -> impl Fn() -> bool + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || !shared.stop.load(Ordering::Relaxed) && shared.table.load().up().iter().any(|u| *u)
    }

    /// Routes by a cluster's shard map from now on: `members` are the
    /// cluster's workers' SIP addresses, one per backend slot in a stable
    /// order (a slot keeps its metrics label while its address changes, as
    /// a restarted pod's does); `owners[shard]` indexes `members`, `None`
    /// for nobody. A worker that joined the cluster gets a new slot. Leave
    /// health probing off when the map decides.
    pub fn set_members(&self, members: &[SocketAddr], owners: &[Option<usize>], epoch: u64) {
        let slots = self.cfg.backends.len().max(members.len());
        // Unused slots hold an address no datagram comes from.
        let unused = SocketAddr::from(([0, 0, 0, 0], 0));
        let backends: Vec<SocketAddr> = (0..slots)
            .map(|i| members.get(i).copied().unwrap_or(unused))
            .collect();
        let idx: Vec<Option<usize>> = owners.iter().map(|o| o.filter(|&i| i < slots)).collect();
        let t = Table::from_owners(backends, &idx, epoch);
        metrics::backend_gauges(t.backends(), t.up(), epoch);
        self.shared.table.store(Arc::new(t));
    }

    /// Probes every backend with OPTIONS and swaps the routing table when
    /// one goes down or comes back. Returns when the edge stops, or at once
    /// when probing is off (`interval_ms = 0`).
    pub async fn health_loop(&self) -> std::io::Result<()> {
        let hc = self.cfg.health;
        if hc.interval_ms == 0 {
            return Ok(());
        }
        let bind_ip = match self.local.ip() {
            IpAddr::V4(a) if a.is_unspecified() => IpAddr::from([127, 0, 0, 1]),
            ip => ip,
        };
        let sock = tokio::net::UdpSocket::bind(SocketAddr::new(bind_ip, 0)).await?;
        let me = sock.local_addr()?;
        let backends = self.cfg.backends.clone();
        let mut health = Health::new(hc, backends.len());
        let mut epoch = 1u64;
        let mut round = 0u64;
        let mut buf = vec![0u8; 65_536];
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(hc.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.shared.stop.load(Ordering::Relaxed) {
            tick.tick().await;
            round += 1;
            for (i, b) in backends.iter().enumerate() {
                let msg = probe(me, *b, i, round);
                if let Err(e) = sock.send_to(&msg, b).await {
                    tracing::debug!(backend = %b, error = %e, "probe not sent");
                }
            }
            let mut answers: Vec<Option<u16>> = vec![None; backends.len()];
            let deadline = Instant::now() + std::time::Duration::from_millis(hc.timeout_ms);
            while answers.iter().any(Option::is_none) {
                let Ok(r) = tokio::time::timeout_at(deadline, sock.recv_from(&mut buf)).await
                else {
                    break;
                };
                let Ok((n, _)) = r else { continue };
                if let Some((i, status)) = probe_answer(&buf[..n], round)
                    && i < answers.len()
                    && status >= 200
                {
                    answers[i] = Some(status);
                }
            }
            let mut changed = false;
            for (i, a) in answers.iter().enumerate() {
                if let Some(up) = health.record(i, *a) {
                    changed = true;
                    if up {
                        tracing::warn!(backend = %backends[i], "backend is up again");
                    } else {
                        tracing::warn!(backend = %backends[i], "backend is down: no answer to {} probes", hc.down_after);
                    }
                }
            }
            if changed {
                epoch += 1;
                let t = Table::new(
                    backends.clone(),
                    health.up().to_vec(),
                    epoch,
                    &self.cfg.hashing,
                );
                metrics::backend_gauges(t.backends(), t.up(), epoch);
                self.shared.table.store(Arc::new(t));
            }
        }
        Ok(())
    }

    /// Stops the data plane and waits for its threads.
    pub fn shutdown(mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }

    /// Asks the data plane to stop without waiting.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

/// The stream listeners: for each stream thread, one socket of each
/// transport's `SO_REUSEPORT` group; and each transport's bound address.
#[expect(
    clippy::type_complexity,
    reason = "the bound listeners per thread, each (transport, listener): named once, here"
)]
fn bind_streams(
    cfg: &StreamConfig,
    threads: usize,
) -> Result<
    (
        Vec<Vec<(Transport, std::net::TcpListener)>>,
        Vec<(Transport, SocketAddr)>,
    ),
    StartError,
> {
    let mut per_thread: Vec<Vec<(Transport, std::net::TcpListener)>> = Vec::new();
    let mut addrs = Vec::new();
    let wanted = [
        (Transport::Tcp, cfg.tcp),
        (Transport::Tls, cfg.tls),
        (Transport::Ws, cfg.ws),
        (Transport::Wss, cfg.wss),
    ];
    if !cfg.any() {
        return Ok((per_thread, addrs));
    }
    match handover_io::raise_fd_limit() {
        Ok(n) => tracing::info!(open_files = n, "open-file limit for stream connections"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    per_thread.resize_with(threads, Vec::new);
    for (t, addr) in wanted {
        let Some(mut addr) = addr else { continue };
        let asked = addr;
        let err = move |source| StartError::Listen {
            addr: asked,
            transport: t,
            source,
        };
        if addr.port() != 0 {
            // A plain bind first, as for UDP: a taken port is an error,
            // not a silent share of another process's group.
            drop(std::net::TcpListener::bind(addr).map_err(err)?);
        }
        for slot in per_thread.iter_mut() {
            let s = handover_io::bind_reuseport_tcp(addr, 1024).map_err(err)?;
            if addr.port() == 0 {
                addr = s
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .ok_or_else(|| err(std::io::Error::other("no local address")))?;
            }
            slot.push((t, s.into()));
        }
        addrs.push((t, addr));
    }
    Ok((per_thread, addrs))
}

/// The OPTIONS probe for backend `i` in round `round`. The branch names
/// both, so a late answer from an earlier round is not counted.
fn probe(me: SocketAddr, backend: SocketAddr, i: usize, round: u64) -> Vec<u8> {
    let via = format!("SIP/2.0/UDP {me};branch=z9hG4bK-probe-{i}-{round}");
    let uri = format!("sip:{backend}");
    let to = format!("<{uri}>");
    let cid = format!("probe-{i}-{round}-{}", me.port());
    Request {
        method: "OPTIONS",
        uri: uri.as_bytes(),
        via: &[via.as_bytes()],
        from: b"<sip:edge@handover.invalid>",
        from_tag: b"probe",
        to: to.as_bytes(),
        call_id: cid.as_bytes(),
        cseq: 1,
        max_forwards: 1,
        ..Request::default()
    }
    .to_vec()
}

/// (backend index, status) of an answer to a probe of `round`.
fn probe_answer(b: &[u8], round: u64) -> Option<(usize, u16)> {
    let m = handover_sip::scan(b).ok()?;
    let status = m.status()?;
    let branch = core::str::from_utf8(m.top_via().branch()?).ok()?;
    let rest = branch.strip_prefix("z9hG4bK-probe-")?;
    let (i, r) = rest.split_once('-')?;
    (r.parse::<u64>().ok()? == round).then_some((i.parse().ok()?, status))
}

/// One data-plane thread's state: the [`handover_io::Handler`] its loop calls.
struct Thread {
    shared: Arc<Shared>,
    limiter: BadInputLimiter,
    handles: metrics::Handles,
    local: metrics::Local,
    start: Instant,
    now_sec: u32,
    last_flush: Instant,
    /// Messages waiting for [`handover_io::Handler::poll_transmit`]: the
    /// rest of a worker's bundle, and datagrams that came after it in the
    /// same round (kept behind it, in order). Each is (sender, start, end)
    /// in `queued_bytes`; both keep their capacity, so a bundle allocates
    /// nothing once they have grown.
    queued: std::collections::VecDeque<(SocketAddr, usize, usize)>,
    queued_bytes: Vec<u8>,
}

/// At most this many bytes wait behind bundles (a round's worth many times
/// over); past it a message is dropped, counted (`queue_full`).
const QUEUED_BYTES_MAX: usize = 4 << 20;

impl Thread {
    fn new(
        shared: Arc<Shared>,
        backends: usize,
        (bad, new_dialogs, ban_s): (u32, u32, u32),
    ) -> Self {
        let now = Instant::now();
        Self {
            shared,
            limiter: BadInputLimiter::new(bad, 12)
                .with_new_dialogs(new_dialogs)
                .with_ban(ban_s),
            handles: metrics::Handles::new(backends),
            local: metrics::Local {
                forwards: vec![0; backends],
                ..Default::default()
            },
            start: now,
            now_sec: 0,
            last_flush: now,
            queued: std::collections::VecDeque::new(),
            queued_bytes: Vec::new(),
        }
    }

    /// Queues `data` from `from` to be handled by `poll_transmit`, a
    /// bundle as its messages.
    fn enqueue(&mut self, from: SocketAddr, data: &[u8]) {
        if handover_sip::is_bundle(data) {
            if let Some(msgs) = self.bundle(from, data) {
                for m in msgs {
                    self.enqueue_one(from, m);
                }
            }
        } else {
            self.enqueue_one(from, data);
        }
    }

    fn enqueue_one(&mut self, from: SocketAddr, data: &[u8]) {
        if self.queued_bytes.len() + data.len() > QUEUED_BYTES_MAX {
            self.local.drop_reason("queue_full");
            return;
        }
        let start = self.queued_bytes.len();
        self.queued_bytes.extend_from_slice(data);
        self.queued
            .push_back((from, start, self.queued_bytes.len()));
    }

    /// The messages of a bundle from a worker; `None` (the drop counted)
    /// for one from anyone else or malformed.
    fn bundle<'a>(
        &mut self,
        from: SocketAddr,
        data: &'a [u8],
    ) -> Option<handover_sip::BundleMessages<'a>> {
        if self.shared.table.load().backend_index(from).is_none() {
            self.local.drop_reason("bundle_not_from_worker");
            return None;
        }
        let Some(msgs) = handover_sip::bundle_messages(data) else {
            self.local.drop_reason("bundle_malformed");
            return None;
        };
        self.local.bundles += 1;
        Some(msgs)
    }
}

impl handover_io::Handler for Thread {
    fn datagram(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        if !self.queued.is_empty() {
            // Behind a bundle's messages still waiting: in order.
            self.enqueue(from, data);
            return None;
        }
        if handover_sip::is_bundle(data) {
            let mut msgs = self.bundle(from, data)?;
            let first = msgs.next()?;
            for m in msgs {
                self.enqueue_one(from, m);
            }
            return self.message(from, first, out);
        }
        self.message(from, data, out)
    }

    fn poll_transmit(&mut self, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        while let Some((from, start, end)) = self.queued.pop_front() {
            let bytes = std::mem::take(&mut self.queued_bytes);
            let r = self.message(from, &bytes[start..end], out);
            self.queued_bytes = bytes;
            if self.queued.is_empty() {
                self.queued_bytes.clear();
            }
            if r.is_some() {
                return r;
            }
        }
        None
    }

    fn rx_dropped(&mut self, total: u32) {
        self.local.rx_total = Some(total);
    }

    fn tick(&mut self) -> bool {
        let now = Instant::now();
        self.now_sec = (now - self.start).as_secs() as u32;
        if self.local.since_flush >= 4096
            || now - self.last_flush >= std::time::Duration::from_millis(100)
        {
            self.local.flush(&self.handles);
            self.last_flush = now;
        }
        !self.shared.stop.load(Ordering::Relaxed)
    }

    fn send_failed(&mut self) {
        self.local.send_errors += 1;
    }

    fn enobufs(&mut self) {
        self.local.enobufs += 1;
    }

    fn truncated(&mut self) {
        self.local.drop_reason("truncated_datagram");
    }
}

impl Thread {
    /// One SIP message (a datagram, or one of a bundle's) from `from`.
    fn message(
        &mut self,
        from: SocketAddr,
        data: &[u8],
        out: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        let table = self.shared.table.load();
        let from_backend = table.backend_index(from).is_some();
        self.local.received[usize::from(from_backend)] += 1;
        self.local.since_flush += 1;
        let o = self.shared.proxy.handle(
            &table,
            &mut self.limiter,
            self.now_sec,
            Flow::udp(from),
            data,
            out,
        );
        self.local.keys_refused += std::mem::take(&mut self.limiter.keys_refused);
        match o {
            Outcome::Forward {
                to,
                len,
                request,
                peer,
            } if to.transport.is_stream() => {
                if self.shared.registry.send(to, &out[..len]) {
                    self.local.sent[0][usize::from(!request)] += 1;
                    return None;
                }
                // A route target on TCP, TLS or WebSocket: open a connection
                // (the request waits in its queue meanwhile).
                if peer == Peer::Connect
                    && let Some(c) = self.shared.connector.get()
                {
                    c.connect(to, &out[..len]);
                    self.local.sent[0][usize::from(!request)] += 1;
                    return None;
                }
                // RFC 5626 §5.3: a request for a flow that is gone gets
                // 430, so the worker drops the binding and tries the next.
                self.local.drop_reason(Drop::FlowGone.label());
                if request && let Some(len) = self.shared.proxy.flow_failed(data, out) {
                    self.local.reply(430);
                    self.local.sent[1][2] += 1;
                    return Some((from, len));
                }
                None
            }
            Outcome::Forward {
                to,
                len,
                peer,
                request,
            } => {
                let p = match peer {
                    Peer::Client | Peer::Connect => 0,
                    Peer::Backend(i) => {
                        if request {
                            // A worker that joined since this thread
                            // started has a slot beyond its counters.
                            if i >= self.local.forwards.len() {
                                self.local.forwards.resize(i + 1, 0);
                                self.handles.grow(i + 1);
                            }
                            self.local.forwards[i] += 1;
                        }
                        1
                    }
                };
                self.local.sent[p][usize::from(!request)] += 1;
                Some((to.addr, len))
            }
            Outcome::Reply { to, len, status } => {
                self.local.reply(status);
                self.local.sent[usize::from(from_backend)][2] += 1;
                Some((to.addr, len))
            }
            Outcome::Pong { to } => {
                self.local.pongs += 1;
                Some((to.addr, 2))
            }
            Outcome::Drop(d) => {
                self.local.drop_reason(d.label());
                None
            }
        }
    }
}
