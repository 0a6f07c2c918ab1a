//! Deterministic simulation of a cluster of replicas (docs/architecture.md, "Replication"): many
//! seeded runs of three workers over a network that loses, delays, reorders
//! and duplicates messages, with crashes (the log survives, as on disk),
//! restarts, and partitions (both ways and one way), while workers commit,
//! update and remove calls of the shards they serve.
//!
//! Odd seeds run group commit with the replica loop's own `Window` on
//! skewed clocks. Invariants checked at every tick:
//! - at most one worker serves a shard;
//! - a node's `Serving`/`Stopped` events say what its `serves` says;
//! - every replica that reached an epoch holds the same map for it.
//!
//! And at the end of each run, after the faults heal:
//! - every call whose commit was acknowledged (and not removed since) is in
//!   every replica's table, at least at the acknowledged version;
//! - the replicas' tables are identical, and every shard is served.
//!
//! `SIM_SEEDS` (default 48) and `SIM_TICKS` (default 1500) size the runs; a
//! failure names its seed, and `SIM_SEED=<n>` replays that one run.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use std::time::Duration;

use handover_cluster::{Config, Event, Message, Node, Store, Window, shard_of};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const SHARDS: usize = 16;
/// A tick of the simulation is a tick of the worker's replica loop.
const TICK_MS: u64 = 100;
const IDS: [u64; 3] = [1, 2, 3];

struct Faults {
    loss: f64,
    dup: f64,
    max_delay: u64,
}

struct Sim {
    rng: SmallRng,
    seed: u64,
    now: u64,
    nodes: BTreeMap<u64, Node>,
    /// Crashed workers: what their disk kept, and when they come back.
    down: BTreeMap<u64, (Store, u64)>,
    /// In flight: (deliver at, order, from, to, message).
    wire: Vec<(u64, u64, u64, u64, Message)>,
    order: u64,
    /// Links cut: (from, to).
    cut: BTreeSet<(u64, u64)>,
    cut_until: u64,
    faults: Faults,
    /// epoch -> the map first seen at it.
    maps: HashMap<u64, Vec<u64>>,
    /// Acknowledged calls: call id -> (key, version).
    acked: BTreeMap<Vec<u8>, (u64, u64)>,
    /// Calls whose removal is proposed (and maybe committed) but not
    /// acknowledged.
    removing: BTreeSet<Vec<u8>>,
    /// Calls whose removal was acknowledged: a write of theirs that its
    /// proposer hears of later (it was cut off) was committed before the
    /// removal, and the call stays removed.
    removed: BTreeSet<Vec<u8>>,
    next_call: u64,
    stats: Stats,
    /// Per node, the shards its `Serving`/`Stopped` events say it serves:
    /// what a worker's shells act on (a restarted node starts with none).
    reported: BTreeMap<u64, Vec<bool>>,
    /// Odd seeds run as the workers do: group commit (`Config::group_
    /// commit`), the messages that reach a node together stepped together,
    /// and each node proposing what it queued when its `Window` closes, as
    /// the replica loop does, on its own clock (`skew` ms off) with a
    /// window length drawn per seed (20 ms to 400 ms: every tick or every
    /// few).
    group: bool,
    window: Window,
    /// Per node: how far its wall clock is off, ms.
    skew: BTreeMap<u64, u64>,
    /// Per node: when (virtual ms) its open window closes.
    flush_at: BTreeMap<u64, u64>,
    /// Whether the shells release the shards they lose (`Node::released`).
    release: bool,
    /// Per node, the call detail records its sink holds (its disk: kept
    /// across a crash), with the `retry` flag each was written with.
    sinks: BTreeMap<u64, Vec<(Vec<u8>, bool)>>,
    /// Records whose commit their proposer heard (`Event::Recorded`).
    recorded: BTreeSet<Vec<u8>>,
    /// Workers join and leave during the run (`churn`).
    churn: bool,
    /// Per worker: the voters its fresh log starts with (a joiner: none).
    initial: BTreeMap<u64, Vec<u64>>,
    next_id: u64,
    /// Joiners whose join is not yet in the table, with when they last
    /// asked a member (a worker's `--join` retries the same way).
    joining: BTreeMap<u64, u64>,
    /// Workers asked to leave, not yet gone.
    /// Workers asked to leave, not yet gone, with when a member was last
    /// asked (`handover leave` retries until the leave is in the table).
    leaving: BTreeMap<u64, u64>,
    /// Per worker: its current start's incarnation (random per start in
    /// a worker, a count here).
    incarnation: BTreeMap<u64, u64>,
    starts: u64,
}

/// A call's detail record in the simulation: its id is the call's.
fn record(call_id: &[u8], key: u64) -> handover_cluster::pb::CallDetail {
    handover_cluster::pb::CallDetail {
        detail: Some(handover_cluster::pb::Detail {
            id: call_id.to_vec(),
            ..Default::default()
        }),
        key,
        a_call_id: call_id.to_vec(),
        ..Default::default()
    }
}

