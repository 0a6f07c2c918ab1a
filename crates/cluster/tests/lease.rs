//! A worker that dies while the cluster is busy: its shards are served by
//! their new owners as soon as the map change is applied, not a lease
//! later, although the leader's log always holds entries not yet applied
//! (the MemberDown rule in node.rs, "Ownership and its lease").

use std::collections::BTreeMap;

use handover_cluster::{Config, Event, Message, Node, Store, shard_of};

const IDS: [u64; 3] = [1, 2, 3];
const SHARDS: usize = 16;

/// Runs one tick: every live node ticks, proposes a call in each shard it
/// serves, and the messages sent in the previous tick are delivered (so a
/// proposal is never applied in the tick it is made). Returns the events.
fn tick(
    nodes: &mut BTreeMap<u64, Node>,
    wire: &mut Vec<Message>,
    next: &mut u64,
) -> Vec<(u64, Event)> {
    for m in std::mem::take(wire) {
        if let Some(n) = nodes.get_mut(&m.to) {
            n.step(m).expect("step");
        }
    }
    let mut events = Vec::new();
    for (&id, n) in nodes.iter_mut() {
        for s in 0..SHARDS {
            if n.serves(s) {
                *next += 1;
                let key = (0..)
                    .map(|k: u64| (*next << 8) + k)
                    .find(|&k| shard_of(k, SHARDS) == s)
                    .expect("a key of the shard");
                n.upsert(format!("call-{next}").into_bytes(), key, 1, vec![7; 64]);
            }
        }
        n.tick().expect("tick");
        wire.extend(n.take_messages());
        while let Some(e) = n.poll_event() {
            events.push((id, e));
        }
    }
    events
}

/// A cluster of three under steady writes, run until every shard is
/// served; then `pick` chooses a worker to kill. Returns the ticks from
/// the kill to its shards' map change, and to every shard served again.
fn kill(pick: impl Fn(&BTreeMap<u64, Node>) -> u64) -> (u64, u64, Config) {
    let mut nodes: BTreeMap<u64, Node> = IDS
        .iter()
        .map(|&id| {
            let cfg = Config::new(id, IDS.to_vec(), SHARDS);
            (id, Node::new(cfg, Store::new(&IDS), id).expect("node"))
        })
        .collect();
    let (mut wire, mut next) = (Vec::new(), 0);
    for _ in 0..200 {
        tick(&mut nodes, &mut wire, &mut next);
    }
    let served = |nodes: &BTreeMap<u64, Node>| {
        (0..SHARDS)
            .filter(|&s| nodes.values().any(|n| n.serves(s)))
            .count()
    };
    assert_eq!(
        served(&nodes),
        SHARDS,
        "every shard served before the death"
    );
    let dead = pick(&nodes);
    let cfg = Config::new(dead, IDS.to_vec(), SHARDS);
    assert!(
        (0..SHARDS).any(|s| nodes[&dead].serves(s)),
        "worker {dead} served shards"
    );
    nodes.remove(&dead);
    let (mut moved_at, mut all_served_at) = (None, None);
    for t in 1..cfg.dead_after_ticks * 4 {
        for (_, e) in tick(&mut nodes, &mut wire, &mut next) {
            if let Event::MemberDown { .. } = e {
                moved_at.get_or_insert(t);
            }
        }
        if moved_at.is_some() && served(&nodes) == SHARDS {
            all_served_at = Some(t);
            break;
        }
    }
    let moved_at = moved_at.expect("the leader declared the worker dead");
    (
        moved_at,
        all_served_at.expect("every shard served again"),
        cfg,
    )
}

fn leader(nodes: &BTreeMap<u64, Node>) -> u64 {
    nodes
        .values()
        .find(|n| n.is_leader())
        .expect("a leader")
        .status()
        .id
}

#[test]
fn a_dead_workers_shards_are_served_once_the_map_moves_them_though_the_log_is_busy() {
    let (moved, served, cfg) = kill(|nodes| {
        let l = leader(nodes);
        IDS.into_iter().find(|&id| id != l).expect("a follower")
    });
    assert!(
        served - moved < cfg.lease_ticks / 2,
        "a follower's shards were dark {} ticks after the map moved them (lease {})",
        served - moved,
        cfg.lease_ticks
    );
}

/// The Raft leader killed: the next leader declares it dead dead_after
/// after its last renewal reached the followers' logs, not dead_after
/// after the election, and its shards are served at once.
#[test]
fn a_dead_leaders_shards_are_served_dead_after_its_last_renewal() {
    let (moved, served, cfg) = kill(leader);
    assert!(
        served - moved < cfg.lease_ticks / 2,
        "the leader's shards were dark {} ticks after the map moved them",
        served - moved
    );
    // An election (10 to 20 ticks) runs inside dead_after (30): the death
    // is not counted from it.
    assert!(
        served < cfg.dead_after_ticks + cfg.election_ticks as u64,
        "the leader's shards were dark {served} ticks after it died (dead_after {}, election {})",
        cfg.dead_after_ticks,
        cfg.election_ticks
    );
}
