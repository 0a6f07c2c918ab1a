//! What a peer can send a replica: arbitrary bytes as a gRPC `RaftBatch`
//! (the `Raft.Send` request's decoding), each message's bytes decoded as
//! raft-rs would, and arbitrary well-formed raft messages, stepped into a
//! follower or into a leader with entries in its log. No panic: a replica
//! its peers can panic takes its worker down (`Node::admissible` is the
//! guard under test).
#![no_main]

use handover_cluster::{Config, Entry, Message, MessageType, Node, Snapshot, Store, encode_message};
use handover_worker::rpc::pb::RaftBatch;
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

/// A raft message's fields, any values.
#[derive(Debug, Arbitrary)]
struct Msg {
    kind: u8,
    from: u8,
    to: u8,
    term: u8,
    log_term: u8,
    index: u64,
    commit: u64,
    reject: bool,
    entries: Vec<(u64, u8, Vec<u8>)>,
    snapshot: Option<(u64, u8, Vec<u8>)>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    /// Bytes as the gRPC request body.
    Batch(Vec<u8>),
    /// Bytes as one raft message.
    Bytes(Vec<u8>),
    /// Messages stepped into a follower (false) or a leader (true), with
    /// ticks between them.
    Messages(bool, Vec<(Msg, u8)>),
}

const KINDS: [MessageType; 19] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgPropose,
    MessageType::MsgAppend,
    MessageType::MsgAppendResponse,
    MessageType::MsgRequestVote,
    MessageType::MsgRequestVoteResponse,
    MessageType::MsgSnapshot,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResponse,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgRequestPreVote,
    MessageType::MsgRequestPreVoteResponse,
];

fn node() -> Node {
    Node::new(Config::new(1, vec![1, 2, 3], 16), Store::new(&[1, 2, 3]), 7).expect("a node")
}

/// Node 1 elected by 2 and 3 (their votes granted), with a call in its log.
fn leader() -> Node {
    let mut n = node();
    for _ in 0..100 {
        if n.is_leader() {
            break;
        }
        let _ = n.tick();
        let asks = n.take_messages();
        let answers = asks.into_iter().filter_map(|m| {
            let kind = match m.get_msg_type() {
                MessageType::MsgRequestPreVote => MessageType::MsgRequestPreVoteResponse,
                MessageType::MsgRequestVote => MessageType::MsgRequestVoteResponse,
                _ => return None,
            };
            let mut r = Message::default();
            r.set_msg_type(kind);
            r.from = m.to;
            r.to = 1;
            r.term = m.term;
            Some(r)
        });
        let _ = n.step_all(answers);
    }
    n.upsert(b"call".to_vec(), 1, 1, vec![1, 2, 3]);
    let _ = n.propose_queued();
    n
}

fn build(m: &Msg) -> Message {
    let mut r = Message::default();
    r.set_msg_type(KINDS[usize::from(m.kind) % KINDS.len()]);
    r.from = u64::from(m.from % 5);
    r.to = u64::from(m.to % 3);
    r.term = u64::from(m.term);
    r.log_term = u64::from(m.log_term);
    r.index = m.index;
    r.commit = m.commit;
    r.reject = m.reject;
    for (index, term, data) in m.entries.iter().take(8) {
        let mut e = Entry::default();
        e.index = *index;
        e.term = u64::from(*term);
        e.data = data.clone().into();
        r.entries.push(e);
    }
    if let Some((index, term, data)) = &m.snapshot {
        let mut s = Snapshot::default();
        s.data = data.clone().into();
        s.mut_metadata().index = *index;
        s.mut_metadata().term = u64::from(*term);
        s.mut_metadata().mut_conf_state().voters = vec![1, 2, 3];
        r.snapshot = Some(s).into();
    }
    r
}

fuzz_target!(|input: Input| {
    match input {
        Input::Batch(bytes) => {
            if let Ok(batch) = RaftBatch::decode(&bytes[..]) {
                let mut n = node();
                for b in batch.messages.iter().take(16) {
                    if let Some(m) = handover_cluster::decode_message(b) {
                        let _ = n.step(m);
                    }
                }
                let _ = n.tick();
            }
        }
        Input::Bytes(bytes) => {
            if let Some(m) = handover_cluster::decode_message(&bytes) {
                // What decodes encodes again.
                let again = encode_message(&m);
                assert!(handover_cluster::decode_message(&again).is_some());
                let mut n = leader();
                let _ = n.step(m);
                let _ = n.tick();
            }
        }
        Input::Messages(lead, msgs) => {
            let mut n = if lead { leader() } else { node() };
            for (m, ticks) in msgs.iter().take(32) {
                let _ = n.step(build(m));
                for _ in 0..ticks % 4 {
                    let _ = n.tick();
                }
                let _ = n.take_messages();
                while n.poll_event().is_some() {}
            }
        }
    }
});
