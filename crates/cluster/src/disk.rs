//! The durable Raft log: a [`Store`]'s hard state, entries and snapshot in a
//! redb database (one file), written once per Ready round before raft's
//! "persisted" messages go out (see `Node::run`).
//!
//! Why redb: an embedded, pure-Rust, crash-safe B-tree with ACID
//! transactions and an fsync per commit, actively maintained; it fits an
//! append-mostly log keyed by index plus two small records. (raft-engine
//! pulls protobuf 2, an old prometheus and a C build; rocksdb is a long C++
//! build on two cores; see docs/architecture.md.)

use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};
use redb::{Database, ReadableDatabase, TableDefinition};

use crate::store::Store;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("raft log database: {0}")]
    Db(#[from] redb::Error),
    #[error("raft log database holds a record that does not decode: {0}")]
    Corrupt(#[from] protobuf::ProtobufError),
}

impl From<redb::DatabaseError> for DiskError {
    fn from(e: redb::DatabaseError) -> Self {
        Self::Db(e.into())
    }
}
impl From<redb::TransactionError> for DiskError {
    fn from(e: redb::TransactionError) -> Self {
        Self::Db(e.into())
    }
}
impl From<redb::TableError> for DiskError {
    fn from(e: redb::TableError) -> Self {
        Self::Db(e.into())
    }
}
impl From<redb::StorageError> for DiskError {
    fn from(e: redb::StorageError) -> Self {
        Self::Db(e.into())
    }
}
impl From<redb::CommitError> for DiskError {
    fn from(e: redb::CommitError) -> Self {
        Self::Db(e.into())
    }
}

/// See the module docs.
pub struct Disk {
    db: Database,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk").finish_non_exhaustive()
    }
}

/// redb's page cache (see `Disk::open`). 4 MiB, not 16: the cache filled
/// with the log's pages, a second copy of the in-memory log until it is
/// compacted; registrations held 482 bytes per binding per replica
/// against 644 with 16 MiB (100,000 bindings, `up --workers 3`), and
/// calls through `up-3` ran at 1.02–1.10× the calls per CPU-second,
/// p99 set-up unchanged (docs/benchmarks.md).
const LOG_CACHE_BYTES: usize = 4 << 20;

impl Disk {
    /// Opens (or creates) the log at `path` and reads it into a [`Store`];
    /// a new log starts with `voters`.
    pub fn open(path: &Path, voters: &[u64]) -> Result<(Self, Store), DiskError> {
        // redb caches up to 1 GiB of pages by default; the log is read back
        // only at start and written at its tail, so a small cache bounds
        // what a worker's memory can grow by with its log.
        let db = Database::builder()
            .set_cache_size(LOG_CACHE_BYTES)
            .create(path)?;
        let mut store = Store::new(voters);
        let rx = db.begin_read()?;
        match rx.open_table(META) {
            Ok(meta) => {
                if let Some(s) = meta.get("snapshot")? {
                    let snap = Snapshot::parse_from_bytes(s.value())?;
                    store.apply_snapshot(snap);
                }
                if let Some(h) = meta.get("hard")? {
                    store.set_hard_state(HardState::parse_from_bytes(h.value())?);
                }
                let entries = rx.open_table(ENTRIES)?;
                let mut ents = Vec::new();
                for e in entries.range(store.snapshot_index() + 1..)? {
                    let (_, v) = e?;
                    ents.push(Entry::parse_from_bytes(v.value())?);
                }
                store.append(&ents);
            }
            Err(redb::TableError::TableDoesNotExist(_)) => {}
            Err(e) => return Err(e.into()),
        }
        store.clean();
        Ok((Self { db }, store))
    }

    /// Writes what changed in `store` since the last sync, in one durable
    /// transaction.
    pub fn sync(&mut self, store: &mut Store) -> Result<(), DiskError> {
        let Some(dirty) = store.take_dirty() else {
            return Ok(());
        };
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            let mut entries = tx.open_table(ENTRIES)?;
            if dirty.snapshot {
                let snap = store.snapshot_ref().write_to_bytes()?;
                meta.insert("snapshot", snap.as_slice())?;
                let upto = store.snapshot_index();
                entries.retain_in(..=upto, |_, _| false)?;
            }
            if let Some(from) = dirty.entries_from {
                entries.retain_in(from.., |_, _| false)?;
                for e in store.entries_from(from) {
                    entries.insert(e.index, e.write_to_bytes()?.as_slice())?;
                }
            }
            // The hard state goes when its term or vote changed (and with a
            // snapshot), not for a commit index alone: that is learnt
            // again from the leader, and the write was a second B-tree of
            // every append's commit (see `Store::take_dirty`).
            if dirty.vote || dirty.snapshot {
                meta.insert("hard", store.hard_state().write_to_bytes()?.as_slice())?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}
