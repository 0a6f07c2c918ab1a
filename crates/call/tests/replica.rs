//! Calls carried on by another worker (docs/architecture.md, "Replication"): a confirmed call's
//! record, queued for replication, is adopted by a second B2BUA, which then
//! relays a re-INVITE in both legs' own CSeq spaces and a BYE to the other
//! party, as the first would have.

mod common;

use common::*;
use handover_call::{B2bua, CallRecord, Replication};
use handover_sip::{Method, scan};

#[test]
fn a_call_adopted_from_its_replica_is_reinvited_and_hung_up_by_the_new_worker() {
    let mut w1 = b2bua();
    w1.set_replication(true);
    w1.handle_datagram(at(0), a_invite().as_bytes());
    let sent = out(&mut w1);
    let bi = sent[1].1.clone();
    let bim = scan(&bi).unwrap();
    assert_eq!(
        w1.poll_replication(),
        None,
        "early dialogs are not replicated"
    );
    w1.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut w1);
    assert!(
        sent.iter().any(|(_, m)| first_line(m).starts_with("ACK ")),
        "B's 2xx is ACKed"
    );
    assert!(
        !sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "the 2xx waits for the commit"
    );
    let Some(Replication::Upsert(rec)) = w1.poll_replication() else {
        panic!("a confirmed call is replicated")
    };
    w1.committed(at(110), b"a-call");
    let sent = out(&mut w1);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("the 2xx goes to A once committed");
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    assert_eq!(rec.version, 1);
    assert_eq!(rec.a_call_id, b"a-call");
    assert_eq!(rec.b_call_id, bim.call_id());
    assert_eq!(
        rec.a_ok.as_ref(),
        Some(&ok.1),
        "the held 2xx rides beside the record"
    );
    // The ACK: the replica drops that 2xx; no new version.
    w1.handle_datagram(at(150), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    assert_eq!(
        w1.poll_replication(),
        Some(Replication::Acked {
            id: b"a-call".to_vec()
        })
    );
    w1.handle_datagram(at(160), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    assert_eq!(w1.poll_replication(), None, "once");
    let rec = Box::new(CallRecord { a_ok: None, ..*rec });

    // Worker 1 dies; worker 2 takes the shard over from its replica.
    let mut w2 = b2bua_routed(&["b=127.0.0.1:5071"], 99);
    w2.set_replication(true);
    assert!(w2.adopt(at(5000), (*rec).clone()));
    assert!(out(&mut w2).is_empty(), "A had acknowledged its 2xx");
    assert!(!w2.adopt(at(5000), (*rec).clone()), "adopted once");
    assert!(w2.knows(b"a-call") && w2.knows(bim.call_id()));
    assert_eq!(w2.calls_active(), 1);

    // A puts B on hold: relayed in B's dialog with B's next CSeq.
    let reinv = from_a("INVITE", 2, "r1", &a_tag, Some(SDP_A));
    w2.handle_datagram(at(6000), reinv.as_bytes());
    let sent = out(&mut w2);
    let to_b = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .expect("the re-INVITE reaches B");
    let rb = scan(&to_b.1).unwrap();
    assert_eq!(rb.call_id(), bim.call_id());
    assert_eq!(rb.cseq().seq, 2, "B's CSeq space goes on from the replica");
    assert_eq!(rb.to_tag(), Some(&b"bt"[..]));
    assert_eq!(rb.from_tag(), bim.from_tag(), "our tag on leg B is kept");
    w2.handle_datagram(
        at(6100),
        b_resp(&rb, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut w2);
    assert!(sent.iter().any(|(_, m)| first_line(m).starts_with("ACK ")));
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("A hears B's answer");
    let om = scan(&ok.1).unwrap();
    assert_eq!(
        om.to_tag(),
        Some(a_tag.as_bytes()),
        "our tag on leg A is kept"
    );
    assert_eq!(om.cseq().seq, 2);
    let Some(Replication::Upsert(rec2)) = w2.poll_replication() else {
        panic!("the relayed re-INVITE is replicated")
    };
    assert_eq!(rec2.version, 2);
    assert_eq!(rec2.b_dialog.local_seq, 2);
    assert!(rec2.pending.is_some(), "in flight when relayed");
    let Some(Replication::Upsert(rec3)) = w2.poll_replication() else {
        panic!("the completed re-INVITE is replicated")
    };
    assert_eq!(rec3.version, 3);
    assert_eq!(rec3.pending, None, "answered");

    // B hangs up: 200 to B, BYE to A in A's dialog, the record removed
    // (without call records nothing waits for the removal's commit:
    // `records.rs` tests the held end).
    let bye = from_b(&bim, "BYE", 5, "bye1");
    w2.handle_datagram(at(7000), bye.as_bytes());
    let sent = out(&mut w2);
    assert!(sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"));
    let to_a = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("BYE "))
        .expect("BYE to A");
    let ba = scan(&to_a.1).unwrap();
    assert_eq!(ba.call_id(), b"a-call");
    assert_eq!(ba.from_tag(), Some(a_tag.as_bytes()));
    assert_eq!(ba.cseq().method, Method::Bye);
    assert!(matches!(
        w2.poll_replication(),
        Some(Replication::Remove { version: 4, .. })
    ));
    assert_eq!(w2.calls_active(), 0);
}

#[test]
fn without_replication_nothing_is_queued() {
    let (mut b, _, _) = answered();
    assert_eq!(b.poll_replication(), None);
}

#[test]
fn a_2xx_whose_commit_never_comes_goes_to_a_after_the_hold_limit() {
    let mut w = b2bua();
    w.set_replication(true);
    w.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut w)[1].1.clone();
    let bim = scan(&bi).unwrap();
    w.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    out(&mut w);
    w.handle_timeout(at(3_000));
    assert!(
        !out(&mut w)
            .iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
    );
    w.handle_timeout(at(4_200));
    assert!(
        out(&mut w)
            .iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "connected unreplicated rather than not at all"
    );
    assert_eq!(w.stats().unreplicated, 1);
}

/// A call record goes to every replica's disk: the caller's credentials
/// (Authorization, Proxy-Authorization, folded or not) are not in it, nor
/// either INVITE's offer (a confirmed call never sends or answers them
/// again), and the call is still adopted and answered from it.
#[test]
fn call_records_keep_no_credentials_and_no_offer() {
    let mut w1 = b2bua();
    w1.set_replication(true);
    let inv = a_invite().replacen(
        "Max-Forwards: 69\r\n",
        "Max-Forwards: 69\r\nAuthorization: Digest username=\"alice\",\r\n response=\"6629fae49393a05397450978507c4ef1\"\r\nproxy-authorization: Digest username=\"alice\"\r\n",
        1,
    );
    w1.handle_datagram(at(0), inv.as_bytes());
    let bi = out(&mut w1)[1].1.clone();
    let bim = scan(&bi).unwrap();
    w1.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let Some(Replication::Upsert(rec)) = w1.poll_replication() else {
        panic!("a confirmed call is replicated")
    };
    let text = String::from_utf8_lossy(&rec.a_invite).to_ascii_lowercase();
    assert!(
        !text.contains("authorization") && !text.contains("6629fae4"),
        "{text}"
    );
    let kept = scan(&rec.a_invite).expect("the rest of the INVITE is intact");
    assert_eq!(kept.call_id(), b"a-call");
    assert_eq!(kept.vias().count(), 2);
    assert!(kept.body().is_empty(), "no offer kept");
    assert!(kept.content_type().is_none());
    assert!(text.ends_with("content-length: 0\r\n\r\n"), "{text}");
    let b_kept = scan(&rec.b_invite).expect("B's INVITE is intact");
    assert_eq!(b_kept.call_id(), bim.call_id());
    assert!(b_kept.body().is_empty(), "no offer kept");
    let mut w2 = b2bua_routed(&["b=127.0.0.1:5071"], 99);
    assert!(
        w2.adopt(at(5000), (*rec).clone()),
        "the record still adopts"
    );
}

/// RFC 3261 §15: the callee's side sends no BYE before the ACK of its
/// 2xx. B answers and hangs up at once, while the 2xx for A is held for
/// the call's commit: A gets the 2xx at once (the commit no longer
/// matters), and the BYE only after its ACK; a BYE that overtook the 2xx
/// would name a dialog A does not know, and A's call would stay up.
#[test]
fn rfc3261_15_b_hanging_up_before_a_has_its_2xx_gets_a_the_2xx_then_the_bye_after_its_ack() {
    let mut w = b2bua();
    w.set_replication(true);
    w.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut w)[1].1.clone();
    let bim = scan(&bi).unwrap();
    w.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    assert!(
        !out(&mut w)
            .iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "held for the commit"
    );
    w.handle_datagram(at(120), from_b(&bim, "BYE", 1, "bbye").as_bytes());
    let sent = out(&mut w);
    let firsts: Vec<String> = sent.iter().map(|(_, m)| first_line(m)).collect();
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK" && m.windows(6).any(|w| w == b"INVITE"))
        .unwrap_or_else(|| panic!("A's 2xx goes out: {firsts:?}"));
    assert!(
        !firsts.iter().any(|l| l.starts_with("BYE ")),
        "no BYE before the ACK: {firsts:?}"
    );
    // Resent until the ACK, still without a BYE.
    w.handle_timeout(at(700));
    let firsts: Vec<String> = out(&mut w).iter().map(|(_, m)| first_line(m)).collect();
    assert!(firsts.iter().any(|l| l == "SIP/2.0 200 OK"), "{firsts:?}");
    assert!(!firsts.iter().any(|l| l.starts_with("BYE ")), "{firsts:?}");
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    w.handle_datagram(at(800), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    let sent = out(&mut w);
    let bye = sent
        .iter()
        .find(|(_, m)| m.starts_with(b"BYE "))
        .expect("A's BYE follows its ACK");
    assert!(String::from_utf8_lossy(&bye.1).contains("Call-ID: a-call\r\n"));
    w.handle_timeout(at(5_000));
    assert!(
        !out(&mut w)
            .iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"
                && String::from_utf8_lossy(m).contains(" INVITE\r\n")),
        "no 2xx resent after the ACK"
    );

    // Without replication, a BYE from B between our 2xx and A's ACK waits
    // likewise; if the ACK never comes, the BYE goes at the 2xx's end.
    let mut w = b2bua();
    w.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut w)[1].1.clone();
    let bim = scan(&bi).unwrap();
    w.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    out(&mut w);
    w.handle_datagram(at(120), from_b(&bim, "BYE", 1, "bbye").as_bytes());
    assert!(!out(&mut w).iter().any(|(_, m)| m.starts_with(b"BYE ")));
    w.handle_timeout(at(100 + 32_500));
    assert!(
        out(&mut w).iter().any(|(_, m)| m.starts_with(b"BYE ")),
        "A's BYE once the 2xx gave up waiting for its ACK"
    );
}

