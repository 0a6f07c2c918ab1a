//! The durable Raft log: a [`Store`]'s hard state, entries and snapshot in
//! a directory, written once per Ready round before raft's "persisted"
//! messages go out (see `Node::run`).
//!
//! Two files. `snapshot` holds the latest snapshot (its checksum, then the
//! raft-rs `Snapshot` with the table's bytes). `log` holds what came after
//! it as appended records, each its length, a CRC-32 of its kind and
//! payload, its kind and its payload: a hard state, or entries from an
//! index on (which replace whatever the log held from that index, as
//! [`Store::append`] does). A sync appends one or two records with one
//! `write` and one `fdatasync`. A snapshot starts both files again: the
//! snapshot written beside and renamed over the old one, then a log of the
//! hard state and the entries after the snapshot likewise, the directory
//! synced after each rename, so every crash leaves an old or a new
//! snapshot under a log that covers it.
//!
//! Written by hand, not with a database: the log is appended at its tail,
//! read only at start and cut only by a snapshot, which is what an
//! append-only file is. redb (which held it before) spent a quarter of the
//! Raft thread's write in its copy-on-write B-tree and wrote 7–9 pages of
//! 8–16 KiB for 6–10 KiB of entries (docs/benchmarks.md); raft-engine
//! pulls protobuf 2, an old prometheus and a C build. A log that redb
//! wrote (`<dir>.redb`, earlier versions) is read once and rewritten here.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::eraftpb::{Entry, HardState, Snapshot};

use crate::store::Store;

