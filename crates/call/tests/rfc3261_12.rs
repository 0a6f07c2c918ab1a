//! RFC 3261 §12: dialogs from both sides, route sets, target refresh,
//! CSeq order, in-dialog requests with loose and strict routers.

use handover_call::{Dialog, DialogError, DialogId, DialogState};
use handover_sip::{HeaderName, NameAddr, scan};

const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example SIP/2.0\r\n\
Via: SIP/2.0/UDP p2.example;branch=z9hG4bKp2\r\nVia: SIP/2.0/UDP pc33.atlanta.example;branch=z9hG4bKa\r\n\
Record-Route: <sip:p2.example;lr>\r\nRecord-Route: <sip:p1.example;lr>\r\n\
Max-Forwards: 69\r\nTo: Bob <sip:bob@biloxi.example>\r\nFrom: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\nCSeq: 314159 INVITE\r\nContact: <sip:alice@pc33.atlanta.example>\r\nContent-Length: 0\r\n\r\n";

const OK: &[u8] = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP pc33.atlanta.example;branch=z9hG4bKa\r\n\
Record-Route: <sip:p2.example;lr>\r\nRecord-Route: <sip:p1.example;lr>\r\n\
To: Bob <sip:bob@biloxi.example>;tag=a6c85cf\r\nFrom: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710\r\nCSeq: 314159 INVITE\r\nContact: <sip:bob@192.0.2.4>\r\nContent-Length: 0\r\n\r\n";

fn routes(req: &[u8]) -> Vec<String> {
    let m = scan(req).unwrap();
    m.values(HeaderName::Route)
        .map(|v| String::from_utf8(v.of(m.buf()).to_vec()).unwrap())
        .collect()
}

#[test]
fn rfc3261_12_1_1_uas_dialog_keeps_record_route_order() {
    let d = Dialog::uas(&scan(INVITE).unwrap(), b"a6c85cf", DialogState::Confirmed).unwrap();
    assert_eq!(d.local_tag(), b"a6c85cf");
    assert_eq!(d.remote_tag(), b"1928301774");
    assert_eq!(d.remote_target(), b"sip:alice@pc33.atlanta.example");
    assert_eq!(
        d.route_set().collect::<Vec<_>>(),
        [&b"<sip:p2.example;lr>"[..], b"<sip:p1.example;lr>"]
    );
    assert_eq!(d.remote_seq, Some(314159));
    assert_eq!(d.local_uri(), b"Bob <sip:bob@biloxi.example>");
    assert_eq!(d.remote_uri(), b"Alice <sip:alice@atlanta.example>");
}

#[test]
fn rfc3261_12_1_2_uac_dialog_reverses_record_route() {
    let mut d = Dialog::uac(&scan(INVITE).unwrap(), &scan(OK).unwrap()).unwrap();
    assert_eq!(d.state, DialogState::Confirmed);
    assert_eq!(d.local_tag(), b"1928301774");
    assert_eq!(d.remote_tag(), b"a6c85cf");
    assert_eq!(d.remote_target(), b"sip:bob@192.0.2.4");
    assert_eq!(
        d.route_set().collect::<Vec<_>>(),
        [&b"<sip:p1.example;lr>"[..], b"<sip:p2.example;lr>"]
    );
    // §12.2.1.1: a BYE goes to the remote target through the route set.
    let bye = d.request(
        "BYE",
        None,
        b"SIP/2.0/UDP pc33.atlanta.example;branch=z9hG4bKb",
        None,
        &[],
        None,
    );
    let m = scan(&bye).unwrap();
    assert_eq!(m.request_uri().unwrap().as_bytes(), b"sip:bob@192.0.2.4");
    assert_eq!(
        routes(&bye),
        vec!["<sip:p1.example;lr>", "<sip:p2.example;lr>"]
    );
    assert_eq!((m.cseq().seq, m.method_bytes()), (314160, &b"BYE"[..]));
    assert_eq!(m.from_tag(), Some(&b"1928301774"[..]));
    assert_eq!(m.to_tag(), Some(&b"a6c85cf"[..]));
    assert_eq!(m.call_id(), b"a84b4c76e66710");
    // Our own dialog id is what the peer's response names.
    let resp = String::from_utf8(OK.to_vec())
        .unwrap()
        .replace("314159 INVITE", "314160 BYE");
    assert_eq!(
        DialogId::of_response(&scan(resp.as_bytes()).unwrap()),
        Some(d.id())
    );
}

