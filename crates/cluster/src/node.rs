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
//!    proposed with no renewal of the dead worker in its log past what it
//!    applied (`MemberDown.lease_over`, set in `propose_batch`): then the
//!    dead worker's last renewal was applied `dead_after` before, its
//!    lease is over, and `s` is served once the waits of its owners before
//!    the dead one are over (`free_at`: at once, unless `s` moved to the
//!    dead worker less than a lease ago);
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
//! its renewals has been applied for `dead_after` ticks, each counted from
//! when it was appended to the leader's log (or, before its term, to its
//! log as a follower), and the state machine spreads its shards over the
//! others.

use std::collections::{BTreeMap, HashMap, VecDeque};

use prost::Message as _;
use raft::eraftpb::{Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};

use crate::disk::Disk;
use crate::pb;
use crate::store::Store;
use crate::table::{Change, Table, shard_of};

mod admit;
mod apply;
mod commands;
mod membership;
mod types;

pub use types::{Config, Error, Event, Status};

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
    /// Per shard, whoever owns it: from this tick no member but its owner
    /// may still serve it (every earlier owner's lease is over). A death
    /// with `lease_over` ends only the dead member's wait, not this one:
    /// a shard drained to a member that then died may still be served by
    /// the member that drained it.
    free_at: Vec<u64>,
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
    /// When each entry not applied yet was appended to this log (the
    /// tick): a renewal is stamped with it rather than its apply time, so
    /// a dead leader's last renewals, which followers apply only after the
    /// next election, count from when they arrived. At or after the
    /// member proposed it, either way.
    appended: BTreeMap<u64, u64>,
    /// The append tick of the entry being applied (see `appended`).
    entry_at: u64,
    /// As leader: members declared dead, not yet applied.
    downing: HashMap<u64, u64>,
    /// As leader: since when each voter has been out of the map (see
    /// `Config::remove_down_after_ticks`).
    out_since: HashMap<u64, u64>,
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
    /// Records handed to the shell to write ([`Event::WriteRecord`]) and
    /// not yet known written: id -> shard.
    writing: HashMap<Vec<u8>, usize>,
    /// A release ([`Node::released`]) held back until the records of the
    /// shards it names are written, so their new owner does not write
    /// them again: the latest epoch asked for.
    release_asked: Option<u64>,
    /// Calls handed over with a release to come (see [`Node::released`]).
    handing: Vec<pb::CallUpsert>,
    /// As leader: when it last proposed a configuration change (see
    /// `membership`).
    conf_proposed: Option<u64>,
    /// Take a snapshot after this Ready even if the log is small (a
    /// learner was added: it must get the configuration from a snapshot).
    snapshot_now: bool,
    /// The snapshot's data stays in memory until this tick (it was asked
    /// for lately: a follower is being caught up); then, with a disk, it
    /// is released (`Store::release_snapshot_data`).
    keep_snapshot_until: u64,
    /// This replica was a voter or learner at some point: its removal is
    /// then news ([`Node::removed`]).
    was_member: bool,
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
            // No owner before the first map; moves replayed after a
            // restart set it again.
            free_at: vec![0; shards],
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
            appended: BTreeMap::new(),
            entry_at: 0,
            downing: HashMap::new(),
            out_since: HashMap::new(),
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
            writing: HashMap::new(),
            release_asked: None,
            handing: Vec::new(),
            conf_proposed: None,
            snapshot_now: false,
            keep_snapshot_until: 0,
            was_member: false,
            cfg,
        };
        node.reseed();
        node.was_member = node.in_conf(node.cfg.id);
        // Proposal numbers start at random, so a restarted worker's new
        // batches are never mistaken for its previous life's.
        node.next_seq = node.rng.next() >> 2;
        // Renewals too: replaying its previous life's `Renew` with a
        // number this life also used gave a restarted worker a lease from
        // a renewal it never made, while it still held the old map
        // (found by the simulation with joins: two servers of a shard).
        node.renew_seq = node.rng.next() >> 2;
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
            voters: self.voters(),
            learners: self.learners(),
            log_entries: self.raw.store().len(),
            log_bytes: self.raw.store().bytes(),
            snapshot_bytes: self.raw.store().snapshot_len(),
        }
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
        // Only voters take shards: a learner catches up first.
        if !self.draining
            && !joining
            && self.raw.raft.leader_id != 0
            && self.caught_up()
            && !self.table.is_up(self.cfg.id)
            && self.is_voter()
            && !self.table.is_leaving(self.cfg.id)
        {
            self.queue(pb::command::Command::Up(pb::MemberUp { node: self.cfg.id }));
        }
        if self.is_leader() {
            self.detect_failures();
            self.membership();
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
                // A new leader keeps when each member's last renewal
                // reached its log as a follower; one in its log not
                // applied yet keeps the member up (`detect_failures`) and
                // its lease running (`propose_batch`). So a killed leader
                // is declared dead dead_after from its last renewal, not
                // from the election.
                self.downing.clear();
                self.out_since.clear();
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
            // A renewal of it may be in the log, not applied yet (a new
            // leader applying its predecessor's entries): not dead.
            if due && !self.renewal_unapplied(m) {
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
        // stands before it in the log is what the log holds now: with no
        // renewal of a dead member in it past what is applied, and none
        // applied for dead_after, that member's lease is over (see
        // MemberDown in proto/cluster.proto). A renewal that reaches the
        // log later is applied after the map change, by a member that is
        // no longer an owner. Decided at every proposal, re-proposals
        // included; a follower's forwarded proposal never claims it.
        let leader = self.is_leader();
        for c in &mut commands {
            if let Some(pb::command::Command::Down(d)) = &mut c.command
                && !d.drained
            {
                d.lease_over = leader
                    && self
                        .heard
                        .get(&d.node)
                        .is_some_and(|&h| self.now >= h + self.cfg.dead_after_ticks)
                    && !self.renewal_unapplied(d.node);
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

    /// Whether this replica's log holds, past what it has applied, a
    /// renewal by `node` (or cannot tell: the entries were compacted).
    /// Read only when a death is proposed, so the entries in flight under
    /// load do not keep a dead member's shards dark for a lease.
    fn renewal_unapplied(&self, node: u64) -> bool {
        let from = self.applied + 1;
        let Ok(entries) =
            self.raw
                .raft
                .raft_log
                .entries(from, None, raft::GetEntriesContext::empty(false))
        else {
            return true;
        };
        entries
            .iter()
            .filter(|e| e.get_entry_type() == EntryType::EntryNormal && !e.data.is_empty())
            .any(|e| {
                // Undecodable entries are skipped by every replica.
                pb::Batch::decode(&e.data[..]).is_ok_and(|b| {
                    b.commands.iter().any(|c| {
                        matches!(&c.command, Some(pb::command::Command::Renew(r)) if r.node == node)
                    })
                })
            })
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
                self.free_at.iter_mut().for_each(|s| *s = wait);
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
                for e in &ents {
                    self.appended.insert(e.index, self.now);
                }
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
        if self.disk.is_some() && self.now >= self.keep_snapshot_until {
            self.raw.mut_store().release_snapshot_data();
        }
        self.note_serving();
        r
    }

    fn compact(&mut self) {
        let store = self.raw.store();
        let mut forced = std::mem::take(&mut self.snapshot_now);
        if forced {
            // Taken for a learner, which asks for it a heartbeat later:
            // kept rather than released and encoded again.
            self.keep_snapshot_until = self.now + SNAPSHOT_KEPT_TICKS;
        }
        if store.take_asked() {
            // A follower is being sent the snapshot: keep its data at hand
            // a while, and bring it back if it was released.
            self.keep_snapshot_until = self.now + SNAPSHOT_KEPT_TICKS;
            if !store.snapshot_in_memory() {
                if store.snapshot_index() == self.applied {
                    // The table is the snapshot's state.
                    let data = self.table.encode();
                    self.raw.mut_store().refill_snapshot(data);
                    return;
                }
                forced = true;
            }
        }
        let store = self.raw.store();
        let forced = forced && store.snapshot_index() < self.applied;
        if !forced
            && store.len() < self.cfg.compact_after
            && store.bytes() < self.cfg.compact_after_bytes
        {
            return;
        }
        let data = self.table.encode();
        let applied = self.applied;
        self.raw.mut_store().compact(applied, data);
    }
}

/// How long a snapshot's data stays in memory after raft-rs last asked
/// for it (ticks of 100 ms in a worker): raft-rs asks again at every
/// heartbeat answer of a follower that still needs it.
const SNAPSHOT_KEPT_TICKS: u64 = 100;

#[cfg(test)]
mod tests;
