//! One worker's replica: a raft-rs `RawNode` over a [`Store`], the applied
//! [`Table`], and the ownership lease, driven without I/O.
//!
//! The shell calls [`Node::tick`] every tick (100 ms in a worker), hands
//! the messages from peers to [`Node::step_all`] (those that arrived
//! together at once), sends what [`Node::take_messages`] returns and reads
//! [`Node::poll_event`]; with [`Config::group_commit`] it also calls
//! [`Node::propose_queued`] when its commit window closes. Time is a tick
//! count; randomness (raft's election timeouts) comes from a seed, so a
//! simulation run is repeatable.
//!
//! # Ownership and its lease
//!
//! A worker serves shard `s` only while all three hold:
//! 1. the applied map names it owner of `s`;
//! 2. its lease is live: it proposed a `Renew` at local time `t`, saw it
//!    applied, and `now < t + lease`;
//! 3. if it gained `s` from another worker, `lease` ticks have passed since
//!    it applied that map change, unless the change is a death the leader
//!    proposed with its whole log applied (`MemberDown.lease_over`, set in
//!    `propose_batch`): then the dead worker's last renewal was applied
//!    `dead_after` before, its lease is over, and `s` is served at once;
//!    or unless the old owner's `MemberReleased` naming an epoch at or
//!    after the change was applied since: it had applied the change and
//!    its shell had stopped acting on `s` when it proposed that
//!    ([`Node::released`]), so a planned move (a join, a drain) leaves `s`
//!    dark for a commit rather than a lease.
//!
//! The old owner's last useful `Renew` was proposed before the map change
//! was committed (had it applied the change first, it would have stopped),
//! so its lease ends before `apply time + lease` on the new owner: two
//! workers never serve one shard at once, whatever the network does
//! (assuming clocks that run at the same rate, within the margin between
//! `lease` and `dead_after`). The leader declares a worker dead when none of
//! its renewals has been applied for `dead_after` ticks, and the state
//! machine spreads its shards over the others.

use std::collections::{BTreeMap, HashMap, VecDeque};

use prost::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};

use crate::disk::{Disk, DiskError};
use crate::pb;
use crate::store::Store;
use crate::table::{Change, Table};

/// Timing and sizes of a replica, in ticks and counts.
#[derive(Debug, Clone)]
pub struct Config {
    /// This worker's Raft id (not 0).
    pub id: u64,
    /// Every voter's id, this one included.
    pub voters: Vec<u64>,
    /// Shards in the map (fixed for the life of the cluster).
    pub shards: usize,
    /// Election after this many ticks without a leader (raft-rs: the
    /// timeout is random in `[election, 2 * election)`).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// How long a committed renewal lets the owner serve.
    pub lease_ticks: u64,
    /// A worker whose renewals stop for this long is declared dead.
    /// Must exceed `lease_ticks` by the clocks' worst disagreement.
    pub dead_after_ticks: u64,
    /// How often an owner proposes a renewal.
    pub renew_ticks: u64,
    /// A proposal not applied after this long is proposed again (a
    /// follower's forwarded proposal is lost when the leader changes).
    pub repropose_ticks: u64,
    /// Take a snapshot and compact the log once it holds this many entries,
    pub compact_after: usize,
    /// or this many bytes of entry data (call records are a few hundred
    /// bytes to several KiB, so a count alone does not bound memory).
    pub compact_after_bytes: usize,
    /// At most this many commands per log entry.
    pub max_batch: usize,
    /// Group commit by the shell: a tick does not propose the queued
    /// commands (the shell calls [`Node::propose_queued`] when its window
    /// closes), and a leader holds proposals forwarded by followers in its
    /// log without writing or sending them until then (or until anything
    /// else runs a Ready), so every worker's batch of one window goes in
    /// one disk write and one append per follower.
    pub group_commit: bool,
    /// Where the table keeps the AORs' bindings: the worker shares them
    /// with its registrar (`Table::with_locations`).
    pub locations: handover_registrar::Shared,
}

impl Config {
    /// The worker's defaults for a 100 ms tick: elections after 1–2 s,
    /// lease 2 s, declared dead after 3 s.
    pub fn new(id: u64, voters: Vec<u64>, shards: usize) -> Self {
        Self {
            id,
            voters,
            shards,
            election_ticks: 10,
            heartbeat_ticks: 2,
            lease_ticks: 20,
            dead_after_ticks: 30,
            renew_ticks: 5,
            repropose_ticks: 20,
            compact_after: 10_000,
            compact_after_bytes: 32 << 20,
            max_batch: 512,
            group_commit: false,
            locations: handover_registrar::Locations::shared(),
        }
    }
}

/// What the shell hears about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A call this worker proposed is committed at `version`.
    Committed { call_id: Vec<u8>, version: u64 },
    /// A call of a shard this worker owns was confirmed by the shard's
    /// previous owner (see `Table`): take it over from the table.
    HandedOver { call_id: Vec<u8> },
    /// A call removal this worker proposed is committed.
    Removed { call_id: Vec<u8> },
    /// A call of a shard this worker owns was removed by another worker
    /// (its previous owner, which hung it up while cut off, see `Table`):
    /// it is over; forget it without a word to its phones.
    Ended { call_id: Vec<u8> },
    /// An operator asked to end a call of a shard this worker owns
    /// (`Node::hang_up` anywhere): hang it up on both legs.
    HangUp { call_id: Vec<u8> },
    /// A call this worker proposed was refused: it no longer owns the
    /// shard, or the table already holds that version.
    Refused { call_id: Vec<u8> },
    /// The map moved to `epoch`; `gained` shards are served once their
    /// handover wait has passed, `lost` ones no longer.
    Map {
        epoch: u64,
        gained: Vec<usize>,
        lost: Vec<usize>,
    },
    /// A member left the map: declared dead by the leader (a failover), or
    /// drained.
    MemberDown { node: u64, drained: bool },
    /// Raft's leader changed (0: none known).
    Leader { id: u64, term: u64 },
    /// This worker now serves `shard` (it owns it, its lease is live and
    /// the previous owner's has run out): the shells take its calls over.
    Serving { shard: usize },
    /// This worker no longer serves `shard` (moved, or its lease ended).
    Stopped { shard: usize },
    /// An AOR of affinity key `key` was written (any proposer's); its
    /// earliest binding expires at `next_expiry` (Unix ms; none: removed).
    /// The bindings themselves are in the table's shared locations, which
    /// every worker reads.
    Bound { key: u64, next_expiry: Option<u64> },
    /// A write of this worker's to an AOR was committed (`stored`) or
    /// refused (the shard moved, or an old version).
    BindDone {
        aor: Vec<u8>,
        version: u64,
        stored: bool,
    },
    /// The table was replaced by a snapshot: every AOR's bindings may
    /// have changed (read them from [`Node::table`]).
    Restored,
}