#[test]
fn rfc3261_12_2_1_1_strict_router_gets_the_request_uri() {
    let inv = String::from_utf8(INVITE.to_vec())
        .unwrap()
        .replace("<sip:p2.example;lr>", "<sip:p2.example>");
    let mut d = Dialog::uas(&scan(inv.as_bytes()).unwrap(), b"t", DialogState::Confirmed).unwrap();
    let bye = d.request(
        "BYE",
        None,
        b"SIP/2.0/UDP b.example;branch=z9hG4bKs",
        None,
        &[],
        None,
    );
    let m = scan(&bye).unwrap();
    assert_eq!(m.request_uri().unwrap().as_bytes(), b"sip:p2.example");
    assert_eq!(
        routes(&bye),
        vec!["<sip:p1.example;lr>", "<sip:alice@pc33.atlanta.example>"]
    );
    assert_eq!(
        m.cseq().seq,
        1,
        "the UAS side's own CSeq space starts fresh"
    );
}

#[test]
fn rfc3261_12_2_2_out_of_order_cseq_is_500_and_target_refresh() {
    let mut d = Dialog::uas(&scan(INVITE).unwrap(), b"a6c85cf", DialogState::Confirmed).unwrap();
    let reinvite = String::from_utf8(INVITE.to_vec())
        .unwrap()
        .replace(
            "To: Bob <sip:bob@biloxi.example>",
            "To: Bob <sip:bob@biloxi.example>;tag=a6c85cf",
        )
        .replace("314159 INVITE", "314160 INVITE")
        .replace(
            "<sip:alice@pc33.atlanta.example>",
            "<sip:alice@192.0.2.99:5070>",
        );
    let m = scan(reinvite.as_bytes()).unwrap();
    assert_eq!(DialogId::of_incoming_request(&m), Some(d.id()));
    d.handle_request(&m).unwrap();
    assert_eq!(
        d.remote_target(),
        b"sip:alice@192.0.2.99:5070",
        "re-INVITE refreshes the target"
    );
    assert_eq!(d.remote_seq, Some(314160));
    let old = reinvite.replace("314160 INVITE", "314158 INVITE");
    let e = d
        .handle_request(&scan(old.as_bytes()).unwrap())
        .unwrap_err();
    assert_eq!(
        e,
        DialogError::OutOfOrder {
            got: 314158,
            last: 314160
        }
    );
    assert_eq!(e.status(), 500);
    // An ACK carries the INVITE's number: not out of order.
    let ack = reinvite
        .replace("INVITE sip:", "ACK sip:")
        .replace("314160 INVITE", "314160 ACK");
    d.handle_request(&scan(ack.as_bytes()).unwrap()).unwrap();
}

#[test]
fn dialogs_need_tags_and_a_contact() {
    let no_tag = String::from_utf8(OK.to_vec())
        .unwrap()
        .replace(";tag=a6c85cf", "");
    assert_eq!(
        Dialog::uac(&scan(INVITE).unwrap(), &scan(no_tag.as_bytes()).unwrap()),
        Err(DialogError::MissingTag("To"))
    );
    let no_contact = String::from_utf8(INVITE.to_vec())
        .unwrap()
        .replace("Contact: <sip:alice@pc33.atlanta.example>\r\n", "");
    assert_eq!(
        Dialog::uas(
            &scan(no_contact.as_bytes()).unwrap(),
            b"t",
            DialogState::Early
        ),
        Err(DialogError::NoContact)
    );
    let n = b"<sip:x@y>";
    assert!(NameAddr::parse(n, handover_sip::Span::new(0, n.len())).is_ok());
}
