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
//! Call order: `handle_datagram` for each datagram, `handle_timeout` at
//! `poll_timeout`; after each, drain `poll_transmit`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use handover_sip::build::{cancel_for, error_response, response, response_with_body};
use handover_sip::ids::{Hashing, IdGen, Token, hex_u64};
use handover_sip::{HeaderName, Message, Method, NameAddr, scan};
use handover_txn::{
    ClientInvite, ClientNonInvite, Event, Instant, InviteState, Key, ServerInvite,
    ServerInviteState, ServerNonInvite, TimerConfig,
};
use rand_core::RngCore;

use crate::dialog::{Dialog, DialogState};
use crate::routing::{Routes, TransferMode};

mod local;
mod remote;
mod replica;
use crate::transfer::{self, Replaces};
use local::Local;
pub use replica::{CallRecord, Replication};

/// Settings of the B2BUA.
#[derive(Debug, Clone)]
pub struct Config {
    /// The edge's advertised `IP:PORT`, named in our Via and Contact.
    pub advertised: String,
    /// Transaction timers.
    pub timers: TimerConfig,
    /// The cluster's hashing (affinity keys).
    pub hashing: Hashing,
    /// Where calls go.
    pub routes: Routes,
    /// A call answered this long ago is hung up on both legs, so no call
    /// whose phones vanished lives forever.
    pub max_call_age: Duration,
    /// A callee that rings this long without answering is cancelled; the
    /// route's next target is tried, or the caller gets 408 (no answer).
    pub ring_timeout: Duration,
    /// Transfer mode of calls whose route does not set one.
    pub transfer_mode: TransferMode,
    /// Peers whose identity headers (P-Asserted-Identity and kin) are
    /// passed on, and who are told the new party's after a local transfer;
    /// everyone else's are removed (`trust.rs`). Empty: nobody.
    pub trusted: crate::trust::Trusted,
}

/// Counters the shell exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls that arrived (INVITE from A).
    pub started: u64,
    /// Calls answered 2xx by B.
    pub answered: u64,
    /// Calls that ended after being answered (BYE).
    pub hung_up: u64,
    /// Calls that ended without an answer (error, cancel, timeout).
    pub failed: u64,
    /// Answered calls the B2BUA hung up itself: maximum call age reached,
    /// or a leg answered 408/481 to an in-dialog request.
    pub torn_down: u64,
    /// New B legs to a route's next target after 408, 503 or no answer.
    pub failovers: u64,
    /// Callees cancelled after ringing for the whole ring timeout.
    pub unanswered: u64,
    /// Datagrams resent because a timer fired (requests and 2xx responses
    /// retransmitted over UDP).
    pub retransmissions: u64,
    /// Calls taken over from their replica (counted in `started` too).
    pub adopted: u64,
    /// Replicated calls whose 2xx went to A without a commit (after the
    /// hold limit).
    pub unreplicated: u64,
    /// Calls handed over to another worker (their shard moved there; it
    /// carries them on from the replica).
    pub handed_over: u64,
    /// `Replaces` (in a REFER's Refer-To or an INVITE) naming a call of
    /// another worker, resolved from its replicated record.
    pub replaces_elsewhere: u64,
}

/// How a transfer the B2BUA relayed went (passthrough mode: the phones
/// transfer, the B2BUA relays REFER and NOTIFY and reports what it saw).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferResult {
    /// The transferee accepted the REFER (2xx).
    Accepted,
    /// The transferee refused the REFER (3xx–6xx).
    Rejected,
    /// A final NOTIFY reported the new call answered (sipfrag 2xx).
    Succeeded,
    /// A final NOTIFY reported the new call failed (sipfrag 3xx–6xx).
    Failed,
}

/// One transfer report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferEvent {
    /// Attended (`Replaces` in the Refer-To) rather than blind.
    pub attended: bool,
    /// Carried out by the B2BUA (local mode) rather than relayed.
    pub local: bool,
    /// What happened.
    pub result: TransferResult,
    /// Since the REFER arrived.
    pub elapsed: Duration,
}

/// What a latency sample measures, from the INVITE's arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Until the callee's first response (provisional or final), relayed.
    FirstResponse,
    /// Until the callee's 2xx, relayed.
    Answer,
}

/// One non-INVITE transaction of a call.
#[derive(Debug)]
enum Nit {
    Client(Key, ClientNonInvite),
    /// The transaction, and where its responses go (the request's top Via).
    Server(Key, ServerNonInvite, Option<SocketAddr>),
}

/// The server side of a relayed in-dialog request.
#[derive(Debug)]
enum Srv {
    Invite(ServerInvite),
    Other(ServerNonInvite),
}

/// The client side of a relayed in-dialog request.
#[derive(Debug)]
enum Cli {
    Invite(ClientInvite),
    Other(ClientNonInvite),
}

/// An in-dialog request relayed from one leg to the other (re-INVITE,
/// UPDATE, INFO, OPTIONS, MESSAGE): answered on its own leg with what the
/// other leg answers.
#[derive(Debug)]
struct Relay {
    /// It came from A (and went to B).
    from_a: bool,
    /// The request as received; a response to it copies from it.
    req: Vec<u8>,
    /// Where its responses go: its top Via.
    back: Option<SocketAddr>,
    srv_key: Key,
    srv: Srv,
    cli_key: Key,
    cli: Cli,
    /// The relayed request, for the ACK of its 2xx.
    out: Vec<u8>,
    /// Our ACK of the other leg's 2xx (resent when the 2xx is).
    ack: Option<Vec<u8>>,
    relayed_final: bool,
}

impl Relay {
    fn timeouts(&self) -> impl Iterator<Item = Instant> + use<> {
        let c = match &self.cli {
            Cli::Invite(c) => c.poll_timeout(),
            Cli::Other(c) => c.poll_timeout(),
        };
        let s = match &self.srv {
            Srv::Invite(s) => s.poll_timeout(),
            Srv::Other(s) => s.poll_timeout(),
        };
        [c, s].into_iter().flatten()
    }
}

/// A REFER the B2BUA relayed (passthrough mode) and the subscription it
/// created (RFC 3515 §2.4.4): NOTIFYs for it are relayed back until one
/// says `terminated`, the REFER is refused, or the subscription expires.
#[derive(Debug)]
struct Transfer {
    at: Instant,
    attended: bool,
    /// The REFER came from A (so its NOTIFYs come from B).
    from_a: bool,
    /// CSeq of the REFER as the transferor sent it, and of ours to the
    /// transferee: a NOTIFY's `Event: refer;id=` names ours and is
    /// translated back.
    cseq_in: u32,
    cseq_out: u32,
    /// The subscription ends here unless a NOTIFY extends it.
    until: Instant,
    done: bool,
}

impl Transfer {
    /// How long a REFER's subscription lasts before a NOTIFY says (RFC
    /// 3515 leaves it to the notifier; phones say 60 s).
    const DEFAULT_EXPIRY: Duration = Duration::from_secs(60);

    fn pending(&self, now: Instant) -> bool {
        !self.done && now < self.until
    }
}

