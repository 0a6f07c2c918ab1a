//! What the edge does with one datagram: the stateless proxy of RFC 3261
//! §16.11 with RFC 3581, and the routing of docs/architecture.md ("The edge"). Sans-IO: bytes
//! and a source address in, an [`Outcome`] and the bytes to send out.
//!
//! Requests from outside go to the backend that owns their key's shard. The
//! key comes from our own Route or Request-URI (`k` parameter), else from
//! the Call-ID. Requests from a backend go out to their next Route or
//! Request-URI. Responses go to the Via below ours, and only when our Via's
//! branch proves we forwarded the request (no reflection of forged
//! responses).
//!
//! Worker mode: a worker's own requests carry a top Via that already names
//! the edge, with the call's key (`k`), and a Contact naming the edge; they
//! go out with no Via of ours, so a callee sees only the edge. Their
//! responses (our Via alone) go to the current owner of the key's shard.

use std::net::{IpAddr, SocketAddr};

use handover_sip::build::{SliceSink, error_response, response};
use handover_sip::ids::{Bound, Hashing, hex_u64, key_of_token};
use handover_sip::{
    Flow, HeaderName, Limits, Message, Method, NameAddr, Reason, Rewrite, Transport, Uri, Verdict,
    Via, scan_with,
};

use crate::routing::Table;

mod guard;
use guard::Admit;
pub use guard::{BadInputLimiter, Destinations};

/// Why a datagram was dropped. Every drop is counted by reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Drop {
    /// CRLF keepalive (RFC 5626 style) or an empty datagram.
    Keepalive,
    /// Not answerable and not SIP enough: the scanner's reason.
    Malformed(Reason),
    /// A response whose top Via is not ours.
    NotOurs,
    /// A response whose branch does not prove we forwarded its request.
    Forged,
    /// No usable next hop (no Via below ours, or a host name we do not
    /// resolve: handover forwards to IP literals only).
    Unroutable,
    /// An ACK or a refused request's answer that would need a backend, and
    /// none is up; or a limit we do not answer (ACK over Max-Forwards).
    NoAnswerForAck,
    /// The source sent too much bad input this second.
    RateLimited,
    /// A new dialog from a source banned for starting twice its budget of
    /// new dialogs in one second (no answer: the 503s did not slow it).
    Banned,
    /// The ACK of an answer the edge gave itself (its To tag is ours): the
    /// transaction ends here, no backend knows it.
    AckOfOurAnswer,
    /// The rewritten message does not fit the send buffer.
    TooLarge,
    /// A message for a stream connection the edge no longer holds (a
    /// request from a backend is answered 430 instead: see
    /// [`Proxy::flow_failed`]).
    FlowGone,
}

impl Drop {
    /// Label value for `handover_edge_drops_total{reason}`.
    pub fn label(self) -> &'static str {
        match self {
            Drop::Keepalive => "keepalive",
            Drop::Malformed(r) => r.label(),
            Drop::NotOurs => "response_not_ours",
            Drop::Forged => "response_forged",
            Drop::Unroutable => "unroutable",
            Drop::NoAnswerForAck => "ack_not_answerable",
            Drop::AckOfOurAnswer => "ack_of_our_answer",
            Drop::RateLimited => "rate_limited",
            Drop::Banned => "source_banned",
            Drop::TooLarge => "too_large",
            Drop::FlowGone => "flow_gone",
        }
    }
}

/// Who a datagram came from or goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Peer {
    /// A user agent, trunk or anything that is not a backend.
    Client,
    /// Backend number `i` of the table.
    Backend(usize),
    /// A target a backend's request names by URI with `;transport=tcp`
    /// (`to` is a stream flow): the edge opens a connection to it when it
    /// holds none.
    Connect,
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Send `len` bytes of the output buffer to `to`.
    Forward {
        /// Destination: a UDP address, or a stream connection the edge holds.
        to: Flow,
        /// Bytes of the output buffer.
        len: usize,
        /// Where it goes.
        peer: Peer,
        /// True for a request, false for a response.
        request: bool,
    },
    /// Answer the sender: `len` bytes of the output buffer, status `status`.
    Reply {
        /// The sender.
        to: Flow,
        /// Bytes of the output buffer.
        len: usize,
        /// Status code sent.
        status: u16,
    },
    /// Answer a keep-alive ping (a double CRLF) with a CRLF pong: the
    /// first 2 bytes of the output buffer (RFC 5626 §4.4.1), so a phone
    /// behind NAT sees its flow alive.
    Pong {
        /// The sender.
        to: Flow,
    },
    /// Drop and count.
    Drop(Drop),
}

