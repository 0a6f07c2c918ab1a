//! RFC 3261 §17 (and RFC 6026) on a virtual clock: every send is recorded
//! with its time, timers are stepped exactly, nothing sleeps.

use std::time::Duration;

use handover_sip::build::{Request, response};
use handover_sip::scan;
use handover_txn::*;

fn at(ms: u64) -> Instant {
    Instant::from_epoch(Duration::from_millis(ms))
}

const CFG: TimerConfig = TimerConfig {
    t1: Duration::from_millis(500),
    t2: Duration::from_secs(4),
    t4: Duration::from_secs(5),
};

fn request(method: &str) -> Vec<u8> {
    Request {
        method,
        uri: b"sip:bob@192.0.2.4",
        via: &[b"SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKtx1"],
        from: b"<sip:alice@a.example>",
        from_tag: b"ft",
        to: b"<sip:bob@b.example>",
        call_id: b"call-1",
        cseq: 5,
        ..Request::default()
    }
    .to_vec()
}

fn reply(req: &[u8], status: u16) -> Vec<u8> {
    let m = scan(req).unwrap();
    let mut out = Vec::new();
    let tag: &[u8] = b"tt";
    response(&m.reply_parts(), status, None, Some(tag), &[], &mut out);
    out
}

/// Something with the poll interface, for the driver below.
trait Txn {
    fn timeout(&mut self, now: Instant);
    fn next(&self) -> Option<Instant>;
    fn tx(&mut self) -> Option<Vec<u8>>;
    fn ev(&mut self) -> Option<Event>;
}

macro_rules! txn {
    ($t:ty) => {
        impl Txn for $t {
            fn timeout(&mut self, now: Instant) {
                self.handle_timeout(now)
            }
            fn next(&self) -> Option<Instant> {
                self.poll_timeout()
            }
            fn tx(&mut self) -> Option<Vec<u8>> {
                self.poll_transmit()
            }
            fn ev(&mut self) -> Option<Event> {
                self.poll_event()
            }
        }
    };
}
txn!(ClientInvite);
txn!(ClientNonInvite);
txn!(ServerInvite);
txn!(ServerNonInvite);

/// Steps timers up to `end`; returns (ms, first line) of every send and the events.
fn drive(t: &mut impl Txn, end: u64) -> (Vec<(u64, String)>, Vec<Event>) {
    let (mut sent, mut evs) = (Vec::new(), Vec::new());
    let mut now = 0;
    loop {
        while let Some(b) = t.tx() {
            let first = String::from_utf8_lossy(&b)
                .lines()
                .next()
                .unwrap()
                .to_string();
            sent.push((now, first));
        }
        while let Some(e) = t.ev() {
            evs.push(e);
        }
        match t.next() {
            Some(n) if n.since_epoch().as_millis() as u64 <= end => {
                now = n.since_epoch().as_millis() as u64;
                t.timeout(n);
            }
            _ => return (sent, evs),
        }
    }
}

fn times(sent: &[(u64, String)]) -> Vec<u64> {
    sent.iter().map(|(t, _)| *t).collect()
}

#[test]
fn rfc3261_17_1_1_2_timer_a_doubles_until_timer_b() {
    let mut c = ClientInvite::new(at(0), CFG, request("INVITE"));
    let (sent, evs) = drive(&mut c, 60_000);
    assert_eq!(times(&sent), vec![0, 500, 1500, 3500, 7500, 15500, 31500]);
    assert_eq!(evs, vec![Event::Timeout, Event::Terminated]);
    assert_eq!(c.state(), InviteState::Terminated);
}

#[test]
fn rfc3261_17_1_1_2_provisional_stops_retransmissions() {
    let req = request("INVITE");
    let mut c = ClientInvite::new(at(0), CFG, req.clone());
    let (sent, _) = drive(&mut c, 600);
    assert_eq!(times(&sent), vec![0, 500]);
    c.handle_response(at(700), &scan(&reply(&req, 180)).unwrap());
    assert_eq!(c.state(), InviteState::Proceeding);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Response { status: 180, .. })
    ));
    assert_eq!(
        c.poll_timeout(),
        None,
        "no retransmission and no timeout once proceeding"
    );
}

#[test]
fn rfc3261_17_1_1_3_non_2xx_is_acked_retransmissions_absorbed_timer_d() {
    let req = request("INVITE");
    let mut c = ClientInvite::new(at(0), CFG, req.clone());
    let _ = c.poll_transmit();
    let busy = reply(&req, 486);
    c.handle_response(at(100), &scan(&busy).unwrap());
    let ack = c.poll_transmit().expect("ACK sent");
    let a = scan(&ack).unwrap();
    assert_eq!(a.method_bytes(), b"ACK");
    assert_eq!(
        a.top_via().branch(),
        Some(&b"z9hG4bKtx1"[..]),
        "same branch as the INVITE"
    );
    assert_eq!(a.to_tag(), Some(&b"tt"[..]), "To of the response");
    assert_eq!(a.cseq().seq, 5);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Response { status: 486, .. })
    ));
    // The 486 again: the ACK again, nothing for the TU.
    c.handle_response(at(600), &scan(&busy).unwrap());
    assert_eq!(c.poll_transmit(), Some(ack));
    assert_eq!(c.poll_event(), None);
    assert_eq!(c.state(), InviteState::Completed);
    assert_eq!(c.poll_timeout(), Some(at(32_100)), "timer D: 32 s");
    c.handle_timeout(at(32_100));
    assert_eq!(c.poll_event(), Some(Event::Terminated));
}

