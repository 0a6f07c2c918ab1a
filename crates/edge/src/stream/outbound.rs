//! Connections the edge opens to route targets (a backend's request whose
//! Request-URI or Route says `;transport=tcp`, `tls` or `ws`, or is
//! `sips:`): the [`Connector`], over TLS the client that verifies the
//! target ([`tls_connector`]), over WebSocket the client's upgrade
//! ([`ws_connect`]).

use std::net::SocketAddr;
use std::sync::Arc;

use handover_sip::{Flow, Transport};
use metrics::{counter, gauge};
use tokio::sync::mpsc;
use tokio_rustls::rustls;

use super::ws::serve_ws;
use super::{
    CLOSED, CONNECT_FAILURES, CONNECTIONS, OPENED, OUTBOUND, REFUSED, StreamConfig, Streams,
    UdpOut, serve,
};
use crate::Shared;

/// The TLS client of connections the edge opens to route targets
/// (`;transport=tls` or `sips:`): their certificate must chain to
/// `upstream_ca`, or to the system's roots without it, and name the
/// target (its URI's host name, or its IP address); the edge presents its
/// own TLS listener's certificate when it has one (trunks that ask for a
/// client certificate).
pub fn tls_connector(cfg: &StreamConfig) -> Result<tokio_rustls::TlsConnector, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let mut roots = rustls::RootCertStore::empty();
    match &cfg.upstream_ca {
        Some(ca) => {
            for c in
                CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| format!("{}: {e}", ca.display()))?;
                roots.add(c).map_err(|e| format!("{}: {e}", ca.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no CA certificate", ca.display()));
            }
        }
        None => {
            // Unreadable system certificates are skipped: a TLS target
            // then fails its handshake, counted, as an untrusted one does.
            let found = rustls_native_certs::load_native_certs();
            let _ = roots.add_parsable_certificates(found.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let cfg = match &cfg.tls_files {
        Some(f) => {
            let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f.cert)
                .and_then(|i| i.collect::<Result<_, _>>())
                .map_err(|e| format!("{}: {e}", f.cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&f.key)
                .map_err(|e| format!("{}: {e}", f.key.display()))?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| format!("{}: {e}", f.cert.display()))?
        }
        None => builder.with_no_client_auth(),
    };
    Ok(tokio_rustls::TlsConnector::from(Arc::new(cfg)))
}

/// The name a TLS route target's certificate must carry: the host of the
/// outgoing request's top Route, else of its Request-URI (a name, or the
/// IP literal itself).
fn tls_server_name(first: &[u8], addr: SocketAddr) -> rustls_pki_types::ServerName<'static> {
    use rustls_pki_types::ServerName;
    target_host(first)
        .and_then(|h| ServerName::try_from(h).ok())
        .unwrap_or(ServerName::IpAddress(addr.ip().into()))
}

/// The host the outgoing request `first` names for its target: its top
/// Route's, else its Request-URI's (without IPv6 brackets).
fn target_host(first: &[u8]) -> Option<String> {
    let m = handover_sip::scan(first).ok()?;
    let h = match m.top_route() {
        Some(r) => r.ok()?.uri().host().to_vec(),
        None => m.request_uri()?.host().to_vec(),
    };
    let h = String::from_utf8(h).ok()?;
    Some(h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// The URL of a WebSocket route target's upgrade: its host (as for TLS)
/// and port, path `/` (RFC 7118 names none).
fn ws_url(first: &[u8], flow: Flow) -> String {
    let scheme = if flow.transport == Transport::Wss {
        "wss"
    } else {
        "ws"
    };
    let host = target_host(first)
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| flow.addr.ip().to_string());
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    format!("{scheme}://{host}:{}/", flow.addr.port())
}

/// The client's WebSocket upgrade (RFC 6455) to a route target, within
/// the message timeout, offering the `sip` subprotocol (RFC 7118 §4.1);
/// a target that does not accept it is refused (tungstenite checks the
/// answer names what was offered).
pub(super) async fn ws_connect<S>(
    s: S,
    url: &str,
    streams: &Streams,
) -> Result<tokio_tungstenite::WebSocketStream<S>, &'static str>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::http::HeaderValue;
    let mut req = url.into_client_request().map_err(|_| "ws_handshake")?;
    req.headers_mut()
        .insert("sec-websocket-protocol", HeaderValue::from_static("sip"));
    match tokio::time::timeout(
        streams.cfg.message_timeout,
        tokio_tungstenite::client_async_with_config(req, s, Some(super::ws::config(streams))),
    )
    .await
    {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => {
            tracing::warn!(%url, error = %e, "WebSocket upgrade to a route target failed");
            Err("ws_handshake")
        }
        Err(_) => Err("message_timeout"),
    }
}

