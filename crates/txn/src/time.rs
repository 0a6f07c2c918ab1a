//! Time as the transaction layer sees it: a monotonic instant passed in by
//! the caller, never read from the OS, so every timer is testable with a
//! virtual clock.

use std::ops::{Add, Sub};
use std::time::Duration;

/// A point in time: the time since an epoch the caller picks (the shell
/// uses its start).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Instant(Duration);

impl Instant {
    /// The instant `d` after the epoch.
    pub const fn from_epoch(d: Duration) -> Self {
        Self(d)
    }

    /// Time since the epoch.
    pub const fn since_epoch(self) -> Duration {
        self.0
    }
}

/// Saturating: deadlines are often a peer's number of seconds away
/// (Session-Expires, a subscription's `expires=`), and `u64::MAX` seconds
/// must give a deadline that never comes, not a panic in the worker's loop.
impl Add<Duration> for Instant {
    type Output = Instant;
    fn add(self, d: Duration) -> Instant {
        Instant(self.0.saturating_add(d))
    }
}

impl Sub<Instant> for Instant {
    type Output = Duration;
    fn sub(self, o: Instant) -> Duration {
        self.0.saturating_sub(o.0)
    }
}

/// The RFC 3261 timer values (§17.1.1.1, table 4 of appendix A). Defaults
/// are the RFC's; lower T1 only on networks whose round trip is known to be
/// shorter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    /// RTT estimate (500 ms).
    pub t1: Duration,
    /// Longest retransmit interval for non-INVITE requests and INVITE
    /// responses (4 s).
    pub t2: Duration,
    /// Longest a message stays in the network (5 s).
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        Self {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    /// Checks T1 ≤ T2 and that none is zero; the error names the rule.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.t1.is_zero() || self.t2.is_zero() || self.t4.is_zero() {
            return Err("t1, t2 and t4 must be greater than zero");
        }
        if self.t1 > self.t2 {
            return Err("t1 must not exceed t2");
        }
        Ok(())
    }

    /// 64·T1: timers B, F, H, J, L, M (32 s by default).
    pub fn t1x64(&self) -> Duration {
        self.t1 * 64
    }
}

/// The timers of RFC 3261 §17 (and L, M of RFC 6026), one slot each.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Timer {
    /// INVITE client: retransmit the request (T1, doubling).
    A,
    /// INVITE client: give up waiting for any response (64·T1).
    B,
    /// INVITE client: absorb retransmitted non-2xx finals (32 s on UDP).
    D,
    /// Non-INVITE client: retransmit the request (T1 doubling to T2).
    E,
    /// Non-INVITE client: give up (64·T1).
    F,
    /// INVITE server: retransmit the non-2xx final (T1 doubling to T2).
    G,
    /// INVITE server: give up waiting for the ACK (64·T1).
    H,
    /// INVITE server: absorb ACK retransmissions (T4).
    I,
    /// Non-INVITE server: absorb request retransmissions (64·T1).
    J,
    /// Non-INVITE client: absorb response retransmissions (T4).
    K,
    /// INVITE server, RFC 6026: absorb INVITE retransmissions after a 2xx (64·T1).
    L,
    /// INVITE client, RFC 6026: pass 2xx retransmissions up (64·T1).
    M,
}

const TIMERS: usize = 12;

impl Timer {
    const fn index(self) -> usize {
        self as usize
    }
}

/// Armed timers of one transaction; `next` is the earliest.
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable([Option<Instant>; TIMERS]);

impl TimerTable {
    pub(crate) fn set(&mut self, t: Timer, at: Instant) {
        self.0[t.index()] = Some(at);
    }

    pub(crate) fn stop(&mut self, t: Timer) {
        self.0[t.index()] = None;
    }

    pub(crate) fn clear(&mut self) {
        self.0 = [None; TIMERS];
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().min().copied()
    }

    /// The first timer due at `now`, disarmed.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<Timer> {
        use Timer::*;
        for t in [A, B, D, E, F, G, H, I, J, K, L, M] {
            if self.0[t.index()].is_some_and(|at| at <= now) {
                self.0[t.index()] = None;
                return Some(t);
            }
        }
        None
    }
}