#[derive(Debug, Default)]
struct Stats {
    /// Records written, and of them written again as flagged retries.
    records: u64,
    retried: u64,
    /// Second copies (another sink held the id).
    duplicated: u64,
    acked: u64,
    removed: u64,
    crashes: u64,
    partitions: u64,
    failovers: u64,
    /// Workers that became voters at run time, and that left for good.
    joined: u64,
    left: u64,
    /// Joins of workers that came back after the leader removed them
    /// (out of the map too long: `Config::remove_down_after_ticks`).
    rejoined: u64,
}

fn config(id: u64, group_commit: bool) -> Config {
    configured(id, IDS.to_vec(), group_commit)
}

fn configured(id: u64, voters: Vec<u64>, group_commit: bool) -> Config {
    let mut c = Config::new(id, voters, SHARDS);
    // Small enough that runs take snapshots and restarted nodes need them.
    c.compact_after = 64;
    c.max_batch = 8;
    c.group_commit = group_commit;
    c
}

/// A seed's group-commit window, 20 ms to 400 ms.
fn rng_window_ms(seed: u64) -> u64 {
    20 + (seed.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40) % 381
}

impl Sim {
    fn new(seed: u64) -> Self {
        let mut rng = SmallRng::seed_from_u64(seed);
        let faults = Faults {
            loss: rng.random_range(0.0..0.15),
            dup: rng.random_range(0.0..0.05),
            max_delay: rng.random_range(0..4),
        };
        let nodes = IDS
            .iter()
            .map(|&id| {
                (
                    id,
                    Node::new(config(id, seed % 2 == 1), Store::new(&IDS), seed).expect("node"),
                )
            })
            .collect();
        Self {
            rng,
            seed,
            now: 0,
            nodes,
            down: BTreeMap::new(),
            wire: Vec::new(),
            order: 0,
            cut: BTreeSet::new(),
            cut_until: 0,
            faults,
            maps: HashMap::new(),
            acked: BTreeMap::new(),
            removing: BTreeSet::new(),
            removed: BTreeSet::new(),
            sinks: BTreeMap::new(),
            recorded: BTreeSet::new(),
            next_call: 0,
            stats: Stats::default(),
            reported: BTreeMap::new(),
            group: seed % 2 == 1,
            window: Window::new(Duration::from_millis(rng_window_ms(seed))),
            skew: IDS
                .iter()
                .map(|&id| (id, (seed ^ id.wrapping_mul(0x9E37)) % 20))
                .collect(),
            flush_at: BTreeMap::new(),
            release: true,
            churn: false,
            initial: IDS.iter().map(|&id| (id, IDS.to_vec())).collect(),
            next_id: IDS.len() as u64 + 1,
            joining: BTreeMap::new(),
            leaving: BTreeMap::new(),
            incarnation: BTreeMap::new(),
            starts: 0,
        }
    }

    /// A live worker other than `id`, at random: the member a joiner or
    /// `handover leave` asks.
    fn other(&mut self, alive: &[u64], id: u64) -> Option<u64> {
        let others: Vec<u64> = alive.iter().copied().filter(|&o| o != id).collect();
        (!others.is_empty()).then(|| others[self.rng.random_range(0..others.len())])
    }

    /// A restarted (or new) worker `id` from what its disk holds. With
    /// churn, as on Kubernetes, the leader removes a voter out of the map
    /// for 60 ticks (keeping three), and a worker not in the
    /// configuration asks to join again.
    fn boot(&mut self, id: u64, store: Store) -> Node {
        let voters = self.initial.get(&id).cloned().unwrap_or_default();
        let mut c = configured(id, voters, self.group);
        if self.churn {
            c.remove_down_after_ticks = Some(60);
            c.min_voters = 3;
        }
        self.starts += 1;
        self.incarnation.insert(id, self.starts);
        Node::new(c, store, self.seed ^ self.now).expect("start")
    }

