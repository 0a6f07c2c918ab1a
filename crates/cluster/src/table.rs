//! The replicated state machine: members, the shard map, the call table and
//! the registrar's bindings.
//!
//! Every replica applies the same commands in log order and so reaches the
//! same table; nothing here reads a clock or a random number. The shard map
//! changes only here, when a `MemberUp` or `MemberDown` is applied, so two
//! leaders can never commit two different maps for one epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use prost::Message as _;

use handover_registrar::{Binding, Locations, Shared, Stored};

use crate::pb;

/// Removed calls remembered so a late duplicate of an older upsert (a
/// proposal re-sent after a leader change) cannot bring a call back.
const TOMBSTONES: usize = 65_536;

pub use handover_sip::ids::shard_of;

/// One shard changing hands at an epoch (`from` or `to` 0: nobody).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub shard: usize,
    pub from: u64,
    pub to: u64,
    /// `from`'s lease is known to be over (a death the leader proposed
    /// with nothing of `from`'s left unapplied: `MemberDown.lease_over`),
    /// so `to` need not wait one out.
    pub lease_over: bool,
}

/// What applying one command changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// A call record was stored at `version` (proposed by `owner`; its
    /// shard's owner now may be another, see `upsert`).
    Stored {
        call_id: Vec<u8>,
        version: u64,
        key: u64,
        owner: u64,
    },
    /// A call was removed, by `owner` (its proposer, who may no longer own
    /// the shard of `key`: see `remove`).
    Removed {
        call_id: Vec<u8>,
        key: u64,
        owner: u64,
    },
    /// An upsert or remove changed nothing: its proposer did not own the
    /// call's shard at apply time, or the table already held that version.
    Refused { call_id: Vec<u8>, owner: u64 },
    /// The map moved to a new epoch.
    Map { epoch: u64, moves: Vec<Move> },
    /// An operator asked to end the call (`call_id`: leg A's).
    HangUp { call_id: Vec<u8>, key: u64 },
    /// `node` released `shards`, which it lost at `epoch` (see the proto).
    Released {
        node: u64,
        epoch: u64,
        shards: Vec<u32>,
    },
    /// A lease renewal of `node` was committed.
    Renewed { node: u64, seq: u64 },
    /// A call's detail record was committed (first time): the member
    /// serving its shard writes it (see `CallEnded` in the proto).
    RecordEnded { id: Vec<u8>, key: u64 },
    /// Records were written (their ids): nobody writes them again.
    RecordsWritten { ids: Vec<Vec<u8>> },
    /// An AOR's bindings were written (`stored`), or the write was refused
    /// (its proposer did not own the shard, or the version was old).
    Bound {
        aor: Vec<u8>,
        key: u64,
        version: u64,
        owner: u64,
        stored: bool,
    },
}

/// Versions of removed records, the oldest forgotten first past a bound.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Tombs {
    order: VecDeque<Vec<u8>>,
    versions: HashMap<Vec<u8>, u64>,
}

impl Tombs {
    fn get(&self, id: &[u8]) -> Option<u64> {
        self.versions.get(id).copied()
    }

    fn put(&mut self, id: Vec<u8>, version: u64) {
        if self.versions.insert(id.clone(), version).is_none() {
            self.order.push_back(id);
        }
        while self.order.len() > TOMBSTONES {
            if let Some(old) = self.order.pop_front() {
                self.versions.remove(&old);
            }
        }
    }

    fn encode(&self) -> Vec<pb::Tombstone> {
        self.order
            .iter()
            .map(|id| pb::Tombstone {
                call_id: id.clone(),
                version: self.versions[id],
            })
            .collect()
    }
}

/// See the module docs.
#[derive(Debug)]
pub struct Table {
    up: BTreeSet<u64>,
    epoch: u64,
    owners: Vec<u64>,
    calls: BTreeMap<Vec<u8>, pb::CallUpsert>,
    /// `other_call_id` -> `call_id` of the calls that have one (derived
    /// from `calls`, rebuilt on decode).
    legs: HashMap<Vec<u8>, Vec<u8>>,
    tombs: Tombs,
    /// AOR -> its bindings.
    /// Every AOR's bindings: the worker's one copy, shared with its
    /// registrar (`handover_registrar::locations`).
    registrations: Shared,
    aor_tombs: Tombs,
    /// Call detail records committed and not yet written, by id, with
    /// the member that owned their shard when they were applied.
    records: BTreeMap<Vec<u8>, (pb::CallEnded, u64)>,
    /// Ids of records written (version 0), so a re-proposed CallEnded is
    /// not written again.
    written: Tombs,
}

