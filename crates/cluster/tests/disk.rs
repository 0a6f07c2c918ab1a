//! The log on disk: a cluster whose every worker stops at once (power cut)
//! comes back from its log files with every committed call, its map and
//! its term, and goes on committing.

use std::collections::BTreeMap;
use std::path::Path;

use handover_cluster::{Config, Disk, Event, Message, Node, shard_of};

const IDS: [u64; 3] = [1, 2, 3];
const SHARDS: usize = 8;

fn open(dir: &Path, id: u64, seed: u64) -> Node {
    let mut cfg = Config::new(id, IDS.to_vec(), SHARDS);
    cfg.compact_after = 50;
    let (disk, store) = Disk::open(&dir.join(format!("raft-{id}")), &IDS).expect("open log");
    Node::with_disk(cfg, disk, store, seed).expect("node")
}

/// Ticks every node and delivers every message at once, `ticks` times;
/// returns the calls acknowledged.
fn run(
    nodes: &mut BTreeMap<u64, Node>,
    ticks: u64,
    new_calls: u64,
    next: &mut u64,
) -> Vec<Vec<u8>> {
    run_cut(nodes, ticks, new_calls, next, None)
}

/// [`run`], with every message to or from `cut` lost.
fn run_cut(
    nodes: &mut BTreeMap<u64, Node>,
    ticks: u64,
    new_calls: u64,
    next: &mut u64,
    cut: Option<u64>,
) -> Vec<Vec<u8>> {
    let mut acked = Vec::new();
    for t in 0..ticks {
        let mut wire: Vec<Message> = Vec::new();
        for n in nodes.values_mut() {
            n.tick().expect("tick");
            wire.extend(n.take_messages());
        }
        if t % 2 == 0 && new_calls > 0 && (acked.len() as u64) < new_calls {
            *next += 1;
            let key = next.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            if let Some(n) = nodes
                .values_mut()
                .find(|n| Some(n.id()) != cut && n.serves(shard_of(key, SHARDS)))
            {
                n.upsert(
                    format!("call-{next}").into_bytes(),
                    key,
                    1,
                    b"record".to_vec(),
                );
            }
        }
        while !wire.is_empty() {
            let mut next_wire = Vec::new();
            for m in wire {
                if cut == Some(m.to) || cut == Some(m.from) {
                    continue;
                }
                if let Some(n) = nodes.get_mut(&m.to) {
                    n.step(m).expect("step");
                    next_wire.extend(n.take_messages());
                }
            }
            wire = next_wire;
        }
        for n in nodes.values_mut() {
            while let Some(e) = n.poll_event() {
                if let Event::Committed { call_id, .. } = e {
                    acked.push(call_id);
                }
            }
        }
    }
    acked
}

#[test]
fn a_cluster_stopped_at_once_comes_back_from_disk_with_every_committed_call() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes: BTreeMap<u64, Node> = IDS
        .iter()
        .map(|&id| (id, open(dir.path(), id, 1)))
        .collect();
    let mut next = 0;
    let acked = run(&mut nodes, 400, 150, &mut next);
    assert!(acked.len() >= 100, "only {} calls committed", acked.len());
    let before: Vec<_> = nodes
        .values()
        .map(|n| (n.status().term, n.table().epoch()))
        .collect();
    // The log was compacted into snapshots on the way (compact_after 50).
    assert!(nodes.values().all(|n| n.store().snapshot_index() > 0));
    drop(nodes);

    let mut nodes: BTreeMap<u64, Node> = IDS
        .iter()
        .map(|&id| (id, open(dir.path(), id, 2)))
        .collect();
    for n in nodes.values() {
        let t = n.table();
        for c in &acked {
            assert!(t.call(c).is_some() || n.status().applied < n.store().hard_state().commit);
        }
        let (term, _) = before[(n.id() - 1) as usize];
        assert!(n.store().hard_state().term >= term, "term survives");
    }
    // Once re-elected and re-applied, every replica holds every call, and
    // new calls commit.
    let more = run(&mut nodes, 300, 20, &mut next);
    assert!(!more.is_empty(), "no call committed after the restart");
    for n in nodes.values() {
        for c in acked.iter().chain(&more) {
            assert!(
                n.table().call(c).is_some(),
                "{} lost {}",
                n.id(),
                String::from_utf8_lossy(c)
            );
        }
    }
}

