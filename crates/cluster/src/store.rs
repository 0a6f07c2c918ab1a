//! The Raft log image: hard state, entries after the last snapshot, and that
//! snapshot with its data (the applied [`crate::Table`] at its index; with a
//! disk, the data leaves memory once written and is encoded again when a
//! follower needs it).
//!
//! raft-rs's `MemStorage` keeps snapshot metadata only and forgets the term
//! of the last compacted entry on `compact()`, so it cannot hand a lagging
//! follower the call table; this store keeps both. It is the in-memory image
//! of what a worker persists: the simulation keeps it across a "crash" as the
//! disk would, and the worker's durable log writes through it.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, Storage, StorageError};

/// See the module docs.
#[derive(Debug, Clone)]
pub struct Store {
    hard: HardState,
    /// The configuration at the applied index (what the next snapshot
    /// holds); a restart starts from the snapshot's and applies the
    /// changes after it again.
    conf: ConfState,
    /// Metadata (index, term, conf state) and data of the latest snapshot.
    snap: Snapshot,
    /// Entries `snap.index + 1 ..= last_index`.
    entries: Vec<Entry>,
    /// The sum of their data's lengths.
    bytes: usize,
    /// What changed since the disk last synced.
    dirty: Dirty,
    /// The commit index as of the last write (what a disk holds; see
    /// [`Store::persisted`]).
    persisted_commit: u64,
    /// The snapshot's data is on disk only ([`Store::release_snapshot_data`]).
    released: bool,
    /// Its length, in memory or not.
    snap_len: usize,
    /// raft-rs asked for the snapshot (to send it) since
    /// [`Store::take_asked`].
    asked: std::cell::Cell<bool>,
}

/// What a [`Store`] changed since [`Store::take_dirty`] was last called.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Dirty {
    /// The term or the vote changed (not just the commit index).
    pub(crate) vote: bool,
    pub(crate) snapshot: bool,
    /// Entries from this index on were rewritten (everything after is new).
    pub(crate) entries_from: Option<u64>,
}

impl Store {
    /// A fresh log for a group whose voters are `voters` (none: a worker
    /// that joins a running cluster waits for its leader).
    pub fn new(voters: &[u64]) -> Self {
        let conf = ConfState {
            voters: voters.to_vec(),
            ..Default::default()
        };
        let mut snap = Snapshot::default();
        snap.mut_metadata().set_conf_state(conf.clone());
        Self {
            hard: HardState::default(),
            conf,
            snap,
            entries: Vec::new(),
            bytes: 0,
            dirty: Dirty::default(),
            persisted_commit: 0,
            released: false,
            snap_len: 0,
            asked: std::cell::Cell::new(false),
        }
    }

    /// What changed since the last call, if anything.
    pub(crate) fn take_dirty(&mut self) -> Option<Dirty> {
        let d = std::mem::take(&mut self.dirty);
        // The disk writes the hard state (and so the commit index) only
        // with a new term or vote, or a snapshot (`Disk::sync`).
        if d.vote || d.snapshot {
            self.persisted_commit = self.hard.commit;
        }
        (d != Dirty::default()).then_some(d)
    }

    /// Whether something beyond the commit index waits to be written.
    pub(crate) fn must_sync(&self) -> bool {
        self.dirty.snapshot || self.dirty.entries_from.is_some() || self.dirty.vote
    }

    /// Forgets changes (the store was just read from disk).
    pub(crate) fn clean(&mut self) {
        self.dirty = Dirty::default();
        self.persisted_commit = self.hard.commit;
    }

    /// What a disk holds of this store after its last write: everything
    /// but a commit index moved since the hard state was last written
    /// (only a new term or vote, or a snapshot, writes it). The simulation
    /// restarts crashed workers from this.
    pub fn persisted(&self) -> Store {
        let mut s = self.clone();
        s.hard.commit = self.persisted_commit;
        s.dirty = Dirty::default();
        s
    }

    /// The index of the last entry (the snapshot's with none after it).
    pub(crate) fn last_index_held(&self) -> u64 {
        self.last()
    }

    pub(crate) fn snapshot_ref(&self) -> &Snapshot {
        &self.snap
    }

    /// The entries from `index` on.
    pub(crate) fn entries_from(&self, index: u64) -> &[Entry] {
        let skip = index.saturating_sub(self.first()) as usize;
        self.entries.get(skip..).unwrap_or(&[])
    }

    fn touch_entries(&mut self, from: u64) {
        self.dirty.entries_from = Some(self.dirty.entries_from.map_or(from, |f| f.min(from)));
    }

    /// A configuration change was applied: the next snapshot holds it.
    pub(crate) fn set_conf(&mut self, conf: ConfState) {
        self.conf = conf;
    }

    pub fn hard_state(&self) -> &HardState {
        &self.hard
    }

    pub fn snapshot_index(&self) -> u64 {
        self.snap.get_metadata().index
    }

    /// The data of the latest snapshot (empty before the first, and once
    /// released to disk: `Store::release_snapshot_data`).
    pub fn snapshot_data(&self) -> &[u8] {
        &self.snap.data
    }

    /// Bytes of the latest snapshot's data, kept in memory or not.
    pub fn snapshot_len(&self) -> usize {
        self.snap_len
    }

    /// Whether the snapshot's data is held in memory (it is, until
    /// released).
    pub fn snapshot_in_memory(&self) -> bool {
        !self.released
    }

