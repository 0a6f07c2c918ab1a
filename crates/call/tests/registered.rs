//! Phones that register (RFC 3261 §10) and are called by address-of-record
//! on the flow their REGISTER came from; digest challenges (RFC 3261 §22,
//! RFC 7616); parallel forking to several bindings (§16.7).

mod common;

use common::*;
use handover_call::registrar::digest::{Algorithm, Digest, Guard, Users};
use handover_sip::scan;

/// A phone's REGISTER as the edge forwards it: the edge's Via on top, the
/// phone's below with where the edge saw it (behind a NAT: 203.0.113.x).
fn register(user: &str, contact_host: &str, flow: &str, cseq: u32, auth: Option<&str>) -> String {
    let (ip, port) = flow.split_once(':').unwrap();
    let auth = auth
        .map(|a| format!("Authorization: {a}\r\n"))
        .unwrap_or_default();
    format!(
        "REGISTER sip:127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hxr{user}{cseq}{port};k=1\r\n\
Via: SIP/2.0/UDP {contact_host}:5060;branch=z9hG4bKr{user}{cseq}{port};received={ip};rport={port}\r\n\
Max-Forwards: 69\r\nFrom: <sip:{user}@127.0.0.1>;tag=r{user}\r\nTo: <sip:{user}@127.0.0.1>\r\n\
Call-ID: reg-{user}-{port}\r\nCSeq: {cseq} REGISTER\r\nContact: <sip:{user}@{contact_host}:5060>\r\n\
Expires: 600\r\n{auth}Content-Length: 0\r\n\r\n"
    )
}

/// A's INVITE to `user` (by AOR) through the edge.
fn invite_to(user: &str) -> String {
    a_invite()
        .replace(
            "INVITE sip:b@127.0.0.1:5060",
            &format!("INVITE sip:{user}@127.0.0.1:5060"),
        )
        .replace(
            "To: <sip:b@127.0.0.1:5060>",
            &format!("To: <sip:{user}@127.0.0.1:5060>"),
        )
}

fn lines(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn rfc3261_10_a_registered_phone_is_called_at_its_contact_through_its_flow() {
    let mut b = b2bua_routed(&[], 7);
    b.handle_datagram(
        at(0),
        register("carol", "192.168.1.20", "203.0.113.7:40000", 1, None).as_bytes(),
    );
    let sent = out(&mut b);
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 200 OK");
    assert!(lines(&sent[0].1).contains("Contact: <sip:carol@192.168.1.20:5060>;expires=600\r\n"));
    // A call for carol (her AOR, any port) goes to her Contact as the
    // Request-URI, routed by the edge to the flow her REGISTER came from.
    b.handle_datagram(at(10), invite_to("carol").as_bytes());
    let sent = out(&mut b);
    let inv = sent
        .iter()
        .find(|(_, m)| m.starts_with(b"INVITE "))
        .unwrap();
    assert_eq!(inv.0, None, "to the edge");
    let text = lines(&inv.1);
    assert!(
        text.starts_with("INVITE sip:carol@192.168.1.20:5060 SIP/2.0\r\n"),
        "{text}"
    );
    assert!(
        text.contains("Route: <sip:127.0.0.1:5060;lr;flow=203.0.113.7:40000>\r\n"),
        "{text}"
    );
    assert!(
        text.contains("To: <sip:carol@127.0.0.1:5060>\r\n"),
        "{text}"
    );
    // Her 200 (no Record-Route): the dialog keeps the flow route, so the
    // ACK and later requests reach her the same way.
    let m = scan(&inv.1).unwrap();
    b.handle_datagram(at(20), b_resp(&m, "200 OK", "ct", Some(SDP_B)).as_bytes());
    let sent = out(&mut b);
    let ack = sent.iter().find(|(_, m)| m.starts_with(b"ACK ")).unwrap();
    assert!(lines(&ack.1).contains("Route: <sip:127.0.0.1:5060;lr;flow=203.0.113.7:40000>"));
    // Her 200 again (our ACK was lost; the call is answered, its INVITEs
    // kept as heads): ACKed again the same way (RFC 3261 §13.2.2.4), and
    // A hears no second answer.
    let first = scan(&ack.1).unwrap();
    let (first_uri, first_to) = (
        first.request_uri().unwrap().as_bytes().to_vec(),
        first.to().unwrap().span(),
    );
    let first_to = first.buf()[first_to.start..first_to.end].to_vec();
    b.handle_datagram(at(520), b_resp(&m, "200 OK", "ct", Some(SDP_B)).as_bytes());
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "an ACK only: {sent:?}");
    let again = scan(&sent[0].1).unwrap();
    assert_eq!(again.method(), Some(handover_sip::Method::Ack));
    assert_eq!(again.request_uri().unwrap().as_bytes(), first_uri);
    assert!(
        lines(&sent[0].1).contains("Route: <sip:127.0.0.1:5060;lr;flow=203.0.113.7:40000>"),
        "on her flow again"
    );
    assert_eq!((again.call_id(), again.cseq().seq), (m.call_id(), 1));
    assert_eq!(again.from_tag(), m.from_tag());
    let to = again.to().unwrap().span();
    assert_eq!(&again.buf()[to.start..to.end], &first_to[..]);
    assert_eq!(again.to_tag(), Some(&b"ct"[..]));
    // Someone not registered: 404 (no route either).
    b.handle_datagram(
        at(30),
        invite_to("dave").replace("a-call", "d-call").as_bytes(),
    );
    let sent = out(&mut b);
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 404"))
    );
}

