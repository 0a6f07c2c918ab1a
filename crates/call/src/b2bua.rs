//! The B2BUA's basic call, sans-IO (RFC 3261 §13–15 as a UAS on leg A and
//! a UAC on leg B): an INVITE from A becomes a new INVITE to the routed
//! target B (new Call-ID, tags and CSeq space, same affinity key, SDP
//! passed through); 1xx/2xx/errors are relayed back; each leg gets its own
//! ACK; a BYE from either side ends both; CANCEL from A cancels B.
//!
//! In-dialog re-INVITE, UPDATE, INFO, OPTIONS and MESSAGE are relayed to
//! the other leg in its own dialog (own CSeq), answers relayed back;
//! crossing re-INVITEs get 491 (RFC 3261 §14.2). REFER, NOTIFY and
//! SUBSCRIBE are relayed the same way (transfer in passthrough mode: the
//! phones do the transfer), with their end-to-end headers (Refer-To,
//! Referred-By, Event, Subscription-State) unchanged. PRACK is answered
//! 501.
//!
//! Every request of ours goes out through the edge (its Via and Contact
//! name the edge's advertised address and carry the key `k`, so the callee
//! sees only the edge and answers come back to the key's owner); every
//! response goes to the top Via of the request it answers.
//!
//! Call order: `handle_datagram` (or `handle_message`) for each datagram,
//! `handle_timeout` at `poll_timeout`; after each, drain `poll_transmit`.
//!
//! Where things are: this file holds the B2BUA and routes a message to
//! its call; `call.rs` a call's state (its transactions, relays,
//! transfers and deadlines);
//! `setup.rs` the B leg (INVITE, failover, CANCEL, answers, teardown),
//! `relay.rs` in-dialog requests relayed between the legs, `refer.rs` the
//! checks of a relayed REFER, `local.rs` transfers the B2BUA carries out,
//! `replica.rs` call records and adoption, `remote.rs` calls of other
//! workers named by a Replaces.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use handover_sip::build::{cancel_for, error_response, response, response_with_body};
use handover_sip::ids::{Bound, Hashing, IdGen, Token, hex_u64, parse_hex_u64};
use handover_sip::{HeaderName, Message, Method, NameAddr, scan};
use handover_txn::{
    ClientInvite, ClientNonInvite, Event, Instant, InviteState, Key, NonInviteState, ServerInvite,
    ServerInviteState, ServerNonInvite, ServerNonInviteState, TimerConfig,
};
use rand_core::RngCore;

use crate::dialog::{Dialog, DialogState};
use crate::routing::{Routes, TransferMode};

mod call;
mod detail;
mod endpoint;
mod fork;
mod local;
mod refer;
mod register;
mod relay;
mod remote;
mod replica;
mod setup;
mod timers;
mod types;
use crate::transfer::{self, Replaces};
use call::*;
pub use detail::{CallDetail, Detail, EndCause, TransferDetail};
use endpoint::Endpoint;
use local::Local;
pub use register::{AuthStats, Target};
pub use replica::{CallRecord, LocalRecord, PendingRequest, ReferRecord, Replication};
pub use types::{Config, Latency, Stats, TransferEvent, TransferResult};

/// All calls of one worker: the endpoint (what every call shares) and
/// the calls, found by Call-ID, with their deadlines.
#[derive(Debug)]
pub struct B2bua<R> {
    ep: Endpoint<R>,
    /// Boxed: a `Call` is about 2 kB, and the table's empty buckets would
    /// each cost as much (at 100,000 calls, 131,072 buckets).
    calls: HashMap<u64, Box<Call>>,
    next_ref: u64,
    /// (deadline, call), earliest first; entries go stale when a call's
    /// deadline moves and are skipped when popped.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
}