#[test]
fn rfc6026_7_2_2xx_goes_to_accepted_and_retransmissions_reach_the_tu() {
    let req = request("INVITE");
    let mut c = ClientInvite::new(at(0), CFG, req.clone());
    let _ = c.poll_transmit();
    let ok = reply(&req, 200);
    c.handle_response(at(50), &scan(&ok).unwrap());
    c.handle_response(at(550), &scan(&ok).unwrap());
    assert_eq!(c.state(), InviteState::Accepted);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Response { status: 200, .. })
    ));
    assert!(matches!(
        c.poll_event(),
        Some(Event::Response { status: 200, .. })
    ));
    assert_eq!(
        c.poll_transmit(),
        None,
        "the TU, not the transaction, ACKs a 2xx"
    );
    assert_eq!(c.poll_timeout(), Some(at(32_050)), "timer M: 64*T1");
    c.handle_timeout(at(32_050));
    assert_eq!(c.poll_event(), Some(Event::Terminated));
}

#[test]
fn rfc3261_17_1_2_2_timer_e_doubles_to_t2_then_timer_f() {
    let mut c = ClientNonInvite::new(at(0), CFG, request("BYE"));
    let (sent, evs) = drive(&mut c, 60_000);
    assert_eq!(
        times(&sent),
        vec![
            0, 500, 1500, 3500, 7500, 11500, 15500, 19500, 23500, 27500, 31500
        ]
    );
    assert_eq!(evs, vec![Event::Timeout, Event::Terminated]);
}

#[test]
fn rfc3261_17_1_2_2_proceeding_retransmits_every_t2_final_then_timer_k() {
    let req = request("BYE");
    let mut c = ClientNonInvite::new(at(0), CFG, req.clone());
    let _ = c.poll_transmit();
    c.handle_response(at(100), &scan(&reply(&req, 100)).unwrap());
    assert_eq!(c.state(), NonInviteState::Proceeding);
    assert!(matches!(
        c.poll_event(),
        Some(Event::Response { status: 100, .. })
    ));
    let (sent, _) = drive(&mut c, 9_000);
    assert_eq!(times(&sent), vec![500, 4500, 8500]);
    c.handle_response(at(9_000), &scan(&reply(&req, 200)).unwrap());
    assert_eq!(c.state(), NonInviteState::Completed);
    c.handle_response(at(9_100), &scan(&reply(&req, 200)).unwrap());
    let evs: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert_eq!(evs.len(), 1, "the first 200 only: {evs:?}");
    assert!(matches!(evs[0], Event::Response { status: 200, .. }));
    assert_eq!(c.poll_timeout(), Some(at(14_000)), "timer K: T4");
}

#[test]
fn rfc3261_17_2_1_trying_retransmission_and_timer_g_until_ack_then_timer_i() {
    let req = request("INVITE");
    let mut s = ServerInvite::new(at(0), CFG, &scan(&req).unwrap());
    assert!(
        s.poll_transmit()
            .unwrap()
            .starts_with(b"SIP/2.0 100 Trying")
    );
    s.handle_request(at(500), &scan(&req).unwrap());
    assert!(
        s.poll_transmit()
            .unwrap()
            .starts_with(b"SIP/2.0 100 Trying"),
        "retransmission answered"
    );
    s.send_response(at(600), 180, reply(&req, 180));
    assert!(s.poll_transmit().unwrap().starts_with(b"SIP/2.0 180"));
    s.handle_request(at(1000), &scan(&req).unwrap());
    assert!(
        s.poll_transmit().unwrap().starts_with(b"SIP/2.0 180"),
        "the latest provisional"
    );
    s.send_response(at(2000), 486, reply(&req, 486));
    let (sent, _) = drive(&mut s, 10_000);
    // Sent at 2000, then G at +0.5, +1.5, +3.5, +7.5 (capped at T2 = 4 s).
    assert_eq!(times(&sent), vec![0, 2500, 3500, 5500, 9500]);
    let ack_bytes = c_ack(&req);
    let ack = scan(&ack_bytes).unwrap();
    s.handle_request(at(10_000), &ack);
    assert_eq!(s.state(), ServerInviteState::Confirmed);
    assert_eq!(s.poll_timeout(), Some(at(15_000)), "timer I: T4; G stopped");
    s.handle_timeout(at(15_000));
    assert_eq!(s.poll_event(), Some(Event::Terminated));
}

fn c_ack(req: &[u8]) -> Vec<u8> {
    String::from_utf8(req.to_vec())
        .unwrap()
        .replace("INVITE sip:", "ACK sip:")
        .replace("5 INVITE", "5 ACK")
        .replace("<sip:bob@b.example>\r\n", "<sip:bob@b.example>;tag=tt\r\n")
        .into_bytes()
}