/// Why a replica cannot run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("corrupt snapshot: {0}")]
    Snapshot(#[from] prost::DecodeError),
    #[error(transparent)]
    Disk(#[from] DiskError),
}

/// A read-only view for `handover status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    pub id: u64,
    pub leader: u64,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub epoch: u64,
    pub calls: usize,
    pub owned_shards: usize,
    pub serving_shards: usize,
    pub lease_live: bool,
}

/// splitmix64: raft's election timeouts from a seed (see [`Node::reseed`]).
#[derive(Debug, Clone)]
struct Seeded(u64);

impl Seeded {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// See the module docs.
pub struct Node {
    cfg: Config,
    raw: RawNode<Store>,
    table: Table,
    rng: Seeded,
    now: u64,
    applied: u64,
    /// Serving ends at this tick (see the module docs).
    lease_until: u64,
    /// Per shard: serving may start at this tick.
    serve_from: Vec<u64>,
    /// Per shard: the epoch it last moved here and the member it came
    /// from (0: unknown), for [`Change::Released`].
    moved_from: Vec<(u64, u64)>,
    /// Shards lost per map epoch, not yet released, that this worker was
    /// the only possible server of (see [`Node::released`]).
    unreleased: BTreeMap<u64, Vec<u32>>,
    /// Shards lost while still in their wait (never served here), with
    /// the epoch they were lost at: released as soon as the member they
    /// came from releases them.
    lost_waiting: HashMap<usize, u64>,
    /// Per shard: `serves` as last reported ([`Event::Serving`],
    /// [`Event::Stopped`]).
    serving: Vec<bool>,
    renew_seq: u64,
    /// Renewals in flight: seq -> tick proposed.
    renew_sent: BTreeMap<u64, u64>,
    last_renew: u64,
    /// Commands waiting for the next batch.
    queued: Vec<pb::Command>,
    next_seq: u64,
    /// Batches proposed and not yet applied: seq -> (commands, tick).
    inflight: BTreeMap<u64, (Vec<pb::Command>, u64)>,
    /// As leader: the tick each member's last renewal was applied.
    heard: HashMap<u64, u64>,
    /// As leader: members declared dead, not yet applied.
    downing: HashMap<u64, u64>,
    leader: u64,
    /// The tick the current leader became known: batches proposed before
    /// it may have been forwarded to a leader that is gone, so they are
    /// proposed again at the next tick rather than after repropose_ticks.
    leader_since: u64,
    draining: bool,
    outbox: Vec<Message>,
    events: VecDeque<Event>,
    /// Commands per batch proposed since [`Node::take_batch_sizes`].
    batch_sizes: Vec<usize>,
    /// Where the log is made durable (none in simulations, whose "disk" is
    /// the [`Store`] kept across a crash).
    disk: Option<Disk>,
    /// As leader with `group_commit`: forwarded proposals stepped and not
    /// yet through a Ready.
    deferred: bool,
    /// Peer messages refused by [`Node::admissible`].
    refused: u64,
    /// See [`Node::coalesced`].
    coalesced: u64,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("status", &self.status())
            .finish()
    }
}

impl Node {
    /// Starts (or restarts, from what `store` persisted) a replica.
    pub fn new(cfg: Config, store: Store, seed: u64) -> Result<Self, Error> {
        let table = Table::decode_with(store.snapshot_data(), cfg.shards, cfg.locations.clone())?;
        let applied = store.snapshot_index();
        let rc = raft::Config {
            id: cfg.id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            // Off: raft-rs 0.7's `try_batching` appends new entries to any
            // queued MsgAppend to the same peer whose entries they follow,
            // and one with no entries (a commit-only append) "follows"
            // anything: after a rejection the resent entries ride under the
            // wrong index and the follower panics (to_commit out of range).
            // A leader holding proposals for group commit queues several
            // appends per peer, which the simulation showed at once.
            // Without it each proposal is its own MsgAppend; the shell sends
            // them in one gRPC batch and the follower steps them before one
            // Ready (`Node::step_all`), so the disk cost is the same.
            batch_append: false,
            ..Default::default()
        };
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        let raw = RawNode::new(&rc, store, &logger)?;
        let shards = table.shards();
        let mut node = Self {
            raw,
            table,
            rng: Seeded(seed ^ cfg.id.wrapping_mul(0x2545_F491_4F6C_DD1D)),
            now: 0,
            applied,
            lease_until: 0,
            // After a restart, wait out any lease this worker's previous
            // life may not have seen end.
            serve_from: vec![cfg.lease_ticks; shards],
            moved_from: vec![(0, 0); shards],
            unreleased: BTreeMap::new(),
            lost_waiting: HashMap::new(),
            serving: vec![false; shards],
            renew_seq: 0,
            renew_sent: BTreeMap::new(),
            last_renew: 0,
            queued: Vec::new(),
            next_seq: 1,
            inflight: BTreeMap::new(),
            heard: HashMap::new(),
            downing: HashMap::new(),
            leader: 0,
            leader_since: 0,
            draining: false,
            outbox: Vec::new(),
            events: VecDeque::new(),
            disk: None,
            batch_sizes: Vec::new(),
            deferred: false,
            refused: 0,
            coalesced: 0,
            cfg,
        };
        node.reseed();
        // Proposal numbers start at random, so a restarted worker's new
        // batches are never mistaken for its previous life's.
        node.next_seq = node.rng.next() >> 2;
        Ok(node)
    }

