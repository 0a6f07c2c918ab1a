//! Client transactions (RFC 3261 §17.1): INVITE (with RFC 6026's Accepted
//! state) and non-INVITE. Over UDP only: the reliable-transport shortcuts
//! (timers A, D, E, K at zero) are not needed yet.
//!
//! Calling order: `new` (queues the request), then any order of
//! `handle_response`, `handle_timeout`, `handle_transport_error`; after each,
//! drain `poll_transmit` and `poll_event`, and wake at `poll_timeout`.

use std::time::Duration;

use handover_sip::build::ack_for_non_2xx;
use handover_sip::{Message, scan};

use crate::Event;
use crate::outbox::{Outbox, Slot, boxed_methods, invite_methods};
use crate::time::{Instant, Timer, TimerConfig};

/// States of a client INVITE transaction (RFC 3261 fig. 5, RFC 6026 fig. 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InviteState {
    /// Request sent, nothing heard.
    Calling,
    /// A provisional response arrived.
    Proceeding,
    /// A 2xx arrived; later 2xx retransmissions still go to the TU.
    Accepted,
    /// A 300–699 arrived and was ACKed.
    Completed,
    /// Done.
    Terminated,
}

/// A running client INVITE transaction (see the wrapper below).
#[derive(Debug)]
struct ClientInviteRun {
    cfg: TimerConfig,
    state: InviteState,
    request: Vec<u8>,
    ack: Option<Vec<u8>>,
    a_interval: Duration,
    out: Outbox,
}

impl ClientInviteRun {
    /// Starts the transaction for `request` (an INVITE the caller built and
    /// scanned); the request is queued for sending.
    fn new(now: Instant, cfg: TimerConfig, request: Vec<u8>) -> Self {
        let mut t = Self {
            cfg,
            state: InviteState::Calling,
            request,
            ack: None,
            a_interval: cfg.t1,
            out: Outbox::default(),
        };
        //= https://www.rfc-editor.org/rfc/rfc3261#section-17.1.1.2
        //# For unreliable transports, the client transaction MUST
        //# start timer A with a value of T1.
        t.out.send(t.request.clone());
        t.out.timers.set(Timer::A, now + cfg.t1);
        t.out.timers.set(Timer::B, now + cfg.t1x64());
        t
    }

    /// A run in Accepted whose timer M ends at `until` (its config is not
    /// read again in that state, its request already given back: see
    /// `Slot`).
    fn accepted(until: Instant) -> Self {
        let mut t = Self {
            cfg: TimerConfig::default(),
            state: InviteState::Accepted,
            request: Vec::new(),
            ack: None,
            a_interval: Duration::ZERO,
            out: Outbox::default(),
        };
        t.out.timers.set(Timer::M, until);
        t
    }

    /// A response matched to this transaction arrived.
    fn handle_response(&mut self, now: Instant, resp: &Message<'_>) {
        let Some(status) = resp.status() else { return };
        let up = || Event::Response {
            status,
            message: resp.as_bytes().to_vec(),
        };
        match (self.state, status) {
            (InviteState::Calling | InviteState::Proceeding, 100..=199) => {
                self.state = InviteState::Proceeding;
                self.out.timers.stop(Timer::A);
                self.out.timers.stop(Timer::B);
                self.out.event(up());
            }
            (InviteState::Calling | InviteState::Proceeding, 200..=299) => {
                //= https://www.rfc-editor.org/rfc/rfc6026#section-7.2
                //# If a 2xx response is received while the client INVITE state
                //# machine is in the "Calling" or "Proceeding" states, it MUST
                //# transition to the "Accepted" state, pass the 2xx response to
                //# the TU, and set Timer M to 64*T1.
                self.state = InviteState::Accepted;
                self.release_request();
                self.out.timers.clear();
                self.out.timers.set(Timer::M, now + self.cfg.t1x64());
                self.out.event(up());
            }
            (InviteState::Accepted, 200..=299) => self.out.event(up()),
            (InviteState::Calling | InviteState::Proceeding, 300..=699) => {
                let ack = scan(&self.request)
                    .map(|req| ack_for_non_2xx(&req, resp))
                    .unwrap_or_default();
                self.out.send(ack.clone());
                self.ack = Some(ack);
                self.state = InviteState::Completed;
                self.release_request();
                self.out.timers.clear();
                //= https://www.rfc-editor.org/rfc/rfc3261#section-17.1.1.2
                //# The client transaction SHOULD start timer D when it enters
                //# the "Completed" state, with a value of at least 32 seconds
                //# for unreliable transports
                self.out.timers.set(
                    Timer::D,
                    now + Duration::from_secs(32).max(self.cfg.t1x64()),
                );
                self.out.event(up());
            }
            (InviteState::Completed, 300..=699) => {
                //# Any retransmissions of the final response that are received
                //# while in the "Completed" state MUST cause the ACK to be
                //# re-passed to the transport layer for retransmission, but the
                //# newly received response MUST NOT be passed up to the TU.
                if let Some(ack) = &self.ack {
                    self.out.send(ack.clone());
                }
            }
            _ => {}
        }
    }

