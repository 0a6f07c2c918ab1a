//! Calls in the table: upserts, removals and the calls a release hands
//! over, each checked against the shard's owner at apply time.

use super::*;

impl Table {
    /// A release, and the last state of the calls handed over with it
    /// (see `MemberReleased.calls`): each stored if it belongs to a
    /// released shard, came from the releasing member, and is newer than
    /// what the table holds. The shard's new owner has not served it
    /// through this release yet, so nothing it wrote is overwritten; one
    /// that served it after a lease (the release came late) and wrote the
    /// call since holds a version this one does not beat.
    pub(super) fn released(&mut self, r: pb::MemberReleased) -> Change {
        let shards = self.shards();
        let mut calls = Vec::new();
        for u in r.calls {
            let shard = shard_of(u.key, shards);
            let released = u32::try_from(shard).is_ok_and(|s| r.shards.contains(&s));
            if !released || u.owner != r.node || u.owner == 0 || self.owners[shard] == 0 {
                continue;
            }
            if let Change::Stored { call_id, key, .. } = self.store(u, true) {
                calls.push((call_id, key));
            }
        }
        Change::Released {
            node: r.node,
            epoch: r.epoch,
            shards: r.shards,
            calls,
        }
    }

    pub(super) fn upsert(&mut self, u: pb::CallUpsert) -> Change {
        self.store(u, false)
    }

    /// `handed`: from a release, whose checks stand in for the owner's.
    fn store(&mut self, u: pb::CallUpsert, handed: bool) -> Change {
        let old = self.calls.get(&u.call_id[..]);
        let stale = old.is_some_and(|c| c.version >= u.version)
            || self.tombs.get(&u.call_id).is_some_and(|v| v >= u.version);
        // The shard's owner writes its calls. A worker that just lost the
        // shard may still confirm a call it set up before (its first
        // version, which nobody else can have written): kept, and the new
        // owner takes it over. Anything later from it is refused, so a
        // deposed owner never overwrites the new owner's state.
        let owner = self.owner_of_key(u.key);
        let handed_over = u.version == 1 && old.is_none();
        if u.owner == 0 || owner == 0 || stale || (owner != u.owner && !handed_over && !handed) {
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
        let mut u = u;
        if let Some(old) = old {
            if u.answered_unix_ms == 0 {
                u.answered_unix_ms = old.answered_unix_ms;
            }
            if u.hang_up.is_none() {
                u.hang_up = old.hang_up().map(<[u8]>::to_vec);
            }
        }
        let (call_id, owner) = (u.call_id.clone(), u.owner);
        let Some(new) = StoredCall::new(u) else {
            return Change::Refused { call_id, owner };
        };
        self.index_legs(&new);
        let key = new.key;
        if let Some(old) = self.calls.replace(new) {
            self.count_call(old.key, false);
        }
        self.count_call(key, true);
        change
    }

    /// Keeps `call_shards` in step with `calls`.
    fn count_call(&mut self, key: u64, add: bool) {
        let n = self.owners.len();
        if let Some(c) = self.call_shards.get_mut(shard_of(key, n)) {
            *c = if add { *c + 1 } else { c.saturating_sub(1) };
        }
    }

    /// Keeps `legs` in step with an upsert (a local transfer may give a
    /// call a new other leg).
    fn index_legs(&mut self, new: &StoredCall) {
        let legs = [new.other_call_id(), new.leg_call_id()];
        if let Some(old) = self.calls.get(new.call_id()) {
            for l in [old.other_call_id(), old.leg_call_id()] {
                if !legs.contains(&l) {
                    self.legs.remove(l);
                }
            }
        }
        for l in legs {
            if !l.is_empty()
                && l != new.call_id()
                && let Some(leg) = Leg::new(l, new.call_id())
            {
                self.legs.replace(leg);
            }
        }
    }

    /// A removal is final, whoever proposed it: a worker removes a call
    /// only once it has sent its BYEs (a hang-up relayed, a timeout, the
    /// maximum age), so its phones are gone. A deposed owner's removal (it
    /// relayed a BYE while cut off, its lease still running, and proposes
    /// the removal again once the partition heals) is applied too, and the
    /// current owner, which adopted a call that is over, forgets it
    /// (`Event::Ended`). Unlike an upsert it cannot overwrite live state.
    pub(super) fn remove(&mut self, r: pb::CallRemove) -> Change {
        if r.owner == 0 {
            return Change::Refused {
                call_id: r.call_id,
                owner: r.owner,
            };
        }
        if let Some(old) = self.calls.take(&r.call_id[..]) {
            self.count_call(old.key, false);
            self.legs.remove(old.other_call_id());
            self.legs.remove(old.leg_call_id());
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
}