/// The `expires=` of a Subscription-State value.
fn sub_expires(v: &[u8]) -> Option<Duration> {
    let i = v
        .windows(8)
        .position(|w| w.eq_ignore_ascii_case(b"expires="))?;
    let d: Vec<u8> = v[i + 8..]
        .iter()
        .copied()
        .take_while(u8::is_ascii_digit)
        .collect();
    if d.is_empty() {
        return None;
    }
    // Clamped: a notifier may say any number; a day bounds how long a
    // subscription's state is kept (RFC 6665 lets the subscriber shorten it).
    let secs: u64 = core::str::from_utf8(&d).ok()?.parse().unwrap_or(u64::MAX);
    Some(Duration::from_secs(secs.min(MAX_PEER_SECS)))
}

/// The longest interval a peer's number of seconds is taken for (one day):
/// the maximum call age ends calls long before in practice.
const MAX_PEER_SECS: u64 = 86_400;

#[derive(Debug)]
struct Call {
    key: u64,
    a_call_id: Vec<u8>,
    a_invite: Vec<u8>,
    /// Where answers to A go: the top Via of A's INVITE (the edge).
    a_target: Option<SocketAddr>,
    a_tag: Token,
    a_srv: ServerInvite,
    a_key: Key,
    a_dialog: Option<Dialog>,
    /// Our 2xx to A, resent (T1 doubling to T2) until A's ACK (§13.3.1.4).
    a_ok: Option<(Vec<u8>, Instant, Duration, Instant)>,
    b_call_id: Vec<u8>,
    b_invite: Vec<u8>,
    b_cli: ClientInvite,
    b_dialog: Option<Dialog>,
    b_ack: Option<Vec<u8>>,
    cancelled: bool,
    answered: bool,
    /// When an answered call reaches the maximum call age.
    answered_at: Option<Instant>,
    /// When the session expires unless refreshed (RFC 4028), if the
    /// parties agreed on a session timer.
    session_expires: Option<Instant>,
    /// When A's INVITE arrived.
    started_at: Instant,
    /// The callee's first response has been relayed.
    heard: bool,
    /// When the current target counts as not answering.
    ring_deadline: Option<Instant>,
    /// The current target was cancelled for not answering: its 487 means
    /// 408 (and failover) to us.
    no_answer: bool,
    /// The last REFER relayed and its implicit subscription.
    transfer: Option<Transfer>,
    /// REFERs on this call are carried out by the B2BUA (local mode).
    local_mode: bool,
    /// The last transfer carried out by the B2BUA.
    local: Option<Local>,
    /// Call-IDs of legs this call had before a transfer (still mapped to
    /// it while their transactions end).
    old_ids: Vec<Vec<u8>>,
    /// The route's targets, in the order to try them.
    targets: Vec<SocketAddr>,
    /// How many of them have been tried.
    tried: usize,
    over: bool,
    nits: Vec<Nit>,
    relays: Vec<Relay>,
    /// Version and fingerprint of the state last queued for replication.
    replicated: Option<(u64, u64)>,
    /// The 2xx for A, held until the call is committed (or the deadline).
    held_ok: Option<(u16, Vec<u8>, Instant)>,
}

impl Call {
    /// The earliest deadline of any of the call's transactions or of the
    /// 2xx it resends to A.
    fn next_timeout(&self) -> Option<Instant> {
        let nits = self.nits.iter().filter_map(|n| match n {
            Nit::Client(_, t) => t.poll_timeout(),
            Nit::Server(_, t, _) => t.poll_timeout(),
        });
        let sub = self.transfer.as_ref().filter(|t| !t.done).map(|t| t.until);
        let ring = self
            .ring_deadline
            .filter(|_| !self.over && !self.answered && !self.cancelled);
        let too_old = if self.over {
            None
        } else {
            match (self.answered_at, self.session_expires) {
                (Some(a), Some(e)) => Some(a.min(e)),
                (a, e) => a.or(e),
            }
        };
        [
            self.a_srv.poll_timeout(),
            self.b_cli.poll_timeout(),
            self.a_ok.as_ref().map(|o| o.1),
            self.held_ok.as_ref().map(|o| o.2),
            too_old,
            ring,
            sub,
        ]
        .into_iter()
        .flatten()
        .chain(nits)
        .chain(self.relays.iter().flat_map(Relay::timeouts))
        .chain(self.local.iter().flat_map(Local::timeouts))
        .min()
    }
}

/// All calls of one worker.
#[derive(Debug)]
pub struct B2bua<R> {
    cfg: Config,
    ids: IdGen<R>,
    calls: HashMap<u64, Call>,
    by_call_id: HashMap<Vec<u8>, u64>,
    next_ref: u64,
    /// (deadline, call), earliest first; entries go stale when a call's
    /// deadline moves and are skipped when popped.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    out: VecDeque<(Option<SocketAddr>, Vec<u8>)>,
    latencies: VecDeque<(Latency, Duration)>,
    transfers: VecDeque<TransferEvent>,
    stats: Stats,
    replicate: bool,
    replication: VecDeque<Replication>,
    /// Calls of other workers, learnt for one datagram (`remote.rs`).
    remote: Vec<CallRecord>,
}

/// The headers a B2BUA passes from one leg to the other unchanged: all but
/// those each leg has of its own (dialog and transaction: From, To,
/// Call-ID, CSeq; transport and routing: Via, Route, Record-Route,
/// Max-Forwards, Contact; the body's, which the builder writes). Refer-To,
/// Referred-By, Event, Subscription-State, Replaces, Supported, Allow, …
/// pass through; Via, Route, Record-Route and Contact never do, so no
/// internal address leaks.
///
/// Identity headers (RFC 3325) pass only when `trusted` says their sender
/// is a trusted peer.
fn end_to_end_headers<'m>(m: &Message<'m>, trusted: bool) -> Vec<(&'m str, &'m [u8])> {
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
        .filter(|(name, _)| trusted || !crate::trust::is_identity_header(name))
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
    m.top_via().target()
}

