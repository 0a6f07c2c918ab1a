//! The B2BUA's settings ([`Config`]) and what it reports: counters
//! ([`Stats`]), transfers ([`TransferEvent`]) and latencies ([`Latency`]).

use super::*;

/// Settings of the B2BUA.
#[derive(Debug, Clone)]
pub struct Config {
    /// The edge's advertised `IP:PORT`, named in our Via and Contact.
    pub advertised: String,
    /// Transaction timers.
    pub timers: TimerConfig,
    /// The cluster's hashing (affinity keys).
    pub hashing: Hashing,
    /// Where calls go.
    pub routes: Routes,
    /// A call answered this long ago is hung up on both legs, so no call
    /// whose phones vanished lives forever.
    pub max_call_age: Duration,
    /// A callee that rings this long without answering is cancelled; the
    /// route's next target is tried, or the caller gets 408 (no answer).
    pub ring_timeout: Duration,
    /// Transfer mode of calls whose route does not set one.
    pub transfer_mode: TransferMode,
    /// Limits on what is accepted from a peer (`[sip]`: message and URI
    /// sizes), as at the edge.
    pub limits: handover_sip::Limits,
    /// Calls held at most per source address (the caller as the edge saw
    /// it); past it, 503 with Retry-After like `max_calls`. 0: no limit.
    pub max_calls_per_source: usize,
    /// Calls held at most (`calls_held`: active ones, and ended ones still
    /// absorbing retransmissions): a new INVITE past it is answered 503
    /// with Retry-After, so a flood of calls cannot take all memory.
    pub max_calls: usize,
    /// Peers whose identity headers (P-Asserted-Identity and kin) are
    /// passed on, and who are told the new party's after a local transfer;
    /// everyone else's are removed (`trust.rs`). Empty: nobody.
    pub trusted: crate::trust::Trusted,
    /// Headers treated as identity headers beside the RFC 3325 ones
    /// (removed unless a trusted peer sent them).
    pub identity_headers: Vec<String>,
    /// A call whose caller authenticated by digest goes to a trusted
    /// target with `P-Asserted-Identity: <sip:USER@REALM>` (RFC 3325
    /// §9.1): the PBX learns who called, from us, not from the caller.
    pub assert_identity: bool,
}

impl Config {
    /// See [`B2bua::contact`] (here so it can be made while a call is
    /// borrowed).
    pub(super) fn contact(&self, key: u64, call_id: &[u8]) -> Vec<u8> {
        let k = self.hashing.key_token(key, Bound::CallId, call_id);
        // Built in place at its final size (a `format!` here grew its
        // buffer twice, for every answer and request of a call).
        let mut c = Vec::with_capacity(15 + self.advertised.len() + k.len());
        c.extend_from_slice(b"<sip:b2bua@");
        c.extend_from_slice(self.advertised.as_bytes());
        c.extend_from_slice(b";k=");
        c.extend_from_slice(&k);
        c.push(b'>');
        c
    }
}

/// Counters the shell exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Calls that arrived (INVITE from A).
    pub started: u64,
    /// Calls answered 2xx by B.
    pub answered: u64,
    /// Calls that ended after being answered (BYE).
    pub hung_up: u64,
    /// Calls that ended without an answer (error, cancel, timeout).
    pub failed: u64,
    /// Answered calls the B2BUA hung up itself: maximum call age reached,
    /// session timer expired, a leg answered 408/481 to an in-dialog
    /// request, or the caller never acknowledged the 2xx.
    pub torn_down: u64,
    /// Answered calls ended by an operator (`B2bua::hang_up`).
    pub operator_hangups: u64,
    /// New B legs to a route's next target after 408, 503 or no answer.
    pub failovers: u64,
    /// B legs rung beside a call's first, to an AOR's other bindings
    /// (parallel forking, `fork.rs`).
    pub forks: u64,
    /// Callees cancelled after ringing for the whole ring timeout.
    pub unanswered: u64,
    /// Answered calls whose caller never acknowledged our 2xx (64·T1 of
    /// resending it): both legs hung up, counted in `torn_down` too. A
    /// spoofed INVITE ends here, having drawn at most the RFC's resends.
    pub unacknowledged: u64,
    /// Datagrams resent because a timer fired (requests and 2xx responses
    /// retransmitted over UDP).
    pub retransmissions: u64,
    /// Calls taken over from their replica (counted in `started` too).
    pub adopted: u64,
    /// Answered calls failed because the cluster refused their first
    /// record ([`B2bua::refused`]): A got 500, B a BYE.
    pub refused_records: u64,
    /// Adopted calls forgotten because their previous owner had hung them
    /// up while cut off ([`B2bua::ended_elsewhere`]).
    pub ended_elsewhere: u64,
    /// Of those, calls adopted with a relayed request in flight, resent
    /// and answered from here (`PendingRequest`).
    pub resumed: u64,
    /// Of those, calls adopted before A's ACK of their 2xx was committed:
    /// the 2xx resent to A (`CallRecord::a_ok`).
    pub oks_resent: u64,
    /// Replicated calls whose 2xx went to A without a commit (after the
    /// hold limit).
    pub unreplicated: u64,
    /// Calls handed over to another worker (their shard moved there; it
    /// carries them on from the replica).
    pub handed_over: u64,
    /// `Replaces` (in a REFER's Refer-To or an INVITE) naming a call of
    /// another worker, resolved from its replicated record.
    pub replaces_elsewhere: u64,
    /// In-dialog requests refused 503 because their call already held
    /// `MAX_REQUESTS_IN_FLIGHT` transactions (a flood inside one call).
    pub refused_in_call: u64,
    /// New calls answered 503 because `Config::max_calls` were held.
    pub refused_full: u64,
    /// New calls answered 503 because their source held
    /// `Config::max_calls_per_source`.
    pub refused_per_source: u64,
    /// New calls and REGISTERs answered 503 because the disk of the Raft
    /// log was nearly full ([`B2bua::set_storage_full`]).
    pub refused_storage: u64,
    /// Digest authentication (`register.rs`).
    pub auth: register::AuthStats,
}

/// How a transfer the B2BUA relayed went (passthrough mode: the phones
/// transfer, the B2BUA relays REFER and NOTIFY and reports what it saw).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransferResult {
    /// The transferee accepted the REFER (2xx).
    Accepted,
    /// The transferee refused the REFER (3xx–6xx).
    Rejected,
    /// A final NOTIFY reported the new call answered (sipfrag 2xx).
    Succeeded,
    /// A final NOTIFY reported the new call failed (sipfrag 3xx–6xx).
    Failed,
}

/// One transfer report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TransferEvent {
    /// Attended (`Replaces` in the Refer-To) rather than blind.
    pub attended: bool,
    /// Carried out by the B2BUA (local mode) rather than relayed.
    pub local: bool,
    /// What happened.
    pub result: TransferResult,
    /// Since the REFER arrived.
    pub elapsed: Duration,
}

/// What a latency sample measures, from the INVITE's arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Latency {
    /// Until the callee's first response (provisional or final), relayed.
    FirstResponse,
    /// Until the callee's 2xx, relayed.
    Answer,
}