/// A deep copy: the clone's locations are its own.
impl Clone for Table {
    fn clone(&self) -> Self {
        Self {
            up: self.up.clone(),
            epoch: self.epoch,
            owners: self.owners.clone(),
            calls: self.calls.clone(),
            legs: self.legs.clone(),
            tombs: self.tombs.clone(),
            registrations: std::sync::Arc::new(parking_lot::RwLock::new(
                self.registrations.read().clone(),
            )),
            aor_tombs: self.aor_tombs.clone(),
            records: self.records.clone(),
            written: self.written.clone(),
        }
    }
}

/// Equal contents (the locations compared, not their handles).
impl PartialEq for Table {
    fn eq(&self, o: &Self) -> bool {
        self.up == o.up
            && self.epoch == o.epoch
            && self.owners == o.owners
            && self.calls == o.calls
            && self.legs == o.legs
            && self.tombs == o.tombs
            && self.aor_tombs == o.aor_tombs
            && self.records == o.records
            && self.written == o.written
            && *self.registrations.read() == *o.registrations.read()
    }
}

impl Eq for Table {}

/// A binding as the table stores it.
pub fn binding(b: &pb::Binding) -> Binding {
    Binding {
        contact: b.contact.as_slice().into(),
        flow: b.flow.parse().ok(),
        expires_ms: b.expires_ms,
        call_id_hash: b.call_id_hash,
        cseq: b.cseq,
        q: u16::try_from(b.q.min(1000)).unwrap_or(1000),
        path: b.path.iter().map(|p| p.as_slice().into()).collect(),
        edge: b.edge.parse().ok(),
    }
}

/// A binding as a command carries it.
pub fn binding_pb(b: &Binding) -> pb::Binding {
    pb::Binding {
        contact: b.contact.to_vec(),
        flow: b.flow.map(|f| f.to_string()).unwrap_or_default(),
        expires_ms: b.expires_ms,
        q: u32::from(b.q),
        call_id_hash: b.call_id_hash,
        cseq: b.cseq,
        path: b.path.iter().map(|p| p.to_vec()).collect(),
        edge: b.edge.map(|e| e.to_string()).unwrap_or_default(),
    }
}

fn registration_pb(key: u64, s: &Stored) -> pb::Registration {
    pb::Registration {
        aor: s.aor.to_vec(),
        key,
        version: s.version,
        owner: 0,
        bindings: s.bindings.iter().map(binding_pb).collect(),
    }
}

impl Table {
    pub fn new(shards: usize) -> Self {
        Self {
            up: BTreeSet::new(),
            epoch: 0,
            owners: vec![0; shards.max(1)],
            calls: BTreeMap::new(),
            legs: HashMap::new(),
            tombs: Tombs::default(),
            registrations: Locations::shared(),
            aor_tombs: Tombs::default(),
            records: BTreeMap::new(),
            written: Tombs::default(),
        }
    }

    pub fn shards(&self) -> usize {
        self.owners.len()
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// shard -> owner (0: none) at [`Self::epoch`].
    pub fn owners(&self) -> &[u64] {
        &self.owners
    }

    pub fn owner_of_key(&self, key: u64) -> u64 {
        self.owners[shard_of(key, self.shards())]
    }

    pub fn members_up(&self) -> impl Iterator<Item = u64> + '_ {
        self.up.iter().copied()
    }

    pub fn is_up(&self, node: u64) -> bool {
        self.up.contains(&node)
    }

    pub fn call(&self, call_id: &[u8]) -> Option<&pb::CallUpsert> {
        self.calls.get(call_id)
    }

