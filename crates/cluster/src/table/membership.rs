//! Who joined and who is leaving (see `node/membership.rs`).

use super::*;

impl Table {
    /// Workers that joined at run time, with their addresses (those named
    /// at start by `--peer` are not here).
    pub fn joined(&self) -> impl Iterator<Item = &pb::MemberJoin> {
        self.joined.values()
    }

    /// Members asked to leave, not yet removed from Raft.
    pub fn leaving(&self) -> impl Iterator<Item = u64> + '_ {
        self.leaving.iter().copied()
    }

    pub fn is_leaving(&self, node: u64) -> bool {
        self.leaving.contains(&node)
    }

    /// The life of `node` a leave is meant for: the incarnation it joined
    /// with, or 0 for a member of the first configuration.
    pub fn incarnation(&self, node: u64) -> u64 {
        self.joined.get(&node).map_or(0, |j| j.incarnation)
    }

    /// Whether worker `node`'s start `incarnation` was removed from Raft:
    /// its joins are ignored from then on, and it must ask again as a new
    /// incarnation (a worker removed while it was away, still running).
    pub fn was_removed(&self, node: u64, incarnation: u64) -> bool {
        self.removed.get(&node) == Some(&incarnation)
    }

    /// `node` was removed from Raft (applied at the same log index on
    /// every replica): its addresses and leave are forgotten.
    pub(crate) fn forget(&mut self, node: u64) {
        if let Some(j) = self.joined.remove(&node) {
            self.removed.insert(node, j.incarnation);
        }
        self.leaving.remove(&node);
    }
}