#[test]
fn rfc3261_16_7_every_binding_rings_the_first_2xx_wins_and_the_others_are_cancelled() {
    let mut b = b2bua_routed(&[], 7);
    b.handle_datagram(
        at(0),
        register("carol", "10.0.0.1", "203.0.113.7:40001", 1, None).as_bytes(),
    );
    b.handle_datagram(
        at(0),
        register("carol", "10.0.0.2", "203.0.113.8:40002", 1, None).as_bytes(),
    );
    out(&mut b);
    b.handle_datagram(at(10), invite_to("carol").as_bytes());
    let invites: Vec<Vec<u8>> = out(&mut b)
        .into_iter()
        .filter(|(_, m)| m.starts_with(b"INVITE "))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(invites.len(), 2, "both bindings ring at once");
    let (i1, i2) = (scan(&invites[0]).unwrap(), scan(&invites[1]).unwrap());
    assert_ne!(i1.call_id(), i2.call_id(), "each its own B leg");
    // Both ring; A hears ringing.
    b.handle_datagram(at(20), b_resp(&i1, "180 Ringing", "c1", None).as_bytes());
    b.handle_datagram(at(21), b_resp(&i2, "180 Ringing", "c2", None).as_bytes());
    let sent = out(&mut b);
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 180 Ringing")
    );
    // The second answers: A gets its 200, the first is cancelled.
    b.handle_datagram(at(30), b_resp(&i2, "200 OK", "c2", Some(SDP_B)).as_bytes());
    let sent = out(&mut b);
    assert!(sent.iter().any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"));
    let cancel = sent
        .iter()
        .find(|(_, m)| m.starts_with(b"CANCEL "))
        .expect("the other leg is cancelled");
    assert_eq!(scan(&cancel.1).unwrap().call_id(), i1.call_id());
    assert!(
        sent.iter()
            .any(|(_, m)| m.starts_with(b"ACK ") && scan(m).unwrap().call_id() == i2.call_id())
    );
    // The cancelled one answers anyway (a race): ACKed and hung up.
    b.handle_datagram(at(40), b_resp(&i1, "200 OK", "c1", Some(SDP_B)).as_bytes());
    let sent = out(&mut b);
    let late: Vec<&str> = sent
        .iter()
        .filter(|(_, m)| scan(m).unwrap().call_id() == i1.call_id())
        .map(|(_, m)| std::str::from_utf8(&m[..3]).unwrap())
        .collect();
    assert_eq!(late, ["ACK", "BYE"], "{sent:?}");
}

