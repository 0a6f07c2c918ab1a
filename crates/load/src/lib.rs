//! `handover load`: a SIP load generator that plays every party of its
//! scenarios itself over one UDP socket: the caller (A), the callee (B),
//! and the transfer target (C). The system under test routes the users it
//! calls (`b`, `xb`, `ab`, `c`) back to the generator's own address.
//!
//! Scenarios (mixed by weight):
//! - `basic`: INVITE, 180/200, ACK, hold time, BYE.
//! - `hold`: the same with re-INVITE a=sendonly (expects a=recvonly back)
//!   and a=sendrecv during the call.
//! - `blind`: B sends REFER (Refer-To: C) after answering; A obeys (202,
//!   NOTIFY 100, INVITE to C with Referred-By, NOTIFY 200 when C answers);
//!   B hangs up after the final NOTIFY; A and C talk, then A hangs up. With
//!   a B2BUA in local mode A sees a re-INVITE instead, and B the B2BUA's
//!   NOTIFYs and BYE: both are played.
//! - `attended`: B first calls C itself, then REFERs A with a Replaces
//!   naming that call; A's INVITE carries the Replaces, and C hangs up the
//!   replaced dialog once A's call is up (or, in local mode, C takes the
//!   B2BUA's re-INVITE).
//!
//! Every transaction runs through `handover-txn` (retransmissions with T1
//! doubling, absorption of the peer's retransmissions), and every dialog
//! through `handover-call`'s `Dialog`. A call succeeds when its last BYE is
//! answered 2xx (and, for transfers, the transferor heard a 2xx sipfrag);
//! anything else fails it, once, with a cause: the status line that ended
//! it, `timeout (METHOD)`, or what was unexpected.
//!
//! The engine is sans-IO ([`Engine`]); [`run`] is the socket shell.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::time::Duration;

use handover_call::transfer::{self, Replaces};
use handover_call::{Dialog, DialogState};
pub use handover_edge::IoMode;
use handover_sip::build::{Request, response, response_with_body};
use handover_sip::ids::IdGen;
use handover_sip::{HeaderName, Message, Method, scan};
use handover_txn::{
    ClientInvite, ClientNonInvite, Event, Instant, InviteState, Key, NonInviteState, ServerInvite,
    ServerNonInvite, ServerNonInviteState, TimerConfig,
};
use rand_core::RngCore;

/// A call flow of the mix.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// INVITE, answer, hold time, BYE.
    Basic,
    /// A basic call with re-INVITE hold and resume.
    Hold,
    /// Blind transfer (REFER, NOTIFY, the transferee calls the target).
    Blind,
    /// Attended transfer (REFER with Replaces).
    Attended,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Basic,
        Scenario::Hold,
        Scenario::Blind,
        Scenario::Attended,
    ];

    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Basic => "basic",
            Self::Hold => "hold",
            Self::Blind => "blind",
            Self::Attended => "attended",
        }
    }

    /// The user the caller calls (the callee's behaviour).
    fn callee(self) -> &'static str {
        match self {
            Self::Basic | Self::Hold => "b",
            Self::Blind => "xb",
            Self::Attended => "ab",
        }
    }
}

/// Weights of the scenarios, e.g. `basic=70,hold=10,blind=10,attended=10`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mix(Vec<(Scenario, u32)>);

impl Default for Mix {
    fn default() -> Self {
        Self(vec![(Scenario::Basic, 1)])
    }
}

impl core::str::FromStr for Mix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let mut v = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, w) = part.split_once('=').unwrap_or((part, "1"));
            let sc = Scenario::ALL
                .into_iter()
                .find(|x| x.name() == name)
                .ok_or_else(|| {
                    format!("scenario `{name}` is not one of: basic, hold, blind, attended")
                })?;
            let w: u32 = w
                .parse()
                .map_err(|_| format!("weight `{w}` of `{name}` is not a whole number"))?;
            if w > 0 {
                v.push((sc, w));
            }
        }
        if v.is_empty() {
            return Err("the mix has no scenario with a weight above 0".into());
        }
        Ok(Self(v))
    }
}

impl Mix {
    /// Whether it plays transfers (whose parties must share one engine).
    pub fn has_transfers(&self) -> bool {
        self.0
            .iter()
            .any(|(s, _)| matches!(s, Scenario::Blind | Scenario::Attended))
    }

    /// The scenario of call number `n`: weights respected over any run of
    /// calls, interleaved rather than in blocks.
    pub fn pick(&self, n: u64) -> Scenario {
        let total: u64 = self.0.iter().map(|(_, w)| u64::from(*w)).sum();
        // A low-discrepancy walk (golden ratio) spreads each scenario out.
        let mut at = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % total;
        for (s, w) in &self.0 {
            if at < u64::from(*w) {
                return *s;
            }
            at -= u64::from(*w);
        }
        self.0[0].0
    }
}

/// Why a call failed, or that it is still running.
type Outcome = Option<Result<(), String>>;

#[derive(Debug)]
struct Rec {
    scenario: Scenario,
    started: Instant,
    established: bool,
    outcome: Outcome,
    /// The transferor heard a 2xx sipfrag.
    transfer_ok: bool,
    /// The leg whose BYE ends the call (A's, or A's call to C).
    last_leg: usize,
    /// B's leg (the transferor's, with A).
    b_leg: Option<usize>,
    /// B's own call to C (attended).
    b2_leg: Option<usize>,
    /// Every leg of this call (checked for retirement when it ends).
    legs: Vec<usize>,
}