/// A shard that moves while a call is set up (a worker joins or drains)
/// sends the callee's answers to the new owner. Our Via names the worker
/// that sent the INVITE (`w`), and the new owner, which does not hold
/// the call, names that worker for the shell to pass the answer to; the
/// sender, which holds the call, handles it.
#[test]
fn an_answer_for_a_call_another_worker_sets_up_names_that_worker() {
    let (mut w1, mut w2) = (b2bua(), b2bua());
    for (w, id) in [(&mut w1, 1), (&mut w2, 2)] {
        w.set_replication(true);
        w.set_member(id);
    }
    w1.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut w1)[1].1.clone();
    let bim = scan(&bi).unwrap();
    assert_eq!(
        bim.top_via()
            .param(b"w")
            .and_then(|p| p.value)
            .map(|v| v.of(bim.buf())),
        Some(&b"1"[..]),
        "the INVITE's Via names its worker"
    );
    let ringing = b_resp(&bim, "180 Ringing", "bt", None);
    let rm = scan(ringing.as_bytes()).unwrap();
    assert_eq!(
        w2.sent_elsewhere(&rm),
        Some(1),
        "the new owner names the sender"
    );
    assert_eq!(w1.sent_elsewhere(&rm), None, "the sender holds the call");
    // A request is never passed on; nor is anything without a member id.
    let bye = from_a("BYE", 2, "bye1", "xx", None);
    assert_eq!(w2.sent_elsewhere(&scan(bye.as_bytes()).unwrap()), None);
    assert_eq!(b2bua().sent_elsewhere(&rm), None);
    // Handed on unchanged, the answers set the call up on its worker.
    w1.handle_datagram(at(50), ringing.as_bytes());
    w1.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut w1);
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 180 Ringing")
    );
    assert!(
        matches!(w1.poll_replication(), Some(Replication::Upsert(r)) if r.version == 1),
        "confirmed where it was set up, its record proposed"
    );
    // An answer naming this very worker for a call it does not hold (or a
    // forged `w`) stays here.
    let own = ringing
        .replace("a-call", "other-call")
        .replace(";w=1", ";w=2");
    assert_eq!(w2.sent_elsewhere(&scan(own.as_bytes()).unwrap()), None);
}

