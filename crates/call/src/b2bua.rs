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
//! Where things are: this file holds the types (a `Call` and its
//! transactions, relays and transfers) and routes a message to its call;
//! `setup.rs` the B leg (INVITE, failover, CANCEL, answers, teardown),
//! `relay.rs` in-dialog requests relayed between the legs, `refer.rs` the
//! checks of a relayed REFER, `local.rs` transfers the B2BUA carries out,
//! `replica.rs` call records and adoption, `remote.rs` calls of other
//! workers named by a Replaces.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use handover_sip::build::{cancel_for, error_response, response, response_with_body};
use handover_sip::ids::{Bound, Hashing, IdGen, Token};
use handover_sip::{HeaderName, Message, Method, NameAddr, scan};
use handover_txn::{
    ClientInvite, ClientNonInvite, Event, Instant, InviteState, Key, NonInviteState, ServerInvite,
    ServerInviteState, ServerNonInvite, ServerNonInviteState, TimerConfig,
};
use rand_core::RngCore;

use crate::dialog::{Dialog, DialogState};
use crate::routing::{Routes, TransferMode};

mod detail;
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
pub use detail::{CallDetail, Detail, EndCause, TransferDetail};
use local::Local;
pub use register::{AuthStats, Target};
pub use replica::{CallRecord, PendingRequest, Replication};
pub use types::{Config, Latency, Stats, TransferEvent, TransferResult};

/// Sends a BYE in dialog `d` (with `headers`, e.g. a Reason) through a
/// new client transaction pushed on `nits`: every BYE the B2BUA
/// originates goes out this way.
fn push_bye(
    nits: &mut Vec<Nit>,
    d: &mut Dialog,
    now: Instant,
    timers: TimerConfig,
    via: &[u8],
    headers: &[(&str, &[u8])],
) {
    let bye = d.request("BYE", None, via, None, headers, None);
    if let Ok(b) = scan(&bye) {
        nits.push(Nit::Client(
            Key::server(&b),
            ClientNonInvite::new(now, timers, bye),
        ));
    }
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
    /// Resent by a worker that adopted the call with it in flight
    /// (`PendingRequest`): the far party may have answered it already, to
    /// the dead worker, so its timing out (408) says nothing of the leg.
    resumed: bool,
}

impl Nit {
    /// The transaction has terminated.
    fn ended(&self) -> bool {
        match self {
            Nit::Client(_, t) => t.state() == NonInviteState::Terminated,
            Nit::Server(_, t, _) => t.state() == ServerNonInviteState::Terminated,
        }
    }
}

impl Relay {
    /// Both its transactions have terminated.
    fn ended(&self) -> bool {
        let cli = match &self.cli {
            Cli::Invite(c) => c.state() == InviteState::Terminated,
            Cli::Other(c) => c.state() == NonInviteState::Terminated,
        };
        let srv = match &self.srv {
            Srv::Invite(s) => s.state() == ServerInviteState::Terminated,
            Srv::Other(s) => s.state() == ServerNonInviteState::Terminated,
        };
        cli && srv
    }

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

/// In-dialog transactions one call may hold at once (see `in_call_request`):
/// four a second for their 32 s of retransmission absorption, far above
/// what phones send (a DTMF digit per INFO, a refresh every few minutes).
const MAX_REQUESTS_IN_FLIGHT: usize = 128;

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
    /// B hung up before A acknowledged our 2xx: A's BYE waits for that
    /// ACK, or for the 2xx's last resend (RFC 3261 §15: no BYE before
    /// the ACK of the 2xx; a BYE that overtakes the 2xx is one A does
    /// not know, and its call would stay up).
    a_bye_after_ack: bool,
    /// The caller's identity we assert to trusted targets (digest user,
    /// `Config::assert_identity`).
    asserted: Option<Vec<u8>>,
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
    targets: Vec<Target>,
    /// B legs ringing beside the main one (a registered user's other
    /// bindings, `fork.rs`).
    forks: Vec<fork::Fork>,
    /// The best final answer of the legs that failed so far.
    best: Option<u16>,
    /// A 6xx ended the search: no other leg takes over.
    forks_done: bool,
    /// How many of them have been tried.
    tried: usize,
    over: bool,
    nits: Vec<Nit>,
    relays: Vec<Relay>,
    /// Version and fingerprint of the state last queued for replication.
    replicated: Option<(u64, u64)>,
    /// The 2xx for A, held until the call is committed (or the deadline).
    held_ok: Option<(u16, Vec<u8>, Instant)>,
    /// The deadline this call has in the B2BUA's timer heap: entries of
    /// other times are stale and skipped when popped, so a call touched by
    /// many datagrams runs its timers once per deadline, not once per
    /// datagram it ever received.
    scheduled: Option<Instant>,
    /// Who started the call (the address the edge received A's INVITE
    /// from), counted in `B2bua::per_source`.
    source: Option<IpAddr>,
    /// What its record needs beyond its INVITE (`detail.rs`).
    detail: Detail,
    /// The answer that tells a party the call ended, held until the end
    /// is committed (`detail.rs`, [`HeldEnd`]).
    held_end: Option<HeldEnd>,
    /// An ended call kept until then to answer its parties' last requests
    /// ([`B2bua::ended_elsewhere`]).
    linger: Option<Instant>,
}

