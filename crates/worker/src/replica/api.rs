//! What the SIP loop and the services exchange with the replica's thread:
//! its settings, the commands it takes ([`Cmd`]), what it tells
//! ([`Note`]), questions ([`Lookup`], [`Ask`]) and the lease it shares.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use handover_cluster::pb as cpb;
use tokio::sync::{mpsc, oneshot, watch};

use crate::peers::Peer;
use crate::rpc::pb;
use crate::tls::TlsDir;

/// How a worker replicates (its `--id`, `--peer`s and the rest, checked).
#[derive(Debug, Clone)]
pub struct Settings {
    /// This worker's Raft id, among `peers`.
    pub id: u64,
    /// Every member, this one included.
    pub peers: Vec<Peer>,
    /// The directory of the Raft log.
    pub data: PathBuf,
    /// Where to bind gRPC (default: this worker's peer address).
    pub grpc_listen: Option<SocketAddr>,
    /// Group-commit window (zero: none).
    pub commit_window: Duration,
    /// Mutual TLS on the cluster port ([`crate::tls`]); None: plain
    /// HTTP/2, which the binary allows on loopback only.
    pub tls: Option<TlsDir>,
    /// Below this many free bytes on the log's file system new calls and
    /// registrations are refused ([`DiskGuard`]).
    pub min_free_bytes: u64,
    /// The in-memory log is compacted into a snapshot once its entries
    /// hold this many bytes (`Config::compact_after_bytes`).
    pub log_bytes: usize,
    /// Where this worker writes the call detail records of the shards it
    /// serves (none: records are off).
    pub records: Option<crate::records::Settings>,
    /// Reads the configuration file again for `handover reload` (none:
    /// the worker has no file to reload).
    pub reload: Option<Reloader>,
    /// Join a running cluster through this member's gRPC address
    /// (`--join`): the log starts with no voters, and the leader's
    /// snapshot brings the configuration.
    pub join: Option<String>,
    /// A voter out of the shard map this long is removed from Raft by the
    /// leader while more than three voters stay (None: only `handover
    /// leave` removes; see `Config::remove_down_after_ticks`).
    pub remove_down_after: Option<Duration>,
}

/// Reads the worker's configuration file again and checks it: the
/// settings to propose (generation and token left for the log and the
/// proposer), or why not, with the file's line (`handover reload`,
/// SIGHUP). The binary supplies it; this crate does not parse the file.
#[derive(Clone)]
pub struct Reloader(pub std::sync::Arc<dyn Fn() -> Result<cpb::Settings, String> + Send + Sync>);

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reloader")
    }
}

impl Reloader {
    /// Reads and checks the file; on success `settings` carry a fresh
    /// random token and `proposer` as their proposer.
    pub fn read(&self, proposer: u64) -> Result<cpb::Settings, String> {
        let mut s = (self.0)()?;
        s.generation = 0;
        s.proposer = proposer;
        let token = rand_core::TryRngCore::try_next_u64(&mut rand_core::OsRng)
            .map_err(|e| format!("cannot read the OS random source: {e}"))?;
        s.token = token.to_le_bytes().to_vec();
        Ok(s)
    }
}

/// Whether the log's disk is too full for new calls and registrations:
/// full below `min` free bytes, room again at twice that (so a disk
/// hovering at the line does not flap). What is acknowledged keeps the
/// rest to be written: its changes, its end, lease renewals.
#[derive(Debug, Clone, Copy)]
pub struct DiskGuard {
    min: u64,
    full: bool,
}

impl DiskGuard {
    /// A guard at `min` free bytes (0: never full).
    pub fn new(min: u64) -> Self {
        Self { min, full: false }
    }

    /// Updates with a reading of free bytes; returns whether it is full.
    pub fn update(&mut self, free: u64) -> bool {
        if self.full {
            self.full = free < self.min.saturating_mul(2);
        } else {
            self.full = free < self.min;
        }
        self.full
    }
}

