//! SIP over TCP and TLS at the edge: listeners, connections, and the
//! registry of flows that lets a worker reach a phone on the connection
//! the phone opened (docs/architecture.md, "Streams").
//!
//! Each stream thread runs a current-thread tokio runtime with its own
//! `SO_REUSEPORT` listener per transport, so the kernel spreads
//! connections over threads as it spreads UDP flows. A connection is a
//! reader task (framing, [`crate::Proxy::handle`], limits and deadlines) and a
//! writer task fed by a bounded queue; the queue's sender is in the
//! [`Registry`] under the connection's [`Flow`], where the UDP threads find
//! it for a worker's message to that flow. The edge stays stateless in
//! the sense that matters: a connection is the phone's, and dies with the
//! edge; nothing about a call is kept here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use handover_sip::{Flow, Transport};
use metrics::{counter, gauge};
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls;

mod outbound;
mod registry;
mod resend;
mod ws;

pub(crate) use outbound::Connector;
pub use outbound::tls_connector;
use registry::Refusal;
pub use registry::Registry;

use resend::{Pending, retransmit, track};
use ws::{serve_ws, ws_handshake};

use crate::Shared;
use crate::framing::{Framer, Item};
use crate::proxy::{BadInputLimiter, Outcome};

/// Connections currently open, by `transport`.
pub const CONNECTIONS: &str = "handover_edge_connections";
/// Connections accepted, by `transport`.
pub const OPENED: &str = "handover_edge_connections_opened_total";
/// Connections closed, by `transport` and `reason` (`peer_closed`, `idle`,
/// `message_timeout`, `too_large`, `bad_content_length`, `error`,
/// `shutdown`).
pub const CLOSED: &str = "handover_edge_connections_closed_total";
/// Connections refused at once, by `transport` and `reason`
/// (`total_limit`, `source_limit`).
pub const REFUSED: &str = "handover_edge_connections_refused_total";
/// PROXY protocol headers refused (from a trusted load balancer: missing,
/// malformed, or late), by `transport`.
pub const PROXY_REFUSED: &str = "handover_edge_proxy_protocol_refused_total";
/// TLS handshakes that failed or did not finish in time.
pub const TLS_FAILURES: &str = "handover_edge_tls_handshake_failures_total";
/// SIP messages read from streams, by `transport`.
pub const MESSAGES_IN: &str = "handover_edge_stream_messages_total";
/// Messages for a connection whose send queue was full (a peer that does
/// not read), dropped.
pub const QUEUE_FULL: &str = "handover_edge_stream_queue_full_total";
/// Requests from streams sent to a worker again, unanswered (the UDP hop's
/// retransmissions, which a phone on a stream does not make), by `transport`.
pub const RESENT: &str = "handover_edge_stream_retransmissions_total";
/// Connections the edge opened to route targets, by `transport`.
pub const OUTBOUND: &str = "handover_edge_connections_outbound_total";
/// Route targets the edge could not connect to in time, by `transport`.
pub const CONNECT_FAILURES: &str = "handover_edge_connect_failures_total";
/// TLS certificate reloads, by `result` (`ok`, `error`).
pub const TLS_RELOADS: &str = "handover_edge_tls_reloads_total";

/// Certificate and key of the TLS listener, and the CA that client
/// certificates must chain to (none: clients are not asked for one).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM CA certificates a client's certificate must chain to; with it
    /// every TLS client must present one (trunks).
    pub client_ca: Option<PathBuf>,
}