/// What the edge writes for one of its listeners: the Via it pushes and
/// the Record-Route it adds for messages on that transport.
#[derive(Debug, Clone)]
struct Listener {
    addr: SocketAddr,
    host: Vec<u8>,
    /// `SIP/2.0/TCP HOST:PORT;branch=`
    via_prefix: Vec<u8>,
    /// `Record-Route: <sip:HOST:PORT;transport=tcp;lr;k=` (no transport
    /// parameter for UDP)
    rr_prefix: Vec<u8>,
}

impl Listener {
    fn new(t: Transport, addr: SocketAddr) -> Self {
        let host = match addr.ip() {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        let hostport = format!("{host}:{}", addr.port());
        let tp = match t {
            Transport::Udp => String::new(),
            t => format!(";transport={}", t.uri_param()),
        };
        Self {
            addr,
            host: host.into_bytes(),
            via_prefix: format!("SIP/2.0/{} {hostport};branch=", t.via_token()).into_bytes(),
            rr_prefix: format!("Record-Route: <sip:{hostport}{tp};lr;k=").into_bytes(),
        }
    }
}

/// The edge's stateless proxy for its advertised addresses (UDP, and the
/// stream listeners it has).
#[derive(Debug, Clone)]
pub struct Proxy {
    advertised: SocketAddr,
    /// One per transport (`Transport::index`); UDP always.
    listeners: [Option<Listener>; 5],
    hashing: Hashing,
    limits: Limits,
    record_route: bool,
    tag: [u8; 16],
    destinations: Destinations,
    /// This edge's address inside the cluster (`IP:PORT`), when several
    /// edges share the advertised one: written as `;fe=` in the Via of
    /// what goes to a worker (its answers come back here) and beside
    /// every flow in our Record-Route (the dialog's requests to a phone
    /// on that flow come here, where its connection is).
    internal: Option<Vec<u8>>,
}

impl Proxy {
    /// A proxy that names itself `advertised` in Via and Record-Route.
    pub fn new(
        advertised: SocketAddr,
        hashing: Hashing,
        limits: Limits,
        record_route: bool,
    ) -> Self {
        let udp = Listener::new(Transport::Udp, advertised);
        let hostport = format!(
            "{}:{}",
            String::from_utf8_lossy(&udp.host),
            advertised.port()
        );
        Self {
            advertised,
            listeners: [Some(udp), None, None, None, None],
            tag: hex_u64(hashing.affinity_key(hostport.as_bytes())),
            hashing,
            limits,
            record_route,
            destinations: Destinations::default(),
            internal: None,
        }
    }

    /// Names this edge's address inside the cluster (see `internal`):
    /// for edges that share one advertised address.
    pub fn with_internal(mut self, addr: SocketAddr) -> Self {
        self.internal = Some(addr.to_string().into_bytes());
        self
    }

    /// Sets where workers' requests may go ([`Destinations`]).
    pub fn with_destinations(mut self, d: Destinations) -> Self {
        self.destinations = d;
        self
    }

    /// Adds a stream listener's advertised address: messages on that
    /// transport name it in Via and Record-Route, and it is ours in a
    /// Route or Request-URI.
    pub fn with_listener(mut self, t: Transport, advertised: SocketAddr) -> Self {
        self.listeners[t.index()] = Some(Listener::new(t, advertised));
        self
    }

    /// The advertised address.
    pub fn advertised(&self) -> SocketAddr {
        self.advertised
    }

    /// The advertised address of transport `t`'s listener, if the edge has one.
    pub fn listener(&self, t: Transport) -> Option<SocketAddr> {
        self.listeners[t.index()].as_ref().map(|l| l.addr)
    }