/// What the SIP loop asks of the replica.
#[derive(Debug)]
pub enum Cmd {
    /// A call's record as [`crate::record::upsert`] makes it (its owner
    /// and answer time filled in by the replica).
    Upsert(Box<cpb::CallUpsert>),
    /// A ACKed the call's 2xx.
    Acked {
        call_id: Vec<u8>,
    },
    Remove {
        call_id: Vec<u8>,
        key: u64,
        version: u64,
    },
    /// An AOR's bindings (the registrar's write; its 200 waits for it).
    Bind(cpb::Registration),
    Drain(oneshot::Sender<bool>),
    /// The SIP loop handed over every shard lost up to this map epoch
    /// (see `Note::Release`), with the last state of the calls whose
    /// latest record it had not seen committed (`Node::released`).
    Released(u64, Vec<cpb::CallUpsert>),
    /// Call `call_id`, held by another worker, was replaced by a transfer
    /// this one carried out, which took over its leg `spare`.
    Replaced {
        call_id: Vec<u8>,
        spare: Vec<u8>,
    },
    /// A call ended: its detail record, to commit (then written once).
    Ended(Box<cpb::CallDetail>),
    /// The records sink wrote these records (their ids).
    Written(Vec<Vec<u8>>),
    /// Reloaded settings (SIGHUP), read and checked: propose them.
    Settings(Box<cpb::Settings>),
}

/// What the replica tells the SIP loop.
#[derive(Debug)]
pub enum Note {
    /// The cluster applied this worker's leave (`handover leave`): drain
    /// and stop, as on SIGTERM; the leader then removes it from Raft.
    Leave,
    /// A call record this worker proposed is committed at `version` (or
    /// was refused, `version` 0: either way the call's held 2xx may go).
    Committed { call_id: Vec<u8>, version: u64 },
    /// This worker now serves `shard`; `calls` are its replicated calls.
    Serving {
        shard: usize,
        calls: Vec<cpb::CallUpsert>,
    },
    /// This worker no longer serves `shard`.
    Stopped { shard: usize },
    /// The end of a call this worker ended is committed (its removal or
    /// its record): the answer held for it may go.
    EndCommitted { call_id: Vec<u8> },
    /// An AOR of key `key` was written (any worker's write); its bindings
    /// are in the shared locations, its earliest expiry `next_expiry`.
    Bound { key: u64, next_expiry: Option<u64> },
    /// This worker's write of `aor` at `version` was committed or refused.
    BindDone {
        aor: Vec<u8>,
        version: u64,
        stored: bool,
    },
    /// The locations were replaced (at start, after a snapshot): every
    /// AOR's expiry is to be scheduled afresh.
    Registrations,
    /// A new call's first record was refused (nobody owned its shard):
    /// the call fails (`B2bua::refused`).
    Refused { call_id: Vec<u8> },
    /// A call of a shard this worker owns was hung up by its previous
    /// owner while cut off (its removal committed once it healed): forget
    /// it.
    Ended { call_id: Vec<u8> },
    /// Sent after the `Stopped` notes of the shards lost up to map
    /// `epoch`: once the SIP loop has handed them over it answers
    /// `Cmd::Released`, and their new owners serve them without waiting
    /// out this worker's lease.
    Release { epoch: u64 },
    /// An operator asked to end this call (leg A's Call-ID), which this
    /// worker owns (`handover hangup`); or, `spare` not empty, another
    /// worker's transfer replaced it, taking over its leg `spare`.
    HangUp { call_id: Vec<u8>, spare: Vec<u8> },
    /// This worker's drain is applied (`SIGTERM` or `handover drain`): it
    /// owns no shard, renews no lease, and only finishes the calls it was
    /// still setting up (sent once).
    Drained,
    /// The cluster's settings changed (a reload applied, or the ones in
    /// the log when this worker started): route by them from now on.
    Settings(Box<cpb::Settings>),
}

/// Commands from the SIP loop to the replica's thread: a queue under a
/// lock that wakes the replica only when it stops being empty. With group
/// commit the replica leaves the queue alone until its window closes, so
/// a window's commands cost its thread one wake-up, not one per call
/// (an unbounded channel woke it for each).
#[derive(Debug, Default)]
pub struct Cmds {
    /// Each command with when it was queued (commit latency counts from
    /// there).
    queue: parking_lot::Mutex<Vec<(Cmd, tokio::time::Instant)>>,
    pub(super) wake: tokio::sync::Notify,
}