#[test]
fn rfc3261_16_7_a_busy_leg_waits_for_the_others_and_a_6xx_ends_the_search() {
    let mut b = b2bua_routed(&[], 7);
    for (h, f) in [
        ("10.0.0.1", "203.0.113.7:1"),
        ("10.0.0.2", "203.0.113.7:2"),
        ("10.0.0.3", "203.0.113.7:3"),
    ] {
        b.handle_datagram(at(0), register("carol", h, f, 1, None).as_bytes());
    }
    out(&mut b);
    b.handle_datagram(at(10), invite_to("carol").as_bytes());
    let invites: Vec<Vec<u8>> = out(&mut b)
        .into_iter()
        .filter(|(_, m)| m.starts_with(b"INVITE "))
        .map(|(_, m)| m)
        .collect();
    assert_eq!(invites.len(), 3);
    let legs: Vec<_> = invites.iter().map(|i| scan(i).unwrap()).collect();
    // One is busy: A hears nothing final yet.
    b.handle_datagram(
        at(20),
        b_resp(&legs[0], "486 Busy Here", "c0", None).as_bytes(),
    );
    let sent = out(&mut b);
    assert!(
        !sent
            .iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 4")),
        "{sent:?}"
    );
    // Another declines everywhere: the last is cancelled, A gets the 603.
    b.handle_datagram(
        at(30),
        b_resp(&legs[1], "603 Decline", "c1", None).as_bytes(),
    );
    let sent = out(&mut b);
    let cancel = sent
        .iter()
        .find(|(_, m)| m.starts_with(b"CANCEL "))
        .expect("the last leg is cancelled");
    assert_eq!(scan(&cancel.1).unwrap().call_id(), legs[2].call_id());
    assert!(
        sent.iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 603 Decline")
    );
    // The cancelled leg's 487 is ACKed and changes nothing for A.
    b.handle_datagram(
        at(40),
        b_resp(&legs[2], "487 Request Terminated", "c2", None).as_bytes(),
    );
    let sent = out(&mut b);
    assert!(sent.iter().all(|(_, m)| m.starts_with(b"ACK ")), "{sent:?}");
}

fn with_auth(b: &mut handover_call::B2bua<Seq>) {
    let users = Users::parse(&Users::line("carol", "handover", "pw")).unwrap();
    b.set_auth(Some((
        Digest::new(
            "handover".into(),
            vec![Algorithm::Md5, Algorithm::Sha256],
            [9; 16],
            300,
            users,
        ),
        Guard::new(3, 60, 60),
    )));
}

/// The answer to the first digest challenge in `resp` (RFC 7616 §3.4.1).
fn credentials(resp: &[u8], method: &str, password: &str) -> String {
    let text = lines(resp);
    let nonce = text
        .split("nonce=\"")
        .nth(1)
        .unwrap()
        .split('"')
        .next()
        .unwrap();
    let alg = Algorithm::Md5;
    let ha1 = alg.hash(&[b"carol", b"handover", password.as_bytes()]);
    let ha2 = alg.hash(&[method.as_bytes(), b"sip:127.0.0.1:5060"]);
    let r = alg.hash(&[
        ha1.as_bytes(),
        nonce.as_bytes(),
        b"00000001",
        b"abc",
        b"auth",
        ha2.as_bytes(),
    ]);
    format!(
        "Digest username=\"carol\", realm=\"handover\", nonce=\"{nonce}\", uri=\"sip:127.0.0.1:5060\", \
response=\"{r}\", algorithm=MD5, qop=auth, nc=00000001, cnonce=\"abc\""
    )
}

