//! What the replica shows: the calls `handover calls` lists, and the
//! status, map and gauges refreshed each tick for the services and
//! `/metrics`.

use super::*;

impl Replica {
    /// The calls `req` asks for, from the applied table. Decodes each
    /// matching record (a user filter decodes every one): an admin's
    /// question, on this thread for the time it takes (microseconds per
    /// call).
    pub(super) fn calls(&self, req: &pb::CallsRequest) -> pb::CallList {
        let t = self.node.table();
        let limit = match req.limit {
            0 => 1_000,
            n => n as usize,
        };
        let now = unix_ms(std::time::SystemTime::now());
        let min_age_ms = req.min_age_s.saturating_mul(1_000);
        let mut list = pb::CallList {
            id: self.node.id(),
            applied: self.node.status().applied,
            ..Default::default()
        };
        for c in t.calls() {
            let owner = t.owner_of_key(c.key);
            if (req.owner != 0 && owner != req.owner)
                || (min_age_ms > 0
                    && (c.answered_unix_ms == 0
                        || now.saturating_sub(c.answered_unix_ms) < min_age_ms))
            {
                continue;
            }
            let s = crate::record::summary(c, owner);
            if !req.user.is_empty() && !s.from.contains(&req.user) && !s.to.contains(&req.user) {
                continue;
            }
            if list.calls.len() < limit {
                list.calls.push(s);
            } else {
                list.more += 1;
            }
        }
        list
    }

    /// The status and map the services show, gauges (serving changes
    /// come as the node's events, see `run`).
    pub(super) fn refresh(&mut self, shared: &watch::Sender<Shared>) {
        let wall = std::time::SystemTime::now();
        let s = self.node.status();
        let t = self.node.table();
        // Counts per worker from the counts per shard the table and the
        // locations keep: 4,096 additions a tick, whatever the number of
        // calls and AORs (a walk of every AOR each tick was 72% of an idle
        // worker's CPU at 100,000 bindings).
        let owners = t.owners();
        let per_owner = |per_shard: &[usize]| {
            let mut per: HashMap<u64, u64> = HashMap::new();
            for (s, &n) in per_shard.iter().enumerate() {
                if n > 0 {
                    // The locations count per SHARDS; the table has as
                    // many shards in a worker (or a divisor of it).
                    let owner = owners.get(s % owners.len().max(1)).copied().unwrap_or(0);
                    *per.entry(owner).or_default() += n as u64;
                }
            }
            per
        };
        let per = per_owner(t.calls_per_shard());
        let (aors, bindings, bindings_per) = {
            let l = t.locations().read();
            (
                l.aors() as u64,
                l.bindings() as u64,
                per_owner(l.bindings_per_shard()),
            )
        };
        let status = pb::ClusterStatus {
            id: s.id,
            leader: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            epoch: s.epoch,
            calls: s.calls as u64,
            owned_shards: s.owned_shards as u64,
            serving_shards: s.serving_shards as u64,
            members_up: t.members_up().collect(),
            calls_per_worker: per,
            aors,
            bindings,
            bindings_per_worker: bindings_per,
            serving_map: serving_map(&self.served),
            serving_since_unix_ms: unix_ms(self.served_since),
            at_unix_ms: unix_ms(wall),
            lease_until_unix_ms: {
                // The SIP loop's deadline (stored just before this), as
                // wall-clock time.
                let at = self.epoch
                    + Duration::from_nanos(self.lease.load(std::sync::atomic::Ordering::Relaxed));
                unix_ms(wall + at.saturating_duration_since(tokio::time::Instant::now()))
            },
            config_generation: t.settings().map_or(0, |c| c.generation),
            voters: s.voters.clone(),
            learners: s.learners.clone(),
            changing: self.node.changing(),
        };
        metrics::gauge!(RAFT_TERM).set(s.term as f64);
        metrics::gauge!(RAFT_LEADER).set(s.leader as f64);
        metrics::gauge!(RAFT_VOTERS).set(s.voters.len() as f64);
        metrics::gauge!(RAFT_LEARNERS).set(s.learners.len() as f64);
        metrics::gauge!(RAFT_IS_LEADER).set(f64::from(u8::from(s.leader == s.id)));
        metrics::gauge!(RAFT_COMMIT).set(s.commit as f64);
        metrics::gauge!(RAFT_APPLY_LAG).set(s.commit.saturating_sub(s.applied) as f64);
        metrics::gauge!(RAFT_LOG_ENTRIES).set(s.log_entries as f64);
        metrics::gauge!(RAFT_LOG_BYTES).set(s.log_bytes as f64);
        metrics::gauge!(RAFT_SNAPSHOT_BYTES).set(s.snapshot_bytes as f64);
        metrics::gauge!(MAP_EPOCH).set(s.epoch as f64);
        metrics::gauge!(SHARDS_SERVED).set(s.serving_shards as f64);
        metrics::gauge!(REPLICATED_CALLS).set(s.calls as f64);
        metrics::counter!(RAFT_REFUSED).absolute(self.node.refused());
        metrics::counter!(RAFT_COALESCED).absolute(self.node.coalesced());
        let ready = s.epoch > 0 && s.leader != 0 && self.node.caught_up() && !self.draining;
        self.ready
            .send_if_modified(|r| std::mem::replace(r, ready) != ready);
        // Status readers take the latest when they ask; map watchers
        // (edges) are woken only by a new epoch, not by every tick.
        shared.send_if_modified(|sh| {
            sh.status = status;
            if sh.map.map.as_ref().map(|m| m.epoch) == Some(t.epoch()) {
                return false;
            }
            sh.map = pb::MapView {
                map: Some(cpb::ShardMap {
                    epoch: t.epoch(),
                    owners: t.owners().to_vec(),
                }),
                sip: self
                    .member_list()
                    .into_iter()
                    .map(|p| (p.id, p.sip))
                    .collect(),
            };
            true
        });
    }
}
