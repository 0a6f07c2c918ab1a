//! The sans-IO engine: every party of every call (caller A, callee B,
//! transfer target C, and B's own call to C), its transactions and
//! dialogs, and the judgement of each call from both ends. Its methods
//! are spread by role over the child modules: `peer` (requests to our
//! legs, answered as strictly as a phone would), `refer` (REFER,
//! NOTIFY, Replaces), `events` (what a transaction reports), `timers`
//! (scheduled actions, expiry).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use handover_call::transfer::{self, Replaces};
use handover_call::{Dialog, DialogState};
use handover_sip::build::{Request, response, response_with_body};
use handover_sip::ids::IdGen;
use handover_sip::{HeaderName, Message, Method, scan};
use handover_txn::{
    ClientInvite, ClientNonInvite, Event, Instant, InviteState, Key, NonInviteState, ServerInvite,
    ServerNonInvite, ServerNonInviteState, TimerConfig,
};
use rand_core::RngCore;

use crate::Scenario;

mod events;
mod leg;
mod peer;
mod refer;
#[cfg(test)]
mod tests;
mod timers;

/// Why a call failed, or that it is still running.
type Outcome = Option<Result<(), String>>;

use leg::*;

/// Settings of an engine.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Our address (Via, Contact, From).
    pub local: SocketAddr,
    /// The system under test: every request and response goes there.
    pub target: SocketAddr,
    /// How long a call stays up once answered.
    pub hold: Duration,
    /// Transaction timers.
    pub timers: TimerConfig,
    /// The user that basic and hold calls call (`b`: the generator
    /// answers them itself; another user: a callee of the system under
    /// test's, such as a PBX or a SIPp UAS).
    pub callee: String,
}

/// Counts so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    /// Calls started.
    pub started: u64,
    /// Calls answered.
    pub established: u64,
    /// Calls that ended well.
    pub succeeded: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Datagrams resent by timers.
    pub retransmissions: u64,
    /// Callee legs of calls another thread started (so counted there as
    /// calls) that never got their BYE: the caller's side may have called
    /// the call a success, the callee's did not.
    pub callee_legs_failed: u64,
}

impl Counts {
    /// Adds another thread's counts.
    pub fn add(&mut self, o: &Counts) {
        self.started += o.started;
        self.established += o.established;
        self.succeeded += o.succeeded;
        self.failed += o.failed;
        self.retransmissions += o.retransmissions;
        self.callee_legs_failed += o.callee_legs_failed;
    }

    /// Every call, and every callee leg of it, ended as it should.
    pub fn all_ok(&self) -> bool {
        self.failed == 0 && self.callee_legs_failed == 0
    }
}

/// One map key for (Call-ID, tag): both joined by a line feed, which
/// neither may contain.
fn dialog_key(out: &mut Vec<u8>, call_id: &[u8], tag: &[u8]) {
    out.clear();
    out.extend_from_slice(call_id);
    out.push(b'\n');
    out.extend_from_slice(tag);
}

/// A retired leg's hash: fixed keys, so equal in every run.
fn retired_hash(call_id: &[u8], tag: &[u8]) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    call_id.hash(&mut h);
    tag.hash(&mut h);
    h.finish()
}

