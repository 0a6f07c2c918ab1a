//! The worker's metric names, and the registrar's and authentication's
//! metrics as handles built once.

/// Adds what a monotonic count gained since it was last read. The loop
/// reads every count after every datagram and most gain nothing: an
/// untouched counter costs nothing, where `increment(0)` is two atomic
/// read-modify-writes in the exporter (about 40 counters, every datagram).
pub(super) fn add(c: &metrics::Counter, now: u64, last: u64) {
    if now > last {
        c.increment(now - last);
    }
}

/// Metric names of the worker.
pub(super) const CALLS_ACTIVE: &str = "handover_calls_active";
pub(super) const CALLS_STARTED: &str = "handover_calls_started_total";
pub(super) const CALLS_ANSWERED: &str = "handover_calls_answered_total";
pub(super) const CALLS_ENDED: &str = "handover_calls_ended_total";
pub(super) const TXNS_ACTIVE: &str = "handover_transactions_active";
pub(super) const RETRANSMISSIONS: &str = "handover_retransmissions_total";
pub(super) const FAILOVERS: &str = "handover_route_failovers_total";
pub(super) const UNANSWERED: &str = "handover_calls_unanswered_total";
pub(super) const UNACKNOWLEDGED: &str = "handover_calls_unacknowledged_total";
pub(super) const FIRST_RESPONSE: &str = "handover_invite_first_response_seconds";
pub(super) const ANSWER: &str = "handover_invite_answer_seconds";
pub(super) const TRANSFERS: &str = "handover_transfers_total";
pub(super) const TRANSFER_TIME: &str = "handover_transfer_seconds";
pub(super) const ADOPTED: &str = "handover_calls_adopted_total";
pub(super) const RESUMED: &str = "handover_requests_resumed_total";
pub(super) const OKS_RESENT: &str = "handover_adopted_oks_resent_total";
pub(super) const ENDED_ELSEWHERE: &str = "handover_calls_ended_elsewhere_total";
pub(super) const NOT_SERVED: &str = "handover_worker_not_served_total";
pub(super) const PASSED_ON: &str = "handover_worker_answers_passed_on_total";
pub(super) const UNREPLICATED: &str = "handover_calls_unreplicated_total";
pub(super) const REFUSED_IN_CALL: &str = "handover_in_call_requests_refused_total";
pub(super) const REFUSED_FULL: &str = "handover_calls_refused_total";
/// Datagrams the kernel dropped at the worker's SIP socket, its receive
/// buffer full (read once a second).
pub(super) const RX_QUEUE_DROPS: &str = "handover_worker_receive_buffer_drops_total";
/// Free bytes on the Raft log's file system.
pub(super) const FREE_BYTES: &str = "handover_storage_free_bytes";
/// 1 while new calls and registrations are refused for want of disk.
pub(super) const STORAGE_FULL: &str = "handover_storage_full";
pub(super) const HANDED_OVER: &str = "handover_calls_handed_over_total";
pub(super) const REPLACES_ELSEWHERE: &str = "handover_replaces_elsewhere_total";
pub(super) const REGISTRATIONS: &str = "handover_registrations_active";
pub(super) const REGISTERED_AORS: &str = "handover_registered_aors";
pub(super) const BINDINGS: &str = "handover_bindings_total";
pub(super) const REGISTER_REFUSED: &str = "handover_register_refused_total";
pub(super) const AUTH_FAILURES: &str = "handover_auth_failures_total";
pub(super) const AUTH_CHALLENGES: &str = "handover_auth_challenges_total";
pub(super) const AUTH_BANNED: &str = "handover_auth_sources_banned_total";
pub(super) const AUTH_IGNORED: &str = "handover_auth_ignored_total";
pub(super) const RELAYED: &str = "handover_registers_relayed_total";
pub(super) const FORKS: &str = "handover_call_forks_total";
pub(super) const PINGS: &str = "handover_binding_pings_total";

/// The registrar's and authentication's metrics.
pub(super) struct RegMetrics {
    active: metrics::Gauge,
    aors: metrics::Gauge,
    /// created, refreshed, removed, expired
    /// created, refreshed, removed, expired, flow_failed
    bindings: [metrics::Counter; 5],
    refused: metrics::Counter,
    /// unknown_user, wrong_password, malformed, bad_nonce
    failures: [metrics::Counter; 4],
    challenges: metrics::Counter,
    banned: metrics::Counter,
    ignored: metrics::Counter,
    relayed: metrics::Counter,
    /// sent, unanswered (binding dropped)
    pings: [metrics::Counter; 2],
}

impl RegMetrics {
    pub(super) fn new() -> Self {
        let b = |e: &'static str| metrics::counter!(BINDINGS, "event" => e);
        let f = |r: &'static str| metrics::counter!(AUTH_FAILURES, "reason" => r);
        let m = Self {
            active: metrics::gauge!(REGISTRATIONS),
            aors: metrics::gauge!(REGISTERED_AORS),
            bindings: [
                b("created"),
                b("refreshed"),
                b("removed"),
                b("expired"),
                b("flow_failed"),
            ],
            refused: metrics::counter!(REGISTER_REFUSED),
            failures: [
                f("unknown_user"),
                f("wrong_password"),
                f("malformed"),
                f("bad_nonce"),
            ],
            challenges: metrics::counter!(AUTH_CHALLENGES),
            banned: metrics::counter!(AUTH_BANNED),
            ignored: metrics::counter!(AUTH_IGNORED),
            relayed: metrics::counter!(RELAYED),
            pings: [
                metrics::counter!(PINGS, "result" => "sent"),
                metrics::counter!(PINGS, "result" => "unanswered"),
            ],
        };
        for c in m.bindings.iter().chain(&m.failures) {
            c.increment(0);
        }
        m
    }

    /// Walks every AOR: once a second.
    pub(super) fn gauges(&self, r: &handover_call::registrar::Registrar) {
        self.active.set(r.bindings() as f64);
        self.aors.set(r.aors() as f64);
    }

    pub(super) fn count(
        &self,
        last: &handover_call::registrar::Stats,
        now: &handover_call::registrar::Stats,
        last_auth: &handover_call::AuthStats,
        auth: &handover_call::AuthStats,
    ) {
        add(&self.bindings[0], now.created, last.created);
        add(&self.bindings[1], now.refreshed, last.refreshed);
        add(&self.bindings[2], now.removed, last.removed);
        add(&self.bindings[3], now.expired, last.expired);
        add(&self.bindings[4], now.flow_failures, last.flow_failures);
        add(&self.refused, now.refused, last.refused);
        add(&self.relayed, now.relayed, last.relayed);
        add(&self.pings[0], now.pings, last.pings);
        add(&self.pings[1], now.ping_failures, last.ping_failures);
        add(&self.failures[0], auth.unknown_user, last_auth.unknown_user);
        add(
            &self.failures[1],
            auth.wrong_password,
            last_auth.wrong_password,
        );
        add(&self.failures[2], auth.malformed, last_auth.malformed);
        add(&self.failures[3], auth.bad_nonce, last_auth.bad_nonce);
        add(&self.challenges, auth.challenges, last_auth.challenges);
        add(&self.banned, auth.banned, last_auth.banned);
        add(&self.ignored, auth.ignored, last_auth.ignored);
    }
}