    /// Runs every timer due at `now`.
    fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.out.timers.take_due(now) {
            match t {
                Timer::A if self.state == InviteState::Calling => {
                    self.out.send(self.request.clone());
                    self.a_interval *= 2;
                    self.out.timers.set(Timer::A, now + self.a_interval);
                }
                Timer::B if self.state == InviteState::Calling => {
                    self.out.event(Event::Timeout);
                    self.terminate();
                }
                Timer::D | Timer::M => self.terminate(),
                _ => {}
            }
        }
    }

    /// The transport could not send (RFC 3261 §17.1.1.2): the transaction
    /// ends and the TU is told.
    fn handle_transport_error(&mut self) {
        if self.state != InviteState::Terminated {
            self.out.event(Event::TransportError);
            self.terminate();
        }
    }

    fn terminate(&mut self) {
        self.state = InviteState::Terminated;
        self.release_request();
        self.out.terminated();
    }

    /// The request is sent again only in Calling (Timer A) and read for
    /// the ACK of a non-2xx: past those, its bytes (the largest part of a
    /// call's B leg, which keeps its own copy) are given back, so an
    /// established call does not hold its INVITE twice.
    fn release_request(&mut self) {
        self.request = Vec::new();
    }
}

/// A client INVITE transaction: boxed while it runs, its timer M's deadline
/// while idle in Accepted, nothing once over and drained (`Slot`, and
/// `ServerInvite` for why).
#[derive(Debug)]
pub struct ClientInvite(Slot<ClientInviteRun>);

impl ClientInvite {
    /// Starts the transaction for `request` (an INVITE the caller built and
    /// scanned); the request is queued for sending.
    pub fn new(now: Instant, cfg: TimerConfig, request: Vec<u8>) -> Self {
        Self(Slot::Run(Box::new(ClientInviteRun::new(now, cfg, request))))
    }

    /// A transaction that ended elsewhere: the INVITE of a call restored
    /// from its replica after its worker died (its 2xx was ACKed there).
    /// Sends nothing, absorbs nothing.
    pub fn ended(_cfg: TimerConfig) -> Self {
        Self(Slot::Over)
    }

    /// A response matched to this transaction arrived.
    pub fn handle_response(&mut self, now: Instant, resp: &Message<'_>) {
        // Accepted passes up only a 2xx: no need to box it for the rest.
        if matches!(self.0, Slot::Accepted(_)) && !matches!(resp.status(), Some(200..=299)) {
            return;
        }
        if let Some(r) = self.run_mut() {
            r.handle_response(now, resp);
        }
        self.settle();
    }

    /// The transport could not send (RFC 3261 §17.1.1.2): the transaction
    /// ends and the TU is told.
    pub fn handle_transport_error(&mut self) {
        if let Some(r) = self.run_mut() {
            r.handle_transport_error();
        }
        self.settle();
    }

    invite_methods!(InviteState, ClientInviteRun);

    /// The bytes of the request it keeps (tests).
    #[cfg(test)]
    fn request_len(&self) -> usize {
        match &self.0 {
            Slot::Run(r) => r.request.len(),
            _ => 0,
        }
    }
}

/// States of a client non-INVITE transaction (RFC 3261 fig. 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonInviteState {
    /// Request sent, nothing heard.
    Trying,
    /// A provisional response arrived.
    Proceeding,
    /// A final response arrived.
    Completed,
    /// Done.
    Terminated,
}

/// A running client non-INVITE transaction (see the wrapper below).
#[derive(Debug)]
struct ClientNonInviteRun {
    cfg: TimerConfig,
    state: NonInviteState,
    request: Vec<u8>,
    e_interval: Duration,
    out: Outbox,
}

impl ClientNonInviteRun {
    /// Starts the transaction for `request`, queued for sending.
    fn new(now: Instant, cfg: TimerConfig, request: Vec<u8>) -> Self {
        let mut t = Self {
            cfg,
            state: NonInviteState::Trying,
            request,
            e_interval: cfg.t1,
            out: Outbox::default(),
        };
        t.out.send(t.request.clone());
        t.out.timers.set(Timer::E, now + cfg.t1);
        t.out.timers.set(Timer::F, now + cfg.t1x64());
        t
    }