    fn udp(&self) -> &Listener {
        self.listeners[0].as_ref().expect("UDP is always there")
    }

    /// The listener for messages on `t` (UDP's when the edge has none: a
    /// flow on a transport we do not listen on cannot exist).
    fn on(&self, t: Transport) -> &Listener {
        self.listeners[t.index()]
            .as_ref()
            .unwrap_or_else(|| self.udp())
    }

    fn names_us(&self, host: &[u8], port: Option<u16>) -> bool {
        let port = port.unwrap_or(5060);
        self.listeners
            .iter()
            .flatten()
            .any(|l| host.eq_ignore_ascii_case(&l.host) && port == l.addr.port())
    }

    /// The parts of our Record-Route with flow `f` (and, with an internal
    /// address, `;fe=` naming this edge, tagged: see
    /// `Hashing::edge_tag`); `tag` holds the tag's text.
    fn flow_rr<'b>(
        &'b self,
        prefix: &'b [u8],
        k: &'b [u8],
        f: &'b [u8],
        tag: &'b mut [u8; 16],
    ) -> [&'b [u8]; 9] {
        match &self.internal {
            Some(i) => {
                *tag = self.hashing.edge_tag(f, i);
                let tag: &'b [u8; 16] = tag;
                [prefix, k, b";flow=", f, b";fe=", i, b"~", tag, b">\r\n"]
            }
            None => [prefix, k, b";flow=", f, b">\r\n", b"", b"", b"", b""],
        }
    }

    fn via_is_ours(&self, v: &Via<'_>) -> bool {
        self.names_us(v.host(), v.port())
    }

    fn uri_is_ours(&self, u: &Uri<'_>) -> bool {
        self.names_us(u.host(), u.port())
    }

    /// The answer to a backend's request that went to a flow whose
    /// connection is gone: `430 Flow Failed` (RFC 5626 §5.3), so the
    /// worker tries the phone's other bindings and drops this one. `None`
    /// for an ACK (nothing answers an ACK) or what does not scan.
    pub fn flow_failed(&self, request: &[u8], out: &mut [u8]) -> Option<usize> {
        self.answer_for_target(request, 430, out)
    }

    /// The answer to a backend's request for a route target the edge
    /// could not connect to: `503 Service Unavailable` in the target's
    /// name (RFC 3261 §8.1.3.1: a transport error counts as a 503), so
    /// the worker fails over to its next target at once rather than
    /// waiting out its transaction. `None` for an ACK or what does not
    /// scan.
    pub fn unreachable(&self, request: &[u8], out: &mut [u8]) -> Option<usize> {
        self.answer_for_target(request, 503, out)
    }

    fn answer_for_target(&self, request: &[u8], status: u16, out: &mut [u8]) -> Option<usize> {
        let m = scan_with(request, &self.limits).ok()?;
        if !m.is_request() || m.method() == Some(Method::Ack) {
            return None;
        }
        let mut sink = SliceSink::new(out);
        response(
            &m.reply_parts(),
            status,
            None,
            Some(&self.tag),
            &[],
            &mut sink,
        );
        sink.finish()
    }

    /// Handles one datagram from `from`, writing what to send into `out`.
    pub fn handle(
        &self,
        table: &Table,
        limiter: &mut BadInputLimiter,
        now_sec: u32,
        from: Flow,
        dgram: &[u8],
        out: &mut [u8],
    ) -> Outcome {
        if dgram.iter().all(|&b| matches!(b, b'\r' | b'\n')) {
            //= https://www.rfc-editor.org/rfc/rfc5626#section-4.4.1
            //# the client sends a double-CRLF
            //# (the "ping") then the server immediately responds with a single CRLF
            //# (the "pong").
            if dgram == b"\r\n\r\n" && out.len() >= 2 {
                out[..2].copy_from_slice(b"\r\n");
                return Outcome::Pong { to: from };
            }
            return Outcome::Drop(Drop::Keepalive);
        }
        if limiter.limited(from.addr.ip(), now_sec) {
            return Outcome::Drop(Drop::RateLimited);
        }
        let m = match scan_with(dgram, &self.limits) {
            Ok(m) => m,
            Err(e) => {
                limiter.charge(from.addr.ip(), now_sec);
                return match e.verdict() {
                    Verdict::Reply(status) => {
                        let mut sink = SliceSink::new(out);
                        error_response(&e, Some(&self.tag), &mut sink);
                        match sink.finish() {
                            Some(len) => Outcome::Reply {
                                to: from,
                                len,
                                status,
                            },
                            None => Outcome::Drop(Drop::TooLarge),
                        }
                    }
                    Verdict::Drop => Outcome::Drop(Drop::Malformed(e.reason)),
                };
            }
        };
        if m.is_request() {
            self.request(table, limiter, now_sec, from, &m, out)
        } else {
            self.response(table, from, &m, out)
        }
    }

