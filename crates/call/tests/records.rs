//! Call detail records (docs/records.md): what the B2BUA queues when a
//! call ends, the history a new owner carries on, and the answer that ends
//! a call held until the end is committed.

mod common;

use common::*;
use handover_call::{Detail, EndCause, Replication};
use handover_sip::scan;

#[test]
fn an_adopted_calls_record_keeps_its_history_and_names_both_workers() {
    let mut w1 = b2bua();
    w1.set_replication(true);
    w1.set_records(true);
    w1.set_member(1);
    w1.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut w1)[1].1.clone();
    let bim = scan(&bi).unwrap();
    w1.handle_datagram(at(40), b_resp(&bim, "180 Ringing", "bt", None).as_bytes());
    w1.handle_datagram(
        at(100),
        b_resp(&bim, "200 OK", "bt", Some(SDP_B)).as_bytes(),
    );
    out(&mut w1);
    let Some(Replication::Upsert(rec)) = w1.poll_replication() else {
        panic!("the confirmed call is replicated")
    };
    assert!(rec.detail.kept(), "a record id: {:?}", rec.detail);
    let text = rec.detail.id_text();
    assert!(text.iter().all(u8::is_ascii_hexdigit), "{text:?}");
    assert_eq!(
        Detail::parse_id(&text),
        Some(rec.detail.id),
        "read back as written"
    );
    assert_eq!(Detail::parse_id(&text[1..]), None);
    assert_eq!(Detail::parse_id(&[b'g'; 32]), None);
    assert_eq!(rec.detail.workers, [1]);
    assert_eq!(rec.detail.ringing_ms, 40);
    assert_eq!(rec.detail.answered_ms, 0, "A has no 2xx yet");
    // Worker 1 dies; worker 2 carries the call on, and B hangs up.
    let mut w2 = b2bua();
    w2.set_replication(true);
    w2.set_records(true);
    w2.set_member(2);
    // (A's ACK was committed: no 2xx to resend.)
    let mut rec = rec;
    rec.a_ok = None;
    assert!(w2.adopt(at(3000), *rec.clone()));
    out(&mut w2);
    w2.handle_datagram(at(4000), from_b(&bim, "BYE", 2, "bye1").as_bytes());
    let sent = out(&mut w2);
    assert!(
        !sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "B's 200 waits for the end's commit"
    );
    assert!(sent.iter().any(|(_, m)| first_line(m).starts_with("BYE ")));
    let r = w2.poll_record().expect("the ended call's record");
    assert_eq!(r.detail.id, rec.detail.id, "one id for the call's life");
    assert_eq!(r.detail.workers, [1, 2]);
    assert_eq!((r.cause, r.status), (EndCause::Callee, 200));
    assert_eq!((r.detail.started_ms, r.ended_ms), (0, 4000));
    assert_eq!(
        r.detail.answered_ms, 3000,
        "no answer time in the record: the adoption's"
    );
    assert_eq!(r.a_call_id, b"a-call");
    assert_eq!(r.b_call_id, bim.call_id());
    assert_eq!(&r.transport, b"UDP");
    assert!(r.from.starts_with(b"sip:"), "{:?}", r.from);
    assert_eq!(w2.poll_record(), None, "once");
    w2.handle_datagram(at(4005), from_b(&bim, "BYE", 2, "bye1").as_bytes());
    assert!(out(&mut w2).is_empty(), "B's retransmission is absorbed");
    w2.end_committed(at(4010), b"a-call");
    assert!(
        out(&mut w2)
            .iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
    );
}

/// A replicated worker (call records on or off) whose callee answered A's
/// call 486 at 30 ms: the worker, and the first lines of what it sent
/// then.
fn busy(records: bool) -> (handover_call::B2bua<Seq>, Vec<String>) {
    let mut w = b2bua();
    w.set_replication(true);
    w.set_records(records);
    w.handle_datagram(at(0), a_invite().as_bytes());
    let bi = out(&mut w)[1].1.clone();
    let bim = scan(&bi).unwrap();
    w.handle_datagram(at(30), b_resp(&bim, "486 Busy Here", "bt", None).as_bytes());
    let sent = out(&mut w).iter().map(|(_, m)| first_line(m)).collect();
    (w, sent)
}

#[test]
fn a_busy_callees_486_reaches_the_caller_once_the_record_is_committed() {
    let (mut w, sent) = busy(true);
    assert!(
        !sent.iter().any(|l| l.starts_with("SIP/2.0 486")),
        "held for the record's commit"
    );
    let r = w.poll_record().expect("a record of the unanswered call");
    assert_eq!((r.cause, r.status), (EndCause::Rejected, 486));
    assert_eq!((r.detail.ringing_ms, r.detail.answered_ms), (0, 0));
    assert_eq!(r.duration_ms(), 0);
    // A's INVITE retransmission while it waits: 100 Trying again, no 486.
    w.handle_datagram(at(500), a_invite().as_bytes());
    assert!(
        !out(&mut w)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 486"))
    );
    w.end_committed(at(40), b"a-call");
    assert!(
        out(&mut w)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 486"))
    );
}

#[test]
fn without_a_commit_the_held_end_goes_after_the_hold_limit() {
    let (mut w, _) = busy(true);
    w.handle_timeout(at(4031));
    assert!(
        out(&mut w)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 486"))
    );
}

#[test]
fn records_off_queue_nothing_and_hold_nothing() {
    let (mut w, sent) = busy(false);
    assert!(sent.iter().any(|l| l.starts_with("SIP/2.0 486")));
    assert_eq!(w.poll_record(), None);
}
