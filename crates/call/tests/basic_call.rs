//! A whole basic call through the B2BUA core, on a virtual clock, with the
//! messages the edge would deliver.

use std::time::Duration;

use handover_sip::ids::{Bound, Hashing};
use handover_sip::{HeaderName, Message, Method, scan};

mod common;
use common::*;

#[test]
fn basic_call_both_legs_and_bye_from_a() {
    let mut b = b2bua();
    let inv = a_invite();
    b.handle_datagram(at(0), inv.as_bytes());
    let sent = out(&mut b);
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 100 Trying");
    assert_eq!(
        sent[0].0,
        Some("127.0.0.1:5060".parse().unwrap()),
        "answers go to the edge's Via"
    );
    let b_inv_bytes = sent[1].1.clone();
    assert_eq!(sent[1].0, None, "requests go to the edge");
    let bi = scan(&b_inv_bytes).unwrap();
    assert_eq!(
        bi.request_uri().unwrap().as_bytes(),
        b"sip:b@127.0.0.1:5071"
    );
    assert_ne!(bi.call_id(), b"a-call", "leg B has its own Call-ID");
    assert_eq!(bi.vias().count(), 1);
    assert_eq!(bi.top_via().host(), b"127.0.0.1", "our Via names the edge");
    assert_eq!(bi.top_via().port(), Some(5060));
    let k = Hashing::default().affinity_key(b"a-call");
    // Our Via's key (the call's) with its tag for the branch; our
    // Contact's with its tag for leg B's Call-ID (what the edge checks).
    let via_k = bi.top_via().param(b"k").unwrap().value.unwrap();
    assert_eq!(
        Hashing::default().open_key_token(
            via_k.of(&b_inv_bytes),
            Bound::Branch,
            bi.top_via().branch().unwrap()
        ),
        Some(k)
    );
    let contact = bi.contact().unwrap().unwrap();
    assert_eq!(contact.uri().port(), Some(5060), "Contact names the edge");
    assert_eq!(
        Hashing::default().open_key_token(
            contact.uri().param(b"k").unwrap(),
            Bound::CallId,
            bi.call_id()
        ),
        Some(k)
    );
    assert_eq!(bi.body(), SDP_A.as_bytes(), "SDP passed through");
    assert_eq!(bi.max_forwards(), Some(68));

    // B rings, then answers.
    b.handle_datagram(at(100), b_resp(&bi, "180 Ringing", "bt", None).as_bytes());
    let sent = out(&mut b);
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 180 Ringing");
    let r = scan(&sent[0].1).unwrap();
    let a_tag = r.to_tag().unwrap().to_vec();
    assert_eq!(r.call_id(), b"a-call");
    assert_eq!(r.vias().count(), 2, "A's Vias copied");
    b.handle_datagram(at(200), b_resp(&bi, "200 OK", "bt", Some(SDP_B)).as_bytes());
    let sent = out(&mut b);
    let ack_b = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("ACK "))
        .expect("ACK to B");
    let ack = scan(&ack_b.1).unwrap();
    assert_eq!(
        ack.request_uri().unwrap().as_bytes(),
        b"sip:b@127.0.0.1:5071",
        "to B's Contact"
    );
    assert_eq!(ack.cseq().seq, 1);
    assert_eq!(ack.to_tag(), Some(&b"bt"[..]));
    let ok_a = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("200 to A");
    let ok = scan(&ok_a.1).unwrap();
    assert_eq!(ok.body(), SDP_B.as_bytes());
    assert_eq!(ok.to_tag(), Some(&a_tag[..]), "one tag per leg");
    // A's dialog: the token is good with A's Call-ID.
    assert_eq!(
        ok.contact().unwrap().unwrap().uri().param(b"k"),
        Some(&Hashing::default().key_token(k, Bound::CallId, b"a-call")[..])
    );

    // No ACK yet: the 200 is resent at T1.
    b.handle_timeout(at(700));
    assert!(
        out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
    );
    // A's ACK stops it.
    let a_ack = format!(
        "ACK sip:b2bua@127.0.0.1:5060;k=1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hxack;k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa2\r\nMax-Forwards: 69\r\nFrom: <sip:alice@127.0.0.1:5061>;tag=at\r\n\
To: <sip:b@127.0.0.1:5060>;tag={}\r\nCall-ID: a-call\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(&a_tag)
    );
    b.handle_datagram(at(800), a_ack.as_bytes());
    b.handle_timeout(at(5000));
    assert!(
        !out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "no resend after the ACK"
    );
    assert_eq!(b.stats().answered, 1);

    // A hangs up: 200 to A, BYE to B.
    let bye = a_ack
        .replace("ACK sip:", "BYE sip:")
        .replace("1 ACK", "2 BYE")
        .replace("z9hG4bKa2", "z9hG4bKa3")
        .replace("hxack", "hxbye");
    b.handle_datagram(at(6000), bye.as_bytes());
    let sent = out(&mut b);
    assert!(sent.iter().any(|(to, m)| first_line(m) == "SIP/2.0 200 OK"
        && scan(m).unwrap().cseq().method == Method::Bye
        && to.is_some()));
    let bye_b = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("BYE "))
        .expect("BYE to B");
    let bb = scan(&bye_b.1).unwrap();
    assert_eq!(bb.call_id(), bi.call_id());
    assert_eq!(bb.cseq().seq, 2);
    assert_eq!(
        bb.request_uri().unwrap().as_bytes(),
        b"sip:b@127.0.0.1:5071"
    );
    assert!(bb.header(HeaderName::Route).is_none());
    b.handle_datagram(at(6100), b_resp(&bb, "200 OK", "bt", None).as_bytes());
    assert_eq!(b.stats().hung_up, 1);
    b.handle_timeout(at(60_000));
    assert_eq!(
        b.calls_active(),
        0,
        "the call is forgotten once its transactions end"
    );
}

#[test]
fn busy_callee_is_relayed_and_acked_bye_from_b_reaches_a() {
    let mut b = b2bua();
    b.handle_datagram(at(0), a_invite().as_bytes());
    let sent = out(&mut b);
    let bi_bytes = sent[1].1.clone();
    let bi = scan(&bi_bytes).unwrap();
    b.handle_datagram(at(50), b_resp(&bi, "486 Busy Here", "bt", None).as_bytes());
    let sent = out(&mut b);
    assert!(
        sent.iter().any(|(_, m)| first_line(m).starts_with("ACK ")),
        "the transaction ACKs B's 486"
    );
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 486 Busy Here"),
        "A hears 486"
    );
    assert_eq!(b.stats().failed, 1);

    // A second call, answered, then B hangs up: A gets a BYE through the edge.
    let inv2 = a_invite().replace("a-call", "a-call-2");
    b.handle_datagram(at(1000), inv2.as_bytes());
    let sent = out(&mut b);
    let bi2_bytes = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .unwrap()
        .1
        .clone();
    let bi2 = scan(&bi2_bytes).unwrap();
    b.handle_datagram(
        at(1100),
        b_resp(&bi2, "200 OK", "bt2", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut b);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .unwrap();
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    // A acknowledges (a BYE goes to A only after that, RFC 3261 §15).
    let ack = from_a("ACK", 1, "ack2", &a_tag, None).replace("a-call", "a-call-2");
    b.handle_datagram(at(1150), ack.as_bytes());
    assert!(out(&mut b).is_empty());
    let b_bye = format!(
        "BYE sip:b2bua@127.0.0.1:5060;k=1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hxbb;k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bKb1\r\nMax-Forwards: 69\r\nFrom: {};tag=bt2\r\nTo: {}\r\n\
Call-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(bi2.to_field().value.of(bi2.buf())),
        String::from_utf8_lossy(bi2.from_field().value.of(bi2.buf())),
        String::from_utf8_lossy(bi2.call_id()),
    );
    b.handle_datagram(at(2000), b_bye.as_bytes());
    let sent = out(&mut b);
    let to_a = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("BYE "))
        .expect("BYE to A");
    let m = scan(&to_a.1).unwrap();
    assert_eq!(m.call_id(), b"a-call-2");
    assert_eq!(
        m.request_uri().unwrap().as_bytes(),
        b"sip:alice@127.0.0.1:5061",
        "A's Contact"
    );
    let routes: Vec<_> = m
        .values(HeaderName::Route)
        .map(|v| v.of(m.buf()).to_vec())
        .collect();
    assert_eq!(
        routes,
        vec![b"<sip:127.0.0.1:5060;lr;k=1>".to_vec()],
        "through the edge (its Record-Route)"
    );
    assert!(
        sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "B's BYE answered"
    );
}