    /// Starts (or restarts) a replica whose log lives in `disk`.
    pub fn with_disk(cfg: Config, disk: Disk, store: Store, seed: u64) -> Result<Self, Error> {
        let mut node = Self::new(cfg, store, seed)?;
        node.disk = Some(disk);
        Ok(node)
    }

    /// Writes the store's changes durably when one must be (see
    /// `Store::must_sync`); changes of the commit index alone wait.
    fn sync(&mut self) -> Result<(), Error> {
        let store = self.raw.mut_store();
        if store.must_sync() {
            match &mut self.disk {
                Some(disk) => disk.sync(store)?,
                // No disk (the simulation): the write happens all the same,
                // so `Store::persisted` is what a disk would hold.
                None => {
                    store.take_dirty();
                }
            }
        }
        Ok(())
    }

    /// raft-rs draws election timeouts from the thread's RNG whenever it
    /// resets its election clock; replace each draw with one from our seed.
    fn reseed(&mut self) {
        if self.raw.raft.election_elapsed == 0 {
            let e = self.cfg.election_ticks as u64;
            let t = e + self.rng.next() % e;
            self.raw.raft.set_randomized_election_timeout(t as usize);
        }
    }

    pub fn id(&self) -> u64 {
        self.cfg.id
    }

    pub fn now(&self) -> u64 {
        self.now
    }

    pub fn table(&self) -> &Table {
        &self.table
    }

