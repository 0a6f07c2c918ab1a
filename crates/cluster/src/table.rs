//! The replicated state machine: members, the shard map, the call table and
//! the registrar's bindings.
//!
//! Every replica applies the same commands in log order and so reaches the
//! same table; nothing here reads a clock or a random number. The shard map
//! changes only here, when a `MemberUp` or `MemberDown` is applied, so two
//! leaders can never commit two different maps for one epoch.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use prost::Message as _;

use handover_registrar::{Binding, Locations, Shared, Stored};

use crate::pb;

use stored::Leg;
pub use stored::StoredCall;

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
    /// `spare`: a leg not to hang up (see the proto).
    HangUp {
        call_id: Vec<u8>,
        key: u64,
        spare: Vec<u8>,
    },
    /// `node` released `shards`, which it lost at `epoch` (see the proto).
    Released {
        node: u64,
        epoch: u64,
        shards: Vec<u32>,
        /// The calls it handed over with them that were stored: (leg A's
        /// Call-ID, key).
        calls: Vec<(Vec<u8>, u64)>,
    },
    /// A lease renewal of `node` was committed.
    Renewed { node: u64, seq: u64 },
    /// A call's detail record was committed (first time): the member
    /// serving its shard writes it (see `CallEnded` in the proto).
    RecordEnded { id: Vec<u8>, key: u64 },
    /// Records were written (their ids): nobody writes them again.
    RecordsWritten { ids: Vec<Vec<u8>> },
    /// Reloaded settings were applied as `generation` (see
    /// [`Table::settings`]).
    Settings { generation: u64 },
    /// A worker asked to join (see [`Table::joined`]) or to leave (see
    /// [`Table::leaving`]).
    Membership { node: u64 },
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
    calls: BTreeSet<StoredCall>,
    /// Calls per shard (derived from `calls`): counts per worker without
    /// a walk of every call (`Table::calls_per_shard`).
    call_shards: Vec<usize>,
    /// `other_call_id` and `leg_call_id` -> `call_id` of the calls that
    /// have them (derived from `calls`, rebuilt on decode).
    legs: HashSet<Leg>,
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
    /// The latest reloaded settings (none: never reloaded).
    settings: Option<pb::Settings>,
    /// Members that joined at run time, by id, until removed from Raft.
    joined: BTreeMap<u64, pb::MemberJoin>,
    /// Members asked to leave, not yet removed from Raft.
    leaving: BTreeSet<u64>,
    /// Per member that joined and was removed: its incarnation then.
    removed: BTreeMap<u64, u64>,
}

/// A deep copy: the clone's locations are its own.
impl Clone for Table {
    fn clone(&self) -> Self {
        Self {
            up: self.up.clone(),
            epoch: self.epoch,
            owners: self.owners.clone(),
            calls: self.calls.clone(),
            call_shards: self.call_shards.clone(),
            legs: self.legs.clone(),
            tombs: self.tombs.clone(),
            registrations: std::sync::Arc::new(parking_lot::RwLock::new(
                self.registrations.read().clone(),
            )),
            aor_tombs: self.aor_tombs.clone(),
            records: self.records.clone(),
            written: self.written.clone(),
            settings: self.settings.clone(),
            joined: self.joined.clone(),
            leaving: self.leaving.clone(),
            removed: self.removed.clone(),
        }
    }
}

