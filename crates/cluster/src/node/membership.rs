//! Membership at run time: workers join and leave a running cluster.
//!
//! The table holds who asked ([`pb::MemberJoin`], [`pb::MemberLeave`]);
//! the leader turns that into Raft configuration changes, one at a time
//! (a single voter change each, so raft-rs needs no joint consensus):
//! a worker that asked to join becomes a learner, then a voter once it
//! has caught up (and as a voter proposes its `MemberUp`, which gives it
//! shards); a worker that asked to leave is removed once it is out of
//! the map (drained, or declared dead). Because the leader derives each
//! step from the applied table and the configuration, a new leader takes
//! an interrupted change up where the old one left it.

use raft::eraftpb::{ConfChangeSingle, ConfChangeType, ConfChangeV2};

use super::*;

impl Node {
    /// Asks the cluster to take worker `node` in, reachable at `grpc`
    /// (Raft) and `sip`; `incarnation` is random per start of that worker
    /// (see the proto). Any member may propose it; the leader does the rest.
    pub fn join(&mut self, join: pb::MemberJoin) {
        self.queue(pb::command::Command::Join(join));
    }

    /// Asks the cluster to remove worker `node` once it is out of the map
    /// (drain it too, or it leaves when declared dead): its life as this
    /// replica's table knows it, so a copy applied after the worker was
    /// removed and joined again does not remove it a second time.
    pub fn leave(&mut self, node: u64) {
        let incarnation = self.table.incarnation(node);
        self.queue(pb::command::Command::Leave(pb::MemberLeave {
            node,
            incarnation,
        }));
    }

    /// Raft's voters, as this replica has applied them.
    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    /// Raft's learners, as this replica has applied them.
    pub fn learners(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .raw
            .raft
            .prs()
            .conf()
            .learners()
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        v
    }

    pub fn is_voter(&self) -> bool {
        self.raw.raft.prs().conf().voters().contains(self.cfg.id)
    }

    /// A configuration change is proposed and not yet applied here.
    pub fn changing(&self) -> bool {
        self.raw.raft.has_pending_conf()
    }

    /// This replica was a member and has applied its own removal: its
    /// worker has left the cluster.
    pub fn removed(&self) -> bool {
        self.was_member && !self.in_conf(self.cfg.id)
    }

    pub(super) fn in_conf(&self, id: u64) -> bool {
        let conf = self.raw.raft.prs().conf();
        conf.voters().contains(id) || conf.learners().contains(&id)
    }

    /// A committed configuration change, applied on every replica at the
    /// same index. One raft-rs refuses (it would leave no voter) is
    /// skipped on every replica alike.
    pub(super) fn apply_conf_change(&mut self, e: &Entry) {
        use protobuf::Message as _;
        let Ok(cc) = ConfChangeV2::parse_from_bytes(&e.data) else {
            return;
        };
        let Ok(cs) = self.raw.apply_conf_change(&cc) else {
            return;
        };
        for c in cc.get_changes() {
            match c.get_change_type() {
                ConfChangeType::RemoveNode => self.table.forget(c.node_id),
                // A learner needs the configuration that names it, which
                // only a snapshot carries: one at this index at the latest.
                ConfChangeType::AddLearnerNode => self.snapshot_now = true,
                ConfChangeType::AddNode => {}
            }
        }
        // A leader that applies its own removal (proposed by an earlier
        // leader, before it won an election) steps down, as etcd's raft
        // does: raft-rs 0.7 would go on leading without a progress of its
        // own, and panic at the next append.
        if !self.is_voter() && self.is_leader() {
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
        self.raw.mut_store().set_conf(cs.clone());
        self.was_member |= self.in_conf(self.cfg.id);
        self.events.push_back(Event::Conf {
            voters: self.voters(),
            learners: self.learners(),
        });
    }

    /// As leader: the next configuration change the table asks for, if
    /// none is in progress (see the module docs).
    pub(super) fn membership(&mut self) {
        if self.changing()
            || !self.caught_up()
            || self
                .conf_proposed
                .is_some_and(|t| self.now < t + self.cfg.repropose_ticks)
        {
            return;
        }
        let voters = self.voters();
        let learners = self.learners();
        let me = self.cfg.id;
        self.remove_long_down(&voters);
        // Leaving: once out of the map. The leader itself hands its
        // leadership to the most caught-up voter first (raft-rs keeps a
        // removed leader leading).
        let leaving: Vec<u64> = self.table.leaving().collect();
        for node in leaving {
            let member = voters.contains(&node) || learners.contains(&node);
            if !member || self.table.is_up(node) {
                continue;
            }
            if voters.len() == 1 && voters[0] == node {
                continue;
            }
            if node == me {
                let prs = self.raw.raft.prs();
                let to = voters
                    .iter()
                    .filter(|&&v| v != me && !self.table.is_leaving(v))
                    .max_by_key(|&&v| prs.get(v).map_or(0, |p| p.matched))
                    .copied();
                if let Some(to) = to {
                    self.raw.transfer_leader(to);
                    self.conf_proposed = Some(self.now);
                }
                return;
            }
            self.propose_conf(node, ConfChangeType::RemoveNode);
            return;
        }
        let joined: Vec<u64> = self.table.joined().map(|j| j.node).collect();
        for node in joined {
            if self.table.is_leaving(node) {
                continue;
            }
            if !voters.contains(&node) && !learners.contains(&node) {
                self.propose_conf(node, ConfChangeType::AddLearnerNode);
                return;
            }
        }
        // A learner that holds everything committed becomes a voter.
        let committed = self.raw.raft.raft_log.committed;
        for node in learners {
            let caught_up = self
                .raw
                .raft
                .prs()
                .get(node)
                .is_some_and(|p| p.matched >= committed);
            if caught_up && !self.table.is_leaving(node) {
                self.propose_conf(node, ConfChangeType::AddNode);
                return;
            }
        }
    }

    /// Asks a voter that has been out of the map for
    /// `remove_down_after_ticks` to leave, keeping `min_voters` (see
    /// [`Config::remove_down_after_ticks`]). The time is this leader's:
    /// a new leader starts counting again.
    fn remove_long_down(&mut self, voters: &[u64]) {
        let Some(after) = self.cfg.remove_down_after_ticks else {
            return;
        };
        let now = self.now;
        self.out_since.retain(|id, _| voters.contains(id));
        let staying = voters
            .iter()
            .filter(|&&v| !self.table.is_leaving(v))
            .count();
        let mut pick = None;
        for &v in voters {
            if v == self.cfg.id || self.table.is_up(v) || self.table.is_leaving(v) {
                self.out_since.remove(&v);
                continue;
            }
            let since = *self.out_since.entry(v).or_insert(now);
            if pick.is_none() && now >= since.saturating_add(after) {
                pick = Some(v);
            }
        }
        if let Some(v) = pick
            && staying > self.cfg.min_voters.max(1)
        {
            // Asked again after another period if the leave is lost.
            self.out_since.insert(v, now);
            self.leave(v);
        }
    }

    fn propose_conf(&mut self, node: u64, kind: ConfChangeType) {
        let mut single = ConfChangeSingle {
            node_id: node,
            ..Default::default()
        };
        single.set_change_type(kind);
        let mut cc = ConfChangeV2::default();
        cc.set_changes(vec![single].into());
        // Refused while another is pending (raft-rs); tried again later.
        let _ = self.raw.propose_conf_change(Vec::new(), cc);
        self.conf_proposed = Some(self.now);
    }
}
