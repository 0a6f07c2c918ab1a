//! What a run reports: progress lines, latency percentiles, the totals.

use std::collections::BTreeMap;

use crate::Counts;

/// One line of progress.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Progress {
    /// Seconds since the start.
    pub elapsed_s: f64,
    /// Counts so far.
    pub counts: Counts,
    /// Calls up now.
    pub active: u64,
    /// Calls started in the last second.
    pub rate: f64,
}

/// Latency percentiles, milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    /// Median.
    pub p50_ms: f64,
    /// 90th percentile.
    pub p90_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

/// The end of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Report {
    /// Calls offered per second.
    pub offered_rate: f64,
    /// Calls started per second, over the starting period.
    pub achieved_rate: f64,
    /// Seconds from the first call to the last one ending.
    pub elapsed_s: f64,
    /// Counts.
    pub counts: Counts,
    /// Setup latency (INVITE to 2xx at the caller).
    pub setup_latency: Latency,
    /// Failures by cause.
    pub failures: BTreeMap<String, u64>,
    /// Datagrams the generator sent and received.
    pub datagrams_sent: u64,
    /// See `datagrams_sent`.
    pub datagrams_received: u64,
    /// (succeeded, failed) by scenario.
    pub by_scenario: BTreeMap<String, (u64, u64)>,
    /// Datagrams the kernel refused to send.
    pub send_errors: u64,
    /// The socket loop used: `uring` or `epoll`.
    pub io_mode: String,
    /// Calls not started on time because the generator was behind (its
    /// own limit, not the system's): the offered rate was lowered by this
    /// many calls rather than bursting them later.
    pub starts_skipped: u64,
}

pub(crate) fn percentiles(v: &mut [u32]) -> Latency {
    if v.is_empty() {
        return Latency::default();
    }
    v.sort_unstable();
    let at = |q: f64| f64::from(v[((v.len() - 1) as f64 * q).round() as usize]) / 1000.0;
    Latency {
        p50_ms: at(0.5),
        p90_ms: at(0.9),
        p99_ms: at(0.99),
        max_ms: at(1.0),
    }
}