/// Equal contents (the locations compared, not their handles).
impl PartialEq for Table {
    fn eq(&self, o: &Self) -> bool {
        self.up == o.up
            && self.epoch == o.epoch
            && self.owners == o.owners
            && self.calls.len() == o.calls.len()
            && self.calls.iter().zip(&o.calls).all(|(a, b)| a.same(b))
            && self.call_shards == o.call_shards
            && self.legs.len() == o.legs.len()
            && self.legs.iter().all(|l| {
                o.legs
                    .get(l.leg())
                    .is_some_and(|m| m.call_id() == l.call_id())
            })
            && self.tombs == o.tombs
            && self.aor_tombs == o.aor_tombs
            && self.records == o.records
            && self.written == o.written
            && self.settings == o.settings
            && self.joined == o.joined
            && self.leaving == o.leaving
            && self.removed == o.removed
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
            calls: BTreeSet::new(),
            call_shards: vec![0; shards.max(1)],
            legs: HashSet::new(),
            tombs: Tombs::default(),
            registrations: Locations::shared(),
            aor_tombs: Tombs::default(),
            records: BTreeMap::new(),
            written: Tombs::default(),
            settings: None,
            joined: BTreeMap::new(),
            leaving: BTreeSet::new(),
            removed: BTreeMap::new(),
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

    pub fn call(&self, call_id: &[u8]) -> Option<&StoredCall> {
        self.calls.get(call_id)
    }

    /// The call one of whose legs has `call_id` (its id, its
    /// `other_call_id` or its `leg_call_id`): a Replaces may name any.
    pub fn call_by_leg(&self, call_id: &[u8]) -> Option<&StoredCall> {
        self.calls
            .get(call_id)
            .or_else(|| self.calls.get(self.legs.get(call_id)?.call_id()))
    }

    /// Every call, in the order of their ids.
    pub fn calls(&self) -> impl Iterator<Item = &StoredCall> {
        self.calls.iter()
    }

    /// Calls per shard (index: [`shard_of`] the call's key), kept as calls
    /// are stored and removed.
    pub fn calls_per_shard(&self) -> &[usize] {
        &self.call_shards
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
            // A member asked to leave takes no shards again.
            C::Up(m) if self.leaving.contains(&m.node) => None,
            C::Up(m) => self.member_up(m.node),
            C::Down(m) => self.member_down(m.node, m.lease_over && !m.drained),
            C::Renew(r) => Some(Change::Renewed {
                node: r.node,
                seq: r.seq,
            }),
            C::Bind(r) => Some(self.bind(r)),
            C::Hangup(h) => {
                let id = self.call_by_leg(&h.call_id)?.call_id().to_vec();
                let mut c = self.calls.take(&id[..])?;
                // Kept on the call: its owner may not hold it yet (a
                // shard in its wait), or die before it acts.
                c.set_hang_up(h.spare.clone());
                let key = c.key;
                self.calls.insert(c);
                Some(Change::HangUp {
                    call_id: id,
                    key,
                    spare: h.spare,
                })
            }
            C::Acked(a) => {
                if self
                    .calls
                    .get(&a.call_id[..])
                    .is_some_and(|c| !c.a_ok().is_empty())
                    && let Some(mut c) = self.calls.take(&a.call_id[..])
                {
                    c.acked();
                    self.calls.insert(c);
                }
                None
            }
            C::Released(r) => Some(self.released(r)),
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
            C::Join(j) => {
                // A late copy of a join whose worker was removed since.
                if j.node == 0 || self.removed.get(&j.node) == Some(&j.incarnation) {
                    return None;
                }
                let node = j.node;
                self.leaving.remove(&node);
                self.joined.insert(node, j);
                Some(Change::Membership { node })
            }
            C::Leave(l) => {
                if l.node == 0 || l.incarnation != self.incarnation(l.node) {
                    return None;
                }
                self.leaving.insert(l.node);
                Some(Change::Membership { node: l.node })
            }
            C::Settings(mut n) => {
                // A re-proposed copy of the latest is applied once.
                let last = self.settings.as_ref();
                if n.token.is_empty() || last.is_some_and(|l| l.token == n.token) {
                    return None;
                }
                n.generation = last.map_or(0, |l| l.generation).saturating_add(1);
                let generation = n.generation;
                self.settings = Some(n);
                Some(Change::Settings { generation })
            }
        }
    }

    /// The latest reloaded settings, applied by every replica alike (none:
    /// never reloaded; each worker uses what it started with).
    pub fn settings(&self) -> Option<&pb::Settings> {
        self.settings.as_ref()
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
        let rest = pb::State {
            members_up: self.up.iter().copied().collect(),
            map: Some(pb::ShardMap {
                epoch: self.epoch,
                owners: self.owners.clone(),
            }),
            calls: Vec::new(),
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
            settings: self.settings.clone(),
            joined: self.joined.values().cloned().collect(),
            leaving: self.leaving.iter().copied().collect(),
            removed: self
                .removed
                .iter()
                .map(|(&node, &incarnation)| pb::MemberJoin {
                    node,
                    incarnation,
                    ..Default::default()
                })
                .collect(),
        };
        // The calls one at a time, after the rest (a repeated field's
        // items may come anywhere): all of them as `CallUpsert`s at once
        // would be a second table, allocated at every snapshot and kept
        // by the allocator as the worker's high-water mark.
        let calls: usize = self.calls.iter().map(|c| c.stored_len() + 64).sum();
        let mut buf = Vec::with_capacity(rest.encoded_len().saturating_add(calls));
        rest.encode_raw(&mut buf);
        for c in &self.calls {
            prost::encoding::message::encode(3, &c.to_pb(), &mut buf);
        }
        buf
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
        t.calls = s.calls.into_iter().filter_map(StoredCall::new).collect();
        t.call_shards = vec![0; t.owners.len()];
        for c in &t.calls {
            t.call_shards[shard_of(c.key, t.owners.len())] += 1;
        }
        t.legs = t
            .calls
            .iter()
            .flat_map(|c| [c.other_call_id(), c.leg_call_id()].map(|l| (l, c.call_id())))
            .filter(|(l, id)| !l.is_empty() && l != id)
            .filter_map(|(l, id)| Leg::new(l, id))
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
        t.settings = s.settings;
        t.joined = s.joined.into_iter().map(|j| (j.node, j)).collect();
        t.leaving = s.leaving.into_iter().collect();
        t.removed = s
            .removed
            .into_iter()
            .map(|j| (j.node, j.incarnation))
            .collect();
        Ok(t)
    }
}

mod calls;
mod membership;
mod stored;
#[cfg(test)]
mod tests;