/// What a leg of ours is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A, calling.
    A,
    /// A calling the transfer target.
    A2,
    /// B calling C (attended transfer).
    B2,
    /// Answering a call for this user (`b`, `xb`, `ab`, `c`).
    Callee(Callee),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Callee {
    B,
    XferB,
    AttB,
    C,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wake {
    Bye,
    Hold,
    Resume,
    Refer,
    CallC,
}

/// A 2xx we resend (T1 doubling to T2) until its ACK.
#[derive(Debug)]
struct Resend {
    bytes: Vec<u8>,
    next: Instant,
    interval: Duration,
    give_up: Instant,
}

#[derive(Debug)]
enum Nit {
    Client(Key, ClientNonInvite, &'static str),
    Server(Key, ServerNonInvite),
}

#[derive(Debug)]
struct Leg {
    rec: usize,
    kind: Kind,
    call_id: Vec<u8>,
    /// Our tag: with the Call-ID, what finds this leg (one process plays
    /// both ends of a dialog when it calls itself).
    local_tag: Vec<u8>,
    /// A callee's: the caller's tag, which finds it before it has ours.
    remote_tag: Option<Vec<u8>>,
    dialog: Option<Dialog>,
    /// Our INVITE or re-INVITE: request, key, transaction, what it was for.
    cli: Option<(Vec<u8>, Key, ClientInvite, Wake)>,
    ack: Option<Vec<u8>>,
    srv: Option<(Key, ServerInvite)>,
    ok: Option<Resend>,
    nits: Vec<Nit>,
    wake: Option<(Instant, Wake)>,
    /// C: the leg (of ours) this call replaces, hung up after the ACK;
    /// A2: A's leg with the transferor, to NOTIFY.
    replaces: Option<usize>,
    /// Our first 2xx was ACKed (later ACKs are of re-INVITEs).
    acked: bool,
    over: bool,
    /// The dialog ended as the role expects: our BYE was answered 2xx, or
    /// the peer's BYE came where the scenario has the peer hang up. A
    /// call succeeds only once every leg of it with a dialog has this.
    ended_ok: bool,
    /// This leg sent a REFER (the transferor's): only it takes NOTIFYs.
    referred: bool,
    /// A status other than 2xx that answered our BYE (the call fails with
    /// it unless the peer's own BYE ends the dialog meanwhile).
    bye_refused: Option<u16>,
}

impl Leg {
    fn next_timeout(&self) -> Option<Instant> {
        let nits = self.nits.iter().filter_map(|n| match n {
            Nit::Client(_, t, _) => t.poll_timeout(),
            Nit::Server(_, t) => t.poll_timeout(),
        });
        [
            self.cli.as_ref().and_then(|c| c.2.poll_timeout()),
            self.srv.as_ref().and_then(|s| s.1.poll_timeout()),
            self.ok.as_ref().map(|o| o.next),
            self.wake.map(|w| w.0),
        ]
        .into_iter()
        .flatten()
        .chain(nits)
        .min()
    }
}

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
            self.finish(rec, Err("transfer not completed".into()));
            return;
        }
        if self.unended(rec).is_none() {
            self.finish(rec, Ok(()));
        }
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

    fn new_request(&mut self, now: Instant, m: &Message<'_>) {
        if m.method() == Some(Method::Options) && m.to_tag().is_none() {
            // A health probe (the edge's): we are up.
            self.reply(m, 200);
            return;
        }
        if m.method() != Some(Method::Invite) || m.to_tag().is_some() {
            if m.method() != Some(Method::Ack) {
                self.reply(m, 481);
            }
            return;
        }
        // An INVITE with Replaces must name a dialog of ours exactly, as
        // a phone checks it (RFC 3891 §3); the replaced dialog is hung up
        // once this call is up.
        let replaced = match m.header(HeaderName::Replaces) {
            None => None,
            Some(h) => match self.replaces_check(h.value.of(m.buf())) {
                Ok(leg) => Some(leg),
                Err(status) => {
                    self.reply(m, status);
                    return;
                }
            },
        };
        // Who answers: the party of the replaced dialog (the INVITE may be
        // addressed to that dialog's Contact, as RFC 3891 flows do), or the
        // user of the Request-URI.
        let user = m.request_uri().and_then(|u| u.user()).unwrap_or_default();
        let callee = match (
            replaced.and_then(|l| self.legs.get(&l)).map(|l| l.kind),
            user,
        ) {
            (Some(Kind::Callee(c)), _) => c,
            (_, b"b") => Callee::B,
            (_, b"xb") => Callee::XferB,
            (_, b"ab") => Callee::AttB,
            (_, b"c") => Callee::C,
            _ => {
                self.reply(m, 404);
                return;
            }
        };
        let foreign = from_user(m).filter(|(_, r)| *r < self.recs.len()).is_none();
        let rec = match from_user(m).filter(|(_, r)| *r < self.recs.len()) {
            Some((_, r)) => r,
            // A plain callee answers calls of any generator (another thread
            // of ours behind the same system): they count on the caller's
            // side, so its leg hangs off a call record that counts nothing,
            // and is judged here (`foreign_open`).
            None if callee == Callee::B => self.foreign_rec(),
            None => {
                self.reply(m, 404);
                return;
            }
        };
        let tag = self.ids.tag().as_bytes().to_vec();
        let remote = m.from_tag().map(<[u8]>::to_vec);
        let leg = self.new_leg(rec, Kind::Callee(callee), m.call_id().to_vec(), tag, remote);
        if foreign {
            self.foreign_open.insert(leg, now);
        }
        if callee != Callee::C {
            self.recs[rec].b_leg = Some(leg);
        }
        if let Some(l) = self.legs.get_mut(&leg) {
            l.replaces = replaced;
        }
        self.answer_invite(now, leg, m, true);
        self.drain_leg(now, leg);
    }

    /// The leg a `Replaces` value names, or the status that refuses it
    /// (RFC 3891 §3): 481 when no dialog of ours has that Call-ID, our tag
    /// as to-tag and the peer's as from-tag, or when it names an early
    /// dialog we did not originate (a callee leg not yet ACKed); 603 when
    /// that dialog has ended; 486 for `early-only` and a confirmed dialog.
    fn replaces_check(&mut self, value: &[u8]) -> Result<usize, u16> {
        let r = Replaces::parse(value).ok_or(400u16)?;
        let Some(leg) = self.lookup(false, &r.call_id, &r.to_tag) else {
            // A dialog of ours that ended and was retired: terminated.
            let gone = self.retired.contains(&retired_hash(&r.call_id, &r.to_tag));
            return Err(if gone { 603 } else { 481 });
        };
        let l = self.legs.get(&leg).ok_or(481u16)?;
        let d = l.dialog.as_ref().ok_or(481u16)?;
        if d.id.remote_tag != r.from_tag {
            return Err(481);
        }
        if l.over {
            return Err(603);
        }
        if matches!(l.kind, Kind::Callee(_)) && !l.acked {
            return Err(481);
        }
        if r.early_only {
            return Err(486);
        }
        Ok(leg)
    }

    /// Answers an INVITE (new or re-INVITE) on `leg`: 180 for a new call,
    /// then 200 with SDP answering its offer (or offering, if it had none).
    fn answer_invite(&mut self, now: Instant, leg: usize, m: &Message<'_>, new: bool) {
        let local = self.cfg.local;
        let timers = self.cfg.timers;
        let contact = self.contact("uas");
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let mut srv = ServerInvite::new(now, timers, m);
        let tag = l.local_tag.clone();
        // A UAS copies Record-Route into its 1xx/2xx (RFC 3261 §12.1.1), so
        // the caller's in-dialog requests keep to the proxies' path.
        let mut extra: Vec<(&str, &[u8])> = m
            .headers()
            .filter(|h| h.name == HeaderName::RecordRoute)
            .map(|h| ("Record-Route", h.value.of(m.buf())))
            .collect();
        extra.push(("Contact", &contact));
        if new {
            l.dialog = Dialog::uas(m, &tag, DialogState::Confirmed).ok();
            let mut r = Vec::new();
            response(&m.reply_parts(), 180, None, Some(&tag), &extra, &mut r);
            srv.send_response(now, 180, r);
        } else if let Some(d) = l.dialog.as_mut()
            && let Err(e) = d.handle_request(m)
        {
            let mut r = Vec::new();
            response(&m.reply_parts(), e.status(), None, None, &[], &mut r);
            srv.send_response(now, e.status(), r);
            l.srv = Some((Key::server(m), srv));
            return;
        }
        let dir = answer_dir(m.body());
        let body = sdp("uas", local, 2, dir);
        let mut ok = Vec::new();
        response_with_body(
            &m.reply_parts(),
            200,
            None,
            Some(&tag),
            &extra,
            Some((b"application/sdp", &body)),
            &mut ok,
        );
        srv.send_response(now, 200, ok.clone());
        l.srv = Some((Key::server(m), srv));
        l.ok = Some(Resend {
            bytes: ok,
            next: now + timers.t1,
            interval: timers.t1,
            give_up: now + timers.t1x64(),
        });
    }

    fn server_nit(&mut self, now: Instant, leg: usize, m: &Message<'_>, status: u16) {
        let mut r = Vec::new();
        response(&m.reply_parts(), status, None, None, &[], &mut r);
        let mut t = ServerNonInvite::new(now, self.cfg.timers);
        t.send_response(now, status, r);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.nits.push(Nit::Server(Key::server(m), t));
        }
    }

    /// An in-dialog request from us on `leg` (NIT), with `headers`, `body`.
    fn send_nit(
        &mut self,
        now: Instant,
        leg: usize,
        method: &'static str,
        headers: &[(&str, &[u8])],
        body: Option<(&[u8], &[u8])>,
    ) {
        let via = self.via();
        let contact = self.contact("ua");
        let timers = self.cfg.timers;
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Some(d) = l.dialog.as_mut() else { return };
        let with_contact = matches!(method, "REFER" | "NOTIFY");
        let req = d.request(
            method,
            None,
            &via,
            with_contact.then_some(contact.as_slice()),
            headers,
            body,
        );
        if let Ok(k) = scan(&req).map(|m| Key::server(&m)) {
            l.nits.push(Nit::Client(
                k,
                ClientNonInvite::new(now, timers, req),
                method,
            ));
        }
        if method == "BYE" {
            l.over = true;
        }
    }

    fn notify(&mut self, now: Instant, leg: usize, status: &str, terminated: bool) {
        let state: &[u8] = if terminated {
            b"terminated;reason=noresource"
        } else {
            b"active;expires=60"
        };
        let frag = format!("SIP/2.0 {status}\r\n");
        self.send_nit(
            now,
            leg,
            "NOTIFY",
            &[("Event", b"refer"), ("Subscription-State", state)],
            Some((b"message/sipfrag;version=2.0", frag.as_bytes())),
        );
    }

    fn request(&mut self, now: Instant, leg: usize, m: &Message<'_>) {
        let key = Key::server(m);
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        // Retransmissions: the transaction answers them again.
        for n in &mut l.nits {
            if let Nit::Server(k, t) = n
                && *k == key
            {
                t.handle_request(now);
                self.drain_leg(now, leg);
                return;
            }
        }
        if let Some((k, s)) = l.srv.as_mut()
            && *k == key
            && m.method() == Some(Method::Invite)
        {
            s.handle_request(now, m);
            self.drain_leg(now, leg);
            return;
        }
        let (rec, kind) = (l.rec, l.kind);
        let method = m.method();
        // A dialog is Call-ID and both tags (RFC 3261 §12.2.2): the lookup
        // matched Call-ID and our tag; the peer's tag must match too, and
        // a request before the dialog exists matches none. ACK and CANCEL
        // belong to their INVITE's transaction.
        if !matches!(method, Some(Method::Ack | Method::Cancel)) {
            let matches = l
                .dialog
                .as_ref()
                .is_some_and(|d| Some(d.id.remote_tag.as_slice()) == m.from_tag());
            if !matches {
                self.server_nit(now, leg, m, 481);
                self.drain_leg(now, leg);
                return;
            }
        }
        // CSeq order (§12.2.2: lower than the last is refused 500); the
        // re-INVITE's check is in `answer_invite`.
        if !matches!(method, Some(Method::Invite))
            && let Some(d) = l.dialog.as_mut()
            && let Err(e) = d.handle_request(m)
        {
            self.server_nit(now, leg, m, e.status());
            self.drain_leg(now, leg);
            return;
        }
        match method {
            Some(Method::Ack) => {
                let was_waiting = l.ok.take().is_some();
                if was_waiting {
                    self.after_ack(now, leg);
                }
            }
            Some(Method::Invite) if l.over => self.server_invite_refusal(now, leg, m, 481),
            Some(Method::Invite) => self.answer_invite(now, leg, m, false),
            Some(Method::Bye) => {
                let over = l.over;
                l.over = true;
                l.wake = None;
                self.server_nit(now, leg, m, 200);
                if !over {
                    self.peer_hung_up(leg, rec, kind);
                }
                // Whoever sent it first, the dialog is over for both.
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.ended_ok = true;
                }
                self.foreign_open.remove(&leg);
                self.check_complete(rec);
            }
            _ if l.over => self.server_nit(now, leg, m, 481),
            Some(Method::Refer) if kind == Kind::A => self.obey_refer(now, leg, m),
            // Only the transferee takes a REFER (RFC 3261 §8.2.1: 405 with
            // Allow for a method known but not allowed here).
            Some(Method::Refer) => self.refuse_method(now, leg, m, 405),
            Some(Method::Notify) => {
                // Only the refer event package, and only on the leg that
                // sent a REFER: 489 Bad Event (RFC 6665 §4.2.2), 481 for
                // no subscription.
                if event_package(m).as_deref() != Some(b"refer".as_slice()) {
                    self.server_nit(now, leg, m, 489);
                } else if !l.referred {
                    self.server_nit(now, leg, m, 481);
                } else {
                    self.server_nit(now, leg, m, 200);
                    self.transfer_progress(now, leg, rec, m);
                }
            }
            Some(Method::Cancel) => self.server_nit(now, leg, m, 200),
            Some(Method::Options) => self.server_nit(now, leg, m, 200),
            // UPDATE, INFO, MESSAGE, SUBSCRIBE, PRACK, PUBLISH, REGISTER and
            // methods we do not know: this phone implements none of them.
            _ => self.server_nit(now, leg, m, 501),
        }
        self.drain_leg(now, leg);
    }

    /// A 405 that says what this leg does take (RFC 3261 §8.2.1).
    fn refuse_method(&mut self, now: Instant, leg: usize, m: &Message<'_>, status: u16) {
        let mut r = Vec::new();
        response(
            &m.reply_parts(),
            status,
            None,
            None,
            &[("Allow", b"INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY")],
            &mut r,
        );
        let mut t = ServerNonInvite::new(now, self.cfg.timers);
        t.send_response(now, status, r);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.nits.push(Nit::Server(Key::server(m), t));
        }
    }

    /// A final non-2xx to an INVITE in a dialog that cannot take it.
    fn server_invite_refusal(&mut self, now: Instant, leg: usize, m: &Message<'_>, status: u16) {
        let timers = self.cfg.timers;
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let mut srv = ServerInvite::new(now, timers, m);
        let mut r = Vec::new();
        response(&m.reply_parts(), status, None, None, &[], &mut r);
        srv.send_response(now, status, r);
        l.srv = Some((Key::server(m), srv));
    }

    /// The far end hung up `leg`: fine where the scenario expects it.
    fn peer_hung_up(&mut self, leg: usize, rec: usize, kind: Kind) {
        let r = &self.recs[rec];
        let expected = match kind {
            // The callee of a basic call hears A's BYE; the transferor and
            // C of an attended call are hung up by the B2BUA or by C.
            Kind::Callee(_) | Kind::B2 => true,
            // A's leg with B ends by B's BYE after a passthrough transfer.
            Kind::A => r.last_leg != leg,
            Kind::A2 => false,
        };
        if !expected {
            self.finish(rec, Err(format!("BYE from the peer ({kind:?})")));
        }
    }

    /// A as the transferee: 202, NOTIFY 100, a new call to the target.
    fn obey_refer(&mut self, now: Instant, leg: usize, m: &Message<'_>) {
        self.server_nit(now, leg, m, 202);
        let Ok(rt) = transfer::refer_to(m) else {
            return;
        };
        let rec = self.legs.get(&leg).map(|l| l.rec).unwrap_or(0);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.wake = None; // B will hang this leg up
        }
        self.notify(now, leg, "100 Trying", false);
        let user = String::from_utf8_lossy(rt.uri().user().unwrap_or(b"c")).into_owned();
        let referred_by = m
            .header(HeaderName::ReferredBy)
            .map(|h| h.value.of(m.buf()).to_vec());
        let replaces = rt.replaces.as_ref().map(Replaces::to_value);
        let mut headers: Vec<(&str, &[u8])> = Vec::new();
        if let Some(rb) = &referred_by {
            headers.push(("Referred-By", rb));
        }
        if let Some(r) = &replaces {
            headers.push(("Replaces", r));
        }
        let a2 = self.invite(now, rec, Kind::A2, &format!("a{rec}"), &user, &headers);
        self.recs[rec].last_leg = a2;
        // Remember which leg to NOTIFY when the new call is answered.
        if let Some(l) = self.legs.get_mut(&a2) {
            l.replaces = Some(leg);
        }
    }

    /// B hears how the transfer goes.
    fn transfer_progress(&mut self, now: Instant, leg: usize, rec: usize, m: &Message<'_>) {
        let terminated = m
            .header(HeaderName::SubscriptionState)
            .is_some_and(|h| h.value.of(m.buf()).starts_with(b"terminated"));
        let status = m
            .body()
            .strip_prefix(b"SIP/2.0 ")
            .and_then(|b| core::str::from_utf8(b.get(..3)?).ok()?.parse::<u16>().ok());
        let Some(st) = status.filter(|s| *s >= 200 && terminated) else {
            return;
        };
        if st < 300 {
            self.recs[rec].transfer_ok = true;
        } else {
            let line = String::from_utf8_lossy(m.body()).trim().to_string();
            self.finish(rec, Err(format!("transfer failed: {line}")));
        }
        // The transferor hangs up its call with the transferee unless the
        // B2BUA already did. Its call with C (attended) is ended by C,
        // which replaced it (RFC 3891 §3: the UA that accepts the Replaces
        // sends the BYE), or by the B2BUA in local mode.
        if self
            .legs
            .get(&leg)
            .is_some_and(|x| !x.over && x.dialog.is_some())
        {
            self.send_nit(now, leg, "BYE", &[], None);
            self.drain_leg(now, leg);
        }
    }

    /// Our 2xx on `leg` was ACKed.
    fn after_ack(&mut self, now: Instant, leg: usize) {
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        if core::mem::replace(&mut l.acked, true) {
            return;
        }
        let (rec, kind, replaced) = (l.rec, l.kind, l.replaces.take());
        match kind {
            Kind::Callee(Callee::XferB) if self.recs[rec].b2_leg.is_none() => {
                l.wake = Some((now + Duration::from_millis(100), Wake::Refer));
            }
            Kind::Callee(Callee::AttB) if self.recs[rec].b2_leg.is_none() => {
                l.wake = Some((now + Duration::from_millis(100), Wake::CallC));
            }
            Kind::Callee(Callee::C) => {
                if let Some(r) = replaced
                    && self.legs.get(&r).is_some_and(|x| !x.over)
                {
                    self.send_nit(now, r, "BYE", &[], None);
                    self.drain_leg(now, r);
                }
            }
            _ => {}
        }
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

    fn on_invite_event(&mut self, now: Instant, leg: usize, e: Event) {
        let Some((status, msg)) = e.into_response() else {
            return;
        };
        if status < 200 {
            return;
        }
        let via = self.via();
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let (rec, kind) = (l.rec, l.kind);
        let Some((req, _, _, purpose)) = l.cli.as_ref() else {
            return;
        };
        let purpose = *purpose;
        if status >= 300 {
            let line = scan(&msg)
                .ok()
                .and_then(|r| {
                    let b = r.buf();
                    let end = b.iter().position(|&c| c == b'\r').unwrap_or(b.len());
                    Some(String::from_utf8_lossy(b.get(8..end)?).into_owned())
                })
                .unwrap_or_else(|| "timeout".into());
            let what = if status == 408 && msg.is_empty() {
                "timeout (INVITE)".to_string()
            } else {
                line
            };
            match kind {
                Kind::A2 => {
                    if let Some(a) = l.replaces {
                        self.notify(now, a, &what, true);
                        self.drain_leg(now, a);
                    }
                    self.finish(rec, Err(format!("transfer target: {what}")));
                }
                _ => self.finish(rec, Err(what)),
            }
            return;
        }
        // 2xx: ACK it (again, for a retransmission).
        let Ok(resp) = scan(&msg) else { return };
        if let Some(a) = &l.ack {
            self.out.push(a.clone());
            return;
        }
        let seq = scan(req).map(|r| r.cseq().seq).unwrap_or(1);
        match l.dialog.as_mut() {
            Some(d) => d.handle_response(&resp),
            None => l.dialog = scan(req).ok().and_then(|r| Dialog::uac(&r, &resp).ok()),
        }
        let Some(d) = l.dialog.as_mut() else { return };
        let ack = d.request("ACK", Some(seq), &via, None, &[], None);
        self.out.push(ack.clone());
        l.ack = Some(ack);
        let hold = self.cfg.hold;
        let r = &mut self.recs[rec];
        match (kind, purpose) {
            (Kind::A, Wake::Bye) => {
                if !r.established {
                    r.established = true;
                    self.counts.established += 1;
                    if r.outcome.is_none() {
                        self.setting_up -= 1;
                    }
                    let us = (now - r.started).as_micros().min(u128::from(u32::MAX)) as u32;
                    self.setup.push(us);
                }
                let next = if r.scenario == Scenario::Hold {
                    (hold / 3, Wake::Hold)
                } else {
                    (hold, Wake::Bye)
                };
                l.wake = Some((now + next.0, next.1));
            }
            (Kind::A, Wake::Hold) => {
                if !resp.body().windows(10).any(|w| w == b"a=recvonly") {
                    self.finish(rec, Err("hold answered without a=recvonly".into()));
                    return;
                }
                l.wake = Some((now + hold / 3, Wake::Resume));
            }
            (Kind::A, Wake::Resume) => l.wake = Some((now + hold / 3, Wake::Bye)),
            (Kind::A2, _) => {
                l.wake = Some((now + hold, Wake::Bye));
                if let Some(a) = l.replaces {
                    self.notify(now, a, "200 OK", true);
                    self.drain_leg(now, a);
                }
            }
            (Kind::B2, _) => {
                // B's call to C is up: B refers A to C, replacing it.
                if let Some(b) = r.b_leg {
                    if let Some(x) = self.legs.get_mut(&b) {
                        x.wake = Some((now, Wake::Refer));
                    }
                    self.schedule(b);
                }
            }
            _ => {}
        }
    }

    fn on_nit_event(&mut self, leg: usize, what: &'static str, e: Event) {
        let Some(l) = self.legs.get(&leg) else { return };
        let (rec, kind) = (l.rec, l.kind);
        let status = match e {
            Event::Response { status, .. } => status,
            Event::Timeout => {
                self.finish(rec, Err(format!("timeout ({what})")));
                return;
            }
            _ => return,
        };
        if status < 200 {
            return;
        }
        match what {
            "BYE" if status >= 300 => {
                let last = self.recs[rec].last_leg == leg && matches!(kind, Kind::A | Kind::A2);
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.bye_refused = Some(status);
                }
                // The last leg's refusal fails the call at once; another
                // leg's may yet be ended by the peer's own crossing BYE.
                if last && !self.legs.get(&leg).is_some_and(|l| l.ended_ok) {
                    self.finish(rec, Err(format!("BYE answered {status}")));
                }
            }
            "BYE" => {
                if let Some(l) = self.legs.get_mut(&leg) {
                    l.ended_ok = true;
                }
                self.foreign_open.remove(&leg);
                self.check_complete(rec);
            }
            "REFER" if status >= 300 => self.finish(rec, Err(format!("REFER answered {status}"))),
            _ => {}
        }
    }

    /// Runs what is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((t, leg))) = self.timers.peek() {
            if t > now {
                break;
            }
            self.timers.pop();
            let before = self.out.len();
            let acted = self.run_leg(now, leg);
            self.drain_leg(now, leg);
            if !acted {
                // Only resends: timers A, E and our 2xx's (a scheduled
                // action's new request is not one).
                self.counts.retransmissions += (self.out.len() - before) as u64;
            }
        }
        self.retire_ended(now);
    }

    /// Timers of one leg; true when a scheduled action ran (not a resend).
    fn run_leg(&mut self, now: Instant, leg: usize) -> bool {
        let Some(l) = self.legs.get_mut(&leg) else {
            return false;
        };
        if let Some(c) = l.cli.as_mut() {
            c.2.handle_timeout(now);
        }
        if let Some(s) = l.srv.as_mut() {
            s.1.handle_timeout(now);
        }
        for n in &mut l.nits {
            match n {
                Nit::Client(_, t, _) => t.handle_timeout(now),
                Nit::Server(_, t) => t.handle_timeout(now),
            }
        }
        if let Some(o) = l.ok.as_mut()
            && o.next <= now
        {
            if now >= o.give_up {
                l.ok = None;
            } else {
                self.out.push(o.bytes.clone());
                o.interval = (o.interval * 2).min(self.cfg.timers.t2);
                o.next = now + o.interval;
            }
        }
        let Some((at, wake)) = l.wake.filter(|w| w.0 <= now) else {
            return false;
        };
        let _ = at;
        l.wake = None;
        let rec = l.rec;
        if self.recs[rec].outcome.is_some() && wake != Wake::Bye {
            // A failed call is only hung up.
            return true;
        }
        match wake {
            Wake::Bye => {
                if !self.legs.get(&leg).is_some_and(|x| x.over) {
                    self.send_nit(now, leg, "BYE", &[], None);
                }
            }
            Wake::Hold | Wake::Resume => {
                let dir = if wake == Wake::Hold {
                    "sendonly"
                } else {
                    "sendrecv"
                };
                self.reinvite(now, leg, dir, wake);
            }
            Wake::Refer => self.send_refer(now, leg, rec),
            Wake::CallC => {
                let b2 = self.invite(now, rec, Kind::B2, &format!("b{rec}"), "c", &[]);
                self.recs[rec].b2_leg = Some(b2);
            }
        }
        true
    }

    fn reinvite(&mut self, now: Instant, leg: usize, dir: &str, purpose: Wake) {
        let via = self.via();
        let contact = self.contact("a");
        let timers = self.cfg.timers;
        let body = sdp("a", self.cfg.local, 2, dir);
        let Some(l) = self.legs.get_mut(&leg) else {
            return;
        };
        let Some(d) = l.dialog.as_mut() else { return };
        let re = d.request(
            "INVITE",
            None,
            &via,
            Some(&contact),
            &[],
            Some((b"application/sdp", &body)),
        );
        if let Ok(k) = scan(&re).map(|m| Key::server(&m)) {
            l.ack = None;
            l.cli = Some((re.clone(), k, ClientInvite::new(now, timers, re), purpose));
        }
    }

    /// B refers A: to C (blind), or to C replacing B's own call (attended).
    fn send_refer(&mut self, now: Instant, leg: usize, rec: usize) {
        let target = self.cfg.target;
        let mut refer_to = format!("<sip:c@{target}");
        if let Some(d) = self.recs[rec]
            .b2_leg
            .and_then(|b2| self.legs.get(&b2))
            .and_then(|l| l.dialog.as_ref())
        {
            let r = Replaces {
                call_id: d.id.call_id.clone(),
                to_tag: d.id.remote_tag.clone(),
                from_tag: d.id.local_tag.clone(),
                early_only: false,
            };
            let mut esc = Vec::new();
            transfer::escape(&r.to_value(), &mut esc);
            refer_to += "?Replaces=";
            refer_to += &String::from_utf8_lossy(&esc);
        }
        refer_to.push('>');
        let by = format!("<sip:b{rec}@{}>", self.cfg.local);
        if let Some(l) = self.legs.get_mut(&leg) {
            l.referred = true;
        }
        self.send_nit(
            now,
            leg,
            "REFER",
            &[
                ("Refer-To", refer_to.as_bytes()),
                ("Referred-By", by.as_bytes()),
            ],
            None,
        );
    }

    /// Fails calls that can no longer end well: no final answer within
    /// 64*T1 of their INVITE (a proxy's timer C would have given up), or
    /// still running long after their hold time. Walks every call still
    /// running: call it once a second.
    pub fn expire(&mut self, now: Instant) {
        while let Some(&(t, h)) = self.retired_q.front()
            && t <= now
        {
            self.retired_q.pop_front();
            self.retired.remove(&h);
        }
        let t1x64 = self.cfg.timers.t1x64();
        let limit = self.cfg.hold * 3 + t1x64 * 2;
        while self
            .recs
            .get(self.first_open)
            .is_some_and(|r| r.outcome.is_some())
        {
            self.first_open += 1;
        }
        let stuck: Vec<(usize, &'static str)> = self
            .recs
            .iter()
            .enumerate()
            .skip(self.first_open)
            .filter(|(_, r)| r.outcome.is_none())
            .filter_map(|(i, r)| {
                let age = now - r.started;
                if !r.established && age > t1x64 {
                    Some((i, "no final answer within 64*T1"))
                } else if age > limit {
                    Some((i, "call did not end in time"))
                } else {
                    None
                }
            })
            .collect();
        for (i, why) in stuck {
            // Name the party that is not done, and how its BYE went.
            let leg = self.recs[i]
                .legs
                .iter()
                .filter_map(|l| self.legs.get(l))
                .find(|l| l.dialog.is_some() && !l.ended_ok);
            let why = match leg {
                Some(l) if self.recs[i].established => match l.bye_refused {
                    Some(st) => format!("{}: {} leg's BYE answered {st}", why, role(l.kind)),
                    None => format!("{}: {} leg never got its BYE", why, role(l.kind)),
                },
                _ => why.to_string(),
            };
            self.finish(i, Err(why));
        }
        // Callee legs of other threads' calls: the same deadline.
        let late: Vec<usize> = self
            .foreign_open
            .iter()
            .filter(|&(_, t)| now - *t > limit)
            .map(|(l, _)| *l)
            .collect();
        for leg in late {
            self.foreign_open.remove(&leg);
            self.foreign_failed(leg, "call did not end in time");
        }
        self.retire_ended(now);
    }

    /// Forgets legs of ended calls whose transactions are over (bounded
    /// memory in long runs). Walks every leg: call it once a second.
    pub fn sweep(&mut self) {
        let dead: Vec<usize> = self
            .legs
            .iter()
            .filter(|(_, l)| {
                self.recs[l.rec].outcome.is_some()
                    && l.next_timeout().is_none()
                    && (l.over || l.dialog.is_none())
            })
            .map(|(k, _)| *k)
            .collect();
        for k in dead {
            if let Some(l) = self.legs.remove(&k) {
                self.forget_keys(&l);
            }
        }
    }
}

