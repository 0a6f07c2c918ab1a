//! Server transactions (RFC 3261 §17.2): INVITE (with RFC 6026's Accepted
//! state) and non-INVITE, over UDP.
//!
//! Calling order: `new` with the request that created it (an INVITE server
//! transaction queues 100 Trying at once), then `handle_request` for every
//! retransmission or ACK matched to it, `send_response` for each response
//! of the TU, `handle_timeout`; after each, drain `poll_transmit` and
//! `poll_event`, and wake at `poll_timeout`.

use std::time::Duration;

use handover_sip::build::response;
use handover_sip::{Message, Method};

use crate::Event;
use crate::outbox::{Outbox, Slot, boxed_methods, invite_methods};
use crate::time::{Instant, Timer, TimerConfig};

/// States of a server INVITE transaction (RFC 3261 fig. 7, RFC 6026 fig. 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInviteState {
    /// Provisional responses only, so far.
    Proceeding,
    /// A 2xx was sent; the ACK goes to the TU.
    Accepted,
    /// A 300–699 was sent; waiting for the ACK.
    Completed,
    /// The ACK for the non-2xx arrived.
    Confirmed,
    /// Done.
    Terminated,
}

/// A running server INVITE transaction (see the wrapper below).
#[derive(Debug)]
struct ServerInviteRun {
    cfg: TimerConfig,
    state: ServerInviteState,
    last: Option<Vec<u8>>,
    g_interval: Duration,
    out: Outbox,
}

impl ServerInviteRun {
    /// Starts the transaction for `invite` and queues 100 Trying.
    fn new(_now: Instant, cfg: TimerConfig, invite: &Message<'_>) -> Self {
        //= https://www.rfc-editor.org/rfc/rfc3261#section-17.2.1
        //# The server transaction MUST generate a 100
        //# (Trying) response unless it knows that the TU will generate a
        //# provisional or final response within 200 ms
        let mut trying = Vec::with_capacity(512);
        response(&invite.reply_parts(), 100, None, None, &[], &mut trying);
        let mut t = Self {
            cfg,
            state: ServerInviteState::Proceeding,
            last: Some(trying.clone()),
            g_interval: cfg.t1,
            out: Outbox::default(),
        };
        t.out.send(trying);
        t
    }

    /// A run in Accepted whose timer L ends at `until` (its config and last
    /// response are not read again in that state: see `Slot`).
    fn accepted(until: Instant) -> Self {
        let mut t = Self {
            cfg: TimerConfig::default(),
            state: ServerInviteState::Accepted,
            last: None,
            g_interval: Duration::ZERO,
            out: Outbox::default(),
        };
        t.out.timers.set(Timer::L, until);
        t
    }

    /// A request matched to this transaction: a retransmitted INVITE or an ACK.
    fn handle_request(&mut self, now: Instant, req: &Message<'_>) {
        match (req.method(), self.state) {
            (
                Some(Method::Invite),
                ServerInviteState::Proceeding | ServerInviteState::Completed,
            ) => {
                //# If a request retransmission is received while in the
                //# "Proceeding" state, the most recent provisional response that
                //# was received from the TU MUST be passed to the transport layer
                //# for retransmission.
                if let Some(l) = &self.last {
                    self.out.send(l.clone());
                }
            }
            (Some(Method::Ack), ServerInviteState::Completed) => {
                //# If an ACK is received while the server transaction is in the
                //# "Completed" state, the server transaction MUST transition to
                //# the "Confirmed" state.  As Timer G is ignored in this state,
                //# any retransmissions of the response will cease.
                self.state = ServerInviteState::Confirmed;
                self.out.timers.clear();
                self.out.timers.set(Timer::I, now + self.cfg.t4);
            }
            (Some(Method::Ack), ServerInviteState::Accepted) => {
                //= https://www.rfc-editor.org/rfc/rfc6026#section-8.7
                //# the server transaction MUST pass the ACK to the TU
                self.out.event(Event::Ack(req.as_bytes().to_vec()));
            }
            _ => {}
        }
    }

    /// The TU sends `bytes`, a response with `status`.
    fn send_response(&mut self, now: Instant, status: u16, bytes: Vec<u8>) {
        if self.state != ServerInviteState::Proceeding {
            return;
        }
        self.out.send(bytes.clone());
        match status {
            100..=199 => self.last = Some(bytes),
            200..=299 => {
                self.state = ServerInviteState::Accepted;
                self.last = None;
                self.out.timers.set(Timer::L, now + self.cfg.t1x64());
            }
            _ => {
                self.state = ServerInviteState::Completed;
                self.last = Some(bytes);
                self.g_interval = self.cfg.t1;
                self.out.timers.set(Timer::G, now + self.cfg.t1);
                self.out.timers.set(Timer::H, now + self.cfg.t1x64());
            }
        }
    }

    /// Runs every timer due at `now`.
    fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.out.timers.take_due(now) {
            match t {
                Timer::G if self.state == ServerInviteState::Completed => {
                    if let Some(l) = &self.last {
                        self.out.send(l.clone());
                    }
                    //= https://www.rfc-editor.org/rfc/rfc3261#section-17.2.1
                    //# Furthermore,
                    //# timer G is reset with a value of MIN(2*T1, T2).
                    self.g_interval = (self.g_interval * 2).min(self.cfg.t2);
                    self.out.timers.set(Timer::G, now + self.g_interval);
                }
                Timer::H => {
                    self.out.event(Event::Timeout);
                    self.terminate();
                }
                Timer::I | Timer::L => self.terminate(),
                _ => {}
            }
        }
    }

    fn terminate(&mut self) {
        self.state = ServerInviteState::Terminated;
        self.out.terminated();
    }

    /// The transport could not send a response.
    fn handle_transport_error(&mut self) {
        if self.state != ServerInviteState::Terminated {
            self.out.event(Event::TransportError);
            self.terminate();
        }
    }
}

