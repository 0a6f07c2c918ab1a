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
use handover_sip::ids::{Hashing, hex_u64, parse_hex_u64};
use handover_sip::{
    Flow, HeaderName, Limits, Message, Method, NameAddr, Reason, Rewrite, Transport, Uri, Verdict,
    Via, scan_with,
};

use crate::routing::Table;

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

/// Per-source budgets: bad input, so one source's junk cannot make the
/// edge spend its time scanning and answering it; and, optionally, new
/// dialogs (an INVITE, REGISTER, SUBSCRIBE… without a To tag), so one
/// source cannot flood the workers with valid-looking calls. Requests
/// from the backends are never charged.
#[derive(Debug)]
pub struct BadInputLimiter {
    per_sec: u32,
    slots: Box<[(u128, u32, u32)]>, // (ip, second, count)
    new_dialogs: Option<Box<BadInputLimiter>>,
    /// Transaction hashes of recently admitted new dialogs (direct-mapped):
    /// a retransmission of one is never charged nor refused, so a call
    /// admitted once is not failed by a 503 to its own retransmission.
    admitted: Box<[u64]>,
    /// Seconds a source is banned for (see [`Drop::Banned`]); 0: never.
    ban_s: u32,
    /// Per slot: (source, banned until this second).
    bans: Box<[(u128, u32)]>,
}

/// What the edge does with a new dialog (see [`BadInputLimiter`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admit {
    Yes,
    /// 503 with Retry-After.
    Refuse,
    /// Silently: the source is banned.
    Drop,
}

impl BadInputLimiter {
    /// Allows `per_sec` refused datagrams per source address per second
    /// (0 = no limit). Sources share `2^bits` slots.
    pub fn new(per_sec: u32, bits: u32) -> Self {
        Self {
            per_sec,
            slots: vec![(0, 0, 0); 1 << bits].into_boxed_slice(),
            new_dialogs: None,
            admitted: Box::default(),
            ban_s: 0,
            bans: Box::default(),
        }
    }

    /// Also allows `per_sec` new dialogs per source address per second
    /// (0 = no limit); the one over it is answered 503 with Retry-After.
    pub fn with_new_dialogs(mut self, per_sec: u32) -> Self {
        let bits = self.slots.len().trailing_zeros();
        self.new_dialogs = (per_sec > 0).then(|| Box::new(Self::new(per_sec, bits)));
        self.admitted = vec![0; if per_sec > 0 { 1 << bits } else { 0 }].into_boxed_slice();
        self
    }

    /// A source that starts twice its budget of new dialogs in one second
    /// has its new dialogs dropped unanswered for `ban_s` seconds (0: no
    /// ban). Only with [`Self::with_new_dialogs`].
    pub fn with_ban(mut self, ban_s: u32) -> Self {
        self.ban_s = ban_s;
        self.bans = vec![(0, 0); if ban_s > 0 { self.slots.len() } else { 0 }].into_boxed_slice();
        self
    }

    /// Counts a new dialog from `ip` whose transaction hashes to `txn`
    /// and says what to do with it. A retransmission of an admitted one
    /// always passes.
    fn new_dialog(&mut self, ip: IpAddr, now_sec: u32, txn: u64) -> Admit {
        let Some(l) = &mut self.new_dialogs else {
            return Admit::Yes;
        };
        let i = (txn as usize) & (self.admitted.len() - 1);
        if self.admitted[i] == txn {
            return Admit::Yes;
        }
        let (slot, v) = l.slot(ip);
        if self.ban_s > 0 && self.bans[slot].0 == v && now_sec < self.bans[slot].1 {
            return Admit::Drop;
        }
        let over = l.limited(ip, now_sec);
        // Refused ones count too: twice the budget in a second bans.
        l.charge(ip, now_sec);
        if !over {
            self.admitted[i] = txn;
            return Admit::Yes;
        }
        if self.ban_s > 0 && l.slots[slot].2 >= l.per_sec.saturating_mul(2) {
            self.bans[slot] = (v, now_sec.saturating_add(self.ban_s));
        }
        Admit::Refuse
    }

