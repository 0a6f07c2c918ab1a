use super::*;

fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Default::default()
    }
}

fn hard(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..Default::default()
    }
}

/// What a store holds that the disk must keep: term, vote, the
/// snapshot's index, term and data, and (index, term, data) per entry.
type Image = (u64, u64, u64, u64, Vec<u8>, Vec<(u64, u64, Vec<u8>)>);

fn image(s: &Store) -> Image {
    let h = s.hard_state();
    (
        h.term,
        h.vote,
        s.snapshot_index(),
        s.snapshot_ref().get_metadata().term,
        s.snapshot_ref().data.to_vec(),
        s.entries_from(0)
            .iter()
            .map(|e| (e.index, e.term, e.data.to_vec()))
            .collect(),
    )
}

#[test]
fn a_log_reads_back_its_entries_hard_state_and_overwritten_tail() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-1");
    let (mut disk, mut store) = Disk::open(&path, &[1, 2, 3]).unwrap();
    assert_eq!(store.last_index_held(), 0);
    store.set_hard_state(hard(1, 2, 0));
    store.append(&(1..=10).map(|i| entry(i, 1, b"a")).collect::<Vec<_>>());
    disk.sync(&mut store).unwrap();
    // A new leader's log wins over the uncommitted tail.
    store.set_hard_state(hard(2, 3, 4));
    store.append(&[entry(5, 2, b"b"), entry(6, 2, b"c")]);
    disk.sync(&mut store).unwrap();
    store.set_commit(6);
    disk.sync(&mut store).unwrap();
    let want = image(&store);
    drop(disk);
    let (_, back) = Disk::open(&path, &[1, 2, 3]).unwrap();
    assert_eq!(image(&back), want);
    assert_eq!(back.last_index_held(), 6);
    assert_eq!(
        back.hard_state().commit,
        4,
        "written with the vote; a commit index alone is not"
    );
}

#[test]
fn a_torn_record_at_the_tail_is_cut_off_and_the_log_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-1");
    let (mut disk, mut store) = Disk::open(&path, &[1]).unwrap();
    store.set_hard_state(hard(1, 1, 0));
    store.append(&[entry(1, 1, b"one"), entry(2, 1, b"two")]);
    disk.sync(&mut store).unwrap();
    let whole = std::fs::metadata(path.join("log")).unwrap().len();
    store.append(&[entry(3, 1, b"three")]);
    disk.sync(&mut store).unwrap();
    drop(disk);
    // The last record half written (a crash before its sync returned),
    // then one whose checksum is wrong.
    let log = path.join("log");
    let full = std::fs::metadata(&log).unwrap().len();
    for cut in [full - 3, whole + 5] {
        let f = OpenOptions::new().write(true).open(&log).unwrap();
        f.set_len(cut).unwrap();
        drop(f);
        let (mut disk, mut back) = Disk::open(&path, &[1]).unwrap();
        assert_eq!(back.last_index_held(), 2);
        assert_eq!(
            std::fs::metadata(&log).unwrap().len(),
            whole,
            "cut at the last whole record"
        );
        back.append(&[entry(3, 1, b"again")]);
        disk.sync(&mut back).unwrap();
        drop(disk);
        let (_, again) = Disk::open(&path, &[1]).unwrap();
        assert_eq!(again.entries_from(3)[0].data.to_vec(), b"again");
    }
    let mut bytes = std::fs::read(&log).unwrap();
    let n = bytes.len();
    bytes[n - 1] ^= 0xff;
    std::fs::write(&log, &bytes).unwrap();
    let (_, back) = Disk::open(&path, &[1]).unwrap();
    assert_eq!(
        back.last_index_held(),
        2,
        "a record whose checksum fails ends the log"
    );
}

#[test]
fn a_snapshot_starts_the_files_again_and_survives_a_crash_between_the_renames() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-1");
    let (mut disk, mut store) = Disk::open(&path, &[1]).unwrap();
    store.set_hard_state(hard(3, 1, 0));
    store.append(&(1..=20).map(|i| entry(i, 3, b"x")).collect::<Vec<_>>());
    disk.sync(&mut store).unwrap();
    let old_log = std::fs::read(path.join("log")).unwrap();
    store.set_commit(15);
    store.compact(15, b"table".to_vec());
    disk.sync(&mut store).unwrap();
    assert!(std::fs::metadata(path.join("log")).unwrap().len() < old_log.len() as u64);
    let want = image(&store);
    drop(disk);
    let (mut disk, mut back) = Disk::open(&path, &[1]).unwrap();
    assert_eq!(image(&back), want);
    assert_eq!(back.hard_state().commit, 15);
    back.append(&[entry(21, 3, b"y")]);
    disk.sync(&mut back).unwrap();
    drop(disk);
    // The new snapshot renamed in, the log not yet: the old log is read
    // over it, entries the snapshot covers skipped.
    std::fs::write(path.join("log"), &old_log).unwrap();
    std::fs::write(path.join("log.tmp"), b"half").unwrap();
    let (_, back) = Disk::open(&path, &[1]).unwrap();
    assert_eq!(back.snapshot_index(), 15);
    assert_eq!(back.snapshot_ref().data.to_vec(), b"table");
    assert_eq!(back.hard_state().commit, 15, "no older than the snapshot");
    assert_eq!(back.entries_from(0).first().map(|e| e.index), Some(16));
    assert_eq!(back.last_index_held(), 20);
    assert!(!path.join("log.tmp").exists());
}

#[test]
fn a_log_is_one_process_s_and_a_broken_snapshot_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-1");
    let (disk, _) = Disk::open(&path, &[1]).unwrap();
    assert!(matches!(Disk::open(&path, &[1]), Err(DiskError::Locked(_))));
    drop(disk);
    let (mut disk, mut store) = Disk::open(&path, &[1]).unwrap();
    store.append(&[entry(1, 1, b"a")]);
    store.compact(1, b"t".to_vec());
    disk.sync(&mut store).unwrap();
    drop(disk);
    let snap = path.join("snapshot");
    let mut b = std::fs::read(&snap).unwrap();
    let n = b.len();
    b[n - 1] ^= 1;
    std::fs::write(&snap, &b).unwrap();
    assert!(matches!(
        Disk::open(&path, &[1]),
        Err(DiskError::Broken { .. })
    ));
}

#[test]
fn a_log_an_earlier_version_kept_in_redb_is_read_once_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raft-2");
    let mut store = Store::new(&[1, 2, 3]);
    store.set_hard_state(hard(4, 2, 0));
    store.append(&(1..=8).map(|i| entry(i, 4, b"old")).collect::<Vec<_>>());
    store.compact(5, b"table".to_vec());
    let want = image(&store);
    legacy::write(&dir.path().join("raft-2.redb"), &store).unwrap();
    let (_, back) = Disk::open(&path, &[1, 2, 3]).unwrap();
    assert_eq!(image(&back), want);
    assert!(!dir.path().join("raft-2.redb").exists());
    let (_, again) = Disk::open(&path, &[1, 2, 3]).unwrap();
    assert_eq!(image(&again), want, "read from the new files");
}