    /// The call one of whose legs has `call_id` (its own, or its
    /// `other_call_id`): a Replaces may name either.
    pub fn call_by_leg(&self, call_id: &[u8]) -> Option<&pb::CallUpsert> {
        self.calls
            .get(call_id)
            .or_else(|| self.calls.get(self.legs.get(call_id)?))
    }

    pub fn calls(&self) -> impl Iterator<Item = &pb::CallUpsert> {
        self.calls.values()
    }

    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// An AOR's bindings as last written (expired ones included: readers
    /// compare `expires_ms` with their clock).
    pub fn registration(&self, key: u64, aor: &[u8]) -> Option<pb::Registration> {
        self.registrations
            .read()
            .get(key, aor)
            .map(|s| registration_pb(key, s))
    }

    /// The locations (shared: see [`Table::with_locations`]).
    pub fn locations(&self) -> &Shared {
        &self.registrations
    }

    /// A fresh table that keeps its AORs in `locations` (emptied first):
    /// the registrar of the same worker reads them there.
    pub fn with_locations(shards: usize, locations: Shared) -> Self {
        locations.write().clear();
        Self {
            registrations: locations,
            ..Self::new(shards)
        }
    }

    /// Applies one command; returns what it changed, if anything.
    pub fn apply(&mut self, cmd: pb::command::Command) -> Option<Change> {
        use pb::command::Command as C;
        match cmd {
            C::Upsert(u) => Some(self.upsert(u)),
            C::Remove(r) => Some(self.remove(r)),
            C::Up(m) => self.member_up(m.node),
            C::Down(m) => self.member_down(m.node, m.lease_over && !m.drained),
            C::Renew(r) => Some(Change::Renewed {
                node: r.node,
                seq: r.seq,
            }),
            C::Bind(r) => Some(self.bind(r)),
            C::Hangup(h) => {
                let c = self.call_by_leg(&h.call_id)?;
                Some(Change::HangUp {
                    call_id: c.call_id.clone(),
                    key: c.key,
                })
            }
            C::Acked(a) => {
                if let Some(c) = self.calls.get_mut(&a.call_id) {
                    c.a_ok = Vec::new();
                }
                None
            }
            C::Released(r) => Some(Change::Released {
                node: r.node,
                epoch: r.epoch,
                shards: r.shards,
            }),
            C::Ended(e) => {
                let r = e.record.as_ref()?;
                let id = r.detail.as_ref()?.id.clone();
                if id.is_empty()
                    || self.records.contains_key(&id)
                    || self.written.get(&id).is_some()
                {
                    return None;
                }
                let key = r.key;
                let writer = self.owner_of_key(key);
                self.records.insert(id.clone(), (e, writer));
                Some(Change::RecordEnded { id, key })
            }
            C::Written(w) => {
                let mut ids = Vec::new();
                for id in w.ids {
                    if self.records.remove(&id).is_some() {
                        self.written.put(id.clone(), 0);
                        ids.push(id);
                    }
                }
                Some(Change::RecordsWritten { ids })
            }
        }
    }

    /// A record committed and not yet written, with the member that owned
    /// its shard when it was applied.
    pub fn record(&self, id: &[u8]) -> Option<&(pb::CallEnded, u64)> {
        self.records.get(id)
    }

    /// Records committed and not yet written: (id, key).
    pub fn unwritten(&self) -> impl Iterator<Item = (&[u8], u64)> {
        self.records
            .iter()
            .map(|(id, (e, _))| (id.as_slice(), e.record.as_ref().map_or(0, |r| r.key)))
    }

    /// Only the shard's owner writes an AOR (no hand-over exception as for
    /// calls: a registration's first write is no different from its next).
    fn bind(&mut self, r: pb::Registration) -> Change {
        let stale = self
            .registrations
            .read()
            .get(r.key, &r.aor)
            .is_some_and(|x| x.version >= r.version)
            || self.aor_tombs.get(&r.aor).is_some_and(|v| v >= r.version);
        let (version, owner) = (r.version, r.owner);
        let stored = owner != 0 && self.owner_of_key(r.key) == owner && !stale;
        if stored {
            if r.bindings.is_empty() {
                self.aor_tombs.put(r.aor.clone(), r.version);
            }
            // (A tombstone of an AOR written again stays: it is older.)
            let bindings = r.bindings.iter().map(binding).collect();
            self.registrations
                .write()
                .put(r.key, &r.aor, r.version, bindings);
        }
        Change::Bound {
            aor: r.aor,
            key: r.key,
            version,
            owner,
            stored,
        }
    }