/// A's CANCEL of its INVITE `inv` (`a_invite`): same Via, From, To,
/// Call-ID and CSeq number, no body.
fn a_cancel(inv: &str) -> String {
    inv.replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("1 INVITE", "1 CANCEL")
        .replace(
            &format!(
                "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP_A}",
                SDP_A.len()
            ),
            "Content-Length: 0\r\n\r\n",
        )
}

#[test]
fn cancel_from_a_cancels_b_and_a_gets_487() {
    let mut b = b2bua();
    let inv = a_invite();
    b.handle_datagram(at(0), inv.as_bytes());
    let sent = out(&mut b);
    let bi_bytes = sent[1].1.clone();
    let bi = scan(&bi_bytes).unwrap();
    b.handle_datagram(at(100), b_resp(&bi, "180 Ringing", "bt", None).as_bytes());
    let _ = out(&mut b);
    let cancel = a_cancel(&inv);
    b.handle_datagram(at(500), cancel.as_bytes());
    let sent = out(&mut b);
    let lines: Vec<String> = sent.iter().map(|(_, m)| first_line(m)).collect();
    assert!(lines.iter().any(|l| l == "SIP/2.0 200 OK"), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "SIP/2.0 487 Request Terminated"),
        "{lines:?}"
    );
    let c = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("CANCEL "))
        .expect("CANCEL to B");
    let cm = scan(&c.1).unwrap();
    assert_eq!(
        cm.top_via().branch(),
        bi.top_via().branch(),
        "§9.1: same branch as the INVITE"
    );
    assert_eq!(cm.call_id(), bi.call_id());
}

#[test]
fn probes_unknown_dialogs_and_unrouted_users() {
    let mut b = b2bua();
    let opt = "OPTIONS sip:127.0.0.1:5080 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:40000;branch=z9hG4bK-probe-0-1\r\n\
From: <sip:edge@handover.invalid>;tag=probe\r\nTo: <sip:127.0.0.1:5080>\r\nCall-ID: p\r\nCSeq: 1 OPTIONS\r\n\r\n";
    b.handle_datagram(at(0), opt.as_bytes());
    let sent = out(&mut b);
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 200 OK");
    assert_eq!(
        sent[0].0,
        Some("127.0.0.1:40000".parse().unwrap()),
        "straight back to the prober"
    );
    let bye = opt
        .replace("OPTIONS", "BYE")
        .replace("To: <sip:127.0.0.1:5080>", "To: <sip:x@y>;tag=zz");
    b.handle_datagram(at(0), bye.as_bytes());
    assert_eq!(
        first_line(&out(&mut b)[0].1),
        "SIP/2.0 481 Call/Transaction Does Not Exist"
    );
    let nobody = a_invite().replace("INVITE sip:b@", "INVITE sip:nobody@");
    let mut empty = b2bua_routed(&[], 1);
    empty.handle_datagram(at(0), nobody.as_bytes());
    assert_eq!(first_line(&out(&mut empty)[0].1), "SIP/2.0 404 Not Found");
}

const SDP_HOLD: &str = "v=0\r\no=a 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\na=sendonly\r\n";
const SDP_HELD: &str = "v=0\r\no=b 1 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 7000 RTP/AVP 0\r\na=recvonly\r\n";

#[test]
fn rfc3261_14_reinvite_hold_is_relayed_with_each_legs_own_cseq() {
    let (mut b, a_tag, bi) = answered();
    let bim = scan(&bi).unwrap();
    let reinv = from_a("INVITE", 2, "r1", &a_tag, Some(SDP_HOLD));
    b.handle_datagram(at(1000), reinv.as_bytes());
    let sent = out(&mut b);
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 100 Trying")
    );
    let to_b = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .expect("re-INVITE to B");
    let rb = scan(&to_b.1).unwrap();
    assert_eq!(rb.call_id(), bim.call_id(), "in B's dialog");
    assert_eq!(rb.cseq().seq, 2, "B's own CSeq space: 1 was the INVITE");
    assert_eq!(rb.to_tag(), Some(&b"bt"[..]));
    assert_eq!(
        rb.body(),
        SDP_HOLD.as_bytes(),
        "the offer is passed through"
    );
    assert_eq!(
        rb.request_uri().unwrap().as_bytes(),
        b"sip:b@127.0.0.1:5071"
    );
    // B accepts the hold.
    b.handle_datagram(
        at(1100),
        b_resp(&rb, "200 OK", "bt", Some(SDP_HELD)).as_bytes(),
    );
    let sent = out(&mut b);
    let ack = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("ACK "))
        .expect("ACK of B's 2xx");
    let am = scan(&ack.1).unwrap();
    assert_eq!((am.cseq().seq, am.cseq().method), (2, Method::Ack));
    assert_ne!(
        am.top_via().branch(),
        rb.top_via().branch(),
        "the ACK of a 2xx is a new transaction"
    );
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("200 to A");
    let om = scan(&ok.1).unwrap();
    assert_eq!(om.cseq().seq, 2, "A's CSeq");
    assert_eq!(om.call_id(), b"a-call");
    assert_eq!(om.body(), SDP_HELD.as_bytes(), "the answer is passed back");
    // B's 200 again: ACKed again, not relayed twice.
    b.handle_datagram(
        at(1600),
        b_resp(&rb, "200 OK", "bt", Some(SDP_HELD)).as_bytes(),
    );
    let sent = out(&mut b);
    assert!(sent.iter().any(|(_, m)| first_line(m).starts_with("ACK ")));
    assert!(!sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"));
}

#[test]
fn rfc3261_14_2_crossing_reinvites_get_491() {
    let (mut b, a_tag, bi) = answered();
    let bim = scan(&bi).unwrap();
    b.handle_datagram(
        at(1000),
        from_a("INVITE", 2, "r1", &a_tag, Some(SDP_HOLD)).as_bytes(),
    );
    let _ = out(&mut b);
    // B sends its own re-INVITE before answering ours.
    b.handle_datagram(at(1050), from_b(&bim, "INVITE", 1, "rb1").as_bytes());
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 491 Request Pending");
    assert_eq!(sent[0].0, Some("127.0.0.1:5060".parse().unwrap()));
}

#[test]
fn info_from_b_reaches_a_in_as_own_dialog() {
    let (mut b, _a_tag, bi) = answered();
    let bim = scan(&bi).unwrap();
    b.handle_datagram(at(1000), from_b(&bim, "INFO", 1, "i1").as_bytes());
    let sent = out(&mut b);
    let to_a = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INFO "))
        .expect("INFO to A");
    let m = scan(&to_a.1).unwrap();
    assert_eq!(m.call_id(), b"a-call");
    assert_eq!(m.cseq().seq, 1, "the B2BUA's first request on leg A");
    assert_eq!(
        m.request_uri().unwrap().as_bytes(),
        b"sip:alice@127.0.0.1:5061"
    );
    // A answers; B gets the 200.
    let resp = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: a-call\r\nCSeq: 1 INFO\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(m.top_via().span().of(m.buf())),
        String::from_utf8_lossy(m.from_field().value.of(m.buf())),
        String::from_utf8_lossy(m.to_field().value.of(m.buf())),
    );
    b.handle_datagram(at(1100), resp.as_bytes());
    let sent = out(&mut b);
    let back = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("200 to B");
    assert_eq!(scan(&back.1).unwrap().cseq().method, Method::Info);
    assert_eq!(back.0, Some("127.0.0.1:5060".parse().unwrap()));
}