/// The headers a B2BUA passes from one leg to the other unchanged: all but
/// those each leg has of its own (dialog and transaction: From, To,
/// Call-ID, CSeq; transport and routing: Via, Route, Record-Route,
/// Max-Forwards, Contact; the body's, which the builder writes). Refer-To,
/// Referred-By, Event, Subscription-State, Replaces, Supported, Allow, …
/// pass through; Via, Route, Record-Route and Contact never do, so no
/// internal address leaks.
///
/// Identity headers (RFC 3325, and the operator's `identity`) pass only
/// when `trusted` says their sender is a trusted peer.
fn end_to_end_headers<'m>(
    m: &Message<'m>,
    trusted: bool,
    identity: &[String],
) -> Vec<(&'m str, &'m [u8])> {
    let buf = m.buf();
    m.headers()
        .filter(|h| {
            !matches!(
                h.name,
                HeaderName::Via
                    | HeaderName::Route
                    | HeaderName::RecordRoute
                    | HeaderName::From
                    | HeaderName::To
                    | HeaderName::CallId
                    | HeaderName::CSeq
                    | HeaderName::MaxForwards
                    | HeaderName::Contact
                    | HeaderName::ContentLength
                    | HeaderName::ContentType
            )
        })
        .filter_map(|h| {
            Some((
                core::str::from_utf8(h.name_span.of(buf)).ok()?,
                h.value.of(buf),
            ))
        })
        .filter(|(name, _)| trusted || !crate::trust::is_identity(name, identity))
        // Credentials are for us (our realm) or for nobody on the other
        // leg: a caller's password hash never reaches the callee.
        .filter(|(name, _)| {
            !name.eq_ignore_ascii_case("authorization")
                && !name.eq_ignore_ascii_case("proxy-authorization")
        })
        .collect()
}

/// The address of a request's sender: the Via below the edge's (the edge
/// puts its own on top, with `received`/`rport` on the sender's).
fn sender_ip(m: &Message<'_>) -> Option<IpAddr> {
    m.vias().nth(1).and_then(|v| v.target()).map(|a| a.ip())
}

/// The IP literal a request we built is addressed to (its Request-URI):
/// the party whose responses answer it.
fn addressee_ip(request: &[u8]) -> Option<IpAddr> {
    uri_ip(scan(request).ok()?.request_uri()?.as_bytes())
}

/// The IP literal host of a URI (a dialog's remote target), if it has one.
pub(super) fn uri_ip(uri: &[u8]) -> Option<IpAddr> {
    let u = handover_sip::Uri::parse(uri, handover_sip::Span::new(0, uri.len())).ok()?;
    let host = u.host();
    let h = host
        .strip_prefix(b"[")
        .and_then(|h| h.strip_suffix(b"]"))
        .unwrap_or(host);
    core::str::from_utf8(h).ok()?.parse().ok()
}

/// The session interval a 2xx agrees on (RFC 4028 `Session-Expires:
/// delta-seconds[;refresher=…]`).
fn session_interval(m: &Message<'_>) -> Option<Duration> {
    let v = m.header(HeaderName::SessionExpires)?.value.of(m.buf());
    let digits = v.iter().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    // More digits than a u64 holds is as good as forever: clamped too.
    let secs: u64 = core::str::from_utf8(&v[..digits])
        .ok()?
        .parse()
        .unwrap_or(u64::MAX);
    (secs > 0).then(|| Duration::from_secs(secs.min(MAX_PEER_SECS)))
}

/// Where a response goes: the top Via's (`Via::target`).
fn via_target(m: &Message<'_>) -> Option<SocketAddr> {
    m.top_via().edge_target()
}