    fn reply(&self, m: &Message<'_>, from: Flow, reason: Reason, out: &mut [u8]) -> Outcome {
        if m.method() == Some(Method::Ack) {
            return Outcome::Drop(Drop::NoAnswerForAck);
        }
        let status = reason.status();
        let mut sink = SliceSink::new(out);
        //= https://www.rfc-editor.org/rfc/rfc3261#section-21.5.4
        //# The server MAY indicate when the client should retry the request
        //# in a Retry-After header field.
        let retry: &[(&str, &[u8])] = match reason {
            Reason::SourceOverBudget => &[("Retry-After", b"1")],
            _ => &[],
        };
        response(
            &m.reply_parts(),
            status,
            Some(&reason),
            Some(&self.tag),
            retry,
            &mut sink,
        );
        match sink.finish() {
            Some(len) => Outcome::Reply {
                to: from,
                len,
                status,
            },
            None => Outcome::Drop(Drop::TooLarge),
        }
    }

    /// The key of `token`, a `k` from our Route or Request-URI, if its tag
    /// is good for this request's Call-ID, or, for a request with
    /// `Replaces` (RFC 3891), for the replaced dialog's: the token our
    /// Contact carried in that dialog (an attended transfer's INVITE goes
    /// to the replaced call's worker by it).
    fn open_key(&self, token: &[u8], m: &Message<'_>) -> Option<u64> {
        self.hashing
            .open_key_token(token, Bound::CallId, m.call_id())
            .or_else(|| {
                let h = m.header(HeaderName::Replaces)?;
                let v = h.value.of(m.buf());
                let id = v.split(|&b| b == b';').next()?.trim_ascii();
                self.hashing.open_key_token(token, Bound::CallId, id)
            })
    }