#[test]
fn a_flood_of_info_inside_a_call_is_bounded_and_leaves_nothing_behind() {
    let (mut b, _a_tag, bi) = answered();
    let bim = scan(&bi).unwrap();
    let mut t = 1000;
    let (mut relayed, mut refused) = (0, 0);
    for i in 1..=1000u32 {
        t += 1;
        b.handle_datagram(at(t), from_b(&bim, "INFO", i, &format!("i{i}")).as_bytes());
        let sent = out(&mut b);
        if let Some((to, r)) = sent
            .iter()
            .find(|(_, m)| first_line(m).starts_with("SIP/2.0 503"))
        {
            // Refused, to B, with when to try again.
            assert_eq!(*to, Some("127.0.0.1:5060".parse().unwrap()));
            let text = String::from_utf8_lossy(r);
            assert!(text.contains("\r\nRetry-After: 5\r\n"), "{text}");
            refused += 1;
            continue;
        }
        let to_a = sent
            .iter()
            .find(|(_, m)| first_line(m).starts_with("INFO "))
            .expect("INFO to A");
        relayed += 1;
        let m = scan(&to_a.1).unwrap();
        let resp = format!(
            "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: a-call\r\nCSeq: {} INFO\r\nContent-Length: 0\r\n\r\n",
            String::from_utf8_lossy(m.top_via().span().of(m.buf())),
            String::from_utf8_lossy(m.from_field().value.of(m.buf())),
            String::from_utf8_lossy(m.to_field().value.of(m.buf())),
            m.cseq().seq,
        );
        b.handle_datagram(at(t), resp.as_bytes());
        assert!(
            out(&mut b)
                .iter()
                .any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
            "INFO {i} answered to B"
        );
    }
    // 128 in flight at most (each absorbs retransmissions for 64*T1).
    assert_eq!((relayed, refused), (128, 872));
    assert_eq!(b.stats().refused_in_call, 872);
    assert_eq!(b.transactions_held(), 128);
    // 64*T1 later every one of them has ended, and is dropped.
    let later = t + 40_000;
    while let Some(w) = b.poll_timeout().filter(|w| *w <= at(later)) {
        b.handle_timeout(w);
        out(&mut b);
    }
    b.handle_timeout(at(later));
    out(&mut b);
    assert_eq!(b.calls_active(), 1, "the call goes on");
    assert_eq!(b.transactions_held(), 0, "nothing of the flood is kept");
    // It relays again, and a BYE is never refused.
    b.handle_datagram(
        at(later + 1),
        from_b(&bim, "INFO", 1001, "i1001").as_bytes(),
    );
    assert!(
        out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("INFO ")),
        "a later INFO is relayed"
    );
}

#[test]
fn a_bye_ends_a_call_whose_requests_are_at_their_limit() {
    let (mut b, _a_tag, bi) = answered();
    let bim = scan(&bi).unwrap();
    for i in 1..=200u32 {
        b.handle_datagram(
            at(1000 + u64::from(i)),
            from_b(&bim, "INFO", i, &format!("i{i}")).as_bytes(),
        );
        out(&mut b);
    }
    assert_eq!(
        b.stats().refused_in_call,
        72,
        "A never answers: 128 stay in flight"
    );
    b.handle_datagram(at(1300), from_b(&bim, "BYE", 201, "bye1").as_bytes());
    let sent = out(&mut b);
    assert!(
        sent.iter().any(|(_, m)| first_line(m).starts_with("BYE ")),
        "the BYE reaches A: {sent:?}"
    );
    assert!(
        sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "and B's BYE is answered"
    );
}

/// RFC 3261 §13.3.1.4: our 2xx to a caller who never acknowledges it (a
/// spoofed source, or a phone gone) is resent T1 doubling to T2 for 64·T1,
/// and no more; then both legs are hung up, so B's phone is not left in a
/// call with nobody.
#[test]
fn rfc3261_13_3_1_4_a_2xx_never_acknowledged_ends_the_call_on_both_legs() {
    let mut b = b2bua();
    b.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut b)[1].1.clone();
    let bim = scan(&bi).unwrap();
    b.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let mut oks = 0;
    let mut byes = Vec::new();
    let mut ms = 100;
    while ms <= 40_000 {
        b.handle_timeout(at(ms));
        for (_, m) in out(&mut b) {
            if first_line(&m) == "SIP/2.0 200 OK" {
                assert!(byes.is_empty(), "no 2xx after the BYEs");
                oks += 1;
            } else if first_line(&m).starts_with("BYE ") {
                byes.push((ms, scan(&m).unwrap().call_id().to_vec()));
            }
        }
        ms += 50;
    }
    // Sent at 0.1 s, resent at 0.6, 1.6, 3.6, 7.6, 11.6 … 31.6 s.
    assert_eq!(oks, 11, "the first 2xx and ten resends, no more");
    // Nobody answers the BYEs either: they are resent as any request.
    let byes: Vec<_> = byes.into_iter().filter(|(t, _)| *t == 32_100).collect();
    assert_eq!(byes.len(), 2, "a BYE on each leg at 64·T1: {byes:?}");
    let ids: Vec<_> = byes.iter().map(|(_, c)| c.clone()).collect();
    assert!(ids.contains(&b"a-call".to_vec()) && ids.contains(&bim.call_id().to_vec()));
    let s = b.stats();
    assert_eq!((s.unacknowledged, s.torn_down), (1, 1));
    assert_eq!(b.calls_active(), 0);
}

/// An ACK that reuses the INVITE's branch (as RFC 2543 phones send it)
/// still acknowledges the 2xx: no resends, and the call stays up past
/// 64·T1.
#[test]
fn an_ack_reusing_the_invites_branch_acknowledges_the_2xx() {
    let mut b = b2bua();
    b.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut b)[1].1.clone();
    let bim = scan(&bi).unwrap();
    b.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut b);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .unwrap();
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    // The INVITE's branches: the phone's (a1) and the edge's (edge).
    let ack = from_a("ACK", 1, "a1", &a_tag, None).replace("z9hG4bK-hxa1", "z9hG4bK-hxedge");
    b.handle_datagram(at(150), ack.as_bytes());
    for ms in (200..=40_000).step_by(100) {
        b.handle_timeout(at(ms));
        let sent = out(&mut b);
        assert!(sent.is_empty(), "at {ms} ms: {sent:?}");
    }
    assert_eq!(b.calls_active(), 1);
    assert_eq!(b.stats().unacknowledged, 0);
}

#[test]
fn maximum_call_age_hangs_up_both_legs() {
    let (mut b, _a_tag, bi) = answered();
    let bim = scan(&bi).unwrap();
    // Answered at 100 ms; an hour later both legs get a BYE.
    b.handle_timeout(at(3_600_099));
    assert!(
        out(&mut b)
            .iter()
            .all(|(_, m)| !first_line(m).starts_with("BYE ")),
        "not yet"
    );
    b.handle_timeout(at(3_600_100));
    let sent = out(&mut b);
    let byes: Vec<_> = sent
        .iter()
        .filter(|(_, m)| first_line(m).starts_with("BYE "))
        .collect();
    assert_eq!(byes.len(), 2, "{sent:?}");
    let call_ids: Vec<Vec<u8>> = byes
        .iter()
        .map(|(_, m)| scan(m).unwrap().call_id().to_vec())
        .collect();
    assert!(call_ids.contains(&b"a-call".to_vec()) && call_ids.contains(&bim.call_id().to_vec()));
    assert_eq!(b.stats().torn_down, 1);
    assert_eq!(b.calls_active(), 0);
}