impl<R: RngCore> B2bua<R> {
    /// A B2BUA with `rng` for branches, tags and Call-IDs.
    pub fn new(cfg: Config, rng: R) -> Self {
        Self {
            ep: Endpoint::new(cfg, rng),
            calls: HashMap::new(),
            next_ref: 1,
            timers: BinaryHeap::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.ep.stats
    }

    /// Whether the disk that holds the replicated log is nearly full (the
    /// shell measures it). While it is, new calls and REGISTERs that would
    /// write bindings are answered 503 with Retry-After, so what is already
    /// acknowledged keeps room to be written (in-dialog changes, ends,
    /// lease renewals) and no replica dies of a full disk; calls in
    /// progress go on.
    pub fn set_storage_full(&mut self, full: bool) {
        self.ep.storage_full = full;
    }

    /// Calls in progress (not yet hung up or failed). Constant time (each
    /// call ends once, in exactly one of the ending counters), so the shell
    /// may read it after every datagram.
    pub fn calls_active(&self) -> usize {
        let s = &self.ep.stats;
        let ended = s.hung_up
            + s.failed
            + s.torn_down
            + s.operator_hangups
            + s.handed_over
            + s.ended_elsewhere
            + s.refused_records;
        let active = (s.started - ended) as usize;
        debug_assert_eq!(active, self.calls.values().filter(|c| !c.over).count());
        active
    }

    /// Calls held in memory: active ones, and ended ones whose
    /// transactions still absorb retransmissions.
    pub fn calls_held(&self) -> usize {
        self.calls.len()
    }

    /// The next datagram: `None` as destination means "to the edge".
    pub fn poll_transmit(&mut self) -> Option<(Option<SocketAddr>, Vec<u8>)> {
        let (to, b) = self
            .ep
            .out
            .pop_front()
            .or_else(|| self.ep.registrar.poll_transmit())?;
        Some((to.or_else(|| self.ep.flow_edge(&b)), b))
    }

    /// The next transfer report (for the shell's counters).
    pub fn poll_transfer(&mut self) -> Option<TransferEvent> {
        self.ep.transfers.pop_front()
    }

    /// The next latency sample (for the shell's histograms).
    pub fn poll_latency(&mut self) -> Option<(Latency, Duration)> {
        self.ep.latencies.pop_front()
    }

    /// Transactions not yet terminated, over all calls. Walks every call:
    /// call it from a periodic gauge update, not per datagram.
    pub fn transactions_active(&self) -> usize {
        self.calls
            .values()
            .map(|c| {
                usize::from(
                    c.a_srv.poll_timeout().is_some()
                        || c.a_srv.state() == ServerInviteState::Proceeding,
                ) + usize::from(c.b_cli.state() != InviteState::Terminated)
                    + c.nits
                        .iter()
                        .filter(|n| match n {
                            Nit::Client(_, t) => t.poll_timeout().is_some(),
                            Nit::Server(_, t, _) => t.poll_timeout().is_some(),
                        })
                        .count()
                    + c.relays
                        .iter()
                        .filter(|r| r.timeouts().next().is_some())
                        .count()
            })
            .sum()
    }

    /// Replaces `Config::max_calls_per_source`.
    pub fn set_max_calls_per_source(&mut self, n: usize) {
        self.ep.cfg.max_calls_per_source = n;
    }

    /// Replaces the `[sip]` limits (as `Config::limits`).
    pub fn set_limits(&mut self, limits: handover_sip::Limits) {
        self.ep.cfg.limits = limits;
    }

    /// Replaces the routes, the trusted peers and the extra identity
    /// headers (a reload): new calls and new transfers use them; a call
    /// in progress keeps the targets it was given (its next target on a
    /// ring timeout included).
    pub fn set_routing(
        &mut self,
        routes: crate::Routes,
        trusted: crate::trust::Trusted,
        identity_headers: Vec<String>,
    ) {
        self.ep.cfg.routes = routes;
        self.ep.cfg.trusted = trusted;
        self.ep.cfg.identity_headers = identity_headers;
    }

    /// Transaction records the calls hold, running or ended but not yet
    /// dropped (ended ones go when their call next runs): what a flood of
    /// requests inside calls costs in memory.
    pub fn transactions_held(&self) -> usize {
        self.calls
            .values()
            .map(|c| c.nits.len() + c.relays.len())
            .sum()
    }

    /// When to call `handle_timeout` next (the registrar's sweep is the
    /// shell's, see [`Self::sweep_registrations`]).
    pub fn poll_timeout(&self) -> Option<Instant> {
        let calls = self.timers.peek().map(|Reverse((t, _))| *t);
        match (calls, self.ep.registrar.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Files call `cref`'s next deadline, or forgets the call when it is
    /// over and nothing of it is still running.
    fn schedule(&mut self, cref: u64) {
        self.with_call(cref, |c, ep| c.replicate_call(ep));
        let Some(c) = self.calls.get_mut(&cref) else {
            return;
        };
        match c.next_timeout() {
            // A later deadline keeps the earlier entry: when it comes the
            // call's timers run (nothing is due) and it is filed again. An
            // entry per change instead left a call in set-up 6 in the heap
            // (160 bytes per call at the peak, `tests/memory.rs`).
            Some(t) if c.scheduled.is_none_or(|s| t < s) => {
                c.scheduled = Some(t);
                self.timers.push(Reverse((t, cref)));
            }
            Some(_) => {}
            None if c.over => {
                self.forget_call(cref);
            }
            None => {}
        }
    }

    /// Removes call `cref`, its Call-IDs and its count against its source.
    fn forget_call(&mut self, cref: u64) -> bool {
        let Some(c) = self.calls.remove(&cref) else {
            return false;
        };
        self.ep.forget_source(c.source);
        let local = c.local.as_ref().map(|l| l.t_call_id.as_slice());
        for id in [&*c.legs.a.call_id, &*c.legs.b.call_id]
            .into_iter()
            .chain(c.old_ids.iter().map(|id| &**id))
            .chain(local)
        {
            // Only this call's: a failed attended transfer gave the
            // target's Call-ID back to its own call.
            if self.ep.by_call_id.get(id) == Some(&cref) {
                self.ep.by_call_id.remove(id);
            }
        }
        true
    }

    /// One datagram from the edge (or a probe).
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        let m = match handover_sip::scan_with(bytes, &self.ep.cfg.limits) {
            Ok(m) => m,
            Err(e) => {
                let mut b = Vec::new();
                let tag = self.ep.ids.tag();
                // The answer goes back the way the request came: the edge.
                if error_response(&e, Some(tag.as_bytes()), &mut b) {
                    self.ep.out.push_back((None, b));
                }
                return;
            }
        };
        self.handle_message(now, &m);
    }

    /// One message from the edge, already scanned (the worker scans each
    /// datagram once, for its shard check, and hands the result down).
    pub fn handle_message(&mut self, now: Instant, m: &Message<'_>) {
        let cref = self.ep.by_call_id.get(m.call_id()).copied();
        let touched = match (m.is_request(), cref) {
            (true, Some(c)) => {
                self.in_call_request(now, c, m);
                Some(c)
            }
            (false, Some(c)) => {
                self.in_call_response(now, c, m);
                Some(c)
            }
            (true, None) => self.new_request(now, m),
            (false, None) => {
                // The answer of a REGISTER relayed to a PBX, or nobody's.
                self.ep.registrar.relay_response(now, m);
                None
            }
        };
        if let Some(c) = touched {
            self.schedule(c);
            self.after_ack(now, c);
        }
    }

    fn new_request(&mut self, now: Instant, m: &Message<'_>) -> Option<u64> {
        match m.method() {
            Some(Method::Invite) if m.to_tag().is_none() => {
                let caller = self.authenticate_call(now, m)?;
                return self.new_call(now, m, caller);
            }
            Some(Method::Register) => self.register(now, m),
            Some(Method::Ack) => {}
            Some(Method::Options) => {
                let t = self.ep.ids.tag();
                self.ep.respond(m, 200, Some(t.as_bytes()));
            }
            _ if m.to_tag().is_some() => self.ep.respond(m, 481, None),
            _ => {
                let t = self.ep.ids.tag();
                self.ep.respond(m, 501, Some(t.as_bytes()));
            }
        }
        None
    }
}

impl Call {
    /// Moves the INVITE transactions' output of the call out.
    fn drain_outputs<R: RngCore>(&mut self, ep: &mut Endpoint<R>) {
        let call = &mut *self;
        while let Some(b) = call.a_srv.poll_transmit() {
            ep.out.push_back((call.a_target, b));
        }
        while let Some(b) = call.b_cli.poll_transmit() {
            ep.out.push_back((None, b));
        }
    }
}

impl<R: RngCore> B2bua<R> {
    /// Runs `f` on the call beside the endpoint; the default (nothing
    /// done) when the call is gone.
    fn with_call<T: Default>(
        &mut self,
        cref: u64,
        f: impl FnOnce(&mut Call, &mut Endpoint<R>) -> T,
    ) -> T {
        match self.calls.get_mut(&cref) {
            Some(c) => f(c, &mut self.ep),
            None => T::default(),
        }
    }
}
