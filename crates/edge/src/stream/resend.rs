//! The edge's retransmissions of requests from streams on the UDP hop to
//! the workers (see [`Pending`]).

use std::collections::HashMap;
use std::time::Duration;

use handover_sip::Flow;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{Streams, UdpOut, deliver};
use crate::Shared;
use crate::proxy::Outcome;

/// Requests of one connection relayed to a worker over UDP and not yet
/// answered, by the branch of the phone's Via.
///
/// A phone on TCP or TLS never retransmits (RFC 3261 §17.1.1.1: timers A
/// and E are for unreliable transports), but the edge-to-worker hop is
/// UDP: a request lost there, or sent to a worker that just died, would
/// be lost for good (a BYE during a failover: the far end's call would
/// stay up). So the edge retransmits it on that hop as a UAC on UDP does
/// (T1 doubling to T2, for 64·T1), routing each copy afresh (after a
/// failover it reaches the new owner), until any response to it comes
/// back. This is per-connection state, gone with the connection; the
/// edge still keeps nothing about calls. ACKs are not retransmitted
/// (nothing answers them), nor is anything past `MAX_PENDING` per
/// connection.
#[derive(Debug, Default)]
pub(super) struct Pending {
    by_branch: HashMap<Box<[u8]>, Resend>,
}

#[derive(Debug)]
struct Resend {
    /// The request as the phone sent it (routed again at each copy).
    msg: Box<[u8]>,
    next: Instant,
    interval: Duration,
    until: Instant,
}

/// Requests tracked per connection at most.
const MAX_PENDING: usize = 64;
const T1: Duration = Duration::from_millis(500);
const T2: Duration = Duration::from_secs(4);

impl Pending {
    /// `msg` goes to the phone: when it is a response to a request still
    /// retransmitted, that request is answered (no more copies). Nothing
    /// is read unless a request waits.
    pub(super) fn sent(&mut self, msg: &[u8]) {
        if self.by_branch.is_empty() {
            return;
        }
        if let Some(branch) = response_branch(msg) {
            self.by_branch.remove(branch);
        }
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.by_branch.values().map(|r| r.next.min(r.until)).min()
    }
}

/// The top Via branch of `msg` when it is a response (what the writer
/// task checks to end a retransmission).
fn response_branch(msg: &[u8]) -> Option<&[u8]> {
    if !msg.starts_with(b"SIP/2.0 ") {
        return None;
    }
    let m = handover_sip::scan(msg).ok()?;
    let b = m.top_via().branch()?;
    // Back to a slice of `msg` (the message borrows it).
    let at = b.as_ptr() as usize - msg.as_ptr() as usize;
    msg.get(at..at + b.len())
}

/// Starts retransmitting a request relayed to a worker (see [`Pending`]).
pub(super) fn track(pending: &Mutex<Pending>, msg: &[u8]) {
    let Ok(m) = handover_sip::scan(msg) else {
        return;
    };
    if m.method() == Some(handover_sip::Method::Ack) {
        return;
    }
    let Some(branch) = m.top_via().branch() else {
        return;
    };
    let mut p = pending.lock();
    if p.by_branch.len() >= MAX_PENDING {
        return;
    }
    let now = Instant::now();
    p.by_branch.entry(branch.into()).or_insert(Resend {
        msg: msg.into(),
        next: now + T1,
        interval: T1,
        until: now + 64 * T1,
    });
}

/// Sends again every relayed request whose time has come, routed afresh.
#[expect(
    clippy::too_many_arguments,
    reason = "one connection's state, passed down as the reader holds it"
)]
pub(super) async fn retransmit(
    now: Instant,
    flow: Flow,
    out: &mut [u8],
    tx: &mpsc::Sender<Box<[u8]>>,
    shared: &Shared,
    streams: &Streams,
    udp: &UdpOut,
    pending: &Mutex<Pending>,
) {
    let due: Vec<Box<[u8]>> = {
        let mut p = pending.lock();
        p.by_branch.retain(|_, r| r.until > now);
        p.by_branch
            .values_mut()
            .filter(|r| r.next <= now)
            .map(|r| {
                r.interval = (r.interval * 2).min(T2);
                r.next = now + r.interval;
                r.msg.clone()
            })
            .collect()
    };
    for msg in due {
        streams.counters[flow.transport.index()].1.increment(1);
        let o = streams.handle(shared, flow, &msg, out);
        // Only what goes to a worker again; an answer of the edge's own
        // (503: nobody serves the shard yet) is not news for the phone.
        if let Outcome::Forward {
            peer: crate::Peer::Backend(_),
            ..
        } = o
        {
            deliver(o, out, tx, &streams.registry, udp).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_names_the_branch_that_ends_its_retransmission() {
        let resp = b"SIP/2.0 100 Trying\r\nVia: SIP/2.0/TLS 10.0.0.1;branch=z9hG4bKabc;rport=5\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
        assert_eq!(response_branch(resp), Some(&b"z9hG4bKabc"[..]));
        assert_eq!(response_branch(b"INVITE sip:x SIP/2.0\r\n\r\n"), None);
    }

    #[test]
    fn a_relayed_request_is_copied_until_any_answer_and_an_ack_never() {
        let req = |m: &str| {
            format!(
                "{m} sip:b@x SIP/2.0\r\nVia: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bK{m}\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\nCall-ID: x\r\nCSeq: 1 {m}\r\nContent-Length: 0\r\n\r\n"
            )
        };
        let p = Mutex::new(Pending::default());
        track(&p, req("ACK").as_bytes());
        assert!(p.lock().next_due().is_none(), "nothing answers an ACK");
        track(&p, req("BYE").as_bytes());
        assert!(p.lock().next_due().is_some());
        let other = "SIP/2.0 200 OK\r\nVia: SIP/2.0/TCP 10.0.0.1;branch=z9hG4bKelse\r\n\
From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
        p.lock().sent(other.as_bytes());
        assert!(
            p.lock().next_due().is_some(),
            "another transaction's answer"
        );
        p.lock()
            .sent(other.replace("z9hG4bKelse", "z9hG4bKBYE").as_bytes());
        assert!(p.lock().next_due().is_none(), "answered: no more copies");
    }
}