    pub fn store(&self) -> &Store {
        self.raw.store()
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Ticks left on this worker's lease (0: expired). A shell whose ticks
    /// can stall (a paused process) turns this into a wall-clock deadline
    /// and checks it too: see `handover::cluster`.
    pub fn lease_ticks_left(&self) -> u64 {
        self.lease_until.saturating_sub(self.now)
    }

    /// Whether this worker may serve `shard` now (see the module docs).
    pub fn serves(&self, shard: usize) -> bool {
        self.now < self.lease_until
            && self.table.owners().get(shard) == Some(&self.cfg.id)
            && self.now >= self.serve_from[shard]
    }

    pub fn status(&self) -> Status {
        let owned = self
            .table
            .owners()
            .iter()
            .filter(|&&o| o == self.cfg.id)
            .count();
        Status {
            id: self.cfg.id,
            leader: self.raw.raft.leader_id,
            term: self.raw.raft.term,
            commit: self.raw.raft.raft_log.committed,
            applied: self.applied,
            epoch: self.table.epoch(),
            calls: self.table.call_count(),
            owned_shards: owned,
            serving_shards: (0..self.table.shards()).filter(|&s| self.serves(s)).count(),
            lease_live: self.now < self.lease_until,
        }
    }

    /// Replicates a call record; [`Event::Committed`] follows once applied.
    pub fn upsert(&mut self, call_id: Vec<u8>, key: u64, version: u64, record: Vec<u8>) {
        self.upsert_call(pb::CallUpsert {
            call_id,
            key,
            version,
            record,
            ..Default::default()
        });
    }

    /// [`Node::upsert`] with all a record carries: the call's other leg's
    /// Call-ID, so that [`Table::call_by_leg`] finds it by either, A's
    /// unacknowledged 2xx, the answer time. Its owner is this worker.
    pub fn upsert_call(&mut self, mut upsert: pb::CallUpsert) {
        upsert.owner = self.cfg.id;
        // Coalesced: a newer record of a call whose older one still waits
        // to be proposed takes its place (a request flood inside one call
        // writes one record per batch, not one per request). Its commit
        // answers whoever waited for the older one.
        for c in self.queued.iter_mut().rev() {
            match &mut c.command {
                Some(pb::command::Command::Upsert(q)) if q.call_id == upsert.call_id => {
                    if q.version < upsert.version {
                        *q = upsert;
                        self.coalesced += 1;
                        return;
                    }
                    break;
                }
                Some(pb::command::Command::Remove(r)) if r.call_id == upsert.call_id => break,
                _ => {}
            }
        }
        self.queue(pb::command::Command::Upsert(upsert));
    }

    /// Call records replaced by a newer one before they were proposed.
    pub fn coalesced(&self) -> u64 {
        self.coalesced
    }

    /// Forgets a call that ended.
    pub fn remove(&mut self, call_id: Vec<u8>, key: u64, version: u64) {
        self.queue(pb::command::Command::Remove(pb::CallRemove {
            call_id,
            key,
            version,
            owner: self.cfg.id,
        }));
    }

    /// Writes an AOR's bindings (the whole set; `owner` is set here).
    pub fn bind(&mut self, mut registration: pb::Registration) {
        registration.owner = self.cfg.id;
        self.queue(pb::command::Command::Bind(registration));
    }

    /// Asks the cluster to end call `call_id` (either leg's Call-ID): the
    /// owner of its shard at apply time hears [`Event::HangUp`].
    pub fn hang_up(&mut self, call_id: Vec<u8>) {
        self.queue(pb::command::Command::Hangup(pb::CallHangup { call_id }));
    }

    /// The caller ACKed the 2xx of call `call_id`: the table drops the
    /// 2xx it kept for a new owner to resend (`CallUpsert.a_ok`).
    pub fn acked(&mut self, call_id: Vec<u8>) {
        self.queue(pb::command::Command::Acked(pb::CallAcked { call_id }));
    }

    /// Graceful leave: hands every shard to the others and stops renewing.
    pub fn drain(&mut self) {
        self.draining = true;
        self.queue(pb::command::Command::Down(pb::MemberDown {
            node: self.cfg.id,
            drained: true,
            lease_over: false,
        }));
    }

    /// The shell acts on none of the shards this worker lost up to map
    /// `epoch` (it handed their calls over): their new owners may serve
    /// those this worker was the only possible server of without waiting
    /// out its lease. One `MemberReleased` per epoch with such shards; a
    /// release that is lost costs the new owners that wait.
    pub fn released(&mut self, epoch: u64) {
        let later = self.unreleased.split_off(&epoch.saturating_add(1));
        for (epoch, shards) in std::mem::replace(&mut self.unreleased, later) {
            self.queue(pb::command::Command::Released(pb::MemberReleased {
                node: self.cfg.id,
                epoch,
                shards,
            }));
        }
    }

    /// True once a drain has been applied: nothing is left to hand over.
    pub fn drained(&self) -> bool {
        self.draining && !self.table.is_up(self.cfg.id)
    }

    fn queue(&mut self, c: pb::command::Command) {
        self.queued.push(pb::Command { command: Some(c) });
    }

    /// Messages for peers, in order.
    ///
    /// A snapshot handed to the transport is reported finished at once:
    /// raft-rs otherwise waits for that report forever if the message is
    /// lost, and if the follower did not get it, it refuses the next append
    /// and the leader sends the snapshot again.
    pub fn take_messages(&mut self) -> Vec<Message> {
        let out = std::mem::take(&mut self.outbox);
        for m in &out {
            if m.get_msg_type() == MessageType::MsgSnapshot {
                self.raw.report_snapshot(m.to, SnapshotStatus::Finish);
            }
        }
        out
    }

    /// Commands per batch proposed since the last call (for a metric).
    pub fn take_batch_sizes(&mut self) -> Vec<usize> {
        std::mem::take(&mut self.batch_sizes)
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// A message from a peer. Errors from raft about a message (an unknown
    /// peer, a stale term) drop that message only.
    pub fn step(&mut self, m: Message) -> Result<(), Error> {
        self.step_all(std::iter::once(m))
    }

    /// Messages that arrived together, stepped before one Ready: a burst
    /// of appends costs a follower one disk write, not one each. With
    /// `group_commit`, a leader stepping only forwarded proposals runs no
    /// Ready (see [`Node::deferred`]).
    pub fn step_all(&mut self, msgs: impl IntoIterator<Item = Message>) -> Result<(), Error> {
        let mut ready = false;
        for mut m in msgs {
            if !self.admissible(&mut m) {
                self.refused += 1;
                continue;
            }
            let hold = self.cfg.group_commit
                && m.get_msg_type() == MessageType::MsgPropose
                && self.is_leader();
            let _ = self.raw.step(m);
            self.reseed();
            if hold {
                self.deferred = true;
            } else {
                ready = true;
            }
        }
        if ready { self.run() } else { Ok(()) }
    }

    /// Peer messages refused so far: those that would have made raft-rs
    /// panic (see `Node::admissible`).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Checks a peer's message for what would make raft-rs 0.7 panic (it
    /// trusts its peers: a panic on a bad message is its way to report a
    /// bug), since a replica that panics takes its worker down: refused
    /// (false), or made harmless. Not an authentication: who may send is
    /// the transport's to decide.
    ///
    /// - It must be addressed to this replica from another voter, with
    ///   indexes below 2^62.
    /// - Local message types (a replica's own timers and reports: `MsgHup`,
    ///   `MsgBeat`, `MsgUnreachable`, `MsgSnapStatus`, `MsgCheckQuorum`)
    ///   never come from a peer; votes and their answers carry a term;
    ///   read-index and leader-transfer messages (unused here) are refused.
    /// - A proposal must carry entries ("stepped empty MsgProp").
    /// - A heartbeat's commit index is clamped to this log's last index: a
    ///   leader sends at most what the follower has (`commit_to` panics on
    ///   more).
    /// - An append may not contradict an entry this replica has committed
    ///   (a conflict at or below the commit index is fatal to raft-rs),
    ///   its entries must follow each other and its index, and the entry
    ///   it follows must have a term (past index 0).
    /// - A snapshot's data must decode as a table (a corrupt one stops the
    ///   replica when applied), and it ends past index 0 with a term.
    fn admissible(&self, m: &mut Message) -> bool {
        if m.to != self.cfg.id || m.from == self.cfg.id || !self.cfg.voters.contains(&m.from) {
            return false;
        }
        // No log of ours reaches 2^62 entries; raft-rs adds to indexes
        // unchecked (a snapshot at u64::MAX overflowed: found by fuzzing).
        const FAR: u64 = 1 << 62;
        if m.index > FAR
            || m.snapshot
                .as_ref()
                .is_some_and(|s| s.get_metadata().index > FAR)
        {
            return false;
        }
        // raft-rs takes a message of term 0 for a local one and skips its
        // term checks: a heartbeat or an append of term 0 made a candidate
        // follow at term 0 (a debug assertion in raft-rs; in a release
        // build the term went back), a vote of term 0 panicked answering
        // it ("term should be set"); both found by fuzz/replica_messages.
        // Only a forwarded proposal is sent without a term.
        if m.term == 0 && m.get_msg_type() != MessageType::MsgPropose {
            return false;
        }
        let log = &self.raw.raft.raft_log;
        match m.get_msg_type() {
            MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum => false,
            // Read-index and leader transfer: handover uses neither, and a
            // read-index answer past the log makes raft-rs commit past its
            // end (found by fuzzing); a forged TimeoutNow forces an election.
            MessageType::MsgReadIndex
            | MessageType::MsgReadIndexResp
            | MessageType::MsgTransferLeader
            | MessageType::MsgTimeoutNow => false,
            // A forwarded proposal is a local message (term 0): with a term,
            // a follower forwarding it again panics raft-rs (fuzzing).
            MessageType::MsgPropose => !m.entries.is_empty() && m.term == 0,
            MessageType::MsgHeartbeat => {
                m.commit = m.commit.min(log.last_index());
                true
            }
            MessageType::MsgAppend => {
                // The entry an append follows has a term unless it is the
                // log's start: raft-rs reads a term of 0 for an index past
                // its log, so `log_term` 0 there would "match" and commit
                // past the log's end (a panic; found by fuzzing).
                if m.index > 0 && m.log_term == 0 {
                    return false;
                }
                let mut want = m.index.checked_add(1);
                m.entries.iter().all(|e| {
                    let follows = want == Some(e.index);
                    want = e.index.checked_add(1);
                    follows && (e.index > log.committed || log.term(e.index).ok() == Some(e.term))
                })
            }
            // A snapshot's last entry has a term (0 "matches" any index
            // past the log, and raft-rs then commits past its end).
            // Nor is one at index 0, the log's start: raft-rs restores it
            // and then counts back from a next index of 0 (fuzzing).
            MessageType::MsgSnapshot => m.snapshot.as_ref().is_some_and(|s| {
                let meta = s.get_metadata();
                meta.index > 0 && meta.term > 0 && Table::decode(&s.data, self.cfg.shards).is_ok()
            }),
            _ => true,
        }
    }

    /// As leader with `group_commit`: forwarded proposals wait for
    /// [`Node::propose_queued`] (or any other step or tick).
    pub fn deferred(&self) -> bool {
        self.deferred
    }

    /// One tick of time: elections, heartbeats, renewals, failure
    /// detection, re-proposals, then the batch of queued commands.
    pub fn tick(&mut self) -> Result<(), Error> {
        self.now += 1;
        self.raw.tick();
        self.reseed();
        self.watch_leader();
        if !self.draining
            && self.now >= self.last_renew + self.cfg.renew_ticks
            && self.raw.raft.leader_id != 0
        {
            self.last_renew = self.now;
            self.renew_seq += 1;
            self.renew_sent.insert(self.renew_seq, self.now);
            // Renewals older than a lease can no longer extend it.
            let horizon = self.now.saturating_sub(self.cfg.lease_ticks);
            self.renew_sent.retain(|_, &mut t| t >= horizon);
            self.queue(pb::command::Command::Renew(pb::Renew {
                node: self.cfg.id,
                seq: self.renew_seq,
            }));
        }
        // Back after a crash or a partition that declared it dead: rejoin.
        let joining = self.inflight.values().any(|(cmds, _)| {
            cmds.iter()
                .any(|c| matches!(c.command, Some(pb::command::Command::Up(_))))
        }) || self
            .queued
            .iter()
            .any(|c| matches!(c.command, Some(pb::command::Command::Up(_))));
        if !self.draining
            && !joining
            && self.raw.raft.leader_id != 0
            && self.caught_up()
            && !self.table.is_up(self.cfg.id)
        {
            self.queue(pb::command::Command::Up(pb::MemberUp { node: self.cfg.id }));
        }
        if self.is_leader() {
            self.detect_failures();
        }
        let stale: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, (_, t))| {
                self.now >= t + self.cfg.repropose_ticks
                    || (self.leader != 0 && *t < self.leader_since)
            })
            .map(|(&seq, _)| seq)
            .collect();
        for seq in stale {
            if let Some((cmds, _)) = self.inflight.remove(&seq) {
                self.propose_batch(seq, cmds);
            }
        }
        if !self.cfg.group_commit {
            self.flush();
        }
        self.run()
    }