/// The stream listeners and their limits.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// TCP listener.
    pub tcp: Option<SocketAddr>,
    /// TLS listener.
    pub tls: Option<SocketAddr>,
    /// WebSocket listener (RFC 7118, the `sip` subprotocol).
    pub ws: Option<SocketAddr>,
    /// WebSocket over TLS listener (the TLS listener's certificate).
    pub wss: Option<SocketAddr>,
    /// The TLS listener's files (required with `tls`).
    pub tls_files: Option<TlsFiles>,
    /// Connections at most, over every stream listener.
    pub max_connections: usize,
    /// Connections at most from one IP address.
    pub max_per_source: usize,
    /// A connection with nothing to read for this long is closed.
    pub idle_timeout: Duration,
    /// The TLS handshake, and every message once its first byte came,
    /// must be done within this (no slowloris).
    pub message_timeout: Duration,
    /// Largest message on a stream, in bytes.
    pub max_message_bytes: usize,
    /// Messages queued for one connection before more are dropped.
    pub queue: usize,
    /// PEM CA certificates a TLS route target's certificate must chain
    /// to; None: the system's trusted roots (`rustls-native-certs`).
    pub upstream_ca: Option<PathBuf>,
    /// Load balancers whose connections start with a PROXY protocol v2
    /// header naming the client (its address then stands for the
    /// connection's in Via, flows and limits). Connections from anywhere
    /// else are read as SIP from their first byte.
    pub proxy_protocol_from: Vec<handover_sip::Cidr>,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            tcp: None,
            tls: None,
            ws: None,
            wss: None,
            tls_files: None,
            max_connections: 16_384,
            max_per_source: 64,
            // Phones refresh registrations and send CRLF pings well inside
            // this (RFC 5626 suggests 95-120 s keep-alives).
            idle_timeout: Duration::from_secs(300),
            message_timeout: Duration::from_secs(10),
            max_message_bytes: 65_535,
            queue: 256,
            upstream_ca: None,
            proxy_protocol_from: Vec::new(),
        }
    }
}

impl StreamConfig {
    /// True when the edge listens on any stream transport.
    pub fn any(&self) -> bool {
        self.tcp.is_some() || self.tls.is_some() || self.ws.is_some() || self.wss.is_some()
    }

    /// True when a listener needs the certificate (TLS, WSS).
    pub fn needs_tls(&self) -> bool {
        self.tls.is_some() || self.wss.is_some()
    }
}

/// Makes every stream series exist from the start (a dashboard's query
/// of a counter nobody has touched yet finds nothing).
pub(crate) fn register_metrics(transports: &[Transport]) {
    for t in transports {
        let t = t.name();
        gauge!(CONNECTIONS, "transport" => t).set(0.0);
        counter!(OPENED, "transport" => t).increment(0);
        counter!(OUTBOUND, "transport" => t).increment(0);
        counter!(CONNECT_FAILURES, "transport" => t).increment(0);
        for reason in [
            "peer_closed",
            "idle",
            "message_timeout",
            "too_large",
            "ws_no_sip",
        ] {
            counter!(CLOSED, "transport" => t, "reason" => reason).increment(0);
        }
        for reason in ["total_limit", "source_limit"] {
            counter!(REFUSED, "transport" => t, "reason" => reason).increment(0);
        }
    }
    counter!(TLS_FAILURES).increment(0);
    counter!(QUEUE_FULL).increment(0);
    for t in transports {
        counter!(PROXY_REFUSED, "transport" => t.name()).increment(0);
    }
}

/// Reads the TLS listener's files into an acceptor.
pub fn tls_acceptor(files: &TlsFiles) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
        .and_then(|i| i.collect::<Result<_, _>>())
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate", files.cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(&files.key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?;
    let builder = match &files.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("{}: {e}", ca.display()))?;
            builder.with_client_cert_verifier(v)
        }
    };
    let cfg = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("{}: {e}", files.cert.display()))?;
    Ok(TlsAcceptor::from(Arc::new(cfg)))
}

/// What every stream thread shares.
pub(crate) struct Streams {
    pub(crate) cfg: StreamConfig,
    pub(crate) registry: Arc<Registry>,
    pub(crate) tls: Option<ArcSwap<TlsAcceptor>>,
    /// The client of TLS connections to route targets (reloaded with the
    /// listener's certificate, which it presents).
    pub(crate) upstream: ArcSwap<tokio_rustls::TlsConnector>,
    pub(crate) limiter: Mutex<BadInputLimiter>,
    pub(crate) start: Instant,
    /// `MESSAGES_IN` and `RESENT` by transport (`Transport::index`),
    /// registered once: no metric is looked up by name per message.
    pub(crate) counters: [(metrics::Counter, metrics::Counter); 5],
}

