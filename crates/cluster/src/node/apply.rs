//! Applying committed entries: the table's changes turned into the
//! node's state (ownership waits, releases) and the shell's events.

use super::*;

impl Node {
    /// Reports each shard whose [`Self::serves`] changed since the last
    /// report (time passed, the map or the lease moved).
    pub(super) fn note_serving(&mut self) {
        for shard in 0..self.serving.len() {
            let now = self.serves(shard);
            if now != self.serving[shard] {
                self.serving[shard] = now;
                self.events.push_back(if now {
                    Event::Serving { shard }
                } else {
                    Event::Stopped { shard }
                });
                if now {
                    self.write_records_of(shard);
                }
            }
        }
    }

    /// Hands the shell the records of `shard` not yet written, nor being
    /// written here: it now serves the shard.
    fn write_records_of(&mut self, shard: usize) {
        let shards = self.table.shards();
        let ids: Vec<Vec<u8>> = self
            .table
            .unwritten()
            .filter(|(id, key)| shard_of(*key, shards) == shard && !self.writing.contains_key(*id))
            .map(|(id, _)| id.to_vec())
            .collect();
        for id in ids {
            self.write_record(id, shard);
        }
    }

    fn write_record(&mut self, id: Vec<u8>, shard: usize) {
        let Some((e, writer)) = self.table.record(&id) else {
            return;
        };
        let Some(record) = e.record.clone() else {
            return;
        };
        let retry = *writer != self.cfg.id;
        self.writing.insert(id, shard);
        self.events.push_back(Event::WriteRecord {
            record: Box::new(record),
            retry,
        });
    }

