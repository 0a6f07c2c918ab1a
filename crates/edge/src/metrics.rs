//! Metric names and the per-thread counters of the data plane.
//!
//! Hot-path counting is a plain `u64` add in the thread's own `Local`
//! struct; each thread flushes its counts into the shared handles every
//! 100 ms or 4096 datagrams, so no datagram touches a shared cache line or
//! looks a name up.

use metrics::{Counter, counter, gauge};

/// Datagrams received, by sender (`from="client|backend"`).
pub const DATAGRAMS_RECEIVED: &str = "handover_edge_datagrams_received_total";
/// Datagrams sent, by destination (`to="client|backend"`) and `kind="request|response|reply"`.
pub const DATAGRAMS_SENT: &str = "handover_edge_datagrams_sent_total";
/// Answers the edge itself sent, by `status`.
pub const REPLIES: &str = "handover_edge_replies_total";
/// Double-CRLF keep-alive pings answered with a CRLF pong (RFC 5626 §4.4.1).
pub const PONGS: &str = "handover_edge_keepalive_pongs_total";
/// Datagrams from workers carrying several messages (a bundle, see
/// `handover_sip::Bundler`).
pub const BUNDLES: &str = "handover_edge_bundles_received_total";
/// Requests whose shard key `k` (our Route or Request-URI) had no good
/// tag: routed by their Call-ID instead, their source charged.
pub const KEYS_REFUSED: &str = "handover_edge_keys_refused_total";
/// Datagrams dropped, by `reason`.
pub const DROPS: &str = "handover_edge_drops_total";
/// Requests forwarded to each backend (`backend` = index in the configuration).
pub const FORWARDS: &str = "handover_edge_backend_forwards_total";
/// 1 when a backend is up, 0 when down.
pub const BACKEND_UP: &str = "handover_edge_backend_up";
/// 1 per backend, with its `address`: join on `backend` to name it.
pub const BACKEND_INFO: &str = "handover_edge_backend_info";
/// Datagrams the kernel dropped because a socket's receive buffer was full (SO_RXQ_OVFL).
pub const RX_QUEUE_DROPS: &str = "handover_edge_receive_buffer_drops_total";
/// Times io_uring ran out of provided buffers (receive re-armed).
pub const URING_ENOBUFS: &str = "handover_edge_uring_buffers_exhausted_total";
/// Sends that failed or found no free slot.
pub const SEND_ERRORS: &str = "handover_edge_send_errors_total";
/// 1 for the I/O mode in use (`mode="uring|epoll"`).
pub const IO_MODE: &str = "handover_edge_io_mode";
/// Data-plane threads.
pub const THREADS: &str = "handover_edge_threads";
/// Routing table epoch (rises when a backend goes up or down).
pub const TABLE_EPOCH: &str = "handover_edge_routing_epoch";

/// Status codes the edge answers with (bounded label set).
pub const REPLY_STATUSES: [u16; 12] = [400, 403, 413, 414, 416, 420, 430, 482, 483, 500, 503, 505];

/// Shared handles, built once per thread (cheap clones of one counter).
#[derive(Debug, Clone)]
pub(crate) struct Handles {
    received: [Counter; 2],
    sent: [[Counter; 3]; 2],
    replies: Vec<Counter>,
    forwards: Vec<Counter>,
    rx_queue_drops: Counter,
    enobufs: Counter,
    send_errors: Counter,
    pongs: Counter,
    bundles: Counter,
    keys_refused: Counter,
}

impl Handles {
    /// Counters for backends `0..n` (a worker joined).
    pub(crate) fn grow(&mut self, n: usize) {
        for i in self.forwards.len()..n {
            self.forwards
                .push(counter!(FORWARDS, "backend" => i.to_string()));
        }
    }