    /// Whether this replica has applied all it knows to be committed.
    pub fn caught_up(&self) -> bool {
        self.applied >= self.raw.raft.raft_log.committed
    }

    fn watch_leader(&mut self) {
        let leader = self.raw.raft.leader_id;
        if leader != self.leader {
            self.leader = leader;
            self.leader_since = self.now;
            if leader == self.cfg.id {
                // A new leader knows nothing of renewals before its term:
                // give every member a full dead_after from now.
                self.heard.clear();
                self.downing.clear();
            }
            self.events.push_back(Event::Leader {
                id: leader,
                term: self.raw.raft.term,
            });
        }
    }

    fn detect_failures(&mut self) {
        let members: Vec<u64> = self.table.members_up().collect();
        for m in members {
            let heard = *self.heard.entry(m).or_insert(self.now);
            if m == self.cfg.id || self.now < heard + self.cfg.dead_after_ticks {
                continue;
            }
            let due = self
                .downing
                .get(&m)
                .is_none_or(|&t| self.now >= t + self.cfg.repropose_ticks);
            if due {
                self.downing.insert(m, self.now);
                self.queue(pb::command::Command::Down(pb::MemberDown {
                    node: m,
                    drained: false,
                    // Decided when the batch is proposed: propose_batch.
                    lease_over: false,
                }));
            }
        }
    }

    /// Commands queued for the next batch.
    pub fn queued(&self) -> usize {
        self.queued.len()
    }

    /// Proposes the queued commands now (as one or more batches), rather
    /// than at the next tick: the shell calls it after taking every command
    /// that arrived together, so a burst still goes as one entry.
    pub fn propose_queued(&mut self) -> Result<(), Error> {
        self.flush();
        self.run()
    }

    fn flush(&mut self) {
        while !self.queued.is_empty() {
            let n = self.queued.len().min(self.cfg.max_batch);
            let cmds: Vec<pb::Command> = self.queued.drain(..n).collect();
            let seq = self.next_seq;
            self.next_seq += 1;
            self.propose_batch(seq, cmds);
        }
    }