impl Streams {
    /// The per-transport counters, registered once.
    pub(crate) fn counters() -> [(metrics::Counter, metrics::Counter); 5] {
        Transport::ALL.map(|t| {
            (
                counter!(MESSAGES_IN, "transport" => t.name()),
                counter!(RESENT, "transport" => t.name()),
            )
        })
    }

    /// What the proxy does with `msg` from `flow` (a message read, or a
    /// request sent again), written into `out`.
    pub(crate) fn handle(
        &self,
        shared: &Shared,
        flow: Flow,
        msg: &[u8],
        out: &mut [u8],
    ) -> Outcome {
        let table = shared.table.load();
        let now_sec = self.start.elapsed().as_secs() as u32;
        let mut limiter = self.limiter.lock();
        let o = shared
            .proxy
            .handle(&table, &mut limiter, now_sec, flow, msg, out);
        if limiter.keys_refused > 0 {
            counter!(crate::metrics::KEYS_REFUSED)
                .increment(std::mem::take(&mut limiter.keys_refused));
        }
        o
    }
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams").finish_non_exhaustive()
    }
}

/// The stream side's sender on the edge's own UDP address (a copy of a
/// data-plane socket). Not registered with the runtime: a
/// `tokio::net::UdpSocket` registers for reading too, and then every
/// datagram the data plane reads woke this thread as well (a fifth more
/// CPU per call through `handover up` with no stream open).
pub(crate) struct UdpOut(std::net::UdpSocket);

impl UdpOut {
    fn new(s: std::net::UdpSocket) -> std::io::Result<Self> {
        s.set_nonblocking(true)?;
        Ok(Self(s))
    }

    /// Sends one datagram. While the socket's buffer is full (rare: it is
    /// megabytes) it retries every millisecond, for at most 100 ms.
    pub(crate) async fn send_to(&self, buf: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        for _ in 0..100 {
            match self.0.send_to(buf, to) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                r => return r,
            }
        }
        Err(std::io::ErrorKind::WouldBlock.into())
    }
}

/// One stream thread: its listeners (already bound, non-blocking), run
/// until the edge stops.
pub(crate) fn run_thread(
    shared: Arc<Shared>,
    streams: Arc<Streams>,
    listeners: Vec<(Transport, std::net::TcpListener)>,
    udp: std::net::UdpSocket,
    reload: bool,
) -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let udp = Arc::new(UdpOut::new(udp)?);
        if reload {
            // This thread's runtime opens the edge's outbound connections.
            let _ = shared.connector.set(Connector {
                handle: tokio::runtime::Handle::current(),
                shared: Arc::downgrade(&shared),
                streams: Arc::clone(&streams),
                udp: Arc::clone(&udp),
            });
        }
        for (t, l) in listeners {
            let l = tokio::net::TcpListener::from_std(l)?;
            tokio::spawn(accept_loop(
                t,
                l,
                Arc::clone(&shared),
                Arc::clone(&streams),
                Arc::clone(&udp),
            ));
        }
        if reload && let Some(files) = streams.cfg.tls_files.clone() {
            tokio::spawn(reload_loop(files, Arc::clone(&streams)));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        while !shared.stop.load(Ordering::Relaxed) {
            tick.tick().await;
        }
        Ok(())
    })
}