/// Opens TCP, TLS and WebSocket connections to route targets (a
/// backend's request whose Request-URI or Route says `;transport=tcp`,
/// `tls` or `ws`, or is `sips:`; TLS verified by [`tls_connector`]; a
/// WebSocket upgraded by [`ws_connect`]), from any thread: the
/// connection is registered at once with the first message queued (what
/// follows queues behind it), then connected on a stream thread and
/// served like an accepted one; a target that cannot be reached within
/// the message timeout is counted, and what waited for it is answered
/// 503 in its name (see `unreachable`), so the worker fails over.
pub(crate) struct Connector {
    pub(super) handle: tokio::runtime::Handle,
    /// Weak: `Shared` holds this connector.
    pub(super) shared: std::sync::Weak<Shared>,
    pub(super) streams: Arc<Streams>,
    pub(super) udp: Arc<UdpOut>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector").finish_non_exhaustive()
    }
}

impl Connector {
    pub(crate) fn connect(&self, flow: Flow, first: &[u8]) {
        let (tx, rx) = mpsc::channel(self.streams.cfg.queue);
        if self
            .streams
            .registry
            .admit_as(flow, tx.clone(), &self.streams.cfg, false)
            .is_err()
        {
            // Being opened by another thread just now: queue behind it.
            if !self.streams.registry.send(flow, first) {
                counter!(REFUSED, "transport" => flow.transport.name(), "reason" => "total_limit")
                    .increment(1);
            }
            return;
        }
        let _ = tx.try_send(first.into());
        let name = matches!(flow.transport, Transport::Tls | Transport::Wss)
            .then(|| tls_server_name(first, flow.addr));
        let url =
            matches!(flow.transport, Transport::Ws | Transport::Wss).then(|| ws_url(first, flow));
        let (shared, streams, udp) = (
            self.shared.clone(),
            Arc::clone(&self.streams),
            Arc::clone(&self.udp),
        );
        self.handle.spawn(async move {
            let t = flow.transport;
            let sock = match tokio::time::timeout(
                streams.cfg.message_timeout,
                tokio::net::TcpStream::connect(flow.addr),
            )
            .await
            {
                Ok(Ok(s)) => s,
                _ => return unreachable(flow, rx, &shared, &streams, &udp).await,
            };
            let Some(shared) = shared.upgrade() else {
                streams.registry.remove(flow);
                return;
            };
            let _ = sock.set_nodelay(true);
            // Ok: the TLS stream; Err: the plain TCP one.
            let conn = match name {
                None => Err(sock),
                Some(name) => {
                    let hs = streams.upstream.load().connect(name.clone(), sock);
                    match tokio::time::timeout(streams.cfg.message_timeout, hs).await {
                        Ok(Ok(s)) => Ok(s),
                        Ok(Err(e)) => {
                            tracing::warn!(target = %flow.addr, name = ?name, error = %e, "TLS to a route target failed");
                            let weak = Arc::downgrade(&shared);
                            return unreachable(flow, rx, &weak, &streams, &udp).await;
                        }
                        Err(_) => {
                            let weak = Arc::downgrade(&shared);
                            return unreachable(flow, rx, &weak, &streams, &udp).await;
                        }
                    }
                }
            };
            // Over WebSocket, the upgrade first (on TLS for `wss`).
            let conn = match (conn, &url) {
                (Err(sock), None) => Conn::Tcp(sock),
                (Ok(s), None) => Conn::Tls(s),
                (Err(sock), Some(url)) => match ws_connect(sock, url, &streams).await {
                    Ok(ws) => Conn::Ws(ws),
                    Err(_) => Conn::Failed,
                },
                (Ok(s), Some(url)) => match ws_connect(s, url, &streams).await {
                    Ok(ws) => Conn::Wss(ws),
                    Err(_) => Conn::Failed,
                },
            };
            if matches!(conn, Conn::Failed) {
                let weak = Arc::downgrade(&shared);
                return unreachable(flow, rx, &weak, &streams, &udp).await;
            }
            counter!(OPENED, "transport" => t.name()).increment(1);
            counter!(OUTBOUND, "transport" => t.name()).increment(1);
            gauge!(CONNECTIONS, "transport" => t.name()).increment(1.0);
            let (shared, streams, udp) = (&*shared, &*streams, &*udp);
            let reason = match conn {
                Conn::Tcp(s) => serve(s, flow, tx, rx, shared, streams, udp, false).await,
                Conn::Tls(s) => serve(s, flow, tx, rx, shared, streams, udp, false).await,
                Conn::Ws(ws) => serve_ws(ws, flow, tx, rx, shared, streams, udp).await,
                Conn::Wss(ws) => serve_ws(ws, flow, tx, rx, shared, streams, udp).await,
                Conn::Failed => "error",
            };
            streams.registry.remove(flow);
            counter!(CLOSED, "transport" => t.name(), "reason" => reason).increment(1);
            gauge!(CONNECTIONS, "transport" => t.name()).decrement(1.0);
        });
    }
}