#[test]
fn rfc3261_12_2_1_2_a_481_to_a_relayed_request_ends_the_call() {
    let (mut b, _a_tag, bi) = answered();
    let bim = scan(&bi).unwrap();
    b.handle_datagram(at(1000), from_b(&bim, "INFO", 1, "i1").as_bytes());
    let sent = out(&mut b);
    let to_a = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INFO "))
        .unwrap();
    let m = scan(&to_a.1).unwrap();
    // A no longer knows the call.
    let resp = format!(
        "SIP/2.0 481 Call/Transaction Does Not Exist\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: a-call\r\nCSeq: 1 INFO\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(m.top_via().span().of(m.buf())),
        String::from_utf8_lossy(m.from_field().value.of(m.buf())),
        String::from_utf8_lossy(m.to_field().value.of(m.buf())),
    );
    b.handle_datagram(at(1100), resp.as_bytes());
    let sent = out(&mut b);
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 481")),
        "B hears the 481"
    );
    assert_eq!(
        sent.iter()
            .filter(|(_, m)| first_line(m).starts_with("BYE "))
            .count(),
        2,
        "both legs hung up"
    );
    assert_eq!(b.stats().torn_down, 1);
}

#[test]
fn malformed_sdp_is_passed_through_untouched() {
    let mut b = b2bua();
    let junk = "this is not SDP \u{1}\u{2} at all\r\nm=audio banana\r\n";
    let inv = a_invite().replace(
        &format!("Content-Length: {}\r\n\r\n{SDP_A}", SDP_A.len()),
        &format!("Content-Length: {}\r\n\r\n{junk}", junk.len()),
    );
    b.handle_datagram(at(0), inv.as_bytes());
    let sent = out(&mut b);
    let bi = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .expect("relayed");
    assert_eq!(
        scan(&bi.1).unwrap().body(),
        junk.as_bytes(),
        "the B2BUA does not judge SDP"
    );
}

/// RFC 3261 §18.1.1: to a route whose targets take TCP too
/// (`;tcp_above`), an INVITE above the limit goes over TCP (its
/// Request-URI says so, and its CANCEL follows it); a small one stays on
/// UDP.
#[test]
fn rfc3261_18_1_1_a_large_invite_goes_over_tcp_where_the_route_allows() {
    let mut b = b2bua_routed(&["b=127.0.0.1:5071;tcp_above=1300"], 1);
    b.handle_datagram(at(0), a_invite().as_bytes());
    let small = out(&mut b);
    let bi = small
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .expect("relayed");
    assert!(bi.1.len() < 1300);
    assert_eq!(
        scan(&bi.1).unwrap().request_uri().unwrap().as_bytes(),
        b"sip:b@127.0.0.1:5071",
        "a small INVITE stays on UDP"
    );
    let video: String = (0..40)
        .map(|i| format!("a=rtcp-fb:{} nack pli\r\n", 96 + i))
        .collect();
    let sdp = format!("{SDP_A}{video}");
    let inv = a_invite()
        .replace(
            &format!("Content-Length: {}\r\n\r\n{SDP_A}", SDP_A.len()),
            &format!("Content-Length: {}\r\n\r\n{sdp}", sdp.len()),
        )
        .replace("a-call", "a-call-large")
        .replace("z9hG4bK-hxedge", "z9hG4bK-hxedge2")
        .replace("z9hG4bKa1", "z9hG4bKa2");
    b.handle_datagram(at(1), inv.as_bytes());
    let large = out(&mut b);
    let bi = large
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .expect("relayed");
    assert!(bi.1.len() > 1300, "{}", bi.1.len());
    assert_eq!(
        scan(&bi.1).unwrap().request_uri().unwrap().as_bytes(),
        b"sip:b@127.0.0.1:5071;transport=tcp",
        "a large INVITE goes over TCP"
    );
    // The caller gives up: the CANCEL goes where the INVITE went.
    let cancel = inv
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace("CSeq: 1 INVITE", "CSeq: 1 CANCEL");
    let cancel = cancel
        .split_once("Content-Type")
        .map(|(h, _)| format!("{h}Content-Length: 0\r\n\r\n"))
        .unwrap();
    b.handle_datagram(at(2), cancel.as_bytes());
    let sent = out(&mut b);
    let c = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("CANCEL "))
        .expect("CANCEL relayed");
    assert_eq!(
        scan(&c.1).unwrap().request_uri().unwrap().as_bytes(),
        b"sip:b@127.0.0.1:5071;transport=tcp"
    );
}

#[test]
fn failover_to_the_next_target_on_503_and_no_answer() {
    let mut b = b2bua_routed(&["b=127.0.0.1:5071,127.0.0.1:5072,127.0.0.1:5073"], 3);
    b.handle_datagram(at(0), a_invite().as_bytes());
    let first = out(&mut b)
        .into_iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .unwrap()
        .1;
    let f = scan(&first).unwrap();
    // The first target is out of service.
    b.handle_datagram(
        at(100),
        b_resp(&f, "503 Service Unavailable", "x1", None).as_bytes(),
    );
    let sent = out(&mut b);
    assert!(
        !sent
            .iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 503")),
        "A does not hear the 503"
    );
    let second = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .expect("next target")
        .1
        .clone();
    let s2 = scan(&second).unwrap();
    assert_ne!(
        s2.request_uri().unwrap().port(),
        f.request_uri().unwrap().port(),
        "another target"
    );
    assert_ne!(s2.call_id(), f.call_id(), "a new leg");
    // The second never answers: timer B (64*T1) ends it, and the third is tried.
    b.handle_timeout(at(100 + 32_000));
    let sent = out(&mut b);
    let third = sent
        .iter()
        // (Timer A's retransmissions of the second INVITE come out too.)
        .find(|(_, m)| {
            first_line(m).starts_with("INVITE ") && scan(m).unwrap().call_id() != s2.call_id()
        })
        .expect("third target")
        .1
        .clone();
    let s3 = scan(&third).unwrap();
    let ports: std::collections::HashSet<_> = [&f, &s2, &s3]
        .iter()
        .map(|m| m.request_uri().unwrap().port())
        .collect();
    assert_eq!(ports.len(), 3, "each target once");
    b.handle_datagram(
        at(40_000),
        b_resp(&s3, "200 OK", "x3", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut b);
    assert!(
        sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "A is connected to the third"
    );
    assert_eq!(b.stats().failovers, 2);
    assert_eq!(b.stats().answered, 1);
}

#[test]
fn every_target_failing_relays_the_last_answer() {
    let mut b = b2bua_routed(&["b=127.0.0.1:5071,127.0.0.1:5072"], 3);
    b.handle_datagram(at(0), a_invite().as_bytes());
    let first = out(&mut b)
        .into_iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .unwrap()
        .1;
    b.handle_datagram(
        at(100),
        b_resp(
            &scan(&first).unwrap(),
            "503 Service Unavailable",
            "x1",
            None,
        )
        .as_bytes(),
    );
    let second = out(&mut b)
        .into_iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .unwrap()
        .1;
    b.handle_datagram(
        at(200),
        b_resp(
            &scan(&second).unwrap(),
            "503 Service Unavailable",
            "x2",
            None,
        )
        .as_bytes(),
    );
    let sent = out(&mut b);
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 503 Service Unavailable"),
        "A hears the last 503"
    );
    // A 486 is an answer, not an outage: no failover.
    let mut c = b2bua_routed(&["b=127.0.0.1:5071,127.0.0.1:5072"], 4);
    c.handle_datagram(at(0), a_invite().as_bytes());
    let first = out(&mut c)
        .into_iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .unwrap()
        .1;
    c.handle_datagram(
        at(100),
        b_resp(&scan(&first).unwrap(), "486 Busy Here", "x1", None).as_bytes(),
    );
    let sent = out(&mut c);
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 486 Busy Here")
    );
    assert!(
        !sent
            .iter()
            .any(|(_, m)| first_line(m).starts_with("INVITE "))
    );
}

fn with_session_timer(resp: String, secs: u32) -> String {
    resp.replacen(
        "Contact: ",
        &format!("Session-Expires: {secs};refresher=uac\r\nRequire: timer\r\nContact: "),
        1,
    )
}

