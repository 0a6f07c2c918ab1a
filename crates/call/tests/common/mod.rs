//! Helpers shared by the B2BUA's scenario tests: a seeded RNG, a virtual
//! clock, and the messages the edge would deliver.
#![allow(dead_code)]

use std::time::Duration;

use handover_call::{B2bua, Config, Routes};
use handover_sip::ids::Hashing;
use handover_sip::{Message, scan};
use handover_txn::{Instant, TimerConfig};

pub(crate) struct Seq(pub u64);
impl rand_core::RngCore for Seq {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, d)
    }
}

pub(crate) fn at(ms: u64) -> Instant {
    Instant::from_epoch(Duration::from_millis(ms))
}

pub(crate) fn b2bua() -> B2bua<Seq> {
    b2bua_routed(&["b=127.0.0.1:5071"], 7)
}

/// A B2BUA that trusts these address prefixes (RFC 3325 identity).
pub(crate) fn b2bua_trusting(cidrs: &[&str]) -> B2bua<Seq> {
    let trusted = cidrs.iter().map(|c| c.parse().unwrap()).collect();
    b2bua_with(
        &["b=127.0.0.1:5071"],
        7,
        handover_call::trust::Trusted(trusted),
    )
}

/// A B2BUA with these routes (command-line form) and RNG seed.
pub(crate) fn b2bua_routed(specs: &[&str], seed: u64) -> B2bua<Seq> {
    b2bua_with(specs, seed, Default::default())
}

/// A B2BUA with these routes, RNG seed and trusted peers.
fn b2bua_with(specs: &[&str], seed: u64, trusted: handover_call::trust::Trusted) -> B2bua<Seq> {
    b2bua_full(specs, seed, trusted, usize::MAX)
}

/// A B2BUA that holds at most `max_calls` calls.
pub(crate) fn b2bua_max_calls(specs: &[&str], max_calls: usize) -> B2bua<Seq> {
    b2bua_full(specs, 1, Default::default(), max_calls)
}

/// A B2BUA that holds at most `n` calls per source address.
pub(crate) fn b2bua_per_source(n: usize) -> B2bua<Seq> {
    let mut b = b2bua_full(&["b=127.0.0.1:5071"], 1, Default::default(), usize::MAX);
    b.set_max_calls_per_source(n);
    b
}

/// A B2BUA with these `[sip]` limits.
pub(crate) fn b2bua_limits(limits: handover_sip::Limits) -> B2bua<Seq> {
    let mut b = b2bua_full(&["b=127.0.0.1:5071"], 1, Default::default(), usize::MAX);
    b.set_limits(limits);
    b
}

fn b2bua_full(
    specs: &[&str],
    seed: u64,
    trusted: handover_call::trust::Trusted,
    max_calls: usize,
) -> B2bua<Seq> {
    B2bua::new(config(specs, trusted, max_calls), Seq(seed))
}

/// A B2BUA trusting `cidrs`, with `extra` identity headers, asserting
/// authenticated callers' identities when `assert` (RFC 3325).
pub(crate) fn b2bua_identity(
    specs: &[&str],
    cidrs: &[&str],
    extra: &[&str],
    assert: bool,
) -> B2bua<Seq> {
    let trusted = cidrs.iter().map(|c| c.parse().unwrap()).collect();
    let mut cfg = config(specs, handover_call::trust::Trusted(trusted), usize::MAX);
    cfg.identity_headers = extra.iter().map(|h| h.to_string()).collect();
    cfg.assert_identity = assert;
    B2bua::new(cfg, Seq(7))
}

/// The B2BUA's settings for these routes (command-line form), trusted
/// peers and call limit; the rest as a worker's defaults.
pub(crate) fn config(
    specs: &[&str],
    trusted: handover_call::trust::Trusted,
    max_calls: usize,
) -> Config {
    let mut routes = Routes::default();
    for r in specs {
        routes.add(r).unwrap();
    }
    Config {
        advertised: "127.0.0.1:5060".into(),
        timers: TimerConfig::default(),
        hashing: Hashing::default(),
        routes,
        max_call_age: Duration::from_secs(3600),
        ring_timeout: Duration::from_secs(60),
        transfer_mode: Default::default(),
        trusted,
        max_calls,
        max_calls_per_source: 0,
        limits: Default::default(),
        identity_headers: Vec::new(),
        assert_identity: false,
    }
}

pub(crate) const SDP_A: &str = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";
pub(crate) const SDP_B: &str = "v=0\r\no=b 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\n";