/// What a run is told.
#[derive(Debug, Clone)]
pub struct Options {
    /// Our UDP address; the system under test routes `b`, `xb`, `ab`, `c`
    /// here.
    pub listen: SocketAddr,
    /// The system under test.
    pub target: SocketAddr,
    /// New calls per second.
    pub rate: f64,
    /// Calls in all (the run stops starting calls after this many).
    pub calls: u64,
    /// Or after this long, whichever comes first.
    pub duration: Option<Duration>,
    /// How long each call stays up.
    pub hold: Duration,
    /// At most this many calls at once.
    pub max_concurrent: u64,
    /// The scenario mix.
    pub mix: Mix,
    /// The user basic and hold calls call (see [`EngineConfig::callee`]).
    pub callee: String,
    /// Threads, each with its own socket (`listen` port + i) and an equal
    /// share of the rate and calls. Above 1 only basic and hold calls can
    /// be played (a transfer's parties must share one engine).
    pub threads: usize,
    /// SIP timer T1.
    pub t1: Duration,
    /// The socket loop: io_uring or epoll + recvmmsg/sendmmsg (the
    /// edge's own loops; `Auto` is epoll, see `run_one`).
    pub io: IoMode,
}

/// One line of progress.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Progress {
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// Counts so far.
    pub counts: Counts,
    /// Calls up now.
    pub active: u64,
    /// Calls started in the last second.
    pub rate: f64,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// The end of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Calls offered per second.
    pub offered_rate: f64,
    /// Calls started per second, over the starting period.
    pub achieved_rate: f64,
    /// Seconds from the first call to the last one ending.
    pub elapsed_s: f64,
    /// Counts.
    pub counts: Counts,
    /// Setup latency (INVITE to 2xx at the caller).
    pub setup_latency: Latency,
    /// Failures by cause.
    pub failures: BTreeMap<String, u64>,
    /// Datagrams the generator sent and received.
    pub datagrams_sent: u64,
    /// See `datagrams_sent`.
    pub datagrams_received: u64,
    /// (succeeded, failed) by scenario.
    pub by_scenario: BTreeMap<String, (u64, u64)>,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    /// The socket loop used: `uring` or `epoll`.
    pub io_mode: String,
    /// Calls not started on time because the generator was behind (its
    /// own limit, not the system's): the offered rate was lowered by this
    /// many calls rather than bursting them later.
    pub starts_skipped: u64,
}