/// A replicated call through worker 1, answered, its record committed
/// and A's 2xx ACKed (the records queued so far taken): worker 1 and our
/// tag on leg A.
fn answered_and_acked() -> (B2bua<Seq>, String) {
    let mut w1 = b2bua();
    w1.set_replication(true);
    w1.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut w1)[1].1.clone();
    let bim = scan(&bi).unwrap();
    w1.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    out(&mut w1);
    assert!(matches!(
        w1.poll_replication(),
        Some(Replication::Upsert(_))
    ));
    w1.committed(at(110), b"a-call");
    let sent = out(&mut w1);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .unwrap();
    let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    w1.handle_datagram(at(150), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    assert!(matches!(
        w1.poll_replication(),
        Some(Replication::Acked { .. })
    ));
    (w1, a_tag)
}

/// A re-INVITE in flight when its worker dies: A got 100 Trying and will
/// not send it again, B answers the dead worker. The record written when
/// it was relayed carries it (`PendingRequest`); the new owner resends it
/// to B unchanged (B's transaction absorbs it), and B's 2xx, retransmitted
/// until ACKed, is ACKed and relayed to A as the answer to A's re-INVITE.
#[test]
fn a_reinvite_in_flight_when_its_worker_dies_is_answered_by_the_new_owner() {
    let (mut w1, a_tag) = answered_and_acked();

    // A's hold: 100 Trying to A, the re-INVITE to B, the record with it.
    let reinv = from_a("INVITE", 2, "r1", &a_tag, Some(SDP_A));
    w1.handle_datagram(at(1000), reinv.as_bytes());
    let sent = out(&mut w1);
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 100 Trying")
    );
    let to_b = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("INVITE "))
        .unwrap()
        .1
        .clone();
    let Some(Replication::Upsert(rec)) = w1.poll_replication() else {
        panic!("the relayed re-INVITE is replicated")
    };
    let p = rec.pending.as_ref().expect("the re-INVITE in flight");
    assert!(p.from_a);
    assert_eq!(p.relayed, to_b);

    // Worker 1 dies before B's 200 reaches it; worker 2 adopts the call.
    let mut w2 = b2bua_routed(&["b=127.0.0.1:5071"], 99);
    w2.set_replication(true);
    assert!(w2.adopt(at(4000), (*rec).clone()));
    let sent = out(&mut w2);
    assert!(
        sent.iter().any(|(_, m)| *m == to_b),
        "the re-INVITE resent to B unchanged (a retransmission to B)"
    );
    assert_eq!(sent.len(), 1, "A had its 100 Trying from worker 1");
    assert_eq!(w2.stats().resumed, 1);
    // B's 2xx (a retransmission: B answered worker 1) reaches worker 2.
    let rb = scan(&to_b).unwrap();
    w2.handle_datagram(
        at(4500),
        b_resp(&rb, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut w2);
    let ack = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("ACK "))
        .expect("B's 2xx is ACKed, so B does not end the call");
    assert_eq!(scan(&ack.1).unwrap().cseq().seq, rb.cseq().seq);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("A hears B's answer to its re-INVITE");
    let om = scan(&ok.1).unwrap();
    assert_eq!(om.cseq().seq, 2);
    assert_eq!(om.cseq().method, Method::Invite);
    assert_eq!(om.to_tag(), Some(a_tag.as_bytes()));
    assert_eq!(
        om.top_via().branch(),
        Some(&b"z9hG4bK-hxr1"[..]),
        "the answer of A's own transaction"
    );
    let Some(Replication::Upsert(after)) = w2.poll_replication() else {
        panic!("the answered re-INVITE is replicated")
    };
    assert_eq!(after.pending, None);
    assert!(after.version > rec.version);
    // A's ACK ends it; the call goes on.
    w2.handle_datagram(at(4600), from_a("ACK", 2, "ack2", &a_tag, None).as_bytes());
    assert_eq!(w2.calls_active(), 1);
}