    fn request(
        &self,
        table: &Table,
        limiter: &mut BadInputLimiter,
        now_sec: u32,
        from: Flow,
        m: &Message<'_>,
        out: &mut [u8],
    ) -> Outcome {
        // An ACK of a non-2xx the edge answered itself (482, 483, 503, …)
        // carries our To tag: it is ours, no backend knows the request.
        if m.method() == Some(Method::Ack) && m.to_tag() == Some(&self.tag[..]) {
            return Outcome::Drop(Drop::AckOfOurAnswer);
        }
        //= https://www.rfc-editor.org/rfc/rfc3261#section-16.3
        //# 4. Optional Loop Detection check
        if self.hashing.is_loop(m, |v| self.via_is_ours(v)) {
            limiter.charge(from.addr.ip(), now_sec);
            return self.reply(m, from, Reason::LoopDetected, out);
        }
        // §16.4: a top Route naming us is ours to remove; its `k` is the key.
        let top_route = m.top_route().and_then(Result::ok);
        let strip_route = top_route.is_some_and(|r| self.uri_is_ours(r.uri()));
        // A `k` counts only with its tag (a forged one would aim requests
        // at the worker of the sender's choice); without a good one the
        // request goes by its Call-ID, and the source is charged for it.
        let mut token = None;
        if strip_route {
            token = top_route.and_then(|r| r.uri().param(b"k"));
        }
        let ruri = m.request_uri().expect("requests have one");
        if token.is_none() && self.uri_is_ours(ruri) {
            token = ruri.param(b"k");
        }
        // Backends talk UDP; nothing on a stream is one.
        let from_backend = match from.transport {
            Transport::Udp => table.backend_index(from.addr),
            _ => None,
        };
        let key = token.and_then(|t| {
            if from_backend.is_some() {
                // A worker's own request: its key is not checked (nor
                // used: the request goes out by its Route or URI).
                return key_of_token(t);
            }
            let key = self.open_key(t, m);
            if key.is_none() {
                limiter.keys_refused += 1;
                limiter.charge(from.addr.ip(), now_sec);
            }
            key
        });
        // A REGISTER is keyed by its address-of-record, so one shard (one
        // worker) holds an AOR's bindings; any other request by Call-ID.
        let key = key.unwrap_or_else(|| match (m.method(), m.to()) {
            (Some(Method::Register), Ok(to)) => self.hashing.aor_key(to.uri()),
            _ => self.hashing.affinity_key(m.call_id()),
        });

        // (The transaction hash is only computed with a budget set.)
        if limiter.new_dialogs.is_some()
            && from_backend.is_none()
            && m.to_tag().is_none()
            && !matches!(m.method(), Some(Method::Ack | Method::Cancel))
        {
            match limiter.new_dialog(
                from.addr.ip(),
                now_sec,
                self.hashing.transaction_hash(m.top_via(), m),
            ) {
                Admit::Yes => {}
                Admit::Refuse => return self.reply(m, from, Reason::SourceOverBudget, out),
                Admit::Drop => return Outcome::Drop(Drop::Banned),
            }
        }
        let (to, peer) = match from_backend {
            None => match table.route(key) {
                Some((i, addr)) => (Flow::udp(addr), Peer::Backend(i)),
                None => return self.reply(m, from, Reason::NoBackend, out),
            },
            // A worker's request to a registered phone: our Route names
            // the flow its REGISTER came from (`flow=IP:PORT`, or
            // `tcp:IP:PORT`… for a connection), which is where it goes,
            // whatever private address its Request-URI has.
            Some(_)
                if let Some(flow) = strip_route
                    .then_some(top_route)
                    .flatten()
                    .and_then(|r| r.uri().param(b"flow"))
                    .and_then(Flow::parse) =>
            {
                (flow, Peer::Client)
            }
            Some(_) => {
                // Out to the world: the next Route, else the Request-URI.
                let next: Option<NameAddr<'_>> = if strip_route {
                    m.values(HeaderName::Route)
                        .nth(1)
                        .and_then(|v| NameAddr::parse(m.buf(), v).ok())
                } else {
                    top_route
                };
                let target = next.as_ref().map_or(ruri, |n| n.uri());
                if self.uri_is_ours(target) {
                    // Addressed to us again: route by key like any request.
                    match table.route(key) {
                        Some((i, addr)) => (Flow::udp(addr), Peer::Backend(i)),
                        None => return self.reply(m, from, Reason::NoBackend, out),
                    }
                } else {
                    match uri_target(target) {
                        Some(f) if !self.destinations.allows(f.addr.ip()) => {
                            return self.reply(m, from, Reason::DestinationDenied, out);
                        }
                        Some(f) if f.transport.is_stream() => (f, Peer::Connect),
                        Some(f) => (f, Peer::Client),
                        None => return Outcome::Drop(Drop::Unroutable),
                    }
                }
            }
        };