    fn propose_batch(&mut self, seq: u64, mut commands: Vec<pb::Command>) {
        // A leader appends its proposal to its log right here, so what
        // stands before it in the log is what the log holds now: with all
        // of it applied and still no renewal of a dead member applied for
        // dead_after, that member's lease is over (see MemberDown in
        // proto/cluster.proto). Decided at every proposal, re-proposals
        // included; a follower's forwarded proposal never claims it.
        let settled = self.is_leader() && self.applied >= self.raw.raft.raft_log.last_index();
        for c in &mut commands {
            if let Some(pb::command::Command::Down(d)) = &mut c.command
                && !d.drained
            {
                d.lease_over = settled
                    && self
                        .heard
                        .get(&d.node)
                        .is_some_and(|&h| self.now >= h + self.cfg.dead_after_ticks);
            }
        }
        let batch = pb::Batch {
            proposer: self.cfg.id,
            seq,
            commands,
        };
        // Without a leader raft drops the proposal; it stays in flight and
        // is proposed again after repropose_ticks.
        let _ = self.raw.propose(Vec::new(), batch.encode_to_vec());
        self.batch_sizes.push(batch.commands.len());
        self.inflight.insert(seq, (batch.commands, self.now));
    }

    /// The Ready loop (raft-rs 0.7's order): send, snapshot, apply
    /// committed, append, hard state, send persisted, advance, repeat.
    fn run(&mut self) -> Result<(), Error> {
        self.deferred = false;
        while self.raw.has_ready() {
            let mut rd = self.raw.ready();
            self.outbox.extend(rd.take_messages());
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot().clone();
                self.table =
                    Table::decode_with(&snap.data, self.cfg.shards, self.cfg.locations.clone())?;
                self.applied = snap.get_metadata().index;
                self.raw.mut_store().apply_snapshot(snap);
                // Shards may have come from anyone: wait out their leases.
                let wait = self.now + self.cfg.lease_ticks;
                self.serve_from.iter_mut().for_each(|s| *s = wait);
                self.moved_from.iter_mut().for_each(|m| *m = (0, 0));
                self.lost_waiting.clear();
                self.events.push_back(Event::Map {
                    epoch: self.table.epoch(),
                    gained: Vec::new(),
                    lost: Vec::new(),
                });
                self.events.push_back(Event::Restored);
            }
            let committed = rd.take_committed_entries();
            self.apply(committed)?;
            if !rd.entries().is_empty() {
                let ents = rd.take_entries();
                self.raw.mut_store().append(&ents);
            }
            if let Some(hs) = rd.hs() {
                self.raw.mut_store().set_hard_state(hs.clone());
            }
            // Durable before a vote or an append is acknowledged: entries,
            // a snapshot, a new term or vote. A Ready that only moves the
            // commit index writes nothing (etcd's rule): a commit index is
            // learnt again from the leader after a restart, and that sync
            // was half of all syncs (docs/benchmarks.md).
            self.sync()?;
            self.outbox.extend(rd.take_persisted_messages());
            let mut light = self.raw.advance(rd);
            if let Some(c) = light.commit_index() {
                self.raw.mut_store().set_commit(c);
            }
            self.outbox.extend(light.take_messages());
            let committed = light.take_committed_entries();
            self.apply(committed)?;
            self.raw.advance_apply();
        }
        self.watch_leader();
        self.compact();
        let r = self.sync();
        self.note_serving();
        r
    }

    /// Reports each shard whose [`Self::serves`] changed since the last
    /// report (time passed, the map or the lease moved).
    fn note_serving(&mut self) {
        for shard in 0..self.serving.len() {
            let now = self.serves(shard);
            if now != self.serving[shard] {
                self.serving[shard] = now;
                self.events.push_back(if now {
                    Event::Serving { shard }
                } else {
                    Event::Stopped { shard }
                });
            }
        }
    }

    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        for e in entries {
            self.applied = e.index;
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                continue;
            }
            // Every replica decodes the same bytes: an entry that does not
            // decode was never proposed by a worker of ours; skip it on all.
            let Ok(batch) = pb::Batch::decode(&e.data[..]) else {
                continue;
            };
            // Ours only if this life proposed it: a restarted worker replays
            // its previous life's batches without hearing about them again.
            let mine = batch.proposer == self.cfg.id && self.inflight.remove(&batch.seq).is_some();
            for cmd in batch.commands {
                let Some(c) = cmd.command else { continue };
                // A member that (re)joins gets a full dead_after from now,
                // not from its renewals of a previous life.
                if let pb::command::Command::Up(m) = &c {
                    self.heard.insert(m.node, self.now);
                }
                // A member releases only its own shards.
                if let pb::command::Command::Released(r) = &c
                    && r.node != batch.proposer
                {
                    continue;
                }
                if let pb::command::Command::Down(m) = &c
                    && self.table.is_up(m.node)
                {
                    self.events.push_back(Event::MemberDown {
                        node: m.node,
                        drained: m.drained,
                    });
                }
                let Some(change) = self.table.apply(c) else {
                    continue;
                };
                self.on_change(change, mine);
            }
        }
        Ok(())
    }

    fn on_change(&mut self, change: Change, mine: bool) {
        match change {
            Change::Stored {
                call_id,
                version,
                key,
                owner,
            } => {
                if mine {
                    self.events.push_back(Event::Committed { call_id, version });
                } else if owner != self.cfg.id && self.table.owner_of_key(key) == self.cfg.id {
                    // Confirmed by the shard's previous owner after the
                    // shard came here: ours to carry on.
                    self.events.push_back(Event::HandedOver { call_id });
                }
            }
            Change::Removed { call_id, .. } if mine => {
                self.events.push_back(Event::Removed { call_id });
            }
            Change::Removed {
                call_id,
                key,
                owner,
            } if owner != self.cfg.id && self.table.owner_of_key(key) == self.cfg.id => {
                self.events.push_back(Event::Ended { call_id });
            }
            Change::Refused { call_id, owner } if mine && owner == self.cfg.id => {
                self.events.push_back(Event::Refused { call_id });
            }
            Change::Renewed { node, seq } => {
                if node == self.cfg.id {
                    if let Some(&t) = self.renew_sent.get(&seq) {
                        self.lease_until = self.lease_until.max(t + self.cfg.lease_ticks);
                    }
                } else {
                    self.heard.insert(node, self.now);
                }
            }
            Change::HangUp { call_id, key } if self.table.owner_of_key(key) == self.cfg.id => {
                self.events.push_back(Event::HangUp { call_id });
            }
            // The previous owner stopped acting on the shards it lost: no
            // need to wait for its lease to run out.
            Change::Released {
                node,
                epoch,
                shards,
            } if node != self.cfg.id => {
                // Shards this worker lost before serving them, now known
                // to have no other server: released on, by loss epoch.
                let mut on: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
                for s in shards {
                    let i = s as usize;
                    if self.moved_from.get(i) != Some(&(epoch, node)) {
                        continue;
                    }
                    self.serve_from[i] = self.serve_from[i].min(self.now);
                    if let Some(lost) = self.lost_waiting.remove(&i) {
                        on.entry(lost).or_default().push(s);
                    }
                }
                for (epoch, shards) in on {
                    self.queue(pb::command::Command::Released(pb::MemberReleased {
                        node: self.cfg.id,
                        epoch,
                        shards,
                    }));
                }
            }
            Change::Map { epoch, moves } => {
                let mut gained = Vec::new();
                let mut lost = Vec::new();
                for m in moves {
                    if m.to == self.cfg.id {
                        self.serve_from[m.shard] = if m.from == 0 || m.lease_over {
                            self.now
                        } else {
                            self.now + self.cfg.lease_ticks
                        };
                        self.moved_from[m.shard] = (epoch, m.from);
                        self.lost_waiting.remove(&m.shard);
                        gained.push(m.shard);
                    } else if m.from == self.cfg.id {
                        // Its own wait over: nobody before it may still
                        // serve the shard, so a release can vouch for it.
                        // Still waiting: once its predecessor releases it.
                        match u32::try_from(m.shard) {
                            Ok(s) if self.now >= self.serve_from[m.shard] => {
                                self.unreleased.entry(epoch).or_default().push(s);
                            }
                            _ => {
                                self.lost_waiting.insert(m.shard, epoch);
                            }
                        }
                        lost.push(m.shard);
                    }
                    self.downing.remove(&m.from);
                }
                // A shell that never releases (none in a worker) leaves
                // its successors waiting out leases, and no growing list.
                while self.unreleased.len() > 64 {
                    self.unreleased.pop_first();
                }
                self.events.push_back(Event::Map {
                    epoch,
                    gained,
                    lost,
                });
            }
            Change::Bound {
                aor,
                key,
                version,
                owner,
                stored,
            } => {
                if stored {
                    let next_expiry = self
                        .table
                        .locations()
                        .read()
                        .get(key, &aor)
                        .and_then(handover_registrar::Stored::next_expiry);
                    self.events.push_back(Event::Bound { key, next_expiry });
                }
                if mine && owner == self.cfg.id {
                    self.events.push_back(Event::BindDone {
                        aor,
                        version,
                        stored,
                    });
                }
            }
            _ => {}
        }
    }

    fn compact(&mut self) {
        let store = self.raw.store();
        if store.len() < self.cfg.compact_after && store.bytes() < self.cfg.compact_after_bytes {
            return;
        }
        let data = self.table.encode();
        let applied = self.applied;
        self.raw.mut_store().compact(applied, data);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh replica 1 of three, and a message to it from `from`.
    fn node() -> Node {
        Node::new(Config::new(1, vec![1, 2, 3], 16), Store::new(&[1, 2, 3]), 7).unwrap()
    }

    fn msg(t: MessageType, from: u64, term: u64) -> Message {
        let mut m = Message::default();
        m.set_msg_type(t);
        m.from = from;
        m.to = 1;
        m.term = term;
        m
    }

    #[test]
    fn the_log_is_compacted_by_bytes_as_well_as_by_entries() {
        let mut c = Config::new(1, vec![1], 16);
        c.compact_after = usize::MAX;
        c.compact_after_bytes = 64 << 10;
        let mut n = Node::new(c, Store::new(&[1]), 7).unwrap();
        for _ in 0..50 {
            n.tick().unwrap();
        }
        assert!(n.is_leader());
        let mut most = 0;
        for i in 0..200u64 {
            // Records of 8 KiB: 1.6 MB in all.
            n.upsert(format!("c{i}").into_bytes(), i, 1, vec![1; 8 << 10]);
            n.propose_queued().unwrap();
            n.tick().unwrap();
            most = most.max(n.store().bytes());
        }
        assert!(
            most < (64 << 10) + (16 << 10),
            "the log held {most} bytes at most"
        );
        assert_eq!(n.table().call_count(), 200, "nothing lost to compaction");
    }

    #[test]
    fn a_calls_newer_record_replaces_one_not_yet_proposed() {
        let mut n = Node::new(Config::new(1, vec![1], 16), Store::new(&[1]), 7).unwrap();
        for _ in 0..50 {
            n.tick().unwrap();
        }
        assert!(n.is_leader());
        while n.poll_event().is_some() {}
        // An INFO flood inside call x: versions 1..=50 queued in one window,
        // with y's record between them and a removed call z.
        n.upsert(b"x".to_vec(), 1, 1, vec![1]);
        n.upsert(b"y".to_vec(), 2, 1, vec![2]);
        n.remove(b"z".to_vec(), 3, 1);
        for v in 2..=50 {
            n.upsert(b"x".to_vec(), 1, v, vec![v as u8]);
        }
        // A record after its call's removal is not folded into the
        // removal's predecessor.
        n.upsert(b"z".to_vec(), 3, 2, vec![3]);
        assert_eq!(n.coalesced(), 49);
        n.propose_queued().unwrap();
        n.tick().unwrap();
        let committed: Vec<(Vec<u8>, u64)> = std::iter::from_fn(|| n.poll_event())
            .filter_map(|e| match e {
                Event::Committed { call_id, version } => Some((call_id, version)),
                _ => None,
            })
            .collect();
        assert_eq!(
            committed,
            [(b"x".to_vec(), 50), (b"y".to_vec(), 1), (b"z".to_vec(), 2)],
            "one write of x, at its last version"
        );
        assert_eq!(n.table().call(b"x").map(|c| c.version), Some(50));
    }

    #[test]
    fn peers_messages_that_would_panic_raft_rs_are_refused_or_made_harmless() {
        let mut n = node();
        // A heartbeat whose commit index is far past the log's end.
        let mut hb = msg(MessageType::MsgHeartbeat, 2, 1);
        hb.commit = u64::MAX;
        n.step(hb).unwrap();
        assert_eq!(n.status().commit, 0, "clamped to the log's last index");
        // An empty proposal.
        n.step(msg(MessageType::MsgPropose, 2, 1)).unwrap();
        // From nobody in the group, or addressed to another replica.
        n.step(msg(MessageType::MsgHeartbeat, 9, 1)).unwrap();
        let mut other = msg(MessageType::MsgHeartbeat, 2, 1);
        other.to = 3;
        n.step(other).unwrap();
        // An append whose entries do not follow its index.
        let mut app = msg(MessageType::MsgAppend, 2, 1);
        app.index = 0;
        app.entries.push(Entry {
            index: 5,
            term: 1,
            ..Default::default()
        });
        n.step(app).unwrap();
        // A snapshot whose data is not a table.
        let mut snap = msg(MessageType::MsgSnapshot, 2, 1);
        let mut s = raft::eraftpb::Snapshot {
            data: vec![0xff; 64].into(),
            ..Default::default()
        };
        s.mut_metadata().index = 10;
        s.mut_metadata().term = 1;
        snap.snapshot = Some(s).into();
        n.step(snap).unwrap();
        // A peer's "local" message: a forged election timeout.
        let term = n.status().term;
        n.step(msg(MessageType::MsgHup, 2, 0)).unwrap();
        // A pre-vote without a term (raft-rs would answer it and panic).
        n.step(msg(MessageType::MsgRequestPreVote, 2, 0)).unwrap();
        // An append after an index past the log with no term there, whose
        // commit would then run past the log's end.
        let mut far = msg(MessageType::MsgAppend, 2, 41);
        far.index = 1 << 60;
        far.commit = 1 << 61;
        n.step(far).unwrap();
        // A snapshot whose last entry has no term, far past the log.
        let mut snap = msg(MessageType::MsgSnapshot, 3, 41);
        let mut s = raft::eraftpb::Snapshot::default();
        s.mut_metadata().index = 1 << 40;
        snap.snapshot = Some(s).into();
        n.step(snap).unwrap();
        // A read-index answer far past the log.
        let mut ri = msg(MessageType::MsgReadIndexResp, 2, 0);
        ri.index = 1 << 60;
        n.step(ri).unwrap();
        // A snapshot at the last index there is (raft-rs adds one to it).
        let mut snap = msg(MessageType::MsgSnapshot, 3, 41);
        let mut s = raft::eraftpb::Snapshot::default();
        s.mut_metadata().index = u64::MAX;
        s.mut_metadata().term = 41;
        snap.snapshot = Some(s).into();
        n.step(snap).unwrap();
        // A proposal with a term (forwarded proposals carry none).
        let mut prop = msg(MessageType::MsgPropose, 2, 97);
        prop.entries.push(Entry::default());
        n.step(prop).unwrap();
        // A snapshot at index 0, the log's start (raft-rs restores it and
        // takes one from a next index of 0: found by fuzzing).
        let mut snap = msg(MessageType::MsgSnapshot, 3, 41);
        let mut s = raft::eraftpb::Snapshot {
            data: vec![72, 255, 127].into(),
            ..Default::default()
        };
        s.mut_metadata().term = 41;
        s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        snap.snapshot = Some(s).into();
        n.step(snap).unwrap();
        assert_eq!(n.refused(), 13);
        assert_eq!(
            n.status().term,
            term,
            "no election started by a peer's MsgHup"
        );
        // And the replica still works.
        for _ in 0..50 {
            n.tick().unwrap();
        }
    }

    #[test]
    fn a_candidate_ignores_peers_messages_without_a_term() {
        // Replica 1 follows 2 at term 5, then, 2 silent, campaigns alone
        // of three: a (pre-)candidate at term 5 or more.
        let mut n = node();
        n.step(msg(MessageType::MsgHeartbeat, 2, 5)).unwrap();
        for _ in 0..50 {
            n.tick().unwrap();
        }
        let term = n.status().term;
        assert!(term >= 5 && !n.is_leader(), "{term}");
        // raft-rs would take these for local messages and follow their
        // sender at term 0 (a debug assertion; found by fuzzing).
        let mut app = msg(MessageType::MsgAppend, 2, 0);
        app.index = 0;
        for m in [
            msg(MessageType::MsgHeartbeat, 2, 0),
            app,
            msg(MessageType::MsgHeartbeatResponse, 3, 0),
        ] {
            n.step(m).unwrap();
        }
        assert_eq!(n.refused(), 3);
        assert_eq!(n.status().term, term, "the term never goes back");
    }
}