fn percentiles(v: &mut [u32]) -> Latency {
    if v.is_empty() {
        return Latency::default();
    }
    v.sort_unstable();
    let at = |q: f64| f64::from(v[((v.len() - 1) as f64 * q).round() as usize]) / 1000.0;
    Latency {
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}

/// One thread's run: the engine behind the edge's socket loop.
// The shell runs inside a blocking socket loop on one thread (no runtime:
// fewer wake-ups per datagram than an async one), so it reads the wall
// clock itself; the engine still takes `now` as an argument.
#[allow(clippy::disallowed_types)]
struct Shell<'a, P> {
    opts: &'a Options,
    stop: &'a std::sync::atomic::AtomicBool,
    progress: P,
    e: Engine<rand_chacha::ChaCha12Rng>,
    out: VecDeque<Vec<u8>>,
    t0: std::time::Instant,
    /// Seconds the start schedule was moved back (see `starts_skipped`).
    lag: f64,
    started: u64,
    skipped: u64,
    sent: u64,
    received: u64,
    send_errors: u64,
    /// Datagrams handled since the last tick.
    since_tick: u32,
    last_tick: std::time::Instant,
    last_started: u64,
    sweep_at: std::time::Instant,
    start_deadline: Option<std::time::Instant>,
    starting_ended: Option<std::time::Instant>,
    final_deadline: Option<std::time::Instant>,
}