    /// A response matched to this transaction arrived.
    fn handle_response(&mut self, now: Instant, resp: &Message<'_>) {
        let Some(status) = resp.status() else { return };
        let up = Event::Response {
            status,
            message: resp.as_bytes().to_vec(),
        };
        match (self.state, status) {
            (NonInviteState::Trying | NonInviteState::Proceeding, 100..=199) => {
                self.state = NonInviteState::Proceeding;
                self.out.event(up);
            }
            (NonInviteState::Trying | NonInviteState::Proceeding, 200..=699) => {
                self.state = NonInviteState::Completed;
                self.out.timers.clear();
                //= https://www.rfc-editor.org/rfc/rfc3261#section-17.1.2.2
                //# Once the client transaction enters the "Completed" state, it
                //# MUST set Timer K to fire in T4 seconds for unreliable
                //# transports
                self.out.timers.set(Timer::K, now + self.cfg.t4);
                self.out.event(up);
            }
            _ => {}
        }
    }

    /// Runs every timer due at `now`.
    fn handle_timeout(&mut self, now: Instant) {
        while let Some(t) = self.out.timers.take_due(now) {
            match t {
                Timer::E
                    if matches!(
                        self.state,
                        NonInviteState::Trying | NonInviteState::Proceeding
                    ) =>
                {
                    self.out.send(self.request.clone());
                    //= https://www.rfc-editor.org/rfc/rfc3261#section-17.1.2.2
                    //# If Timer E fires while in the "Proceeding" state, the
                    //# request MUST be passed to the transport layer for
                    //# retransmission, and Timer E MUST be reset with a value of T2
                    //# seconds.
                    self.e_interval = if self.state == NonInviteState::Proceeding {
                        self.cfg.t2
                    } else {
                        (self.e_interval * 2).min(self.cfg.t2)
                    };
                    self.out.timers.set(Timer::E, now + self.e_interval);
                }
                Timer::F => {
                    self.out.event(Event::Timeout);
                    self.terminate();
                }
                Timer::K => self.terminate(),
                _ => {}
            }
        }
    }

    /// The transport could not send.
    fn handle_transport_error(&mut self) {
        if self.state != NonInviteState::Terminated {
            self.out.event(Event::TransportError);
            self.terminate();
        }
    }

    fn terminate(&mut self) {
        self.state = NonInviteState::Terminated;
        self.out.terminated();
    }
}

/// A client non-INVITE transaction: boxed while it runs, nothing once it is over and
/// its output drained (see `ServerInvite`).
#[derive(Debug)]
pub struct ClientNonInvite(Option<Box<ClientNonInviteRun>>);

impl ClientNonInvite {
    /// Starts the transaction for `request`; the request is queued for sending.
    pub fn new(now: Instant, cfg: TimerConfig, request: Vec<u8>) -> Self {
        Self(Some(Box::new(ClientNonInviteRun::new(now, cfg, request))))
    }

    /// A response matched to this transaction arrived.
    pub fn handle_response(&mut self, now: Instant, resp: &Message<'_>) {
        if let Some(r) = self.0.as_deref_mut() {
            r.handle_response(now, resp);
        }
    }

    /// The transport could not send: the transaction ends and the TU is told.
    pub fn handle_transport_error(&mut self) {
        if let Some(r) = self.0.as_deref_mut() {
            r.handle_transport_error();
        }
    }

    boxed_methods!(NonInviteState);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use handover_sip::build::{Request, response};
    use handover_sip::scan;

    use super::*;

    const CFG: TimerConfig = TimerConfig {
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
    };

