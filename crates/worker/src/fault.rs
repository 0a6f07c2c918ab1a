//! Fault injection for tests: cut a worker's Raft traffic both ways for a
//! while (a partition), or make its replica thread panic. Compiled only
//! with the cargo feature `fault-injection` (the test suite's build,
//! `scripts/test.sh`); without it [`Faults`] is an empty type whose
//! checks are constant `false`, so a production binary holds none of it.
//! Asked for only over the local admin socket ([`crate::local`]).

#[cfg(feature = "fault-injection")]
mod on {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    /// Until when Raft messages are dropped, and whether the replica
    /// thread is to panic; shared by the services and the replica loop.
    #[derive(Debug, Clone)]
    pub struct Faults {
        /// Nanoseconds after `epoch`; 0: not isolated.
        until: Arc<AtomicU64>,
        epoch: tokio::time::Instant,
        panic: Arc<AtomicBool>,
        withhold: Arc<AtomicBool>,
    }

    impl Default for Faults {
        fn default() -> Self {
            Self {
                until: Arc::default(),
                epoch: tokio::time::Instant::now(),
                panic: Arc::default(),
                withhold: Arc::default(),
            }
        }
    }

    impl Faults {
        pub fn new() -> Self {
            Self::default()
        }

        /// Whether Raft traffic is cut now.
        pub fn isolated(&self) -> bool {
            crate::replica::nanos_since(self.epoch, tokio::time::Instant::now())
                < self.until.load(Ordering::Relaxed)
        }

        /// Panics if a panic was asked for (the replica loop calls it).
        pub fn panic_if_asked(&self) {
            if self.panic.load(Ordering::Relaxed) {
                panic!("fault injection: the Raft replica thread panics");
            }
        }

        /// Cuts Raft traffic for `ms` milliseconds (at most ten minutes).
        pub fn isolate(&self, ms: u64) {
            let until =
                tokio::time::Instant::now() + std::time::Duration::from_millis(ms.min(600_000));
            self.until.store(
                crate::replica::nanos_since(self.epoch, until),
                Ordering::Relaxed,
            );
        }

        /// Asks the replica thread to panic at its next turn.
        pub fn ask_panic(&self) {
            self.panic.store(true, Ordering::Relaxed);
        }

        /// From now on the replica does not tell the SIP loop that its
        /// calls' records are committed: their 2xx stay held (as if the
        /// worker died between a commit and the 2xx leaving).
        pub fn withhold_commits(&self) {
            self.withhold.store(true, Ordering::Relaxed);
        }

        /// Whether commits are withheld from the SIP loop.
        pub fn withholding(&self) -> bool {
            self.withhold.load(Ordering::Relaxed)
        }
    }
}

#[cfg(not(feature = "fault-injection"))]
mod on {
    /// This build has no fault injection: nothing is ever cut.
    #[derive(Debug, Clone, Default)]
    pub struct Faults;

    impl Faults {
        pub fn new() -> Self {
            Self
        }

        #[inline]
        pub fn isolated(&self) -> bool {
            false
        }

        #[inline]
        pub fn panic_if_asked(&self) {}

        #[inline]
        pub fn withholding(&self) -> bool {
            false
        }
    }
}

pub use on::Faults;