    pub(crate) fn new(backends: usize) -> Self {
        let peer = ["client", "backend"];
        let kind = ["request", "response", "reply"];
        Self {
            received: peer.map(|p| counter!(DATAGRAMS_RECEIVED, "from" => p)),
            sent: peer.map(|p| kind.map(|k| counter!(DATAGRAMS_SENT, "to" => p, "kind" => k))),
            replies: REPLY_STATUSES
                .iter()
                .map(|s| counter!(REPLIES, "status" => s.to_string()))
                .collect(),
            forwards: (0..backends)
                .map(|i| counter!(FORWARDS, "backend" => i.to_string()))
                .collect(),
            rx_queue_drops: counter!(RX_QUEUE_DROPS),
            enobufs: counter!(URING_ENOBUFS),
            send_errors: counter!(SEND_ERRORS),
            pongs: counter!(PONGS),
            bundles: counter!(BUNDLES),
            keys_refused: counter!(KEYS_REFUSED),
        }
    }
}

/// One thread's counts since its last flush.
#[derive(Debug, Default)]
pub(crate) struct Local {
    pub(crate) received: [u64; 2],
    pub(crate) sent: [[u64; 3]; 2],
    pub(crate) replies: [u64; REPLY_STATUSES.len()],
    pub(crate) forwards: Vec<u64>,
    /// Drops by label; labels are a small fixed set, so this stays tiny.
    pub(crate) drops: Vec<(&'static str, u64)>,
    pub(crate) rx_total: Option<u32>,
    pub(crate) rx_flushed: u32,
    pub(crate) enobufs: u64,
    pub(crate) send_errors: u64,
    pub(crate) pongs: u64,
    pub(crate) bundles: u64,
    pub(crate) keys_refused: u64,
    pub(crate) since_flush: u32,
}

impl Local {
    pub(crate) fn drop_reason(&mut self, label: &'static str) {
        match self
            .drops
            .iter_mut()
            .find(|(l, _)| std::ptr::eq(*l, label) || *l == label)
        {
            Some((_, n)) => *n += 1,
            None => self.drops.push((label, 1)),
        }
    }

    pub(crate) fn reply(&mut self, status: u16) {
        if let Some(i) = REPLY_STATUSES.iter().position(|&s| s == status) {
            self.replies[i] += 1;
        }
    }

    pub(crate) fn flush(&mut self, h: &Handles) {
        for (c, n) in h.received.iter().zip(&mut self.received) {
            c.increment(std::mem::take(n));
        }
        for (cs, ns) in h.sent.iter().zip(&mut self.sent) {
            for (c, n) in cs.iter().zip(ns) {
                c.increment(std::mem::take(n));
            }
        }
        for (c, n) in h.replies.iter().zip(&mut self.replies) {
            c.increment(std::mem::take(n));
        }
        for (c, n) in h.forwards.iter().zip(&mut self.forwards) {
            c.increment(std::mem::take(n));
        }
        for (label, n) in &mut self.drops {
            if *n > 0 {
                counter!(DROPS, "reason" => *label).increment(std::mem::take(n));
            }
        }
        if let Some(t) = self.rx_total {
            h.rx_queue_drops
                .increment(u64::from(t.wrapping_sub(self.rx_flushed)));
            self.rx_flushed = t;
        }
        h.enobufs.increment(std::mem::take(&mut self.enobufs));
        h.send_errors
            .increment(std::mem::take(&mut self.send_errors));
        h.pongs.increment(std::mem::take(&mut self.pongs));
        h.bundles.increment(std::mem::take(&mut self.bundles));
        h.keys_refused
            .increment(std::mem::take(&mut self.keys_refused));
        self.since_flush = 0;
    }
}

/// Gauges set from the control side.
pub(crate) fn backend_gauges(backends: &[std::net::SocketAddr], up: &[bool], epoch: u64) {
    for (i, (b, u)) in backends.iter().zip(up).enumerate() {
        gauge!(BACKEND_UP, "backend" => i.to_string()).set(if *u { 1.0 } else { 0.0 });
        gauge!(BACKEND_INFO, "backend" => i.to_string(), "address" => b.to_string()).set(1.0);
    }
    gauge!(TABLE_EPOCH).set(epoch as f64);
}

/// Sets the I/O mode and thread gauges.
pub(crate) fn mode_gauges(mode: &str, threads: usize) {
    gauge!(THREADS).set(threads as f64);
    gauge!(IO_MODE, "mode" => mode.to_string()).set(1.0);
}