    fn invite_and_answer(status: u16) -> ClientInvite {
        let req = Request {
            method: "INVITE",
            uri: b"sip:bob@192.0.2.4",
            via: &[b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKtx1"],
            from: b"<sip:alice@a.example>",
            from_tag: b"ft",
            to: b"<sip:bob@b.example>",
            call_id: b"call-1",
            cseq: 5,
            ..Request::default()
        }
        .to_vec();
        let t0 = Instant::from_epoch(Duration::ZERO);
        let mut c = ClientInvite::new(t0, CFG, req.clone());
        let mut ringing = Vec::new();
        response(
            &scan(&req).unwrap().reply_parts(),
            180,
            None,
            Some(b"tt"),
            &[],
            &mut ringing,
        );
        c.handle_response(t0, &scan(&ringing).unwrap());
        assert!(
            c.request_len() > 0,
            "kept while a final answer may need an ACK"
        );
        let mut fin = Vec::new();
        response(
            &scan(&req).unwrap().reply_parts(),
            status,
            None,
            Some(b"tt"),
            &[],
            &mut fin,
        );
        c.handle_response(t0, &scan(&fin).unwrap());
        c
    }

    #[test]
    fn the_request_is_given_back_once_it_cannot_be_sent_again() {
        let c = invite_and_answer(200);
        assert_eq!(c.state(), InviteState::Accepted);
        assert_eq!(c.request_len(), 0);
        let mut c = invite_and_answer(486);
        assert_eq!(c.state(), InviteState::Completed);
        assert_eq!(c.request_len(), 0);
        // The ACK of the 486 was built from it before it went.
        let ack = core::iter::from_fn(|| c.poll_transmit()).last().unwrap();
        assert!(ack.starts_with(b"ACK sip:bob@192.0.2.4 SIP/2.0\r\n"));
        assert_eq!(ClientInvite::ended(CFG).request_len(), 0);
    }

    #[test]
    fn a_transaction_over_and_drained_holds_nothing() {
        let mut c = invite_and_answer(200);
        assert!(matches!(c.0, Slot::Run(_)), "the 2xx not yet taken");
        while c.poll_transmit().is_some() || c.poll_event().is_some() {}
        let m = Instant::from_epoch(CFG.t1x64());
        assert!(
            matches!(c.0, Slot::Accepted(end) if end == m),
            "Accepted and idle: timer M's deadline only"
        );
        assert_eq!(c.state(), InviteState::Accepted);
        assert_eq!(c.poll_timeout(), Some(m));
        c.handle_timeout(Instant::from_epoch(Duration::from_secs(40)));
        assert_eq!(c.state(), InviteState::Terminated);
        assert!(
            matches!(c.0, Slot::Run(_)),
            "Terminated, its event not yet taken"
        );
        assert_eq!(c.poll_event(), Some(Event::Terminated));
        assert!(matches!(c.0, Slot::Over), "over and drained: nothing kept");
        assert_eq!(c.state(), InviteState::Terminated);
        assert_eq!(c.poll_event(), None);
        assert_eq!(c.poll_timeout(), None);
    }

    //= https://www.rfc-editor.org/rfc/rfc6026#section-7.2
    //# Any retransmissions of the 2xx response that are received
    //# while in the "Accepted" state MUST be passed up to the TU
    #[test]
    fn an_idle_accepted_transaction_still_passes_a_resent_2xx_up_and_ends_at_timer_m() {
        let mut c = invite_and_answer(200);
        while c.poll_transmit().is_some() || c.poll_event().is_some() {}
        let req = scan(b"INVITE sip:bob@192.0.2.4 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKtx1\r\nFrom: <sip:alice@a.example>;tag=ft\r\nTo: <sip:bob@b.example>\r\nCall-ID: call-1\r\nCSeq: 5 INVITE\r\nContent-Length: 0\r\n\r\n").unwrap();
        let mut ok = Vec::new();
        response(&req.reply_parts(), 200, None, Some(b"tt"), &[], &mut ok);
        let mut busy = Vec::new();
        response(&req.reply_parts(), 486, None, Some(b"tt"), &[], &mut busy);
        let t = Instant::from_epoch(Duration::from_secs(1));
        c.handle_response(t, &scan(&busy).unwrap());
        assert!(
            matches!(c.0, Slot::Accepted(_)),
            "a non-2xx is dropped unboxed"
        );
        assert_eq!(c.poll_event(), None);
        c.handle_response(t, &scan(&ok).unwrap());
        assert_eq!(
            c.poll_event(),
            Some(Event::Response {
                status: 200,
                message: ok.clone()
            })
        );
        assert_eq!(
            c.poll_transmit(),
            None,
            "the TU ACKs a 2xx, not the transaction"
        );
        assert!(
            matches!(c.0, Slot::Accepted(_)),
            "idle again: the deadline only"
        );
        assert_eq!(c.poll_timeout(), Some(Instant::from_epoch(CFG.t1x64())));
        // Before timer M, nothing happens.
        c.handle_timeout(Instant::from_epoch(Duration::from_secs(31)));
        assert!(matches!(c.0, Slot::Accepted(_)));
        c.handle_timeout(Instant::from_epoch(CFG.t1x64()));
        assert_eq!(c.poll_event(), Some(Event::Terminated));
        assert_eq!(c.state(), InviteState::Terminated);
        assert!(matches!(c.0, Slot::Over));
    }
}
