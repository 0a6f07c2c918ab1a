//! What a peer's message may be before raft-rs sees it.

use super::*;

impl Node {
    /// Checks a peer's message for what would make raft-rs 0.7 panic (it
    /// trusts its peers: a panic on a bad message is its way to report a
    /// bug), since a replica that panics takes its worker down: refused
    /// (false), or made harmless. Not an authentication: who may send is
    /// the transport's to decide.
    ///
    /// - It must be addressed to this replica from another replica (any
    ///   id: members change at run time, and a replica restarted from an
    ///   old snapshot may not know the leader yet; the transport checks
    ///   who sends), with indexes below 2^62.
    /// - Local message types (a replica's own timers and reports: `MsgHup`,
    ///   `MsgBeat`, `MsgUnreachable`, `MsgSnapStatus`, `MsgCheckQuorum`)
    ///   never come from a peer; votes and their answers carry a term;
    ///   read-index and leader-transfer messages (unused here) are refused.
    /// - A proposal must carry entries ("stepped empty MsgProp").
    /// - A heartbeat's commit index is clamped to this log's last index: a
    ///   leader sends at most what the follower has (`commit_to` panics on
    ///   more).
    /// - An append may not contradict an entry this replica has committed
    ///   (a conflict at or below the commit index is fatal to raft-rs),
    ///   its entries must follow each other and its index, and the entry
    ///   it follows must have a term (past index 0).
    /// - A snapshot's data must decode as a table (a corrupt one stops the
    ///   replica when applied), and it ends past index 0 with a term.
    pub(super) fn admissible(&self, m: &mut Message) -> bool {
        if m.to != self.cfg.id || m.from == self.cfg.id || m.from == 0 {
            return false;
        }
        // No log of ours reaches 2^62 entries; raft-rs adds to indexes
        // unchecked (a snapshot at u64::MAX overflowed: found by fuzzing).
        const FAR: u64 = 1 << 62;
        if m.index > FAR
            || m.snapshot
                .as_ref()
                .is_some_and(|s| s.get_metadata().index > FAR)
        {
            return false;
        }
        // raft-rs takes a message of term 0 for a local one and skips its
        // term checks: a heartbeat or an append of term 0 made a candidate
        // follow at term 0 (a debug assertion in raft-rs; in a release
        // build the term went back), a vote of term 0 panicked answering
        // it ("term should be set"); both found by fuzz/replica_messages.
        // Only a forwarded proposal is sent without a term.
        if m.term == 0 && m.get_msg_type() != MessageType::MsgPropose {
            return false;
        }
        let log = &self.raw.raft.raft_log;
        match m.get_msg_type() {
            MessageType::MsgHup
            | MessageType::MsgBeat
            | MessageType::MsgUnreachable
            | MessageType::MsgSnapStatus
            | MessageType::MsgCheckQuorum => false,
            // Read-index: unused, and an answer past the log makes raft-rs
            // commit past its end (found by fuzzing). A leader transfer is
            // started locally only (a leaving leader's, `membership`).
            MessageType::MsgReadIndex
            | MessageType::MsgReadIndexResp
            | MessageType::MsgTransferLeader => false,
            // Only from the leader of this term: from anyone else it would
            // force an election.
            MessageType::MsgTimeoutNow => {
                m.from == self.raw.raft.leader_id && m.term == self.raw.raft.term
            }
            // A forwarded proposal is a local message (term 0): with a term,
            // a follower forwarding it again panics raft-rs (fuzzing).
            MessageType::MsgPropose => !m.entries.is_empty() && m.term == 0,
            MessageType::MsgHeartbeat => {
                m.commit = m.commit.min(log.last_index());
                true
            }
            MessageType::MsgAppend => {
                // The entry an append follows has a term unless it is the
                // log's start: raft-rs reads a term of 0 for an index past
                // its log, so `log_term` 0 there would "match" and commit
                // past the log's end (a panic; found by fuzzing).
                if m.index > 0 && m.log_term == 0 {
                    return false;
                }
                let mut want = m.index.checked_add(1);
                m.entries.iter().all(|e| {
                    let follows = want == Some(e.index);
                    want = e.index.checked_add(1);
                    follows && (e.index > log.committed || log.term(e.index).ok() == Some(e.term))
                })
            }
            // A snapshot's last entry has a term (0 "matches" any index
            // past the log, and raft-rs then commits past its end).
            // Nor is one at index 0, the log's start: raft-rs restores it
            // and then counts back from a next index of 0 (fuzzing).
            MessageType::MsgSnapshot => m.snapshot.as_ref().is_some_and(|s| {
                let meta = s.get_metadata();
                meta.index > 0 && meta.term > 0 && Table::decode(&s.data, self.cfg.shards).is_ok()
            }),
            _ => true,
        }
    }
}
