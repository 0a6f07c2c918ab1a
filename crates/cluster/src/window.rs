//! Group commit windows (`--commit-window-ms`), aligned on the wall clock
//! so that the workers' windows close together without talking: a
//! follower proposes what it queued at the window's end, and the leader
//! takes the followers' forwarded proposals and its own a little later
//! (`lag`) into one Ready: one disk write per replica and one append per
//! follower for the whole cluster's window, where unaligned windows cost a
//! round per worker. Clocks that disagree by more than the lag cost rounds
//! and latency, never safety: a proposal the leader gets late goes at once.
//!
//! Sans-IO: the caller passes the wall clock (time since the Unix epoch)
//! and gets back how long to wait.

use core::time::Duration;

/// One worker's group-commit policy.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    len: Duration,
    /// How long after the window's end the leader proposes (loopback or a
    /// LAN carries a follower's proposal well within it).
    lag: Duration,
}

impl Window {
    /// Windows of `len` (zero: no windows, every proposal goes at once).
    pub fn new(len: Duration) -> Self {
        Self {
            len,
            lag: (len / 4).min(Duration::from_millis(3)),
        }
    }

    /// Whether proposals wait for windows at all.
    pub fn on(&self) -> bool {
        !self.len.is_zero()
    }

    /// Time since the start of the window `wall` (since the Unix epoch)
    /// falls in.
    fn elapsed_in_window(&self, wall: Duration) -> Duration {
        let len = self.len.as_nanos().max(1);
        Duration::from_nanos((wall.as_nanos() % len) as u64)
    }

    /// How long from `wall` until what is queued now goes: the end of the
    /// current window for a follower; for the leader, `lag` after the end
    /// of the window whose followers' proposals it still waits for.
    pub fn close(&self, wall: Duration, leader: bool) -> Duration {
        let into = self.elapsed_in_window(wall);
        if !leader {
            return self.len.saturating_sub(into);
        }
        if into < self.lag {
            self.lag - into
        } else {
            self.len.saturating_sub(into) + self.lag
        }
    }

    /// As leader, how long from `wall` until forwarded proposals that
    /// arrived now go: with the current window's, or at once if they came
    /// after it closed.
    pub fn leader_close(&self, wall: Duration) -> Duration {
        let into = self.elapsed_in_window(wall);
        self.lag.saturating_sub(into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn followers_close_at_the_window_end_on_every_clock_alike() {
        let w = Window::new(40 * MS);
        assert!(w.on());
        // 10 ms into a window: 30 ms to go, whatever the epoch's count.
        assert_eq!(
            w.close(Duration::from_secs(1_764_000_000) + 10 * MS, false),
            30 * MS
        );
        assert_eq!(w.close(80 * MS + 10 * MS, false), 30 * MS);
        // Exactly on a boundary: a whole window.
        assert_eq!(w.close(120 * MS, false), 40 * MS);
    }

    #[test]
    fn the_leader_closes_a_lag_after_the_followers() {
        let w = Window::new(40 * MS);
        // lag = min(len / 4, 3 ms) = 3 ms.
        assert_eq!(w.close(10 * MS, true), 33 * MS);
        // Within the lag after a window's end: the followers' proposals of
        // the window that just ended are on their way, wait for them.
        assert_eq!(w.close(41 * MS, true), 2 * MS);
        // Forwarded proposals: with the window that just ended, or at once.
        assert_eq!(w.leader_close(41 * MS), 2 * MS);
        assert_eq!(w.leader_close(50 * MS), Duration::ZERO);
    }

    #[test]
    fn short_windows_have_a_short_lag_and_none_is_off() {
        let w = Window::new(4 * MS);
        assert_eq!(w.close(Duration::ZERO, true), MS);
        assert_eq!(w.close(2 * MS, true), 2 * MS + MS);
        let off = Window::new(Duration::ZERO);
        assert!(!off.on());
        assert_eq!(off.close(7 * MS, false), Duration::ZERO);
        assert_eq!(off.leader_close(7 * MS), Duration::ZERO);
    }
}