mod legacy;

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("raft log {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("raft log {0} is in use by another process")]
    Locked(PathBuf),
    #[error("raft log holds a record that does not decode: {0}")]
    Corrupt(#[from] protobuf::ProtobufError),
    #[error("raft log {path}: {what}")]
    Broken { path: PathBuf, what: &'static str },
    #[error("raft log database (an earlier version's): {0}")]
    Legacy(#[from] redb::Error),
}

/// A record's kind: a hard state.
const HARD: u8 = 1;
/// A record's kind: entries from the first one's index on.
const ENTRIES: u8 = 2;
/// Bytes before a record's payload: its length (u32), its CRC (u32),
/// its kind.
const RECORD_HEAD: usize = 9;

/// See the module docs.
#[derive(Debug)]
pub struct Disk {
    dir: PathBuf,
    /// `log`, open for appending.
    log: File,
    /// `lock`, locked while this is open: one process per log.
    _lock: File,
    /// A record being written (kept: a sync reuses its capacity).
    buf: Vec<u8>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DiskError + '_ {
    move |error| DiskError::Io {
        path: path.to_owned(),
        error,
    }
}

impl Disk {
    /// Opens (or creates) the log in directory `dir` and reads it into a
    /// [`Store`]; a new log starts with `voters`. Another process holding
    /// it open is an error.
    pub fn open(dir: &Path, voters: &[u64]) -> Result<(Self, Store), DiskError> {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        let lock_path = dir.join("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DiskError::Locked(dir.to_owned()));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&lock_path)(e)),
        }
        // A rewrite a crash cut short left these; the files they were to
        // replace are whole.
        for tmp in ["snapshot.tmp", "log.tmp"] {
            let _ = std::fs::remove_file(dir.join(tmp));
        }
        let log_path = dir.join("log");
        let legacy = dir.with_extension("redb");
        if !log_path.exists() && legacy.exists() {
            let store = legacy::read(&legacy, voters)?;
            let mut buf = Vec::new();
            let log = fresh(dir, &store, &mut buf)?;
            std::fs::remove_file(&legacy).map_err(io(&legacy))?;
            let disk = Self {
                dir: dir.to_owned(),
                log,
                _lock: lock,
                buf,
            };
            return Ok((disk, store));
        }
        let mut store = Store::new(voters);
        let snap_path = dir.join("snapshot");
        if let Some(bytes) = read_if_there(&snap_path)? {
            let body = checked(&bytes).ok_or_else(|| DiskError::Broken {
                path: snap_path.clone(),
                what: "the snapshot's checksum does not match",
            })?;
            store.apply_snapshot(Snapshot::parse_from_bytes(body)?);
        }
        let valid = match read_if_there(&log_path)? {
            Some(bytes) => replay(&bytes, &mut store, &log_path)?,
            None => 0,
        };
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(io(&log_path))?;
        // A torn record at the tail (a crash mid-write, never synced, so
        // never acknowledged) is cut off before anything is appended.
        if log.metadata().map_err(io(&log_path))?.len() != valid {
            log.set_len(valid).map_err(io(&log_path))?;
            log.sync_data().map_err(io(&log_path))?;
        }
        sync_dir(dir)?;
        store.clean();
        Ok((
            Self {
                dir: dir.to_owned(),
                log,
                _lock: lock,
                buf: Vec::new(),
            },
            store,
        ))
    }

    /// Writes what changed in `store` since the last sync, durably.
    pub fn sync(&mut self, store: &mut Store) -> Result<(), DiskError> {
        let Some(dirty) = store.take_dirty() else {
            return Ok(());
        };
        if dirty.snapshot {
            return self.rewrite(store);
        }
        self.buf.clear();
        if let Some(from) = dirty.entries_from {
            entries_record(&mut self.buf, store.entries_from(from))?;
        }
        // The hard state goes when its term or vote changed, not for a
        // commit index alone: that is learnt again from the leader (see
        // `Store::take_dirty`).
        if dirty.vote {
            record(&mut self.buf, HARD, |b| {
                b.extend_from_slice(&store.hard_state().write_to_bytes()?);
                Ok(())
            })?;
        }
        if self.buf.is_empty() {
            return Ok(());
        }
        let path = self.dir.join("log");
        self.log.write_all(&self.buf).map_err(io(&path))?;
        self.log.sync_data().map_err(io(&path))
    }

    /// Starts both files again from `store` (see [`fresh`]).
    fn rewrite(&mut self, store: &Store) -> Result<(), DiskError> {
        self.log = fresh(&self.dir, store, &mut self.buf)?;
        Ok(())
    }
}

/// Writes `dir`'s files from `store`: its snapshot, then a log of its hard
/// state and its entries after the snapshot, each replacing the old one
/// whole; returns the new log, open for appending.
fn fresh(dir: &Path, store: &Store, buf: &mut Vec<u8>) -> Result<File, DiskError> {
    let snap = store.snapshot_ref().write_to_bytes()?;
    let crc = crc32fast::hash(&snap).to_le_bytes();
    replace(dir, "snapshot", &[&crc, &snap])?;
    drop(snap);
    buf.clear();
    record(buf, HARD, |b| {
        b.extend_from_slice(&store.hard_state().write_to_bytes()?);
        Ok(())
    })?;
    entries_record(buf, store.entries_from(store.snapshot_index() + 1))?;
    replace(dir, "log", &[buf])?;
    let path = dir.join("log");
    OpenOptions::new()
        .append(true)
        .open(&path)
        .map_err(io(&path))
}

/// Appends a record of `kind` whose payload `fill` writes.
fn record(
    buf: &mut Vec<u8>,
    kind: u8,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), DiskError>,
) -> Result<(), DiskError> {
    let at = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEAD]);
    buf[at + 8] = kind;
    fill(buf)?;
    let len = u32::try_from(buf.len() - at - RECORD_HEAD).map_err(|_| DiskError::Broken {
        path: PathBuf::new(),
        what: "a record longer than 4 GiB",
    })?;
    let crc = crc32fast::hash(&buf[at + 8..]);
    buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
    buf[at + 4..at + 8].copy_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// Appends a record of `ents` (none: nothing).
fn entries_record(buf: &mut Vec<u8>, ents: &[Entry]) -> Result<(), DiskError> {
    if ents.is_empty() {
        return Ok(());
    }
    record(buf, ENTRIES, |b| {
        for e in ents {
            let bytes = e.write_to_bytes()?;
            let n = u32::try_from(bytes.len()).map_err(|_| DiskError::Broken {
                path: PathBuf::new(),
                what: "an entry longer than 4 GiB",
            })?;
            b.extend_from_slice(&n.to_le_bytes());
            b.extend_from_slice(&bytes);
        }
        Ok(())
    })
}

/// `bytes` after a leading CRC-32 of the rest, if it matches.
fn checked(bytes: &[u8]) -> Option<&[u8]> {
    let (crc, body) = bytes.split_first_chunk::<4>()?;
    (u32::from_le_bytes(*crc) == crc32fast::hash(body)).then_some(body)
}

/// Applies the log's records to `store`; returns how many bytes of it are
/// whole records (a torn tail stops the replay).
fn replay(bytes: &[u8], store: &mut Store, path: &Path) -> Result<u64, DiskError> {
    let mut at = 0usize;
    while let Some(head) = bytes.get(at..).and_then(|b| b.first_chunk::<RECORD_HEAD>()) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let Some(end) = (at + RECORD_HEAD)
            .checked_add(len)
            .filter(|&e| e <= bytes.len())
        else {
            break;
        };
        if crc32fast::hash(&bytes[at + 8..end]) != crc {
            break;
        }
        let payload = &bytes[at + RECORD_HEAD..end];
        match head[8] {
            HARD => {
                let mut hs = HardState::parse_from_bytes(payload)?;
                // A hard state written before the snapshot (a crash
                // between its rename and the log's) is older than it.
                hs.commit = hs.commit.max(store.snapshot_index());
                store.set_hard_state(hs);
            }
            ENTRIES => {
                let mut ents = Vec::new();
                let mut p = payload;
                while let Some((n, rest)) = p.split_first_chunk::<4>() {
                    let n = u32::from_le_bytes(*n) as usize;
                    let (e, rest) = rest.split_at_checked(n).ok_or_else(|| DiskError::Broken {
                        path: path.to_owned(),
                        what: "an entry runs past its record",
                    })?;
                    ents.push(Entry::parse_from_bytes(e)?);
                    p = rest;
                }
                // Entries the snapshot covers are in it already.
                let snap = store.snapshot_index();
                ents.retain(|e| e.index > snap);
                if let Some(first) = ents.first() {
                    let last = store.last_index_held();
                    if first.index > last + 1 {
                        return Err(DiskError::Broken {
                            path: path.to_owned(),
                            what: "entries after a gap",
                        });
                    }
                    store.append(&ents);
                }
            }
            _ => {
                return Err(DiskError::Broken {
                    path: path.to_owned(),
                    what: "a record of an unknown kind",
                });
            }
        }
        at = end;
    }
    Ok(at as u64)
}

fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>, DiskError> {
    match File::open(path) {
        Ok(mut f) => {
            let mut b = Vec::new();
            f.read_to_end(&mut b).map_err(io(path))?;
            Ok(Some(b))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(path)(e)),
    }
}

/// Replaces `dir/name` with `parts` back to back, durably: written
/// beside, synced, renamed over, the directory synced.
fn replace(dir: &Path, name: &str, parts: &[&[u8]]) -> Result<(), DiskError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = File::create(&tmp).map_err(io(&tmp))?;
    for p in parts {
        f.write_all(p).map_err(io(&tmp))?;
    }
    f.sync_data().map_err(io(&tmp))?;
    drop(f);
    let path = dir.join(name);
    std::fs::rename(&tmp, &path).map_err(io(&path))?;
    sync_dir(dir)
}

fn sync_dir(dir: &Path) -> Result<(), DiskError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

#[cfg(test)]
mod tests;