/// An answer held until the call's end is committed: a party that hears
/// the call ended finds its record committed, and one whose worker died
/// before the commit asks again (a BYE is retransmitted to the call's
/// new owner) instead of leaving a call that the replicas still hold as
/// live. Sent anyway at `until` (no quorum).
#[derive(Debug)]
struct HeldEnd {
    what: HeldWhat,
    until: Instant,
}

#[derive(Debug)]
enum HeldWhat {
    /// The 200 to a BYE (its server transaction is in `nits` by `key`).
    ByeOk { key: Key, ok: Vec<u8> },
    /// The final (error) response to A's INVITE.
    Final { status: u16, response: Vec<u8> },
}

/// A deadline of the call itself (its transactions keep their own): what
/// `run_timers` does when it passes, and the one list `next_timeout` and
/// `run_timers` both read (`Call::timers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CallTimer {
    /// The 2xx held for the call's commit goes without it.
    HeldOk,
    /// The maximum call age: both legs are hung up.
    MaxAge,
    /// The session timer ran out unrefreshed (RFC 4028): both legs are hung up.
    SessionExpires,
    /// A relayed REFER's subscription ends.
    Subscription,
    /// The callee rang too long: it is cancelled (and the route's next
    /// target tried).
    Ring,
    /// Our 2xx to A is resent (no ACK yet), or given up.
    ResendOk,
    /// The answer held for the end's commit goes without it.
    HeldEnd,
    /// An ended call stops lingering.
    Linger,
}

impl Call {
    /// The call's own armed deadlines, in the order `run_timers` handles
    /// them when several are due.
    fn timers(&self) -> impl Iterator<Item = (CallTimer, Instant)> + use<> {
        let live = !self.over;
        [
            (CallTimer::HeldOk, self.held_ok.as_ref().map(|o| o.2)),
            (CallTimer::MaxAge, self.answered_at.filter(|_| live)),
            (
                CallTimer::SessionExpires,
                self.session_expires.filter(|_| live),
            ),
            (
                CallTimer::Subscription,
                self.transfer.as_ref().filter(|t| !t.done).map(|t| t.until),
            ),
            (
                CallTimer::Ring,
                self.ring_deadline
                    .filter(|_| live && !self.answered && !self.cancelled),
            ),
            (
                CallTimer::ResendOk,
                self.a_ok.as_ref().map(|o| o.1.min(o.3)),
            ),
            (CallTimer::HeldEnd, self.held_end.as_ref().map(|h| h.until)),
            (CallTimer::Linger, self.linger),
        ]
        .into_iter()
        .filter_map(|(t, at)| Some((t, at?)))
    }

