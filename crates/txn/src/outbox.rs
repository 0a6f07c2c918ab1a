//! What every transaction hands back to its caller: datagrams to send,
//! events for the TU, and its armed timers.

use std::collections::VecDeque;

use crate::Event;
use crate::time::{Instant, TimerTable};

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) timers: TimerTable,
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
    /// The transaction is over (see `release_if_over`).
    over: bool,
}

impl Outbox {
    pub(crate) fn send(&mut self, bytes: Vec<u8>) {
        self.transmit.push_back(bytes);
    }

    pub(crate) fn event(&mut self, e: Event) {
        self.events.push_back(e);
    }

    /// Stops every timer and tells the TU the transaction is over.
    pub(crate) fn terminated(&mut self) {
        self.timers.clear();
        self.events.push_back(Event::Terminated);
        self.over = true;
    }

    pub(crate) fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        let m = self.transmit.pop_front();
        self.release_if_over();
        m
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front();
        self.release_if_over();
        e
    }

    /// A transaction that is over keeps no queue capacity once both are
    /// drained: calls hold theirs (A's INVITE server, B's INVITE client)
    /// for as long as they last, and the empty queues cost each held call
    /// ~450 bytes (`crates/call/tests/memory.rs`).
    fn release_if_over(&mut self) {
        if self.over && self.transmit.is_empty() && self.events.is_empty() {
            self.transmit = VecDeque::new();
            self.events = VecDeque::new();
        }
    }

    /// Over, and nothing left to hand out.
    pub(crate) fn spent(&self) -> bool {
        self.over && self.transmit.is_empty() && self.events.is_empty()
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }
}