#[test]
fn a_snapshot_lives_on_disk_and_is_rebuilt_for_a_follower_that_fell_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes: BTreeMap<u64, Node> = IDS
        .iter()
        .map(|&id| (id, open(dir.path(), id, 3)))
        .collect();
    let mut next = 0;
    let first = run(&mut nodes, 200, 60, &mut next);
    assert!(first.len() >= 40, "only {} calls committed", first.len());
    // Worker 3 is cut off while the others commit and compact past it.
    let behind = nodes[&3].status().applied;
    let during = run_cut(&mut nodes, 400, 120, &mut next, Some(3));
    assert!(during.len() >= 60, "only {} calls committed", during.len());
    for id in [1, 2] {
        let s = nodes[&id].store();
        assert!(s.snapshot_index() > behind, "{id} compacted past 3");
        assert!(s.snapshot_len() > 0);
        assert!(
            !s.snapshot_in_memory() && s.snapshot_data().is_empty(),
            "{id} keeps its snapshot on disk only"
        );
    }
    // Back: the leader rebuilds the snapshot, sends it, and 3 holds every
    // call committed meanwhile.
    let after = run(&mut nodes, 300, 10, &mut next);
    assert!(
        nodes[&3].store().snapshot_index() > behind,
        "3 caught up from a snapshot"
    );
    for c in first.iter().chain(&during).chain(&after) {
        assert!(
            nodes[&3].table().call(c).is_some(),
            "3 lacks {}",
            String::from_utf8_lossy(c)
        );
    }
    // Once nobody has asked for it a while, the data is released again.
    run(&mut nodes, 150, 0, &mut next);
    assert!(nodes.values().all(|n| !n.store().snapshot_in_memory()));
    // And a restart reads it back from disk.
    drop(nodes);
    let nodes: BTreeMap<u64, Node> = IDS
        .iter()
        .map(|&id| (id, open(dir.path(), id, 4)))
        .collect();
    for n in nodes.values() {
        assert!(n.store().snapshot_in_memory() && n.store().snapshot_len() > 0);
    }
}

/// A worker joins a cluster on disk: the snapshot each member takes for
/// the new learner (the configuration naming it is only in a snapshot)
/// stays in memory until the learner has it, rather than being released
/// at once and encoded again when raft-rs asks for it a heartbeat later.
#[test]
fn a_snapshot_taken_for_a_learner_is_kept_until_the_learner_has_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes: BTreeMap<u64, Node> = IDS
        .iter()
        .map(|&id| (id, open(dir.path(), id, 5)))
        .collect();
    let mut next = 0;
    let first = run(&mut nodes, 200, 30, &mut next);
    assert!(first.len() >= 20, "only {} calls committed", first.len());
    let (disk, store) = Disk::open(&dir.path().join("raft-4"), &[]).expect("open log");
    let mut cfg = Config::new(4, Vec::new(), SHARDS);
    cfg.compact_after = 50;
    nodes.insert(4, Node::with_disk(cfg, disk, store, 6).expect("node"));
    nodes
        .get_mut(&2)
        .expect("2")
        .join(handover_cluster::pb::MemberJoin {
            node: 4,
            grpc: "w4:7000".into(),
            sip: "w4:5060".into(),
            incarnation: 1,
        });
    let mut checked = 0;
    for _ in 0..300 {
        run(&mut nodes, 1, 0, &mut next);
        for id in IDS {
            let n = &nodes[&id];
            if n.learners() == [4] {
                checked += 1;
                assert!(
                    n.store().snapshot_in_memory() && n.store().snapshot_len() > 0,
                    "{id} released the learner's snapshot while 4 is a learner"
                );
            }
        }
        if nodes[&4].table().call(&first[0]).is_some() && nodes[&1].voters() == [1, 2, 3, 4] {
            break;
        }
    }
    assert!(checked > 0, "4 was a learner");
    assert!(
        nodes[&4].store().snapshot_len() > 0,
        "4 caught up from a snapshot"
    );
    for c in &first {
        assert!(nodes[&4].table().call(c).is_some());
    }
}