/// A worker that dies between the commit of a new call and A's ACK of its
/// 2xx (before the 2xx left, or with it lost): A, past 180, does not
/// retransmit its INVITE and would wait forever while B talks to nobody.
/// The 2xx rides beside the first record until A's ACK is committed; the
/// new owner sends it again and resends it until A ACKs; a caller that
/// never does has both legs hung up (RFC 3261 §13.3.1.4), as on the
/// worker that answered.
#[test]
fn a_call_adopted_before_as_ack_sends_a_its_2xx_until_a_acks() {
    let first = || {
        let mut w1 = b2bua();
        w1.set_replication(true);
        w1.handle_datagram(at(0), a_invite().as_bytes());
        let bi = out(&mut w1)[1].1.clone();
        let bim = scan(&bi).unwrap();
        w1.handle_datagram(
            at(100),
            b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
        );
        out(&mut w1);
        let Some(Replication::Upsert(rec)) = w1.poll_replication() else {
            panic!("a confirmed call is replicated")
        };
        // Worker 1 dies at the commit, before the 2xx leaves.
        (rec, bi)
    };
    let (rec, _) = first();
    let held = rec.a_ok.clone().expect("the held 2xx");
    let mut w2 = b2bua_routed(&["b=127.0.0.1:5071"], 99);
    w2.set_replication(true);
    assert!(w2.adopt(at(4000), (*rec).clone()));
    let sent = out(&mut w2);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].1, held, "A gets the 2xx worker 1 held");
    assert_eq!(w2.stats().oks_resent, 1);
    w2.handle_timeout(at(4000 + 500));
    assert_eq!(
        out(&mut w2)
            .iter()
            .map(|(_, m)| m.clone())
            .collect::<Vec<_>>(),
        vec![held.clone()],
        "resent after T1"
    );
    let a_tag = String::from_utf8(scan(&held).unwrap().to_tag().unwrap().to_vec()).unwrap();
    w2.handle_datagram(at(4600), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    assert_eq!(
        w2.poll_replication(),
        Some(Replication::Acked {
            id: b"a-call".to_vec()
        })
    );
    w2.handle_timeout(at(9000));
    assert!(out(&mut w2).is_empty(), "no more resends after the ACK");
    assert_eq!(w2.calls_active(), 1);

    // A never ACKs: after 64*T1 both legs get a BYE.
    let (rec, bi) = first();
    let mut w3 = b2bua_routed(&["b=127.0.0.1:5071"], 98);
    w3.set_replication(true);
    assert!(w3.adopt(at(4000), (*rec).clone()));
    out(&mut w3);
    for ms in (4000..40_000).step_by(250) {
        w3.handle_timeout(at(ms));
    }
    // (Each resent until answered: counted once.)
    let byes: std::collections::BTreeSet<Vec<u8>> = out(&mut w3)
        .into_iter()
        .filter(|(_, m)| first_line(m).starts_with("BYE "))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(byes.len(), 2, "a BYE to each leg");
    let ids: Vec<Vec<u8>> = byes
        .iter()
        .map(|b| scan(b).unwrap().call_id().to_vec())
        .collect();
    assert!(ids.contains(&b"a-call".to_vec()));
    assert!(ids.contains(&scan(&bi).unwrap().call_id().to_vec()));
    assert_eq!(w3.stats().unacknowledged, 1);
}