    pub(super) fn apply(&mut self, entries: Vec<Entry>) -> Result<(), Error> {
        for e in entries {
            self.applied = e.index;
            // Its append time here, or now (replayed after a restart).
            while self
                .appended
                .first_key_value()
                .is_some_and(|(&i, _)| i < e.index)
            {
                self.appended.pop_first();
            }
            self.entry_at = self
                .appended
                .remove(&e.index)
                .map_or(self.now, |at| at.min(self.now));
            if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                self.apply_conf_change(&e);
                continue;
            }
            if e.get_entry_type() != EntryType::EntryNormal || e.data.is_empty() {
                continue;
            }
            // Every replica decodes the same bytes: an entry that does not
            // decode was never proposed by a worker of ours; skip it on all.
            let Ok(batch) = pb::Batch::decode(&e.data[..]) else {
                continue;
            };
            // Ours only if this life proposed it: a restarted worker replays
            // its previous life's batches without hearing about them again.
            let mine = batch.proposer == self.cfg.id && self.inflight.remove(&batch.seq).is_some();
            for cmd in batch.commands {
                let Some(c) = cmd.command else { continue };
                // A member that (re)joins gets a full dead_after from now,
                // not from its renewals of a previous life.
                if let pb::command::Command::Up(m) = &c {
                    self.heard.insert(m.node, self.now);
                }
                // A member releases only its own shards.
                if let pb::command::Command::Released(r) = &c
                    && r.node != batch.proposer
                {
                    continue;
                }
                if let pb::command::Command::Down(m) = &c
                    && self.table.is_up(m.node)
                {
                    self.events.push_back(Event::MemberDown {
                        node: m.node,
                        drained: m.drained,
                    });
                }
                let Some(change) = self.table.apply(c) else {
                    continue;
                };
                self.on_change(change, mine);
            }
        }
        Ok(())
    }

    fn on_change(&mut self, change: Change, mine: bool) {
        match change {
            Change::Stored {
                call_id,
                version,
                key,
                owner,
            } => {
                if mine {
                    self.events.push_back(Event::Committed { call_id, version });
                } else if owner != self.cfg.id && self.table.owner_of_key(key) == self.cfg.id {
                    // Confirmed by the shard's previous owner after the
                    // shard came here: ours to carry on.
                    self.events.push_back(Event::HandedOver { call_id });
                }
            }
            Change::Removed { call_id, .. } if mine => {
                self.events.push_back(Event::Removed { call_id });
            }
            Change::Removed {
                call_id,
                key,
                owner,
            } if owner != self.cfg.id && self.table.owner_of_key(key) == self.cfg.id => {
                self.events.push_back(Event::Ended { call_id });
            }
            Change::Refused { call_id, owner } if mine && owner == self.cfg.id => {
                self.events.push_back(Event::Refused { call_id });
            }
            Change::Renewed { node, seq } => {
                if node == self.cfg.id {
                    if let Some(&t) = self.renew_sent.get(&seq) {
                        self.lease_until = self.lease_until.max(t + self.cfg.lease_ticks);
                    }
                } else {
                    let h = self.heard.entry(node).or_insert(0);
                    *h = (*h).max(self.entry_at);
                }
            }
            Change::HangUp {
                call_id,
                key,
                spare,
            } if self.table.owner_of_key(key) == self.cfg.id => {
                self.events.push_back(Event::HangUp { call_id, spare });
            }
            // The previous owner stopped acting on the shards it lost: no
            // need to wait for its lease to run out.
            Change::Released {
                node,
                epoch,
                shards,
                calls,
            } if node != self.cfg.id => {
                // Calls whose last state came with the release: a shard
                // served here already (after a lease) takes them over now.
                for (call_id, key) in calls {
                    if self.table.owner_of_key(key) == self.cfg.id {
                        self.events.push_back(Event::HandedOver { call_id });
                    }
                }
                // Shards this worker lost before serving them, now known
                // to have no other server: released on, by loss epoch.
                let mut on: BTreeMap<u64, Vec<u32>> = BTreeMap::new();
                for s in shards {
                    let i = s as usize;
                    if self.moved_from.get(i) != Some(&(epoch, node)) {
                        continue;
                    }
                    self.serve_from[i] = self.serve_from[i].min(self.now);
                    self.free_at[i] = self.free_at[i].min(self.now);
                    if let Some(lost) = self.lost_waiting.remove(&i) {
                        on.entry(lost).or_default().push(s);
                    }
                }
                for (epoch, shards) in on {
                    self.queue(pb::command::Command::Released(pb::MemberReleased {
                        node: self.cfg.id,
                        epoch,
                        shards,
                        calls: Vec::new(),
                    }));
                }
            }
            Change::Map { epoch, moves } => {
                let mut gained = Vec::new();
                let mut lost = Vec::new();
                for m in moves {
                    // No owner before, or a death whose lease is known over:
                    // only the earlier owners' waits remain.
                    if m.from != 0 && !m.lease_over {
                        let free = &mut self.free_at[m.shard];
                        *free = (*free).max(self.now + self.cfg.lease_ticks);
                    }
                    if m.to == self.cfg.id {
                        // A shard of the first map is free at once; one
                        // left without an owner when every member went
                        // down still waits for the last one's lease.
                        self.serve_from[m.shard] = self.free_at[m.shard].max(self.now);
                        self.moved_from[m.shard] = (epoch, m.from);
                        self.lost_waiting.remove(&m.shard);
                        gained.push(m.shard);
                    } else if m.from == self.cfg.id {
                        // Its own wait over: nobody before it may still
                        // serve the shard, so a release can vouch for it.
                        // Still waiting: once its predecessor releases it.
                        match u32::try_from(m.shard) {
                            Ok(s) if self.now >= self.serve_from[m.shard] => {
                                self.unreleased.entry(epoch).or_default().push(s);
                            }
                            _ => {
                                self.lost_waiting.insert(m.shard, epoch);
                            }
                        }
                        lost.push(m.shard);
                    }
                    self.downing.remove(&m.from);
                }
                // A shell that never releases (none in a worker) leaves
                // its successors waiting out leases, and no growing list.
                while self.unreleased.len() > 64 {
                    self.unreleased.pop_first();
                }
                self.events.push_back(Event::Map {
                    epoch,
                    gained,
                    lost,
                });
            }
            Change::RecordEnded { id, key } => {
                if mine
                    && let Some(call_id) = self
                        .table
                        .record(&id)
                        .and_then(|(e, _)| e.record.as_ref())
                        .map(|r| r.a_call_id.clone())
                {
                    self.events.push_back(Event::Recorded { call_id });
                }
                let shard = shard_of(key, self.table.shards());
                // Served (as reported): written now; otherwise when its
                // serving starts (`write_records_of`).
                if self.serving[shard] {
                    self.write_record(id, shard);
                }
            }
            Change::RecordsWritten { ids } => {
                for id in &ids {
                    self.writing.remove(id);
                }
                if let Some(epoch) = self.release_asked {
                    self.released(epoch, Vec::new());
                }
            }
            Change::Bound {
                aor,
                key,
                version,
                owner,
                stored,
            } => {
                if stored {
                    let next_expiry = self
                        .table
                        .locations()
                        .read()
                        .get(key, &aor)
                        .and_then(handover_registrar::Stored::next_expiry);
                    self.events.push_back(Event::Bound { key, next_expiry });
                }
                if mine && owner == self.cfg.id {
                    self.events.push_back(Event::BindDone {
                        aor,
                        version,
                        stored,
                    });
                }
            }
            _ => {}
        }
    }
}