    fn upsert(&mut self, u: pb::CallUpsert) -> Change {
        let stale = self
            .calls
            .get(&u.call_id)
            .is_some_and(|c| c.version >= u.version)
            || self.tombs.get(&u.call_id).is_some_and(|v| v >= u.version);
        // The shard's owner writes its calls. A worker that just lost the
        // shard may still confirm a call it set up before (its first
        // version, which nobody else can have written): kept, and the new
        // owner takes it over. Anything later from it is refused, so a
        // deposed owner never overwrites the new owner's state.
        let owner = self.owner_of_key(u.key);
        let handed_over = u.version == 1 && !self.calls.contains_key(&u.call_id);
        if u.owner == 0 || owner == 0 || stale || (owner != u.owner && !handed_over) {
            return Change::Refused {
                call_id: u.call_id,
                owner: u.owner,
            };
        }
        let change = Change::Stored {
            call_id: u.call_id.clone(),
            version: u.version,
            key: u.key,
            owner: u.owner,
        };
        self.index_legs(&u);
        let mut u = u;
        if u.answered_unix_ms == 0
            && let Some(old) = self.calls.get(&u.call_id)
        {
            u.answered_unix_ms = old.answered_unix_ms;
        }
        self.calls.insert(u.call_id.clone(), u);
        change
    }

    /// Keeps `legs` in step with an upsert (a local transfer may give a
    /// call a new other leg).
    fn index_legs(&mut self, u: &pb::CallUpsert) {
        if let Some(old) = self.calls.get(&u.call_id)
            && old.other_call_id != u.other_call_id
        {
            self.legs.remove(&old.other_call_id);
        }
        if !u.other_call_id.is_empty() {
            self.legs.insert(u.other_call_id.clone(), u.call_id.clone());
        }
    }

    /// A removal is final, whoever proposed it: a worker removes a call
    /// only once it has sent its BYEs (a hang-up relayed, a timeout, the
    /// maximum age), so its phones are gone. A deposed owner's removal (it
    /// relayed a BYE while cut off, its lease still running, and proposes
    /// the removal again once the partition heals) is applied too, and the
    /// current owner, which adopted a call that is over, forgets it
    /// (`Event::Ended`). Unlike an upsert it cannot overwrite live state.
    fn remove(&mut self, r: pb::CallRemove) -> Change {
        if r.owner == 0 {
            return Change::Refused {
                call_id: r.call_id,
                owner: r.owner,
            };
        }
        if let Some(old) = self.calls.remove(&r.call_id) {
            self.legs.remove(&old.other_call_id);
        }
        let v = self
            .tombs
            .get(&r.call_id)
            .map_or(r.version, |v| v.max(r.version));
        self.tombs.put(r.call_id.clone(), v);
        Change::Removed {
            call_id: r.call_id,
            key: r.key,
            owner: r.owner,
        }
    }

    fn loads(&self) -> BTreeMap<u64, usize> {
        let mut loads: BTreeMap<u64, usize> = self.up.iter().map(|&n| (n, 0)).collect();
        for o in &self.owners {
            if let Some(n) = loads.get_mut(o) {
                *n += 1;
            }
        }
        loads
    }

    /// The member with the fewest shards (ties: the lowest id).
    fn least_loaded(loads: &BTreeMap<u64, usize>) -> Option<u64> {
        loads.iter().min_by_key(|&(&n, &c)| (c, n)).map(|(&n, _)| n)
    }

    /// Gives every unowned shard to the least loaded member.
    fn fill(&mut self, moves: &mut Vec<Move>) {
        let mut loads = self.loads();
        for shard in 0..self.owners.len() {
            if self.owners[shard] != 0 {
                continue;
            }
            let Some(to) = Self::least_loaded(&loads) else {
                return;
            };
            *loads.entry(to).or_default() += 1;
            self.owners[shard] = to;
            moves.push(Move {
                shard,
                from: 0,
                to,
                lease_over: false,
            });
        }
    }