    /// Workers join and leave: a new one asks a member to take it in
    /// (again until its join is in the table); one asked to leave drains
    /// and, once no member counts it any more, is gone (its process is
    /// stopped: the leader removes it whether it hears or not).
    fn membership(&mut self, start: bool) {
        let alive: Vec<u64> = self.nodes.keys().copied().collect();
        let members = self.nodes.len() + self.down.len();
        let staying =
            |s: &Self, id: &u64| !s.leaving.contains_key(id) && !s.joining.contains_key(id);
        if start && members < 5 && self.joining.is_empty() && self.rng.random_bool(0.004) {
            let id = self.next_id;
            self.next_id += 1;
            self.initial.insert(id, Vec::new());
            let node = self.boot(id, Store::new(&[]));
            self.nodes.insert(id, node);
            self.joining.insert(id, 0);
        }
        for id in due(&self.joining, self.now) {
            if !self.nodes.contains_key(&id) {
                continue;
            }
            let Some(via) = self.other(&alive, id) else {
                continue;
            };
            let node = self.nodes.get_mut(&via).expect("node");
            let incarnation = self.incarnation.get(&id).copied().unwrap_or(0);
            if node
                .table()
                .joined()
                .any(|j| j.node == id && j.incarnation == incarnation)
            {
                self.joining.remove(&id);
                continue;
            }
            // Removed before it heard it was in (cut off, then out of the
            // map too long): the answer says so, and it asks anew.
            let incarnation = if node.table().was_removed(id, incarnation) {
                self.starts += 1;
                self.incarnation.insert(id, self.starts);
                self.starts
            } else {
                incarnation
            };
            let node = self.nodes.get_mut(&via).expect("node");
            node.join(handover_cluster::pb::MemberJoin {
                node: id,
                grpc: format!("w{id}:7000"),
                sip: format!("w{id}:5060"),
                incarnation,
            });
            self.joining.insert(id, self.now);
        }
        // `--join` on every worker: one a member does not count (removed
        // while it was away, or while cut off) asks again, every 20 ticks.
        if self.now.is_multiple_of(20) {
            for &id in &alive {
                if self.joining.contains_key(&id) || self.leaving.contains_key(&id) {
                    continue;
                }
                let Some(via) = self.other(&alive, id) else {
                    continue;
                };
                let v = &self.nodes[&via];
                let counted = v.voters().contains(&id) || v.learners().contains(&id);
                let asked = v.table().joined().any(|j| j.node == id);
                if !counted && !asked && !v.voters().is_empty() {
                    // A new incarnation: a join of the one removed would
                    // be taken for a late copy and ignored.
                    self.stats.rejoined += 1;
                    self.starts += 1;
                    self.incarnation.insert(id, self.starts);
                    self.joining.insert(id, 0);
                }
            }
        }
        // Leave: one at a time, keeping at least three staying.
        let staying_n = alive.iter().filter(|id| staying(self, id)).count()
            + self.down.keys().filter(|id| staying(self, id)).count();
        if start && self.leaving.is_empty() && staying_n > 3 && self.rng.random_bool(0.003) {
            let pick: Vec<u64> = alive
                .iter()
                .copied()
                .chain(self.down.keys().copied())
                .filter(|id| staying(self, id))
                .collect();
            let id = pick[self.rng.random_range(0..pick.len())];
            self.leaving.insert(id, self.now);
            match self.nodes.get_mut(&id) {
                Some(node) => {
                    node.leave(id);
                    node.drain();
                }
                None => {
                    let via = *alive.first().expect("alive");
                    self.nodes.get_mut(&via).expect("node").leave(id);
                }
            }
        }
        for id in due(&self.leaving, self.now) {
            let Some(via) = self.other(&alive, id) else {
                continue;
            };
            let node = self.nodes.get_mut(&via).expect("node");
            if !node.table().is_leaving(id) {
                node.leave(id);
            }
            self.leaving.insert(id, self.now);
        }
        // Gone once the live member that has applied the most (what
        // `handover leave` hears from) no longer counts it.
        let newest = self
            .nodes
            .iter()
            .filter(|(o, _)| !self.leaving.contains_key(o))
            .max_by_key(|(_, n)| n.status().applied)
            .map(|(&o, _)| o);
        let gone: Vec<u64> = self
            .leaving
            .keys()
            .copied()
            .filter(|id| {
                let counted = newest.is_some_and(|o| {
                    let n = &self.nodes[&o];
                    o != *id
                        && (n.voters().contains(id)
                            || n.learners().contains(id)
                            || n.table().joined().any(|j| j.node == *id))
                });
                // The leader removed it only once it was out of the map;
                // its process is stopped then (`handover leave` waits for
                // that), whether or not it heard.
                !counted
            })
            .collect();
        for id in gone {
            self.leaving.remove(&id);
            self.nodes.remove(&id);
            self.down.remove(&id);
            self.reported.remove(&id);
            self.flush_at.remove(&id);
            self.stats.left += 1;
        }
    }

    fn send(&mut self, from: u64, msgs: Vec<Message>, faulty: bool) {
        for m in msgs {
            let to = m.to;
            if faulty && (self.cut.contains(&(from, to)) || self.rng.random_bool(self.faults.loss))
            {
                continue;
            }
            let copies = if faulty && self.rng.random_bool(self.faults.dup) {
                2
            } else {
                1
            };
            for _ in 0..copies {
                let delay = if faulty && self.faults.max_delay > 0 {
                    self.rng.random_range(0..=self.faults.max_delay)
                } else {
                    0
                };
                self.order += 1;
                let order = if faulty {
                    self.rng.random()
                } else {
                    self.order
                };
                self.wire
                    .push((self.now + delay, order, from, to, m.clone()));
            }
        }
    }

