//! Transfer through the B2BUA core in passthrough mode (RFC 3515 REFER and
//! NOTIFY, RFC 3891 Replaces), on a virtual clock: what each party
//! receives, and what the B2BUA refuses.

#![allow(clippy::too_many_arguments)] // test helpers spell out each party

use handover_call::TransferResult;
use handover_sip::ids::Bound;
use handover_sip::{HeaderName, Message, scan};

mod common;
use common::*;

/// A new call's INVITE as the edge delivers it.
fn invite(call_id: &str, from: &str, port: u16, to_user: &str, extra: &str) -> String {
    format!(
        "INVITE sip:{to_user}@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hx{call_id};k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{call_id};received=127.0.0.1;rport={port}\r\n\
Max-Forwards: 69\r\nFrom: <sip:{from}@127.0.0.1:{port}>;tag={from}t\r\nTo: <sip:{to_user}@127.0.0.1:5060>\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:{from}@127.0.0.1:{port}>\r\n{extra}\
Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
        SDP_A.len()
    )
}

fn find(sent: &[(Option<std::net::SocketAddr>, Vec<u8>)], start: &str) -> Option<Vec<u8>> {
    sent.iter()
        .map(|(_, m)| m)
        .find(|m| first_line(m).starts_with(start))
        .cloned()
}

fn header(m: &[u8], name: HeaderName) -> String {
    let s = scan(m).unwrap();
    String::from_utf8_lossy(s.header(name).expect("header present").value.of(m)).into_owned()
}

/// A call from `from` (port `port`, Call-ID `cid`) to `to_user`, answered
/// by the callee with tag `callee_tag` and Contact on `callee_port`.
/// Returns the B2BUA's tag toward the caller and the callee leg's INVITE.
fn call(
    b: &mut handover_call::B2bua<Seq>,
    t: u64,
    cid: &str,
    from: &str,
    port: u16,
    to_user: &str,
    callee_tag: &str,
    callee_port: u16,
) -> (String, Vec<u8>) {
    b.handle_datagram(at(t), invite(cid, from, port, to_user, "").as_bytes());
    let leg = find(&out(b), "INVITE ").expect("callee leg");
    let m = scan(&leg).unwrap();
    let ok = b_resp(&m, "200 OK", callee_tag, Some(SDP_B)).replace(
        "Contact: <sip:b@127.0.0.1:5071>",
        &format!("Contact: <sip:{to_user}@127.0.0.1:{callee_port}>"),
    );
    b.handle_datagram(at(t + 10), ok.as_bytes());
    // Replicated, the 2xx waits for its record's commit (a no-op else).
    b.committed(at(t + 10), cid.as_bytes());
    let ok = find(&out(b), "SIP/2.0 200").expect("caller hears 200");
    let tag = String::from_utf8(scan(&ok).unwrap().to_tag().unwrap().to_vec()).unwrap();
    // The caller acknowledges, as a phone does (else the call is hung up
    // after 64·T1).
    let ack = from_caller(cid, from, port, to_user, &tag, "ACK", 1, "", None);
    b.handle_datagram(at(t + 20), ack.as_bytes());
    out(b);
    (tag, leg)
}

/// An in-dialog request from the callee of leg `leg` (the B2BUA's INVITE).
fn from_callee(
    leg: &Message<'_>,
    tag: &str,
    port: u16,
    method: &str,
    seq: u32,
    extra: &str,
    body: Option<(&str, &str)>,
) -> String {
    let (ct, body) = match body {
        Some((ct, b)) => (format!("Content-Type: {ct}\r\n"), b),
        None => (String::new(), ""),
    };
    format!(
        "{method} sip:b2bua@127.0.0.1:5060;k=1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hx{method}{seq}{port};k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{method}{seq}{port}\r\nMax-Forwards: 69\r\nFrom: {};tag={tag}\r\nTo: {}\r\n\
Call-ID: {}\r\nCSeq: {seq} {method}\r\nContact: <sip:x@127.0.0.1:{port}>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
        String::from_utf8_lossy(leg.to_field().value.of(leg.buf())),
        String::from_utf8_lossy(leg.from_field().value.of(leg.buf())),
        String::from_utf8_lossy(leg.call_id()),
        body.len()
    )
}

