//! The registrar of handover's workers (RFC 3261 §10) and the digest
//! authentication of phones ([`digest`]), as sans-IO state: REGISTERs and
//! a clock in; responses, and the AOR records to replicate, out.
//!
//! An address-of-record's bindings live in the cluster's replicated table
//! (`handover-cluster`); the worker owning the AOR's shard (the edge keys a
//! REGISTER by its AOR) is the only writer. [`Registrar::register`] works
//! out the AOR's new binding set, hands it out with [`Registrar::poll_write`]
//! and holds the 200 until [`Registrar::committed`] says the write is
//! committed (a registration the cluster acknowledged survives any one
//! worker's death). Every worker applies every committed record
//! ([`Registrar::apply`]) and so answers [`Registrar::targets`] locally.
//! Expiry is absolute wall-clock time in the record, so every replica reads
//! a binding as expired at the same moment; the owner writes expired
//! bindings out ([`Registrar::sweep`]).
//!
//! Transactions: a REGISTER over UDP has a non-INVITE server transaction,
//! which for a UAS comes down to "absorb retransmissions until the answer
//! exists, then repeat it, for 64·T1" (RFC 3261 §17.2.2). That is a FIFO of
//! answers here, all of one lifetime, rather than a timer per transaction.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod digest;
pub mod locations;
pub mod relay;

pub use locations::{Binding, Locations, Shared, Stored};
pub use relay::Upstreams;

use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use handover_sip::build::response;
use handover_sip::{HeaderName, Message, NameAddr};
use handover_txn::{ClientNonInvite, Instant, TimerConfig};

/// Registrar settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Shorter registrations are refused with 423 and `Min-Expires`.
    pub min_expires: u32,
    /// Longer ones are shortened to this.
    pub max_expires: u32,
    /// A contact without `expires` in a REGISTER without `Expires`.
    pub default_expires: u32,
    /// Bindings per AOR at most (past it: 403).
    pub max_contacts: usize,
    /// AORs held at most over the cluster (past it, new AORs get 503).
    pub max_aors: usize,
    /// Bindings at most whose flow is one source address (past it: 403);
    /// 0: no limit.
    pub max_bindings_per_source: usize,
    /// Domains served (To host, case-insensitively); empty: any.
    pub domains: Vec<String>,
    /// Transaction timers (answers are repeated for 64·T1).
    pub timers: TimerConfig,
    /// Unix milliseconds at [`Instant`]'s epoch: the wall clock expiry is
    /// written in.
    pub wall_epoch_ms: u64,
    /// Every binding of the AORs a worker owns is sent an OPTIONS this
    /// often (seconds; 0: never), on its flow, which keeps a NAT's
    /// binding open; a binding whose ping goes unanswered (timer F) is
    /// dropped.
    pub ping_interval_s: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            min_expires: 60,
            max_expires: 3600,
            default_expires: 3600,
            max_contacts: 10,
            max_aors: 1_000_000,
            // Off by default, like the edge's new-dialog budget (load
            // generators and benchmarks register thousands from one
            // address); the Kubernetes base sets it.
            max_bindings_per_source: 0,
            domains: Vec::new(),
            timers: TimerConfig::default(),
            wall_epoch_ms: 0,
            ping_interval_s: 0,
        }
    }
}

/// An AOR's bindings as its owner wrote them.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// `user@host` (`handover_sip::ids::aor`).
    pub aor: Vec<u8>,
    /// Its affinity key (`Hashing::aor_key`).
    pub key: u64,
    /// Bumped at every write.
    pub version: u64,
    /// Empty: the AOR is gone.
    pub bindings: Vec<Binding>,
}

impl Record {
    fn live(&self, now_ms: u64) -> impl Iterator<Item = &Binding> {
        self.bindings.iter().filter(move |b| b.live(now_ms))
    }

    fn next_expiry(&self) -> Option<u64> {
        self.bindings.iter().map(|b| b.expires_ms).min()
    }

    fn from_stored(key: u64, s: &Stored) -> Self {
        Self {
            aor: s.aor.to_vec(),
            key,
            version: s.version,
            bindings: s.bindings.to_vec(),
        }
    }
}

/// The hash a binding keeps of its REGISTER's Call-ID (the same on every
/// worker and version: SipHash with the published key).
pub fn call_id_hash(call_id: &[u8]) -> u64 {
    handover_sip::ids::Hashing::default().affinity_key(call_id)
}

/// Counters the shell exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Bindings added.
    pub created: u64,
    /// Bindings refreshed.
    pub refreshed: u64,
    /// Bindings removed by their phone (expires 0, `*`).
    pub removed: u64,
    /// Bindings expired (written out by this worker's sweep).
    pub expired: u64,
    /// REGISTERs refused (4xx/5xx other than challenges).
    pub refused: u64,
    /// Writes the cluster refused (the shard moved): the phone's
    /// retransmission reaches the new owner.
    pub lost_writes: u64,
    /// REGISTERs relayed to a PBX (relay mode).
    pub relayed: u64,
    /// OPTIONS pings sent to bindings.
    pub pings: u64,
    /// Bindings dropped because their ping went unanswered.
    pub ping_failures: u64,
}

