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
//! worker's death). Every worker's replicated table applies every committed
//! record into the [`Locations`] it shares with the registrar, which so
//! answers [`Registrar::targets`] locally (without replication,
//! [`Registrar::apply`] writes them). Expiry is absolute wall-clock time in
//! the record, so every replica reads a binding as expired at the same
//! moment; the owner writes expired bindings out ([`Registrar::sweep`]).
//! Relay mode ([`relay`]) sends a domain's REGISTERs to the PBX that is its
//! registrar instead; `ping.rs` sends OPTIONS to bindings.
//!
//! Transactions: a REGISTER over UDP has a non-INVITE server transaction,
//! which for a UAS comes down to "absorb retransmissions until the answer
//! exists, then repeat it, for 64·T1" (RFC 3261 §17.2.2). That is a FIFO of
//! answers here, all of one lifetime, rather than a timer per transaction.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod digest;
pub mod locations;
mod ping;
mod register;
pub mod relay;

pub use locations::{Binding, Locations, Shared, Stored};
use ping::Ping;
pub use ping::PingTarget;
pub use relay::Upstreams;
use relay::{MAX_RELAYS, Relayed};

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
    /// Bumped at every write, and at least the writer's wall clock in Unix
    /// milliseconds ([`Record::next_version`]).
    pub version: u64,
    /// Empty: the AOR is gone.
    pub bindings: Vec<Binding>,
}

impl Record {
    /// The version of the write that follows this one at `now_ms` (Unix
    /// milliseconds): one more, and never below the clock. An AOR whose
    /// last binding went is gone from the table, which keeps only a
    /// tombstone of the removal's version to refuse late writes; when the
    /// phone registers again, its record starts from nothing, and a
    /// version counted from zero would be refused as older than that
    /// tombstone for as long as the tombstone lives (the phone would get
    /// no answer). The clock puts a new life of the AOR past its old one.
    pub fn next_version(&self, now_ms: u64) -> u64 {
        self.version.saturating_add(1).max(now_ms)
    }

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
    /// Bindings dropped because their flow failed (the edge answered a
    /// request to it `430 Flow Failed`: the phone's connection is gone).
    pub flow_failures: u64,
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
    /// (deadline, branch) of the relays' and pings' transactions, earliest
    /// first: the worker asks for the next deadline after every datagram,
    /// so it must not walk every transaction. Entries go stale (a newer
    /// one was filed, or the transaction ended) and are skipped.
    txn_timers: BinaryHeap<std::cmp::Reverse<(Instant, Vec<u8>)>>,
}

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
            txn_timers: BinaryHeap::new(),
        }
    }

    /// When the relays' transactions next need [`Self::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.txn_timers.peek().map(|std::cmp::Reverse((t, _))| *t)
    }

    /// Files the next deadline of the relay or ping of `branch`.
    fn arm(&mut self, branch: &[u8]) {
        let next = match self.relays.get(branch) {
            Some(r) => r.cli.poll_timeout(),
            None => self.pings.get(branch).and_then(|p| p.cli.poll_timeout()),
        };
        if let Some(t) = next {
            self.txn_timers
                .push(std::cmp::Reverse((t, branch.to_vec())));
        }
    }

    /// Runs the relays' timers due at `now` (retransmissions, 408).
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(std::cmp::Reverse((t, _))) = self.txn_timers.peek() {
            if *t > now {
                break;
            }
            let Some(std::cmp::Reverse((_, b))) = self.txn_timers.pop() else {
                break;
            };
            if let Some(r) = self.relays.get_mut(&b) {
                r.cli.handle_timeout(now);
                self.drain_relay(&b);
            } else if let Some(p) = self.pings.get_mut(&b) {
                p.cli.handle_timeout(now);
                self.drain_ping(now, &b);
            }
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
        let to = m.top_via().edge_target();
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
                    to: m.top_via().edge_target(),
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
}

#[cfg(test)]
mod tests;