/// A's INVITE as the edge forwards it: the edge's Via on top, its Record-Route.
pub(crate) fn a_invite() -> String {
    format!(
        "INVITE sip:b@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hxedge;k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa1;received=127.0.0.1;rport=5061\r\n\
Record-Route: <sip:127.0.0.1:5060;lr;k=1>\r\nMax-Forwards: 69\r\n\
From: <sip:alice@127.0.0.1:5061>;tag=at\r\nTo: <sip:b@127.0.0.1:5060>\r\nCall-ID: a-call\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:alice@127.0.0.1:5061>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    )
}

pub(crate) fn out(b: &mut B2bua<Seq>) -> Vec<(Option<std::net::SocketAddr>, Vec<u8>)> {
    std::iter::from_fn(|| b.poll_transmit()).collect()
}

pub(crate) fn first_line(b: &[u8]) -> String {
    String::from_utf8_lossy(b)
        .lines()
        .next()
        .unwrap_or("")
        .to_string()
}

/// B's response to our INVITE (as the callee sends it to the edge's Via).
pub(crate) fn b_resp(inv: &Message<'_>, status: &str, to_tag: &str, sdp: Option<&str>) -> String {
    let via = String::from_utf8_lossy(inv.top_via().span().of(inv.buf())).into_owned();
    let from = String::from_utf8_lossy(inv.from_field().value.of(inv.buf())).into_owned();
    let to = String::from_utf8_lossy(inv.to_field().value.of(inv.buf())).into_owned();
    let cid = String::from_utf8_lossy(inv.call_id()).into_owned();
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    format!(
        "SIP/2.0 {status}\r\nVia: {via}\r\nFrom: {from}\r\nTo: {to};tag={to_tag}\r\nCall-ID: {cid}\r\nCSeq: {} {}\r\n\
Contact: <sip:b@127.0.0.1:5071>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        inv.cseq().seq,
        String::from_utf8_lossy(inv.method_bytes()),
        body.len()
    )
}

/// An answered call: (b2bua, A's tag as the B2BUA set it, B's INVITE).
pub(crate) fn answered() -> (B2bua<Seq>, String, Vec<u8>) {
    let mut b = b2bua();
    b.handle_datagram(at(0), a_invite().as_bytes());
    let sent = out(&mut b);
    let bi = sent[1].1.clone();
    let m = scan(&bi).unwrap();
    b.handle_datagram(at(100), b_resp(&m, "200 OK", "bt", Some(SDP_B)).as_bytes());
    let sent = out(&mut b);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .unwrap();
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    // A acknowledges, as a phone does (without it the call is hung up
    // after 64·T1).
    b.handle_datagram(at(150), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    assert!(out(&mut b).is_empty(), "the ACK of our 2xx ends there");
    (b, a_tag, bi)
}

/// An in-dialog request from A (through the edge).
pub(crate) fn from_a(
    method: &str,
    seq: u32,
    branch: &str,
    a_tag: &str,
    sdp: Option<&str>,
) -> String {
    let body = sdp.unwrap_or("");
    let ct = if sdp.is_some() {
        "Content-Type: application/sdp\r\n"
    } else {
        ""
    };
    format!(
        "{method} sip:b2bua@127.0.0.1:5060;k=1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hx{branch};k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bK{branch}\r\nMax-Forwards: 69\r\nFrom: <sip:alice@127.0.0.1:5061>;tag=at\r\n\
To: <sip:b@127.0.0.1:5060>;tag={a_tag}\r\nCall-ID: a-call\r\nCSeq: {seq} {method}\r\nContact: <sip:alice@127.0.0.1:5061>\r\n\
{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// An in-dialog request from B, in B's dialog (B's INVITE `bi` made it).
pub(crate) fn from_b(bi: &Message<'_>, method: &str, seq: u32, branch: &str) -> String {
    format!(
        "{method} sip:b2bua@127.0.0.1:5060;k=1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hx{branch};k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK{branch}\r\nMax-Forwards: 69\r\nFrom: {};tag=bt\r\nTo: {}\r\n\
Call-ID: {}\r\nCSeq: {seq} {method}\r\nContact: <sip:b@127.0.0.1:5071>\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(bi.to_field().value.of(bi.buf())),
        String::from_utf8_lossy(bi.from_field().value.of(bi.buf())),
        String::from_utf8_lossy(bi.call_id()),
    )
}
