//! SIP over WebSocket (RFC 7118): the upgrade and one connection's
//! messages, on tokio-tungstenite.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use handover_sip::Flow;
use parking_lot::Mutex;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::resend::{Pending, retransmit};
use super::{Streams, UdpOut, on_message};
use crate::Shared;

/// The WebSocket upgrade (RFC 6455) of a connection, within the message
/// timeout; refused (`ws_no_sip`) unless the client offers the `sip`
/// subprotocol (RFC 7118 §4.1), which the answer then names.
pub(super) async fn ws_handshake<S>(
    s: S,
    streams: &Streams,
) -> Result<tokio_tungstenite::WebSocketStream<S>, &'static str>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    let offered_sip = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saw = Arc::clone(&offered_sip);
    // The signature is tungstenite's (its error type is an HTTP response).
    #[expect(
        clippy::result_large_err,
        reason = "tungstenite's callback signature returns its own large error response"
    )]
    let callback = move |req: &Request, mut resp: Response| {
        let sip = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|p| p.trim().eq_ignore_ascii_case("sip"));
        if !sip {
            let mut e = ErrorResponse::new(Some(
                "SIP over WebSocket needs the sip subprotocol (RFC 7118)".to_string(),
            ));
            *e.status_mut() = tokio_tungstenite::tungstenite::http::StatusCode::BAD_REQUEST;
            return Err(e);
        }
        saw.store(true, Ordering::Relaxed);
        resp.headers_mut().insert(
            "sec-websocket-protocol",
            tokio_tungstenite::tungstenite::http::HeaderValue::from_static("sip"),
        );
        Ok(resp)
    };
    let config = config(streams);
    match tokio::time::timeout(
        streams.cfg.message_timeout,
        tokio_tungstenite::accept_hdr_async_with_config(s, callback, Some(config)),
    )
    .await
    {
        Ok(Ok(ws)) => Ok(ws),
        Ok(Err(_)) if !offered_sip.load(Ordering::Relaxed) => Err("ws_no_sip"),
        Ok(Err(_)) => Err("ws_handshake"),
        Err(_) => Err("message_timeout"),
    }
}

/// Our WebSocket connections' limits, either side: a message (one SIP
/// message) and a frame no larger than `[sip] max_message_bytes`.
pub(super) fn config(
    streams: &Streams,
) -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    let max = streams.cfg.max_message_bytes;
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
}

/// Serves one WebSocket connection: each text or binary message is one
/// SIP message (RFC 7118 §5.2); pings are answered by the WebSocket layer.
pub(super) async fn serve_ws<S>(
    ws: tokio_tungstenite::WebSocketStream<S>,
    flow: Flow,
    tx: mpsc::Sender<Box<[u8]>>,
    mut rx: mpsc::Receiver<Box<[u8]>>,
    shared: &Shared,
    streams: &Streams,
    udp: &UdpOut,
) -> &'static str
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    use futures_util::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let (mut sink, mut source) = ws.split();
    let pending = Arc::new(Mutex::new(Pending::default()));
    let answered = Arc::clone(&pending);
    let writer = tokio::spawn(async move {
        while let Some(b) = rx.recv().await {
            answered.lock().sent(&b);
            let m = match String::from_utf8(b.into_vec()) {
                Ok(text) => Message::text(text),
                Err(e) => Message::binary(e.into_bytes()),
            };
            if sink.send(m).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    let cfg = &streams.cfg;
    let mut out = vec![0u8; cfg.max_message_bytes + 4096];
    let mut last_read = Instant::now();
    let reason = loop {
        if shared.stop.load(Ordering::Relaxed) {
            break "shutdown";
        }
        let idle_due = last_read + cfg.idle_timeout;
        let resend = pending.lock().next_due();
        let now = Instant::now();
        if resend.is_some_and(|t| t <= now) {
            retransmit(now, flow, &mut out, &tx, shared, streams, udp, &pending).await;
            continue;
        }
        let wake = idle_due
            .min(now + Duration::from_secs(1))
            .min(resend.unwrap_or(idle_due));
        let msg = match tokio::time::timeout_at(wake, source.next()).await {
            Err(_) if Instant::now() >= idle_due => break "idle",
            Err(_) => continue,
            Ok(None) => break "peer_closed",
            Ok(Some(Err(tokio_tungstenite::tungstenite::Error::Capacity(_)))) => break "too_large",
            Ok(Some(Err(_))) => break "error",
            Ok(Some(Ok(m))) => m,
        };
        last_read = Instant::now();
        let data = match msg {
            Message::Text(t) => t.as_bytes().to_vec(),
            Message::Binary(b) => b.to_vec(),
            Message::Close(_) => break "peer_closed",
            _ => continue,
        };
        on_message(&data, flow, &mut out, &tx, shared, streams, udp, &pending).await;
    };
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(1), writer).await;
    reason
}