/// An in-dialog request from a caller (`cid`, tag `{from}t`) whose leg the
/// B2BUA tagged `our_tag`.
fn from_caller(
    cid: &str,
    from: &str,
    port: u16,
    to_user: &str,
    our_tag: &str,
    method: &str,
    seq: u32,
    extra: &str,
    body: Option<(&str, &str)>,
) -> String {
    let (ct, body) = match body {
        Some((ct, b)) => (format!("Content-Type: {ct}\r\n"), b),
        None => (String::new(), ""),
    };
    format!(
        "{method} sip:b2bua@127.0.0.1:5060;k=1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hx{method}{seq}{cid};k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:{port};branch=z9hG4bK{method}{seq}{cid}\r\nMax-Forwards: 69\r\n\
From: <sip:{from}@127.0.0.1:{port}>;tag={from}t\r\nTo: <sip:{to_user}@127.0.0.1:5060>;tag={our_tag}\r\n\
Call-ID: {cid}\r\nCSeq: {seq} {method}\r\nContact: <sip:{from}@127.0.0.1:{port}>\r\n{extra}{ct}Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

/// The answer of whoever received request `r` (as the B2BUA sent it).
fn answer(r: &[u8], status: &str) -> String {
    let m = scan(r).unwrap();
    format!(
        "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: {} {}\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(m.top_via().span().of(r)),
        String::from_utf8_lossy(m.from_field().value.of(r)),
        String::from_utf8_lossy(m.to_field().value.of(r)),
        String::from_utf8_lossy(m.call_id()),
        m.cseq().seq,
        String::from_utf8_lossy(m.method_bytes()),
    )
}

fn sipfrag(status: &str, state: &str) -> (String, (&'static str, String)) {
    (
        format!("Event: refer\r\nSubscription-State: {state}\r\n"),
        (
            "message/sipfrag;version=2.0",
            format!("SIP/2.0 {status}\r\n"),
        ),
    )
}

/// Alice (caller, 5061) calls Bob (user b, 5071); Bob is the transferor.
struct Scene {
    b: handover_call::B2bua<Seq>,
    /// The B2BUA's tag toward Alice.
    a_tag: String,
    /// The B2BUA's INVITE to Bob.
    bob_leg: Vec<u8>,
}

fn scene() -> Scene {
    scene_with(&["b=127.0.0.1:5071", "c=127.0.0.1:5072"])
}

/// The same, Bob's route in local mode.
fn local_scene() -> Scene {
    scene_with(&["b=127.0.0.1:5071;transfer=local", "c=127.0.0.1:5072"])
}

fn scene_with(routes: &[&str]) -> Scene {
    scene_of(b2bua_routed(routes, 7))
}

/// The same, the B2BUA replicating its calls.
fn replicated_scene(routes: &[&str]) -> Scene {
    let mut b = b2bua_routed(routes, 7);
    b.set_replication(true);
    scene_of(b)
}

/// The latest record `b` queued for replication.
fn last_record(b: &mut handover_call::B2bua<Seq>) -> handover_call::CallRecord {
    let mut last = None;
    while let Some(r) = b.poll_replication() {
        if let handover_call::Replication::Upsert(r) = r {
            last = Some(*r);
        }
    }
    last.expect("a record")
}

fn scene_of(mut b: handover_call::B2bua<Seq>) -> Scene {
    let (a_tag, bob_leg) = call(&mut b, 0, "a-call", "alice", 5061, "b", "bt", 5071);
    Scene { b, a_tag, bob_leg }
}

impl Scene {
    /// Bob sends REFER number `seq` with these extra headers; returns what
    /// the B2BUA sent.
    fn bob(
        &mut self,
        t: u64,
        method: &str,
        seq: u32,
        extra: &str,
        body: Option<(&str, &str)>,
    ) -> Vec<(Option<std::net::SocketAddr>, Vec<u8>)> {
        let leg = self.bob_leg.clone();
        let r = from_callee(&scan(&leg).unwrap(), "bt", 5071, method, seq, extra, body);
        self.b.handle_datagram(at(t), r.as_bytes());
        out(&mut self.b)
    }

    fn alice(
        &mut self,
        t: u64,
        method: &str,
        seq: u32,
        extra: &str,
        body: Option<(&str, &str)>,
    ) -> Vec<(Option<std::net::SocketAddr>, Vec<u8>)> {
        let r = from_caller(
            "a-call",
            "alice",
            5061,
            "b",
            &self.a_tag.clone(),
            method,
            seq,
            extra,
            body,
        );
        self.b.handle_datagram(at(t), r.as_bytes());
        out(&mut self.b)
    }

    fn feed(&mut self, t: u64, m: &str) -> Vec<(Option<std::net::SocketAddr>, Vec<u8>)> {
        self.b.handle_datagram(at(t), m.as_bytes());
        out(&mut self.b)
    }

    /// Bob refers Alice to `target`; Alice's 202; returns the REFER Alice got.
    fn refer_accepted(&mut self, t: u64, seq: u32, target: &str) -> Vec<u8> {
        let sent = self.bob(
            t,
            "REFER",
            seq,
            &format!("Refer-To: {target}\r\nReferred-By: <sip:b@10.9.9.9:5071>\r\n"),
            None,
        );
        let to_a = find(&sent, "REFER ").expect("REFER relayed to Alice");
        let sent = self.feed(t + 5, &answer(&to_a, "202 Accepted"));
        assert!(find(&sent, "SIP/2.0 202").is_some(), "Bob hears 202");
        to_a
    }
}

#[test]
fn refer_to_and_referred_by_name_only_the_edge() {
    let mut s = scene();
    let to_a = s.refer_accepted(1000, 1, "<sip:carol@10.1.2.3:5072;transport=udp>");
    assert_eq!(
        header(&to_a, HeaderName::ReferTo),
        "<sip:carol@127.0.0.1:5060;transport=udp>"
    );
    assert_eq!(
        header(&to_a, HeaderName::ReferredBy),
        "<sip:b@127.0.0.1:5060>"
    );
    let text = String::from_utf8_lossy(&to_a);
    assert!(
        !text.contains("10.1.2.3") && !text.contains("10.9.9.9"),
        "{text}"
    );
    assert_eq!(
        scan(&to_a).unwrap().call_id(),
        b"a-call",
        "in Alice's dialog"
    );
    let e = s.b.poll_transfer().unwrap();
    assert_eq!((e.attended, e.result), (false, TransferResult::Accepted));
}

#[test]
fn bad_refers_get_400_and_are_not_relayed() {
    let mut s = scene();
    for (seq, extra, phrase) in [
        (1, "", "400 Missing Refer-To"),
        (
            2,
            "Refer-To: <http://example.com/>\r\n",
            "400 Unsupported Refer-To URI",
        ),
        (
            3,
            "Refer-To: <sip:c@10.0.0.1>\r\nRefer-To: <sip:d@10.0.0.1>\r\n",
            "400 More Than One Refer-To",
        ),
    ] {
        let sent = s.bob(1000 + u64::from(seq), "REFER", seq, extra, None);
        assert!(find(&sent, "REFER ").is_none(), "not relayed: {phrase}");
        let r = find(&sent, "SIP/2.0 4").expect("answered");
        assert_eq!(first_line(&r), format!("SIP/2.0 {phrase}"));
    }
    assert!(s.b.poll_transfer().is_none());
    // The call is unharmed: Bob's next REFER goes through.
    s.refer_accepted(2000, 4, "<sip:c@127.0.0.1:5060>");
}

#[test]
fn a_second_refer_while_one_runs_gets_491_until_the_final_notify() {
    let mut s = scene();
    let to_a = s.refer_accepted(1000, 1, "<sip:c@127.0.0.1:5060>");
    let sent = s.bob(
        1100,
        "REFER",
        2,
        "Refer-To: <sip:d@127.0.0.1:5060>\r\n",
        None,
    );
    assert!(find(&sent, "REFER ").is_none());
    assert_eq!(
        first_line(&find(&sent, "SIP/2.0").unwrap()),
        "SIP/2.0 491 Request Pending"
    );
    // Alice's NOTIFY names the REFER she got (id = its CSeq on her leg);
    // Bob's copy names the REFER he sent.
    let her_id = scan(&to_a).unwrap().cseq().seq;
    let (h, (ct, body)) = sipfrag("200 OK", "terminated;reason=noresource");
    let h = h.replace("Event: refer", &format!("Event: refer;id={her_id}"));
    let sent = s.alice(3000, "NOTIFY", 2, &h, Some((ct, &body)));
    let n = find(&sent, "NOTIFY ").expect("relayed to Bob");
    assert_eq!(header(&n, HeaderName::Event), "refer;id=1");
    assert_eq!(scan(&n).unwrap().body(), body.as_bytes());
    s.feed(3010, &answer(&n, "200 OK"));
    // Over: a new REFER is relayed.
    let sent = s.bob(
        4000,
        "REFER",
        3,
        "Refer-To: <sip:d@127.0.0.1:5060>\r\n",
        None,
    );
    assert!(find(&sent, "REFER ").is_some());
}

#[test]
fn notify_for_no_subscription_gets_481_other_packages_pass() {
    let mut s = scene();
    let (h, (ct, body)) = sipfrag("200 OK", "active;expires=60");
    let sent = s.alice(1000, "NOTIFY", 2, &h, Some((ct, &body)));
    assert!(find(&sent, "NOTIFY ").is_none());
    assert_eq!(
        first_line(&find(&sent, "SIP/2.0").unwrap()),
        "SIP/2.0 481 Subscription Does Not Exist"
    );
    // The transferor itself cannot NOTIFY about its own REFER either.
    s.refer_accepted(2000, 1, "<sip:c@127.0.0.1:5060>");
    let sent = s.bob(2100, "NOTIFY", 2, &h, Some((ct, &body)));
    assert!(first_line(&find(&sent, "SIP/2.0").unwrap()).starts_with("SIP/2.0 481"));
    // Another event package (a subscription the phones made) is relayed.
    let sent = s.alice(
        2200,
        "NOTIFY",
        3,
        "Event: dialog\r\nSubscription-State: active\r\n",
        None,
    );
    assert!(find(&sent, "NOTIFY ").is_some());
}

#[test]
fn a_refused_refer_is_relayed_and_ends_the_transfer() {
    let mut s = scene();
    for (i, status) in [
        "403 Forbidden",
        "405 Method Not Allowed",
        "501 Not Implemented",
    ]
    .into_iter()
    .enumerate()
    {
        let seq = i as u32 + 1;
        let t = 1000 * u64::from(seq);
        let sent = s.bob(
            t,
            "REFER",
            seq,
            "Refer-To: <sip:c@127.0.0.1:5060>\r\n",
            None,
        );
        let to_a = find(&sent, "REFER ").expect("relayed");
        let sent = s.feed(t + 5, &answer(&to_a, status));
        assert_eq!(
            first_line(&find(&sent, "SIP/2.0").unwrap()),
            format!("SIP/2.0 {status}")
        );
        let e = s.b.poll_transfer().unwrap();
        assert_eq!(e.result, TransferResult::Rejected);
    }
    assert_eq!(s.b.calls_active(), 1, "the call stays up");
}

#[test]
fn a_failed_transfer_keeps_the_call_and_it_can_be_resumed() {
    let mut s = scene();
    s.refer_accepted(1000, 1, "<sip:c@127.0.0.1:5060>");
    let (h, (ct, body)) = sipfrag("486 Busy Here", "terminated;reason=noresource");
    let sent = s.alice(3000, "NOTIFY", 2, &h, Some((ct, &body)));
    let n = find(&sent, "NOTIFY ").expect("Bob hears the failure");
    assert_eq!(scan(&n).unwrap().body(), b"SIP/2.0 486 Busy Here\r\n");
    s.feed(3010, &answer(&n, "200 OK"));
    s.b.poll_transfer();
    assert_eq!(s.b.poll_transfer().unwrap().result, TransferResult::Failed);
    // Bob takes Alice off hold: the re-INVITE reaches her.
    let sdp = SDP_B;
    let sent = s.bob(4000, "INVITE", 2, "", Some(("application/sdp", sdp)));
    let re = find(&sent, "INVITE ").expect("re-INVITE relayed to Alice");
    assert_eq!(scan(&re).unwrap().call_id(), b"a-call");
    assert_eq!(scan(&re).unwrap().body(), sdp.as_bytes());
}

#[test]
fn the_transferor_hanging_up_right_after_202_still_hears_the_notifies() {
    let mut s = scene();
    s.refer_accepted(1000, 1, "<sip:c@127.0.0.1:5060>");
    let sent = s.bob(1100, "BYE", 2, "", None);
    let bye = find(&sent, "BYE ").expect("BYE relayed to Alice");
    s.feed(1110, &answer(&bye, "200 OK"));
    assert_eq!(s.b.calls_active(), 0);
    // Alice's NOTIFYs come after the BYE, one well after its transaction
    // ended: the REFER's subscription outlives the call (it says 120 s).
    let (h, (ct, body)) = sipfrag("100 Trying", "active;expires=120");
    let sent = s.alice(2000, "NOTIFY", 2, &h, Some((ct, &body)));
    let n = find(&sent, "NOTIFY ").expect("relayed after the BYE");
    s.feed(2010, &answer(&n, "200 OK"));
    s.b.handle_timeout(at(70_000));
    out(&mut s.b);
    let (h, (ct, body)) = sipfrag("200 OK", "terminated;reason=noresource");
    let sent = s.alice(75_000, "NOTIFY", 3, &h, Some((ct, &body)));
    let n = find(&sent, "NOTIFY ").expect("the final NOTIFY reaches Bob");
    s.feed(75_010, &answer(&n, "200 OK"));
    s.b.poll_transfer();
    assert_eq!(
        s.b.poll_transfer().unwrap().result,
        TransferResult::Succeeded
    );
    // Nothing but NOTIFY lives on after the BYE.
    let sent = s.alice(75_100, "INFO", 4, "", None);
    assert!(first_line(&find(&sent, "SIP/2.0").unwrap()).starts_with("SIP/2.0 481"));
    // And once the subscription and the transactions are over, the call
    // is forgotten.
    s.b.handle_timeout(at(200_000));
    out(&mut s.b);
    assert_eq!(s.b.calls_held(), 0);
}

#[test]
fn attended_transfer_translates_replaces_and_the_new_call_reaches_the_replaced_dialog() {
    let mut s = scene();
    // Bob's second call: Bob (caller, 5071) calls Carol (user c, 5072).
    let (our_tag_to_bob, carol_leg) = call(&mut s.b, 500, "bob-2", "bob", 5071, "c", "ct", 5072);
    let cl = scan(&carol_leg).unwrap();
    // Bob refers Alice to Carol, replacing his dialog with the cluster on
    // that call: Call-ID bob-2, to-tag ours, from-tag his; the URI is the
    // Contact we gave him there, with its key token (bound to bob-2).
    let h = handover_sip::ids::Hashing::default();
    let key2 = h.affinity_key(b"bob-2");
    let token = String::from_utf8(h.key_token(key2, Bound::CallId, b"bob-2").to_vec()).unwrap();
    let target = format!(
        "<sip:b2bua@127.0.0.1:5060;k={token}?Replaces=bob-2%3Bto-tag%3D{our_tag_to_bob}%3Bfrom-tag%3Dbobt>"
    );
    let to_a = s.refer_accepted(1000, 1, &target);
    let rt = header(&to_a, HeaderName::ReferTo);
    // Alice is told the dialog Carol knows: the leg to Carol's Call-ID, her
    // tag as to-tag, ours on that leg as from-tag.
    let want = format!(
        "Replaces={}%3Bto-tag%3Dct%3Bfrom-tag%3D{}",
        String::from_utf8_lossy(cl.call_id()),
        String::from_utf8_lossy(cl.from_tag().unwrap())
    );
    assert!(rt.contains(&want), "{rt} lacks {want}");
    // The token now goes with that Replaces: Alice's INVITE, sent to this
    // URI, reaches the worker of Bob's second call by it (the edge checks
    // it against the Replaces' Call-ID).
    let k = rt
        .split(";k=")
        .nth(1)
        .unwrap()
        .split(['?', ';', '>'])
        .next()
        .unwrap();
    assert_eq!(
        h.open_key_token(k.as_bytes(), Bound::CallId, cl.call_id()),
        Some(key2),
        "{rt}"
    );
    assert!(s.b.poll_transfer().unwrap().attended);
    // Alice's INVITE with that Replaces goes to Carol's Contact (the
    // replaced dialog's target), with the Replaces header unchanged.
    let replaces = format!(
        "{};to-tag=ct;from-tag={}",
        String::from_utf8_lossy(cl.call_id()),
        String::from_utf8_lossy(cl.from_tag().unwrap())
    );
    s.b.handle_datagram(
        at(2000),
        invite(
            "a-2",
            "alice",
            5061,
            "c",
            &format!("Replaces: {replaces}\r\n"),
        )
        .as_bytes(),
    );
    let inv = find(&out(&mut s.b), "INVITE ").expect("to Carol");
    let m = scan(&inv).unwrap();
    assert_eq!(m.request_uri().unwrap().port(), Some(5072));
    assert_eq!(header(&inv, HeaderName::Replaces), replaces);
    assert_ne!(m.call_id(), cl.call_id(), "a new dialog with Carol");
    // A Replaces naming no dialog we know is left for the callee to judge.
    let sent = s.bob(
        3000,
        "REFER",
        2,
        "Refer-To: <sip:c@127.0.0.1:5060?Replaces=nope%3Bto-tag%3D1%3Bfrom-tag%3D2>\r\n",
        None,
    );
    assert!(
        find(&sent, "SIP/2.0 491").is_some(),
        "one transfer at a time"
    );
}

const SDP_C: &str = "v=0\r\no=carol 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 8000 RTP/AVP 0\r\n";
const SDP_A2: &str = "v=0\r\no=a 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";

/// A 2xx (or other answer) to request `r` from its callee, with `tag` and
/// optionally a body.
fn answer_with(
    r: &[u8],
    status: &str,
    tag: Option<&str>,
    contact_port: u16,
    sdp: Option<&str>,
) -> String {
    let m = scan(r).unwrap();
    let to = String::from_utf8_lossy(m.to_field().value.of(r)).into_owned();
    let to = match tag {
        Some(t) if m.to_tag().is_none() => format!("{to};tag={t}"),
        _ => to,
    };
    let (ct, body) = match sdp {
        Some(b) => ("Content-Type: application/sdp\r\n", b),
        None => ("", ""),
    };
    format!(
        "SIP/2.0 {status}\r\nVia: {}\r\nFrom: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {} {}\r\n\
Contact: <sip:x@127.0.0.1:{contact_port}>\r\n{ct}Content-Length: {}\r\n\r\n{body}",
        String::from_utf8_lossy(m.top_via().span().of(r)),
        String::from_utf8_lossy(m.from_field().value.of(r)),
        String::from_utf8_lossy(m.call_id()),
        m.cseq().seq,
        String::from_utf8_lossy(m.method_bytes()),
        body.len()
    )
}

fn all(sent: &[(Option<std::net::SocketAddr>, Vec<u8>)], start: &str) -> Vec<Vec<u8>> {
    sent.iter()
        .map(|(_, m)| m)
        .filter(|m| first_line(m).starts_with(start))
        .cloned()
        .collect()
}

fn frag(n: &[u8]) -> String {
    String::from_utf8_lossy(scan(n).unwrap().body()).into_owned()
}

#[test]
fn local_blind_transfer_calls_the_target_and_reinvites_the_transferee() {
    let mut s = local_scene();
    let sent = s.bob(
        1000,
        "REFER",
        1,
        "Refer-To: <sip:c@10.1.2.3>\r\nReferred-By: <sip:b@10.9.9.9:5071>\r\n",
        None,
    );
    // Bob: 202 and NOTIFY 100 Trying, from the B2BUA itself.
    assert!(find(&sent, "SIP/2.0 202").is_some());
    let n = find(&sent, "NOTIFY ").expect("NOTIFY 100");
    assert_eq!(frag(&n), "SIP/2.0 100 Trying\r\n");
    assert_eq!(header(&n, HeaderName::Event), "refer;id=1");
    assert!(header(&n, HeaderName::SubscriptionState).starts_with("active"));
    s.feed(1010, &answer(&n, "200 OK"));
    // Alice never sees a REFER.
    assert!(find(&sent, "REFER ").is_none());
    // Carol: an offerless INVITE from Alice, referred by Bob (the edge).
    let inv = find(&sent, "INVITE ").expect("INVITE to Carol");
    let im = scan(&inv).unwrap();
    assert_eq!(im.request_uri().unwrap().port(), Some(5072));
    assert!(im.body().is_empty(), "offerless");
    assert!(header(&inv, HeaderName::From).starts_with("<sip:alice@127.0.0.1:5061>"));
    assert_eq!(
        header(&inv, HeaderName::ReferredBy),
        "<sip:b@127.0.0.1:5060>"
    );
    // Carol answers with her offer: Alice is re-INVITEd with it.
    s.feed(
        1100,
        &answer_with(&inv, "180 Ringing", Some("ct"), 5072, None),
    );
    let sent = s.feed(
        1200,
        &answer_with(&inv, "200 OK", Some("ct"), 5072, Some(SDP_C)),
    );
    assert!(
        find(&sent, "ACK ").is_none(),
        "Carol's ACK waits for Alice's answer"
    );
    let re = find(&sent, "INVITE ").expect("re-INVITE to Alice");
    let rm = scan(&re).unwrap();
    assert_eq!(rm.call_id(), b"a-call");
    assert_eq!(rm.body(), SDP_C.as_bytes(), "Carol's offer");
    // Alice answers: both 2xx are ACKed, Carol's with Alice's answer.
    let sent = s.feed(1300, &answer_with(&re, "200 OK", None, 5061, Some(SDP_A2)));
    let acks = all(&sent, "ACK ");
    assert_eq!(
        acks.len(),
        2,
        "{:?}",
        acks.iter().map(|a| first_line(a)).collect::<Vec<_>>()
    );
    let to_carol = acks
        .iter()
        .find(|a| scan(a).unwrap().call_id() == im.call_id())
        .expect("ACK to Carol");
    assert_eq!(scan(to_carol).unwrap().body(), SDP_A2.as_bytes());
    // Bob: NOTIFY 200 (terminated), then BYE.
    let n = find(&sent, "NOTIFY ").expect("final NOTIFY");
    assert_eq!(frag(&n), "SIP/2.0 200 OK\r\n");
    assert!(header(&n, HeaderName::SubscriptionState).starts_with("terminated"));
    let bye = find(&sent, "BYE ").expect("BYE to Bob");
    assert_eq!(
        scan(&bye).unwrap().call_id(),
        scan(&s.bob_leg).unwrap().call_id()
    );
    s.feed(1310, &answer(&n, "200 OK"));
    s.feed(1320, &answer(&bye, "200 OK"));
    // Bob's late BYE retransmission or request on the old leg: 481.
    let sent = s.bob(1400, "INFO", 9, "", None);
    assert!(first_line(&find(&sent, "SIP/2.0").unwrap()).starts_with("SIP/2.0 481"));
    // Alice and Carol are talking: Alice's BYE reaches Carol.
    let sent = s.alice(5000, "BYE", 3, "", None);
    let bye = find(&sent, "BYE ").expect("BYE to Carol");
    assert_eq!(scan(&bye).unwrap().call_id(), im.call_id());
    let evs: Vec<_> = std::iter::from_fn(|| s.b.poll_transfer()).collect();
    assert_eq!(
        evs.iter().map(|e| (e.local, e.result)).collect::<Vec<_>>(),
        [
            (true, TransferResult::Accepted),
            (true, TransferResult::Succeeded)
        ]
    );
    assert_eq!(s.b.calls_active(), 0);
}

#[test]
fn local_transfer_to_a_busy_target_keeps_the_call() {
    let mut s = local_scene();
    let sent = s.bob(
        1000,
        "REFER",
        1,
        "Refer-To: <sip:c@127.0.0.1:5060>\r\n",
        None,
    );
    let inv = find(&sent, "INVITE ").unwrap();
    let sent = s.feed(
        1100,
        &answer_with(&inv, "486 Busy Here", Some("ct"), 5072, None),
    );
    assert!(find(&sent, "ACK ").is_some(), "the 486 is ACKed");
    let n = find(&sent, "NOTIFY ").expect("failure NOTIFY");
    assert_eq!(frag(&n), "SIP/2.0 486 Busy Here\r\n");
    assert!(header(&n, HeaderName::SubscriptionState).starts_with("terminated"));
    assert!(find(&sent, "BYE ").is_none(), "nobody is hung up");
    // Bob resumes the call: his re-INVITE reaches Alice.
    let sent = s.bob(2000, "INVITE", 2, "", Some(("application/sdp", SDP_B)));
    assert!(find(&sent, "INVITE ").is_some_and(|r| scan(&r).unwrap().call_id() == b"a-call"));
    let evs: Vec<_> = std::iter::from_fn(|| s.b.poll_transfer()).collect();
    assert_eq!(evs.last().unwrap().result, TransferResult::Failed);
    // Another REFER may follow (the first one is over).
    let sent = s.bob(
        3000,
        "REFER",
        3,
        "Refer-To: <sip:nobody@127.0.0.1:5060>\r\n",
        None,
    );
    assert!(find(&sent, "SIP/2.0 202").is_some());
    let n = find(&sent, "NOTIFY ").unwrap();
    assert_eq!(
        frag(&n),
        "SIP/2.0 404 Not Found\r\n",
        "no route for the target"
    );
}

#[test]
fn local_transfer_target_not_answering_is_cancelled_at_the_ring_timeout() {
    let mut s = local_scene();
    let sent = s.bob(
        1000,
        "REFER",
        1,
        "Refer-To: <sip:c@127.0.0.1:5060>\r\n",
        None,
    );
    let inv = find(&sent, "INVITE ").unwrap();
    s.feed(
        1100,
        &answer_with(&inv, "180 Ringing", Some("ct"), 5072, None),
    );
    s.b.handle_timeout(at(61_000));
    let sent = out(&mut s.b);
    let cancel = find(&sent, "CANCEL ").expect("CANCEL to Carol");
    s.feed(
        61_010,
        &answer_with(&cancel, "200 OK", Some("ct"), 5072, None),
    );
    let sent = s.feed(
        61_020,
        &answer_with(&inv, "487 Request Terminated", Some("ct"), 5072, None),
    );
    let n = find(&sent, "NOTIFY ").expect("failure NOTIFY");
    assert_eq!(frag(&n), "SIP/2.0 408 Request Timeout\r\n");
    assert_eq!(s.b.calls_active(), 1);
}

#[test]
fn local_transfer_refused_by_the_transferee_hangs_up_the_target() {
    let mut s = local_scene();
    let sent = s.bob(
        1000,
        "REFER",
        1,
        "Refer-To: <sip:c@127.0.0.1:5060>\r\n",
        None,
    );
    let inv = find(&sent, "INVITE ").unwrap();
    let sent = s.feed(
        1200,
        &answer_with(&inv, "200 OK", Some("ct"), 5072, Some(SDP_C)),
    );
    let re = find(&sent, "INVITE ").unwrap();
    let sent = s.feed(
        1300,
        &answer_with(&re, "488 Not Acceptable Here", None, 5061, None),
    );
    let acks = all(&sent, "ACK ");
    assert_eq!(acks.len(), 2, "Alice's 488 and Carol's 200 are ACKed");
    let bye = find(&sent, "BYE ").expect("Carol is hung up");
    assert_eq!(scan(&bye).unwrap().call_id(), scan(&inv).unwrap().call_id());
    let n = find(&sent, "NOTIFY ").unwrap();
    assert_eq!(frag(&n), "SIP/2.0 488 Not Acceptable Here\r\n");
    // Alice and Bob are still connected.
    let sent = s.alice(2000, "INFO", 2, "", None);
    assert!(
        find(&sent, "INFO ")
            .is_some_and(|r| scan(&r).unwrap().call_id() == scan(&s.bob_leg).unwrap().call_id())
    );
}

#[test]
fn local_attended_transfer_bridges_the_transferee_with_the_target() {
    let mut s = local_scene();
    // Bob's second call, to Carol; Bob's route (the first call's) is local.
    let (our_tag_to_bob, carol_leg) = call(&mut s.b, 500, "bob-2", "bob", 5071, "c", "ct", 5072);
    let cl = scan(&carol_leg).unwrap();
    let target = format!(
        "<sip:c@127.0.0.1:5060?Replaces=bob-2%3Bto-tag%3D{our_tag_to_bob}%3Bfrom-tag%3Dbobt>"
    );
    let sent = s.bob(1000, "REFER", 1, &format!("Refer-To: {target}\r\n"), None);
    assert!(find(&sent, "SIP/2.0 202").is_some());
    // Carol: an offerless re-INVITE in the dialog she has (no new call).
    let re_c = find(&sent, "INVITE ").expect("re-INVITE to Carol");
    let rc = scan(&re_c).unwrap();
    assert_eq!(rc.call_id(), cl.call_id());
    assert!(rc.to_tag().is_some() && rc.body().is_empty());
    let sent = s.feed(1100, &answer_with(&re_c, "200 OK", None, 5072, Some(SDP_C)));
    let re_a = find(&sent, "INVITE ").expect("re-INVITE to Alice");
    assert_eq!(scan(&re_a).unwrap().call_id(), b"a-call");
    assert_eq!(scan(&re_a).unwrap().body(), SDP_C.as_bytes());
    let sent = s.feed(
        1200,
        &answer_with(&re_a, "200 OK", None, 5061, Some(SDP_A2)),
    );
    let ack_c = all(&sent, "ACK ")
        .into_iter()
        .find(|a| scan(a).unwrap().call_id() == cl.call_id())
        .expect("ACK to Carol");
    assert_eq!(scan(&ack_c).unwrap().body(), SDP_A2.as_bytes());
    // Bob is hung up on both of his calls, after NOTIFY 200.
    let byes = all(&sent, "BYE ");
    let ids: std::collections::HashSet<Vec<u8>> = byes
        .iter()
        .map(|b| scan(b).unwrap().call_id().to_vec())
        .collect();
    assert_eq!(ids.len(), 2, "one BYE per call of Bob's");
    assert!(ids.contains(b"bob-2".as_slice()));
    assert!(ids.contains(scan(&s.bob_leg).unwrap().call_id()));
    assert!(!ids.contains(cl.call_id()), "Carol stays");
    assert!(find(&sent, "NOTIFY ").is_some_and(|n| frag(&n) == "SIP/2.0 200 OK\r\n"));
    // Carol's BYE reaches Alice.
    let bye = from_callee(&cl, "ct", 5072, "BYE", 1, "", None);
    let sent = s.feed(5000, &bye);
    let to_alice = find(&sent, "BYE ").expect("BYE to Alice");
    assert_eq!(scan(&to_alice).unwrap().call_id(), b"a-call");
    assert_eq!(s.b.calls_active(), 0);
}

#[test]
fn local_transfer_to_an_unreachable_target_reports_408_and_keeps_the_call() {
    let mut s = local_scene();
    let sent = s.bob(
        1000,
        "REFER",
        1,
        "Refer-To: <sip:c@127.0.0.1:5060>\r\n",
        None,
    );
    assert!(find(&sent, "INVITE ").is_some());
    let trying = find(&sent, "NOTIFY ").unwrap();
    s.feed(1010, &answer(&trying, "200 OK"));
    // Nothing ever answers: timer B (64*T1) ends the INVITE.
    s.b.handle_timeout(at(1000 + 32_000));
    let sent = out(&mut s.b);
    let n = find(&sent, "NOTIFY ").expect("failure NOTIFY");
    assert_eq!(frag(&n), "SIP/2.0 408 Request Timeout\r\n");
    assert!(find(&sent, "BYE ").is_none());
    assert_eq!(s.b.calls_active(), 1);
    let evs: Vec<_> = std::iter::from_fn(|| s.b.poll_transfer()).collect();
    assert_eq!(evs.last().unwrap().result, TransferResult::Failed);
}

/// The two calls of an attended transfer on different workers (with three
/// workers, two transfers in three): worker 2 holds Bob's call to Carol,
/// worker 1 the call Bob refers Alice on, worker 3 gets Alice's new call.
/// Each reads the other call from its committed record (what every
/// worker's replica holds), handed over for the one datagram.
#[test]
fn attended_transfer_across_workers_reads_the_other_call_from_its_record() {
    let routes = ["b=127.0.0.1:5071", "c=127.0.0.1:5072"];
    let mut w2 = b2bua_routed(&routes, 9);
    w2.set_replication(true);
    w2.handle_datagram(at(500), invite("bob-2", "bob", 5071, "c", "").as_bytes());
    let carol_leg = find(&out(&mut w2), "INVITE ").expect("Carol's leg");
    let cl = scan(&carol_leg).unwrap();
    let ok = b_resp(&cl, "200 OK", "ct", Some(SDP_B)).replace(
        "Contact: <sip:b@127.0.0.1:5071>",
        "Contact: <sip:c@127.0.0.1:5072>",
    );
    w2.handle_datagram(at(510), ok.as_bytes());
    let record = std::iter::from_fn(|| w2.poll_replication())
        .find_map(|r| match r {
            handover_call::Replication::Upsert(r) => Some(*r),
            handover_call::Replication::Remove { .. }
            | handover_call::Replication::Acked { .. }
            | handover_call::Replication::Replaced { .. } => None,
        })
        .expect("the confirmed call's record");
    w2.committed(at(520), b"bob-2");
    let ok = find(&out(&mut w2), "SIP/2.0 200").expect("Bob hears 200 once committed");
    let our_tag_to_bob = String::from_utf8(scan(&ok).unwrap().to_tag().unwrap().to_vec()).unwrap();

    let mut w1 = scene();
    let bob_leg = w1.bob_leg.clone();
    let refer = |seq: u32| {
        from_callee(
            &scan(&bob_leg).unwrap(),
            "bt",
            5071,
            "REFER",
            seq,
            &format!(
                "Refer-To: <sip:c@127.0.0.1:5060?Replaces=bob-2%3Bto-tag%3D{our_tag_to_bob}%3Bfrom-tag%3Dbobt>\r\n"
            ),
            None,
        )
    };
    // Without the record (a call not committed yet, or unknown): refused,
    // and nothing of Bob's dialog reaches Alice.
    let r1 = refer(1);
    assert_eq!(
        w1.b.named_elsewhere(&handover_sip::scan(r1.as_bytes()).unwrap()),
        Some(b"bob-2".to_vec())
    );
    let sent = w1.feed(1000, &r1);
    assert!(find(&sent, "REFER ").is_none(), "not relayed untranslated");
    let refused = find(&sent, "SIP/2.0 ").expect("an answer to Bob");
    assert_eq!(
        first_line(&refused),
        "SIP/2.0 400 Replaces names no confirmed call"
    );
    // With it: Alice is told the dialog Carol knows.
    let r2 = refer(2);
    w1.b.learn_remote(record.clone());
    let sent = w1.feed(1100, &r2);
    w1.b.forget_remote();
    let to_a = find(&sent, "REFER ").expect("REFER relayed to Alice");
    let want = format!(
        "Replaces={}%3Bto-tag%3Dct%3Bfrom-tag%3D{}",
        String::from_utf8_lossy(cl.call_id()),
        String::from_utf8_lossy(cl.from_tag().unwrap())
    );
    let rt = header(&to_a, HeaderName::ReferTo);
    assert!(rt.contains(&want), "{rt} lacks {want}");
    assert!(
        !rt.contains("bob-2"),
        "Bob's Call-ID never reaches Alice: {rt}"
    );
    assert_eq!(w1.b.stats().replaces_elsewhere, 1);

    // Alice's INVITE with that Replaces lands on a third worker: it finds
    // Carol's dialog by that leg's Call-ID and sends the call to her.
    let replaces = format!(
        "{};to-tag=ct;from-tag={}",
        String::from_utf8_lossy(cl.call_id()),
        String::from_utf8_lossy(cl.from_tag().unwrap())
    );
    let mut w3 = b2bua_routed(&routes, 11);
    let inv = invite(
        "a-2",
        "alice",
        5061,
        "nobody",
        &format!("Replaces: {replaces}\r\n"),
    );
    assert_eq!(
        w3.named_elsewhere(&handover_sip::scan(inv.as_bytes()).unwrap()),
        Some(cl.call_id().to_vec())
    );
    w3.learn_remote(record);
    w3.handle_datagram(at(2000), inv.as_bytes());
    w3.forget_remote();
    let to_c = find(&out(&mut w3), "INVITE ").expect("to Carol, with no route for `nobody`");
    assert_eq!(
        scan(&to_c).unwrap().request_uri().unwrap().port(),
        Some(5072)
    );
    assert_eq!(header(&to_c, HeaderName::Replaces), replaces);
}

/// A caller's Contact is its own word: a Replaces naming a caller's dialog
/// sends the new call there only when that Contact is the address the
/// caller's INVITE came from. Otherwise the INVITE is routed as any other:
/// nobody can make the B2BUA call an address of their choosing by naming
/// their own call.
#[test]
fn a_replaces_aims_at_a_callers_contact_only_where_the_caller_is() {
    let mut b = b2bua_routed(&["b=127.0.0.1:5071", "c=127.0.0.1:5072"], 5);
    let answer = |b: &mut handover_call::B2bua<Seq>, t: u64, inv: &str| {
        b.handle_datagram(at(t), inv.as_bytes());
        let leg = find(&out(b), "INVITE ").expect("callee leg");
        let m = scan(&leg).unwrap();
        b.handle_datagram(
            at(t + 10),
            b_resp(&m, "200 OK", "bt", Some(SDP_B)).as_bytes(),
        );
        let ok = find(&out(b), "SIP/2.0 200").expect("caller hears 200");
        String::from_utf8(scan(&ok).unwrap().to_tag().unwrap().to_vec()).unwrap()
    };
    let replacing = |cid: &str, caller_tag: &str, ours: &str| {
        invite(
            &format!("r-{cid}"),
            "eve",
            5090,
            "c",
            &format!("Replaces: {cid};to-tag={caller_tag};from-tag={ours}\r\n"),
        )
    };
    // Mallory calls from 127.0.0.1:5063 with a Contact naming someone else.
    let spoofed = invite("m-1", "mallory", 5063, "b", "").replace(
        "Contact: <sip:mallory@127.0.0.1:5063>",
        "Contact: <sip:victim@203.0.113.9:5060>",
    );
    let ours = answer(&mut b, 0, &spoofed);
    b.handle_datagram(at(100), replacing("m-1", "malloryt", &ours).as_bytes());
    let inv = find(&out(&mut b), "INVITE ").expect("routed");
    let m = scan(&inv).unwrap();
    assert_eq!(
        m.request_uri().unwrap().as_bytes(),
        b"sip:c@127.0.0.1:5072",
        "routed by the routes, not to the Contact Mallory wrote"
    );
    // Alice, whose Contact is where she calls from, is reached.
    let ours = answer(&mut b, 200, &invite("a-1", "alice", 5061, "b", ""));
    b.handle_datagram(at(300), replacing("a-1", "alicet", &ours).as_bytes());
    let inv = find(&out(&mut b), "INVITE ").expect("to Alice");
    let m = scan(&inv).unwrap();
    assert_eq!(
        m.request_uri().unwrap().port(),
        Some(5061),
        "the replaced dialog's party"
    );
}

/// A local transfer goes on at the worker that takes its call over (its
/// shard moved, or its worker died): the record says how far it got, and
/// the new owner sends the request waited on again, the same request (a
/// retransmission to its receiver). Taken over once while Carol rings and
/// once while Alice's answer is awaited.
#[test]
fn a_local_transfer_is_finished_by_the_workers_that_take_its_call_over() {
    let routes = ["b=127.0.0.1:5071;transfer=local", "c=127.0.0.1:5072"];
    let mut s = replicated_scene(&routes);
    let sent = s.bob(1000, "REFER", 1, "Refer-To: <sip:c@10.1.2.3>\r\n", None);
    assert!(find(&sent, "SIP/2.0 202").is_some());
    let inv = find(&sent, "INVITE ").expect("INVITE to Carol");
    s.feed(
        1100,
        &answer_with(&inv, "180 Ringing", Some("ct"), 5072, None),
    );
    let rec = last_record(&mut s.b);
    let l = rec.local.as_ref().expect("the transfer is in the record");
    assert_eq!(
        (l.t_out.as_slice(), l.r_out.as_ref()),
        (inv.as_slice(), None)
    );
    assert!(l.ring_until_ms.is_some());

    let mut w2 = b2bua_routed(&routes, 99);
    w2.set_replication(true);
    assert!(w2.adopt(at(1200), rec));
    let again = find(&out(&mut w2), "INVITE ").expect("the INVITE to Carol again");
    assert_eq!(again, inv, "the same request");
    // Carol answers the new owner: Alice is re-INVITEd with her offer.
    w2.handle_datagram(
        at(1300),
        answer_with(&inv, "200 OK", Some("ct"), 5072, Some(SDP_C)).as_bytes(),
    );
    let sent = out(&mut w2);
    let re = find(&sent, "INVITE ").expect("re-INVITE to Alice");
    assert_eq!(scan(&re).unwrap().call_id(), b"a-call");
    assert_eq!(scan(&re).unwrap().body(), SDP_C.as_bytes());
    let rec = last_record(&mut w2);
    let l = rec.local.as_ref().expect("still running");
    assert_eq!(l.r_out.as_ref(), Some(&re));
    assert_eq!(
        l.t_dialog.as_ref().map(|d| d.remote_tag().to_vec()),
        Some(b"ct".to_vec())
    );

    let mut w3 = b2bua_routed(&routes, 98);
    w3.set_replication(true);
    assert!(w3.adopt(at(1400), rec));
    let again = find(&out(&mut w3), "INVITE ").expect("the re-INVITE again");
    assert_eq!(again, re, "the same request");
    // Alice answers: both 2xx are ACKed, Carol's with Alice's answer; Bob
    // hears 200 and gets BYE.
    w3.handle_datagram(
        at(1500),
        answer_with(&re, "200 OK", None, 5061, Some(SDP_A2)).as_bytes(),
    );
    let sent = out(&mut w3);
    let acks = all(&sent, "ACK ");
    let carol = scan(&inv).unwrap().call_id().to_vec();
    let to_carol = acks
        .iter()
        .find(|a| scan(a).unwrap().call_id() == carol.as_slice())
        .expect("ACK to Carol");
    assert_eq!(scan(to_carol).unwrap().body(), SDP_A2.as_bytes());
    let n = find(&sent, "NOTIFY ").expect("final NOTIFY");
    assert_eq!(frag(&n), "SIP/2.0 200 OK\r\n");
    assert_eq!(header(&n, HeaderName::Event), "refer;id=1");
    let bye = find(&sent, "BYE ").expect("BYE to Bob");
    assert_eq!(
        scan(&bye).unwrap().call_id(),
        scan(&s.bob_leg).unwrap().call_id()
    );
    let rec = last_record(&mut w3);
    assert_eq!(rec.local, None, "done");
    assert_eq!(rec.b_call_id, carol, "Carol took Bob's place");
    // Alice and Carol talk: Alice's BYE reaches Carol.
    let r = from_caller("a-call", "alice", 5061, "b", &s.a_tag, "BYE", 3, "", None);
    w3.handle_datagram(at(5000), r.as_bytes());
    let bye = find(&out(&mut w3), "BYE ").expect("BYE to Carol");
    assert_eq!(scan(&bye).unwrap().call_id(), carol.as_slice());
}

/// A relayed REFER's NOTIFYs still reach the transferor, their `id`
/// translated, after its call moved to another worker.
#[test]
fn a_relayed_transfers_notifies_reach_the_transferor_after_the_call_moved() {
    let routes = ["b=127.0.0.1:5071", "c=127.0.0.1:5072"];
    let mut s = replicated_scene(&routes);
    let to_a = s.refer_accepted(1000, 1, "<sip:c@127.0.0.1:5060>");
    let her_id = scan(&to_a).unwrap().cseq().seq;
    let rec = last_record(&mut s.b);
    let r = rec.refer.as_ref().expect("the REFER is in the record");
    assert_eq!((r.cseq_in, r.cseq_out), (1, her_id));

    let mut w2 = b2bua_routed(&routes, 99);
    w2.set_replication(true);
    assert!(w2.adopt(at(2000), rec));
    let (h, (ct, body)) = sipfrag("200 OK", "terminated;reason=noresource");
    let h = h.replace("Event: refer", &format!("Event: refer;id={her_id}"));
    let r = from_caller(
        "a-call",
        "alice",
        5061,
        "b",
        &s.a_tag,
        "NOTIFY",
        2,
        &h,
        Some((ct, &body)),
    );
    w2.handle_datagram(at(3000), r.as_bytes());
    let sent = out(&mut w2);
    let n = find(&sent, "NOTIFY ").expect("relayed to Bob");
    assert_eq!(header(&n, HeaderName::Event), "refer;id=1");
    assert_eq!(scan(&n).unwrap().body(), body.as_bytes());
    // Bob's 200 goes back to Alice; the subscription is over: the record
    // no longer names it.
    let sent = {
        w2.handle_datagram(at(3010), answer(&n, "200 OK").as_bytes());
        out(&mut w2)
    };
    assert!(find(&sent, "SIP/2.0 200").is_some());
    assert_eq!(last_record(&mut w2).refer, None);
}

/// B refers A before A has our 2xx (held for the call's commit): A's end
/// of the dialog does not exist yet, and a strict phone refuses a request
/// on it (481). The REFER waits, once (its retransmission is not queued
/// twice), and goes to A after A's ACK.
#[test]
fn a_refer_before_the_callers_ack_waits_for_it() {
    let mut b = b2bua_routed(&["b=127.0.0.1:5071", "c=127.0.0.1:5072"], 7);
    b.set_replication(true);
    b.handle_datagram(at(0), invite("a-call", "alice", 5061, "b", "").as_bytes());
    let leg = find(&out(&mut b), "INVITE ").expect("callee leg");
    let lm = scan(&leg).unwrap();
    b.handle_datagram(at(10), b_resp(&lm, "200 OK", "bt", Some(SDP_B)).as_bytes());
    assert!(
        find(&out(&mut b), "SIP/2.0 200").is_none(),
        "held for the commit"
    );
    let refer = from_callee(
        &lm,
        "bt",
        5071,
        "REFER",
        1,
        "Refer-To: <sip:c@127.0.0.1:5060>\r\n",
        None,
    );
    for t in [20, 520] {
        b.handle_datagram(at(t), refer.as_bytes());
        assert!(out(&mut b).is_empty(), "nothing to A, no answer to B yet");
    }
    b.committed(at(600), b"a-call");
    let ok = find(&out(&mut b), "SIP/2.0 200").expect("A's 2xx");
    let tag = String::from_utf8(scan(&ok).unwrap().to_tag().unwrap().to_vec()).unwrap();
    b.handle_datagram(at(1020), refer.as_bytes());
    assert!(find(&out(&mut b), "REFER ").is_none(), "not before A's ACK");
    let ack = from_caller("a-call", "alice", 5061, "b", &tag, "ACK", 1, "", None);
    b.handle_datagram(at(1100), ack.as_bytes());
    let sent = out(&mut b);
    let to_a = all(&sent, "REFER ");
    assert_eq!(to_a.len(), 1, "once");
    assert_eq!(scan(&to_a[0]).unwrap().call_id(), b"a-call");
    b.handle_datagram(at(1150), answer(&to_a[0], "202 Accepted").as_bytes());
    assert!(find(&out(&mut b), "SIP/2.0 202").is_some(), "B hears 202");
}

/// A local attended transfer whose call moves to another worker before it
/// completes: the replaced call stays with the first worker, which the
/// new owner asks (through the cluster, `Replication::Replaced`) to end
/// it; the first hangs up Bob's leg of it only, Carol's dialog now being
/// the transferred call's.
#[test]
fn a_local_attended_transfer_finished_elsewhere_has_the_replaced_call_ended_by_its_owner() {
    let routes = ["b=127.0.0.1:5071;transfer=local", "c=127.0.0.1:5072"];
    let mut s = replicated_scene(&routes);
    let (our_tag_to_bob, carol_leg) = call(&mut s.b, 500, "bob-2", "bob", 5071, "c", "ct", 5072);
    let cl = scan(&carol_leg).unwrap();
    let target = format!(
        "<sip:c@127.0.0.1:5060?Replaces=bob-2%3Bto-tag%3D{our_tag_to_bob}%3Bfrom-tag%3Dbobt>"
    );
    let sent = s.bob(1000, "REFER", 1, &format!("Refer-To: {target}\r\n"), None);
    let re_c = find(&sent, "INVITE ").expect("re-INVITE to Carol");
    assert_eq!(scan(&re_c).unwrap().call_id(), cl.call_id());
    // The first call (not Bob's second) moves to worker 2.
    let rec = last_record(&mut s.b);
    let rec = if rec.a_call_id == b"a-call" {
        rec
    } else {
        panic!("the transferred call's record last: {:?}", rec.a_call_id)
    };
    assert_eq!(
        rec.local.as_ref().and_then(|l| l.replaced.clone()),
        Some(b"bob-2".to_vec())
    );
    assert_eq!(s.b.hand_over(|k| k == rec.key).0, 1);
    let mut w2 = b2bua_routed(&routes, 99);
    w2.set_replication(true);
    assert!(w2.adopt(at(1050), rec));
    assert_eq!(
        find(&out(&mut w2), "INVITE ").as_ref(),
        Some(&re_c),
        "sent again"
    );
    w2.handle_datagram(
        at(1100),
        answer_with(&re_c, "200 OK", None, 5072, Some(SDP_C)).as_bytes(),
    );
    let re_a = find(&out(&mut w2), "INVITE ").expect("re-INVITE to Alice");
    w2.handle_datagram(
        at(1200),
        answer_with(&re_a, "200 OK", None, 5061, Some(SDP_A2)).as_bytes(),
    );
    let sent = out(&mut w2);
    let byes = all(&sent, "BYE ");
    assert_eq!(byes.len(), 1, "Bob's leg of the transferred call only");
    assert_eq!(
        scan(&byes[0]).unwrap().call_id(),
        scan(&s.bob_leg).unwrap().call_id()
    );
    let mut asked = None;
    while let Some(r) = w2.poll_replication() {
        if let handover_call::Replication::Replaced { id, spare } = r {
            asked = Some((id, spare));
        }
    }
    let (id, spare) = asked.expect("the replaced call's owner is asked to end it");
    assert_eq!(
        (id.as_slice(), spare.as_slice()),
        (&b"bob-2"[..], cl.call_id())
    );
    // Worker 1 ends Bob's second call: BYE to Bob, none to Carol.
    assert!(s.b.replaced(at(1300), &id, &spare));
    let byes = all(&out(&mut s.b), "BYE ");
    assert_eq!(byes.len(), 1);
    assert_eq!(scan(&byes[0]).unwrap().call_id(), b"bob-2");
    assert!(!s.b.replaced(at(1400), &id, &spare), "once");
}

/// A transfer the B2BUA carries out for Alice (the caller) gives leg A
/// Carol's Call-ID; the call keeps its id in the table (leg A's first
/// Call-ID): every write and the final removal name it, so the call is
/// one table entry, not a second one left behind; a new owner that adopts
/// the record knows the call by both Call-IDs.
#[test]
fn a_local_transfer_for_the_caller_keeps_the_calls_id() {
    let routes = ["b=127.0.0.1:5071;transfer=local", "c=127.0.0.1:5072"];
    let mut s = replicated_scene(&routes);
    let first = last_record(&mut s.b);
    assert_eq!(
        (&first.id[..], &first.a_call_id[..]),
        (&b"a-call"[..], &b"a-call"[..])
    );
    let sent = s.alice(1000, "REFER", 2, "Refer-To: <sip:c@10.1.2.3>\r\n", None);
    assert!(find(&sent, "SIP/2.0 202").is_some());
    let inv = find(&sent, "INVITE ").expect("INVITE to Carol");
    let carol = scan(&inv).unwrap().call_id().to_vec();
    let sent = s.feed(
        1100,
        &answer_with(&inv, "200 OK", Some("ct"), 5072, Some(SDP_C)),
    );
    // Bob is re-INVITEd with Carol's offer and answers.
    let re = find(&sent, "INVITE ").expect("re-INVITE to Bob");
    assert_eq!(
        scan(&re).unwrap().call_id(),
        scan(&s.bob_leg).unwrap().call_id()
    );
    assert_eq!(scan(&re).unwrap().body(), SDP_C.as_bytes());
    let rec = last_record(&mut s.b);
    assert_eq!(rec.id, b"a-call");
    assert_eq!(rec.local.and_then(|l| l.r_out), Some(re.clone()));
    let sent = s.feed(1200, &answer_with(&re, "200 OK", None, 5071, Some(SDP_A2)));
    let bye = find(&sent, "BYE ").expect("BYE to Alice");
    assert_eq!(scan(&bye).unwrap().call_id(), b"a-call");
    s.feed(1210, &answer(&bye, "200 OK"));
    let rec = last_record(&mut s.b);
    assert_eq!(rec.local, None, "done");
    assert_eq!(
        (&rec.id[..], &rec.a_call_id[..]),
        (&b"a-call"[..], &carol[..]),
        "Carol took Alice's place; the call kept its id"
    );

    // A new owner adopts it: known by its id (the table's events name
    // it) and by Carol's leg.
    let mut w2 = b2bua_routed(&routes, 99);
    w2.set_replication(true);
    assert!(w2.adopt(at(1300), rec.clone()));
    out(&mut w2);
    assert!(!w2.adopt(at(1300), rec), "held already");
    // Bob hangs up: Carol gets the BYE; the removal names the call's id.
    let r = from_callee(&scan(&s.bob_leg).unwrap(), "bt", 5071, "BYE", 9, "", None);
    w2.handle_datagram(at(5000), r.as_bytes());
    let bye = find(&out(&mut w2), "BYE ").expect("BYE to Carol");
    assert_eq!(scan(&bye).unwrap().call_id(), carol.as_slice());
    w2.handle_datagram(at(5010), answer(&bye, "200 OK").as_bytes());
    let mut removed = Vec::new();
    while let Some(r) = w2.poll_replication() {
        if let handover_call::Replication::Remove { id, .. } = r {
            removed.push(id);
        }
    }
    assert_eq!(removed, [b"a-call".to_vec()]);
    assert_eq!(w2.calls_active(), 0);
}