        // A worker's own request (a B2BUA leg it originates) carries a top
        // Via that already names this edge, with the call's key: the worker
        // delegated its Via to us so the callee sees only the edge. It goes
        // out without a Via of ours, and its responses come back by key.
        let delegated = from_backend.is_some() && self.via_is_ours(m.top_via());
        let dialog_creating = m.to_tag().is_none()
            && matches!(
                m.method(),
                Some(Method::Invite | Method::Subscribe | Method::Refer)
            );
        // The flow a dialog on a stream is tied to: the connection a
        // client's request came on, or the one a backend's goes out on.
        // Our Record-Route names it (RFC 5626 style), so the far end's
        // in-dialog requests come back on that transport, and the
        // backend's reach the phone over that same connection.
        let stream_flow = if from.transport.is_stream() {
            Some(from)
        } else if to.transport.is_stream() {
            Some(to)
        } else {
            None
        };
        let mut flow_buf = [0u8; 64];
        let flow_text = stream_flow.map(|f| write_flow(f, &mut flow_buf));
        let rr_listener = self.on(stream_flow.map_or(Transport::Udp, |f| f.transport));
        let mut tag = [0u8; 16];
        let mut rw = Rewrite::new(m);
        let ok = (|| {
            if delegated {
                if let Err(r) = rw.decrement_max_forwards()? {
                    return Ok(Err(r));
                }
                if strip_route {
                    rw.remove_top_route()?;
                }
                if to.transport.is_stream() {
                    // The worker wrote a UDP Via naming the edge; on a
                    // stream it names the transport it really goes on.
                    rw.replace(
                        m.top_via().transport_span(),
                        &[to.transport.via_token().as_bytes()],
                    )?;
                    if dialog_creating
                        && self.record_route
                        && let (Some(k), Some(f)) = (
                            m.top_via()
                                .param(b"k")
                                .and_then(|p| p.value)
                                .and_then(|v| key_of_token(v.of(m.buf())))
                                .map(|k| self.hashing.key_token(k, Bound::CallId, m.call_id())),
                            flow_text,
                        )
                    {
                        let at = m
                            .record_route_field()
                            .map_or(m.header_block().end, |f| f.line.start);
                        rw.insert(at, &self.flow_rr(&rr_listener.rr_prefix, &k, f, &mut tag))?;
                    }
                }
                return Ok(Ok(()));
            }
            if from.transport.is_stream() {
                rw.set_received_stream(from.addr)?;
            } else {
                rw.set_received(from.addr)?;
            }
            if let Err(r) = rw.decrement_max_forwards()? {
                return Ok(Err(r));
            }
            // Our Route with a flow and its token (a PBX calling a phone
            // through the Path we gave its REGISTER) stays for the
            // worker, which checks the token and calls the phone on it.
            let flow_route =
                from_backend.is_none() && top_route.is_some_and(|r| r.uri().param(b"ft").is_some());
            if strip_route && !flow_route {
                rw.remove_top_route()?;
            }
            let khex = hex_u64(key);
            let branch = self.hashing.stateless_branch(m);
            // To a worker: our address inside the cluster, where its
            // answer must come back (the advertised one may be another
            // edge's too).
            let fe: [&[u8]; 2] = match (&self.internal, peer) {
                (Some(i), Peer::Backend(_)) => [b";fe=", i],
                _ => [b"", b""],
            };
            rw.prepend_via(&[
                &self.on(to.transport).via_prefix,
                branch.as_bytes(),
                b";k=",
                &khex,
                fe[0],
                fe[1],
            ])?;
            if self.record_route && dialog_creating {
                // Requests a backend sends out carry a key it owns, so the
                // answers' in-dialog requests come back to it.
                let rr_key = from_backend
                    .and_then(|i| table.key_for_backend(i))
                    .unwrap_or(key);
                let at = m
                    .record_route_field()
                    .map_or(m.header_block().end, |f| f.line.start);
                // Its token is good with this dialog's Call-ID only.
                let k = self.hashing.key_token(rr_key, Bound::CallId, m.call_id());
                match flow_text {
                    Some(f) => {
                        rw.insert(at, &self.flow_rr(&rr_listener.rr_prefix, &k, f, &mut tag))?
                    }
                    None => rw.insert(at, &[&rr_listener.rr_prefix, &k, b">\r\n"])?,
                }
            }
            Ok(Ok(()))
        })();
        match ok {
            Ok(Ok(())) => {}
            Ok(Err(reason)) => return self.reply(m, from, reason, out),
            Err(
                handover_sip::RewriteError::OutputTooSmall
                | handover_sip::RewriteError::ScratchFull,
            ) => {
                return Outcome::Drop(Drop::TooLarge);
            }
            Err(_) => return Outcome::Drop(Drop::Malformed(Reason::MalformedHeaderLine)),
        }
        match rw.write_to(out) {
            Ok(len) => Outcome::Forward {
                to,
                len,
                peer,
                request: true,
            },
            Err(_) => Outcome::Drop(Drop::TooLarge),
        }
    }

    fn response(&self, table: &Table, _from: Flow, m: &Message<'_>, out: &mut [u8]) -> Outcome {
        if !self.via_is_ours(m.top_via()) {
            return Outcome::Drop(Drop::NotOurs);
        }
        if m.vias().nth(1).is_none() {
            // Our Via alone: the answer to a worker's delegated request.
            // It goes, unchanged, to whichever worker owns the key now
            // (so it survives the death of the sender).
            // Its `k` counts with its tag, bound to the branch.
            let via = m.top_via();
            let key = via
                .param(b"k")
                .and_then(|p| p.value)
                .zip(via.branch())
                .and_then(|(v, b)| self.hashing.open_key_token(v.of(m.buf()), Bound::Branch, b));
            let Some((i, to)) = key.and_then(|k| table.route(k)) else {
                return Outcome::Drop(Drop::Unroutable);
            };
            let len = m.as_bytes().len();
            if len > out.len() {
                return Outcome::Drop(Drop::TooLarge);
            }
            out[..len].copy_from_slice(m.as_bytes());
            return Outcome::Forward {
                to: Flow::udp(to),
                len,
                peer: Peer::Backend(i),
                request: false,
            };
        }
        if !self.hashing.verify_response(m) {
            return Outcome::Drop(Drop::Forged);
        }
        let Some(next) = m.vias().nth(1) else {
            return Outcome::Drop(Drop::Unroutable);
        };
        // On a stream, back on the connection the request came on: the
        // Via's transport, and the source the edge wrote into it.
        let Some(to) = next.flow() else {
            return Outcome::Drop(Drop::Unroutable);
        };
        let mut rw = Rewrite::new(m);
        if rw.remove_top_via().is_err() {
            return Outcome::Drop(Drop::Unroutable);
        }
        let peer = match to.transport {
            Transport::Udp => table
                .backend_index(to.addr)
                .map_or(Peer::Client, Peer::Backend),
            _ => Peer::Client,
        };
        match rw.write_to(out) {
            Ok(len) => Outcome::Forward {
                to,
                len,
                peer,
                request: false,
            },
            Err(_) => Outcome::Drop(Drop::TooLarge),
        }
    }
}