/// A route target that could not be reached (connect, TLS or WebSocket
/// upgrade failed): counted, forgotten, and every request that waited for
/// it answered 503 in its name (`Proxy::unreachable`), routed back to the
/// worker as the target's own answer would be, so the worker fails over
/// to its next target (or tells the caller) at once.
async fn unreachable(
    flow: Flow,
    mut rx: mpsc::Receiver<Box<[u8]>>,
    shared: &std::sync::Weak<Shared>,
    streams: &Streams,
    udp: &UdpOut,
) {
    counter!(CONNECT_FAILURES, "transport" => flow.transport.name()).increment(1);
    // First: nothing new queues behind a connection that will not come.
    streams.registry.remove(flow);
    rx.close();
    let Some(shared) = shared.upgrade() else {
        return;
    };
    let (own, _) = mpsc::channel(1);
    let mut out = vec![0u8; streams.cfg.max_message_bytes + 4096];
    while let Ok(request) = rx.try_recv() {
        let mut answer = vec![0u8; request.len() + 256];
        let Some(n) = shared.proxy.unreachable(&request, &mut answer) else {
            continue;
        };
        let o = streams.handle(&shared, flow, &answer[..n], &mut out);
        super::deliver(o, &out, &own, &streams.registry, udp).await;
    }
}

/// A connection to a route target, ready to serve.
#[expect(
    clippy::large_enum_variant,
    reason = "one short-lived value per outbound connection, moved once into its serving future"
)]
enum Conn {
    Tcp(tokio::net::TcpStream),
    Tls(tokio_rustls::client::TlsStream<tokio::net::TcpStream>),
    Ws(tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>),
    Wss(tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>),
    Failed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tls_target_is_verified_by_its_uri_host_name_or_its_address() {
        use rustls_pki_types::ServerName;
        let addr: SocketAddr = "203.0.113.5:5061".parse().unwrap();
        let req = |ruri: &str, route: &str| {
            format!(
                "INVITE {ruri} SIP/2.0\r\n{route}Via: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
                 From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
                 Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let name = |m: String| tls_server_name(m.as_bytes(), addr);
        assert_eq!(
            name(req(
                "sip:b@sip.carrier.example:5061;maddr=203.0.113.5;transport=tls",
                ""
            )),
            ServerName::try_from("sip.carrier.example").unwrap()
        );
        assert_eq!(
            name(req("sip:b@203.0.113.5:5061;transport=tls", "")),
            ServerName::IpAddress(addr.ip().into())
        );
        assert_eq!(
            name(req(
                "sip:b@203.0.113.5:5061",
                "Route: <sip:sbc.carrier.example;transport=tls;lr>\r\n"
            )),
            ServerName::try_from("sbc.carrier.example").unwrap()
        );
        // Unreadable: the address.
        assert_eq!(
            tls_server_name(b"garbage", addr),
            ServerName::IpAddress(addr.ip().into())
        );
    }

    #[test]
    fn a_websocket_targets_url_names_its_host_and_port() {
        let req = |ruri: &str| {
            format!(
                "INVITE {ruri} SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1;branch=z9hG4bK1\r\n\
                 From: <sip:a@x>;tag=1\r\nTo: <sip:b@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\
                 Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let ws: Flow = "ws:203.0.113.5:8080".parse().unwrap();
        assert_eq!(
            ws_url(req("sip:b@203.0.113.5:8080;transport=ws").as_bytes(), ws),
            "ws://203.0.113.5:8080/"
        );
        let wss: Flow = "wss:203.0.113.5:443".parse().unwrap();
        assert_eq!(
            ws_url(
                req("sips:b@ws.carrier.example:443;maddr=203.0.113.5;transport=ws").as_bytes(),
                wss
            ),
            "wss://ws.carrier.example:443/"
        );
        let v6: Flow = "ws:[2001:db8::5]:80".parse().unwrap();
        assert_eq!(ws_url(b"garbage", v6), "ws://[2001:db8::5]:80/");
    }
}