#[test]
fn rfc4028_session_expires_without_refresh_ends_the_call() {
    let mut b = b2bua();
    b.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut b)[1].1.clone();
    let bim = scan(&bi).unwrap();
    b.handle_datagram(
        at(100),
        with_session_timer(b_resp(&bim, "200 OK", "bt", Some(SDP_B)), 90).as_bytes(),
    );
    let sent = out(&mut b);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("200 to A");
    let text = String::from_utf8_lossy(&ok.1);
    assert!(
        text.contains("Session-Expires: 90;refresher=uac\r\n"),
        "the agreed interval reaches A:\n{text}"
    );
    assert!(text.contains("Require: timer\r\n"), "{text}");
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    b.handle_datagram(at(150), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    b.handle_timeout(at(90_099));
    assert!(
        !out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("BYE ")),
        "not yet"
    );
    b.handle_timeout(at(90_100));
    let byes = out(&mut b)
        .into_iter()
        .filter(|(_, m)| first_line(m).starts_with("BYE "))
        .count();
    assert_eq!(byes, 2, "no refresh within 90 s: both legs hung up");
    assert_eq!(b.stats().torn_down, 1);
}

#[test]
fn rfc4028_a_refresh_restarts_the_session_timer() {
    let mut b = b2bua();
    b.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut b)[1].1.clone();
    let bim = scan(&bi).unwrap();
    b.handle_datagram(
        at(100),
        with_session_timer(b_resp(&bim, "200 OK", "bt", Some(SDP_B)), 90).as_bytes(),
    );
    let sent = out(&mut b);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .unwrap();
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    b.handle_datagram(at(150), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    // A refreshes at 60 s with a re-INVITE; B agrees on 90 s again.
    b.handle_datagram(
        at(60_000),
        from_a("INVITE", 2, "rf", &a_tag, Some(SDP_A)).as_bytes(),
    );
    let to_b = out(&mut b)
        .into_iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .unwrap()
        .1;
    b.handle_datagram(
        at(60_100),
        with_session_timer(
            b_resp(&scan(&to_b).unwrap(), "200 OK", "bt", Some(SDP_B)),
            90,
        )
        .as_bytes(),
    );
    let _ = out(&mut b);
    b.handle_timeout(at(90_100));
    assert!(
        !out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("BYE ")),
        "refreshed: still up at 90 s"
    );
    b.handle_timeout(at(150_100));
    assert_eq!(
        out(&mut b)
            .iter()
            .filter(|(_, m)| first_line(m).starts_with("BYE "))
            .count(),
        2,
        "expires 90 s after the refresh"
    );
}

#[test]
fn rfc3515_transfer_reports_accepted_then_succeeded() {
    let (mut b, _a_tag, bi) = answered();
    let bim = scan(&bi).unwrap();
    let refer = from_b(&bim, "REFER", 1, "rf1").replace(
        "Contact: <sip:b@127.0.0.1:5071>\r\n",
        "Contact: <sip:b@127.0.0.1:5071>\r\nRefer-To: <sip:c@127.0.0.1:5060>\r\nReferred-By: <sip:b@127.0.0.1:5071>\r\n",
    );
    b.handle_datagram(at(1000), refer.as_bytes());
    let to_a = out(&mut b)
        .into_iter()
        .find(|(_, m)| first_line(m).starts_with("REFER "))
        .expect("REFER to A")
        .1;
    let ra = scan(&to_a).unwrap();
    let text = String::from_utf8_lossy(&to_a).into_owned();
    assert!(
        text.contains("Refer-To: <sip:c@127.0.0.1:5060>\r\n") && text.contains("Referred-By: "),
        "{text}"
    );
    // RFC 3515 §2.1: the REFER carries a Contact, ours (the edge, with the
    // call's key), not B's.
    let contact = ra.contact().expect("a Contact").unwrap();
    assert_eq!(contact.uri().host(), b"127.0.0.1");
    assert_eq!(contact.uri().port(), Some(5060));
    assert!(text.contains(";k="), "{text}");
    // A accepts.
    let accepted = format!(
        "SIP/2.0 202 Accepted\r\nVia: {}\r\nFrom: {}\r\nTo: {}\r\nCall-ID: a-call\r\nCSeq: {} REFER\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(ra.top_via().span().of(ra.buf())),
        String::from_utf8_lossy(ra.from_field().value.of(ra.buf())),
        String::from_utf8_lossy(ra.to_field().value.of(ra.buf())),
        ra.cseq().seq
    );
    b.handle_datagram(at(1100), accepted.as_bytes());
    assert!(
        out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 202 Accepted"),
        "B hears 202"
    );
    let e = b.poll_transfer().expect("accepted reported");
    assert_eq!(
        (e.attended, e.result),
        (false, handover_call::TransferResult::Accepted)
    );
    // A's final NOTIFY: the new call was answered.
    let a_tag = String::from_utf8(ra.from_tag().unwrap().to_vec()).unwrap();
    let body = "SIP/2.0 200 OK\r\n";
    let notify = from_a("NOTIFY", 2, "n1", &a_tag, None).replace(
        "Content-Length: 0\r\n\r\n",
        &format!(
            "Event: refer\r\nSubscription-State: terminated;reason=noresource\r\nContent-Type: message/sipfrag;version=2.0\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    b.handle_datagram(at(3000), notify.as_bytes());
    let sent = out(&mut b);
    let to_b = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("NOTIFY "))
        .expect("NOTIFY to B");
    let nb = scan(&to_b.1).unwrap();
    assert_eq!(nb.body(), body.as_bytes(), "the sipfrag passes through");
    // RFC 6665 §4.2.1: so does the NOTIFY, naming the edge, not A.
    let contact = nb.contact().expect("a Contact").unwrap();
    assert_eq!(contact.uri().port(), Some(5060));
    assert_eq!(nb.call_id(), bim.call_id(), "in B's dialog");
    let e = b.poll_transfer().expect("outcome reported");
    assert_eq!(e.result, handover_call::TransferResult::Succeeded);
    assert_eq!(
        e.elapsed,
        Duration::from_millis(2000),
        "REFER to final NOTIFY"
    );
}

/// The CANCEL the B2BUA sent for `inv`, if any.
fn cancel_of<'a>(
    sent: &'a [(Option<std::net::SocketAddr>, Vec<u8>)],
    inv: &Message<'_>,
) -> Option<&'a Vec<u8>> {
    sent.iter().map(|(_, m)| m).find(|m| {
        first_line(m).starts_with("CANCEL ")
            && scan(m).unwrap().call_id() == inv.call_id()
            && scan(m).unwrap().top_via().branch() == inv.top_via().branch()
    })
}

#[test]
fn a_callee_ringing_past_the_ring_timeout_is_cancelled_and_a_hears_408() {
    let mut b = b2bua();
    b.handle_datagram(at(0), a_invite().as_bytes());
    let inv = out(&mut b)
        .into_iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .unwrap()
        .1;
    let i = scan(&inv).unwrap();
    b.handle_datagram(at(50), b_resp(&i, "180 Ringing", "r1", None).as_bytes());
    let sent = out(&mut b);
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 180 Ringing")
    );
    // Ringing is not answering: nothing happens before the ring timeout.
    b.handle_timeout(at(59_999));
    assert!(cancel_of(&out(&mut b), &i).is_none());
    b.handle_timeout(at(60_000));
    let sent = out(&mut b);
    let cancel = cancel_of(&sent, &i).expect("the callee is cancelled");
    assert!(
        !sent
            .iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 4")),
        "A waits for the callee's 487"
    );
    let c = scan(cancel).unwrap();
    assert_eq!(c.cseq().seq, i.cseq().seq);
    // The callee answers the CANCEL and its INVITE (487).
    b.handle_datagram(at(60_010), b_resp(&c, "200 OK", "r1", None).as_bytes());
    b.handle_datagram(
        at(60_020),
        b_resp(&i, "487 Request Terminated", "r1", None).as_bytes(),
    );
    let sent = out(&mut b);
    assert!(
        sent.iter().any(|(_, m)| first_line(m).starts_with("ACK ")),
        "the 487 is ACKed"
    );
    let to_a = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("SIP/2.0 4"))
        .expect("A hears the outcome");
    assert_eq!(first_line(&to_a.1), "SIP/2.0 408 Request Timeout");
    assert_eq!(b.stats().unanswered, 1);
    assert_eq!(b.stats().failed, 1);
    assert_eq!(
        b.stats().retransmissions,
        0,
        "a CANCEL is not a retransmission"
    );
    assert_eq!(b.calls_active(), 0);
}