/// The same for an UPDATE (or any relayed request but a re-INVITE): it
/// rides in the record its relay writes; the new owner resends it
/// unchanged and answers A's own transaction with B's answer. A's
/// retransmission (UDP) is absorbed by that transaction, not relayed as a
/// second UPDATE (a second offer B would answer again); over TCP there is
/// no retransmission, and only the resend answers A.
#[test]
fn an_update_in_flight_when_its_worker_dies_is_answered_once_by_the_new_owner() {
    let (mut w1, a_tag) = answered_and_acked();

    let update = from_a("UPDATE", 2, "u1", &a_tag, Some(SDP_A));
    w1.handle_datagram(at(1000), update.as_bytes());
    let to_b = out(&mut w1)
        .into_iter()
        .find(|(_, m)| first_line(m).starts_with("UPDATE "))
        .expect("the UPDATE relayed to B")
        .1;
    let Some(Replication::Upsert(rec)) = w1.poll_replication() else {
        panic!("the relayed UPDATE is replicated (B's CSeq moved)")
    };
    let p = rec.pending.as_ref().expect("the UPDATE in flight");
    assert!(p.from_a);
    assert_eq!(p.relayed, to_b);

    let mut w2 = b2bua_routed(&["b=127.0.0.1:5071"], 99);
    w2.set_replication(true);
    assert!(w2.adopt(at(4000), (*rec).clone()));
    let sent = out(&mut w2);
    assert_eq!(
        sent.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(),
        vec![to_b.clone()],
        "the UPDATE resent to B unchanged, nothing to A yet"
    );
    assert_eq!(w2.stats().resumed, 1);
    // A retransmits its UPDATE (UDP): absorbed, no second UPDATE to B.
    w2.handle_datagram(at(4200), update.as_bytes());
    assert!(
        !out(&mut w2)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("UPDATE ")),
        "no second UPDATE to B"
    );
    let rb = scan(&to_b).unwrap();
    w2.handle_datagram(
        at(4500),
        b_resp(&rb, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    let sent = out(&mut w2);
    let ok = sent
        .iter()
        .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
        .expect("A hears B's answer to its UPDATE");
    let om = scan(&ok.1).unwrap();
    assert_eq!(om.cseq().seq, 2);
    assert_eq!(om.cseq().method, Method::Update);
    assert_eq!(om.to_tag(), Some(a_tag.as_bytes()));
    assert_eq!(om.top_via().branch(), Some(&b"z9hG4bK-hxu1"[..]));
    assert_eq!(om.body(), SDP_B.as_bytes(), "with B's answer");
    let Some(Replication::Upsert(after)) = w2.poll_replication() else {
        panic!("the answered UPDATE is replicated")
    };
    assert_eq!(after.pending, None);
    assert_eq!(w2.calls_active(), 1);
}

/// A new call's first record refused by the cluster (nobody owned its
/// shard when it was applied): no worker can carry the call, so it fails
/// cleanly on both legs instead of living on one worker that A's next
/// request cannot reach. A gets 500 with Retry-After in place of the held
/// 2xx, B a BYE; nothing more is replicated.
#[test]
fn a_call_whose_first_record_is_refused_fails_on_both_legs() {
    let mut w = b2bua();
    w.set_replication(true);
    w.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut w)[1].1.clone();
    let bim = scan(&bi).unwrap();
    w.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    out(&mut w);
    assert!(matches!(w.poll_replication(), Some(Replication::Upsert(_))));
    w.refused(at(150), b"a-call");
    let sent = out(&mut w);
    let to_a = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("SIP/2.0 500"))
        .expect("A gets 500");
    let am = scan(&to_a.1).unwrap();
    assert_eq!(am.cseq().method, Method::Invite);
    assert!(am.to_tag().is_some());
    assert!(String::from_utf8_lossy(&to_a.1).contains("Retry-After: 5"));
    assert!(
        !sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "never the 2xx"
    );
    let bye = sent
        .iter()
        .find(|(_, m)| first_line(m).starts_with("BYE "))
        .expect("B gets a BYE");
    let bm = scan(&bye.1).unwrap();
    assert_eq!(bm.call_id(), bim.call_id());
    assert_eq!(bm.to_tag(), Some(&b"bt"[..]));
    assert_eq!(w.calls_active(), 0);
    assert_eq!(w.stats().refused_records, 1);
    assert_eq!(w.poll_replication(), None, "nothing to remove");
}