#[test]
fn rfc3261_22_register_is_challenged_401_and_a_call_407_and_credentials_never_reach_the_callee() {
    let mut b = b2bua_routed(&["b=127.0.0.1:5071"], 7);
    with_auth(&mut b);
    b.handle_datagram(
        at(0),
        register("carol", "10.0.0.1", "203.0.113.7:40001", 1, None).as_bytes(),
    );
    let sent = out(&mut b);
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 401 Unauthorized");
    let text = lines(&sent[0].1);
    let md5 = text.find("algorithm=MD5").unwrap();
    let sha = text.find("algorithm=SHA-256").unwrap();
    assert!(md5 < sha, "offered in the configured order: {text}");
    let auth = credentials(&sent[0].1, "REGISTER", "pw");
    b.handle_datagram(
        at(10),
        register("carol", "10.0.0.1", "203.0.113.7:40001", 2, Some(&auth)).as_bytes(),
    );
    assert_eq!(first_line(&out(&mut b)[0].1), "SIP/2.0 200 OK");
    // A call from an untrusted source: 407, then with credentials it goes
    // to B without them.
    b.handle_datagram(at(20), a_invite().as_bytes());
    let sent = out(&mut b);
    assert_eq!(
        first_line(&sent[0].1),
        "SIP/2.0 407 Proxy Authentication Required"
    );
    assert!(lines(&sent[0].1).contains("Proxy-Authenticate: Digest realm=\"handover\""));
    let pauth = credentials(&sent[0].1, "INVITE", "pw");
    let again = a_invite()
        .replace("CSeq: 1 INVITE", "CSeq: 2 INVITE")
        .replace("branch=z9hG4bKa1", "branch=z9hG4bKa2")
        .replace(
            "Max-Forwards: 69\r\n",
            &format!("Max-Forwards: 69\r\nProxy-Authorization: {pauth}\r\n"),
        );
    b.handle_datagram(at(30), again.as_bytes());
    let sent = out(&mut b);
    let inv = sent
        .iter()
        .find(|(_, m)| m.starts_with(b"INVITE "))
        .expect("the call goes on");
    assert!(
        !lines(&inv.1).to_ascii_lowercase().contains("authorization"),
        "{}",
        lines(&inv.1)
    );
    assert_eq!(b.auth_stats().challenges, 2);
}

#[test]
fn a_source_that_keeps_failing_is_forbidden_then_ignored() {
    let mut b = b2bua_routed(&[], 7);
    with_auth(&mut b);
    let mut statuses = Vec::new();
    for i in 1..=5u32 {
        b.handle_datagram(
            at(u64::from(i)),
            register("carol", "10.0.0.1", "203.0.113.9:5000", i, None).as_bytes(),
        );
        let challenge = out(&mut b);
        let Some((_, challenge)) = challenge.first() else {
            // Banned: not even challenged.
            statuses.push(String::new());
            continue;
        };
        let auth = credentials(challenge, "REGISTER", "wrong");
        b.handle_datagram(
            at(u64::from(i)),
            register(
                "carol",
                "10.0.0.1",
                "203.0.113.9:5000",
                100 + i,
                Some(&auth),
            )
            .as_bytes(),
        );
        statuses.push(
            out(&mut b)
                .first()
                .map(|(_, m)| first_line(m))
                .unwrap_or_default(),
        );
    }
    assert_eq!(
        statuses,
        [
            "SIP/2.0 401 Unauthorized",
            "SIP/2.0 401 Unauthorized",
            "SIP/2.0 403 Forbidden",
            "",
            ""
        ]
    );
    let s = b.auth_stats();
    assert_eq!((s.wrong_password, s.banned), (3, 1));
    assert!(s.ignored >= 2);
}

#[test]
fn rfc7616_a_nonce_past_its_lifetime_with_the_right_password_is_answered_stale() {
    let mut b = b2bua_routed(&[], 7);
    with_auth(&mut b);
    b.handle_datagram(
        at(0),
        register("carol", "10.0.0.1", "203.0.113.7:40001", 1, None).as_bytes(),
    );
    let challenge = out(&mut b);
    let auth = credentials(&challenge[0].1, "REGISTER", "pw");
    // 301 s later (nonces live 300 s): challenged again with stale=true,
    // which phones answer without asking their user.
    b.handle_datagram(
        at(301_000),
        register("carol", "10.0.0.1", "203.0.113.7:40001", 2, Some(&auth)).as_bytes(),
    );
    let sent = out(&mut b);
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 401 Unauthorized");
    assert!(
        lines(&sent[0].1).contains("stale=true"),
        "{}",
        lines(&sent[0].1)
    );
    let fresh = credentials(&sent[0].1, "REGISTER", "pw");
    b.handle_datagram(
        at(302_000),
        register("carol", "10.0.0.1", "203.0.113.7:40001", 3, Some(&fresh)).as_bytes(),
    );
    assert_eq!(first_line(&out(&mut b)[0].1), "SIP/2.0 200 OK");
    // A stale nonce is not a failure.
    assert_eq!(b.auth_stats().wrong_password, 0);
}