/// Re-reads the certificate and key when either file changes (a
/// Kubernetes Secret is rotated by replacing them); a bad new pair is
/// logged and the old one kept.
async fn reload_loop(files: TlsFiles, streams: Arc<Streams>) {
    let stamp = |f: &TlsFiles| -> Vec<Option<SystemTime>> {
        [Some(&f.cert), Some(&f.key), f.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    };
    let mut last = stamp(&files);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = stamp(&files);
        if now == last {
            continue;
        }
        last = now;
        // The connector presents the same certificate to trunks.
        match tls_acceptor(&files).and_then(|a| Ok((a, tls_connector(&streams.cfg)?))) {
            Ok((a, c)) => {
                if let Some(t) = &streams.tls {
                    t.store(Arc::new(a));
                }
                streams.upstream.store(Arc::new(c));
                counter!(TLS_RELOADS, "result" => "ok").increment(1);
                tracing::info!(cert = %files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                counter!(TLS_RELOADS, "result" => "error").increment(1);
                tracing::warn!(error = %e, "TLS certificate not reloaded; keeping the old one");
            }
        }
    }
}

async fn accept_loop(
    t: Transport,
    l: tokio::net::TcpListener,
    shared: Arc<Shared>,
    streams: Arc<Streams>,
    udp: Arc<UdpOut>,
) {
    loop {
        let (sock, peer) = match l.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of descriptors, most often: wait rather than spin.
                tracing::warn!(error = %e, transport = %t, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        let behind_lb = streams
            .cfg
            .proxy_protocol_from
            .iter()
            .any(|c| c.contains(peer.ip()));
        if !behind_lb {
            // The common case, decided without a task: over a limit, the
            // connection is closed before anything is spent on it.
            if let Some((tx, rx)) = admit(&streams, Flow::new(t, peer)) {
                let (shared, streams, udp) =
                    (Arc::clone(&shared), Arc::clone(&streams), Arc::clone(&udp));
                tokio::spawn(async move {
                    connection(sock, Flow::new(t, peer), tx, rx, &shared, &streams, &udp).await;
                });
            }
            continue;
        }
        let (shared, streams, udp) = (Arc::clone(&shared), Arc::clone(&streams), Arc::clone(&udp));
        tokio::spawn(async move {
            let mut sock = sock;
            let client =
                match tokio::time::timeout(streams.cfg.message_timeout, proxy_header(&mut sock))
                    .await
                {
                    Ok(Some(Some(a))) => a,
                    // LOCAL (the balancer's own health check): its address.
                    Ok(Some(None)) => peer,
                    _ => {
                        counter!(PROXY_REFUSED, "transport" => t.name()).increment(1);
                        return;
                    }
                };
            let flow = Flow::new(t, client);
            if let Some((tx, rx)) = admit(&streams, flow) {
                connection(sock, flow, tx, rx, &shared, &streams, &udp).await;
            }
        });
    }
}

/// A connection's place in the registry, or `None` (counted) when a
/// limit refuses it.
#[expect(
    clippy::type_complexity,
    reason = "the admitted connection's queue ends and its first bytes, named once, here"
)]
fn admit(
    streams: &Streams,
    flow: Flow,
) -> Option<(mpsc::Sender<Box<[u8]>>, mpsc::Receiver<Box<[u8]>>)> {
    let (tx, rx) = mpsc::channel(streams.cfg.queue);
    match streams.registry.admit(flow, tx.clone(), &streams.cfg) {
        Ok(()) => Some((tx, rx)),
        Err(r) => {
            let reason = match r {
                Refusal::Total => "total_limit",
                Refusal::Source => "source_limit",
            };
            counter!(REFUSED, "transport" => flow.transport.name(), "reason" => reason)
                .increment(1);
            None
        }
    }
}

/// Reads the PROXY protocol v2 header a trusted load balancer sends first:
/// `Some(Some(client))` for a proxied connection, `Some(None)` for the
/// balancer's own (LOCAL), `None` for anything else. Reads exactly the
/// header, so what follows (a TLS handshake, SIP) is left in the socket.
async fn proxy_header(sock: &mut tokio::net::TcpStream) -> Option<Option<SocketAddr>> {
    let mut buf = vec![0u8; 16];
    sock.read_exact(&mut buf).await.ok()?;
    // Bytes 14-15: the length of what follows (addresses and TLVs); a
    // balancer's TLVs are small, 1 KiB is plenty.
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len > 1024 {
        return None;
    }
    buf.resize(16 + len, 0);
    sock.read_exact(&mut buf[16..]).await.ok()?;
    let h = ppp::v2::Header::try_from(&buf[..]).ok()?;
    match (h.command, h.addresses) {
        (ppp::v2::Command::Local, _) => Some(None),
        (_, ppp::v2::Addresses::IPv4(a)) => Some(Some(SocketAddr::new(
            IpAddr::V4(a.source_address),
            a.source_port,
        ))),
        (_, ppp::v2::Addresses::IPv6(a)) => Some(Some(SocketAddr::new(
            IpAddr::V6(a.source_address),
            a.source_port,
        ))),
        _ => None,
    }
}