impl Cmds {
    /// Queues `cmds`, waking the replica if the queue was empty.
    pub fn send_all(&self, cmds: impl IntoIterator<Item = Cmd>) {
        let now = tokio::time::Instant::now();
        let was_empty = {
            let mut q = self.queue.lock();
            let was_empty = q.is_empty();
            q.extend(cmds.into_iter().map(|c| (c, now)));
            was_empty && !q.is_empty()
        };
        if was_empty {
            self.wake.notify_one();
        }
    }

    pub fn send(&self, cmd: Cmd) {
        self.send_all(std::iter::once(cmd));
    }

    pub(crate) fn take(&self) -> Vec<(Cmd, tokio::time::Instant)> {
        std::mem::take(&mut *self.queue.lock())
    }
}

/// The SIP loop's side of the replica.
#[derive(Debug)]
pub struct Handle {
    pub cmd: std::sync::Arc<Cmds>,
    pub notes: mpsc::UnboundedReceiver<Note>,
    /// The gRPC address actually bound.
    pub grpc: SocketAddr,
    pub data: PathBuf,
    /// True once this worker has a map and has applied what it knows is
    /// committed.
    pub ready: watch::Receiver<bool>,
    /// Until when this worker's lease lets it serve.
    pub lease: Lease,
    /// Look-ups of calls in the replicated table (any worker's), by
    /// either leg's Call-ID: what a Replaces names may live elsewhere.
    pub lookup: mpsc::UnboundedSender<Lookup>,
    /// The table's AOR bindings, which the registrar reads.
    pub locations: handover_call::registrar::Shared,
    /// The cluster's members as this replica knows them (the `--peer`s,
    /// those that joined at run time, less those removed).
    pub members: watch::Receiver<Vec<Peer>>,
}

/// A question to the replica's thread: the committed record of the call
/// one of whose legs has `call_id`.
#[derive(Debug)]
pub struct Lookup {
    pub call_id: Vec<u8>,
    pub reply: oneshot::Sender<Option<cpb::CallUpsert>>,
}

/// What the admin service asks of the replica's thread (which alone
/// reads the table).
#[derive(Debug)]
pub(crate) enum Ask {
    /// The calls the table holds, filtered.
    Calls {
        req: pb::CallsRequest,
        reply: oneshot::Sender<pb::CallList>,
    },
    /// Propose the end of a call: its owner, or None when not held.
    Hangup {
        call_id: Vec<u8>,
        reply: oneshot::Sender<Option<u64>>,
    },
    /// Propose reloaded settings; the reply is the generation they became
    /// once applied here.
    Reload {
        settings: Box<cpb::Settings>,
        reply: oneshot::Sender<u64>,
    },
    /// Propose a worker's join; the reply is the members this replica
    /// knows (so the joiner can reach them).
    Join {
        join: cpb::MemberJoin,
        reply: oneshot::Sender<pb::JoinReply>,
    },
    /// Propose a worker's leave (and drain, when it is this one); the
    /// reply is Raft's voters once the removal is applied here.
    Leave {
        id: u64,
        reply: oneshot::Sender<Vec<u64>>,
    },
}

/// The replica's lease as a wall-clock deadline, shared with the SIP loop.
#[derive(Debug, Clone)]
pub struct Lease {
    pub(super) at: std::sync::Arc<std::sync::atomic::AtomicU64>,
    pub(super) epoch: tokio::time::Instant,
}

impl Lease {
    /// Whether the lease is live now.
    pub fn live(&self) -> bool {
        nanos_since(self.epoch, tokio::time::Instant::now())
            < self.at.load(std::sync::atomic::Ordering::Relaxed)
    }
}

pub(crate) fn nanos_since(epoch: tokio::time::Instant, t: tokio::time::Instant) -> u64 {
    u64::try_from(t.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}
