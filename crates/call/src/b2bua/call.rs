//! One call's state: its legs' transactions (`Nit`, `Srv`, `Cli`), the
//! requests relayed between the legs (`Relay`), a relayed transfer's
//! subscription (`Transfer`), the answer held for the end's commit
//! (`HeldEnd`), and the call's deadlines (`CallTimer`). The B2BUA
//! (`b2bua.rs`) routes messages to calls; the files beside this one act
//! on them.

use super::*;

/// A list most calls never fill (their in-dialog transactions, forks,
/// legs left by transfers): 8 bytes inline, its `Vec` boxed only while
/// something is in it. Five empty `Vec`s were 120 bytes of every held
/// call.
#[derive(Debug)]
pub(super) struct Few<T>(
    #[expect(
        clippy::box_collection,
        reason = "8 bytes inline in every call, the heap part seldom made"
    )]
    Option<Box<Vec<T>>>,
);

impl<T> Default for Few<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> Few<T> {
    pub(super) fn push(&mut self, t: T) {
        self.0.get_or_insert_default().push(t);
    }

    /// Keeps only what `f` says; the box goes once nothing is left.
    pub(super) fn retain(&mut self, f: impl FnMut(&mut T) -> bool) {
        if let Some(v) = &mut self.0 {
            v.retain_mut(f);
            if v.is_empty() {
                self.0 = None;
            }
        }
    }

    /// Everything in it, leaving it empty.
    pub(super) fn take(&mut self) -> Vec<T> {
        self.0.take().map(|v| *v).unwrap_or_default()
    }
}

impl<T> core::ops::Deref for Few<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl<T> core::ops::DerefMut for Few<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        self.0.as_deref_mut().map_or(&mut [], Vec::as_mut_slice)
    }
}

impl<T> From<Vec<T>> for Few<T> {
    fn from(v: Vec<T>) -> Self {
        Self((!v.is_empty()).then(|| Box::new(v)))
    }
}

impl<T> IntoIterator for Few<T> {
    type Item = T;
    type IntoIter = std::vec::IntoIter<T>;
    fn into_iter(mut self) -> Self::IntoIter {
        self.take().into_iter()
    }
}