    fn deliver(&mut self, faulty: bool) {
        // Messages sent while delivering at delay 0 arrive this tick too;
        // bounded so a storm cannot spin forever.
        for _ in 0..64 {
            let now = self.now;
            let (mut due, rest): (Vec<_>, Vec<_>) = self.wire.drain(..).partition(|w| w.0 <= now);
            self.wire = rest;
            if due.is_empty() {
                return;
            }
            due.sort_by_key(|w| w.1);
            if self.group {
                let mut per: BTreeMap<u64, Vec<Message>> = BTreeMap::new();
                for (_, _, _, to, m) in due {
                    per.entry(to).or_default().push(m);
                }
                for (to, msgs) in per {
                    if let Some(node) = self.nodes.get_mut(&to) {
                        node.step_all(msgs).expect("step");
                        let out = node.take_messages();
                        self.send(to, out, faulty);
                    }
                }
            } else {
                for (_, _, _, to, m) in due {
                    if let Some(node) = self.nodes.get_mut(&to) {
                        node.step(m).expect("step");
                        let out = node.take_messages();
                        self.send(to, out, faulty);
                    }
                }
            }
            self.drain_events();
        }
    }

    fn drain_events(&mut self) {
        for (id, node) in self.nodes.iter_mut() {
            let mut stopped = false;
            while let Some(e) = node.poll_event() {
                if std::env::var_os("SIM_TRACE").is_some()
                    && matches!(
                        e,
                        Event::Map { .. }
                            | Event::Conf { .. }
                            | Event::Leader { .. }
                            | Event::MemberDown { .. }
                            | Event::Serving { .. }
                            | Event::Stopped { .. }
                    )
                {
                    eprintln!("{} node {id}: {e:?}", self.now);
                }
                stopped |= match &e {
                    Event::Stopped { .. } => true,
                    Event::Map { lost, .. } => !lost.is_empty(),
                    _ => false,
                };
                match e {
                    Event::Serving { shard } | Event::Stopped { shard } => {
                        let r = self
                            .reported
                            .entry(*id)
                            .or_insert_with(|| vec![false; SHARDS]);
                        let on = matches!(e, Event::Serving { .. });
                        assert_ne!(r[shard], on, "seed {}: a repeated report", self.seed);
                        r[shard] = on;
                    }
                    Event::Committed { call_id, .. } if self.removed.contains(&call_id) => {}
                    Event::Committed { call_id, version } => {
                        let key = key_of(&call_id);
                        let prev = self.acked.insert(call_id, (key, version));
                        if prev.is_none() {
                            self.stats.acked += 1;
                        }
                        assert!(prev.is_none_or(|(_, v)| v < version));
                    }
                    Event::Recorded { call_id } => {
                        self.recorded.insert(call_id);
                    }
                    // The shell's sink writes it (unless its own file holds
                    // it: a restarted worker handed it again) and confirms.
                    Event::WriteRecord { record, retry } => {
                        let shard = shard_of(record.key, SHARDS);
                        assert!(
                            self.reported.get(id).is_some_and(|r| r[shard]),
                            "seed {}: node {id} writes a record of shard {shard}, which it does not serve",
                            self.seed
                        );
                        let rid = record.detail.map(|d| d.id).unwrap_or_default();
                        let sink = self.sinks.entry(*id).or_default();
                        if !sink.iter().any(|(w, _)| *w == rid) {
                            sink.push((rid.clone(), retry));
                        }
                        node.records_written(vec![rid]);
                    }
                    Event::Removed { call_id } => {
                        self.removing.remove(&call_id);
                        self.acked.remove(&call_id);
                        self.removed.insert(call_id);
                        self.stats.removed += 1;
                    }
                    // A removal stays "maybe done" until acknowledged: its
                    // proposer may crash after the commit, before hearing.
                    Event::Refused { .. }
                    | Event::Map { .. }
                    | Event::Leader { .. }
                    | Event::HandedOver { .. }
                    | Event::Ended { .. }
                    | Event::HangUp { .. }
                    | Event::Conf { .. }
                    | Event::MemberDown { .. } => {}
                    // The simulation writes no registrations (yet).
                    Event::Bound { .. } | Event::BindDone { .. } | Event::Restored => {}
                }
            }
            // The shell has stopped acting on what it lost (a worker's SIP
            // loop hands the calls over first): its successors need not
            // wait out its lease.
            if stopped && self.release {
                let epoch = node.table().epoch();
                node.released(epoch, Vec::new());
            }
        }
    }

    fn check(&mut self) {
        // The events say exactly what `serves` says: the shells' view is
        // the core's.
        for (id, node) in &self.nodes {
            let r = self.reported.get(id);
            for shard in 0..SHARDS {
                assert_eq!(
                    r.is_some_and(|r| r[shard]),
                    node.serves(shard),
                    "seed {}: tick {}: node {id} shard {shard}: events and serves disagree",
                    self.seed,
                    self.now
                );
            }
        }
        for shard in 0..SHARDS {
            let serving: Vec<u64> = self
                .nodes
                .values()
                .filter(|n| n.serves(shard))
                .map(|n| n.id())
                .collect();
            assert!(
                serving.len() <= 1,
                "seed {}: tick {}: shard {shard} served by {serving:?}",
                self.seed,
                self.now
            );
        }
        for node in self.nodes.values() {
            let t = node.table();
            let seen = self
                .maps
                .entry(t.epoch())
                .or_insert_with(|| t.owners().to_vec());
            assert_eq!(
                seen,
                t.owners(),
                "seed {}: two maps at epoch {}",
                self.seed,
                t.epoch()
            );
        }
    }