    fn member_up(&mut self, node: u64) -> Option<Change> {
        if node == 0 || !self.up.insert(node) {
            return None;
        }
        let mut moves = Vec::new();
        self.fill(&mut moves);
        // Rebalance: the newcomer takes shards, one at a time, from the most
        // loaded member until it has its fair share. Few shards move, and
        // each moves once.
        let target = self.owners.len() / self.up.len();
        let mut loads = self.loads();
        while loads[&node] < target {
            let Some((&from, _)) = loads
                .iter()
                .filter(|&(&n, _)| n != node)
                .max_by_key(|&(&n, &c)| (c, std::cmp::Reverse(n)))
            else {
                break;
            };
            let Some(shard) = (0..self.owners.len())
                .rev()
                .find(|&s| self.owners[s] == from)
            else {
                break;
            };
            self.owners[shard] = node;
            *loads.get_mut(&from).expect("member") -= 1;
            *loads.get_mut(&node).expect("member") += 1;
            moves.push(Move {
                shard,
                from,
                to: node,
                lease_over: false,
            });
        }
        Some(self.new_epoch(moves))
    }

    fn member_down(&mut self, node: u64, lease_over: bool) -> Option<Change> {
        if !self.up.remove(&node) {
            return None;
        }
        let mut moves = Vec::new();
        for o in self.owners.iter_mut().filter(|o| **o == node) {
            *o = 0;
        }
        self.fill(&mut moves);
        for m in &mut moves {
            m.from = node;
            m.lease_over = lease_over;
        }
        // With nobody left up, the shards stay unowned (moves to 0).
        if self.up.is_empty() {
            moves.extend(
                (0..self.owners.len())
                    .filter(|&s| self.owners[s] == 0)
                    .map(|shard| Move {
                        shard,
                        from: node,
                        to: 0,
                        lease_over,
                    }),
            );
        }
        Some(self.new_epoch(moves))
    }

    fn new_epoch(&mut self, moves: Vec<Move>) -> Change {
        self.epoch += 1;
        Change::Map {
            epoch: self.epoch,
            moves,
        }
    }

    /// The table as a snapshot's data.
    pub fn encode(&self) -> Vec<u8> {
        pb::State {
            members_up: self.up.iter().copied().collect(),
            map: Some(pb::ShardMap {
                epoch: self.epoch,
                owners: self.owners.clone(),
            }),
            calls: self.calls.values().cloned().collect(),
            tombstones: self.tombs.encode(),
            registrations: self
                .registrations
                .read()
                .iter()
                .map(|(k, s)| registration_pb(k, s))
                .collect(),
            aor_tombstones: self.aor_tombs.encode(),
            records: self
                .records
                .values()
                .map(|(e, w)| pb::UnwrittenRecord {
                    ended: Some(e.clone()),
                    writer: *w,
                })
                .collect(),
            written: self.written.order.iter().cloned().collect(),
        }
        .encode_to_vec()
    }

    /// A table from a snapshot's data (empty data: a fresh table).
    pub fn decode(data: &[u8], shards: usize) -> Result<Self, prost::DecodeError> {
        Self::decode_with(data, shards, Locations::shared())
    }