/// Why a REGISTER was refused: its status and reason phrase.
type Refusal = (u16, &'static str);

/// A refusal with its extra headers (423's Min-Expires).
type Refused = (Refusal, Vec<(&'static str, Vec<u8>)>);

/// A write of this worker's awaiting its commit: the record, when it was
/// proposed, the transactions whose answers wait for it.
type Pending = (Record, Instant, Vec<Vec<u8>>);

/// A held or sent answer of one REGISTER transaction.
#[derive(Debug)]
struct Answer {
    /// `None` while its write awaits the commit.
    bytes: Option<Vec<u8>>,
    /// The answer that goes once the write is committed.
    held: Option<Vec<u8>>,
    to: Option<SocketAddr>,
}

/// See the crate docs.
#[derive(Debug)]
pub struct Registrar {
    cfg: Config,
    /// Committed bindings of every AOR of the cluster, shared with the
    /// replicated table that writes them (`locations.rs`).
    locations: Shared,
    /// This worker's writes not yet committed, by AOR, with the
    /// transactions whose 200 waits for them.
    pending: HashMap<Vec<u8>, Pending>,
    /// Answers by transaction id, and their expiry order.
    answers: HashMap<Vec<u8>, Answer>,
    answer_order: VecDeque<(Instant, Vec<u8>)>,
    /// (earliest expiry in Unix ms, AOR key), for the owner's sweep;
    /// stale entries are skipped.
    expiries: BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    replicated: bool,
    writes: VecDeque<Record>,
    out: VecDeque<(Option<SocketAddr>, Vec<u8>)>,
    stats: Stats,
    /// REGISTERs relayed to a PBX (`relay.rs`), by our branch.
    relays: HashMap<Vec<u8>, Relayed>,
    /// OPTIONS pings in flight, by our branch.
    pings: HashMap<Vec<u8>, Ping>,
    /// (when, AOR key): the next pings of a key's bindings; one entry per
    /// key (`ping_keys`).
    ping_due: BinaryHeap<std::cmp::Reverse<(u64, u64)>>,
    ping_keys: std::collections::HashSet<u64>,
    /// The wall clock as last seen (Unix ms).
    last_ms: u64,
}

/// A binding to ping: what the shell builds the OPTIONS from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PingTarget {
    /// The AOR's key (our Via carries it, so the answer comes back here).
    pub key: u64,
    /// The AOR.
    pub aor: Vec<u8>,
    /// The binding.
    pub binding: Binding,
}

/// An OPTIONS ping in flight.
#[derive(Debug)]
struct Ping {
    cli: ClientNonInvite,
    key: u64,
    aor: Vec<u8>,
    contact: Box<[u8]>,
}

/// A REGISTER relayed to a PBX: our client transaction, and the phone's
/// request (its answer is built from it) with its transaction's id.
#[derive(Debug)]
struct Relayed {
    cli: ClientNonInvite,
    phone: Vec<u8>,
    id: Vec<u8>,
}

/// Relayed REGISTERs in flight at most (past it: 503).
const MAX_RELAYS: usize = 65_536;

/// Headers of a PBX's answer to a relayed REGISTER that the phone gets.
const RELAYED_BACK: [&[u8]; 12] = [
    b"contact",
    b"m",
    b"www-authenticate",
    b"min-expires",
    b"date",
    b"expires",
    b"service-route",
    b"path",
    b"supported",
    b"require",
    b"retry-after",
    b"warning",
];

/// A write not committed after this long is given up: its transactions
/// are forgotten (the phone's retransmission starts over).
const COMMIT_WAIT: Duration = Duration::from_secs(8);

impl Registrar {
    /// A registrar reading `locations`; `replicated` false applies writes
    /// to them at once (one worker holds every AOR), true leaves that to
    /// the replicated table (see [`Self::committed`]).
    pub fn new(cfg: Config, replicated: bool, locations: Shared) -> Self {
        Self {
            cfg,
            locations,
            pending: HashMap::new(),
            answers: HashMap::new(),
            answer_order: VecDeque::new(),
            expiries: BinaryHeap::new(),
            replicated,
            writes: VecDeque::new(),
            out: VecDeque::new(),
            stats: Stats::default(),
            relays: HashMap::new(),
            pings: HashMap::new(),
            ping_due: BinaryHeap::new(),
            ping_keys: std::collections::HashSet::new(),
            last_ms: 0,
        }
    }

    /// The bindings whose ping is due at `now`, of the AORs this worker
    /// owns (`owned(key)`): the shell sends each an OPTIONS and hands it
    /// to [`Self::ping`]. Call it about once a second.
    pub fn due_pings(&mut self, now: Instant, owned: impl Fn(u64) -> bool) -> Vec<PingTarget> {
        let now_ms = self.wall_ms(now);
        self.last_ms = now_ms;
        let every = u64::from(self.cfg.ping_interval_s) * 1000;
        let mut out = Vec::new();
        if every == 0 {
            return out;
        }
        let mut again = Vec::new();
        while let Some(std::cmp::Reverse((t, _))) = self.ping_due.peek() {
            if *t > now_ms {
                break;
            }
            let Some(std::cmp::Reverse((_, key))) = self.ping_due.pop() else {
                break;
            };
            let l = self.locations.read();
            let mut any = false;
            for s in l.of_key(key) {
                any = true;
                if !owned(key) {
                    continue;
                }
                for b in s.bindings.iter().filter(|b| b.live(now_ms)) {
                    out.push(PingTarget {
                        key,
                        aor: s.aor.to_vec(),
                        binding: b.clone(),
                    });
                }
            }
            if any {
                again.push(key);
            } else {
                self.ping_keys.remove(&key);
            }
        }
        for key in again {
            self.ping_due
                .push(std::cmp::Reverse((now_ms.saturating_add(every), key)));
        }
        out
    }

    /// Sends `request`, the OPTIONS the shell built for `target`.
    pub fn ping(&mut self, now: Instant, target: PingTarget, request: Vec<u8>) {
        let Ok(branch) =
            handover_sip::scan(&request).map(|r| r.top_via().branch().unwrap_or_default().to_vec())
        else {
            return;
        };
        if self.pings.len() >= MAX_RELAYS {
            return;
        }
        self.stats.pings += 1;
        self.pings.insert(
            branch.clone(),
            Ping {
                cli: ClientNonInvite::new(now, self.cfg.timers, request),
                key: target.key,
                aor: target.aor,
                contact: target.binding.contact,
            },
        );
        self.drain_ping(now, &branch);
    }

    /// Any answer says the phone is there; none in timer F's 32 s, or a
    /// transport error, drops the binding.
    fn drain_ping(&mut self, now: Instant, branch: &[u8]) {
        let Some(p) = self.pings.get_mut(branch) else {
            return;
        };
        while let Some(b) = p.cli.poll_transmit() {
            self.out.push_back((None, b));
        }
        let mut over = false;
        let mut dead = false;
        while let Some(e) = p.cli.poll_event() {
            match e {
                handover_txn::Event::Terminated => over = true,
                handover_txn::Event::Timeout | handover_txn::Event::TransportError => dead = true,
                _ => {}
            }
        }
        if dead {
            let (key, aor, contact) = (p.key, p.aor.clone(), p.contact.clone());
            self.drop_binding(now, key, &aor, &contact);
        }
        if over || dead {
            self.pings.remove(branch);
        }
    }

    /// Writes `aor` without the binding `contact` (its pings went
    /// unanswered).
    fn drop_binding(&mut self, now: Instant, key: u64, aor: &[u8], contact: &[u8]) {
        let cur = match self.pending.get(aor) {
            Some((r, _, _)) => r.clone(),
            None => match self.locations.read().get(key, aor) {
                Some(s) => Record::from_stored(key, s),
                None => return,
            },
        };
        let mut next = cur.clone();
        next.bindings.retain(|b| &*b.contact != contact);
        if next.bindings.len() == cur.bindings.len() {
            return;
        }
        self.stats.ping_failures += 1;
        next.version = cur.version.saturating_add(1);
        self.write(now, next, None);
    }

    /// Relays the phone's REGISTER `m` as `request` (built by the B2BUA:
    /// see `relay.rs`); the phone's answer is the PBX's.
    pub fn relay(&mut self, now: Instant, m: &Message<'_>, request: Vec<u8>, tag: &[u8]) {
        if self.relays.len() >= MAX_RELAYS {
            return self.refuse(
                now,
                m,
                tag,
                (503, "Too Many Registrations In Flight"),
                &[("Retry-After", b"5")],
            );
        }
        let Ok(branch) =
            handover_sip::scan(&request).map(|r| r.top_via().branch().unwrap_or_default().to_vec())
        else {
            return self.refuse(now, m, tag, (500, "Cannot Relay"), &[]);
        };
        let id = self.remember(now, m, None);
        self.stats.relayed += 1;
        self.relays.insert(
            branch.clone(),
            Relayed {
                cli: ClientNonInvite::new(now, self.cfg.timers, request),
                phone: m.as_bytes().to_vec(),
                id,
            },
        );
        self.drain_relay(&branch);
    }

    /// A response to a relayed REGISTER (true), or not ours (false).
    pub fn relay_response(&mut self, now: Instant, m: &Message<'_>) -> bool {
        let branch = m.top_via().branch().unwrap_or_default();
        if let Some(p) = self.pings.get_mut(branch) {
            p.cli.handle_response(now, m);
            let branch = branch.to_vec();
            self.drain_ping(now, &branch);
            return true;
        }
        let Some(r) = self.relays.get_mut(branch) else {
            return false;
        };
        r.cli.handle_response(now, m);
        let branch = branch.to_vec();
        self.drain_relay(&branch);
        true
    }

    /// When the relays' transactions next need [`Self::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.relays
            .values()
            .map(|r| &r.cli)
            .chain(self.pings.values().map(|p| &p.cli))
            .filter_map(ClientNonInvite::poll_timeout)
            .min()
    }

    /// Runs the relays' timers due at `now` (retransmissions, 408).
    pub fn handle_timeout(&mut self, now: Instant) {
        let due: Vec<Vec<u8>> = self
            .relays
            .iter()
            .filter(|(_, r)| r.cli.poll_timeout().is_some_and(|t| t <= now))
            .map(|(b, _)| b.clone())
            .collect();
        for b in due {
            if let Some(r) = self.relays.get_mut(&b) {
                r.cli.handle_timeout(now);
            }
            self.drain_relay(&b);
        }
        let due: Vec<Vec<u8>> = self
            .pings
            .iter()
            .filter(|(_, p)| p.cli.poll_timeout().is_some_and(|t| t <= now))
            .map(|(b, _)| b.clone())
            .collect();
        for b in due {
            if let Some(p) = self.pings.get_mut(&b) {
                p.cli.handle_timeout(now);
            }
            self.drain_ping(now, &b);
        }
    }

    fn drain_relay(&mut self, branch: &[u8]) {
        let Some(r) = self.relays.get_mut(branch) else {
            return;
        };
        while let Some(b) = r.cli.poll_transmit() {
            self.out.push_back((None, b));
        }
        let mut over = false;
        let mut answer = None;
        while let Some(e) = r.cli.poll_event() {
            if e == handover_txn::Event::Terminated {
                over = true;
            } else if let Some((status, msg)) = e.into_response()
                && status >= 200
            {
                answer = Some((status, msg));
            }
        }
        if let Some((status, msg)) = answer
            && let Ok(phone) = handover_sip::scan(&r.phone)
        {
            let up = handover_sip::scan(&msg).ok();
            let reason = up.as_ref().map(|u| {
                let line = u.start_line_span().of(u.buf());
                // "SIP/2.0 200 OK": the phrase after the code.
                String::from_utf8_lossy(line.splitn(3, |&b| b == b' ').nth(2).unwrap_or_default())
                    .into_owned()
            });
            let tag = up
                .as_ref()
                .and_then(|u| u.to_tag())
                .map(<[u8]>::to_vec)
                .unwrap_or_else(|| b"relayed".to_vec());
            let extra: Vec<(String, Vec<u8>)> = up
                .as_ref()
                .map(|u| {
                    u.headers()
                        .filter(|h| {
                            let n = h.name_span.of(u.buf()).to_ascii_lowercase();
                            RELAYED_BACK.contains(&n.as_slice())
                        })
                        .map(|h| {
                            (
                                String::from_utf8_lossy(h.name_span.of(u.buf())).into_owned(),
                                h.value.of(u.buf()).to_vec(),
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let extra: Vec<(&str, &[u8])> = extra
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_slice()))
                .collect();
            // A 408 of our own (the PBX never answered) has no phrase.
            let reason = reason.filter(|r| !r.is_empty());
            let b = Self::build(&phone, status, reason.as_deref(), &tag, &extra);
            let to = phone.top_via().target();
            if let Some(a) = self.answers.get_mut(&r.id) {
                a.bytes = Some(b.clone());
            }
            self.out.push_back((to, b));
        }
        if over {
            self.relays.remove(branch);
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// AORs with at least one binding (expired ones not yet swept count).
    pub fn aors(&self) -> usize {
        self.locations.read().aors()
    }

    /// Bindings held (expired ones not yet swept count).
    pub fn bindings(&self) -> usize {
        self.locations.read().bindings()
    }

    /// The locations this registrar reads.
    pub fn locations(&self) -> &Shared {
        &self.locations
    }

    /// Unix milliseconds at `now`.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        let since = u64::try_from(now.since_epoch().as_millis()).unwrap_or(u64::MAX);
        self.cfg.wall_epoch_ms.saturating_add(since)
    }

    /// The next datagram (`None`: to the edge).
    pub fn poll_transmit(&mut self) -> Option<(Option<SocketAddr>, Vec<u8>)> {
        self.out.pop_front()
    }

    /// The next record to replicate.
    pub fn poll_write(&mut self) -> Option<Record> {
        self.writes.pop_front()
    }

    /// The live bindings of `aor` (of affinity key `key`), best first
    /// (highest q, then the one that lasts longest).
    pub fn targets(&self, key: u64, aor: &[u8], now: Instant) -> Vec<Binding> {
        let now_ms = self.wall_ms(now);
        let mut v: Vec<Binding> = self
            .locations
            .read()
            .get(key, aor)
            .map(|s| {
                s.bindings
                    .iter()
                    .filter(|b| b.live(now_ms))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| b.q.cmp(&a.q).then(b.expires_ms.cmp(&a.expires_ms)));
        v
    }

    fn txn_id(m: &Message<'_>) -> Vec<u8> {
        let v = m.top_via();
        let mut id = v.branch().unwrap_or_default().to_vec();
        id.push(b' ');
        id.extend_from_slice(v.host());
        id.extend_from_slice(&v.port().unwrap_or(0).to_be_bytes());
        id.extend_from_slice(m.call_id());
        id
    }

    /// A retransmission of a REGISTER this registrar is answering or has
    /// answered: repeated or absorbed, true. Call before anything else.
    pub fn absorb(&mut self, now: Instant, m: &Message<'_>) -> bool {
        self.expire_answers(now);
        match self.answers.get(&Self::txn_id(m)) {
            Some(a) => {
                if let Some(b) = &a.bytes {
                    self.out.push_back((a.to, b.clone()));
                }
                true
            }
            None => false,
        }
    }

    fn expire_answers(&mut self, now: Instant) {
        while let Some((t, _)) = self.answer_order.front() {
            if *t > now {
                break;
            }
            if let Some((_, id)) = self.answer_order.pop_front() {
                self.answers.remove(&id);
            }
        }
        // Writes the cluster never answered: forget their transactions.
        let stuck: Vec<Vec<u8>> = self
            .pending
            .iter()
            .filter(|(_, (_, at, _))| now.since_epoch() >= at.since_epoch() + COMMIT_WAIT)
            .map(|(aor, _)| aor.clone())
            .collect();
        for aor in stuck {
            if let Some((_, _, txns)) = self.pending.remove(&aor) {
                for t in txns {
                    self.answers.remove(&t);
                }
            }
        }
    }

    /// Answers `m` now with `status` (its repeat goes to retransmissions).
    pub fn answer(
        &mut self,
        now: Instant,
        m: &Message<'_>,
        status: u16,
        reason: Option<&str>,
        tag: &[u8],
        extra: &[(&str, &[u8])],
    ) {
        let b = Self::build(m, status, reason, tag, extra);
        self.send(now, m, b);
    }

    /// Sends `b` as the answer to `m` (and to its retransmissions).
    fn send(&mut self, now: Instant, m: &Message<'_>, b: Vec<u8>) {
        let to = m.top_via().target();
        self.remember(now, m, Some(b.clone()));
        self.out.push_back((to, b));
    }

    fn build(
        m: &Message<'_>,
        status: u16,
        reason: Option<&str>,
        tag: &[u8],
        extra: &[(&str, &[u8])],
    ) -> Vec<u8> {
        let mut b = Vec::new();
        let r = reason.as_ref().map(|r| r as &dyn core::fmt::Display);
        response(&m.reply_parts(), status, r, Some(tag), extra, &mut b);
        b
    }

    fn remember(&mut self, now: Instant, m: &Message<'_>, bytes: Option<Vec<u8>>) -> Vec<u8> {
        let id = Self::txn_id(m);
        let until = now + self.cfg.timers.t1 * 64;
        if self
            .answers
            .insert(
                id.clone(),
                Answer {
                    bytes,
                    held: None,
                    to: m.top_via().target(),
                },
            )
            .is_none()
        {
            self.answer_order.push_back((until, id.clone()));
        }
        id
    }

    fn refuse(
        &mut self,
        now: Instant,
        m: &Message<'_>,
        tag: &[u8],
        r: Refusal,
        extra: &[(&str, &[u8])],
    ) {
        self.stats.refused += 1;
        self.answer(now, m, r.0, Some(r.1), tag, extra);
    }

    /// Handles a REGISTER (not a retransmission: see [`Self::absorb`]),
    /// authenticated as `user` when authentication is on. `key` is its
    /// AOR's affinity key, `tag` a fresh To tag.
    pub fn register(
        &mut self,
        now: Instant,
        m: &Message<'_>,
        user: Option<&[u8]>,
        key: u64,
        tag: &[u8],
    ) {
        let now_ms = self.wall_ms(now);
        let to = match m.to() {
            Ok(to) => to,
            Err(_) => return self.refuse(now, m, tag, (400, "Bad To"), &[]),
        };
        let aor = handover_sip::ids::aor(to.uri());
        if to.uri().user().is_none() {
            return self.refuse(now, m, tag, (404, "No User In To"), &[]);
        }
        if !self.cfg.domains.is_empty()
            && !self
                .cfg
                .domains
                .iter()
                .any(|d| d.as_bytes().eq_ignore_ascii_case(to.uri().host()))
        {
            //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
            //# If the address-of-record is not valid for the domain in the
            //# Request-URI, the registrar MUST send a 404 (Not Found)
            //# response and skip the remaining steps.
            return self.refuse(now, m, tag, (404, "Domain Not Served"), &[]);
        }
        if let Some(u) = user
            && to.uri().user() != Some(u)
        {
            //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
            //# If the authenticated user is not authorized to modify
            //# bindings, the registrar MUST return a 403 (Forbidden) and skip
            //# the remaining steps.
            return self.refuse(now, m, tag, (403, "Not Your AOR"), &[]);
        }
        let base = match self.pending.get(&aor) {
            Some((r, _, _)) => r.clone(),
            None => self
                .locations
                .read()
                .get(key, &aor)
                .map(|s| Record::from_stored(key, s))
                .unwrap_or_else(|| Record {
                    aor: aor.clone(),
                    key,
                    ..Record::default()
                }),
        };
        let mut next = base.clone();
        next.key = key;
        let outcome = match self.apply_contacts(m, &mut next, now_ms) {
            Ok(o) => o,
            Err((r, extra)) => {
                let extra: Vec<(&str, &[u8])> =
                    extra.iter().map(|(n, v)| (*n, v.as_slice())).collect();
                return self.refuse(now, m, tag, r, &extra);
            }
        };
        if self.cfg.max_bindings_per_source > 0 {
            let sources_before = flows_by_source(&base, now_ms);
            let sources_after = flows_by_source(&next, now_ms);
            for (ip, n) in &sources_after {
                let held = self.locations.read().from_source(*ip);
                let had = sources_before.get(ip).copied().unwrap_or(0);
                if *n > had && held - had.min(held) + n > self.cfg.max_bindings_per_source {
                    return self.refuse(
                        now,
                        m,
                        tag,
                        (403, "Too Many Bindings From This Address"),
                        &[],
                    );
                }
            }
        }
        if base.bindings.is_empty()
            && !next.bindings.is_empty()
            && self.locations.read().aors() >= self.cfg.max_aors
        {
            return self.refuse(
                now,
                m,
                tag,
                (503, "Registrar Full"),
                &[("Retry-After", b"60")],
            );
        }
        let ok = self.ok(m, &next, now_ms, tag);
        if next == base {
            // A query (no Contact), or nothing to change.
            return self.send(now, m, ok);
        }
        self.stats.created += outcome.created;
        self.stats.refreshed += outcome.refreshed;
        self.stats.removed += outcome.removed;
        next.version = base.version.saturating_add(1);
        let id = self.remember(now, m, None);
        if let Some(a) = self.answers.get_mut(&id) {
            a.held = Some(ok);
        }
        self.write(now, next, Some(id));
    }

    /// Proposes `next` (or applies it at once without replication), with
    /// the transaction whose answer waits for it.
    fn write(&mut self, now: Instant, next: Record, txn: Option<Vec<u8>>) {
        let aor = next.aor.clone();
        let version = next.version;
        let mut txns = match self.pending.remove(&aor) {
            Some((_, _, t)) => t,
            None => Vec::new(),
        };
        txns.extend(txn);
        self.writes.push_back(next.clone());
        self.pending.insert(aor.clone(), (next, now, txns));
        if !self.replicated {
            let rec = self.writes.pop_back().expect("just pushed");
            self.apply(rec);
            self.committed(&aor, version, true);
        }
    }

    /// The cluster committed (`stored`) or refused this worker's write of
    /// `aor` at `version`: its held answers go, or are forgotten.
    pub fn committed(&mut self, aor: &[u8], version: u64, stored: bool) {
        let Some((rec, _, _)) = self.pending.get(aor) else {
            return;
        };
        if rec.version != version {
            // An older write of ours; the newest one's commit releases all.
            if stored {
                return;
            }
        }
        let Some((_, _, txns)) = self.pending.remove(aor) else {
            return;
        };
        if !stored {
            self.stats.lost_writes += 1;
        }
        for t in txns {
            if !stored {
                self.answers.remove(&t);
            } else if let Some(a) = self.answers.get_mut(&t)
                && let Some(b) = a.held.take()
            {
                a.bytes = Some(b.clone());
                self.out.push_back((a.to, b));
            }
        }
    }

    /// Applies a record to the locations (without replication; with it
    /// the replicated table does) and schedules its expiry.
    pub fn apply(&mut self, rec: Record) {
        let next = rec.next_expiry();
        self.locations
            .write()
            .put(rec.key, &rec.aor, rec.version, rec.bindings);
        self.schedule(rec.key, next);
    }

    /// The AORs of `key` expire at `at` at the earliest (the replicated
    /// table applied a write of one of them): the sweep looks then.
    pub fn schedule(&mut self, key: u64, at: Option<u64>) {
        if let Some(t) = at {
            self.expiries.push(std::cmp::Reverse((t, key)));
            if self.cfg.ping_interval_s > 0 && self.ping_keys.insert(key) {
                let first = self
                    .last_ms
                    .saturating_add(u64::from(self.cfg.ping_interval_s) * 1000);
                self.ping_due.push(std::cmp::Reverse((first, key)));
            }
        }
    }

    /// Schedules every AOR's expiry afresh (at start, and after the table
    /// was replaced by a snapshot).
    pub fn rescan(&mut self) {
        self.expiries.clear();
        let all: Vec<(u64, Option<u64>)> = self
            .locations
            .read()
            .iter()
            .map(|(k, s)| (k, s.next_expiry()))
            .collect();
        for (k, t) in all {
            self.schedule(k, t);
        }
    }

    /// Writes out the expired bindings of the AORs this worker owns
    /// (`owned(key)`); call it about once a second.
    pub fn sweep(&mut self, now: Instant, owned: impl Fn(u64) -> bool) {
        self.expire_answers(now);
        let now_ms = self.wall_ms(now);
        let mut later = Vec::new();
        while let Some(std::cmp::Reverse((t, _))) = self.expiries.peek() {
            if *t > now_ms {
                break;
            }
            let Some(std::cmp::Reverse((_, key))) = self.expiries.pop() else {
                break;
            };
            if !owned(key) {
                // Its owner sweeps it (and the write replaces the record);
                // looked at again in a while in case this worker becomes
                // the owner.
                let expired = self
                    .locations
                    .read()
                    .of_key(key)
                    .any(|s| s.next_expiry().is_some_and(|t| t <= now_ms));
                if expired {
                    later.push((now_ms.saturating_add(5_000), key));
                }
                continue;
            }
            // The latest of each AOR of the key: this worker's pending
            // write, or the table's.
            let current: Vec<Record> = self
                .locations
                .read()
                .of_key(key)
                .map(|s| match self.pending.get(&*s.aor) {
                    Some((r, _, _)) => r.clone(),
                    None => Record::from_stored(key, s),
                })
                .collect();
            for cur in current {
                if cur.next_expiry().is_none_or(|t| t > now_ms) {
                    continue;
                }
                let mut next = cur.clone();
                next.bindings.retain(|b| b.live(now_ms));
                self.stats.expired += (cur.bindings.len() - next.bindings.len()) as u64;
                next.version = cur.version.saturating_add(1);
                self.write(now, next, None);
            }
        }
        for e in later {
            self.expiries.push(std::cmp::Reverse(e));
        }
    }

    /// The 200 of a REGISTER: the AOR's live bindings with their time left
    /// (RFC 3261 §10.3 step 8), and its Path when the phone supports it
    /// (RFC 3327 §5.3).
    fn ok(&self, m: &Message<'_>, rec: &Record, now_ms: u64, tag: &[u8]) -> Vec<u8> {
        let contacts: Vec<Vec<u8>> = rec
            .live(now_ms)
            .map(|b| {
                let left = (b.expires_ms - now_ms).div_ceil(1000);
                let mut v = Vec::with_capacity(b.contact.len() + 24);
                v.push(b'<');
                v.extend_from_slice(&b.contact);
                v.extend_from_slice(format!(">;expires={left}").as_bytes());
                if b.q != 1000 {
                    v.extend_from_slice(format!(";q={}.{:03}", b.q / 1000, b.q % 1000).as_bytes());
                }
                v
            })
            .collect();
        let supports_path = m
            .values(HeaderName::Supported)
            .any(|v| v.of(m.buf()).eq_ignore_ascii_case(b"path"));
        let path: Vec<&[u8]> = if supports_path {
            raw_values(m, b"path").collect()
        } else {
            Vec::new()
        };
        let mut extra: Vec<(&str, &[u8])> =
            contacts.iter().map(|c| ("Contact", c.as_slice())).collect();
        extra.extend(path.iter().map(|p| ("Path", *p)));
        Self::build(m, 200, None, tag, &extra)
    }

    /// RFC 3261 §10.3 steps 6 and 7 on `rec`: the Contacts of `m` added,
    /// refreshed or removed.
    fn apply_contacts(
        &self,
        m: &Message<'_>,
        rec: &mut Record,
        now_ms: u64,
    ) -> Result<Counts, Refused> {
        let buf = m.buf();
        let bad = |r: &'static str| Err(((400, r), Vec::new()));
        let expires_hdr = match m.values(HeaderName::Expires).next() {
            Some(v) => match seconds(v.of(buf)) {
                Some(s) => Some(s),
                None => return bad("Bad Expires"),
            },
            None => None,
        };
        let call_id = call_id_hash(m.call_id());
        let cseq = m.cseq().seq;
        let flow = m.vias().nth(1).and_then(|v| v.target());
        let path: Box<[Box<[u8]>]> = raw_values(m, b"path").map(Into::into).collect();
        let values: Vec<handover_sip::Span> = m.values(HeaderName::Contact).collect();
        let mut counts = Counts::default();
        if values.iter().any(|v| v.of(buf).trim_ascii() == b"*") {
            //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
            //# If the request has additional Contact fields or an expiration
            //# time other than zero, the request is invalid, and the server
            //# MUST return a 400 (Invalid Request) and skip the remaining
            //# steps.
            if values.len() != 1 || expires_hdr != Some(0) {
                return bad("Invalid Wildcard");
            }
            let mut kept = Vec::new();
            for b in std::mem::take(&mut rec.bindings) {
                if b.call_id_hash == call_id && b.cseq >= cseq {
                    kept.push(b);
                } else {
                    counts.removed += 1;
                }
            }
            rec.bindings = kept;
            return Ok(counts);
        }
        for v in values {
            let Ok(c) = NameAddr::parse(buf, v) else {
                return bad("Bad Contact");
            };
            let uri = c.uri().as_bytes();
            let secs = match c.param(b"expires") {
                Some(e) => match seconds(e) {
                    Some(s) => s,
                    None => return bad("Bad Contact expires"),
                },
                None => expires_hdr.unwrap_or(u64::from(self.cfg.default_expires)),
            };
            //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
            //# If and only if the requested expiration interval is greater
            //# than zero AND smaller than one hour AND less than a registrar-
            //# configured minimum, the registrar MAY reject the registration
            //# with a response of 423 (Interval Too Brief).
            if secs > 0 && secs < u64::from(self.cfg.min_expires) {
                let min = self.cfg.min_expires.to_string().into_bytes();
                return Err(((423, "Interval Too Brief"), vec![("Min-Expires", min)]));
            }
            let secs = secs.min(u64::from(self.cfg.max_expires));
            let q = match c.param(b"q") {
                Some(q) => match qvalue(q) {
                    Some(q) => q,
                    None => return bad("Bad Contact q"),
                },
                None => 1000,
            };
            let existing = rec.bindings.iter().position(|b| &*b.contact == uri);
            if let Some(i) = existing {
                let b = &rec.bindings[i];
                //= https://www.rfc-editor.org/rfc/rfc3261#section-10.3
                //# If the value is the same, the registrar compares the CSeq
                //# value.  If the value is higher than that of the existing
                //# binding, it MUST update or remove the binding as above.
                //# If not, the update MUST be aborted and the request fails.
                if b.call_id_hash == call_id && b.cseq >= cseq {
                    return Err(((500, "Out Of Order"), Vec::new()));
                }
                if secs == 0 {
                    rec.bindings.remove(i);
                    counts.removed += 1;
                    continue;
                }
                counts.refreshed += 1;
            } else if secs == 0 {
                continue;
            } else {
                counts.created += 1;
            }
            let nb = Binding {
                contact: uri.into(),
                flow,
                expires_ms: now_ms.saturating_add(secs.saturating_mul(1000)),
                q,
                call_id_hash: call_id,
                cseq,
                path: path.clone(),
            };
            match existing {
                Some(i) => rec.bindings[i] = nb,
                None => rec.bindings.push(nb),
            }
        }
        // Expired bindings go with any write of the AOR.
        let before = rec.bindings.len();
        rec.bindings.retain(|b| b.live(now_ms));
        counts.expired = (before - rec.bindings.len()) as u64;
        if rec.bindings.len() > self.cfg.max_contacts {
            return Err(((403, "Too Many Contacts"), Vec::new()));
        }
        Ok(counts)
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    created: u64,
    refreshed: u64,
    removed: u64,
    expired: u64,
}

/// Live bindings of `rec` by the IP address of their flow.
fn flows_by_source(rec: &Record, now_ms: u64) -> HashMap<IpAddr, usize> {
    let mut m = HashMap::new();
    for b in rec.live(now_ms) {
        if let Some(f) = b.flow {
            *m.entry(f.ip()).or_default() += 1;
        }
    }
    m
}

/// Delta-seconds (RFC 3261 §25.1): digits; more than a u64 holds is
/// clamped (never an overflow), anything else refused.
fn seconds(v: &[u8]) -> Option<u64> {
    let v = v.trim_ascii();
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        v.iter()
            .try_fold(0u64, |n, &d| {
                n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
            })
            .unwrap_or(u64::MAX),
    )
}

/// A qvalue (`0`, `0.5`, `1.000`; RFC 3261 §25.1) × 1000.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.iter().position(|&b| b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &b""[..]),
    };
    if frac.len() > 3 || !frac.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let mut f = 0u16;
    for i in 0..3 {
        f = f * 10 + frac.get(i).map_or(0, |d| u16::from(d - b'0'));
    }
    match int {
        b"0" => Some(f),
        b"1" if f == 0 => Some(1000),
        _ => None,
    }
}

/// The values of header `name` (lower case) that `HeaderName` does not
/// classify, comma lists split.
fn raw_values<'a>(m: &Message<'a>, name: &'a [u8]) -> impl Iterator<Item = &'a [u8]> + 'a {
    let buf = m.buf();
    m.headers()
        .filter(move |h| h.name_span.of(buf).eq_ignore_ascii_case(name))
        .flat_map(move |h| handover_sip::CommaValues::new(buf, h.value).map(move |v| v.of(buf)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use handover_sip::scan;

    const T0: u64 = 1_700_000_000_000;

    fn registrar(replicated: bool) -> Registrar {
        Registrar::new(
            Config {
                wall_epoch_ms: T0,
                max_contacts: 3,
                ..Config::default()
            },
            replicated,
            Locations::shared(),
        )
    }

    /// A REGISTER as a worker gets it: the edge's Via on top, the phone's
    /// below with where the edge saw it (`received`/`rport`).
    fn register(branch: &str, cseq: u32, contacts: &[&str], expires: Option<&str>) -> Vec<u8> {
        let mut s = format!(
            "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-e{branch};k=1\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK{branch};received=203.0.113.7;rport=40001\r\n\
Max-Forwards: 69\r\nTo: <sip:alice@example.com>\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
Call-ID: reg-1@10.0.0.9\r\nCSeq: {cseq} REGISTER\r\n"
        );
        for c in contacts {
            s.push_str(&format!("Contact: {c}\r\n"));
        }
        if let Some(e) = expires {
            s.push_str(&format!("Expires: {e}\r\n"));
        }
        s.push_str("Content-Length: 0\r\n\r\n");
        s.into_bytes()
    }

    fn at(s: u64) -> Instant {
        Instant::from_epoch(Duration::from_secs(s))
    }

    /// Runs one REGISTER (after the retransmission check) and returns what went out.
    fn run(r: &mut Registrar, now: Instant, b: &[u8]) -> Vec<String> {
        let m = scan(b).unwrap();
        if !r.absorb(now, &m) {
            r.register(now, &m, None, 7, b"tag1");
        }
        sent(r)
    }

    fn sent(r: &mut Registrar) -> Vec<String> {
        std::iter::from_fn(|| r.poll_transmit())
            .map(|(_, b)| String::from_utf8(b).unwrap())
            .collect()
    }

    #[test]
    fn rfc3261_10_3_the_200_waits_for_the_commit_and_retransmissions_get_it_again() {
        let mut r = registrar(true);
        let b = register("a", 1, &["<sip:alice@10.0.0.9:5060>"], Some("600"));
        assert!(run(&mut r, at(1), &b).is_empty(), "held until committed");
        let w = r.poll_write().expect("a write");
        assert_eq!(
            (w.aor.as_slice(), w.version, w.key),
            (&b"alice@example.com"[..], 1, 7)
        );
        assert_eq!(
            w.bindings[0].flow,
            Some("203.0.113.7:40001".parse().unwrap())
        );
        assert_eq!(w.bindings[0].expires_ms, T0 + 1_000 + 600_000);
        assert!(
            run(&mut r, at(2), &b).is_empty(),
            "a retransmission is absorbed"
        );
        r.apply(w.clone());
        r.committed(&w.aor, 1, true);
        let out = sent(&mut r);
        assert_eq!(out.len(), 1);
        assert!(out[0].starts_with("SIP/2.0 200 OK\r\n"), "{}", out[0]);
        assert!(
            out[0].contains("Contact: <sip:alice@10.0.0.9:5060>;expires=600\r\n"),
            "{}",
            out[0]
        );
        assert!(out[0].contains("To: <sip:alice@example.com>;tag=tag1"));
        assert_eq!(run(&mut r, at(3), &b), out, "the same 200 again");
        let t = r.targets(7, b"alice@example.com", at(3));
        assert_eq!(t.len(), 1);
        assert!(
            r.targets(7, b"alice@example.com", at(602)).is_empty(),
            "expired"
        );
        // The owner writes it out; another worker leaves it to the owner.
        r.sweep(at(602), |_| false);
        assert!(r.poll_write().is_none());
        r.sweep(at(606), |_| true);
        assert!(r.poll_write().is_none(), "looked at again 5 s later");
        r.sweep(at(607), |_| true);
        let w = r.poll_write().expect("expired bindings written out");
        assert!(w.bindings.is_empty() && w.version == 2);
        assert_eq!(r.stats().expired, 1);
    }

    #[test]
    fn rfc3261_10_3_expiry_limits_wildcard_and_order() {
        let mut r = registrar(false);
        let out = run(
            &mut r,
            at(1),
            &register("a", 1, &["<sip:alice@10.0.0.9>"], Some("30")),
        );
        assert!(
            out[0].starts_with("SIP/2.0 423 Interval Too Brief\r\n"),
            "{}",
            out[0]
        );
        assert!(out[0].contains("Min-Expires: 60\r\n"));
        // An absurd Expires is clamped, never an overflow.
        let out = run(
            &mut r,
            at(1),
            &register(
                "b",
                2,
                &["<sip:alice@10.0.0.9>"],
                Some("18446744073709551616999"),
            ),
        );
        assert!(out[0].contains(";expires=3600\r\n"), "{}", out[0]);
        assert_eq!(r.targets(7, b"alice@example.com", at(1)).len(), 1, "{r:?}");
        // Several contacts, with q and their own expires; best first.
        let out = run(
            &mut r,
            at(2),
            &register(
                "c",
                3,
                &["<sip:alice@10.0.0.10>;q=0.5, <sip:alice@10.0.0.11>;q=1.0;expires=120"],
                None,
            ),
        );
        assert_eq!(out[0].matches("Contact: ").count(), 3, "{}", out[0]);
        assert!(out[0].contains("<sip:alice@10.0.0.10>;expires=3600;q=0.500"));
        let t: Vec<Vec<u8>> = r
            .targets(7, b"alice@example.com", at(3))
            .into_iter()
            .map(|b| b.contact.to_vec())
            .collect();
        assert_eq!(
            t,
            [
                &b"sip:alice@10.0.0.9"[..],
                b"sip:alice@10.0.0.11",
                b"sip:alice@10.0.0.10"
            ]
        );
        // A fourth contact is one too many.
        let out = run(
            &mut r,
            at(3),
            &register("d", 4, &["<sip:alice@10.0.0.12>"], None),
        );
        assert!(
            out[0].starts_with("SIP/2.0 403 Too Many Contacts"),
            "{}",
            out[0]
        );
        // An older CSeq of the same Call-ID changes nothing.
        let out = run(
            &mut r,
            at(3),
            &register("e", 3, &["<sip:alice@10.0.0.10>"], Some("0")),
        );
        assert!(out[0].starts_with("SIP/2.0 500 "), "{}", out[0]);
        // `*` needs Expires: 0 and no other contact.
        let out = run(&mut r, at(3), &register("f", 5, &["*"], Some("60")));
        assert!(
            out[0].starts_with("SIP/2.0 400 Invalid Wildcard"),
            "{}",
            out[0]
        );
        let out = run(&mut r, at(3), &register("g", 6, &["*"], Some("0")));
        assert!(out[0].starts_with("SIP/2.0 200 OK") && !out[0].contains("Contact:"));
        assert!(r.targets(7, b"alice@example.com", at(3)).is_empty());
        assert_eq!(r.aors(), 0);
        let s = r.stats();
        assert_eq!((s.created, s.removed, s.refused), (3, 3, 4));
    }

    #[test]
    fn a_write_the_cluster_refuses_leaves_the_retransmission_to_the_new_owner() {
        let mut r = registrar(true);
        let b = register("a", 1, &["<sip:alice@10.0.0.9>"], None);
        assert!(run(&mut r, at(1), &b).is_empty());
        let w = r.poll_write().unwrap();
        r.committed(&w.aor, w.version, false);
        assert!(sent(&mut r).is_empty());
        assert_eq!(r.stats().lost_writes, 1);
        // Not absorbed any more: handled as new (here, by the same worker).
        let m = scan(&b).unwrap();
        assert!(!r.absorb(at(2), &m));
    }

    #[test]
    fn an_authenticated_user_registers_only_its_own_aor_and_a_query_lists_bindings() {
        let mut r = registrar(false);
        let b = register("a", 1, &["<sip:alice@10.0.0.9>"], None);
        let m = scan(&b).unwrap();
        r.register(at(1), &m, Some(b"bob"), 7, b"t");
        assert!(sent(&mut r)[0].starts_with("SIP/2.0 403 Not Your AOR"));
        let b = register("b", 2, &["<sip:alice@10.0.0.9>"], None);
        r.register(at(1), &scan(&b).unwrap(), Some(b"alice"), 7, b"t");
        assert!(sent(&mut r)[0].starts_with("SIP/2.0 200 OK"));
        let q = register("c", 3, &[], None);
        let out = run(&mut r, at(2), &q);
        assert!(
            out[0].contains("Contact: <sip:alice@10.0.0.9>;expires=3599"),
            "{}",
            out[0]
        );
    }

    #[test]
    fn qvalues_and_seconds_parse_strictly() {
        assert_eq!(qvalue(b"0.5"), Some(500));
        assert_eq!(qvalue(b"1"), Some(1000));
        assert_eq!(qvalue(b"0.125"), Some(125));
        assert_eq!(qvalue(b"1.5"), None);
        assert_eq!(qvalue(b"0.1234"), None);
        assert_eq!(seconds(b" 42 "), Some(42));
        assert_eq!(seconds(b"-1"), None);
        assert_eq!(seconds(b"99999999999999999999999"), Some(u64::MAX));
    }
}