    fn workload(&mut self) {
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        for _ in 0..2 {
            // A new call, taken by the worker serving its shard (as the edge
            // would route it); nobody serving: the INVITE is retransmitted.
            self.next_call += 1;
            let key = self.rng.random::<u64>() >> 8 << 8 | (self.next_call & 0xff);
            let call_id = format!("{key:016x}-{}", self.next_call).into_bytes();
            if let Some(id) = ids
                .iter()
                .find(|id| self.nodes[id].serves(shard_of(key, SHARDS)))
            {
                let node = self.nodes.get_mut(id).expect("node");
                // One call in five is never answered: only its record.
                if self.rng.random_bool(0.2) {
                    node.record_ended(record(&call_id, key));
                } else {
                    node.upsert(call_id, key, 1, vec![1]);
                }
            }
        }
        // An in-dialog change or a hang-up of an acknowledged call, by
        // whoever serves it now (after failover: the new owner).
        if !self.acked.is_empty() && self.rng.random_bool(0.5) {
            let i = self.rng.random_range(0..self.acked.len());
            let (call_id, (key, version)) = self
                .acked
                .iter()
                .nth(i)
                .map(|(c, &kv)| (c.clone(), kv))
                .expect("call");
            if self.removing.contains(&call_id) {
                return;
            }
            let shard = shard_of(key, SHARDS);
            if let Some(id) = ids.iter().find(|id| self.nodes[id].serves(shard)) {
                let node = self.nodes.get_mut(id).expect("node");
                if self.rng.random_bool(0.3) {
                    self.removing.insert(call_id.clone());
                    node.record_ended(record(&call_id, key));
                    node.remove(call_id, key, version + 1);
                } else {
                    node.upsert(call_id, key, version + 1, vec![2]);
                }
            }
        }
    }

    fn faults(&mut self) {
        // Crash one worker at a time (its disk survives); back later.
        if self.down.is_empty() && self.rng.random_bool(0.004) {
            let ids: Vec<u64> = self.nodes.keys().copied().collect();
            let id = ids[self.rng.random_range(0..ids.len())];
            let node = self.nodes.remove(&id).expect("node");
            self.reported.remove(&id);
            self.flush_at.remove(&id);
            let back = self.now + self.rng.random_range(20..200);
            // What its disk holds: a commit index moved since the last
            // write is lost, as on a real crash.
            self.down.insert(id, (node.store().persisted(), back));
            self.stats.crashes += 1;
        }
        let back: Vec<u64> = self
            .down
            .iter()
            .filter(|(_, (_, t))| *t <= self.now)
            .map(|(&id, _)| id)
            .collect();
        for id in back {
            let (store, _) = self.down.remove(&id).expect("down");
            let node = self.boot(id, store);
            self.nodes.insert(id, node);
        }
        // Partitions: one worker cut off both ways, or only one way.
        if self.now >= self.cut_until {
            self.cut.clear();
            if self.rng.random_bool(0.004) {
                let ids: Vec<u64> = self.nodes.keys().chain(self.down.keys()).copied().collect();
                let id = ids[self.rng.random_range(0..ids.len())];
                let oneway = self.rng.random_bool(0.5);
                for &o in ids.iter().filter(|&&o| o != id) {
                    self.cut.insert((id, o));
                    if !oneway {
                        self.cut.insert((o, id));
                    }
                }
                self.cut_until = self.now + self.rng.random_range(20..150);
                self.stats.partitions += 1;
            }
        }
    }

    fn step(&mut self, faulty: bool, load: bool) {
        self.now += 1;
        if faulty {
            self.faults();
        }
        if self.churn {
            self.membership(load);
        }
        let ids: Vec<u64> = self.nodes.keys().copied().collect();
        let now_ms = self.now * TICK_MS;
        for id in ids {
            let node = self.nodes.get_mut(&id).expect("node");
            node.tick().expect("tick");
            if self.group {
                // The replica loop's flush timer: a window opens when
                // something is queued (or a leader holds forwarded
                // proposals) and what is queued goes when it closes. Past
                // the workload (`!load`), everything goes each tick.
                let skew = self.skew.get(&id).copied().unwrap_or(id * 7 % 20);
                let wall = Duration::from_millis(now_ms + skew);
                let due = if node.deferred() {
                    Some(self.window.leader_close(wall))
                } else if node.queued() > 0 {
                    Some(self.window.close(wall, node.is_leader()))
                } else {
                    None
                };
                if let Some(d) = due {
                    let at = now_ms + d.as_millis() as u64;
                    let f = self.flush_at.entry(id).or_insert(at);
                    *f = (*f).min(at);
                }
                if !load || self.flush_at.get(&id).is_some_and(|&f| f <= now_ms) {
                    self.flush_at.remove(&id);
                    node.propose_queued().expect("propose");
                }
            }
            let out = node.take_messages();
            self.send(id, out, faulty);
        }
        self.drain_events();
        if load {
            self.workload();
        }
        self.deliver(faulty);
        self.check();
    }