/// A server INVITE transaction: boxed while it runs, its timer L's deadline
/// while idle in Accepted, nothing once over and drained (`Slot`): calls
/// hold theirs (A's INVITE server, B's INVITE client) for as long as they
/// last, and what it kept inline or in Accepted cost every call its size
/// (`crates/call/tests/memory.rs`).
#[derive(Debug)]
pub struct ServerInvite(Slot<ServerInviteRun>);

impl ServerInvite {
    /// Starts the transaction for `invite` and queues 100 Trying.
    pub fn new(now: Instant, cfg: TimerConfig, invite: &Message<'_>) -> Self {
        Self(Slot::Run(Box::new(ServerInviteRun::new(now, cfg, invite))))
    }

    /// A transaction that ended elsewhere: the INVITE of a call restored
    /// from its replica after its worker died (its 2xx was ACKed there).
    /// Sends nothing, absorbs nothing.
    pub fn ended(_cfg: TimerConfig) -> Self {
        Self(Slot::Over)
    }

    /// A request matched to this transaction: a retransmitted INVITE or an ACK.
    pub fn handle_request(&mut self, now: Instant, req: &Message<'_>) {
        // Accepted absorbs a resent INVITE: no need to box it for that.
        if matches!(self.0, Slot::Accepted(_)) && req.method() != Some(Method::Ack) {
            return;
        }
        if let Some(r) = self.run_mut() {
            r.handle_request(now, req);
        }
        self.settle();
    }

    /// The TU sends `bytes`, a response with `status`.
    pub fn send_response(&mut self, now: Instant, status: u16, bytes: Vec<u8>) {
        // Past Proceeding the TU's responses are not sent (see the run).
        if let Slot::Run(r) = &mut self.0 {
            r.send_response(now, status, bytes);
        }
    }

    /// The transport could not send a response.
    pub fn handle_transport_error(&mut self) {
        if let Some(r) = self.run_mut() {
            r.handle_transport_error();
        }
        self.settle();
    }

    invite_methods!(ServerInviteState, ServerInviteRun);
}

/// States of a server non-INVITE transaction (RFC 3261 fig. 8).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerNonInviteState {
    /// Nothing sent yet.
    Trying,
    /// A provisional response was sent.
    Proceeding,
    /// A final response was sent.
    Completed,
    /// Done.
    Terminated,
}

/// A running server non-INVITE transaction (see the wrapper below).
#[derive(Debug)]
struct ServerNonInviteRun {
    cfg: TimerConfig,
    state: ServerNonInviteState,
    last: Option<Vec<u8>>,
    out: Outbox,
}

impl ServerNonInviteRun {
    /// Starts the transaction for a request.
    fn new(_now: Instant, cfg: TimerConfig) -> Self {
        Self {
            cfg,
            state: ServerNonInviteState::Trying,
            last: None,
            out: Outbox::default(),
        }
    }

    /// A retransmission of the request arrived.
    fn handle_request(&mut self, _now: Instant) {
        //= https://www.rfc-editor.org/rfc/rfc3261#section-17.2.2
        //# Once in the "Trying" state, any further request
        //# retransmissions are discarded.
        if matches!(
            self.state,
            ServerNonInviteState::Proceeding | ServerNonInviteState::Completed
        ) && let Some(l) = &self.last
        {
            self.out.send(l.clone());
        }
    }

    /// The TU sends `bytes`, a response with `status`.
    fn send_response(&mut self, now: Instant, status: u16, bytes: Vec<u8>) {
        if matches!(
            self.state,
            ServerNonInviteState::Completed | ServerNonInviteState::Terminated
        ) {
            return;
        }
        self.out.send(bytes.clone());
        self.last = Some(bytes);
        if status < 200 {
            self.state = ServerNonInviteState::Proceeding;
        } else {
            self.state = ServerNonInviteState::Completed;
            self.out.timers.set(Timer::J, now + self.cfg.t1x64());
        }
    }

    /// Runs every timer due at `now`.
    fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.out.timers.take_due(now) {
            if t == Timer::J {
                self.state = ServerNonInviteState::Terminated;
                self.out.terminated();
            }
        }
    }
}

/// A server non-INVITE transaction: boxed while it runs, nothing once it is over and
/// its output drained (see `ServerInvite`).
#[derive(Debug)]
pub struct ServerNonInvite(Option<Box<ServerNonInviteRun>>);

impl ServerNonInvite {
    /// Starts the transaction for a request.
    pub fn new(now: Instant, cfg: TimerConfig) -> Self {
        Self(Some(Box::new(ServerNonInviteRun::new(now, cfg))))
    }

    /// A retransmission of the request arrived.
    pub fn handle_request(&mut self, now: Instant) {
        if let Some(r) = self.0.as_deref_mut() {
            r.handle_request(now);
        }
    }

    /// The TU sends `bytes`, a response with `status`.
    pub fn send_response(&mut self, now: Instant, status: u16, bytes: Vec<u8>) {
        if let Some(r) = self.0.as_deref_mut() {
            r.send_response(now, status, bytes);
        }
    }

    boxed_methods!(ServerNonInviteState);
}
