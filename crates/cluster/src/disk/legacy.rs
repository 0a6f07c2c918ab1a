//! The log as earlier versions kept it, in a redb database: read once at
//! start (`Disk::open` rewrites it in its own files and removes it), so a
//! worker upgraded in place keeps its term, vote, snapshot and entries.

use std::path::Path;

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};
use redb::{Database, ReadableDatabase, TableDefinition};

use super::DiskError;
use crate::store::Store;

const ENTRIES: TableDefinition<u64, &[u8]> = TableDefinition::new("entries");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

fn db<E: Into<redb::Error>>(e: E) -> DiskError {
    DiskError::Legacy(e.into())
}

/// The store a redb log at `path` holds (`voters` if it holds none).
pub(super) fn read(path: &Path, voters: &[u64]) -> Result<Store, DiskError> {
    let db_ = Database::builder()
        .set_cache_size(4 << 20)
        .create(path)
        .map_err(db)?;
    let mut store = Store::new(voters);
    let rx = db_.begin_read().map_err(db)?;
    match rx.open_table(META) {
        Ok(meta) => {
            if let Some(s) = meta.get("snapshot").map_err(db)? {
                store.apply_snapshot(Snapshot::parse_from_bytes(s.value())?);
            }
            if let Some(h) = meta.get("hard").map_err(db)? {
                store.set_hard_state(HardState::parse_from_bytes(h.value())?);
            }
            let entries = rx.open_table(ENTRIES).map_err(db)?;
            let mut ents = Vec::new();
            for e in entries.range(store.snapshot_index() + 1..).map_err(db)? {
                let (_, v) = e.map_err(db)?;
                ents.push(Entry::parse_from_bytes(v.value())?);
            }
            store.append(&ents);
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(db(e)),
    }
    store.clean();
    Ok(store)
}

/// Writes `store` as earlier versions did (for the test of the upgrade).
#[cfg(test)]
pub(super) fn write(path: &Path, store: &Store) -> Result<(), DiskError> {
    let db_ = Database::create(path).map_err(db)?;
    let tx = db_.begin_write().map_err(db)?;
    {
        let mut meta = tx.open_table(META).map_err(db)?;
        let mut entries = tx.open_table(ENTRIES).map_err(db)?;
        let snap = store.snapshot_ref().write_to_bytes()?;
        meta.insert("snapshot", snap.as_slice()).map_err(db)?;
        for e in store.entries_from(store.snapshot_index() + 1) {
            entries
                .insert(e.index, e.write_to_bytes()?.as_slice())
                .map_err(db)?;
        }
        meta.insert("hard", store.hard_state().write_to_bytes()?.as_slice())
            .map_err(db)?;
    }
    tx.commit().map_err(db)?;
    Ok(())
}
