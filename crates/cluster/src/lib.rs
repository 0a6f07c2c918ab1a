//! Replicated call state for handover's workers (docs/architecture.md, "Replication").
//!
//! One raft-rs group over all workers; its log holds batches of prost
//! commands (`proto/cluster.proto`); the applied [`Table`] holds members,
//! the shard map and the call records; a [`Node`] is one worker's replica,
//! sans-IO, with the lease rule that keeps one server per shard.
//!
//! raft-rs's messages (protobuf 2, `raft::eraftpb`) are not prost types:
//! the transport carries them as bytes (see `encode_message`).

mod disk;
mod node;
mod store;
mod table;
mod window;

pub use disk::{Disk, DiskError};
pub use node::{Config, Error, Event, Node, Status};
pub use raft::eraftpb::{Entry, Message, MessageType, Snapshot};
pub use store::Store;
pub use table::{Change, Move, StoredCall, Table, binding, binding_pb, shard_of};
pub use window::Window;

/// The prost messages of `proto/cluster.proto`.
#[allow(missing_docs, unreachable_pub, clippy::all)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/handover.cluster.v1.rs"));
}

/// A raft message as bytes for the transport.
pub fn encode_message(m: &Message) -> Vec<u8> {
    use protobuf::Message as _;
    m.write_to_bytes().unwrap_or_default()
}

/// A raft message from the transport's bytes.
pub fn decode_message(bytes: &[u8]) -> Option<Message> {
    use protobuf::Message as _;
    Message::parse_from_bytes(bytes).ok()
}