#[test]
fn bindings_are_pinged_on_their_flow_and_one_that_never_answers_is_dropped() {
    use handover_call::registrar::{Config as RegConfig, Locations, Registrar};
    let mut b = b2bua_routed(&[], 7);
    b.set_registrar(Registrar::new(
        RegConfig {
            ping_interval_s: 30,
            ..RegConfig::default()
        },
        false,
        Locations::shared(),
    ));
    b.handle_datagram(
        at(0),
        register("carol", "10.0.0.1", "203.0.113.7:40001", 1, None).as_bytes(),
    );
    out(&mut b);
    // 30 s on: an OPTIONS to her Contact, on her flow, keyed for the AOR.
    b.sweep_registrations(at(30_000), |_| true);
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    let ping = lines(&sent[0].1);
    assert!(
        ping.starts_with("OPTIONS sip:carol@10.0.0.1:5060 SIP/2.0\r\n"),
        "{ping}"
    );
    assert!(
        ping.contains("Route: <sip:127.0.0.1:5060;lr;flow=203.0.113.7:40001>\r\n"),
        "{ping}"
    );
    // She answers: kept.
    let m = scan(&sent[0].1).unwrap();
    b.handle_datagram(at(30_050), b_resp(&m, "200 OK", "c", None).as_bytes());
    b.handle_timeout(at(40_000));
    out(&mut b);
    assert_eq!(b.registrar().bindings(), 1);
    // The next ping goes unanswered: retransmitted, then after timer F
    // (64·T1) the binding is dropped and a call finds nobody.
    b.sweep_registrations(at(60_000), |_| true);
    let mut t = 60_000;
    while t < 60_000 + 33_000 {
        t += 500;
        b.handle_timeout(at(t));
    }
    let retrans = out(&mut b)
        .iter()
        .filter(|(_, m)| m.starts_with(b"OPTIONS "))
        .count();
    assert!(retrans >= 5, "{retrans} sends of the ping");
    assert_eq!(b.registrar().bindings(), 0);
    assert_eq!(b.registrar().stats().ping_failures, 1);
    b.handle_datagram(at(t), invite_to("carol").as_bytes());
    assert!(
        out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m).starts_with("SIP/2.0 404"))
    );
}

#[test]
fn with_the_logs_disk_nearly_full_new_calls_and_registrations_get_503_and_calls_in_progress_go_on()
{
    let mut b = b2bua_routed(&["b=127.0.0.1:5071"], 7);
    // A call in progress before the disk fills.
    b.handle_datagram(at(0), a_invite().as_bytes());
    let inv = out(&mut b)
        .into_iter()
        .find(|(_, m)| m.starts_with(b"INVITE "))
        .expect("the call goes to B");
    b.set_storage_full(true);
    // A new call and a REGISTER that would write a binding: 503 with
    // Retry-After, nothing sent on.
    b.handle_datagram(at(10), a_invite().replace("a-call", "new-call").as_bytes());
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(lines(&sent[0].1).starts_with("SIP/2.0 503 Service Unavailable\r\n"));
    assert!(lines(&sent[0].1).contains("\r\nRetry-After: 5\r\n"));
    b.handle_datagram(
        at(20),
        register("carol", "192.168.1.20", "203.0.113.7:40000", 1, None).as_bytes(),
    );
    let sent = out(&mut b);
    assert_eq!(sent.len(), 1, "{sent:?}");
    assert!(
        lines(&sent[0].1).starts_with("SIP/2.0 503 "),
        "{}",
        lines(&sent[0].1)
    );
    // A query (no Contact) writes nothing: answered as usual.
    let query = register("carol", "192.168.1.20", "203.0.113.7:40000", 2, None)
        .replace("Contact: <sip:carol@192.168.1.20:5060>\r\n", "");
    b.handle_datagram(at(30), query.as_bytes());
    assert_eq!(first_line(&out(&mut b)[0].1), "SIP/2.0 200 OK");
    assert_eq!(b.stats().refused_storage, 2);
    // The call in progress is answered and reaches A.
    let m = scan(&inv.1).unwrap();
    b.handle_datagram(at(40), b_resp(&m, "200 OK", "bt", Some(SDP_B)).as_bytes());
    assert!(
        out(&mut b)
            .iter()
            .any(|(_, m)| first_line(m) == "SIP/2.0 200 OK"),
        "the call in progress is answered"
    );
    assert_eq!(b.calls_active(), 1);
    // Room again: calls and registrations as usual.
    b.set_storage_full(false);
    b.handle_datagram(
        at(50),
        register("carol", "192.168.1.20", "203.0.113.7:40000", 3, None).as_bytes(),
    );
    assert_eq!(first_line(&out(&mut b)[0].1), "SIP/2.0 200 OK");
    b.handle_datagram(
        at(60),
        a_invite().replace("a-call", "later-call").as_bytes(),
    );
    assert!(
        out(&mut b).iter().any(|(_, m)| m.starts_with(b"INVITE ")),
        "a new call goes to B again"
    );
}