impl<R: RngCore> B2bua<R> {
    /// A B2BUA with `rng` for branches, tags and Call-IDs.
    pub fn new(cfg: Config, rng: R) -> Self {
        Self {
            cfg,
            ids: IdGen::new(rng),
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            next_ref: 1,
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            latencies: VecDeque::new(),
            transfers: VecDeque::new(),
            stats: Stats::default(),
            replicate: false,
            replication: VecDeque::new(),
            remote: Vec::new(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Calls in progress (not yet hung up or failed). Constant time (each
    /// call ends once, in exactly one of the ending counters), so the shell
    /// may read it after every datagram.
    pub fn calls_active(&self) -> usize {
        let s = &self.stats;
        let active = (s.started - s.hung_up - s.failed - s.torn_down - s.handed_over) as usize;
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
        self.out.pop_front()
    }

    /// The next transfer report (for the shell's counters).
    pub fn poll_transfer(&mut self) -> Option<TransferEvent> {
        self.transfers.pop_front()
    }

    /// The next latency sample (for the shell's histograms).
    pub fn poll_latency(&mut self) -> Option<(Latency, Duration)> {
        self.latencies.pop_front()
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

    /// When to call `handle_timeout` next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Files call `cref`'s next deadline, or forgets the call when it is
    /// over and nothing of it is still running.
    fn schedule(&mut self, cref: u64) {
        self.replicate_call(cref);
        let Some(c) = self.calls.get(&cref) else {
            return;
        };
        match c.next_timeout() {
            Some(t) => self.timers.push(Reverse((t, cref))),
            None if c.over => {
                if let Some(c) = self.calls.remove(&cref) {
                    let local = c.local.as_ref().map(|l| &l.t_call_id);
                    for id in [&c.a_call_id, &c.b_call_id]
                        .into_iter()
                        .chain(&c.old_ids)
                        .chain(local)
                    {
                        // Only this call's: a failed attended transfer
                        // gave the target's Call-ID back to its own call.
                        if self.by_call_id.get(id) == Some(&cref) {
                            self.by_call_id.remove(id);
                        }
                    }
                }
            }
            None => {}
        }
    }

    fn respond(&mut self, m: &Message<'_>, status: u16, to_tag: Option<&[u8]>) {
        let mut b = Vec::new();
        response(&m.reply_parts(), status, None, to_tag, &[], &mut b);
        self.out.push_back((via_target(m), b));
    }

    /// Our Via for a request of the call whose affinity key is `key`: the
    /// edge's address with the key, so the answer comes back to the
    /// shard's owner.
    fn via(&mut self, key: u64) -> Vec<u8> {
        let branch = self.ids.branch();
        let k = hex_u64(key);
        format!(
            "SIP/2.0/UDP {};branch={};k={}",
            self.cfg.advertised,
            branch,
            core::str::from_utf8(&k).unwrap_or_default()
        )
        .into_bytes()
    }

    /// Our Contact for the call whose affinity key is `key` (see [`Self::via`]).
    fn contact(&self, key: u64) -> Vec<u8> {
        let k = hex_u64(key);
        format!(
            "<sip:b2bua@{};k={}>",
            self.cfg.advertised,
            core::str::from_utf8(&k).unwrap_or_default()
        )
        .into_bytes()
    }

    /// One datagram from the edge (or a probe).
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        let m = match scan(bytes) {
            Ok(m) => m,
            Err(e) => {
                let mut b = Vec::new();
                let tag = self.ids.tag();
                // The answer goes back the way the request came: the edge.
                if error_response(&e, Some(tag.as_bytes()), &mut b) {
                    self.out.push_back((None, b));
                }
                return;
            }
        };
        self.handle_message(now, &m);
    }

    /// One message from the edge, already scanned (the worker scans each
    /// datagram once, for its shard check, and hands the result down).
    pub fn handle_message(&mut self, now: Instant, m: &Message<'_>) {
        let cref = self.by_call_id.get(m.call_id()).copied();
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
            (false, None) => None,
        };
        if let Some(c) = touched {
            self.schedule(c);
        }
    }

    fn new_request(&mut self, now: Instant, m: &Message<'_>) -> Option<u64> {
        match m.method() {
            Some(Method::Invite) if m.to_tag().is_none() => return self.new_call(now, m),
            Some(Method::Ack) => {}
            Some(Method::Options) => {
                let t = self.ids.tag();
                self.respond(m, 200, Some(t.as_bytes()));
            }
            _ if m.to_tag().is_some() => self.respond(m, 481, None),
            _ => {
                let t = self.ids.tag();
                self.respond(m, 501, Some(t.as_bytes()));
            }
        }
        None
    }

    /// The INVITE of a new B leg to `target` for A's INVITE `m`: its own
    /// Call-ID, tag and CSeq; A's From and SDP; Via and Contact naming the
    /// edge with the call's key.
    fn leg_b_invite(
        &mut self,
        m: &Message<'_>,
        key: u64,
        target: SocketAddr,
    ) -> (Vec<u8>, Vec<u8>) {
        let user = m.request_uri().and_then(|u| u.user()).unwrap_or_default();
        let b_call_id = self.ids.call_id().as_bytes().to_vec();
        let b_tag = self.ids.tag();
        let via = self.via(key);
        let contact = self.contact(key);
        let uri = format!("sip:{}@{}", String::from_utf8_lossy(user), target);
        let to = format!("<{uri}>");
        let from = m.from().map(|f| {
            let s = f.span();
            let p = f.params_span();
            m.buf()[s.start..if p.is_empty() { s.end } else { p.start }].to_vec()
        });
        let from = from.unwrap_or_else(|_| b"<sip:anonymous@anonymous.invalid>".to_vec());
        let body = m.content_type().map(|ct| (ct, m.body()));
        let mf = m.max_forwards().unwrap_or(70).saturating_sub(1).min(255) as u8;
        let headers = end_to_end_headers(m, self.cfg.trusted.contains(sender_ip(m)));
        let invite = handover_sip::build::Request {
            method: "INVITE",
            uri: uri.as_bytes(),
            via: &[&via],
            from: &from,
            from_tag: b_tag.as_bytes(),
            to: to.as_bytes(),
            call_id: &b_call_id,
            cseq: 1,
            max_forwards: mf,
            contact: Some(&contact),
            headers: &headers,
            body,
            ..Default::default()
        }
        .to_vec();
        (b_call_id, invite)
    }

    /// After 408, 503 or no answer from the current target, starts a new B
    /// leg to the route's next target. False when there is none left.
    fn fail_over(&mut self, now: Instant, cref: u64) -> bool {
        let Some(call) = self.calls.get_mut(&cref) else {
            return false;
        };
        if call.cancelled || call.answered || call.tried >= call.targets.len() {
            return false;
        }
        let target = call.targets[call.tried];
        call.tried += 1;
        let (a_bytes, key, old) = (call.a_invite.clone(), call.key, call.b_call_id.clone());
        let Ok(a) = scan(&a_bytes) else { return false };
        let (cid, invite) = self.leg_b_invite(&a, key, target);
        let timers = self.cfg.timers;
        let Some(call) = self.calls.get_mut(&cref) else {
            return false;
        };
        call.b_call_id = cid.clone();
        call.b_invite = invite.clone();
        call.b_cli = ClientInvite::new(now, timers, invite);
        call.heard = false;
        call.no_answer = false;
        call.ring_deadline = Some(now + self.cfg.ring_timeout);
        self.by_call_id.remove(&old);
        self.by_call_id.insert(cid, cref);
        self.stats.failovers += 1;
        self.drain_outputs(cref);
        true
    }

    /// Where an INVITE with `Replaces` (RFC 3891) goes when it names a
    /// dialog of ours as the party there knows it (`to-tag` theirs,
    /// `from-tag` ours): to that party's current target, whatever the
    /// routes say, so the new call reaches the dialog it replaces.
    fn replaced_target(&self, m: &Message<'_>) -> Option<SocketAddr> {
        let v = m.header(HeaderName::Replaces)?.value.of(m.buf());
        let r = Replaces::parse(v)?;
        let (_, a, b) = self.dialogs_of(&r.call_id)?;
        let d = [a, b].into_iter().find(|d| {
            d.id.call_id == r.call_id && d.id.remote_tag == r.to_tag && d.id.local_tag == r.from_tag
        })?;
        let t = &d.remote_target;
        let u = handover_sip::Uri::parse(t, handover_sip::Span::new(0, t.len())).ok()?;
        let ip: IpAddr = core::str::from_utf8(u.host()).ok()?.parse().ok()?;
        Some(SocketAddr::new(ip, u.port().unwrap_or(5060)))
    }

    fn new_call(&mut self, now: Instant, m: &Message<'_>) -> Option<u64> {
        if let Err(r) = m.ua_check() {
            let t = self.ids.tag();
            let mut b = Vec::new();
            response(
                &m.reply_parts(),
                r.status(),
                Some(&r),
                Some(t.as_bytes()),
                &[],
                &mut b,
            );
            self.out.push_back((via_target(m), b));
            return None;
        }
        let user = m.request_uri().and_then(|u| u.user()).unwrap_or_default();
        let host = m.request_uri().map_or(&b""[..], |u| u.host());
        let key = self.cfg.hashing.affinity_key(m.call_id());
        let (targets, mode) = match self.replaced_target(m) {
            Some(t) => (vec![t], None),
            None => self.cfg.routes.lookup(user, host, key),
        };
        let local_mode = mode.unwrap_or(self.cfg.transfer_mode) == TransferMode::Local;
        let Some(&target) = targets.first() else {
            let t = self.ids.tag();
            self.respond(m, 404, Some(t.as_bytes()));
            return None;
        };
        self.stats.started += 1;
        let a_tag = self.ids.tag();
        let a_srv = ServerInvite::new(now, self.cfg.timers, m);
        let (b_call_id, b_invite) = self.leg_b_invite(m, key, target);
        let b_cli = ClientInvite::new(now, self.cfg.timers, b_invite.clone());
        let cref = self.next_ref;
        self.next_ref += 1;
        self.by_call_id.insert(m.call_id().to_vec(), cref);
        self.by_call_id.insert(b_call_id.clone(), cref);
        self.calls.insert(
            cref,
            Call {
                key,
                a_call_id: m.call_id().to_vec(),
                a_invite: m.as_bytes().to_vec(),
                a_target: via_target(m),
                a_tag,
                a_srv,
                a_key: Key::server(m),
                a_dialog: None,
                a_ok: None,
                b_call_id,
                b_invite,
                b_cli,
                b_dialog: None,
                b_ack: None,
                cancelled: false,
                answered: false,
                answered_at: None,
                session_expires: None,
                started_at: now,
                heard: false,
                ring_deadline: Some(now + self.cfg.ring_timeout),
                no_answer: false,
                transfer: None,
                local_mode,
                local: None,
                old_ids: Vec::new(),
                targets,
                tried: 1,
                over: false,
                nits: Vec::new(),
                relays: Vec::new(),
                replicated: None,
                held_ok: None,
            },
        );
        self.drain(now, cref);
        Some(cref)
    }

    fn in_call_request(&mut self, now: Instant, cref: u64, m: &Message<'_>) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let from_a = m.call_id() == call.a_call_id.as_slice();
        let key = Key::server(m);
        // A retransmission of a non-INVITE request we already handle.
        for n in &mut call.nits {
            if let Nit::Server(k, t, _) = n
                && *k == key
            {
                t.handle_request(now);
                self.drain(now, cref);
                return;
            }
        }
        for r in &mut call.relays {
            if r.srv_key == key {
                match &mut r.srv {
                    Srv::Invite(t) => t.handle_request(now, m),
                    Srv::Other(t) => t.handle_request(now),
                }
                self.drain(now, cref);
                return;
            }
        }
        if self.local_request(now, cref, m) {
            self.drain(now, cref);
            return;
        }
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        match (m.method(), from_a) {
            (Some(Method::Invite), true) if key == call.a_key => call.a_srv.handle_request(now, m),
            (Some(Method::Ack), true) => {
                if key == call.a_key {
                    call.a_srv.handle_request(now, m); // ACK of our non-2xx
                } else {
                    call.a_ok = None; // ACK of our 2xx: stop resending it
                }
            }
            (Some(Method::Ack), false) => {}
            (Some(Method::Cancel), true) => {
                let mut ok = Vec::new();
                response(
                    &m.reply_parts(),
                    200,
                    None,
                    Some(call.a_tag.as_bytes()),
                    &[],
                    &mut ok,
                );
                let mut t = ServerNonInvite::new(now, self.cfg.timers);
                t.send_response(now, 200, ok);
                // The CANCEL's 200 goes before the INVITE's 487 (RFC 3261
                // §9.2 answers the CANCEL first; phones expect that order).
                while let Some(b) = t.poll_transmit() {
                    self.out.push_back((via_target(m), b));
                }
                call.nits.push(Nit::Server(key, t, via_target(m)));
                if Key::cancel_target(m) == call.a_key
                    && call.a_srv.state() == ServerInviteState::Proceeding
                {
                    call.cancelled = true;
                    let mut r = Vec::new();
                    let inv = call.a_invite.clone();
                    if let Ok(a) = scan(&inv) {
                        response(
                            &a.reply_parts(),
                            487,
                            None,
                            Some(call.a_tag.as_bytes()),
                            &[],
                            &mut r,
                        );
                        call.a_srv.send_response(now, 487, r);
                    }
                    Self::cancel_b(call, now, self.cfg.timers);
                }
            }
            (Some(Method::Bye), _) => {
                let mut ok = Vec::new();
                response(&m.reply_parts(), 200, None, None, &[], &mut ok);
                let mut t = ServerNonInvite::new(now, self.cfg.timers);
                t.send_response(now, 200, ok);
                call.nits.push(Nit::Server(key, t, via_target(m)));
                if let Some(d) = if from_a {
                    &mut call.a_dialog
                } else {
                    &mut call.b_dialog
                } {
                    let _ = d.handle_request(m);
                }
                let key = call.key;
                let via = self.via(key);
                let Some(call) = self.calls.get_mut(&cref) else {
                    return;
                };
                let other = if from_a {
                    call.b_dialog.as_mut()
                } else {
                    call.a_dialog.as_mut()
                };
                if let Some(d) = other {
                    let bye = d.request("BYE", None, &via, None, &[], None);
                    if let Ok(b) = scan(&bye) {
                        let k = Key::server(&b);
                        call.nits.push(Nit::Client(
                            k,
                            ClientNonInvite::new(now, self.cfg.timers, bye),
                        ));
                    }
                }
                if !call.over {
                    call.over = true;
                    call.a_ok = None;
                    self.stats.hung_up += 1;
                }
            }
            (
                Some(
                    Method::Invite
                    | Method::Update
                    | Method::Info
                    | Method::Options
                    | Method::Message
                    | Method::Refer
                    | Method::Notify
                    | Method::Subscribe,
                ),
                _,
            ) if m.to_tag().is_some() => {
                self.relay(now, cref, m, from_a);
                return;
            }
            _ => {
                let mut r = Vec::new();
                let tag = if from_a {
                    call.a_tag.as_bytes().to_vec()
                } else {
                    Vec::new()
                };
                response(&m.reply_parts(), 501, None, Some(&tag), &[], &mut r);
                self.out.push_back((via_target(m), r));
            }
        }
        self.drain(now, cref);
    }

    /// Cancels the B leg's INVITE if it has no final response yet (RFC 3261
    /// §9.1; also sent before a provisional, where the callee has been
    /// silent for the whole ring timeout).
    fn cancel_b(call: &mut Call, now: Instant, timers: TimerConfig) {
        if matches!(
            call.b_cli.state(),
            InviteState::Calling | InviteState::Proceeding
        ) {
            let cancel = scan(&call.b_invite)
                .map(|i| cancel_for(&i))
                .unwrap_or_default();
            if let Ok(ck) = scan(&cancel).map(|c| Key::server(&c)) {
                call.nits
                    .push(Nit::Client(ck, ClientNonInvite::new(now, timers, cancel)));
            }
        }
    }

    /// The dialog that a `Replaces` from the transferor names (its dialog
    /// with the cluster on another call: `to-tag` is ours, `from-tag`
    /// theirs), translated to the dialog the cluster has with the party on
    /// the other side of that call, as that party knows it. `None` when no
    /// call of this worker has it.
    //
    //
    // The other call may be held by another worker: then its committed
    // record, read from the replicated table, stands in (`remote.rs`).
    fn translate_replaces(&self, r: &Replaces) -> Option<Replaces> {
        let (_, a, b) = self.dialogs_of(&r.call_id)?;
        let (x, y) = if a.id.call_id == r.call_id {
            (a, b)
        } else {
            (b, a)
        };
        (x.id.call_id == r.call_id && x.id.local_tag == r.to_tag && x.id.remote_tag == r.from_tag)
            .then(|| Replaces {
                call_id: y.id.call_id.clone(),
                to_tag: y.id.remote_tag.clone(),
                from_tag: y.id.local_tag.clone(),
                early_only: r.early_only,
            })
    }

    /// Checks a REFER or a NOTIFY of the refer event package before it is
    /// relayed (RFC 3515): the header values to send instead of the
    /// received ones, or the status to answer with.
    #[allow(clippy::type_complexity)]
    fn transfer_check(
        &self,
        now: Instant,
        call: &Call,
        m: &Message<'_>,
        from_a: bool,
    ) -> Result<Vec<(HeaderName, Vec<u8>)>, (u16, &'static str)> {
        let buf = m.buf();
        let mut put = Vec::new();
        match m.method() {
            Some(Method::Refer) => {
                //= https://www.rfc-editor.org/rfc/rfc3515#section-2.4.1
                //# A REFER request MUST contain exactly one Refer-To header field value.
                let rt = transfer::refer_to(m).map_err(|e| (400, e.reason()))?;
                // One transfer at a time per call: a second REFER while the
                // first one's subscription runs is answered 491 (the
                // transferor may retry once the first has ended).
                if call.transfer.as_ref().is_some_and(|t| t.pending(now))
                    || call.local.as_ref().is_some_and(Local::pending)
                {
                    return Err((491, "Request Pending"));
                }
                // A Replaces is translated to the dialog the other party
                // knows, or the REFER refused: relayed as it came, it
                // would hand the transferor's Call-ID and tags to the
                // other side, naming a dialog that party never had.
                let replaces = match rt.replaces.as_ref() {
                    None => None,
                    Some(r) => Some(
                        self.translate_replaces(r)
                            .ok_or((400, "Replaces names no confirmed call"))?,
                    ),
                };
                put.push((
                    HeaderName::ReferTo,
                    rt.rewritten(&self.cfg.advertised, replaces.as_ref()),
                ));
                if let Some(h) = m.header(HeaderName::ReferredBy)
                    && let Ok(na) = NameAddr::parse(buf, h.value)
                {
                    put.push((
                        HeaderName::ReferredBy,
                        transfer::rewrite_name_addr(buf, &na, &self.cfg.advertised, None),
                    ));
                }
            }
            Some(Method::Notify) => {
                let Some(ev) = m.header(HeaderName::Event).map(|h| h.value.of(buf)) else {
                    return Ok(put);
                };
                let package = ev.split(|&b| b == b';').next().unwrap_or_default();
                if !package.trim_ascii().eq_ignore_ascii_case(b"refer") {
                    return Ok(put);
                }
                //= https://www.rfc-editor.org/rfc/rfc6665#section-4.1.3
                //# If the "Event" header field does not match an active
                //# subscription, the subscriber MUST return a 481
                let t = call
                    .transfer
                    .as_ref()
                    .filter(|t| t.from_a != from_a && t.pending(now))
                    .ok_or((481, "Subscription Does Not Exist"))?;
                // `id=` names the REFER's CSeq on the transferee's leg (ours):
                // the transferor knows its own.
                let id = format!(";id={}", t.cseq_out);
                if let Some(i) = ev
                    .windows(id.len())
                    .position(|w| w.eq_ignore_ascii_case(id.as_bytes()))
                {
                    let mut v = ev[..i].to_vec();
                    v.extend_from_slice(format!(";id={}", t.cseq_in).as_bytes());
                    v.extend_from_slice(&ev[i + id.len()..]);
                    put.push((HeaderName::Event, v));
                }
            }
            _ => {}
        }
        Ok(put)
    }

    /// Relays an in-dialog request from one leg to the other (RFC 3261
    /// §12.2, §14 for re-INVITE): the request goes out in the other leg's
    /// dialog with that leg's next CSeq, and its answers come back.
    fn relay(&mut self, now: Instant, cref: u64, m: &Message<'_>, from_a: bool) {
        let Some(call) = self.calls.get(&cref) else {
            return;
        };
        let key = call.key;
        let reply = |status: u16,
                     phrase: Option<&'static str>,
                     out: &mut VecDeque<(Option<SocketAddr>, Vec<u8>)>| {
            let mut r = Vec::new();
            let phrase = phrase.as_ref().map(|p| p as &dyn core::fmt::Display);
            response(&m.reply_parts(), status, phrase, None, &[], &mut r);
            out.push_back((via_target(m), r));
        };
        // After a BYE only the transfer's NOTIFYs still flow (the REFER's
        // subscription outlives the call, RFC 5057 §5.2).
        if call.over && m.method() != Some(Method::Notify) {
            reply(481, None, &mut self.out);
            return;
        }
        let put = match self.transfer_check(now, call, m, from_a) {
            Ok(p) => p,
            Err((status, phrase)) => {
                reply(status, Some(phrase), &mut self.out);
                return;
            }
        };
        let via = self.via(key);
        let contact = self.contact(key);
        let timers = self.cfg.timers;
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let is_invite = m.method() == Some(Method::Invite);
        if is_invite {
            let pending_to_x = call.relays.iter().any(|r| {
                r.from_a != from_a
                    && matches!(&r.cli, Cli::Invite(c) if matches!(c.state(), InviteState::Calling | InviteState::Proceeding))
            });
            //= https://www.rfc-editor.org/rfc/rfc3261#section-14.2
            //# A UAS that receives an INVITE on a dialog while an INVITE it had sent
            //# on that dialog is in progress MUST return a 491 (Request Pending)
            //# response to the received INVITE.
            if pending_to_x {
                reply(491, None, &mut self.out);
                return;
            }
            let pending_from_x = call.relays.iter().any(|r| {
                r.from_a == from_a
                    && matches!(&r.srv, Srv::Invite(s) if s.state() == ServerInviteState::Proceeding)
            });
            //# A UAS that receives a second INVITE before it sends the final
            //# response to a first INVITE with a lower CSeq sequence number on the
            //# same dialog MUST return a 500 (Server Internal Error) response
            if pending_from_x {
                reply(500, None, &mut self.out);
                return;
            }
        }
        let (x, y) = if from_a {
            (&mut call.a_dialog, &mut call.b_dialog)
        } else {
            (&mut call.b_dialog, &mut call.a_dialog)
        };
        let (Some(x), Some(y)) = (x.as_mut(), y.as_mut()) else {
            // Not answered yet: early-dialog requests are not relayed.
            reply(501, None, &mut self.out);
            return;
        };
        if let Err(e) = x.handle_request(m) {
            reply(e.status(), None, &mut self.out);
            return;
        }
        if m.method() == Some(Method::Refer) && call.local_mode {
            self.local_refer(now, cref, m, from_a);
            self.drain(now, cref);
            return;
        }
        let method = core::str::from_utf8(m.method_bytes()).unwrap_or("INFO");
        let body = m.content_type().map(|ct| (ct, m.body()));
        let refresh = matches!(m.method(), Some(Method::Invite | Method::Update));
        let mut headers = end_to_end_headers(m, self.cfg.trusted.contains(sender_ip(m)));
        for (name, value) in &put {
            for h in m.headers().filter(|h| h.name == *name) {
                let was = h.value.of(m.buf());
                if let Some(slot) = headers.iter_mut().find(|(_, v)| core::ptr::eq(*v, was)) {
                    slot.1 = value;
                }
            }
        }
        let out = y.request(
            method,
            None,
            &via,
            // Target refreshes carry our Contact, and so do REFER, NOTIFY
            // and SUBSCRIBE (a dialog usage's requests: RFC 3515 §2.1,
            // RFC 6665 §4.1.2.1 and §4.2.1): it names the edge with the
            // call's key, never the phone on the other leg.
            (refresh
                || matches!(
                    m.method(),
                    Some(Method::Refer | Method::Notify | Method::Subscribe)
                ))
            .then_some(contact.as_slice()),
            &headers,
            body,
        );
        let out_seq = y.local_seq;
        match m.method() {
            Some(Method::Refer) => {
                call.transfer = Some(Transfer {
                    at: now,
                    attended: m
                        .header(HeaderName::ReferTo)
                        .and_then(|h| NameAddr::parse(m.buf(), h.value).ok())
                        .and_then(|na| na.uri().headers())
                        .is_some_and(|h| {
                            h.windows(9).any(|w| w.eq_ignore_ascii_case(b"replaces="))
                        }),
                    from_a,
                    cseq_in: m.cseq().seq,
                    cseq_out: out_seq,
                    until: now + Transfer::DEFAULT_EXPIRY,
                    done: false,
                });
            }
            //= https://www.rfc-editor.org/rfc/rfc3515#section-2.4.5
            //# The body of a NOTIFY MUST begin with a SIP Response Status-Line
            Some(Method::Notify) => {
                let state = m
                    .header(HeaderName::SubscriptionState)
                    .map(|h| h.value.of(m.buf()));
                let terminated = state.is_some_and(|v| v.starts_with(b"terminated"));
                let status = m
                    .body()
                    .strip_prefix(b"SIP/2.0 ")
                    .and_then(|b| core::str::from_utf8(b.get(..3)?).ok()?.parse::<u16>().ok());
                if let Some(t) = call.transfer.as_mut().filter(|t| t.from_a != from_a) {
                    if let Some(e) = state.and_then(sub_expires) {
                        t.until = now + e;
                    }
                    if terminated && !t.done {
                        t.done = true;
                        if let Some(st) = status.filter(|s| *s >= 200) {
                            let result = if st < 300 {
                                TransferResult::Succeeded
                            } else {
                                TransferResult::Failed
                            };
                            self.transfers.push_back(TransferEvent {
                                attended: t.attended,
                                local: false,
                                result,
                                elapsed: now - t.at,
                            });
                        }
                    }
                }
            }
            _ => {}
        }
        let Ok(cli_key) = scan(&out).map(|o| Key::server(&o)) else {
            return;
        };
        let (srv, cli) = if is_invite {
            (
                Srv::Invite(ServerInvite::new(now, timers, m)),
                Cli::Invite(ClientInvite::new(now, timers, out.clone())),
            )
        } else {
            (
                Srv::Other(ServerNonInvite::new(now, timers)),
                Cli::Other(ClientNonInvite::new(now, timers, out.clone())),
            )
        };
        call.relays.push(Relay {
            from_a,
            req: m.as_bytes().to_vec(),
            back: via_target(m),
            srv_key: Key::server(m),
            srv,
            cli_key,
            cli,
            out,
            ack: None,
            relayed_final: false,
        });
        self.drain(now, cref);
    }

    /// The ACK of the 2xx to our relayed re-INVITE `out` (a new branch,
    /// derived from the INVITE's, and the INVITE's CSeq number).
    fn ack_of(y: &mut Dialog, out: &[u8]) -> Option<Vec<u8>> {
        let o = scan(out).ok()?;
        let v = o.top_via();
        let mut via = o.buf()[v.span().start..v.params_span().start].to_vec();
        via.extend_from_slice(b";branch=");
        via.extend_from_slice(v.branch()?);
        via.extend_from_slice(b"-ack");
        if let Some(k) = v.param(b"k").and_then(|p| p.value) {
            via.extend_from_slice(b";k=");
            via.extend_from_slice(k.of(o.buf()));
        }
        Some(y.request("ACK", Some(o.cseq().seq), &via, None, &[], None))
    }

    /// Moves the relays' output out and relays their answers back.
    fn drain_relays(&mut self, now: Instant, cref: u64) {
        let Some(call) = self.calls.get(&cref) else {
            return;
        };
        let contact = self.contact(call.key);
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let Call {
            relays,
            a_dialog,
            b_dialog,
            session_expires,
            transfer,
            ..
        } = call;
        let mut dead_leg = false;
        for r in relays.iter_mut() {
            let back = r.back;
            let mut events = Vec::new();
            match &mut r.cli {
                Cli::Invite(c) => {
                    while let Some(b) = c.poll_transmit() {
                        self.out.push_back((None, b));
                    }
                    while let Some(e) = c.poll_event() {
                        events.push(e);
                    }
                }
                Cli::Other(c) => {
                    while let Some(b) = c.poll_transmit() {
                        self.out.push_back((None, b));
                    }
                    while let Some(e) = c.poll_event() {
                        events.push(e);
                    }
                }
            }
            let is_invite = matches!(r.cli, Cli::Invite(_));
            for e in events {
                let Some((status, msg)) = e.into_response() else {
                    continue;
                };
                if status == 100 {
                    continue;
                }
                let resp = scan(&msg).ok();
                if is_invite && (200..300).contains(&status) {
                    // The 2xx of our re-INVITE: ACK it on its leg (again for
                    // a retransmitted 2xx) and take its new target.
                    let y = if r.from_a {
                        b_dialog.as_mut()
                    } else {
                        a_dialog.as_mut()
                    };
                    if let (Some(y), Some(p)) = (y, resp.as_ref()) {
                        y.handle_response(p);
                        if r.ack.is_none() {
                            r.ack = Self::ack_of(y, &r.out);
                        }
                    }
                    if let Some(a) = &r.ack {
                        self.out.push_back((None, a.clone()));
                    }
                }
                if r.relayed_final {
                    continue;
                }
                let Ok(req) = scan(&r.req) else { continue };
                let body = resp
                    .as_ref()
                    .and_then(|p| p.content_type().map(|ct| (ct.to_vec(), p.body().to_vec())));
                let body = body.as_ref().map(|(c, b)| (c.as_slice(), b.as_slice()));
                let from_trusted = self.cfg.trusted.contains(addressee_ip(&r.out));
                let mut extra = resp
                    .as_ref()
                    .map(|p| end_to_end_headers(p, from_trusted))
                    .unwrap_or_default();
                if is_invite && status < 300 {
                    extra.push(("Contact", &contact));
                }
                // A refresh (re-INVITE or UPDATE answered 2xx) restarts the
                // session timer with the interval it agreed on.
                if (200..300).contains(&status)
                    && matches!(req.method(), Some(Method::Invite | Method::Update))
                    && let Some(i) = resp.as_ref().and_then(session_interval)
                {
                    *session_expires = Some(now + i);
                }
                let mut out = Vec::new();
                response_with_body(
                    &req.reply_parts(),
                    status,
                    None,
                    None,
                    &extra,
                    body,
                    &mut out,
                );
                match &mut r.srv {
                    Srv::Invite(s) => s.send_response(now, status, out),
                    Srv::Other(s) => s.send_response(now, status, out),
                }
                if status >= 200 {
                    r.relayed_final = true;
                    if req.method() == Some(Method::Refer)
                        && let Some(t) = transfer.as_mut()
                    {
                        let result = if status < 300 {
                            TransferResult::Accepted
                        } else {
                            // Refused: no subscription (RFC 3515 §2.4.2).
                            t.done = true;
                            TransferResult::Rejected
                        };
                        self.transfers.push_back(TransferEvent {
                            attended: t.attended,
                            local: false,
                            result,
                            elapsed: now - t.at,
                        });
                    }
                }
                if status == 408 || status == 481 {
                    dead_leg = true;
                }
            }
            match &mut r.srv {
                Srv::Invite(s) => {
                    while let Some(b) = s.poll_transmit() {
                        self.out.push_back((back, b));
                    }
                    while s.poll_event().is_some() {}
                }
                Srv::Other(s) => {
                    while let Some(b) = s.poll_transmit() {
                        self.out.push_back((back, b));
                    }
                    while s.poll_event().is_some() {}
                }
            }
        }
        //= https://www.rfc-editor.org/rfc/rfc3261#section-12.2.1.2
        //# If the response for a request within a dialog is a 481
        //# (Call/Transaction Does Not Exist) or a 408 (Request Timeout), the UAC
        //# SHOULD terminate the dialog.
        if dead_leg {
            self.tear_down(now, cref);
        }
    }

    fn in_call_response(&mut self, now: Instant, cref: u64, m: &Message<'_>) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let key = Key::client(m);
        for n in &mut call.nits {
            if let Nit::Client(k, t) = n
                && *k == key
            {
                t.handle_response(now, m);
                self.drain(now, cref);
                return;
            }
        }
        for r in &mut call.relays {
            if r.cli_key == key {
                match &mut r.cli {
                    Cli::Invite(c) => c.handle_response(now, m),
                    Cli::Other(c) => c.handle_response(now, m),
                }
                self.drain(now, cref);
                return;
            }
        }
        if self.local_response(now, cref, m) {
            self.drain(now, cref);
            return;
        }
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        if m.call_id() == call.b_call_id.as_slice() && m.cseq().method == Method::Invite {
            call.b_cli.handle_response(now, m);
        }
        self.drain(now, cref);
    }

    /// Moves every transaction's output of call `cref` out, and acts on
    /// their events.
    fn drain(&mut self, now: Instant, cref: u64) {
        self.drain_outputs(cref);
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        while let Some(e) = call.a_srv.poll_event() {
            if let Event::Ack(_) = e {
                call.a_ok = None;
            }
        }
        let mut events = Vec::new();
        while let Some(e) = call.b_cli.poll_event() {
            events.push(e);
        }
        for e in events {
            self.on_b_event(now, cref, e);
        }
        self.drain_relays(now, cref);
        self.drain_local(now, cref);
        // Last: what the steps above queued (BYEs, NOTIFYs, answers) goes
        // out in the order it was queued.
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        for n in &mut call.nits {
            match n {
                Nit::Client(_, t) => {
                    while let Some(b) = t.poll_transmit() {
                        self.out.push_back((None, b));
                    }
                    while t.poll_event().is_some() {}
                }
                Nit::Server(_, t, to) => {
                    while let Some(b) = t.poll_transmit() {
                        self.out.push_back((*to, b));
                    }
                    while t.poll_event().is_some() {}
                }
            }
        }
    }

    fn on_b_event(&mut self, now: Instant, cref: u64, e: Event) {
        let (key, contact) = match self.calls.get(&cref) {
            Some(c) => (c.key, self.contact(c.key)),
            None => return,
        };
        let ack_via = self.via(key);
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        let a_bytes = call.a_invite.clone();
        let Ok(a) = scan(&a_bytes) else { return };
        let Some((status, msg)) = e.into_response() else {
            return;
        };
        if status >= 200 {
            call.ring_deadline = None;
        }
        // The 487 of our own CANCEL after the ring timeout: no answer.
        let status = if call.no_answer && status == 487 {
            408
        } else {
            status
        };
        let resp = scan(&msg).ok();
        let body = resp
            .as_ref()
            .and_then(|r| r.content_type().map(|ct| (ct.to_vec(), r.body().to_vec())));
        let body_ref = body.as_ref().map(|(c, b)| (c.as_slice(), b.as_slice()));
        let tag = call.a_tag;
        if status > 100 && !call.heard && !call.cancelled {
            call.heard = true;
            self.latencies
                .push_back((Latency::FirstResponse, now - call.started_at));
        }
        if (200..300).contains(&status) && !call.answered && !call.cancelled {
            self.latencies
                .push_back((Latency::Answer, now - call.started_at));
        }
        match status {
            100 => {}
            101..=199 if !call.cancelled => {
                let from_trusted = self.cfg.trusted.contains(addressee_ip(&call.b_invite));
                let mut extra = resp
                    .as_ref()
                    .map(|p| end_to_end_headers(p, from_trusted))
                    .unwrap_or_default();
                extra.push(("Contact", &contact));
                let mut r = Vec::new();
                response_with_body(
                    &a.reply_parts(),
                    status,
                    None,
                    Some(tag.as_bytes()),
                    &extra,
                    body_ref,
                    &mut r,
                );
                call.a_srv.send_response(now, status, r);
            }
            200..=299 => {
                let Some(resp) = resp else { return };
                if call.b_dialog.is_none() {
                    let inv = call.b_invite.clone();
                    let dialog = scan(&inv).ok().and_then(|bi| Dialog::uac(&bi, &resp).ok());
                    if let Some(mut d) = dialog {
                        let ack = d.request("ACK", Some(1), &ack_via, None, &[], None);
                        call.b_ack = Some(ack);
                        call.b_dialog = Some(d);
                    }
                }
                if let Some(ack) = &call.b_ack {
                    self.out.push_back((None, ack.clone()));
                }
                let Some(call) = self.calls.get_mut(&cref) else {
                    return;
                };
                if call.cancelled || call.answered {
                    return;
                }
                call.answered = true;
                call.answered_at = Some(now + self.cfg.max_call_age);
                call.session_expires = session_interval(&resp).map(|i| now + i);
                self.stats.answered += 1;
                let from_trusted = self.cfg.trusted.contains(addressee_ip(&call.b_invite));
                let mut extra = end_to_end_headers(&resp, from_trusted);
                extra.push(("Contact", &contact));
                let mut r = Vec::new();
                response_with_body(
                    &a.reply_parts(),
                    status,
                    None,
                    Some(tag.as_bytes()),
                    &extra,
                    body_ref,
                    &mut r,
                );
                call.a_dialog = Dialog::uas(&a, tag.as_bytes(), DialogState::Confirmed).ok();
                if self.replicate && call.a_dialog.is_some() && call.b_dialog.is_some() {
                    // Replicated calls: the 2xx that confirms the call to A
                    // waits until the call is committed (`committed`), so a
                    // call A believes up is never lost with this worker.
                    call.held_ok = Some((status, r, now + Self::HOLD_OK_LIMIT));
                } else {
                    Self::send_ok(call, now, status, r, self.cfg.timers);
                }
            }
            _ if status >= 300 || status == 408 => {
                if matches!(status, 408 | 503) && self.fail_over(now, cref) {
                    return;
                }
                let Some(call) = self.calls.get_mut(&cref) else {
                    return;
                };
                if !call.cancelled && !call.answered {
                    let mut r = Vec::new();
                    response(
                        &a.reply_parts(),
                        status,
                        None,
                        Some(tag.as_bytes()),
                        &[],
                        &mut r,
                    );
                    call.a_srv.send_response(now, status, r);
                }
                if !call.over {
                    call.over = true;
                    self.stats.failed += 1;
                }
            }
            _ => {}
        }
        self.drain_outputs(cref);
    }

    /// How long a 2xx waits for its call's commit before it goes to A
    /// anyway (the call then lives unreplicated until its next change).
    const HOLD_OK_LIMIT: Duration = Duration::from_secs(4);

    /// Sends the 2xx that confirms the call to A and resends it until A's
    /// ACK (§13.3.1.4).
    fn send_ok(call: &mut Call, now: Instant, status: u16, r: Vec<u8>, timers: TimerConfig) {
        call.a_srv.send_response(now, status, r.clone());
        let t1 = timers.t1;
        call.a_ok = Some((r, now + t1, t1, now + timers.t1x64()));
    }

    /// A call's record is committed (the shell heard it from the replica):
    /// the 2xx held for it goes to A.
    pub fn committed(&mut self, now: Instant, a_call_id: &[u8]) {
        let Some(&cref) = self.by_call_id.get(a_call_id) else {
            return;
        };
        let timers = self.cfg.timers;
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        if let Some((status, r, _)) = call.held_ok.take() {
            Self::send_ok(call, now, status, r, timers);
            self.drain_outputs(cref);
            self.schedule(cref);
        }
    }

    /// Moves the INVITE transactions' output of call `cref` out.
    fn drain_outputs(&mut self, cref: u64) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        while let Some(b) = call.a_srv.poll_transmit() {
            self.out.push_back((call.a_target, b));
        }
        while let Some(b) = call.b_cli.poll_transmit() {
            self.out.push_back((None, b));
        }
    }

    /// Hangs up both legs of an answered call (BYE in each dialog).
    fn tear_down(&mut self, now: Instant, cref: u64) {
        let Some(call) = self.calls.get(&cref) else {
            return;
        };
        if call.over {
            return;
        }
        let key = call.key;
        let vias = [self.via(key), self.via(key)];
        let timers = self.cfg.timers;
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        call.over = true;
        call.a_ok = None;
        let reason: &[u8] = b"SIP;cause=408;text=\"handover ended the call\"";
        for (d, via) in [call.a_dialog.as_mut(), call.b_dialog.as_mut()]
            .into_iter()
            .zip(&vias)
        {
            if let Some(d) = d {
                let bye = d.request("BYE", None, via, None, &[("Reason", reason)], None);
                if let Ok(b) = scan(&bye) {
                    let k = Key::server(&b);
                    call.nits
                        .push(Nit::Client(k, ClientNonInvite::new(now, timers, bye)));
                }
            }
        }
        self.stats.torn_down += 1;
        self.drain(now, cref);
    }

    /// Runs timers due at `now` (only the calls whose deadline has come).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, cref))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            if !self.calls.contains_key(&cref) {
                continue;
            }
            let (before, torn, unanswered) =
                (self.out.len(), self.stats.torn_down, self.stats.unanswered);
            self.run_timers(now, cref);
            if self.stats.torn_down == torn && self.stats.unanswered == unanswered {
                // Everything a timer sends, short of a teardown's BYEs and a
                // ring timeout's CANCEL, is a retransmission (timers A, E, G
                // and the 2xx resend).
                self.stats.retransmissions += (self.out.len() - before) as u64;
            }
            self.schedule(cref);
        }
    }

    fn run_timers(&mut self, now: Instant, cref: u64) {
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        call.a_srv.handle_timeout(now);
        call.b_cli.handle_timeout(now);
        for n in &mut call.nits {
            match n {
                Nit::Client(_, t) => t.handle_timeout(now),
                Nit::Server(_, t, _) => t.handle_timeout(now),
            }
        }
        for r in &mut call.relays {
            match &mut r.cli {
                Cli::Invite(c) => c.handle_timeout(now),
                Cli::Other(c) => c.handle_timeout(now),
            }
            match &mut r.srv {
                Srv::Invite(s) => s.handle_timeout(now),
                Srv::Other(s) => s.handle_timeout(now),
            }
        }
        self.local_timers(now, cref);
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        if call.held_ok.as_ref().is_some_and(|h| h.2 <= now)
            && let Some((status, r, _)) = call.held_ok.take()
        {
            // No commit in time (no quorum?): connect the call anyway.
            self.stats.unreplicated += 1;
            Self::send_ok(call, now, status, r, self.cfg.timers);
        }
        //= https://www.rfc-editor.org/rfc/rfc4028#section-10
        //# If the session refresh request is not received before the
        //# interval passes, the session is considered terminated.
        if !call.over
            && (call.answered_at.is_some_and(|t| t <= now)
                || call.session_expires.is_some_and(|t| t <= now))
        {
            self.tear_down(now, cref);
            return;
        }
        let Some(call) = self.calls.get_mut(&cref) else {
            return;
        };
        if let Some(t) = call.transfer.as_mut()
            && !t.done
            && t.until <= now
        {
            t.done = true;
        }
        if !call.over
            && !call.answered
            && !call.cancelled
            && call.ring_deadline.is_some_and(|t| t <= now)
        {
            call.ring_deadline = None;
            call.no_answer = true;
            self.stats.unanswered += 1;
            Self::cancel_b(call, now, self.cfg.timers);
        }
        let a_target = call.a_target;
        if let Some((ok, next, interval, give_up)) = &mut call.a_ok
            && *next <= now
        {
            if now >= *give_up {
                call.a_ok = None;
            } else {
                self.out.push_back((a_target, ok.clone()));
                *interval = (*interval * 2).min(self.cfg.timers.t2);
                *next = now + *interval;
            }
        }
        self.drain(now, cref);
    }
}
