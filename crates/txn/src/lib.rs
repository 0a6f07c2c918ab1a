//! SIP transactions of RFC 3261 §17 (with RFC 6026's Accepted states) as
//! sans-IO state machines: no sockets, no clock, no threads. Each takes
//! events (`handle_*`: a message, a timeout, a transport error, a response
//! from the transaction user) and returns what to do (`poll_transmit`,
//! `poll_event`, `poll_timeout`), so every timer and race of §17 is tested
//! on a virtual clock.
//!
//! - [`ClientInvite`], [`ClientNonInvite`]: timers A, B, D, M and E, F, K;
//!   the ACK of a non-2xx final is built here (§17.1.1.3).
//! - [`ServerInvite`], [`ServerNonInvite`]: 100 Trying, retransmission of
//!   the last response on request retransmissions, timers G, H, I, L and J.
//! - [`Key`]: matching of requests and responses to transactions, CANCEL
//!   to its INVITE (§9.2).
//!
//! UDP only for now; reliable transports would zero timers A, D, E, G, I,
//! J and K.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod key;
mod outbox;
mod server;
mod time;

pub use client::{ClientInvite, ClientNonInvite, InviteState, NonInviteState};
pub use key::Key;
pub use server::{ServerInvite, ServerInviteState, ServerNonInvite, ServerNonInviteState};
pub use time::{Instant, Timer, TimerConfig};

/// What a transaction tells its user (the TU).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A response for a client transaction's TU.
    Response {
        /// Its status.
        status: u16,
        /// The whole message.
        message: Vec<u8>,
    },
    /// The ACK of a 2xx reached an INVITE server transaction (RFC 6026).
    Ack(Vec<u8>),
    /// Timer B, F or H fired: no final response, or no ACK.
    Timeout,
    /// A send failed.
    TransportError,
    /// The transaction is over; drop it.
    Terminated,
}

impl Event {
    /// A client transaction's event as its TU reads it (RFC 3261 §8.1.3.1:
    /// a timeout is treated as 408, a transport error as 503): the status
    /// and the message (empty for the synthesized ones); `None` for events
    /// that are not an outcome.
    pub fn into_response(self) -> Option<(u16, Vec<u8>)> {
        match self {
            Event::Response { status, message } => Some((status, message)),
            Event::Timeout => Some((408, Vec::new())),
            Event::TransportError => Some((503, Vec::new())),
            _ => None,
        }
    }
}