impl<P: FnMut(&Progress)> Shell<'_, P> {
    fn now(&self) -> Instant {
        Instant::from_epoch(self.t0.elapsed())
    }

    fn take_output(&mut self) {
        self.out.extend(self.e.drain_transmit());
    }
}

#[allow(clippy::disallowed_types)]
impl<P: FnMut(&Progress)> handover_edge::io::Handler for Shell<'_, P> {
    fn datagram(
        &mut self,
        _: SocketAddr,
        data: &[u8],
        _: &mut [u8],
    ) -> Option<(SocketAddr, usize)> {
        self.received += 1;
        self.since_tick += 1;
        let now = self.now();
        self.e.handle_datagram(now, data);
        self.take_output();
        None
    }

    fn poll_transmit(&mut self, out: &mut [u8]) -> Option<(SocketAddr, usize)> {
        loop {
            let d = self.out.pop_front()?;
            if d.len() <= out.len() {
                out[..d.len()].copy_from_slice(&d);
                self.sent += 1;
                return Some((self.opts.target, d.len()));
            }
            self.send_errors += 1;
        }
    }

    fn tick_interval(&self) -> Duration {
        Duration::from_millis(1)
    }

    fn tick(&mut self) -> bool {
        use std::sync::atomic::Ordering;
        let opts = self.opts;
        let wall = std::time::Instant::now();
        // Input first: a round that brought many datagrams means answers
        // are queued; new calls wait for the next round.
        let behind = std::mem::take(&mut self.since_tick) >= 256;
        if self.starting_ended.is_none() {
            // Start what is due. When the loop is behind (its input comes
            // first), at most 50 ms of calls are owed: the schedule moves
            // back instead of bursting, and the report says by how much.
            let cap = (opts.rate * 0.05).max(1.0);
            let mut due = ((wall - self.t0).as_secs_f64() - self.lag) * opts.rate;
            let owed = due - self.started as f64;
            if owed > cap {
                self.lag += (owed - cap) / opts.rate;
                self.skipped += (owed - cap) as u64;
                due = self.started as f64 + cap;
            }
            // And at most a quarter second of calls (256 at least) wait
            // for their answer: past that the answers are queued behind
            // new calls (ours or the system's), and retransmissions would
            // follow.
            let window = ((opts.rate * 0.25) as u64).max(256);
            while self.started < opts.calls
                && (self.started as f64) < due
                && self.e.active() < opts.max_concurrent
                && self.e.setting_up() < window
                && !behind
            {
                let now = self.now();
                self.e.start_call(now, opts.mix.pick(self.started));
                self.started += 1;
            }
            if self.started >= opts.calls
                || self.start_deadline.is_some_and(|d| wall >= d)
                || self.stop.load(Ordering::Relaxed)
            {
                self.starting_ended = Some(wall);
                self.final_deadline = Some(wall + opts.hold * 3 + Duration::from_secs(40));
            }
        }
        let now = self.now();
        self.e.handle_timeout(now);
        self.take_output();
        if wall.duration_since(self.last_tick) >= Duration::from_secs(1) {
            let c = self.e.counts();
            (self.progress)(&Progress {
                elapsed_s: (wall - self.t0).as_secs_f64(),
                counts: c,
                active: self.e.active(),
                rate: (c.started - self.last_started) as f64
                    / (wall - self.last_tick).as_secs_f64(),
            });
            self.last_started = c.started;
            self.last_tick = wall;
        }
        if wall.duration_since(self.sweep_at) >= Duration::from_secs(1) {
            self.e.expire(now);
            self.e.sweep();
            self.sweep_at = wall;
        }
        if self.starting_ended.is_some() && self.e.active() == 0 && self.out.is_empty() {
            return false;
        }
        if self.final_deadline.is_some_and(|d| wall >= d)
            || (self.stop.load(Ordering::Relaxed)
                && self
                    .starting_ended
                    .is_some_and(|s| wall >= s + Duration::from_secs(2)))
        {
            self.e.abandon("unfinished at the end of the run");
            return false;
        }
        true
    }

    fn rx_dropped(&mut self, _: u32) {}

    fn send_failed(&mut self) {
        self.send_errors += 1;
    }

    fn enobufs(&mut self) {}

    fn truncated(&mut self) {}
}