#[test]
fn no_answer_fails_over_to_the_next_target() {
    let mut b = b2bua_routed(&["b=127.0.0.1:5071,127.0.0.1:5072"], 3);
    b.handle_datagram(at(0), a_invite().as_bytes());
    let first = out(&mut b)
        .into_iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .unwrap()
        .1;
    let f = scan(&first).unwrap();
    b.handle_datagram(at(50), b_resp(&f, "180 Ringing", "r1", None).as_bytes());
    out(&mut b);
    b.handle_timeout(at(60_000));
    let c = cancel_of(&out(&mut b), &f).expect("cancelled").clone();
    b.handle_datagram(
        at(60_010),
        b_resp(&scan(&c).unwrap(), "200 OK", "r1", None).as_bytes(),
    );
    b.handle_datagram(
        at(60_020),
        b_resp(&f, "487 Request Terminated", "r1", None).as_bytes(),
    );
    let sent = out(&mut b);
    assert!(
        !sent
            .iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 4")),
        "A does not hear the first target's failure"
    );
    let second = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .expect("the next target is tried")
        .1
        .clone();
    let s = scan(&second).unwrap();
    assert_ne!(
        s.request_uri().unwrap().port(),
        f.request_uri().unwrap().port()
    );
    // The second target gets a full ring timeout of its own, and answers.
    b.handle_datagram(at(60_100), b_resp(&s, "180 Ringing", "x2", None).as_bytes());
    b.handle_timeout(at(60_020 + 59_000));
    assert!(cancel_of(&out(&mut b), &s).is_none());
    b.handle_datagram(
        at(60_020 + 59_500),
        b_resp(&s, "200 OK", "x2", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut b);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("200 to A");
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    b.handle_datagram(
        at(60_020 + 59_600),
        from_a("ACK", 1, "ack1", &a_tag, None).as_bytes(),
    );
    assert_eq!(b.stats().failovers, 1);
    assert_eq!(b.stats().answered, 1);
    // Answered: the ring timeout no longer applies.
    b.handle_timeout(at(200_000));
    assert!(cancel_of(&out(&mut b), &s).is_none());
    assert_eq!(b.calls_active(), 1);
}

/// Numbers a peer sends are taken with checked arithmetic: a Session-Expires
/// or a subscription `expires=` of u64::MAX seconds (or more digits than a
/// u64 holds) is clamped, the worker's deadlines do not overflow, and the
/// call goes on to a normal BYE.
#[test]
fn extreme_peer_numbers_crash_nothing_and_the_call_goes_on() {
    for huge in ["18446744073709551615", "99999999999999999999999999"] {
        let mut b = b2bua();
        b.handle_datagram(at(0), a_invite().as_bytes());
        let bi = out(&mut b)[1].1.clone();
        let bim = scan(&bi).unwrap();
        let ok = b_resp(&bim, "200 OK", "bt", Some(SDP_B)).replacen(
            "Contact: ",
            &format!("Session-Expires: {huge};refresher=uac\r\nRequire: timer\r\nContact: "),
            1,
        );
        b.handle_datagram(at(100), ok.as_bytes());
        let sent = out(&mut b);
        let ok = sent
            .iter()
            .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
            .expect("the 200 reaches A");
        let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
        assert!(b.poll_timeout().is_some(), "a deadline, not an overflow");
        // B sends REFER; A's NOTIFY claims a subscription of `huge` seconds.
        let refer = from_b(&bim, "REFER", 2, "rf1").replace(
            "Contact: <sip:b@127.0.0.1:5071>\r\n",
            "Contact: <sip:b@127.0.0.1:5071>\r\nRefer-To: <sip:c@127.0.0.1:5060>\r\n",
        );
        b.handle_datagram(at(1000), refer.as_bytes());
        let _ = out(&mut b);
        let notify = from_a("NOTIFY", 2, "n1", &a_tag, None).replace(
            "Content-Length: 0\r\n\r\n",
            &format!(
                "Event: refer\r\nSubscription-State: active;expires={huge}\r\nContent-Type: message/sipfrag;version=2.0\r\nContent-Length: 22\r\n\r\nSIP/2.0 100 Trying\r\n\r\n"
            ),
        );
        b.handle_datagram(at(1100), notify.as_bytes());
        let _ = out(&mut b);
        // A hangs up: the call ends as any other.
        b.handle_datagram(at(2000), from_a("BYE", 3, "by", &a_tag, None).as_bytes());
        let sent = out(&mut b);
        assert!(
            sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
                && sent.iter().any(|(_, m)| first_line(m).starts_with("BYE ")),
            "A's BYE answered and relayed to B: {:?}",
            sent.iter().map(|(_, m)| first_line(m)).collect::<Vec<_>>()
        );
        // Every timer still runs, far in the future, without a panic.
        b.handle_timeout(at(u64::MAX / 2));
        let _ = out(&mut b);
    }
}

/// RFC 3325: identity headers cross the B2BUA only from trusted peers.
/// From a stranger (A at 127.0.0.1, nothing trusted) they are removed
/// from B's INVITE, and from B's answer to A; from a trusted prefix they
/// pass both ways.
#[test]
fn rfc3325_identity_headers_pass_only_from_trusted_peers() {
    let ids = "P-Asserted-Identity: <sip:ceo@example.com>\r\nRemote-Party-ID: <sip:ceo@example.com>;party=calling\r\nP-Preferred-Identity: <sip:ceo@example.com>\r\n";
    for (trust, pass) in [
        (&[][..], false),
        (&["127.0.0.0/8"][..], true),
        (&["10.0.0.0/8"][..], false),
    ] {
        let mut b = b2bua_trusting(trust);
        let inv = a_invite().replacen(
            "Max-Forwards: 69\r\n",
            &format!("Max-Forwards: 69\r\n{ids}"),
            1,
        );
        b.handle_datagram(at(0), inv.as_bytes());
        let to_b = out(&mut b)
            .into_iter()
            .find(|(_, m)| first_line(m).starts_with("INVITE "))
            .expect("B's INVITE")
            .1;
        let text = String::from_utf8_lossy(&to_b).into_owned();
        for h in [
            "P-Asserted-Identity",
            "Remote-Party-ID",
            "P-Preferred-Identity",
        ] {
            assert_eq!(
                text.contains(h),
                pass,
                "{trust:?}: {h} in B's INVITE:\n{text}"
            );
        }
        let bim = scan(&to_b).unwrap();
        let ok = b_resp(&bim, "200 OK", "bt", Some(SDP_B)).replacen(
            "Contact: ",
            "P-Asserted-Identity: <sip:pbx@example.com>\r\nContact: ",
            1,
        );
        b.handle_datagram(at(100), ok.as_bytes());
        let to_a = out(&mut b)
            .into_iter()
            .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
            .expect("the 200 to A")
            .1;
        let text = String::from_utf8_lossy(&to_a).into_owned();
        assert_eq!(
            text.contains("P-Asserted-Identity"),
            pass,
            "{trust:?}: in A's 200:\n{text}"
        );
    }
}

#[test]
fn rfc3261_21_5_4_past_max_calls_a_new_call_gets_503_with_retry_after() {
    let mut b = b2bua_max_calls(&["b=127.0.0.1:5071"], 2);
    let invite = |n: u32| a_invite().replace("a-call", &format!("a-call-{n}"));
    for n in 1..=2 {
        b.handle_datagram(at(u64::from(n)), invite(n).as_bytes());
        let sent = out(&mut b);
        assert!(
            sent.iter()
                .any(|(_, m)| first_line(m).starts_with("INVITE ")),
            "call {n} goes to B"
        );
    }
    b.handle_datagram(at(10), invite(3).as_bytes());
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let text = String::from_utf8_lossy(&sent[0].1).into_owned();
    assert!(
        text.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nRetry-After: 5\r\n"), "{text}");
    assert!(text.contains("Call-ID: a-call-3\r\n"), "{text}");
    assert_eq!(
        sent[0].0,
        Some("127.0.0.1:5060".parse().unwrap()),
        "back through the edge"
    );
    assert_eq!((b.calls_active(), b.stats().refused_full), (2, 1));
    // Calls that end make room once they are gone from memory: B never
    // answers, both INVITEs time out (timer B, 64*T1), A gets 408, and
    // its 408 waits for A's ACK another 64*T1 (timer H).
    for t in (40..100_000).step_by(500) {
        b.handle_timeout(at(t));
        out(&mut b);
        if t < 30_000 {
            assert_eq!(b.calls_held(), 2, "held until they end");
        }
    }
    assert_eq!((b.calls_active(), b.calls_held()), (0, 0));
    b.handle_datagram(at(100_001), invite(4).as_bytes());
    assert!(
        out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("INVITE ")),
        "room again: call 4 goes to B"
    );
}

#[test]
fn the_sip_sections_limits_apply_at_the_worker_too() {
    let mut b = b2bua_limits(handover_sip::Limits {
        max_message_bytes: 512,
        max_uri_bytes: 64,
    });
    // A's INVITE with 606 more bytes of SDP: past 512 in all.
    let pad = format!("a=x:{}\r\n", "y".repeat(600));
    let big = a_invite()
        .replace("m=audio", &format!("{pad}m=audio"))
        .replace(
            &format!("Content-Length: {}", SDP_A.len()),
            &format!("Content-Length: {}", SDP_A.len() + pad.len()),
        );
    b.handle_datagram(at(0), big.as_bytes());
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        first_line(&sent[0].1).starts_with("SIP/2.0 413 "),
        "{}",
        first_line(&sent[0].1)
    );
    assert_eq!(b.calls_active(), 0);
    // Within the limits, the same INVITE is a call.
    let mut b = b2bua_limits(handover_sip::Limits::default());
    b.handle_datagram(at(0), big.as_bytes());
    assert!(
        out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("INVITE "))
    );
}