    fn slot(&self, ip: IpAddr) -> (usize, u128) {
        let v = match ip {
            IpAddr::V4(a) => u128::from(a.to_bits()),
            IpAddr::V6(a) => a.to_bits(),
        };
        let h = (v as u64 ^ (v >> 64) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 40) as usize & (self.slots.len() - 1), v)
    }

    /// True when `ip` is over its budget this second.
    fn limited(&self, ip: IpAddr, now_sec: u32) -> bool {
        if self.per_sec == 0 {
            return false;
        }
        let (i, v) = self.slot(ip);
        let (ip0, sec, n) = self.slots[i];
        ip0 == v && sec == now_sec && n >= self.per_sec
    }

    fn charge(&mut self, ip: IpAddr, now_sec: u32) {
        if self.per_sec == 0 {
            return;
        }
        let (i, v) = self.slot(ip);
        let s = &mut self.slots[i];
        if s.0 != v || s.1 != now_sec {
            *s = (v, now_sec, 0);
        }
        s.2 = s.2.saturating_add(1);
    }
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
        }
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
        let m = scan_with(request, &self.limits).ok()?;
        if !m.is_request() || m.method() == Some(Method::Ack) {
            return None;
        }
        let mut sink = SliceSink::new(out);
        response(&m.reply_parts(), 430, None, Some(&self.tag), &[], &mut sink);
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
        let mut key = None;
        if strip_route {
            key = top_route
                .and_then(|r| r.uri().param(b"k"))
                .and_then(parse_hex_u64);
        }
        let ruri = m.request_uri().expect("requests have one");
        if key.is_none() && self.uri_is_ours(ruri) {
            key = ruri.param(b"k").and_then(parse_hex_u64);
        }
        // A REGISTER is keyed by its address-of-record, so one shard (one
        // worker) holds an AOR's bindings; any other request by Call-ID.
        let key = key.unwrap_or_else(|| match (m.method(), m.to()) {
            (Some(Method::Register), Ok(to)) => self.hashing.aor_key(to.uri()),
            _ => self.hashing.affinity_key(m.call_id()),
        });

        // Backends talk UDP; nothing on a stream is one.
        let from_backend = match from.transport {
            Transport::Udp => table.backend_index(from.addr),
            _ => None,
        };
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
                                .map(|v| v.of(m.buf())),
                            flow_text,
                        )
                    {
                        let at = m
                            .record_route_field()
                            .map_or(m.header_block().end, |f| f.line.start);
                        rw.insert(at, &[&rr_listener.rr_prefix, k, b";flow=", f, b">\r\n"])?;
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
            rw.prepend_via(&[
                &self.on(to.transport).via_prefix,
                branch.as_bytes(),
                b";k=",
                &khex,
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
                match flow_text {
                    Some(f) => rw.insert(
                        at,
                        &[
                            &rr_listener.rr_prefix,
                            &hex_u64(rr_key),
                            b";flow=",
                            f,
                            b">\r\n",
                        ],
                    )?,
                    None => rw.insert(at, &[&rr_listener.rr_prefix, &hex_u64(rr_key), b">\r\n"])?,
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
            let key = m
                .top_via()
                .param(b"k")
                .and_then(|p| p.value)
                .and_then(|v| parse_hex_u64(v.of(m.buf())));
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
    let transport = match u.param(b"transport").and_then(Transport::parse) {
        Some(t) => t,
        None if u.scheme() == handover_sip::Scheme::Sips => Transport::Tls,
        None => Transport::Udp,
    };
    let port = u.port().unwrap_or(if transport == Transport::Tls {
        5061
    } else {
        5060
    });
    Some(Flow::new(transport, SocketAddr::new(ip, port)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_sip::scan;

    const EDGE: &str = "192.0.2.1:5060";
    const UA: &str = "198.51.100.7:33333";

    fn setup() -> (Proxy, Table, BadInputLimiter) {
        let h = Hashing::default();
        let backends: Vec<SocketAddr> = vec![
            "10.0.0.1:5070".parse().unwrap(),
            "10.0.0.2:5070".parse().unwrap(),
        ];
        let t = Table::new(backends, vec![true, true], 1, &h);
        (
            Proxy::new(EDGE.parse().unwrap(), h, Limits::default(), true),
            t,
            BadInputLimiter::new(3, 4),
        )
    }

    fn invite(mf: u32, call_id: &str) -> Vec<u8> {
        format!(
            "INVITE sip:bob@biloxi.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKa1;rport\r\n\
Max-Forwards: {mf}\r\nTo: <sip:bob@biloxi.example>\r\nFrom: <sip:alice@a.example>;tag=f1\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.9.9.9:5060>\r\nContent-Length: 0\r\n\r\n"
        )
        .into_bytes()
    }

    /// A BYE inside the dialog of `invite(70, call_id)`.
    fn in_dialog_bye(call_id: &str) -> String {
        String::from_utf8(invite(70, call_id))
            .unwrap()
            .replace("INVITE sip:", "BYE sip:")
            .replace("1 INVITE", "2 BYE")
            .replace(
                "To: <sip:bob@biloxi.example>",
                "To: <sip:bob@biloxi.example>;tag=b1",
            )
    }

    fn run(
        p: &Proxy,
        t: &Table,
        l: &mut BadInputLimiter,
        from: &str,
        b: &[u8],
    ) -> (Outcome, Vec<u8>) {
        let mut out = vec![0u8; 65_536];
        let o = p.handle(t, l, 0, from.parse().unwrap(), b, &mut out);
        let n = match o {
            Outcome::Forward { len, .. } | Outcome::Reply { len, .. } => len,
            Outcome::Pong { .. } => 2,
            Outcome::Drop(_) => 0,
        };
        out.truncate(n);
        (o, out)
    }

    #[test]
    fn rfc3261_16_11_request_goes_to_the_shard_owner_with_via_and_record_route() {
        let (p, t, mut l) = setup();
        let (o, out) = run(&p, &t, &mut l, UA, &invite(70, "call-1@x"));
        let key = Hashing::default().affinity_key(b"call-1@x");
        let (i, owner) = t.route(key).unwrap();
        assert_eq!(
            o,
            Outcome::Forward {
                to: owner.into(),
                len: out.len(),
                peer: Peer::Backend(i),
                request: true
            }
        );
        let m = scan(&out).unwrap();
        let vias: Vec<_> = m.vias().collect();
        assert_eq!(vias[0].host(), b"192.0.2.1");
        assert_eq!(
            vias[0].param(b"k").unwrap().value.unwrap().of(&out),
            &hex_u64(key)[..]
        );
        assert_eq!(
            vias[1].received(),
            Some(&b"198.51.100.7"[..]),
            "RFC 3581 received"
        );
        assert_eq!(vias[1].rport(), handover_sip::Rport::Value(33333));
        assert_eq!(m.max_forwards(), Some(69));
        let rr = m.record_routes().next().unwrap();
        assert_eq!(rr.uri().host(), b"192.0.2.1");
        assert_eq!(rr.uri().param(b"k"), Some(&hex_u64(key)[..]));
        assert!(rr.uri().param(b"lr").is_some());
        // A retransmission goes the same way with the same branch (§16.11).
        let (o2, out2) = run(&p, &t, &mut l, UA, &invite(70, "call-1@x"));
        assert_eq!(o, o2);
        assert_eq!(out, out2);
    }

    #[test]
    fn in_dialog_request_with_our_route_uses_its_key() {
        let (p, t, mut l) = setup();
        // Pick a key owned by backend 1 and put it in our Route.
        let k = t.key_for_backend(1).unwrap();
        let bye = format!(
            "BYE sip:bob@10.0.0.2:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKb1\r\n\
Route: <sip:192.0.2.1:5060;lr;k={}>\r\nMax-Forwards: 70\r\nTo: <sip:bob@biloxi.example>;tag=t\r\n\
From: <sip:alice@a.example>;tag=f1\r\nCall-ID: other-hash@x\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n",
            String::from_utf8(hex_u64(k).to_vec()).unwrap()
        );
        let (o, out) = run(&p, &t, &mut l, UA, bye.as_bytes());
        assert!(
            matches!(
                o,
                Outcome::Forward {
                    peer: Peer::Backend(1),
                    ..
                }
            ),
            "{o:?}"
        );
        let m = scan(&out).unwrap();
        assert!(m.route_field().is_none(), "our Route is removed (§16.4)");
        assert!(
            m.record_route_field().is_none(),
            "no Record-Route on in-dialog requests"
        );
    }

    #[test]
    fn responses_follow_via_only_when_our_branch_proves_it() {
        let (p, t, mut l) = setup();
        let (_, fwd) = run(&p, &t, &mut l, UA, &invite(70, "call-2@x"));
        let m = scan(&fwd).unwrap();
        let ours = String::from_utf8(m.vias().next().unwrap().span().of(&fwd).to_vec()).unwrap();
        let theirs = String::from_utf8(m.vias().nth(1).unwrap().span().of(&fwd).to_vec()).unwrap();
        let resp = |top: &str, next: &str| {
            format!(
                "SIP/2.0 180 Ringing\r\nVia: {top}\r\nVia: {next}\r\nTo: <sip:bob@biloxi.example>;tag=t\r\n\
From: <sip:alice@a.example>;tag=f1\r\nCall-ID: call-2@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let (o, out) = run(
            &p,
            &t,
            &mut l,
            "10.0.0.1:5070",
            resp(&ours, &theirs).as_bytes(),
        );
        assert!(
            matches!(o, Outcome::Forward { to, request: false, .. } if to == UA.parse().unwrap()),
            "{o:?}"
        );
        assert_eq!(scan(&out).unwrap().vias().count(), 1);
        // Forged: same Via of ours, a victim's address below it.
        let victim = "SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKv;received=203.0.113.9";
        let (o, _) = run(
            &p,
            &t,
            &mut l,
            "10.0.0.1:5070",
            resp(&ours, victim).as_bytes(),
        );
        assert_eq!(o, Outcome::Drop(Drop::Forged));
        let (o, _) = run(
            &p,
            &t,
            &mut l,
            "10.0.0.1:5070",
            resp(&theirs, victim).as_bytes(),
        );
        assert_eq!(o, Outcome::Drop(Drop::NotOurs));
    }

    #[test]
    fn a_source_over_its_new_dialog_budget_gets_503_with_retry_after() {
        let (p, t, _) = setup();
        let mut l = BadInputLimiter::new(0, 4).with_new_dialogs(2);
        let mut out = vec![0u8; 65_536];
        let mut go = |l: &mut BadInputLimiter, sec: u32, from: &str, b: &[u8]| {
            let o = p.handle(&t, l, sec, from.parse().unwrap(), b, &mut out);
            let n = match o {
                Outcome::Forward { len, .. } | Outcome::Reply { len, .. } => len,
                Outcome::Pong { .. } => 2,
                Outcome::Drop(_) => 0,
            };
            (o, String::from_utf8_lossy(&out[..n]).into_owned())
        };
        for i in 0..2 {
            let (o, _) = go(&mut l, 7, UA, &invite(70, &format!("c{i}@x")));
            assert!(matches!(o, Outcome::Forward { .. }), "{o:?}");
        }
        // A retransmission of an admitted INVITE still goes (its call must
        // not be failed by a 503 to its own copy).
        let (o, _) = go(&mut l, 7, UA, &invite(70, "c1@x"));
        assert!(
            matches!(o, Outcome::Forward { .. }),
            "retransmission: {o:?}"
        );
        let (o, text) = go(&mut l, 7, UA, &invite(70, "c2@x"));
        assert!(matches!(o, Outcome::Reply { status: 503, .. }), "{o:?}");
        assert!(
            text.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
        // In-dialog requests of the same source, and other sources, go on.
        let bye = in_dialog_bye("c0@x");
        let (o, _) = go(&mut l, 7, UA, bye.as_bytes());
        assert!(matches!(o, Outcome::Forward { .. }), "in-dialog: {o:?}");
        let (o, _) = go(&mut l, 7, "10.8.8.8:5060", &invite(70, "other@x"));
        assert!(
            matches!(o, Outcome::Forward { .. }),
            "another source: {o:?}"
        );
        // The next second, the budget is back.
        let (o, _) = go(&mut l, 8, UA, &invite(70, "c3@x"));
        assert!(matches!(o, Outcome::Forward { .. }), "{o:?}");
        // Without a budget, nothing is refused.
        let mut off = BadInputLimiter::new(0, 4).with_new_dialogs(0);
        for i in 0..50 {
            let (o, _) = go(&mut off, 9, UA, &invite(70, &format!("d{i}@x")));
            assert!(matches!(o, Outcome::Forward { .. }), "{o:?}");
        }
    }

    #[test]
    fn a_source_at_twice_its_budget_is_banned_for_a_while() {
        let (p, t, _) = setup();
        let mut l = BadInputLimiter::new(0, 4).with_new_dialogs(2).with_ban(5);
        let mut out = vec![0u8; 65_536];
        let mut go = |l: &mut BadInputLimiter, sec: u32, b: &[u8]| {
            p.handle(&t, l, sec, UA.parse().unwrap(), b, &mut out)
        };
        let mut seen = Vec::new();
        for i in 0..6 {
            seen.push(match go(&mut l, 7, &invite(70, &format!("b{i}@x"))) {
                Outcome::Forward { .. } => "fwd",
                Outcome::Reply { status: 503, .. } => "503",
                Outcome::Drop(Drop::Banned) => "banned",
                o => panic!("{o:?}"),
            });
        }
        // Two in budget, two refused (the fourth makes twice the budget),
        // then silence.
        assert_eq!(seen, ["fwd", "fwd", "503", "503", "banned", "banned"]);
        assert!(matches!(
            go(&mut l, 11, &invite(70, "b9@x")),
            Outcome::Drop(Drop::Banned)
        ));
        // In-dialog requests of the banned source still pass.
        let bye = in_dialog_bye("b0@x");
        assert!(matches!(
            go(&mut l, 11, bye.as_bytes()),
            Outcome::Forward { .. }
        ));
        // The ban ends after 5 s.
        assert!(matches!(
            go(&mut l, 12, &invite(70, "b10@x")),
            Outcome::Forward { .. }
        ));
        // Without a ban, refusals go on as 503s.
        let mut nb = BadInputLimiter::new(0, 4).with_new_dialogs(1).with_ban(0);
        for i in 0..5 {
            let o = go(&mut nb, 7, &invite(70, &format!("n{i}@x")));
            assert!(
                i == 0 || matches!(o, Outcome::Reply { status: 503, .. }),
                "{o:?}"
            );
        }
    }

    #[test]
    fn rfc3261_16_3_limits_and_loops_are_answered() {
        let (p, t, mut l) = setup();
        let (o, out) = run(&p, &t, &mut l, UA, &invite(0, "mf0@x"));
        assert!(matches!(o, Outcome::Reply { status: 483, .. }), "{o:?}");
        assert!(out.starts_with(b"SIP/2.0 483 Too Many Hops\r\n"));
        // Our own forward comes back unchanged: 482.
        let mut l2 = BadInputLimiter::new(0, 4);
        let (_, fwd) = run(&p, &t, &mut l2, UA, &invite(70, "loop@x"));
        let looped = String::from_utf8(fwd).unwrap().replacen(
            "Via: ",
            "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKx\r\nVia: ",
            1,
        );
        let (o, _) = run(&p, &t, &mut l2, "10.0.0.1:5070", looped.as_bytes());
        assert!(matches!(o, Outcome::Reply { status: 482, .. }), "{o:?}");
        // Nothing up: 503.
        let none = Table::new(
            t.backends().to_vec(),
            vec![false, false],
            2,
            &Hashing::default(),
        );
        let (o, _) = run(&p, &none, &mut l2, UA, &invite(70, "n@x"));
        assert!(matches!(o, Outcome::Reply { status: 503, .. }), "{o:?}");
    }

    #[test]
    fn keepalives_junk_and_the_per_source_limit() {
        let (p, t, mut l) = setup();
        // RFC 5626 §4.4.1: a double-CRLF ping gets a CRLF pong; a lone
        // CRLF (some phones' NAT keep-alive) is dropped.
        let (o, pong) = run(&p, &t, &mut l, UA, b"\r\n\r\n");
        assert_eq!(
            (o, pong.as_slice()),
            (
                Outcome::Pong {
                    to: UA.parse().unwrap()
                },
                &b"\r\n"[..]
            )
        );
        assert_eq!(
            run(&p, &t, &mut l, UA, b"\r\n").0,
            Outcome::Drop(Drop::Keepalive)
        );
        // Three bad datagrams are answered or dropped; the fourth is limited.
        for _ in 0..3 {
            let (o, _) = run(&p, &t, &mut l, UA, b"\x00\x01garbage");
            assert_eq!(o, Outcome::Drop(Drop::Malformed(Reason::NotSip)));
        }
        assert_eq!(
            run(&p, &t, &mut l, UA, &invite(70, "ok@x")).0,
            Outcome::Drop(Drop::RateLimited)
        );
        // Another source is not affected.
        assert!(matches!(
            run(&p, &t, &mut l, "198.51.100.8:5060", &invite(70, "ok@x")).0,
            Outcome::Forward { .. }
        ));
        // A bad request with a usable Via gets 400 naming the header.
        let (p, t, mut l) = setup();
        let bad = String::from_utf8(invite(70, "b@x"))
            .unwrap()
            .replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
        let (o, out) = run(&p, &t, &mut l, UA, bad.as_bytes());
        assert!(matches!(o, Outcome::Reply { status: 400, to, .. } if to == UA.parse().unwrap()));
        assert!(out.starts_with(b"SIP/2.0 400 CSeq method does not match request method\r\n"));
    }

    #[test]
    fn worker_delegated_via_goes_out_alone_and_answers_come_back_by_key() {
        let (p, t, mut l) = setup();
        let k = t.key_for_backend(1).unwrap();
        let kh = String::from_utf8(hex_u64(k).to_vec()).unwrap();
        let inv = format!(
            "INVITE sip:carol@203.0.113.5:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k={kh}\r\n\
Max-Forwards: 70\r\nTo: <sip:carol@c.example>\r\nFrom: <sip:b2bua@192.0.2.1>;tag=w\r\nCall-ID: leg-b@x\r\n\
CSeq: 1 INVITE\r\nContact: <sip:b2bua@192.0.2.1:5060;k={kh}>\r\nContent-Length: 0\r\n\r\n"
        );
        let (o, out) = run(&p, &t, &mut l, "10.0.0.2:5070", inv.as_bytes());
        assert!(
            matches!(o, Outcome::Forward { peer: Peer::Client, request: true, to, .. } if to == "203.0.113.5:5060".parse().unwrap()),
            "{o:?}"
        );
        let m = scan(&out).unwrap();
        assert_eq!(
            m.vias().count(),
            1,
            "the callee sees the edge's address only"
        );
        assert_eq!(m.top_via().branch(), Some(&b"z9hG4bKw1"[..]));
        assert!(m.record_route_field().is_none());
        assert_eq!(m.max_forwards(), Some(69));
        // The 180 from the callee: our Via alone, routed by k to the owner.
        let ringing = format!(
            "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k={kh};received=192.0.2.1\r\n\
To: <sip:carol@c.example>;tag=c\r\nFrom: <sip:b2bua@192.0.2.1>;tag=w\r\nCall-ID: leg-b@x\r\nCSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n"
        );
        let (o, out) = run(&p, &t, &mut l, "203.0.113.5:5060", ringing.as_bytes());
        assert!(
            matches!(
                o,
                Outcome::Forward {
                    peer: Peer::Backend(1),
                    request: false,
                    ..
                }
            ),
            "{o:?}"
        );
        assert_eq!(out, ringing.as_bytes(), "passed on unchanged");
        // After a failover the same key goes to the new owner.
        let one_down = Table::new(
            t.backends().to_vec(),
            vec![true, false],
            2,
            &Hashing::default(),
        );
        let (o, _) = run(
            &p,
            &one_down,
            &mut l,
            "203.0.113.5:5060",
            ringing.as_bytes(),
        );
        assert!(
            matches!(
                o,
                Outcome::Forward {
                    peer: Peer::Backend(0),
                    ..
                }
            ),
            "{o:?}"
        );
        // Our Via alone without a key cannot be routed.
        let no_k = ringing.replace(&format!(";k={kh}"), "");
        assert_eq!(
            run(&p, &t, &mut l, "203.0.113.5:5060", no_k.as_bytes()).0,
            Outcome::Drop(Drop::Unroutable)
        );
    }

    #[test]
    fn a_register_goes_to_the_owner_of_its_aor_and_a_call_to_a_binding_to_its_flow() {
        let (p, t, mut l) = setup();
        let reg = |call_id: &str, to: &str| {
            format!(
                "REGISTER sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK{call_id}\r\n\
Max-Forwards: 70\r\nTo: <{to}>\r\nFrom: <sip:alice@a.example>;tag=f1\r\n\
Call-ID: {call_id}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@10.9.9.9:5060>\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let key = Hashing::default().affinity_key(b"alice@a.example");
        let owner = t.route(key).unwrap().1;
        // Whatever the Call-ID, the AOR (host in any case, any port) picks the worker.
        for (id, to) in [
            ("r1", "sip:alice@a.example"),
            ("r2", "sip:alice@A.Example:5062"),
        ] {
            let (o, _) = run(&p, &t, &mut l, UA, reg(id, to).as_bytes());
            assert!(
                matches!(o, Outcome::Forward { to, .. } if to == owner.into()),
                "{o:?}"
            );
        }
        // A worker's INVITE to the phone: our Route with the flow the
        // REGISTER came from; the private Contact stays the Request-URI.
        let inv = "INVITE sip:alice@10.9.9.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k=0000000000000001\r\n\
Route: <sip:192.0.2.1:5060;lr;flow=198.51.100.7:33333>\r\nMax-Forwards: 70\r\nTo: <sip:alice@a.example>\r\n\
From: <sip:bob@b.example>;tag=w1\r\nCall-ID: w@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", inv.as_bytes());
        assert!(
            matches!(o, Outcome::Forward { to, peer: Peer::Client, .. } if to == UA.parse().unwrap()),
            "{o:?}"
        );
        let m = scan(&out).unwrap();
        assert!(m.route_field().is_none(), "our Route is removed");
        assert_eq!(m.request_uri().unwrap().host(), b"10.9.9.9");
        // From a client (a PBX calling through our Path), a flow in our
        // Route is not obeyed: it goes to a worker, Route kept when it has
        // a token (`ft`), and the worker checks the token.
        let inv = inv.replace("flow=198.51.100.7:33333>", "flow=198.51.100.7:33333;ft=00>");
        let (o, out) = run(&p, &t, &mut l, UA, inv.as_bytes());
        assert!(
            matches!(
                o,
                Outcome::Forward {
                    peer: Peer::Backend(_),
                    ..
                }
            ),
            "{o:?}"
        );
        let m = scan(&out).unwrap();
        let r = m.top_route().unwrap().unwrap();
        assert_eq!(r.uri().param(b"flow"), Some(&b"198.51.100.7:33333"[..]));
    }

    #[test]
    fn requests_from_a_backend_go_out_by_route_or_request_uri() {
        let (p, t, mut l) = setup();
        let bye = "BYE sip:alice@198.51.100.7:33333 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKs1\r\n\
Route: <sip:192.0.2.1:5060;lr;k=0000000000000001>\r\nMax-Forwards: 70\r\nTo: <sip:alice@a.example>;tag=f1\r\n\
From: <sip:bob@biloxi.example>;tag=t\r\nCall-ID: c@x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", bye.as_bytes());
        assert!(
            matches!(o, Outcome::Forward { to, peer: Peer::Client, .. } if to == UA.parse().unwrap()),
            "{o:?}"
        );
        assert!(scan(&out).unwrap().route_field().is_none());
        // A backend's new INVITE is record-routed with a key it owns.
        let inv = String::from_utf8(invite(70, "out@x"))
            .unwrap()
            .replace(
                "INVITE sip:bob@biloxi.example",
                "INVITE sip:carol@203.0.113.5:5060",
            )
            .replace("10.9.9.9:5060;branch", "10.0.0.2:5070;branch");
        let (o, out) = run(&p, &t, &mut l, "10.0.0.2:5070", inv.as_bytes());
        assert!(
            matches!(
                o,
                Outcome::Forward {
                    peer: Peer::Client,
                    ..
                }
            ),
            "{o:?}"
        );
        let m = scan(&out).unwrap();
        let k =
            parse_hex_u64(m.record_routes().next().unwrap().uri().param(b"k").unwrap()).unwrap();
        assert_eq!(
            t.route(k).unwrap().0,
            1,
            "answers come back to the backend that called"
        );
        // A host name cannot be forwarded to.
        let named = inv.replace("carol@203.0.113.5:5060", "carol@pbx.example");
        assert_eq!(
            run(&p, &t, &mut l, "10.0.0.2:5070", named.as_bytes()).0,
            Outcome::Drop(Drop::Unroutable)
        );
    }

    fn stream_proxy() -> (Proxy, Table, BadInputLimiter) {
        let (p, t, l) = setup();
        let p = p
            .with_listener(Transport::Tcp, EDGE.parse().unwrap())
            .with_listener(Transport::Tls, "192.0.2.1:5061".parse().unwrap());
        (p, t, l)
    }

    #[test]
    fn a_request_on_a_stream_records_its_connection_and_the_answer_goes_back_on_it() {
        let (p, t, mut l) = stream_proxy();
        let inv = String::from_utf8(invite(70, "tls-1@x")).unwrap().replace(
            "SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKa1;rport",
            "SIP/2.0/TLS 10.9.9.9:5061;branch=z9hG4bKa1",
        );
        let from = "tls:198.51.100.7:40001";
        let (o, out) = run(&p, &t, &mut l, from, inv.as_bytes());
        assert!(
            matches!(o, Outcome::Forward { peer: Peer::Backend(_), to, .. } if to.transport == Transport::Udp),
            "{o:?}"
        );
        let m = scan(&out).unwrap();
        // Our Via to the worker is UDP; the phone's now names the connection.
        assert_eq!(m.top_via().transport(), b"UDP");
        let phone = m.vias().nth(1).unwrap();
        assert_eq!(phone.flow().unwrap().to_string(), from);
        // The Record-Route names our TLS listener and the flow, so the
        // phone's in-dialog requests come back over TLS and the worker's
        // reach the phone on this connection.
        let rr = m.record_routes().next().unwrap();
        assert_eq!(rr.uri().port(), Some(5061));
        assert_eq!(rr.uri().param(b"transport"), Some(&b"tls"[..]));
        assert_eq!(rr.uri().param(b"flow"), Some(from.as_bytes()));
        // The worker's 200 comes back through our Via and goes out on the
        // connection, not to the Via's sent-by port.
        let ok = String::from_utf8(out.clone())
            .unwrap()
            .replacen("INVITE sip:bob@biloxi.example SIP/2.0", "SIP/2.0 200 OK", 1)
            .replace(
                "To: <sip:bob@biloxi.example>",
                "To: <sip:bob@biloxi.example>;tag=w",
            );
        let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", ok.as_bytes());
        assert!(
            matches!(o, Outcome::Forward { peer: Peer::Client, request: false, to, .. } if to == from.parse().unwrap()),
            "{o:?}"
        );
        assert_eq!(scan(&out).unwrap().vias().count(), 1);
    }

    #[test]
    fn a_worker_request_to_a_stream_flow_goes_on_it_naming_that_transport() {
        let (p, t, mut l) = stream_proxy();
        let inv = "INVITE sip:alice@10.9.9.9:5060;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k=0000000000000001\r\n\
Route: <sip:192.0.2.1:5060;lr;flow=tcp:198.51.100.7:40002>\r\nMax-Forwards: 70\r\nTo: <sip:alice@a.example>\r\n\
From: <sip:bob@b.example>;tag=w1\r\nCall-ID: w@x\r\nCSeq: 1 INVITE\r\nContact: <sip:192.0.2.1:5060;k=0000000000000001>\r\nContent-Length: 0\r\n\r\n";
        let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", inv.as_bytes());
        assert!(
            matches!(o, Outcome::Forward { peer: Peer::Client, request: true, to, .. } if to == "tcp:198.51.100.7:40002".parse().unwrap()),
            "{o:?}"
        );
        let m = scan(&out).unwrap();
        assert_eq!(m.top_via().transport(), b"TCP");
        assert_eq!(m.vias().count(), 1);
        let rr = m.record_routes().next().unwrap();
        assert_eq!(rr.uri().param(b"transport"), Some(&b"tcp"[..]));
        assert_eq!(rr.uri().param(b"k"), Some(&b"0000000000000001"[..]));
        assert_eq!(
            rr.uri().param(b"flow"),
            Some(&b"tcp:198.51.100.7:40002"[..])
        );
        // The phone's BYE comes back by that Record-Route (our TCP listener).
        let bye = "BYE sip:192.0.2.1:5060;k=0000000000000001 SIP/2.0\r\nVia: SIP/2.0/TCP 10.9.9.9:5060;branch=z9hG4bKp1\r\n\
Route: <sip:192.0.2.1:5060;transport=tcp;lr;k=0000000000000001;flow=tcp:198.51.100.7:40002>\r\n\
Max-Forwards: 70\r\nTo: <sip:bob@b.example>;tag=w1\r\nFrom: <sip:alice@a.example>;tag=a1\r\nCall-ID: w@x\r\n\
CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        let (o, out) = run(&p, &t, &mut l, "tcp:198.51.100.7:40002", bye.as_bytes());
        let owner = t.route(1).unwrap();
        assert!(
            matches!(o, Outcome::Forward { peer: Peer::Backend(i), .. } if i == owner.0),
            "{o:?}"
        );
        assert!(
            scan(&out).unwrap().route_field().is_none(),
            "our Route is ours to remove"
        );
    }

    #[test]
    fn rfc5626_5_3_a_request_for_a_gone_flow_is_answered_430() {
        let (p, _, _) = stream_proxy();
        let inv = "INVITE sip:alice@10.9.9.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k=1\r\n\
Max-Forwards: 70\r\nTo: <sip:alice@a.example>\r\nFrom: <sip:bob@b.example>;tag=w1\r\nCall-ID: w@x\r\n\
CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        let mut out = vec![0u8; 4096];
        let n = p.flow_failed(inv.as_bytes(), &mut out).unwrap();
        let m = scan(&out[..n]).unwrap();
        assert_eq!(m.status(), Some(430));
        assert!(out.starts_with(b"SIP/2.0 430 Flow Failed\r\n"));
        let ack = inv
            .replace("INVITE sip", "ACK sip")
            .replace("1 INVITE", "1 ACK");
        assert_eq!(
            p.flow_failed(ack.as_bytes(), &mut out),
            None,
            "no answer to an ACK"
        );
    }

    #[test]
    fn rfc3263_a_target_uri_with_transport_tcp_is_reached_on_a_connection() {
        let (p, t, mut l) = stream_proxy();
        let inv = "INVITE sip:b@203.0.113.5:5070;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw9;k=0000000000000001\r\n\
Max-Forwards: 70\r\nTo: <sip:b@b.example>\r\nFrom: <sip:a@a.example>;tag=w1\r\nCall-ID: out@x\r\n\
CSeq: 1 INVITE\r\nContact: <sip:192.0.2.1:5060;k=0000000000000001>\r\nContent-Length: 0\r\n\r\n";
        let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", inv.as_bytes());
        assert!(
            matches!(o, Outcome::Forward { peer: Peer::Connect, to, .. } if to == "tcp:203.0.113.5:5070".parse().unwrap()),
            "{o:?}"
        );
        let m = scan(&out).unwrap();
        assert_eq!(m.top_via().transport(), b"TCP");
        assert_eq!(
            m.record_routes().next().unwrap().uri().param(b"flow"),
            Some(&b"tcp:203.0.113.5:5070"[..])
        );
        // sips: means TLS, 5061 by default; no transport: UDP as before.
        let sips = inv.replace("sip:b@203.0.113.5:5070;transport=tcp", "sips:b@203.0.113.5");
        let (o, _) = run(&p, &t, &mut l, "10.0.0.1:5070", sips.as_bytes());
        assert!(
            matches!(o, Outcome::Forward { to, .. } if to == "tls:203.0.113.5:5061".parse().unwrap()),
            "{o:?}"
        );
        let udp = inv.replace(";transport=tcp", "");
        let (o, _) = run(&p, &t, &mut l, "10.0.0.1:5070", udp.as_bytes());
        assert!(
            matches!(o, Outcome::Forward { peer: Peer::Client, to, .. } if to == "203.0.113.5:5070".parse().unwrap()),
            "{o:?}"
        );
    }
}
