//! The replica's configuration, what its shell hears ([`Event`]), why it
//! stops ([`Error`]) and what `handover status` shows ([`Status`]).

use crate::disk::DiskError;

/// Timing and sizes of a replica, in ticks and counts.
#[derive(Debug, Clone)]
pub struct Config {
    /// This worker's Raft id (not 0).
    pub id: u64,
    /// The voters of a new log, this one included (an existing log keeps
    /// its own; a worker joining a running cluster gives none and waits
    /// for the leader's snapshot).
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
    /// commands (the shell calls
    /// [`Node::propose_queued`](super::Node::propose_queued) when its
    /// window closes), and a leader holds proposals forwarded by followers in its
    /// log without writing or sending them until then (or until anything
    /// else runs a Ready), so every worker's batch of one window goes in
    /// one disk write and one append per follower.
    pub group_commit: bool,
    /// Where the table keeps the AORs' bindings: the worker shares them
    /// with its registrar (`Table::with_locations`).
    pub locations: handover_registrar::Shared,
    /// A voter out of the map (declared dead, or drained and stopped) for
    /// this many ticks is removed by the leader, as `handover leave` would,
    /// while more than `min_voters` voters stay: a Kubernetes scale-down
    /// stops the highest pod for good and tells nobody, and a voter that
    /// is gone for good counts against the quorum. A worker that comes
    /// back later joins again (`--join`). `None`: only an operator removes.
    pub remove_down_after_ticks: Option<u64>,
    /// The automatic removal above never leaves fewer voters than this.
    pub min_voters: usize,
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
            remove_down_after_ticks: None,
            min_voters: 3,
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
    /// A call detail record this worker proposed is committed (leg A's
    /// Call-ID).
    Recorded { call_id: Vec<u8> },
    /// A call of a shard this worker owns was removed by another worker
    /// (its previous owner, which hung it up while cut off, see `Table`):
    /// it is over; forget it without a word to its phones.
    Ended { call_id: Vec<u8> },
    /// An operator asked to end a call of a shard this worker owns
    /// (`Node::hang_up` anywhere): hang it up on both legs; or, `spare`
    /// not empty, another worker's transfer took that leg's dialog over
    /// (`Node::replaced`): hang up the other leg only.
    HangUp { call_id: Vec<u8>, spare: Vec<u8> },
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
    /// Write this call detail record to the sinks, then confirm with
    /// [`Node::records_written`](crate::Node::records_written). Heard by
    /// the worker serving the record's shard when the record is applied,
    /// or when it starts serving the shard. `retry`: another member owned
    /// the shard when the record was applied and may have written it
    /// before it died (sinks that see its id twice keep one).
    WriteRecord {
        record: Box<crate::pb::CallDetail>,
        retry: bool,
    },
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
    /// Raft's configuration changed (a worker joined, was promoted, or
    /// left): its voters and learners now.
    Conf {
        voters: Vec<u64>,
        learners: Vec<u64>,
    },
    /// The table was replaced by a snapshot: every AOR's bindings may
    /// have changed (read them from [`Node::table`](super::Node::table)).
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
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    /// Entries the log holds in memory after its snapshot.
    pub log_entries: usize,
    /// Their data's bytes (compaction starts at `compact_after_bytes`).
    pub log_bytes: usize,
    /// Bytes of the latest snapshot's data.
    pub snapshot_bytes: usize,
}
