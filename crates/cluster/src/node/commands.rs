//! What the shell asks the cluster for: call records, removals,
//! registrations, hang-ups, releases and drains, queued for the next
//! proposal (see [`Node::propose_queued`]).

use super::*;

impl Node {
    /// Replicates a call record; [`Event::Committed`] follows once applied.
    pub fn upsert(&mut self, call_id: Vec<u8>, key: u64, version: u64, record: Vec<u8>) {
        self.upsert_call(pb::CallUpsert {
            call_id,
            key,
            version,
            record,
            ..Default::default()
        });
    }

    /// [`Node::upsert`] with all a record carries: the call's other leg's
    /// Call-ID, so that [`Table::call_by_leg`] finds it by either, A's
    /// unacknowledged 2xx, the answer time. Its owner is this worker.
    pub fn upsert_call(&mut self, mut upsert: pb::CallUpsert) {
        upsert.owner = self.cfg.id;
        // Coalesced: a newer record of a call whose older one still waits
        // to be proposed takes its place (a request flood inside one call
        // writes one record per batch, not one per request). Its commit
        // answers whoever waited for the older one.
        for c in self.queued.iter_mut().rev() {
            match &mut c.command {
                Some(pb::command::Command::Upsert(q)) if q.call_id == upsert.call_id => {
                    if q.version < upsert.version {
                        *q = upsert;
                        self.coalesced += 1;
                        return;
                    }
                    break;
                }
                Some(pb::command::Command::Remove(r)) if r.call_id == upsert.call_id => break,
                _ => {}
            }
        }
        self.queue(pb::command::Command::Upsert(upsert));
    }

    /// Call records replaced by a newer one before they were proposed.
    pub fn coalesced(&self) -> u64 {
        self.coalesced
    }

    /// Forgets a call that ended.
    pub fn remove(&mut self, call_id: Vec<u8>, key: u64, version: u64) {
        self.queue(pb::command::Command::Remove(pb::CallRemove {
            call_id,
            key,
            version,
            owner: self.cfg.id,
        }));
    }

    /// Writes an AOR's bindings (the whole set; `owner` is set here).
    pub fn bind(&mut self, mut registration: pb::Registration) {
        registration.owner = self.cfg.id;
        self.queue(pb::command::Command::Bind(registration));
    }

    /// Asks the cluster to end call `call_id` (either leg's Call-ID): the
    /// owner of its shard at apply time hears [`Event::HangUp`].
    pub fn hang_up(&mut self, call_id: Vec<u8>) {
        self.queue(pb::command::Command::Hangup(pb::CallHangup {
            call_id,
            spare: Vec::new(),
        }));
    }

    /// Call `call_id` was replaced by a transfer this worker carried out,
    /// which took over its leg `spare` (RFC 3891): its owner hangs up its
    /// other leg (see [`Event::HangUp`]).
    pub fn replaced(&mut self, call_id: Vec<u8>, spare: Vec<u8>) {
        self.queue(pb::command::Command::Hangup(pb::CallHangup {
            call_id,
            spare,
        }));
    }

    /// Proposes reloaded settings (a fresh `token` in them): every replica
    /// applies them in log order as the next generation
    /// ([`Table::settings`](crate::Table::settings)).
    pub fn propose_settings(&mut self, settings: pb::Settings) {
        self.queue(pb::command::Command::Settings(settings));
    }

    /// The caller ACKed the 2xx of call `call_id`: the table drops the
    /// 2xx it kept for a new owner to resend (`CallUpsert.a_ok`).
    pub fn acked(&mut self, call_id: Vec<u8>) {
        self.queue(pb::command::Command::Acked(pb::CallAcked { call_id }));
    }

    /// Graceful leave: hands every shard to the others and stops renewing.
    pub fn drain(&mut self) {
        self.draining = true;
        self.queue(pb::command::Command::Down(pb::MemberDown {
            node: self.cfg.id,
            drained: true,
            lease_over: false,
        }));
    }

    /// The shell acts on none of the shards this worker lost up to map
    /// `epoch` (it handed their calls over): their new owners may serve
    /// those this worker was the only possible server of without waiting
    /// out its lease. One `MemberReleased` per epoch with such shards; a
    /// release that is lost costs the new owners that wait.
    ///
    /// `calls`: the last state of calls of those shards whose latest
    /// upsert the shell had not seen committed when it handed them over
    /// (`MemberReleased.calls`); each goes with the release of its shard
    /// (now, or when a held release goes), and is dropped if no release
    /// of this worker names its shard.
    pub fn released(&mut self, epoch: u64, calls: Vec<pb::CallUpsert>) {
        let id = self.cfg.id;
        self.handing
            .extend(calls.into_iter().map(|u| pb::CallUpsert { owner: id, ..u }));
        let shards_n = self.table.shards();
        let later = self.unreleased.split_off(&epoch.saturating_add(1));
        let mut held = BTreeMap::new();
        for (epoch, shards) in std::mem::replace(&mut self.unreleased, later) {
            // Records of these shards still being written here: their new
            // owner would write them too if it served at once.
            if shards
                .iter()
                .any(|&s| self.writing.values().any(|&w| w == s as usize))
            {
                held.insert(epoch, shards);
                continue;
            }
            let (calls, rest) = std::mem::take(&mut self.handing)
                .into_iter()
                .partition(|u| {
                    u32::try_from(shard_of(u.key, shards_n)).is_ok_and(|s| shards.contains(&s))
                });
            self.handing = rest;
            self.queue(pb::command::Command::Released(pb::MemberReleased {
                node: self.cfg.id,
                epoch,
                shards,
                calls,
            }));
        }
        self.release_asked = held.keys().next_back().copied();
        self.unreleased.extend(held);
        // What no release (sent or held) names has nobody to go to.
        let unreleased = &self.unreleased;
        self.handing.retain(|u| {
            let s = shard_of(u.key, shards_n);
            unreleased
                .values()
                .any(|v| u32::try_from(s).is_ok_and(|s| v.contains(&s)))
        });
    }

    /// A call ended: its detail record is committed, then written once
    /// (see [`Event::WriteRecord`]).
    pub fn record_ended(&mut self, record: pb::CallDetail) {
        self.queue(pb::command::Command::Ended(pb::CallEnded {
            record: Some(record),
        }));
    }

    /// The records `ids` ([`Event::WriteRecord`]) are in the sinks.
    pub fn records_written(&mut self, ids: Vec<Vec<u8>>) {
        if !ids.is_empty() {
            self.queue(pb::command::Command::Written(pb::RecordsWritten { ids }));
        }
    }

    /// True once a drain has been applied: nothing is left to hand over.
    pub fn drained(&self) -> bool {
        self.draining && !self.table.is_up(self.cfg.id)
    }
}