#[test]
fn a_source_past_its_call_budget_gets_503_and_others_are_served() {
    let mut b = b2bua_per_source(2);
    let from = |n: u32, ip: &str| {
        a_invite()
            .replace("a-call", &format!("a-call-{n}"))
            .replace("127.0.0.1;rport=5061", &format!("{ip};rport=5061"))
    };
    for n in 1..=2 {
        b.handle_datagram(at(u64::from(n)), from(n, "192.0.2.7").as_bytes());
        assert!(
            out(&mut b)
                .iter()
                .any(|(_, m)| first_line(m).starts_with("INVITE "))
        );
    }
    b.handle_datagram(at(5), from(3, "192.0.2.7").as_bytes());
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let text = String::from_utf8_lossy(&sent[0].1).into_owned();
    assert!(
        text.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nRetry-After: 5\r\n"), "{text}");
    assert_eq!(b.stats().refused_per_source, 1);
    // Another source is served.
    b.handle_datagram(at(6), from(4, "198.51.100.9").as_bytes());
    assert!(
        out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("INVITE "))
    );
    // Once the first source's calls are gone, it is served again.
    for t in (10..100_000).step_by(500) {
        b.handle_timeout(at(t));
        out(&mut b);
    }
    assert_eq!(b.calls_held(), 0);
    b.handle_datagram(at(100_001), from(5, "192.0.2.7").as_bytes());
    assert!(
        out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("INVITE "))
    );
}

/// A route's targets over TCP (or TLS, WebSocket: their B legs carry a
/// Request-URI of their own) are tried one after another, as over UDP:
/// the first, and on its 503 (the edge could not connect) the next;
/// never both at once, which is for a registered user's bindings.
#[test]
fn a_routes_targets_over_tcp_are_tried_in_turn_not_forked() {
    let mut b = b2bua_routed(&["b=127.0.0.1:7001,127.0.0.1:7002;transport=tcp"], 7);
    b.handle_datagram(at(0), a_invite().as_bytes());
    let sent = out(&mut b);
    let invites: Vec<&Vec<u8>> = sent
        .iter()
        .filter(|(_, m)| m.starts_with(b"INVITE "))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(invites.len(), 1, "one target at a time");
    let f = scan(invites[0]).unwrap();
    let first_port = f.request_uri().unwrap().port();
    assert!(String::from_utf8_lossy(invites[0]).contains(";transport=tcp SIP/2.0"));
    b.handle_datagram(
        at(20),
        b_resp(&f, "503 Service Unavailable", "e1", None).as_bytes(),
    );
    let sent = out(&mut b);
    let next = sent
        .iter()
        .find(|(_, m)| m.starts_with(b"INVITE "))
        .expect("the next target is tried");
    let s = scan(&next.1).unwrap();
    assert_ne!(s.request_uri().unwrap().port(), first_port);
    assert_eq!(b.stats().failovers, 1);
    assert_eq!(b.stats().forks, 0);
}

/// B answers 200 with a Contact we cannot send to (not a SIP URI): there
/// is no dialog to carry the call, so the 2xx is ACKed and hung up at the
/// address our INVITE reached (RFC 3261 §13.2.2.4), and A hears 502 Bad
/// Gateway instead of a call with no way to reach B. A retransmitted 2xx
/// gets the ACK again, and nothing more.
#[test]
fn a_2xx_whose_contact_is_unusable_is_acked_and_hung_up_and_a_hears_502() {
    let mut b = b2bua();
    b.handle_datagram(at(0), a_invite().as_bytes());
    let sent = out(&mut b);
    let bi_bytes = sent[1].1.clone();
    let bi = scan(&bi_bytes).unwrap();
    let ok = b_resp(&bi, "200 OK", "bt", Some(SDP_B)).replace(
        "Contact: <sip:b@127.0.0.1:5071>",
        "Contact: <mailto:b@example.com>",
    );
    b.handle_datagram(at(100), ok.as_bytes());
    let sent = out(&mut b);
    let lines: Vec<String> = sent.iter().map(|(_, m)| first_line(m)).collect();
    assert!(
        lines.contains(&"ACK sip:b@127.0.0.1:5071 SIP/2.0".to_string()),
        "ACK at the INVITE's Request-URI: {lines:?}"
    );
    assert!(
        lines.contains(&"BYE sip:b@127.0.0.1:5071 SIP/2.0".to_string()),
        "and BYE: {lines:?}"
    );
    assert!(
        lines.contains(&"SIP/2.0 502 Bad Gateway".to_string()),
        "A hears 502: {lines:?}"
    );
    for (_, m) in &sent {
        scan(m).expect("everything sent scans");
    }
    let bye = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("BYE "))
        .map(|(_, m)| scan(m).unwrap().to_tag().map(<[u8]>::to_vec))
        .unwrap();
    assert_eq!(bye.as_deref(), Some(&b"bt"[..]), "in B's dialog");
    // B did not hear the ACK: its 2xx again gets the ACK again, no second
    // BYE and nothing for A.
    b.handle_datagram(at(600), ok.as_bytes());
    let again: Vec<String> = out(&mut b).iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(again, ["ACK sip:b@127.0.0.1:5071 SIP/2.0"], "{again:?}");
    assert_eq!(b.stats().answered, 0);
}