/// The load generator's calls, sans-IO.
#[derive(Debug)]
pub struct Engine<R> {
    cfg: EngineConfig,
    ids: IdGen<R>,
    recs: Vec<Rec>,
    /// Every call before this one has ended.
    first_open: usize,
    /// See [`Engine::foreign_rec`].
    foreign: Option<usize>,
    /// Callee legs of other threads' calls not yet ended, with when they
    /// started: judged here, since their caller cannot see them.
    foreign_open: HashMap<usize, Instant>,
    legs: HashMap<usize, Leg>,
    next_leg: usize,
    /// [`dialog_key`] of (Call-ID, our tag) → leg.
    by_dialog: HashMap<Vec<u8>, usize>,
    /// [`dialog_key`] of (Call-ID, the caller's tag) → callee leg, for
    /// requests without our tag yet (INVITE retransmissions, CANCEL).
    by_remote: HashMap<Vec<u8>, usize>,
    /// Legs of calls that just ended, to retire if they can be.
    ended: Vec<usize>,
    /// Where lookups build their key: no allocation per datagram.
    scratch: Vec<u8>,
    /// Hashes of (Call-ID, our tag) of legs retired by [`Engine::retire`],
    /// and when each may be forgotten (64*T1 after retirement).
    retired: HashSet<u64>,
    retired_q: VecDeque<(Instant, u64)>,
    timers: BinaryHeap<Reverse<(Instant, usize)>>,
    out: Vec<Vec<u8>>,
    counts: Counts,
    /// Calls started, not yet answered, not yet ended.
    setting_up: u64,
    failures: BTreeMap<String, u64>,
    setup: Vec<u32>,
    by_scenario: BTreeMap<Scenario, (u64, u64)>,
}

const SDP_DIRS: [&str; 4] = ["sendrecv", "sendonly", "recvonly", "inactive"];

fn sdp(who: &str, local: SocketAddr, ver: u32, dir: &str) -> Vec<u8> {
    format!(
        "v=0\r\no={who} 1 {ver} IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\na={dir}\r\n",
        ip = local.ip()
    )
    .into_bytes()
}

/// The direction that answers an offer's (RFC 3264 §6.1).
fn answer_dir(offer: &[u8]) -> &'static str {
    let dir = SDP_DIRS
        .into_iter()
        .find(|d| {
            offer
                .windows(d.len() + 2)
                .any(|w| w.starts_with(b"a=") && &w[2..] == d.as_bytes())
        })
        .unwrap_or("sendrecv");
    match dir {
        "sendonly" => "recvonly",
        "recvonly" => "sendonly",
        "inactive" => "inactive",
        _ => "sendrecv",
    }
}

/// The user of a From value `<sip:a123@…>` as (letter, call number).
fn from_user(m: &Message<'_>) -> Option<(u8, usize)> {
    let f = m.from().ok()?;
    let u = f.uri().user()?;
    let (&c, num) = u.split_first()?;
    Some((c, core::str::from_utf8(num).ok()?.parse().ok()?))
}

/// A leg's party in failure causes.
fn role(kind: Kind) -> &'static str {
    match kind {
        Kind::A => "A",
        Kind::A2 => "A (to C)",
        Kind::B2 => "B (to C)",
        Kind::Callee(Callee::C) => "C",
        Kind::Callee(_) => "B",
    }
}

/// The event package of a NOTIFY's Event header (`refer;id=5` → `refer`).
fn event_package(m: &Message<'_>) -> Option<Vec<u8>> {
    let v = m.header(HeaderName::Event)?.value.of(m.buf());
    let end = v.iter().position(|&c| c == b';').unwrap_or(v.len());
    Some(v[..end].trim_ascii().to_ascii_lowercase())
}

impl<R: RngCore> Engine<R> {
    /// An engine with `rng` for tags, branches and Call-IDs.
    pub fn new(cfg: EngineConfig, rng: R) -> Self {
        Self {
            cfg,
            ids: IdGen::new(rng),
            recs: Vec::new(),
            first_open: 0,
            foreign: None,
            foreign_open: HashMap::new(),
            legs: HashMap::new(),
            next_leg: 0,
            by_dialog: HashMap::new(),
            by_remote: HashMap::new(),
            ended: Vec::new(),
            scratch: Vec::new(),
            retired: HashSet::new(),
            retired_q: VecDeque::new(),
            timers: BinaryHeap::new(),
            out: Vec::new(),
            counts: Counts::default(),
            setting_up: 0,
            failures: BTreeMap::new(),
            setup: Vec::new(),
            by_scenario: BTreeMap::new(),
        }
    }