    fn run(&mut self, ticks: u64) {
        let epoch0 = self.max_epoch();
        for _ in 0..ticks {
            self.step(true, true);
        }
        self.stats.failovers = self.max_epoch() - epoch0;
        // Heal: every worker back, every link up, no loss; no new calls,
        // but proposals in flight settle.
        self.cut.clear();
        for (id, (store, _)) in std::mem::take(&mut self.down) {
            let node = self.boot(id, store);
            self.nodes.insert(id, node);
        }
        for _ in 0..400 {
            self.step(false, false);
        }
        if self.churn {
            // Changes in progress finish: joiners are voters, leavers gone.
            for _ in 0..600 {
                if self.leaving.is_empty()
                    && self.joining.is_empty()
                    && self.nodes.values().all(|n| n.is_voter() && !n.changing())
                {
                    break;
                }
                self.step(false, false);
            }
            // The last joiner's shards wait out their handover.
            for _ in 0..100 {
                self.step(false, false);
            }
            let voters: Vec<u64> = self.nodes.keys().copied().collect();
            for n in self.nodes.values() {
                assert_eq!(
                    n.voters(),
                    voters,
                    "seed {}: node {} holds another configuration (leaving {:?}, joining {:?}; {:?})",
                    self.seed,
                    n.id(),
                    self.leaving,
                    self.joining,
                    self.nodes
                        .values()
                        .map(|n| (
                            n.id(),
                            n.voters(),
                            n.learners(),
                            n.table()
                                .joined()
                                .map(|j| (j.node, j.incarnation))
                                .collect::<Vec<_>>(),
                            n.table().leaving().collect::<Vec<_>>(),
                            n.status()
                        ))
                        .collect::<Vec<_>>()
                );
                assert!(
                    n.learners().is_empty(),
                    "seed {}: learners left: {:?}",
                    self.seed,
                    self.nodes.values().map(|n| n.status()).collect::<Vec<_>>()
                );
            }
            self.stats.joined = voters.iter().filter(|&&v| v > IDS.len() as u64).count() as u64;
        }
        self.settled();
        let mut ids = BTreeSet::new();
        for sink in self.sinks.values() {
            self.stats.records += sink.len() as u64;
            self.stats.retried += sink.iter().filter(|(_, r)| *r).count() as u64;
            for (rid, _) in sink {
                if !ids.insert(rid) {
                    self.stats.duplicated += 1;
                }
            }
        }
    }

    fn max_epoch(&self) -> u64 {
        self.nodes
            .values()
            .map(|n| n.table().epoch())
            .max()
            .unwrap_or(0)
    }

    fn settled(&self) {
        let seed = self.seed;
        let first = self.nodes.values().next().expect("nodes").table();
        for node in self.nodes.values() {
            let t = node.table();
            if t != first {
                let summary: Vec<String> = self
                    .nodes
                    .values()
                    .map(|n| {
                        let t = n.table();
                        format!(
                            "{:?} up {:?} calls {}",
                            n.status(),
                            t.members_up().collect::<Vec<_>>(),
                            t.call_count()
                        )
                    })
                    .collect();
                panic!("seed {seed}: replicas differ:\n{}", summary.join("\n"));
            }
            for (call_id, &(key, version)) in &self.acked {
                if self.removing.contains(call_id) {
                    continue;
                }
                let c = t.call(call_id).unwrap_or_else(|| {
                    panic!(
                        "seed {seed}: committed call {} lost on {}",
                        String::from_utf8_lossy(call_id),
                        node.id()
                    )
                });
                assert!(c.version >= version && c.key == key, "seed {seed}: {c:?}");
            }
        }
        for shard in 0..SHARDS {
            let n = self.nodes.values().filter(|n| n.serves(shard)).count();
            assert_eq!(
                n,
                1,
                "seed {seed}: shard {shard} served by {n} after healing: {:?}",
                self.nodes
                    .values()
                    .map(|n| (
                        n.status(),
                        n.table().owners()[shard],
                        n.table().members_up().collect::<Vec<_>>(),
                        n.table().leaving().collect::<Vec<_>>()
                    ))
                    .collect::<Vec<_>>()
            );
        }
        // Records: every one committed is written and confirmed; an id is
        // in two sinks only as a new owner's flagged retry.
        assert_eq!(
            first.unwritten().count(),
            0,
            "seed {seed}: records left unwritten after healing"
        );
        let mut copies: BTreeMap<&[u8], Vec<bool>> = BTreeMap::new();
        for sink in self.sinks.values() {
            for (rid, retry) in sink {
                copies.entry(rid).or_default().push(*retry);
            }
        }
        for rid in &self.recorded {
            assert!(
                copies.contains_key(rid.as_slice()),
                "seed {seed}: committed record {} written by nobody",
                String::from_utf8_lossy(rid)
            );
        }
        for (rid, c) in &copies {
            assert!(
                c.len() == 1 || c.iter().filter(|r| **r).count() >= c.len() - 1,
                "seed {seed}: record {} written {} times, not as flagged retries",
                String::from_utf8_lossy(rid),
                c.len()
            );
        }
    }
}