/// Past its INVITE transactions (64·T1) a held call keeps only the heads
/// of its INVITEs (`replica::invite_head`): a re-INVITE is still relayed
/// with its offer and answered, and a BYE still ends both legs.
#[test]
fn a_call_held_past_its_invite_transactions_goes_on() {
    let (mut b, a_tag, bi) = answered();
    let bim = scan(&bi).unwrap();
    b.handle_timeout(at(40_000));
    let _ = out(&mut b);
    assert_eq!(b.calls_active(), 1);
    assert_eq!(
        b.transactions_active(),
        0,
        "both INVITEs' transactions over"
    );
    let reinv = from_a("INVITE", 2, "r1", &a_tag, Some(SDP_HOLD));
    b.handle_datagram(at(41_000), reinv.as_bytes());
    let sent = out(&mut b);
    let rb = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .expect("re-INVITE to B");
    let rb = scan(&rb.1).unwrap();
    assert_eq!(rb.call_id(), bim.call_id());
    assert_eq!(
        rb.body(),
        SDP_HOLD.as_bytes(),
        "the offer is passed through"
    );
    b.handle_datagram(
        at(41_100),
        b_resp(&rb, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut b);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("200 to A");
    let om = scan(&ok.1).unwrap();
    assert_eq!((om.call_id(), om.cseq().seq), (&b"a-call"[..], 2));
    assert_eq!(om.vias().count(), 2, "A's Vias, from A's re-INVITE");
    assert_eq!(om.body(), SDP_B.as_bytes());
    b.handle_datagram(
        at(41_200),
        from_a("ACK", 2, "r1ack", &a_tag, None).as_bytes(),
    );
    let _ = out(&mut b);
    b.handle_datagram(
        at(42_000),
        from_a("BYE", 3, "bye1", &a_tag, None).as_bytes(),
    );
    let sent = out(&mut b);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("200 to A's BYE");
    assert_eq!(scan(&ok.1).unwrap().cseq().method, Method::Bye);
    let bye = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("BYE "))
        .expect("BYE to B");
    let bye = scan(&bye.1).unwrap();
    assert_eq!(bye.call_id(), bim.call_id());
    assert_eq!(bye.to_tag(), Some(&b"bt"[..]));
    assert_eq!(bye.cseq().seq, 3, "after the INVITE and the re-INVITE");
    assert_eq!(b.stats().hung_up, 1);
}

/// A's INVITE sent again: while B rings A hears the last provisional
/// again (RFC 3261 §17.2.1); once answered (RFC 6026 Accepted, and after
/// the transaction is over) it is absorbed. Never a second call, nor
/// anything to B.
#[test]
fn a_resent_invite_is_answered_while_ringing_and_absorbed_once_answered() {
    let mut b = b2bua();
    let inv = a_invite();
    b.handle_datagram(at(0), inv.as_bytes());
    let sent = out(&mut b);
    let bi = sent[1].1.clone();
    let bim = scan(&bi).unwrap();
    b.handle_datagram(at(100), b_resp(&bim, "180 Ringing", "bt", None).as_bytes());
    let sent = out(&mut b);
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 180 Ringing");
    b.handle_datagram(at(150), inv.as_bytes());
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 180 Ringing");
    assert_eq!(sent[0].0, Some("127.0.0.1:5060".parse().unwrap()));
    b.handle_datagram(
        at(200),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut b);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("200 to A");
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    b.handle_datagram(at(300), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    assert_eq!(out(&mut b), vec![]);
    for t in [1_000, 20_000, 40_000] {
        b.handle_timeout(at(t));
        let _ = out(&mut b);
        b.handle_datagram(at(t), inv.as_bytes());
        assert_eq!(out(&mut b), vec![], "absorbed at {t} ms");
    }
    assert_eq!(b.calls_active(), 1);
    assert_eq!(b.stats().started, 1, "one call");
}

/// A's CANCEL crosses B's 2xx (B answered as A gave up): A has its 487,
/// so the dialog B made is ACKed and then hung up (RFC 3261 §9.1: the
/// CANCEL has no effect on a UAS that already answered; §13.2.2.4: a UAC
/// that does not want the dialog sends BYE). B must not stay in a call
/// nobody hears.
#[test]
fn rfc3261_9_1_a_2xx_that_crosses_a_cancel_is_acked_and_hung_up() {
    let mut b = b2bua();
    let inv = a_invite();
    b.handle_datagram(at(0), inv.as_bytes());
    let sent = out(&mut b);
    let bi_bytes = sent[1].1.clone();
    let bi = scan(&bi_bytes).unwrap();
    b.handle_datagram(at(100), b_resp(&bi, "180 Ringing", "bt", None).as_bytes());
    let _ = out(&mut b);
    let cancel = a_cancel(&inv);
    b.handle_datagram(at(500), cancel.as_bytes());
    let _ = out(&mut b);
    b.handle_datagram(at(510), b_resp(&bi, "200 OK", "bt", Some(SDP_B)).as_bytes());
    let sent = out(&mut b);
    let lines: Vec<String> = sent.iter().map(|(_, m)| first_line(m)).collect();
    assert!(lines.iter().any(|l| l.starts_with("ACK ")), "{lines:?}");
    let bye = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("BYE "))
        .unwrap_or_else(|| panic!("BYE to B: {lines:?}"));
    let bm = scan(&bye.1).unwrap();
    assert_eq!(bm.call_id(), bi.call_id());
    assert_eq!(bm.to_tag(), Some(&b"bt"[..]));
    assert!(
        !lines.iter().any(|l| l.starts_with("SIP/2.0 200")),
        "A, cancelled, hears no 2xx: {lines:?}"
    );
    // B resends its 2xx (our ACK lost): ACKed again, and hung up once.
    b.handle_datagram(at(600), b_resp(&bi, "200 OK", "bt", Some(SDP_B)).as_bytes());
    let lines: Vec<String> = out(&mut b).iter().map(|(_, m)| first_line(m)).collect();
    assert_eq!(lines, ["ACK sip:b@127.0.0.1:5071 SIP/2.0"]);
    // B answers the BYE; the call ends, counted as failed (A heard 487).
    b.handle_datagram(at(700), b_resp(&bm, "200 OK", "bt", None).as_bytes());
    for t in [1_000, 10_000, 40_000] {
        b.handle_timeout(at(t));
        let _ = out(&mut b);
    }
    assert_eq!(b.calls_active(), 0);
    assert_eq!((b.stats().answered, b.stats().failed), (0, 1));
}

/// A 2xx from B with another To tag after the call is answered (a forking
/// proxy on B's side, two phones picking up): its dialog is ACKed and hung
/// up (RFC 3261 §13.2.2.4); the call goes on with the first.
#[test]
fn rfc3261_13_2_2_4_a_second_dialog_from_b_is_acked_and_hung_up() {
    let mut b = b2bua();
    b.handle_datagram(at(0), a_invite().as_bytes());
    let sent = out(&mut b);
    let bi_bytes = sent[1].1.clone();
    let bi = scan(&bi_bytes).unwrap();
    b.handle_datagram(at(100), b_resp(&bi, "200 OK", "bt", Some(SDP_B)).as_bytes());
    let _ = out(&mut b);
    b.handle_datagram(
        at(120),
        b_resp(&bi, "200 OK", "bt2", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut b);
    let lines: Vec<String> = sent.iter().map(|(_, m)| first_line(m)).collect();
    let ack = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("ACK "))
        .unwrap_or_else(|| panic!("ACK: {lines:?}"));
    assert_eq!(scan(&ack.1).unwrap().to_tag(), Some(&b"bt2"[..]));
    let bye = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("BYE "))
        .unwrap_or_else(|| panic!("BYE: {lines:?}"));
    assert_eq!(scan(&bye.1).unwrap().to_tag(), Some(&b"bt2"[..]));
    assert!(
        !lines.iter().any(|l| l.starts_with("SIP/2.0 ")),
        "nothing to A: {lines:?}"
    );
    // The first dialog's 2xx again: only its ACK.
    b.handle_datagram(at(140), b_resp(&bi, "200 OK", "bt", Some(SDP_B)).as_bytes());
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert_eq!(scan(&sent[0].1).unwrap().to_tag(), Some(&b"bt"[..]));
    assert_eq!(b.calls_active(), 1, "the call goes on");
}