/// One thread's run (see [`run`]).
#[allow(clippy::disallowed_types)]
fn run_one(
    opts: &Options,
    stop: &std::sync::atomic::AtomicBool,
    progress: impl FnMut(&Progress),
) -> std::io::Result<(Report, Vec<u32>)> {
    // Large socket buffers (the kernel caps them at net.core.rmem_max /
    // wmem_max): a burst of answers must not be dropped while the loop
    // is busy, or the generator measures its own losses.
    let sock = socket2::Socket::new(
        socket2::Domain::for_address(opts.listen),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    let _ = sock.set_recv_buffer_size(8 << 20);
    let _ = sock.set_send_buffer_size(8 << 20);
    sock.bind(&opts.listen.into())?;
    let local = sock
        .local_addr()?
        .as_socket()
        .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
    let timers = TimerConfig {
        t1: opts.t1,
        ..TimerConfig::default()
    };
    let e = Engine::new(
        EngineConfig {
            local,
            target: opts.target,
            hold: opts.hold,
            timers,
            callee: opts.callee.clone(),
        },
        // Seeded by the OS once: no getrandom system call per id.
        <rand_chacha::ChaCha12Rng as rand_core::SeedableRng>::try_from_os_rng()?,
    );
    // `Auto` is epoll here: measured side by side (docs/benchmarks.md),
    // both loops cost the same CPU per call below saturation, and past it
    // epoll's input-first loop (timers and new calls only once the socket
    // is drained) plateaus where io_uring's bounded send slots let the
    // generator's own queue grow until retransmissions take over.
    let mode = match opts.io {
        IoMode::Auto => IoMode::Epoll,
        m => m,
    };
    let t0 = std::time::Instant::now();
    let mut sh = Shell {
        opts,
        stop,
        progress,
        e,
        out: VecDeque::new(),
        t0,
        lag: 0.0,
        started: 0,
        skipped: 0,
        sent: 0,
        received: 0,
        send_errors: 0,
        since_tick: 0,
        last_tick: t0,
        last_started: 0,
        sweep_at: t0,
        start_deadline: opts.duration.map(|d| t0 + d),
        starting_ended: None,
        final_deadline: None,
    };
    handover_edge::io::run(&sock, mode, &mut sh)?;
    let elapsed = t0.elapsed();
    let start_period = sh.starting_ended.map_or(elapsed, |s| s - t0);
    let e = &sh.e;
    let c = e.counts();
    let lat = e.setup_latencies().to_vec();
    let mut sorted = lat.clone();
    Ok((
        Report {
            offered_rate: opts.rate,
            achieved_rate: c.started as f64 / start_period.as_secs_f64().max(1e-9),
            elapsed_s: elapsed.as_secs_f64(),
            counts: c,
            setup_latency: percentiles(&mut sorted),
            failures: e.failures().clone(),
            datagrams_sent: sh.sent.saturating_sub(sh.send_errors),
            datagrams_received: sh.received,
            by_scenario: e
                .by_scenario()
                .iter()
                .map(|(k, v)| (k.name().to_string(), *v))
                .collect(),
            send_errors: sh.send_errors,
            io_mode: mode.as_str().to_string(),
            starts_skipped: sh.skipped,
        },
        lat,
    ))
}

/// Runs a load: binds `listen` (and the next ports, one per thread),
/// starts calls at the rate until the count or the duration is reached,
/// waits for every call to end (at most three hold times + 128*T1 more),
/// and reports. `progress` is called about once a second with the sum
/// over threads; `stop` ends the run early (calls still up count failed).
pub fn run(
    opts: &Options,
    stop: &std::sync::atomic::AtomicBool,
    mut progress: impl FnMut(&Progress),
) -> std::io::Result<Report> {
    let n = opts.threads.max(1);
    if n == 1 {
        return run_one(opts, stop, progress).map(|r| r.0);
    }
    let shares: Vec<Options> = (0..n)
        .map(|i| {
            let mut o = opts.clone();
            o.threads = 1;
            o.listen.set_port(opts.listen.port().wrapping_add(i as u16));
            if opts.target == opts.listen {
                o.target = o.listen; // calling itself
            }
            o.rate = opts.rate / n as f64;
            o.calls = opts.calls / n as u64 + u64::from((i as u64) < opts.calls % n as u64);
            o.max_concurrent = (opts.max_concurrent / n as u64).max(1);
            o
        })
        .collect();
    // Each thread sends its progress here; thread 0's reports pace the
    // summed line.
    let (tx, rx) = std::sync::mpsc::channel::<(usize, Progress)>();
    let mut latest = vec![None::<Progress>; n];
    let results = std::thread::scope(|sc| {
        let handles: Vec<_> = shares
            .iter()
            .enumerate()
            .map(|(i, o)| {
                let tx = tx.clone();
                sc.spawn(move || {
                    run_one(o, stop, |p| {
                        let _ = tx.send((i, *p));
                    })
                })
            })
            .collect();
        while handles.iter().any(|h| !h.is_finished()) {
            let Ok((i, p)) = rx.recv_timeout(Duration::from_millis(100)) else {
                continue;
            };
            latest[i] = Some(p);
            if i == 0 {
                let l = &latest;
                let mut sum = p;
                for p in l.iter().skip(1).flatten() {
                    sum.counts.add(&p.counts);
                    sum.active += p.active;
                    sum.rate += p.rate;
                }
                progress(&sum);
            }
        }
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(std::io::Error::other("a load thread panicked")))
            })
            .collect::<Vec<_>>()
    });
    let mut total: Option<Report> = None;
    let mut lat = Vec::new();
    for r in results {
        let (r, l) = r?;
        lat.extend(l);
        total = Some(match total {
            None => r,
            Some(mut t) => {
                t.achieved_rate += r.achieved_rate;
                t.elapsed_s = t.elapsed_s.max(r.elapsed_s);
                t.counts.add(&r.counts);
                t.datagrams_sent += r.datagrams_sent;
                t.datagrams_received += r.datagrams_received;
                t.send_errors += r.send_errors;
                t.starts_skipped += r.starts_skipped;
                for (k, v) in r.failures {
                    *t.failures.entry(k).or_default() += v;
                }
                for (k, (a, b)) in r.by_scenario {
                    let e = t.by_scenario.entry(k).or_default();
                    e.0 += a;
                    e.1 += b;
                }
                t
            }
        });
    }
    let mut t = total.ok_or_else(|| std::io::Error::other("no load thread ran"))?;
    t.offered_rate = opts.rate;
    t.setup_latency = percentiles(&mut lat);
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixes_parse_and_keep_their_weights() {
        let m: Mix = "basic=70,hold=10,blind=10,attended=10".parse().unwrap();
        let mut n = BTreeMap::new();
        for i in 0..10_000 {
            *n.entry(m.pick(i)).or_insert(0u32) += 1;
        }
        assert!((6800..7200).contains(&n[&Scenario::Basic]), "{n:?}");
        assert!((800..1200).contains(&n[&Scenario::Attended]), "{n:?}");
        assert!(
            "basic,fax".parse::<Mix>().unwrap_err().contains("`fax`"),
            "names the bad scenario"
        );
        assert!("basic=x".parse::<Mix>().unwrap_err().contains("weight `x`"));
        assert!("basic=0".parse::<Mix>().is_err());
    }

    /// Plays `n` calls of the engine with itself, in memory: every
    /// datagram it sends comes straight back (a loopback with no system
    /// between), and time moves 1 ms per round. Returns what was sent.
    fn play_alone(e: &mut Engine<rand_chacha::ChaCha12Rng>, s: Scenario, n: usize) -> Vec<Vec<u8>> {
        let mut now = Instant::from_epoch(Duration::ZERO);
        let mut sent = Vec::new();
        for _ in 0..n {
            e.start_call(now, s);
        }
        for _ in 0..10_000 {
            let out: Vec<Vec<u8>> = e.drain_transmit().collect();
            for d in &out {
                e.handle_datagram(now, d);
            }
            sent.extend(out);
            now = now + Duration::from_millis(1);
            e.handle_timeout(now);
            if e.active() == 0 && e.out.is_empty() {
                break;
            }
        }
        sent
    }

    fn engine() -> Engine<rand_chacha::ChaCha12Rng> {
        let a: SocketAddr = "127.0.0.1:5070".parse().unwrap();
        Engine::new(
            EngineConfig {
                local: a,
                target: a,
                hold: Duration::from_millis(1000),
                timers: TimerConfig::default(),
                callee: "b".into(),
            },
            <rand_chacha::ChaCha12Rng as rand_core::SeedableRng>::seed_from_u64(7),
        )
    }

    #[test]
    fn finished_legs_are_retired_at_once_and_a_resent_bye_is_still_answered() {
        let mut e = engine();
        let sent = play_alone(&mut e, Scenario::Basic, 50);
        let c = e.counts();
        assert_eq!((c.succeeded, c.failed, c.retransmissions), (50, 0, 0));
        assert_eq!(e.setting_up(), 0);
        // Both legs of every call are gone, with nothing left to resend.
        assert_eq!(e.legs(), 0, "every finished leg is retired");
        // A BYE resent after its 200 was lost is answered 200 again (the
        // leg is gone; the 200 is rebuilt from the request); any other
        // request in that dialog gets 481.
        let bye = sent
            .iter()
            .find(|d| d.starts_with(b"BYE "))
            .expect("a BYE was sent")
            .clone();
        let now = Instant::from_epoch(Duration::from_secs(20));
        e.handle_datagram(now, &bye);
        let answers: Vec<Vec<u8>> = e.drain_transmit().collect();
        assert_eq!(answers.len(), 1);
        assert!(
            answers[0].starts_with(b"SIP/2.0 200 "),
            "{}",
            String::from_utf8_lossy(&answers[0])
        );
        let info = String::from_utf8_lossy(&bye)
            .replacen("BYE ", "INFO ", 1)
            .replace(" BYE\r\n", " INFO\r\n");
        e.handle_datagram(now, info.as_bytes());
        let answers: Vec<Vec<u8>> = e.drain_transmit().collect();
        assert!(answers[0].starts_with(b"SIP/2.0 481 "));
        // After 64*T1 the dialog is forgotten entirely: a BYE is then an
        // unknown dialog's (481).
        e.expire(now + TimerConfig::default().t1x64() * 2);
        e.handle_datagram(now, &bye);
        let answers: Vec<Vec<u8>> = e.drain_transmit().collect();
        assert!(answers[0].starts_with(b"SIP/2.0 481 "));
    }

    #[test]
    fn every_scenario_plays_against_itself_in_memory() {
        for s in [
            Scenario::Basic,
            Scenario::Hold,
            Scenario::Blind,
            Scenario::Attended,
        ] {
            let mut e = engine();
            play_alone(&mut e, s, 20);
            let c = e.counts();
            assert_eq!(
                (c.succeeded, c.failed),
                (20, 0),
                "{s:?}: {:?}",
                e.failures()
            );
            assert_eq!(e.legs(), 0, "{s:?}: legs left");
        }
    }

    /// A peer (standing for the system under test) that calls the
    /// engine's user `user`: sends the INVITE, reads the 200, ACKs it.
    /// Returns the engine's tag.
    fn peer_calls(e: &mut Engine<rand_chacha::ChaCha12Rng>, user: &str, cid: &str) -> String {
        let now = Instant::from_epoch(Duration::from_secs(1));
        let inv = peer_request("INVITE", user, cid, None, 1, "") + &sdp_body();
        e.handle_datagram(now, inv.as_bytes());
        let ok = e
            .drain_transmit()
            .find(|d| d.starts_with(b"SIP/2.0 200 "))
            .expect("the callee answers 200");
        let tag = String::from_utf8(scan(&ok).unwrap().to_tag().unwrap().to_vec()).unwrap();
        let ack = peer_request("ACK", user, cid, Some(&tag), 1, "");
        e.handle_datagram(now, ack.as_bytes());
        let _ = e.drain_transmit().count();
        tag
    }

    fn sdp_body() -> String {
        "v=0\r\no=p 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n".into()
    }

    /// A request from the peer (From-tag `peer`) in Call-ID `cid`, with
    /// `extra` header lines; an INVITE carries an SDP body (appended by
    /// the caller), everything else none.
    fn peer_request(
        method: &str,
        user: &str,
        cid: &str,
        to_tag: Option<&str>,
        cseq: u32,
        extra: &str,
    ) -> String {
        let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
        let (ct, len) = if method == "INVITE" {
            ("Content-Type: application/sdp\r\n", sdp_body().len())
        } else {
            ("", 0)
        };
        format!(
            "{method} sip:{user}@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-{method}-{cid}-{cseq}\r\n\
Max-Forwards: 70\r\nFrom: <sip:a1@127.0.0.1:5060>;tag=peer\r\nTo: <sip:{user}@127.0.0.1:5070>{to_tag}\r\n\
Call-ID: {cid}\r\nCSeq: {cseq} {method}\r\nContact: <sip:p@127.0.0.1:5060>\r\n{extra}{ct}Content-Length: {len}\r\n\r\n"
        )
    }

    /// The status lines the engine sent for `msg`.
    fn answers(e: &mut Engine<rand_chacha::ChaCha12Rng>, msg: &str) -> Vec<String> {
        let now = Instant::from_epoch(Duration::from_secs(2));
        e.handle_datagram(now, msg.as_bytes());
        e.drain_transmit()
            .map(|d| {
                String::from_utf8_lossy(&d)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    }

    #[test]
    fn rfc3261_12_2_2_a_request_must_match_the_whole_dialog_and_its_cseq_order() {
        let mut e = engine();
        let tag = peer_calls(&mut e, "b", "d1");
        // Right Call-ID and our tag, but another From-tag: no such dialog.
        let wrong = peer_request("OPTIONS", "b", "d1", Some(&tag), 2, "")
            .replace(";tag=peer", ";tag=other");
        assert_eq!(
            answers(&mut e, &wrong),
            ["SIP/2.0 481 Call/Transaction Does Not Exist"]
        );
        // An unknown To-tag: 481 too.
        let unknown = peer_request("OPTIONS", "b", "d1", Some("nobody"), 2, "");
        assert_eq!(
            answers(&mut e, &unknown),
            ["SIP/2.0 481 Call/Transaction Does Not Exist"]
        );
        // CSeq 5, then 3: out of order, 500.
        let five = peer_request("OPTIONS", "b", "d1", Some(&tag), 5, "");
        assert_eq!(answers(&mut e, &five), ["SIP/2.0 200 OK"]);
        let three = peer_request("OPTIONS", "b", "d1", Some(&tag), 3, "");
        assert_eq!(
            answers(&mut e, &three),
            ["SIP/2.0 500 Server Internal Error"]
        );
    }

    #[test]
    fn methods_a_role_does_not_take_are_refused_405_or_501() {
        let mut e = engine();
        let tag = peer_calls(&mut e, "b", "m1");
        // A callee is no transferee: REFER is 405, with Allow.
        let refer = peer_request(
            "REFER",
            "b",
            "m1",
            Some(&tag),
            2,
            "Refer-To: <sip:c@127.0.0.1>\r\n",
        );
        e.handle_datagram(
            Instant::from_epoch(Duration::from_secs(2)),
            refer.as_bytes(),
        );
        let out: Vec<Vec<u8>> = e.drain_transmit().collect();
        let text = String::from_utf8_lossy(&out[0]).into_owned();
        assert!(text.starts_with("SIP/2.0 405 "), "{text}");
        assert!(
            text.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY\r\n"),
            "{text}"
        );
        for (i, m) in ["INFO", "UPDATE", "MESSAGE", "SUBSCRIBE"]
            .iter()
            .enumerate()
        {
            let r = peer_request(m, "b", "m1", Some(&tag), 3 + i as u32, "");
            assert_eq!(answers(&mut e, &r), ["SIP/2.0 501 Not Implemented"], "{m}");
        }
    }

    #[test]
    fn rfc6665_a_notify_needs_the_refer_event_and_a_subscription() {
        let mut e = engine();
        let tag = peer_calls(&mut e, "b", "n1");
        let frag = "Content-Type: message/sipfrag\r\nSubscription-State: active\r\n";
        // Another event package: 489 Bad Event.
        let presence = peer_request(
            "NOTIFY",
            "b",
            "n1",
            Some(&tag),
            2,
            &format!("Event: presence\r\n{frag}"),
        );
        assert_eq!(answers(&mut e, &presence), ["SIP/2.0 489 Bad Event"]);
        // The refer package on a leg that sent no REFER: no subscription.
        let refer = peer_request(
            "NOTIFY",
            "b",
            "n1",
            Some(&tag),
            3,
            &format!("Event: refer\r\n{frag}"),
        );
        assert_eq!(
            answers(&mut e, &refer),
            ["SIP/2.0 481 Call/Transaction Does Not Exist"]
        );
        // No Event at all: 489 too.
        let none = peer_request("NOTIFY", "b", "n1", Some(&tag), 4, frag);
        assert_eq!(answers(&mut e, &none), ["SIP/2.0 489 Bad Event"]);
    }

    #[test]
    fn rfc3891_3_a_replaces_must_name_a_live_dialog_of_ours_exactly() {
        let mut e = engine();
        let tag = peer_calls(&mut e, "b", "r1");
        let invite = |cid: &str, replaces: &str| {
            peer_request(
                "INVITE",
                "b",
                cid,
                None,
                1,
                &format!("Replaces: {replaces}\r\n"),
            ) + &sdp_body()
        };
        let first = |v: Vec<String>| {
            v.into_iter()
                .find(|l| !l.starts_with("SIP/2.0 100"))
                .unwrap_or_default()
        };
        // No such Call-ID, or our tag wrong, or the peer's tag wrong: 481.
        for (cid, r) in [
            ("x1", "nope;to-tag=a;from-tag=b".to_string()),
            ("x2", "r1;to-tag=wrong;from-tag=peer".to_string()),
            ("x3", format!("r1;to-tag={tag};from-tag=wrong")),
        ] {
            assert_eq!(
                first(answers(&mut e, &invite(cid, &r))),
                "SIP/2.0 481 Call/Transaction Does Not Exist",
                "{r}"
            );
        }
        // early-only naming a confirmed dialog: 486.
        let r = format!("r1;to-tag={tag};from-tag=peer;early-only");
        assert_eq!(
            first(answers(&mut e, &invite("x4", &r))),
            "SIP/2.0 486 Busy Here"
        );
        // The dialog ended (the peer hung it up): 603.
        let bye = peer_request("BYE", "b", "r1", Some(&tag), 2, "");
        assert_eq!(answers(&mut e, &bye), ["SIP/2.0 200 OK"]);
        let r = format!("r1;to-tag={tag};from-tag=peer");
        assert_eq!(
            first(answers(&mut e, &invite("x5", &r))),
            "SIP/2.0 603 Decline"
        );
    }

    #[test]
    fn a_callee_that_never_gets_its_bye_fails_the_call_naming_its_leg() {
        // A B2BUA that answers A's BYE itself and never relays it: A's
        // side looks fine, B's leg never ends.
        let mut e = engine();
        let mut now = Instant::from_epoch(Duration::ZERO);
        e.start_call(now, Scenario::Basic);
        for _ in 0..20_000 {
            let out: Vec<Vec<u8>> = e.drain_transmit().collect();
            for d in &out {
                if d.starts_with(b"BYE ") {
                    let m = scan(d).unwrap();
                    let mut ok = Vec::new();
                    response(&m.reply_parts(), 200, None, None, &[], &mut ok);
                    e.handle_datagram(now, &ok);
                } else {
                    e.handle_datagram(now, d);
                }
            }
            now = now + Duration::from_millis(10);
            e.handle_timeout(now);
            e.expire(now);
            if e.active() == 0 {
                break;
            }
        }
        let c = e.counts();
        assert_eq!((c.succeeded, c.failed), (0, 1), "{:?}", e.failures());
        assert_eq!(
            e.failures().keys().collect::<Vec<_>>(),
            ["call did not end in time: B leg never got its BYE"]
        );
    }

    #[test]
    fn answers_mirror_the_offer_direction() {
        assert_eq!(answer_dir(b"v=0\r\na=sendonly\r\n"), "recvonly");
        assert_eq!(answer_dir(b"v=0\r\na=inactive\r\n"), "inactive");
        assert_eq!(answer_dir(b""), "sendrecv");
    }
}