#[test]
fn rfc3261_17_2_1_timer_h_without_ack() {
    let req = request("INVITE");
    let mut s = ServerInvite::new(at(0), CFG, &scan(&req).unwrap());
    s.send_response(at(0), 503, reply(&req, 503));
    let (_, evs) = drive(&mut s, 60_000);
    assert_eq!(evs, vec![Event::Timeout, Event::Terminated]);
}

#[test]
fn rfc6026_8_2xx_accepted_absorbs_invites_and_passes_the_ack() {
    let req = request("INVITE");
    let mut s = ServerInvite::new(at(0), CFG, &scan(&req).unwrap());
    let _ = s.poll_transmit();
    s.send_response(at(100), 200, reply(&req, 200));
    assert!(s.poll_transmit().unwrap().starts_with(b"SIP/2.0 200"));
    s.handle_request(at(600), &scan(&req).unwrap());
    assert_eq!(
        s.poll_transmit(),
        None,
        "a retransmitted INVITE is absorbed; the TU resends its 2xx"
    );
    let ack = c_ack(&req);
    s.handle_request(at(700), &scan(&ack).unwrap());
    assert_eq!(s.poll_event(), Some(Event::Ack(ack.clone())));
    assert_eq!(s.poll_timeout(), Some(at(32_100)), "timer L: 64*T1");
    // A second ACK is passed up too; timer L ends it, once.
    s.handle_request(at(800), &scan(&ack).unwrap());
    assert_eq!(s.poll_event(), Some(Event::Ack(ack)));
    assert_eq!(s.state(), ServerInviteState::Accepted);
    s.handle_timeout(at(32_099));
    assert_eq!(s.poll_event(), None);
    s.handle_timeout(at(32_100));
    assert_eq!(s.state(), ServerInviteState::Terminated);
    assert_eq!(s.poll_event(), Some(Event::Terminated));
    assert_eq!(s.poll_event(), None);
    assert_eq!(s.poll_timeout(), None);
}

#[test]
fn rfc3261_17_2_2_non_invite_server_retransmits_final_until_timer_j() {
    let req = request("BYE");
    let mut s = ServerNonInvite::new(at(0), CFG);
    s.handle_request(at(500));
    assert_eq!(
        s.poll_transmit(),
        None,
        "retransmissions in Trying are discarded"
    );
    s.send_response(at(600), 200, reply(&req, 200));
    assert!(s.poll_transmit().is_some());
    s.handle_request(at(1100));
    assert!(s.poll_transmit().unwrap().starts_with(b"SIP/2.0 200"));
    s.send_response(at(1200), 500, reply(&req, 500));
    assert_eq!(s.poll_transmit(), None, "one final response only");
    assert_eq!(s.poll_timeout(), Some(at(32_600)), "timer J: 64*T1");
    s.handle_timeout(at(32_600));
    assert_eq!(s.poll_event(), Some(Event::Terminated));
}

#[test]
fn rfc3261_17_1_1_2_transport_error_ends_the_transaction() {
    let mut c = ClientInvite::new(at(0), CFG, request("INVITE"));
    c.handle_transport_error();
    let evs: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
    assert_eq!(evs, vec![Event::TransportError, Event::Terminated]);
    assert_eq!(c.poll_timeout(), None);
}

#[test]
fn rfc3261_17_1_3_and_17_2_3_matching() {
    let inv = request("INVITE");
    let inv_m = scan(&inv).unwrap();
    let resp = reply(&inv, 180);
    assert_eq!(Key::client(&scan(&resp).unwrap()), Key::server(&inv_m));
    assert_eq!(
        Key::server(&scan(&c_ack(&inv)).unwrap()),
        Key::server(&inv_m),
        "ACK matches its INVITE"
    );
    let cancel = String::from_utf8(inv.clone())
        .unwrap()
        .replace("INVITE", "CANCEL")
        .into_bytes();
    let cancel_m = scan(&cancel).unwrap();
    assert_ne!(
        Key::server(&cancel_m),
        Key::server(&inv_m),
        "CANCEL is its own transaction"
    );
    assert_eq!(
        Key::cancel_target(&cancel_m),
        Key::server(&inv_m),
        "§9.2: it targets the INVITE"
    );
    let other = String::from_utf8(inv.clone())
        .unwrap()
        .replace("z9hG4bKtx1", "z9hG4bKtx2")
        .into_bytes();
    assert_ne!(Key::server(&scan(&other).unwrap()), Key::server(&inv_m));
    let upper = String::from_utf8(inv.clone())
        .unwrap()
        .replace("192.0.2.1:5060", "192.0.2.1")
        .into_bytes();
    assert_eq!(
        Key::server(&scan(&upper).unwrap()),
        Key::server(&inv_m),
        "default port 5060"
    );
}

#[test]
fn timer_config_validation() {
    assert!(CFG.validate().is_ok());
    let bad = TimerConfig {
        t1: Duration::from_secs(5),
        ..CFG
    };
    assert_eq!(bad.validate(), Err("t1 must not exceed t2"));
}