/// The ids whose last ask (`asked`) is 30 ticks old or more: asked again.
fn due(asked: &BTreeMap<u64, u64>, now: u64) -> Vec<u64> {
    asked
        .iter()
        .filter(|&(_, &t)| now >= t + 30)
        .map(|(&id, _)| id)
        .collect()
}

fn key_of(call_id: &[u8]) -> u64 {
    let hex = std::str::from_utf8(&call_id[..16]).expect("utf8");
    u64::from_str_radix(hex, 16).expect("hex")
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn seeded_runs_keep_every_committed_call_and_one_server_per_shard() {
    seeded(false);
}

/// The same runs while workers join (as learners, then voters) and leave
/// (drained, then removed), with crashes and partitions during changes.
#[test]
fn seeded_runs_with_joins_and_removals_keep_every_call_and_one_server_per_shard() {
    seeded(true);
}

fn seeded(churn: bool) {
    let ticks = env("SIM_TICKS", 1500);
    let seeds: Vec<u64> = match std::env::var("SIM_SEED") {
        Ok(s) => vec![s.parse().expect("SIM_SEED is a number")],
        Err(_) => (1..=env("SIM_SEEDS", 48)).collect(),
    };
    let mut total = Stats::default();
    for seed in seeds {
        let mut sim = Sim::new(seed);
        sim.churn = churn;
        if churn {
            for id in IDS {
                let node = sim.boot(id, Store::new(&IDS));
                sim.nodes.insert(id, node);
            }
        }
        sim.run(ticks);
        total.acked += sim.stats.acked;
        total.records += sim.stats.records;
        total.retried += sim.stats.retried;
        total.duplicated += sim.stats.duplicated;
        total.removed += sim.stats.removed;
        total.crashes += sim.stats.crashes;
        total.partitions += sim.stats.partitions;
        total.failovers += sim.stats.failovers;
        total.joined += sim.stats.joined;
        total.left += sim.stats.left;
        total.rejoined += sim.stats.rejoined;
    }
    eprintln!("simulation (churn: {churn}): {total:?}");
    // The runs must have exercised what they claim to.
    assert!(total.acked > 0 && total.removed > 0, "{total:?}");
    assert!(total.records > 0, "{total:?}");
    assert!(total.crashes > 0 && total.partitions > 0, "{total:?}");
    if churn {
        assert!(total.joined > 0 && total.left > 0, "{total:?}");
        assert!(total.rejoined > 0, "no voter removed while away: {total:?}");
    }
}

/// A simulation of `seed` on a faultless network after 200 ticks of
/// calls; `release`: whether its shells release the shards they lose.
fn loaded(seed: u64, release: bool) -> Sim {
    let mut sim = Sim::new(seed);
    sim.release = release;
    sim.faults = Faults {
        loss: 0.0,
        dup: 0.0,
        max_delay: 0,
    };
    for _ in 0..200 {
        sim.step(false, true);
    }
    sim
}

#[test]
fn a_killed_owners_shards_move_and_its_calls_stay_writable() {
    let mut sim = loaded(7, true);
    assert!(sim.stats.acked > 50, "{:?}", sim.stats);
    // Kill the worker serving the most acknowledged calls.
    let mut per: BTreeMap<u64, usize> = BTreeMap::new();
    for &(key, _) in sim.acked.values() {
        let owner = sim.nodes[&1].table().owner_of_key(key);
        *per.entry(owner).or_default() += 1;
    }
    let (&victim, &calls) = per.iter().max_by_key(|(_, c)| **c).expect("owner");
    let victims: Vec<(Vec<u8>, u64, u64)> = sim
        .acked
        .iter()
        .filter(|(_, (key, _))| sim.nodes[&1].table().owner_of_key(*key) == victim)
        .map(|(c, &(k, v))| (c.clone(), k, v))
        .collect();
    assert_eq!(victims.len(), calls);
    let epoch = sim.max_epoch();
    sim.nodes.remove(&victim);
    let killed_at = sim.now;
    let mut all_served = None;
    for _ in 0..200 {
        sim.step(false, false);
        let served = (0..SHARDS).all(|s| sim.nodes.values().any(|n| n.serves(s)));
        if served && all_served.is_none() {
            all_served = Some(sim.now - killed_at);
        }
    }
    let took = all_served.expect("shards served again");
    let cfg = config(1, false);
    // Declared dead dead_after after its last renewal was applied (at most
    // renew_ticks before the kill, plus a round trip), and served as soon
    // as the death commits: the leader proposed it with nothing of the
    // victim's unapplied, so the victim's lease is known to be over and
    // nobody waits out another one.
    assert!(
        took + cfg.renew_ticks >= cfg.dead_after_ticks,
        "not served before the victim could be declared dead: {took}"
    );
    assert!(
        took < cfg.dead_after_ticks + cfg.lease_ticks,
        "served without waiting out a further lease: {took}"
    );
    assert!(sim.max_epoch() > epoch);
    // Every acknowledged call of the victim is in the survivors' tables
    // and each can be updated by its new owner.
    assert!(calls > 0);
    for (call_id, key, version) in &victims {
        let shard = shard_of(*key, SHARDS);
        let owner = *sim
            .nodes
            .keys()
            .find(|id| sim.nodes[id].serves(shard))
            .expect("a server");
        assert_ne!(owner, victim);
        sim.nodes
            .get_mut(&owner)
            .unwrap()
            .upsert(call_id.clone(), *key, version + 1, vec![3]);
    }
    for _ in 0..20 {
        sim.step(false, false);
    }
    for (call_id, _, version) in &victims {
        for node in sim.nodes.values() {
            let c = node.table().call(call_id).expect("call kept");
            assert_eq!(c.version, version + 1, "updated by the new owner");
        }
    }
}

/// A drained worker's shards are served by the others a commit after it
/// released them, not a lease later; without the release, a lease later.
#[test]
fn a_drained_owners_shards_are_served_once_it_released_them() {
    let took = |release: bool| {
        let mut sim = loaded(11, release);
        let victim = 2;
        assert!(sim.nodes[&victim].status().serving_shards > 0);
        sim.nodes.get_mut(&victim).unwrap().drain();
        let (mut applied, mut served) = (None, None);
        for _ in 0..100 {
            sim.step(false, false);
            let others = |s| sim.nodes.iter().any(|(&id, n)| id != victim && n.serves(s));
            if applied.is_none() && sim.nodes[&1].table().owners().iter().all(|&o| o != victim) {
                applied = Some(sim.now);
            }
            if served.is_none() && (0..SHARDS).all(others) {
                served = Some(sim.now);
            }
        }
        served.expect("served again") - applied.expect("the drain applied")
    };
    let lease = config(1, false).lease_ticks;
    let (with, without) = (took(true), took(false));
    eprintln!("shards served {with} ticks after a drain with the release, {without} without");
    assert!(with < lease / 2, "served within a few commits: {with}");
    assert!(
        without >= lease - 2,
        "without a release, a lease: {without}"
    );
}

/// A fourth worker joins a loaded cluster of three: a learner first, a
/// voter once caught up, then owner of about a quarter of the shards,
/// moved from the others; asked to leave, it drains, is removed, and its
/// shards go back. No call is lost on the way (`settled`).
#[test]
fn a_worker_joins_then_leaves_a_running_cluster() {
    let mut sim = loaded(5, true);
    sim.churn = false;
    let before = sim.nodes[&1].table().owners().to_vec();
    sim.initial.insert(4, Vec::new());
    let node = sim.boot(4, Store::new(&[]));
    sim.nodes.insert(4, node);
    sim.nodes
        .get_mut(&2)
        .unwrap()
        .join(handover_cluster::pb::MemberJoin {
            node: 4,
            grpc: "w4:7000".into(),
            sip: "w4:5060".into(),
            incarnation: 1,
        });
    let mut learner_seen = false;
    for _ in 0..300 {
        sim.step(false, true);
        learner_seen |= sim.nodes[&1].learners() == [4];
        if sim.nodes[&4].status().serving_shards > 0 {
            break;
        }
    }
    assert!(learner_seen, "a learner before a voter");
    assert_eq!(sim.nodes[&1].voters(), [1, 2, 3, 4]);
    let after = sim.nodes[&1].table().owners().to_vec();
    let moved = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    let to_new = after.iter().filter(|&&o| o == 4).count();
    eprintln!("join: {moved} of {SHARDS} shards moved, {to_new} to the new worker");
    assert_eq!(moved, to_new, "only shards for the new worker move");
    assert!(
        (SHARDS / 4 - 1..=SHARDS / 4 + 1).contains(&to_new),
        "{to_new}"
    );
    assert!(sim.nodes[&4].status().serving_shards > 0);
    // Leave: drain, then removal by the leader.
    let node = sim.nodes.get_mut(&4).unwrap();
    node.leave(4);
    node.drain();
    for _ in 0..300 {
        sim.step(false, true);
        if sim.nodes[&1].voters() == [1, 2, 3] {
            break;
        }
    }
    assert_eq!(sim.nodes[&1].voters(), [1, 2, 3]);
    assert!(sim.nodes[&1].table().owners().iter().all(|&o| o != 4));
    assert_eq!(sim.nodes[&1].table().joined().count(), 0, "forgotten");
    sim.nodes.remove(&4);
    for _ in 0..100 {
        sim.step(false, false);
    }
    sim.settled();
}