/// `f` as text in `buf` (no allocation on the hot path).
fn write_flow(f: Flow, buf: &mut [u8; 64]) -> &[u8] {
    use std::io::Write;
    let mut w: &mut [u8] = &mut buf[..];
    // The longest flow, `wss:[8 groups]:65535`, is 4 + 41 + 6 bytes.
    let _ = write!(w, "{f}");
    let n = 64 - w.len();
    &buf[..n]
}

fn parse_ip(host: &[u8]) -> Option<IpAddr> {
    let h = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    core::str::from_utf8(h).ok()?.parse().ok()
}

/// Where a request for `u` goes: its IP literal host and port (5060 when
/// absent, 5061 for TLS), on the transport its `transport` parameter or
/// `sips:` scheme names (RFC 3263 §4.1 without DNS). Host names are not
/// resolved by the edge.
fn uri_target(u: &Uri<'_>) -> Option<Flow> {
    let ip = u
        .param(b"maddr")
        .and_then(parse_ip)
        .or_else(|| parse_ip(u.host()))?;
    let sips = u.scheme() == handover_sip::Scheme::Sips;
    let transport = match u.param(b"transport").and_then(Transport::parse) {
        // RFC 7118 §5.2: `transport=ws` in a SIPS URI is WebSocket on TLS.
        Some(Transport::Ws) if sips => Transport::Wss,
        Some(t) => t,
        None if sips => Transport::Tls,
        None => Transport::Udp,
    };
    let port = u.port().unwrap_or(match transport {
        Transport::Tls => 5061,
        Transport::Ws => 80,
        Transport::Wss => 443,
        _ => 5060,
    });
    Some(Flow::new(transport, SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests;