/// RFC 3325 §9.1 with digest: a caller who authenticated as carol reaches
/// a trusted PBX with `P-Asserted-Identity: <sip:carol@handover>`, ours,
/// in place of the one it made up; an untrusted target is sent none; the
/// operator's extra identity header (Diversion) from a stranger is
/// removed like the RFC 3325 ones.
#[test]
fn rfc3325_an_authenticated_caller_is_asserted_to_trusted_targets_only() {
    let mut b = b2bua_identity(
        &["pbx=127.0.0.2:5071", "cell=127.0.0.3:5072"],
        &["127.0.0.2/32"],
        &["Diversion"],
        true,
    );
    with_auth(&mut b);
    let forged =
        "P-Asserted-Identity: <sip:boss@example.com>\r\nDiversion: <sip:boss@example.com>\r\n";
    let invite = |user: &str, cid: &str, seq: u32, auth: Option<&str>| {
        let mut extra = forged.to_string();
        if let Some(a) = auth {
            extra.push_str(&format!("Proxy-Authorization: {a}\r\n"));
        }
        a_invite()
            .replace("INVITE sip:b@", &format!("INVITE sip:{user}@"))
            .replace("Call-ID: a-call", &format!("Call-ID: {cid}"))
            .replace("CSeq: 1 INVITE", &format!("CSeq: {seq} INVITE"))
            .replace("branch=z9hG4bKa1", &format!("branch=z9hG4bK{cid}{seq}"))
            .replace(
                "Max-Forwards: 69\r\n",
                &format!("Max-Forwards: 69\r\n{extra}"),
            )
    };
    for (user, cid, want) in [
        ("pbx", "to-pbx", Some("<sip:carol@handover>")),
        ("cell", "to-cell", None),
    ] {
        b.handle_datagram(at(0), invite(user, cid, 1, None).as_bytes());
        let sent = out(&mut b);
        assert_eq!(
            first_line(&sent[0].1),
            "SIP/2.0 407 Proxy Authentication Required"
        );
        let auth = credentials(&sent[0].1, "INVITE", "pw");
        b.handle_datagram(at(10), invite(user, cid, 2, Some(&auth)).as_bytes());
        let sent = out(&mut b);
        let leg = &sent
            .iter()
            .find(|(_, m)| m.starts_with(b"INVITE "))
            .expect("the call goes on")
            .1;
        let m = scan(leg).unwrap();
        let pais: Vec<_> = m
            .headers()
            .filter(|h| {
                h.name_span
                    .of(leg)
                    .eq_ignore_ascii_case(b"P-Asserted-Identity")
            })
            .map(|h| String::from_utf8_lossy(h.value.of(leg)).into_owned())
            .collect();
        assert_eq!(
            pais,
            want.into_iter().collect::<Vec<_>>(),
            "{user}: {}",
            lines(leg)
        );
        assert!(!lines(leg).contains("Diversion"), "{user}: {}", lines(leg));
        assert!(!lines(leg).contains("boss"), "{user}: {}", lines(leg));
    }
}

