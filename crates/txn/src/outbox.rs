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
    /// The transaction is over (see `spent`).
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
        self.transmit.pop_front()
    }

    pub(crate) fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Over, and nothing left to hand out: the transaction's wrapper then
    /// lets its run (and these queues) go (`boxed_methods!`).
    pub(crate) fn spent(&self) -> bool {
        self.over && self.transmit.is_empty() && self.events.is_empty()
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }
}

/// What every transaction wrapper (`Option<Box<…Run>>`, `None` once over)
/// has alike: its state (`Terminated` when gone), `handle_timeout`, its
/// three `poll_*` methods, and letting the run go once it is over and
/// drained.
macro_rules! boxed_methods {
    ($state:ty) => {
        /// The current state.
        pub fn state(&self) -> $state {
            self.0.as_ref().map_or(<$state>::Terminated, |r| r.state)
        }

        /// Runs every timer due at `now`.
        pub fn handle_timeout(&mut self, now: $crate::Instant) {
            if let Some(r) = self.0.as_deref_mut() {
                r.handle_timeout(now);
            }
        }

        /// The next datagram to send.
        pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
            let m = self.0.as_mut()?.out.poll_transmit();
            self.release_if_spent();
            m
        }

        /// The next event for the TU.
        pub fn poll_event(&mut self) -> Option<$crate::Event> {
            let e = self.0.as_mut()?.out.poll_event();
            self.release_if_spent();
            e
        }

        /// When to call `handle_timeout` next.
        pub fn poll_timeout(&self) -> Option<$crate::Instant> {
            self.0.as_ref()?.out.poll_timeout()
        }

        fn release_if_spent(&mut self) {
            if self
                .0
                .as_ref()
                .is_some_and(|r| r.state == <$state>::Terminated && r.out.spent())
            {
                self.0 = None;
            }
        }
    };
}
pub(crate) use boxed_methods;