/// One admitted connection, from its TLS handshake (on TLS) to its close.
async fn connection(
    sock: tokio::net::TcpStream,
    flow: Flow,
    tx: mpsc::Sender<Box<[u8]>>,
    rx: mpsc::Receiver<Box<[u8]>>,
    shared: &Shared,
    streams: &Streams,
    udp: &UdpOut,
) {
    let t = flow.transport;
    counter!(OPENED, "transport" => t.name()).increment(1);
    gauge!(CONNECTIONS, "transport" => t.name()).increment(1.0);
    let deadline = streams.cfg.message_timeout;
    let tls = |sock| async move {
        let a = streams.tls.as_ref().map(|a| a.load_full())?;
        match tokio::time::timeout(deadline, a.accept(sock)).await {
            Ok(Ok(s)) => Some(s),
            _ => {
                counter!(TLS_FAILURES).increment(1);
                None
            }
        }
    };
    let reason = match t {
        Transport::Tls => match tls(sock).await {
            Some(s) => serve(s, flow, tx, rx, shared, streams, udp, true).await,
            None => "tls_handshake",
        },
        Transport::Wss => match tls(sock).await {
            Some(s) => match ws_handshake(s, streams).await {
                Ok(ws) => serve_ws(ws, flow, tx, rx, shared, streams, udp).await,
                Err(r) => r,
            },
            None => "tls_handshake",
        },
        Transport::Ws => match ws_handshake(sock, streams).await {
            Ok(ws) => serve_ws(ws, flow, tx, rx, shared, streams, udp).await,
            Err(r) => r,
        },
        _ => serve(sock, flow, tx, rx, shared, streams, udp, true).await,
    };
    streams.registry.remove(flow);
    counter!(CLOSED, "transport" => t.name(), "reason" => reason).increment(1);
    gauge!(CONNECTIONS, "transport" => t.name()).decrement(1.0);
}

/// One SIP message read from a connection: through the proxy, tracked for
/// retransmission when it went to a worker, delivered.
#[expect(
    clippy::too_many_arguments,
    reason = "one connection's state, passed down as the reader holds it"
)]
async fn on_message(
    msg: &[u8],
    flow: Flow,
    out: &mut [u8],
    tx: &mpsc::Sender<Box<[u8]>>,
    shared: &Shared,
    streams: &Streams,
    udp: &UdpOut,
    pending: &Mutex<Pending>,
) {
    streams.counters[flow.transport.index()].0.increment(1);
    let o = streams.handle(shared, flow, msg, out);
    if let Outcome::Forward {
        peer: crate::Peer::Backend(_),
        request: true,
        ..
    } = o
    {
        track(pending, msg);
    }
    deliver(o, out, tx, &streams.registry, udp).await;
}

/// Serves one connection until it closes; returns why.
#[expect(
    clippy::too_many_arguments,
    reason = "one connection's state, passed down as the reader holds it"
)]
async fn serve<S>(
    stream: S,
    flow: Flow,
    tx: mpsc::Sender<Box<[u8]>>,
    mut rx: mpsc::Receiver<Box<[u8]>>,
    shared: &Shared,
    streams: &Streams,
    udp: &UdpOut,
    inbound: bool,
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut r, mut w) = tokio::io::split(stream);
    let pending = Arc::new(Mutex::new(Pending::default()));
    let answered = Arc::clone(&pending);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            answered.lock().sent(&b);
            if w.write_all(&b).await.is_err() {
                break;
            }
        }
        let _ = w.shutdown().await;
    });
    let reason = read_loop(&mut r, flow, &tx, shared, streams, udp, &pending, inbound).await;
    // Let what was queued (a 400, the last answer) go out, then close.
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    reason
}