    /// The earliest deadline of the call or any of its transactions.
    fn next_timeout(&self) -> Option<Instant> {
        let nits = self.nits.iter().filter_map(|n| match n {
            Nit::Client(_, t) => t.poll_timeout(),
            Nit::Server(_, t, _) => t.poll_timeout(),
        });
        [self.a_srv.poll_timeout(), self.b_cli.poll_timeout()]
            .into_iter()
            .flatten()
            .chain(self.forks.iter().filter_map(|f| f.cli.poll_timeout()))
            .chain(self.timers().map(|(_, at)| at))
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
    /// This worker's member id in the cluster, named in our Via (`w`) so
    /// an answer the edge routes to the shard's new owner finds its way
    /// back here (see [`B2bua::set_member`]).
    member: Option<u64>,
    replication: VecDeque<Replication>,
    /// Each call's detail is kept and queued at its end (`detail.rs`):
    /// for the records or for the call log.
    details_on: bool,
    /// Call detail records are written: the end's answer waits for the
    /// end's commit (`HeldEnd`).
    records_on: bool,
    /// Ended calls are queued for the shell's call log (`set_call_log`).
    call_log: bool,
    /// Ended calls' records, for the shell.
    records: VecDeque<CallDetail>,

    /// Calls of other workers, learnt for one datagram (`remote.rs`).
    remote: Vec<CallRecord>,
    /// Calls held per source address (see `Config::max_calls_per_source`).
    per_source: HashMap<IpAddr, usize>,
    /// Bindings and REGISTERs (`register.rs`).
    registrar: handover_registrar::Registrar,
    /// Digest authentication of phones, and the sources that keep
    /// failing it; `None`: nobody is challenged.
    auth: Option<(
        handover_registrar::digest::Digest,
        handover_registrar::digest::Guard,
    )>,
    /// PBXs that are the registrars of some domains (relay mode).
    upstreams: handover_registrar::Upstreams,
    /// The Raft log's disk is nearly full: new calls and registrations
    /// get 503 (see [`B2bua::set_storage_full`]).
    storage_full: bool,
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
            cfg,
            ids: IdGen::new(rng),
            calls: HashMap::new(),
            by_call_id: HashMap::new(),
            next_ref: 1,
            timers: BinaryHeap::new(),
            out: VecDeque::new(),
            latencies: VecDeque::new(),
            transfers: VecDeque::new(),
            details_on: false,
            records_on: false,
            call_log: false,
            records: VecDeque::new(),

            stats: Stats::default(),
            replicate: false,
            member: None,
            replication: VecDeque::new(),
            remote: Vec::new(),
            per_source: HashMap::new(),
            storage_full: false,
            registrar: handover_registrar::Registrar::new(
                Default::default(),
                false,
                handover_registrar::Locations::shared(),
            ),
            auth: None,
            upstreams: Default::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Whether the disk that holds the replicated log is nearly full (the
    /// shell measures it). While it is, new calls and REGISTERs that would
    /// write bindings are answered 503 with Retry-After, so what is already
    /// acknowledged keeps room to be written (in-dialog changes, ends,
    /// lease renewals) and no replica dies of a full disk; calls in
    /// progress go on.
    pub fn set_storage_full(&mut self, full: bool) {
        self.storage_full = full;
    }

    /// Calls in progress (not yet hung up or failed). Constant time (each
    /// call ends once, in exactly one of the ending counters), so the shell
    /// may read it after every datagram.
    pub fn calls_active(&self) -> usize {
        let s = &self.stats;
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
            .out
            .pop_front()
            .or_else(|| self.registrar.poll_transmit())?;
        Some((to.or_else(|| self.flow_edge(&b)), b))
    }

    /// The edge a request to the edge must reach: the one its top Route
    /// names beside the flow it goes on (`;fe=`, tagged by an edge or by
    /// us, see `Hashing::edge_tag`), which holds that flow's connection;
    /// `None` (any edge) otherwise, or when the tag is not ours.
    fn flow_edge(&self, b: &[u8]) -> Option<SocketAddr> {
        memchr::memmem::find(b, b";fe=")?;
        let m = scan(b).ok()?;
        let route = m.top_route()?.ok()?;
        let u = route.uri();
        self.cfg
            .hashing
            .open_edge(u.param(b"flow")?, u.param(b"fe")?)
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

    /// Counts a call held for `source`.
    pub(super) fn count_source(&mut self, source: Option<IpAddr>) {
        if let Some(ip) = source {
            *self.per_source.entry(ip).or_default() += 1;
        }
    }

    /// A call of `source` is no longer held.
    pub(super) fn forget_source(&mut self, source: Option<IpAddr>) {
        if let Some(ip) = source
            && let Some(n) = self.per_source.get_mut(&ip)
        {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&ip);
            }
        }
    }

    /// Replaces `Config::max_calls_per_source`.
    pub fn set_max_calls_per_source(&mut self, n: usize) {
        self.cfg.max_calls_per_source = n;
    }

    /// Replaces the `[sip]` limits (as `Config::limits`).
    pub fn set_limits(&mut self, limits: handover_sip::Limits) {
        self.cfg.limits = limits;
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
        self.cfg.routes = routes;
        self.cfg.trusted = trusted;
        self.cfg.identity_headers = identity_headers;
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
        match (calls, self.registrar.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Files call `cref`'s next deadline, or forgets the call when it is
    /// over and nothing of it is still running.
    fn schedule(&mut self, cref: u64) {
        self.replicate_call(cref);
        let Some(c) = self.calls.get_mut(&cref) else {
            return;
        };
        match c.next_timeout() {
            Some(t) if c.scheduled != Some(t) => {
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
        self.forget_source(c.source);
        let local = c.local.as_ref().map(|l| &l.t_call_id);
        for id in [&c.a_call_id, &c.b_call_id]
            .into_iter()
            .chain(&c.old_ids)
            .chain(local)
        {
            // Only this call's: a failed attended transfer gave the
            // target's Call-ID back to its own call.
            if self.by_call_id.get(id) == Some(&cref) {
                self.by_call_id.remove(id);
            }
        }
        true
    }

    fn respond(&mut self, m: &Message<'_>, status: u16, to_tag: Option<&[u8]>) {
        let mut b = Vec::new();
        response(&m.reply_parts(), status, None, to_tag, &[], &mut b);
        self.out.push_back((via_target(m), b));
    }

    /// 503 with `Retry-After: 5`: a limit of ours refused `m` (RFC 3261
    /// §21.5.4), try again later.
    fn refuse_overloaded(&mut self, m: &Message<'_>, to_tag: Option<&[u8]>) {
        let mut b = Vec::new();
        response(
            &m.reply_parts(),
            503,
            None,
            to_tag,
            &[("Retry-After", b"5")],
            &mut b,
        );
        self.out.push_back((via_target(m), b));
    }

    /// Our Via for a request of the call whose affinity key is `key`: the
    /// edge's address with the key, so the answer comes back to the
    /// shard's owner (its token bound to the branch, see
    /// [`Hashing::key_token`]).
    fn via(&mut self, key: u64) -> Vec<u8> {
        let branch = self.ids.branch();
        let k = self
            .cfg
            .hashing
            .key_token(key, Bound::Branch, branch.as_bytes());
        let mut v = format!(
            "SIP/2.0/UDP {};branch={};k={}",
            self.cfg.advertised,
            branch,
            core::str::from_utf8(&k).unwrap_or_default()
        );
        if let Some(w) = self.member {
            use core::fmt::Write as _;
            let _ = write!(v, ";w={w}");
        }
        v.into_bytes()
    }

    /// Our Contact in the leg whose Call-ID is `call_id` of the call whose
    /// affinity key is `key` (see [`Self::via`]): its token is bound to
    /// that Call-ID, which the leg's requests (and an INVITE replacing the
    /// leg's dialog, in its `Replaces`) carry.
    fn contact(&self, key: u64, call_id: &[u8]) -> Vec<u8> {
        self.cfg.contact(key, call_id)
    }

    /// One datagram from the edge (or a probe).
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        let m = match handover_sip::scan_with(bytes, &self.cfg.limits) {
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
            (false, None) => {
                // The answer of a REGISTER relayed to a PBX, or nobody's.
                self.registrar.relay_response(now, m);
                None
            }
        };
        if let Some(c) = touched {
            self.schedule(c);
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
}