impl<'a, T> IntoIterator for &'a Few<T> {
    type Item = &'a T;
    type IntoIter = core::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut Few<T> {
    type Item = &'a mut T;
    type IntoIter = core::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<T> FromIterator<T> for Few<T> {
    fn from_iter<I: IntoIterator<Item = T>>(i: I) -> Self {
        i.into_iter().collect::<Vec<T>>().into()
    }
}

/// Sends a BYE in dialog `d` (with `headers`, e.g. a Reason) through a
/// new client transaction pushed on `nits`: every BYE the B2BUA
/// originates goes out this way.
pub(super) fn push_bye(
    nits: &mut Few<Nit>,
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
pub(super) enum Nit {
    Client(Key, ClientNonInvite),
    /// The transaction, and where its responses go (the request's top Via).
    Server(Key, ServerNonInvite, Option<SocketAddr>),
}

/// The server side of a relayed in-dialog request.
#[derive(Debug)]
pub(super) enum Srv {
    Invite(ServerInvite),
    Other(ServerNonInvite),
}

/// The client side of a relayed in-dialog request.
#[derive(Debug)]
pub(super) enum Cli {
    Invite(ClientInvite),
    Other(ClientNonInvite),
}

/// An in-dialog request relayed from one leg to the other (re-INVITE,
/// UPDATE, INFO, OPTIONS, MESSAGE): answered on its own leg with what the
/// other leg answers.
#[derive(Debug)]
pub(super) struct Relay {
    /// The leg it came on (it went out on the other).
    pub(super) from: Side,
    /// The request as received; a response to it copies from it.
    pub(super) req: Vec<u8>,
    /// Where its responses go: its top Via.
    pub(super) back: Option<SocketAddr>,
    pub(super) srv_key: Key,
    pub(super) srv: Srv,
    pub(super) cli_key: Key,
    pub(super) cli: Cli,
    /// The relayed request, for the ACK of its 2xx.
    pub(super) out: Vec<u8>,
    /// Our ACK of the other leg's 2xx (resent when the 2xx is).
    pub(super) ack: Option<Vec<u8>>,
    pub(super) relayed_final: bool,
    /// Resent by a worker that adopted the call with it in flight
    /// (`PendingRequest`): the far party may have answered it already, to
    /// the dead worker, so its timing out (408) says nothing of the leg.
    pub(super) resumed: bool,
}

impl Nit {
    /// The transaction has terminated.
    pub(super) fn ended(&self) -> bool {
        match self {
            Nit::Client(_, t) => t.state() == NonInviteState::Terminated,
            Nit::Server(_, t, _) => t.state() == ServerNonInviteState::Terminated,
        }
    }
}

impl Relay {
    /// Both its transactions have terminated.
    pub(super) fn ended(&self) -> bool {
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

    pub(super) fn timeouts(&self) -> impl Iterator<Item = Instant> + use<> {
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
pub(super) struct Transfer {
    pub(super) at: Instant,
    pub(super) attended: bool,
    /// The leg the REFER came on (its NOTIFYs come on the other).
    pub(super) from: Side,
    /// CSeq of the REFER as the transferor sent it, and of ours to the
    /// transferee: a NOTIFY's `Event: refer;id=` names ours and is
    /// translated back.
    pub(super) cseq_in: u32,
    pub(super) cseq_out: u32,
    /// The subscription ends here unless a NOTIFY extends it.
    pub(super) until: Instant,
    pub(super) done: bool,
}

impl Transfer {
    /// How long a REFER's subscription lasts before a NOTIFY says (RFC
    /// 3515 leaves it to the notifier; phones say 60 s).
    pub(super) const DEFAULT_EXPIRY: Duration = Duration::from_secs(60);

    pub(super) fn pending(&self, now: Instant) -> bool {
        !self.done && now < self.until
    }
}

/// The `expires=` of a Subscription-State value.
pub(super) fn sub_expires(v: &[u8]) -> Option<Duration> {
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
pub(super) const MAX_REQUESTS_IN_FLIGHT: usize = 128;

/// The longest interval a peer's number of seconds is taken for (one day):
/// the maximum call age ends calls long before in practice.
pub(super) const MAX_PEER_SECS: u64 = 86_400;

/// One of a call's two legs: A, where the call came in (the caller's,
/// answered by our INVITE server transaction), or B, the one we placed
/// (the callee's, our INVITE client transaction). After a transfer the
/// party on a leg changes; the leg's role does not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    A,
    B,
}

impl Side {
    /// The other leg.
    pub(super) fn other(self) -> Self {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }

    /// From a record's `from_a`-style flag (the wire keeps a bool).
    pub(super) fn a_if(a: bool) -> Self {
        if a { Side::A } else { Side::B }
    }

    pub(super) fn is_a(self) -> bool {
        self == Side::A
    }
}

/// What the two legs have alike: the Call-ID, the INVITE that set the
/// leg up (A's as received, ours to B), and the dialog once there is one.
/// What differs (A's server transaction, B's client transaction) stays
/// on `Call` under its leg's name.
#[derive(Debug)]
pub(super) struct Leg {
    /// Shared with its key in `Endpoint::by_call_id` (one block, not two).
    pub(super) call_id: Arc<[u8]>,
    pub(super) invite: Vec<u8>,
    pub(super) dialog: Option<Dialog>,
}

/// A call's two legs, indexed by [`Side`].
#[derive(Debug)]
pub(super) struct Legs {
    pub(super) a: Leg,
    pub(super) b: Leg,
}

impl Legs {
    /// Leg `s` and the other one, both writable (a request from `s` is
    /// relayed on the other).
    pub(super) fn pair_mut(&mut self, s: Side) -> (&mut Leg, &mut Leg) {
        match s {
            Side::A => (&mut self.a, &mut self.b),
            Side::B => (&mut self.b, &mut self.a),
        }
    }
}

impl core::ops::Index<Side> for Legs {
    type Output = Leg;
    fn index(&self, s: Side) -> &Leg {
        match s {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }
}

impl core::ops::IndexMut<Side> for Legs {
    fn index_mut(&mut self, s: Side) -> &mut Leg {
        match s {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }
}

#[derive(Debug)]
pub(super) struct Call {
    pub(super) key: u64,
    /// The call's id in the replicated table ([`Call::id`]): leg A's
    /// Call-ID when the call was set up, kept here only once a transfer
    /// carried out for A gives leg A the target's (empty until then: most
    /// calls' id is leg A's Call-ID, and a copy was one more heap block).
    pub(super) own_id: Box<[u8]>,
    /// Call-ID, INVITE and dialog of each leg (leg A's Call-ID as it is
    /// now).
    pub(super) legs: Legs,
    /// Where answers to A go: the top Via of A's INVITE (the edge).
    pub(super) a_target: Option<SocketAddr>,
    /// Our tag towards A (`hex_u64` of it; 8 bytes, not a `Token`'s 49).
    pub(super) a_tag: u64,
    /// A's INVITE server transaction (its key: `Call::is_a_invite`).
    pub(super) a_srv: ServerInvite,
    /// Our 2xx to A, resent (T1 doubling to T2) until A's ACK (§13.3.1.4).
    /// Boxed: present for a round trip, and every held call would carry
    /// its size.
    #[expect(
        clippy::type_complexity,
        reason = "(2xx, next resend, interval, give up)"
    )]
    pub(super) a_ok: Option<Box<(Vec<u8>, Instant, Duration, Instant)>>,
    /// B hung up before A acknowledged our 2xx: A's BYE waits for that
    /// ACK, or for the 2xx's last resend (RFC 3261 §15: no BYE before
    /// the ACK of the 2xx; a BYE that overtakes the 2xx is one A does
    /// not know, and its call would stay up).
    pub(super) a_bye_after_ack: bool,
    /// Requests of B held until A acknowledges our 2xx (by CSeq): A's
    /// end of the dialog does not exist before it has the 2xx, so a
    /// request on it would be refused (481), and a re-INVITE would start
    /// a second INVITE transaction while the first runs (RFC 3261 §14.1).
    /// A request whose `Replaces` names another worker's call keeps that
    /// call's record, read for it (`B2bua::learn_remote`).
    pub(super) after_ack: Few<(u32, Vec<u8>, Vec<CallRecord>)>,
    pub(super) b_cli: ClientInvite,
    pub(super) b_ack: Option<Box<[u8]>>,
    pub(super) cancelled: bool,
    pub(super) answered: bool,
    /// When an answered call reaches the maximum call age.
    pub(super) answered_at: Option<Instant>,
    /// When the session expires unless refreshed (RFC 4028), if the
    /// parties agreed on a session timer.
    pub(super) session_expires: Option<Instant>,
    /// When A's INVITE arrived.
    pub(super) started_at: Instant,
    /// What only the call's set-up reads (`None` once answered).
    /// Boxed: about 80 bytes every held call carried.
    pub(super) setup: Option<Box<Setup>>,
    /// The last REFER relayed and its implicit subscription.
    /// Boxed: most calls are never transferred.
    pub(super) transfer: Option<Box<Transfer>>,
    /// REFERs on this call are carried out by the B2BUA (local mode).
    pub(super) local_mode: bool,
    /// The last transfer carried out by the B2BUA.
    pub(super) local: Option<Box<Local>>,
    /// Call-IDs of legs this call had before a transfer (still mapped to
    /// it while their transactions end).
    pub(super) old_ids: Few<Arc<[u8]>>,
    /// B legs ringing beside the main one (a registered user's other
    /// bindings, `fork.rs`); a fork that answers after the call was
    /// answered is still hung up (so kept past the answer).
    pub(super) forks: Few<fork::Fork>,
    pub(super) over: bool,
    pub(super) nits: Few<Nit>,
    pub(super) relays: Few<Relay>,
    /// Version and fingerprint of the state last queued for replication.
    pub(super) replicated: Option<(u64, u64)>,
    /// The highest version of its record known committed (see
    /// [`B2bua::stored`]).
    pub(super) committed: u64,
    /// The 2xx for A, held until the call is committed (or the deadline).
    /// Boxed: present for a commit's round trip, and every held call
    /// would carry its size.
    pub(super) held_ok: Option<Box<(u16, Vec<u8>, Instant)>>,
    /// The deadline this call has in the B2BUA's timer heap, no later than
    /// its next one (a deadline that moves later waits for this entry):
    /// entries of other times are stale and skipped when popped, so a call
    /// touched by many datagrams runs its timers once per deadline, not
    /// once per datagram it ever received.
    pub(super) scheduled: Option<Instant>,
    /// Who started the call (the address the edge received A's INVITE
    /// from), counted in `B2bua::per_source`.
    pub(super) source: Option<IpAddr>,
    /// What its record needs beyond its INVITE (`detail.rs`).
    pub(super) detail: Detail,
    /// The answer that tells a party the call ended, held until the end
    /// is committed (`detail.rs`, [`HeldEnd`]).
    /// Boxed: present for a round trip at a call's end, and every held
    /// call would carry its size.
    pub(super) held_end: Option<Box<HeldEnd>>,
    /// An ended call kept until then to answer its parties' last requests
    /// ([`B2bua::ended_elsewhere`]).
    pub(super) linger: Option<Instant>,
}

/// What a call reads only until it is answered: where to try next, and
/// how the targets tried so far answered.
#[derive(Debug)]
pub(super) struct Setup {
    /// The route's targets, in the order to try them.
    pub(super) targets: Vec<Target>,
    /// How many of them have been tried.
    pub(super) tried: usize,
    /// The best final answer of the legs that failed so far.
    pub(super) best: Option<u16>,
    /// A 6xx ended the search: no other leg takes over.
    pub(super) forks_done: bool,
    /// The callee's first response has been relayed.
    pub(super) heard: bool,
    /// When the current target counts as not answering.
    pub(super) ring_deadline: Option<Instant>,
    /// The current target was cancelled for not answering: its 487 means
    /// 408 (and failover) to us.
    pub(super) no_answer: bool,
    /// The caller's identity we assert to trusted targets (digest user,
    /// `Config::assert_identity`).
    pub(super) asserted: Option<Vec<u8>>,
}

/// An answer held until the call's end is committed: a party that hears
/// the call ended finds its record committed, and one whose worker died
/// before the commit asks again (a BYE is retransmitted to the call's
/// new owner) instead of leaving a call that the replicas still hold as
/// live. Sent anyway at `until` (no quorum).
#[derive(Debug)]
pub(super) struct HeldEnd {
    pub(super) what: HeldWhat,
    pub(super) until: Instant,
}

#[derive(Debug)]
pub(super) enum HeldWhat {
    /// The 200 to a BYE (its server transaction is in `nits` by `key`).
    ByeOk { key: Key, ok: Vec<u8> },
    /// The final (error) response to A's INVITE.
    Final { status: u16, response: Vec<u8> },
}

/// A deadline of the call itself (its transactions keep their own): what
/// `run_timers` does when it passes, and the one list `next_timeout` and
/// `run_timers` both read (`Call::timers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CallTimer {
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
    /// The call's id in the replicated table.
    pub(super) fn id(&self) -> &[u8] {
        if self.own_id.is_empty() {
            &self.legs.a.call_id
        } else {
            &self.own_id
        }
    }

    /// `key` is that of A's INVITE server transaction (a resent INVITE,
    /// the ACK of a non-2xx, the INVITE a CANCEL names). Read from A's
    /// INVITE (its head keeps the top Via, Request-URI, From, Call-ID and
    /// CSeq the key is made of) when such a request comes, not kept: a
    /// key is a heap block every held call carried.
    pub(super) fn is_a_invite(&self, key: &Key) -> bool {
        scan(&self.legs.a.invite).is_ok_and(|a| Key::server(&a) == *key)
    }

    /// The current target was cancelled for not answering.
    pub(super) fn no_answer(&self) -> bool {
        self.setup.as_ref().is_some_and(|s| s.no_answer)
    }

    /// The leg a message of this call came on, by its Call-ID.
    pub(super) fn side_of(&self, call_id: &[u8]) -> Side {
        Side::a_if(call_id == &*self.legs.a.call_id)
    }

    /// The call's own armed deadlines, in the order `run_timers` handles
    /// them when several are due.
    pub(super) fn timers(&self) -> impl Iterator<Item = (CallTimer, Instant)> + use<> {
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
                self.setup
                    .as_ref()
                    .and_then(|s| s.ring_deadline)
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
    pub(super) fn next_timeout(&self) -> Option<Instant> {
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
            .chain(self.local.as_deref().into_iter().flat_map(Local::timeouts))
            .min()
    }
}