#[expect(
    clippy::too_many_arguments,
    reason = "one connection's state, passed down as the reader holds it"
)]
async fn read_loop<R: AsyncRead + Unpin>(
    r: &mut R,
    flow: Flow,
    tx: &mpsc::Sender<Box<[u8]>>,
    shared: &Shared,
    streams: &Streams,
    udp: &UdpOut,
    pending: &Mutex<Pending>,
    inbound: bool,
) -> &'static str {
    let cfg = &streams.cfg;
    let mut framer = Framer::new(cfg.max_message_bytes);
    // Small buffers, the output one made at the first message: an idle
    // connection (most of a phone fleet's) costs little memory.
    let mut buf = vec![0u8; 4096];
    let mut out = Vec::new();
    // The first message is due within the message timeout (a connection
    // that never says anything is a slowloris too), later ones once they
    // have started.
    let mut message_due = inbound.then(|| Instant::now() + cfg.message_timeout);
    let mut last_read = Instant::now();
    loop {
        if shared.stop.load(Ordering::Relaxed) {
            return "shutdown";
        }
        let idle_due = last_read + cfg.idle_timeout;
        let due = message_due.map_or(idle_due, |m| m.min(idle_due));
        // Wake at least every second to notice a stopping edge, and when
        // a relayed request is due again.
        let resend = pending.lock().next_due();
        let now = Instant::now();
        if resend.is_some_and(|t| t <= now) {
            retransmit(now, flow, &mut out, tx, shared, streams, udp, pending).await;
            continue;
        }
        let wake = due
            .min(now + Duration::from_secs(1))
            .min(resend.unwrap_or(due));
        let n = match tokio::time::timeout_at(wake, r.read(&mut buf)).await {
            Err(_) if Instant::now() >= due => {
                return if message_due.is_some() {
                    "message_timeout"
                } else {
                    "idle"
                };
            }
            Err(_) => continue,
            Ok(Ok(0)) => return "peer_closed",
            Ok(Ok(n)) => {
                last_read = Instant::now();
                n
            }
            Ok(Err(_)) => return "error",
        };
        framer.push(&buf[..n]);
        if out.is_empty() {
            out = vec![0u8; cfg.max_message_bytes + 4096];
        }
        loop {
            match framer.next_item() {
                Ok(None) => break,
                Ok(Some(Item::Ping)) => {
                    //= https://www.rfc-editor.org/rfc/rfc5626#section-4.4.1
                    //# the server immediately responds with a single CRLF
                    let _ = tx.try_send(Box::from(&b"\r\n"[..]));
                    counter!(crate::metrics::PONGS).increment(1);
                }
                Ok(Some(Item::Message { len })) => {
                    let msg = &framer.buffered()[..len];
                    on_message(msg, flow, &mut out, tx, shared, streams, udp, pending).await;
                    framer.consume(len);
                }
                Err(e) => return e.label(),
            }
        }
        message_due = if framer.partial() {
            message_due.or(Some(Instant::now() + cfg.message_timeout))
        } else {
            None
        };
    }
}

/// Sends what the proxy decided for a message read from a stream.
pub(super) async fn deliver(
    o: Outcome,
    out: &[u8],
    own: &mpsc::Sender<Box<[u8]>>,
    registry: &Registry,
    udp: &UdpOut,
) {
    match o {
        Outcome::Forward { to, len, .. } => {
            if to.transport.is_stream() {
                if !registry.send(to, &out[..len]) {
                    counter!(crate::metrics::DROPS, "reason" => "flow_gone").increment(1);
                }
            } else if udp.send_to(&out[..len], to.addr).await.is_err() {
                counter!(crate::metrics::SEND_ERRORS).increment(1);
            }
        }
        Outcome::Reply { len, status, .. } => {
            counter!(crate::metrics::REPLIES, "status" => status.to_string()).increment(1);
            let _ = own.try_send(out[..len].into());
        }
        Outcome::Pong { .. } => {
            let _ = own.try_send(Box::from(&b"\r\n"[..]));
        }
        Outcome::Drop(d) => {
            counter!(crate::metrics::DROPS, "reason" => d.label()).increment(1);
        }
    }
}