    /// Drops the snapshot's data from memory once the disk holds it: it is
    /// the whole table encoded (about 100 bytes per binding, a call's
    /// record per call), needed only to send a follower that fell behind
    /// the log, which is rare; the node rebuilds it then from its table
    /// (`Node::compact`). A store without a disk (the simulation's) never
    /// releases, since it is its own disk.
    pub(crate) fn release_snapshot_data(&mut self) {
        if !self.released && !self.dirty.snapshot && !self.snap.data.is_empty() {
            self.snap.data = Default::default();
            self.released = true;
        }
    }

    /// Puts the data of the current snapshot back (encoded again from the
    /// table at the snapshot's index).
    pub(crate) fn refill_snapshot(&mut self, data: Vec<u8>) {
        self.snap_len = data.len();
        self.snap.data = data.into();
        self.released = false;
    }

    /// Whether raft-rs asked for the snapshot since the last call.
    pub(crate) fn take_asked(&self) -> bool {
        self.asked.replace(false)
    }

    /// How many entries the log holds after its snapshot.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Bytes of entry data the log holds after its snapshot.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn first(&self) -> u64 {
        self.snap.get_metadata().index + 1
    }

    fn last(&self) -> u64 {
        self.snap.get_metadata().index + self.entries.len() as u64
    }

    pub fn set_hard_state(&mut self, hs: HardState) {
        if hs.term != self.hard.term || hs.vote != self.hard.vote {
            self.dirty.vote = true;
        }
        self.hard = hs;
    }

    /// A commit index alone makes nothing dirty: it is written with the
    /// next new term, vote or snapshot (`Disk::sync`).
    pub fn set_commit(&mut self, commit: u64) {
        self.hard.commit = commit;
    }

    /// Appends `ents`, first dropping any suffix they overwrite (a new
    /// leader's log wins over an old one's uncommitted tail).
    pub fn append(&mut self, ents: &[Entry]) {
        let Some(head) = ents.first() else { return };
        // raft-rs never hands entries below the snapshot or past a gap;
        // if it did, the log would be corrupt: refuse loudly.
        assert!(
            head.index >= self.first() && head.index <= self.last() + 1,
            "raft appended entries {}.. to a log holding {}..={}",
            head.index,
            self.first(),
            self.last()
        );
        let keep = (head.index - self.first()) as usize;
        let cut: usize = self
            .entries
            .get(keep..)
            .unwrap_or(&[])
            .iter()
            .map(|e| e.data.len())
            .sum();
        self.entries.truncate(keep);
        self.entries.extend_from_slice(ents);
        self.bytes = self.bytes - cut + ents.iter().map(|e| e.data.len()).sum::<usize>();
        self.touch_entries(head.index);
    }

    /// Replaces the log with a snapshot received from the leader.
    pub fn apply_snapshot(&mut self, snap: Snapshot) {
        let meta = snap.get_metadata();
        self.hard.term = self.hard.term.max(meta.term);
        self.hard.commit = meta.index;
        self.conf = meta.get_conf_state().clone();
        self.entries.clear();
        self.bytes = 0;
        self.snap_len = snap.data.len();
        self.released = false;
        self.snap = snap;
        self.dirty.snapshot = true;
        let after = self.snap.get_metadata().index + 1;
        self.touch_entries(after);
    }

    /// Takes a snapshot at `index` (applied, so in the log) holding `data`,
    /// and drops the entries it covers.
    pub fn compact(&mut self, index: u64, data: Vec<u8>) {
        if index < self.first() || index > self.last() {
            return;
        }
        let term = self.entries[(index - self.first()) as usize].term;
        let drop = (index + 1 - self.first()) as usize;
        self.bytes -= self
            .entries
            .drain(..drop)
            .map(|e| e.data.len())
            .sum::<usize>();
        let meta = self.snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf.clone());
        self.snap_len = data.len();
        self.snap.data = data.into();
        self.released = false;
        self.dirty.snapshot = true;
    }
}

impl Storage for Store {
    fn initial_state(&self) -> raft::Result<RaftState> {
        // The snapshot's: raft-rs applies the entries after it again,
        // configuration changes included.
        Ok(RaftState::new(
            self.hard.clone(),
            self.snap.get_metadata().get_conf_state().clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let lo = (low - self.first()) as usize;
        let hi = (high - self.first()) as usize;
        let mut ents = self.entries[lo..hi].to_vec();
        raft::util::limit_size(&mut ents, max_size.into());
        Ok(ents)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let meta = self.snap.get_metadata();
        if idx == meta.index {
            return Ok(meta.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.asked.set(true);
        if self.released || self.snap.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snap.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64, len: usize) -> Entry {
        Entry {
            index,
            term,
            data: vec![7u8; len].into(),
            ..Default::default()
        }
    }

    #[test]
    fn the_log_counts_its_bytes_through_appends_overwrites_and_compaction() {
        let mut s = Store::new(&[1, 2, 3]);
        s.append(&[entry(1, 1, 100), entry(2, 1, 200), entry(3, 1, 300)]);
        assert_eq!((s.len(), s.bytes()), (3, 600));
        // A new leader overwrites the tail from index 2.
        s.append(&[entry(2, 2, 50)]);
        assert_eq!((s.len(), s.bytes()), (2, 150));
        s.compact(1, Vec::new());
        assert_eq!((s.len(), s.bytes()), (1, 50));
        let mut snap = Snapshot::default();
        snap.mut_metadata().index = 9;
        snap.mut_metadata().term = 3;
        s.apply_snapshot(snap);
        assert_eq!((s.len(), s.bytes()), (0, 0));
    }
}
