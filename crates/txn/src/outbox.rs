//! What every transaction hands back to its caller: datagrams to send,
//! events for the TU, and its armed timers.

use std::collections::VecDeque;

use crate::Event;
use crate::time::{Instant, TimerTable};

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    pub(crate) timers: TimerTable,
    transmit: Queue<Vec<u8>>,
    events: Queue<Event>,
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
        self.over && self.idle()
    }

    /// Nothing queued for the caller.
    pub(crate) fn idle(&self) -> bool {
        self.transmit.is_empty() && self.events.is_empty()
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next()
    }
}

/// A first-in first-out queue whose first item is kept inline. A
/// transaction queues one datagram or event at a time and its caller drains
/// it at once, so the rest is seldom there and boxed: a `VecDeque` each
/// kept its emptied buffer (and 32 bytes inline) for the transaction's
/// whole life, and an INVITE's transactions live 64·T1 after the answer
/// (a call just answered, `tests/memory.rs` of `handover-call`: 208 heap
/// bytes less with the first item inline, 96 more with the rest boxed).
#[derive(Debug)]
struct Queue<T> {
    first: Option<T>,
    /// Behind `first`; boxed, as it is seldom there (8 bytes, not 32).
    #[expect(
        clippy::box_collection,
        reason = "8 bytes inline in every transaction, the heap part seldom made"
    )]
    more: Option<Box<VecDeque<T>>>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Self {
            first: None,
            more: None,
        }
    }
}

impl<T> Queue<T> {
    fn push_back(&mut self, t: T) {
        // Behind anything queued: the inline slot is the front only when
        // nothing else waits.
        match &mut self.more {
            Some(more) => more.push_back(t),
            None if self.first.is_none() => self.first = Some(t),
            None => self.more = Some(Box::new(VecDeque::from([t]))),
        }
    }

    fn pop_front(&mut self) -> Option<T> {
        let t = self.first.take();
        let Some(more) = &mut self.more else { return t };
        let t = t.or_else(|| more.pop_front());
        if more.is_empty() {
            self.more = None;
        }
        t
    }

    fn is_empty(&self) -> bool {
        self.first.is_none() && self.more.is_none()
    }
}

/// How an INVITE transaction's wrapper holds it (`invite_methods!`).
///
/// In RFC 6026's Accepted state an INVITE transaction only waits for its
/// timer (L for a server, M for a client), absorbing the INVITE or passing
/// up a resent 2xx: nothing it kept is read again. A call keeps its two
/// INVITE transactions there for 64·T1 after its answer, and at 2,000 calls
/// a second that is 64,000 calls whose runs (about 250 bytes each, boxed)
/// set the worker's peak memory (`crates/call/tests/memory.rs`). So an
/// Accepted transaction with nothing to hand out is only its deadline, and
/// is boxed again, as a run in Accepted, for the one message that makes it
/// speak.
#[derive(Debug)]
pub(crate) enum Slot<R> {
    /// Running: boxed.
    Run(Box<R>),
    /// Accepted with nothing queued: the deadline of its last timer.
    Accepted(Instant),
    /// Over, its output drained.
    Over,
}

/// An INVITE transaction's wrapper (`Slot`): its state, `handle_timeout`,
/// the three `poll_*` methods, boxing its run again when an Accepted one
/// must act (`run_mut`), and keeping only the deadline once it is idle in
/// Accepted, or nothing once it is over (`settle`). `$run` has a `state`,
/// an `out: Outbox`, and `accepted(until)`, a run in Accepted whose timer
/// ends at `until`.
macro_rules! invite_methods {
    ($state:ty, $run:ty) => {
        /// The current state.
        pub fn state(&self) -> $state {
            match &self.0 {
                $crate::outbox::Slot::Run(r) => r.state,
                $crate::outbox::Slot::Accepted(_) => <$state>::Accepted,
                $crate::outbox::Slot::Over => <$state>::Terminated,
            }
        }

        /// Runs every timer due at `now`.
        pub fn handle_timeout(&mut self, now: $crate::Instant) {
            if matches!(self.0, $crate::outbox::Slot::Accepted(end) if now < end) {
                return;
            }
            if let Some(r) = self.run_mut() {
                r.handle_timeout(now);
            }
            self.settle();
        }

        /// The next datagram to send.
        pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
            let $crate::outbox::Slot::Run(r) = &mut self.0 else {
                return None;
            };
            let m = r.out.poll_transmit();
            self.settle();
            m
        }

        /// The next event for the TU.
        pub fn poll_event(&mut self) -> Option<$crate::Event> {
            let $crate::outbox::Slot::Run(r) = &mut self.0 else {
                return None;
            };
            let e = r.out.poll_event();
            self.settle();
            e
        }

        /// When to call `handle_timeout` next.
        pub fn poll_timeout(&self) -> Option<$crate::Instant> {
            match &self.0 {
                $crate::outbox::Slot::Run(r) => r.out.poll_timeout(),
                $crate::outbox::Slot::Accepted(end) => Some(*end),
                $crate::outbox::Slot::Over => None,
            }
        }

        /// The run, boxed again if it was only an Accepted deadline.
        fn run_mut(&mut self) -> Option<&mut $run> {
            if let $crate::outbox::Slot::Accepted(end) = self.0 {
                self.0 = $crate::outbox::Slot::Run(Box::new(<$run>::accepted(end)));
            }
            match &mut self.0 {
                $crate::outbox::Slot::Run(r) => Some(r),
                _ => None,
            }
        }

        /// Keeps no more than the state needs: nothing once over and
        /// drained, the deadline once idle in Accepted.
        fn settle(&mut self) {
            let $crate::outbox::Slot::Run(r) = &self.0 else {
                return;
            };
            if r.state == <$state>::Terminated && r.out.spent() {
                self.0 = $crate::outbox::Slot::Over;
            } else if r.state == <$state>::Accepted
                && r.out.idle()
                && let Some(end) = r.out.poll_timeout()
            {
                self.0 = $crate::outbox::Slot::Accepted(end);
            }
        }
    };
}
pub(crate) use invite_methods;

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

#[cfg(test)]
mod tests {
    use super::Queue;

    #[test]
    fn an_accepted_transaction_is_as_small_as_its_deadline() {
        // The run's box and the deadline share 16 bytes inline (the
        // deadline's nanoseconds leave room for the other variants' tags).
        assert_eq!(size_of::<super::Slot<[u8; 300]>>(), 16);
    }

    #[test]
    fn the_queue_is_first_in_first_out_across_its_inline_slot() {
        let mut q = Queue::default();
        q.push_back(1);
        q.push_back(2);
        assert_eq!(q.pop_front(), Some(1));
        // The slot is free, but 2 waits: 3 goes behind it.
        q.push_back(3);
        assert_eq!(q.pop_front(), Some(2));
        q.push_back(4);
        assert_eq!(q.pop_front(), Some(3));
        assert_eq!(q.pop_front(), Some(4));
        assert_eq!(q.pop_front(), None);
        assert!(q.is_empty());
        assert!(q.more.is_none(), "an emptied queue holds no heap");
        q.push_back(5);
        assert!(q.more.is_none(), "one item stays inline");
        assert_eq!(q.pop_front(), Some(5));
    }
}