#[test]
fn with_several_edges_a_phone_is_answered_called_and_hung_up_through_the_edge_holding_its_flow() {
    // carol's edge names itself (`fe=`, its address inside the cluster);
    // the caller comes in through another edge, which does not.
    let edge: std::net::SocketAddr = "10.8.0.5:5060".parse().unwrap();
    let flow = "tcp:203.0.113.7:40000";
    let h = handover_sip::ids::Hashing::default();
    let mut b = b2bua_routed(&[], 7);
    let reg = register("carol", "192.168.1.20", "203.0.113.7:40000", 1, None)
        .replace(";k=1\r\n", ";k=1;fe=10.8.0.5:5060\r\n")
        .replace("SIP/2.0/UDP 192.168.1.20", "SIP/2.0/TCP 192.168.1.20");
    b.handle_datagram(at(0), reg.as_bytes());
    let sent = out(&mut b);
    assert_eq!(first_line(&sent[0].1), "SIP/2.0 200 OK");
    assert_eq!(
        sent[0].0,
        Some(edge),
        "the REGISTER is answered to its edge"
    );

    b.handle_datagram(at(10), invite_to("carol").as_bytes());
    let sent = out(&mut b);
    let (to, inv) = sent
        .iter()
        .find(|(_, m)| m.starts_with(b"INVITE "))
        .unwrap();
    assert_eq!(
        *to,
        Some(edge),
        "the call goes to carol's edge, not any edge"
    );
    let tag = String::from_utf8(h.edge_tag(flow.as_bytes(), b"10.8.0.5:5060").to_vec()).unwrap();
    let route = format!("Route: <sip:127.0.0.1:5060;lr;flow={flow};fe=10.8.0.5:5060~{tag}>\r\n");
    assert!(lines(inv).contains(&route), "{}", lines(inv));

    // Her 200 echoes the Record-Route her edge added; the ACK and the
    // caller's BYE go to that edge.
    let m = scan(inv).unwrap();
    let rr = format!(
        "Record-Route: <sip:127.0.0.1:5060;transport=tcp;lr;k=1;flow={flow};fe=10.8.0.5:5060~{tag}>\r\n"
    );
    let ok =
        b_resp(&m, "200 OK", "ct", Some(SDP_B)).replacen("\r\nFrom:", &format!("\r\n{rr}From:"), 1);
    b.handle_datagram(at(20), ok.as_bytes());
    let sent = out(&mut b);
    let ack = sent.iter().find(|(_, m)| m.starts_with(b"ACK ")).unwrap();
    assert_eq!(ack.0, Some(edge));
    let a_ok = sent
        .iter()
        .find(|(_, m)| m.starts_with(b"SIP/2.0 200"))
        .unwrap();
    assert_eq!(
        a_ok.0,
        Some("127.0.0.1:5060".parse().unwrap()),
        "A's answer to A's edge"
    );
    let a_tag = String::from_utf8(scan(&a_ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
    b.handle_datagram(at(30), from_a("ACK", 1, "ack1", &a_tag, None).as_bytes());
    b.handle_datagram(at(40), from_a("BYE", 2, "bye1", &a_tag, None).as_bytes());
    let sent = out(&mut b);
    let bye = sent.iter().find(|(_, m)| m.starts_with(b"BYE ")).unwrap();
    assert_eq!(bye.0, Some(edge), "{}", lines(&bye.1));

    // A Record-Route whose edge carries a tag not ours (a phone that
    // rewrote it) aims nothing: its requests go to the edge as before.
    b.handle_datagram(
        at(100),
        invite_to("carol").replace("a-call", "c2").as_bytes(),
    );
    let sent = out(&mut b);
    let (_, inv) = sent
        .iter()
        .find(|(_, m)| m.starts_with(b"INVITE "))
        .unwrap();
    let m = scan(inv).unwrap();
    let forged = rr.replace("10.8.0.5:5060~", "10.66.0.1:22~");
    let ok = b_resp(&m, "200 OK", "ct2", Some(SDP_B)).replacen(
        "\r\nFrom:",
        &format!("\r\n{forged}From:"),
        1,
    );
    b.handle_datagram(at(120), ok.as_bytes());
    let sent = out(&mut b);
    let ack = sent.iter().find(|(_, m)| m.starts_with(b"ACK ")).unwrap();
    assert_eq!(ack.0, None, "{}", lines(&ack.1));
}