    /// Counts so far.
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Calls started and not yet ended, and callee legs of other
    /// threads' calls still waiting for their BYE.
    pub fn active(&self) -> u64 {
        self.counts.started - self.counts.succeeded - self.counts.failed
            + self.foreign_open.len() as u64
    }

    /// Legs held in memory (retired legs are not).
    pub fn legs(&self) -> usize {
        self.legs.len()
    }

    /// Calls started and not yet answered (nor ended).
    pub fn setting_up(&self) -> u64 {
        self.setting_up
    }

    /// Failures by cause.
    pub fn failures(&self) -> &BTreeMap<String, u64> {
        &self.failures
    }

    /// (succeeded, failed) per scenario.
    pub fn by_scenario(&self) -> &BTreeMap<Scenario, (u64, u64)> {
        &self.by_scenario
    }

    /// Setup latencies (INVITE to 2xx), microseconds, in arrival order.
    pub fn setup_latencies(&self) -> &[u32] {
        &self.setup
    }

    /// All datagrams to send, in order.
    pub fn drain_transmit(&mut self) -> std::vec::Drain<'_, Vec<u8>> {
        self.out.drain(..)
    }

    /// When to call [`Engine::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Fails every call still running with `cause` (the run's deadline).
    pub fn abandon(&mut self, cause: &str) {
        for i in 0..self.recs.len() {
            if self.recs[i].outcome.is_none() {
                let why = self.unended(i).map_or_else(
                    || cause.to_string(),
                    |role| format!("{cause}: {role} leg never got its BYE"),
                );
                self.finish(i, Err(why));
            }
        }
        let open: Vec<usize> = self.foreign_open.drain().map(|(l, _)| l).collect();
        for leg in open {
            self.foreign_failed(leg, cause);
        }
    }

    /// A callee leg of another thread's call that did not end well.
    fn foreign_failed(&mut self, leg: usize, why: &str) {
        self.counts.callee_legs_failed += 1;
        let role = self.legs.get(&leg).map_or("B", |l| role(l.kind));
        *self
            .failures
            .entry(format!(
                "{why}: {role} leg (another thread's call) never got its BYE"
            ))
            .or_default() += 1;
        if let Some(l) = self.legs.remove(&leg) {
            self.forget_keys(&l);
        }
    }

    /// The role of the first leg of call `rec` whose dialog has not ended
    /// as the scenario expects, if any.
    fn unended(&self, rec: usize) -> Option<&'static str> {
        self.recs[rec]
            .legs
            .iter()
            .filter_map(|l| self.legs.get(l))
            .find(|l| l.dialog.is_some() && !l.ended_ok)
            .map(|l| role(l.kind))
    }

    /// Ends call `rec` well if every party is done: its last leg's BYE
    /// answered 2xx, every other leg with a dialog ended as its role
    /// expects (BYE sent and answered, or received), and a transfer's
    /// transferor heard a 2xx sipfrag.
    fn check_complete(&mut self, rec: usize) {
        let r = &self.recs[rec];
        if r.outcome.is_some() || !self.legs.get(&r.last_leg).is_some_and(|l| l.ended_ok) {
            return;
        }
        if matches!(r.scenario, Scenario::Blind | Scenario::Attended) && !r.transfer_ok {
            // The transferee's NOTIFY may still be on its way (resent
            // while a moving shard has no server): judged when it ends.
            if !self.notify_in_flight(rec) {
                self.finish(rec, Err("transfer not completed".into()));
            }
            return;
        }
        if self.unended(rec).is_none() {
            self.finish(rec, Ok(()));
        }
    }

    /// Whether a NOTIFY sent on one of call `rec`'s legs awaits its
    /// final answer.
    fn notify_in_flight(&self, rec: usize) -> bool {
        self.recs[rec]
            .legs
            .iter()
            .filter_map(|l| self.legs.get(l))
            .flat_map(|l| &l.nits)
            .any(|n| {
                matches!(n, Nit::Client(_, t, "NOTIFY")
                    if matches!(t.state(), NonInviteState::Trying | NonInviteState::Proceeding))
            })
    }

    /// A call record for callee legs of calls this engine did not start:
    /// already ended, so it is never counted.
    fn foreign_rec(&mut self) -> usize {
        if let Some(i) = self.foreign {
            return i;
        }
        let now = Instant::from_epoch(Duration::ZERO);
        self.recs.push(Rec {
            scenario: Scenario::Basic,
            started: now,
            established: true,
            outcome: Some(Ok(())),
            transfer_ok: false,
            last_leg: usize::MAX,
            b_leg: None,
            b2_leg: None,
            legs: Vec::new(),
        });
        self.foreign = Some(self.recs.len() - 1);
        self.recs.len() - 1
    }

    fn finish(&mut self, rec: usize, outcome: Result<(), String>) {
        let r = &mut self.recs[rec];
        if r.outcome.is_some() {
            return;
        }
        if !r.established {
            self.setting_up -= 1;
        }
        let e = self.by_scenario.entry(r.scenario).or_default();
        match &outcome {
            Ok(()) => {
                self.counts.succeeded += 1;
                e.0 += 1;
            }
            Err(cause) => {
                self.counts.failed += 1;
                e.1 += 1;
                *self.failures.entry(cause.clone()).or_default() += 1;
            }
        }
        r.outcome = Some(outcome);
        // Its legs may now be retired (see `retire_ended`).
        self.ended.append(&mut r.legs);
    }

    fn via(&mut self) -> Vec<u8> {
        format!(
            "SIP/2.0/UDP {};branch={};rport",
            self.cfg.local,
            self.ids.branch()
        )
        .into_bytes()
    }

    fn contact(&self, user: &str) -> Vec<u8> {
        format!("<sip:{user}@{}>", self.cfg.local).into_bytes()
    }

    fn schedule(&mut self, leg: usize) {
        if let Some(t) = self.legs.get(&leg).and_then(Leg::next_timeout) {
            self.timers.push(Reverse((t, leg)));
        }
    }

    fn new_leg(
        &mut self,
        rec: usize,
        kind: Kind,
        call_id: Vec<u8>,
        local_tag: Vec<u8>,
        remote_tag: Option<Vec<u8>>,
    ) -> usize {
        let id = self.next_leg;
        self.next_leg += 1;
        if self.recs[rec].outcome.is_none() {
            self.recs[rec].legs.push(id);
        }
        let mut k = Vec::with_capacity(call_id.len() + 1 + local_tag.len());
        dialog_key(&mut k, &call_id, &local_tag);
        self.by_dialog.insert(k, id);
        if let Some(r) = &remote_tag {
            let mut k = Vec::with_capacity(call_id.len() + 1 + r.len());
            dialog_key(&mut k, &call_id, r);
            self.by_remote.insert(k, id);
        }
        self.legs.insert(
            id,
            Leg {
                rec,
                kind,
                call_id,
                local_tag,
                remote_tag,
                dialog: None,
                cli: None,
                ack: None,
                srv: None,
                ok: None,
                nits: Vec::new(),
                wake: None,
                replaces: None,
                acked: false,
                over: false,
                ended_ok: false,
                referred: false,
                bye_refused: None,
            },
        );
        id
    }

    /// Starts call number `n` of scenario `s`.
    pub fn start_call(&mut self, now: Instant, s: Scenario) {
        let rec = self.recs.len();
        self.recs.push(Rec {
            scenario: s,
            started: now,
            established: false,
            outcome: None,
            transfer_ok: false,
            last_leg: 0,
            b_leg: None,
            b2_leg: None,
            legs: Vec::new(),
        });
        self.counts.started += 1;
        self.setting_up += 1;
        let user = match s {
            Scenario::Basic | Scenario::Hold => self.cfg.callee.clone(),
            _ => s.callee().to_string(),
        };
        let leg = self.invite(now, rec, Kind::A, &format!("a{rec}"), &user, &[]);
        self.recs[rec].last_leg = leg;
    }

    /// A new outgoing call leg: INVITE from `from_user` to `to_user` at the
    /// target, with our offer.
    fn invite(
        &mut self,
        now: Instant,
        rec: usize,
        kind: Kind,
        from_user: &str,
        to_user: &str,
        headers: &[(&str, &[u8])],
    ) -> usize {
        let call_id = self.ids.call_id().as_bytes().to_vec();
        let tag = self.ids.tag();
        let via = self.via();
        let uri = format!("sip:{to_user}@{}", self.cfg.target);
        let to = format!("<{uri}>");
        let from = format!("<sip:{from_user}@{}>", self.cfg.local);
        let contact = self.contact(from_user);
        let body = sdp(from_user, self.cfg.local, 1, "sendrecv");
        let inv = Request {
            method: "INVITE",
            uri: uri.as_bytes(),
            via: &[&via],
            from: from.as_bytes(),
            from_tag: tag.as_bytes(),
            to: to.as_bytes(),
            call_id: &call_id,
            cseq: 1,
            max_forwards: 70,
            contact: Some(&contact),
            headers,
            body: Some((b"application/sdp", &body)),
            ..Default::default()
        }
        .to_vec();
        let leg = self.new_leg(rec, kind, call_id, tag.as_bytes().to_vec(), None);
        if let Ok(k) = scan(&inv).map(|m| Key::server(&m)) {
            let t = ClientInvite::new(now, self.cfg.timers, inv.clone());
            if let Some(l) = self.legs.get_mut(&leg) {
                l.cli = Some((inv, k, t, Wake::Bye));
            }
        }
        self.drain_leg(now, leg);
        leg
    }

    /// One datagram from the target.
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) {
        let Ok(m) = scan(bytes) else { return };
        let cid = m.call_id();
        let leg = if m.is_request() {
            match m.to_tag() {
                Some(t) => self.lookup(false, cid, t),
                None => m.from_tag().and_then(|f| self.lookup(true, cid, f)),
            }
        } else {
            m.from_tag().and_then(|f| self.lookup(false, cid, f))
        };
        match (m.is_request(), leg) {
            (true, Some(l)) => self.request(now, l, &m),
            (true, None) => {
                if let Some(t) = m.to_tag()
                    && self.retired.contains(&retired_hash(cid, t))
                {
                    // A request in a dialog we have retired: a BYE resent
                    // because our 200 was lost is answered again (the 200
                    // is rebuilt from the request), the rest as unknown.
                    match m.method() {
                        Some(Method::Ack) => {}
                        Some(Method::Bye) => self.reply(&m, 200),
                        _ => self.reply(&m, 481),
                    }
                    return;
                }
                self.new_request(now, &m)
            }
            (false, Some(l)) => self.response(now, l, &m),
            (false, None) => {}
        }
        self.retire_ended(now);
    }

    /// Retires what it can of the legs of calls that ended; the others go
    /// when their own last transaction is drained (or by `sweep`).
    fn retire_ended(&mut self, now: Instant) {
        while let Some(leg) = self.ended.pop() {
            if self.retirable(leg) {
                self.retire(now, leg);
            }
        }
    }

    /// The leg of (Call-ID, tag): ours when `remote` is false, the caller's
    /// (callee legs only) when true.
    fn lookup(&mut self, remote: bool, call_id: &[u8], tag: &[u8]) -> Option<usize> {
        dialog_key(&mut self.scratch, call_id, tag);
        let map = if remote {
            &self.by_remote
        } else {
            &self.by_dialog
        };
        map.get(self.scratch.as_slice()).copied()
    }

    fn reply(&mut self, m: &Message<'_>, status: u16) {
        let mut r = Vec::new();
        response(&m.reply_parts(), status, None, None, &[], &mut r);
        self.out.push(r);
    }

    fn response(&mut self, now: Instant, leg: usize, m: &Message<'_>) {
        let key = Key::client(m);
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        if let Some(c) = l.cli.as_mut().filter(|c| c.1 == key) {
            c.2.handle_response(now, m);
        } else {
            for n in &mut l.nits {
                if let Nit::Client(k, t, _) = n
                    && *k == key
                {
                    t.handle_response(now, m);
                }
            }
        }
        self.drain_leg(now, leg);
    }

    /// Sends what `leg`'s transactions queued and acts on their events.
    fn drain_leg(&mut self, now: Instant, leg: usize) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let mut inv_events = Vec::new();
        if let Some(c) = l.cli.as_mut() {
            while let Some(b) = c.2.poll_transmit() {
                self.out.push(b);
            }
            while let Some(e) = c.2.poll_event() {
                inv_events.push(e);
            }
        }
        if let Some((_, s)) = l.srv.as_mut() {
            while let Some(b) = s.poll_transmit() {
                self.out.push(b);
            }
            while s.poll_event().is_some() {}
        }
        let mut nit_events = Vec::new();
        for n in &mut l.nits {
            match n {
                Nit::Client(_, t, what) => {
                    while let Some(b) = t.poll_transmit() {
                        self.out.push(b);
                    }
                    while let Some(e) = t.poll_event() {
                        nit_events.push((*what, e));
                    }
                }
                Nit::Server(_, t) => {
                    while let Some(b) = t.poll_transmit() {
                        self.out.push(b);
                    }
                    while t.poll_event().is_some() {}
                }
            }
        }
        for e in inv_events {
            self.on_invite_event(now, leg, e);
        }
        for (what, e) in nit_events {
            self.on_nit_event(leg, what, e);
        }
        if self.retirable(leg) {
            self.retire(now, leg);
        } else {
            self.schedule(leg);
        }
    }

    /// A leg whose call has ended, whose dialog is over, and whose timers
    /// would only absorb retransmissions (Timers D, J, K and the Accepted
    /// state): nothing is left for it to send.
    fn retirable(&self, leg: usize) -> bool {
        let Some(l) = self.legs.get(&leg) else {
            return false;
        };
        self.recs[l.rec].outcome.is_some()
            && (l.over || l.dialog.is_none())
            && l.wake.is_none()
            && l.ok.is_none()
            && l.cli.as_ref().is_none_or(|c| {
                !matches!(c.2.state(), InviteState::Calling | InviteState::Proceeding)
            })
            && l.nits.iter().all(|n| match n {
                Nit::Client(_, t, _) => !matches!(
                    t.state(),
                    NonInviteState::Trying | NonInviteState::Proceeding
                ),
                Nit::Server(_, t) => matches!(
                    t.state(),
                    ServerNonInviteState::Completed | ServerNonInviteState::Terminated
                ),
            })
    }

    /// Forgets a finished leg at once, keeping only a hash of its dialog
    /// for 64*T1 so that a resent BYE is still answered 200 (the memory
    /// of a long run stays bounded by the rate, not the call count).
    fn retire(&mut self, now: Instant, leg: usize) {
        let Some(l) = self.legs.remove(&leg) else {
            return;
        };
        self.forget_keys(&l);
        let h = retired_hash(&l.call_id, &l.local_tag);
        self.retired.insert(h);
        self.retired_q.push_back((now + self.cfg.timers.t1x64(), h));
    }

    fn forget_keys(&mut self, l: &Leg) {
        dialog_key(&mut self.scratch, &l.call_id, &l.local_tag);
        self.by_dialog.remove(self.scratch.as_slice());
        if let Some(r) = &l.remote_tag {
            dialog_key(&mut self.scratch, &l.call_id, r);
            self.by_remote.remove(self.scratch.as_slice());
        }
    }
}