    /// [`Table::decode`] keeping the AORs in `locations` (see
    /// [`Table::with_locations`]).
    pub fn decode_with(
        data: &[u8],
        shards: usize,
        locations: Shared,
    ) -> Result<Self, prost::DecodeError> {
        let s = if data.is_empty() {
            None
        } else {
            Some(pb::State::decode(data)?)
        };
        let mut t = Self::with_locations(shards, locations);
        let Some(s) = s else {
            return Ok(t);
        };
        t.up = s.members_up.into_iter().collect();
        if let Some(map) = s.map {
            t.epoch = map.epoch;
            if !map.owners.is_empty() {
                t.owners = map.owners;
            }
        }
        t.calls = s
            .calls
            .into_iter()
            .map(|c| (c.call_id.clone(), c))
            .collect();
        t.legs = t
            .calls
            .values()
            .filter(|c| !c.other_call_id.is_empty())
            .map(|c| (c.other_call_id.clone(), c.call_id.clone()))
            .collect();
        for tomb in s.tombstones {
            t.tombs.put(tomb.call_id, tomb.version);
        }
        {
            let mut l = t.registrations.write();
            for r in s.registrations {
                l.put(
                    r.key,
                    &r.aor,
                    r.version,
                    r.bindings.iter().map(binding).collect(),
                );
            }
        }
        for tomb in s.aor_tombstones {
            t.aor_tombs.put(tomb.call_id, tomb.version);
        }
        for r in s.records {
            let Some(e) = r.ended else { continue };
            let Some(id) = e
                .record
                .as_ref()
                .and_then(|r| r.detail.as_ref())
                .map(|d| d.id.clone())
            else {
                continue;
            };
            t.records.insert(id, (e, r.writer));
        }
        for id in s.written {
            t.written.put(id, 0);
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::command::Command as C;

    #[test]
    fn a_call_is_found_by_either_legs_call_id_through_changes_and_snapshots() {
        let mut t = Table::new(4);
        up(&mut t, 1);
        let put = |t: &mut Table, other: &[u8], version: u64| {
            t.apply(C::Upsert(pb::CallUpsert {
                call_id: b"a".to_vec(),
                key: 0,
                version,
                owner: 1,
                record: vec![],
                other_call_id: other.to_vec(),
                a_ok: vec![],
                answered_unix_ms: 0,
            }))
        };
        put(&mut t, b"b", 1);
        assert_eq!(t.call_by_leg(b"a").map(|c| c.version), Some(1));
        assert_eq!(t.call_by_leg(b"b").map(|c| c.version), Some(1));
        // A local transfer gave the call a new other leg.
        put(&mut t, b"b2", 2);
        assert!(t.call_by_leg(b"b").is_none());
        assert_eq!(t.call_by_leg(b"b2").map(|c| c.version), Some(2));
        let back = Table::decode(&t.encode(), 4).unwrap();
        assert_eq!(back, t, "the index is rebuilt from a snapshot");
        t.apply(C::Remove(pb::CallRemove {
            call_id: b"a".to_vec(),
            key: 0,
            version: 3,
            owner: 1,
        }));
        assert!(t.call_by_leg(b"b2").is_none() && t.call_by_leg(b"a").is_none());
    }

    fn up(t: &mut Table, n: u64) -> Vec<Move> {
        match t.apply(C::Up(pb::MemberUp { node: n })) {
            Some(Change::Map { moves, .. }) => moves,
            other => panic!("{other:?}"),
        }
    }

    fn count(t: &Table, n: u64) -> usize {
        t.owners().iter().filter(|&&o| o == n).count()
    }

    #[test]
    fn members_share_the_shards_and_a_dead_members_shards_spread_over_the_rest() {
        let mut t = Table::new(64);
        assert_eq!(up(&mut t, 1).len(), 64);
        assert_eq!(up(&mut t, 2).len(), 32);
        assert_eq!(up(&mut t, 3).len(), 21);
        assert_eq!((count(&t, 1), count(&t, 2), count(&t, 3)), (21, 22, 21));
        assert_eq!(t.epoch(), 3);
        let Some(Change::Map { epoch, moves }) = t.apply(C::Down(pb::MemberDown {
            node: 2,
            drained: false,
            lease_over: true,
        })) else {
            panic!()
        };
        assert_eq!((epoch, moves.len()), (4, 22));
        assert!(moves.iter().all(|m| m.from == 2 && m.to != 2 && m.to != 0));
        // A death the leader knows is past its lease: served at once.
        assert!(moves.iter().all(|m| m.lease_over));
        assert_eq!(count(&t, 1) + count(&t, 3), 64);
        assert!(count(&t, 1).abs_diff(count(&t, 3)) <= 1);
        // Up twice, down twice: no new epoch.
        assert_eq!(t.apply(C::Up(pb::MemberUp { node: 1 })), None);
        assert_eq!(
            t.apply(C::Down(pb::MemberDown {
                node: 2,
                drained: true,
                lease_over: true,
            })),
            None
        );
    }

    #[test]
    fn an_operators_hangup_names_the_call_by_either_leg() {
        let mut t = Table::new(4);
        up(&mut t, 1);
        t.apply(C::Upsert(pb::CallUpsert {
            call_id: b"a".to_vec(),
            key: 7,
            version: 1,
            owner: 1,
            other_call_id: b"b".to_vec(),
            ..Default::default()
        }));
        for leg in [&b"a"[..], b"b"] {
            assert_eq!(
                t.apply(C::Hangup(pb::CallHangup {
                    call_id: leg.to_vec()
                })),
                Some(Change::HangUp {
                    call_id: b"a".to_vec(),
                    key: 7
                })
            );
        }
        assert_eq!(
            t.apply(C::Hangup(pb::CallHangup {
                call_id: b"x".to_vec()
            })),
            None
        );
        assert_eq!(t.call_count(), 1, "the owner's BYEs and removal end it");
    }

    #[test]
    fn a_record_is_kept_until_written_and_never_taken_twice() {
        let ended = |id: &[u8]| {
            C::Ended(pb::CallEnded {
                record: Some(pb::CallDetail {
                    detail: Some(pb::Detail {
                        id: id.to_vec(),
                        ..Default::default()
                    }),
                    key: 7,
                    ..Default::default()
                }),
            })
        };
        let mut t = Table::new(4);
        up(&mut t, 1);
        assert_eq!(
            t.apply(ended(b"r1")),
            Some(Change::RecordEnded {
                id: b"r1".to_vec(),
                key: 7
            })
        );
        // Its writer: the shard's owner when it was applied.
        assert_eq!(t.record(b"r1").map(|r| r.1), Some(1));
        // A re-proposed copy changes nothing.
        assert_eq!(t.apply(ended(b"r1")), None);
        // Kept across a snapshot until written.
        let back = Table::decode(&t.encode(), 4).unwrap();
        assert_eq!(back, t);
        assert_eq!(back.unwritten().count(), 1);
        t.apply(C::Written(pb::RecordsWritten {
            ids: vec![b"r1".to_vec()],
        }));
        assert_eq!(t.unwritten().count(), 0);
        // A copy proposed again after it was written is not taken.
        assert_eq!(t.apply(ended(b"r1")), None);
        let back = Table::decode(&t.encode(), 4).unwrap();
        assert_eq!(back, t);
        // A record without an id is none.
        assert_eq!(t.apply(ended(b"")), None);
    }

    #[test]
    fn the_callers_ack_drops_the_2xx_kept_for_a_new_owner() {
        let mut t = Table::new(4);
        up(&mut t, 1);
        t.apply(C::Upsert(pb::CallUpsert {
            call_id: b"a".to_vec(),
            version: 1,
            owner: 1,
            record: vec![1],
            a_ok: b"SIP/2.0 200 OK\r\n".to_vec(),
            ..Default::default()
        }));
        let back = Table::decode(&t.encode(), 4).unwrap();
        assert_eq!(back.call(b"a").unwrap().a_ok, b"SIP/2.0 200 OK\r\n");
        // By any worker (the call's may have lost the shard meanwhile).
        assert_eq!(
            t.apply(C::Acked(pb::CallAcked {
                call_id: b"a".to_vec()
            })),
            None
        );
        let c = t.call(b"a").unwrap();
        assert!(c.a_ok.is_empty());
        assert_eq!((c.version, c.record.as_slice()), (1, &[1][..]));
        // An ACK of a call not held changes nothing.
        t.apply(C::Acked(pb::CallAcked {
            call_id: b"x".to_vec(),
        }));
        assert_eq!(t.call_count(), 1);
    }

    #[test]
    fn only_the_shards_owner_writes_and_old_versions_never_return() {
        let mut t = Table::new(4);
        up(&mut t, 7);
        let call = |version, owner| pb::CallUpsert {
            call_id: b"c1".to_vec(),
            key: 5,
            version,
            owner,
            record: vec![version as u8],
            other_call_id: Vec::new(),
            a_ok: Vec::new(),
            answered_unix_ms: 0,
        };
        assert!(matches!(
            t.apply(C::Upsert(call(2, 8))),
            Some(Change::Refused { .. })
        ));
        assert!(matches!(
            t.apply(C::Upsert(call(2, 7))),
            Some(Change::Stored { .. })
        ));
        // A previous owner's first version of a call nobody wrote is kept.
        let mut late = call(1, 8);
        late.call_id = b"c2".to_vec();
        assert!(matches!(
            t.apply(C::Upsert(late.clone())),
            Some(Change::Stored { owner: 8, .. })
        ));
        late.version = 2;
        assert!(matches!(
            t.apply(C::Upsert(late)),
            Some(Change::Refused { .. })
        ));
        t.apply(C::Remove(pb::CallRemove {
            call_id: b"c2".to_vec(),
            key: 5,
            version: 3,
            owner: 7,
        }));
        assert!(matches!(
            t.apply(C::Upsert(call(1, 7))),
            Some(Change::Refused { .. })
        ));
        t.apply(C::Remove(pb::CallRemove {
            call_id: b"c1".to_vec(),
            key: 5,
            version: 2,
            owner: 7,
        }));
        assert!(matches!(
            t.apply(C::Upsert(call(2, 7))),
            Some(Change::Refused { .. })
        ));
        assert_eq!(t.call_count(), 0);
        assert!(matches!(
            t.apply(C::Upsert(call(3, 7))),
            Some(Change::Stored { .. })
        ));
        let back = Table::decode(&t.encode(), 4).unwrap();
        assert_eq!(back, t);
    }

    #[test]
    fn a_binding_keeps_its_flow_and_the_edge_holding_it_through_a_command() {
        let b = Binding {
            contact: b"sip:carol@192.168.1.20:5060".as_slice().into(),
            flow: "tcp:203.0.113.7:40000".parse().ok(),
            edge: "10.8.0.5:5060".parse().ok(),
            expires_ms: 9,
            call_id_hash: 3,
            cseq: 2,
            q: 500,
            path: Box::new([]),
        };
        assert_eq!(binding(&binding_pb(&b)), b);
        let old = Binding { edge: None, ..b };
        let pb = binding_pb(&old);
        assert!(pb.edge.is_empty(), "an edge-less binding writes no edge");
        assert_eq!(binding(&pb), old);
    }

    #[test]
    fn only_the_aors_owner_binds_and_a_removed_aor_does_not_return_from_an_old_write() {
        let mut t = Table::new(4);
        up(&mut t, 7);
        let reg = |version, owner, n: usize| pb::Registration {
            aor: b"alice@example.com".to_vec(),
            key: 5,
            version,
            owner,
            bindings: (0..n)
                .map(|i| pb::Binding {
                    contact: format!("sip:alice@10.0.0.{i}").into_bytes(),
                    flow: "192.0.2.9:5060".into(),
                    expires_ms: 1_000,
                    q: 1000,
                    call_id_hash: 1,
                    cseq: 1,
                    path: vec![],
                    edge: String::new(),
                })
                .collect(),
        };
        let stored = |c: Option<Change>| matches!(c, Some(Change::Bound { stored: true, .. }));
        assert!(!stored(t.apply(C::Bind(reg(1, 8, 1)))), "not the owner");
        assert!(stored(t.apply(C::Bind(reg(1, 7, 2)))));
        assert_eq!(
            t.registration(5, b"alice@example.com")
                .unwrap()
                .bindings
                .len(),
            2
        );
        assert!(!stored(t.apply(C::Bind(reg(1, 7, 1)))), "an old version");
        assert!(stored(t.apply(C::Bind(reg(2, 7, 0)))), "removed");
        assert!(t.registration(5, b"alice@example.com").is_none());
        let back = Table::decode(&t.encode(), 4).unwrap();
        assert_eq!(back, t);
        let mut back = back;
        assert!(
            !stored(back.apply(C::Bind(reg(2, 7, 1)))),
            "a duplicate of an old write after a snapshot"
        );
        assert!(stored(back.apply(C::Bind(reg(3, 7, 1)))));
        assert_eq!(back.locations().read().aors(), 1);
    }
}
