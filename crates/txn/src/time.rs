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

impl Timer {
    const fn index(self) -> usize {
        self as usize
    }
}

/// Most timers one transaction has armed at once: two (A and B, E and F,
/// G and H), one spare.
const SLOTS: usize = 3;

/// Armed timers of one transaction; `next` is the earliest. A few slots,
/// not one per timer: every held call keeps two transactions (A's INVITE
/// server, B's INVITE client), and a slot per timer (12 × 16 bytes each)
/// was a tenth of a held call's memory (`crates/call/tests/memory.rs`).
#[derive(Debug, Clone, Default)]
pub(crate) struct TimerTable([Option<(Timer, Instant)>; SLOTS]);

impl TimerTable {
    pub(crate) fn set(&mut self, t: Timer, at: Instant) {
        let slot = match self.0.iter().position(|s| s.is_some_and(|(x, _)| x == t)) {
            Some(i) => i,
            None => match self.0.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    // No transaction arms more than two timers at once.
                    debug_assert!(false, "timer table full setting {t:?}");
                    SLOTS - 1
                }
            },
        };
        self.0[slot] = Some((t, at));
    }

    pub(crate) fn stop(&mut self, t: Timer) {
        for s in &mut self.0 {
            if s.is_some_and(|(x, _)| x == t) {
                *s = None;
            }
        }
    }

    pub(crate) fn clear(&mut self) {
        self.0 = [None; SLOTS];
    }

    pub(crate) fn next(&self) -> Option<Instant> {
        self.0.iter().flatten().map(|&(_, at)| at).min()
    }

    /// The first timer due at `now` (in the order A, B, D, …, M), disarmed.
    pub(crate) fn take_due(&mut self, now: Instant) -> Option<Timer> {
        let i = self
            .0
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.filter(|&(_, at)| at <= now).map(|(t, _)| (t.index(), i)))
            .min()?
            .1;
        self.0[i].take().map(|(t, _)| t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The slots behave as one entry per timer did, for any sequence of
    /// operations that arms at most three timers at once: a reference
    /// model (a map of timer to deadline) and the table agree on `next`
    /// and on which timer `take_due` hands out, in A…M order.
    #[test]
    fn the_timer_slots_behave_as_a_table_of_every_timer() {
        use Timer::*;
        let all = [A, B, D, E, F, G, H, I, J, K, L, M];
        let mut seed = 0x2545_F491_4F6C_DD1Du64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..200 {
            let mut t = TimerTable::default();
            let mut model: std::collections::BTreeMap<usize, Instant> = Default::default();
            let at = |ms: u64| Instant::from_epoch(Duration::from_millis(ms));
            for _ in 0..60 {
                let timer = all[rnd(12) as usize];
                match rnd(5) {
                    0 | 1 if model.len() < SLOTS || model.contains_key(&timer.index()) => {
                        let when = at(rnd(100));
                        t.set(timer, when);
                        model.insert(timer.index(), when);
                    }
                    2 => {
                        t.stop(timer);
                        model.remove(&timer.index());
                    }
                    3 => {
                        let now = at(rnd(100));
                        let want = model.iter().find(|&(_, &w)| w <= now).map(|(&i, _)| i);
                        if let Some(i) = want {
                            model.remove(&i);
                        }
                        assert_eq!(t.take_due(now).map(Timer::index), want);
                    }
                    4 if rnd(8) == 0 => {
                        t.clear();
                        model.clear();
                    }
                    _ => {}
                }
                assert_eq!(t.next(), model.values().min().copied());
            }
        }
    }
}
