//! The edge's decisions, without sockets.

use super::*;
use handover_sip::scan;

const EDGE: &str = "192.0.2.1:5060";
const UA: &str = "198.51.100.7:33333";

fn setup() -> (Proxy, Table, BadInputLimiter) {
    let h = Hashing::default();
    let backends: Vec<SocketAddr> = vec![
        "10.0.0.1:5070".parse().unwrap(),
        "10.0.0.2:5070".parse().unwrap(),
    ];
    let t = Table::new(backends, vec![true, true], 1, &h);
    (
        Proxy::new(EDGE.parse().unwrap(), h, Limits::default(), true),
        t,
        BadInputLimiter::new(3, 4),
    )
}

fn invite(mf: u32, call_id: &str) -> Vec<u8> {
    format!(
        "INVITE sip:bob@biloxi.example SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKa1;rport\r\n\
Max-Forwards: {mf}\r\nTo: <sip:bob@biloxi.example>\r\nFrom: <sip:alice@a.example>;tag=f1\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContact: <sip:alice@10.9.9.9:5060>\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

/// A BYE inside the dialog of `invite(70, call_id)`.
fn in_dialog_bye(call_id: &str) -> String {
    String::from_utf8(invite(70, call_id))
        .unwrap()
        .replace("INVITE sip:", "BYE sip:")
        .replace("1 INVITE", "2 BYE")
        .replace(
            "To: <sip:bob@biloxi.example>",
            "To: <sip:bob@biloxi.example>;tag=b1",
        )
}

fn run(p: &Proxy, t: &Table, l: &mut BadInputLimiter, from: &str, b: &[u8]) -> (Outcome, Vec<u8>) {
    let mut out = vec![0u8; 65_536];
    let o = p.handle(t, l, 0, from.parse().unwrap(), b, &mut out);
    let n = match o {
        Outcome::Forward { len, .. } | Outcome::Reply { len, .. } => len,
        Outcome::Pong { .. } => 2,
        Outcome::Drop(_) => 0,
    };
    out.truncate(n);
    (o, out)
}

#[test]
fn rfc3261_16_11_request_goes_to_the_shard_owner_with_via_and_record_route() {
    let (p, t, mut l) = setup();
    let (o, out) = run(&p, &t, &mut l, UA, &invite(70, "call-1@x"));
    let key = Hashing::default().affinity_key(b"call-1@x");
    let (i, owner) = t.route(key).unwrap();
    assert_eq!(
        o,
        Outcome::Forward {
            to: owner.into(),
            len: out.len(),
            peer: Peer::Backend(i),
            request: true
        }
    );
    let m = scan(&out).unwrap();
    let vias: Vec<_> = m.vias().collect();
    assert_eq!(vias[0].host(), b"192.0.2.1");
    assert_eq!(
        vias[0].param(b"k").unwrap().value.unwrap().of(&out),
        &hex_u64(key)[..]
    );
    assert_eq!(
        vias[1].received(),
        Some(&b"198.51.100.7"[..]),
        "RFC 3581 received"
    );
    assert_eq!(vias[1].rport(), handover_sip::Rport::Value(33333));
    assert_eq!(m.max_forwards(), Some(69));
    let rr = m.record_routes().next().unwrap();
    assert_eq!(rr.uri().host(), b"192.0.2.1");
    // The key with its tag, good for this Call-ID only.
    assert_eq!(
        rr.uri().param(b"k"),
        Some(&Hashing::default().key_token(key, Bound::CallId, b"call-1@x")[..])
    );
    assert!(rr.uri().param(b"lr").is_some());
    // A retransmission goes the same way with the same branch (§16.11).
    let (o2, out2) = run(&p, &t, &mut l, UA, &invite(70, "call-1@x"));
    assert_eq!(o, o2);
    assert_eq!(out, out2);
}

#[test]
fn in_dialog_request_with_our_route_uses_its_key() {
    let (p, t, mut l) = setup();
    // Pick a key owned by backend 1 and put it in our Route, with its tag
    // for this Call-ID (as our Record-Route gave it).
    let k = t.key_for_backend(1).unwrap();
    let token = |call_id: &str| {
        String::from_utf8(
            Hashing::default()
                .key_token(k, Bound::CallId, call_id.as_bytes())
                .to_vec(),
        )
        .unwrap()
    };
    let bye = |k: &str, call_id: &str| {
        format!(
            "BYE sip:bob@10.0.0.2:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKb1\r\n\
Route: <sip:192.0.2.1:5060;lr;k={k}>\r\nMax-Forwards: 70\r\nTo: <sip:bob@biloxi.example>;tag=t\r\n\
From: <sip:alice@a.example>;tag=f1\r\nCall-ID: {call_id}\r\nCSeq: 2 BYE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let (o, out) = run(
        &p,
        &t,
        &mut l,
        UA,
        bye(&token("other-hash@x"), "other-hash@x").as_bytes(),
    );
    assert!(
        matches!(
            o,
            Outcome::Forward {
                peer: Peer::Backend(1),
                ..
            }
        ),
        "{o:?}"
    );
    let m = scan(&out).unwrap();
    assert!(m.route_field().is_none(), "our Route is removed (§16.4)");
    assert!(
        m.record_route_field().is_none(),
        "no Record-Route on in-dialog requests"
    );
    assert_eq!(l.keys_refused, 0);
    // Forged keys do not aim: a bare key, a token copied from another
    // Call-ID, a tag changed. Each goes by its Call-ID, and is counted.
    let (_, by_call_id) = t.route(Hashing::default().affinity_key(b"mine@x")).unwrap();
    let bare = String::from_utf8(hex_u64(k).to_vec()).unwrap();
    let mut changed = token("mine@x");
    changed.replace_range(31.., if changed.ends_with('0') { "1" } else { "0" });
    for (n, forged) in [bare, token("other-hash@x"), changed].iter().enumerate() {
        let (o, _) = run(
            &p,
            &t,
            &mut l,
            "198.51.100.8:5060",
            bye(forged, "mine@x").as_bytes(),
        );
        assert!(
            matches!(o, Outcome::Forward { to, .. } if to == by_call_id.into()),
            "{forged}: {o:?}"
        );
        assert_eq!(l.keys_refused, n as u64 + 1);
    }
    // An INVITE replacing the dialog our Contact was in (an attended
    // transfer) goes by that dialog's token, whatever its own Call-ID.
    let replacing = bye(&token("other-hash@x"), "new-leg@x")
        .replace("BYE sip:", "INVITE sip:")
        .replace("2 BYE", "1 INVITE")
        .replace(";tag=t", "")
        .replace(
            "Content-Length",
            "Replaces: other-hash@x;to-tag=t;from-tag=f0\r\nContent-Length",
        );
    let (o, _) = run(&p, &t, &mut l, UA, replacing.as_bytes());
    assert!(
        matches!(
            o,
            Outcome::Forward {
                peer: Peer::Backend(1),
                ..
            }
        ),
        "{o:?}"
    );
    assert_eq!(l.keys_refused, 3);
}

#[test]
fn responses_follow_via_only_when_our_branch_proves_it() {
    let (p, t, mut l) = setup();
    let (_, fwd) = run(&p, &t, &mut l, UA, &invite(70, "call-2@x"));
    let m = scan(&fwd).unwrap();
    let ours = String::from_utf8(m.vias().next().unwrap().span().of(&fwd).to_vec()).unwrap();
    let theirs = String::from_utf8(m.vias().nth(1).unwrap().span().of(&fwd).to_vec()).unwrap();
    let resp = |top: &str, next: &str| {
        format!(
            "SIP/2.0 180 Ringing\r\nVia: {top}\r\nVia: {next}\r\nTo: <sip:bob@biloxi.example>;tag=t\r\n\
From: <sip:alice@a.example>;tag=f1\r\nCall-ID: call-2@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let (o, out) = run(
        &p,
        &t,
        &mut l,
        "10.0.0.1:5070",
        resp(&ours, &theirs).as_bytes(),
    );
    assert!(
        matches!(o, Outcome::Forward { to, request: false, .. } if to == UA.parse().unwrap()),
        "{o:?}"
    );
    assert_eq!(scan(&out).unwrap().vias().count(), 1);
    // Forged: same Via of ours, a victim's address below it.
    let victim = "SIP/2.0/UDP 203.0.113.9:5060;branch=z9hG4bKv;received=203.0.113.9";
    let (o, _) = run(
        &p,
        &t,
        &mut l,
        "10.0.0.1:5070",
        resp(&ours, victim).as_bytes(),
    );
    assert_eq!(o, Outcome::Drop(Drop::Forged));
    let (o, _) = run(
        &p,
        &t,
        &mut l,
        "10.0.0.1:5070",
        resp(&theirs, victim).as_bytes(),
    );
    assert_eq!(o, Outcome::Drop(Drop::NotOurs));
}

#[test]
fn a_source_over_its_new_dialog_budget_gets_503_with_retry_after() {
    let (p, t, _) = setup();
    let mut l = BadInputLimiter::new(0, 4).with_new_dialogs(2);
    let mut out = vec![0u8; 65_536];
    let mut go = |l: &mut BadInputLimiter, sec: u32, from: &str, b: &[u8]| {
        let o = p.handle(&t, l, sec, from.parse().unwrap(), b, &mut out);
        let n = match o {
            Outcome::Forward { len, .. } | Outcome::Reply { len, .. } => len,
            Outcome::Pong { .. } => 2,
            Outcome::Drop(_) => 0,
        };
        (o, String::from_utf8_lossy(&out[..n]).into_owned())
    };
    for i in 0..2 {
        let (o, _) = go(&mut l, 7, UA, &invite(70, &format!("c{i}@x")));
        assert!(matches!(o, Outcome::Forward { .. }), "{o:?}");
    }
    // A retransmission of an admitted INVITE still goes (its call must
    // not be failed by a 503 to its own copy).
    let (o, _) = go(&mut l, 7, UA, &invite(70, "c1@x"));
    assert!(
        matches!(o, Outcome::Forward { .. }),
        "retransmission: {o:?}"
    );
    let (o, text) = go(&mut l, 7, UA, &invite(70, "c2@x"));
    assert!(matches!(o, Outcome::Reply { status: 503, .. }), "{o:?}");
    assert!(
        text.starts_with("SIP/2.0 503 Service Unavailable\r\n"),
        "{text}"
    );
    assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
    // In-dialog requests of the same source, and other sources, go on.
    let bye = in_dialog_bye("c0@x");
    let (o, _) = go(&mut l, 7, UA, bye.as_bytes());
    assert!(matches!(o, Outcome::Forward { .. }), "in-dialog: {o:?}");
    let (o, _) = go(&mut l, 7, "10.8.8.8:5060", &invite(70, "other@x"));
    assert!(
        matches!(o, Outcome::Forward { .. }),
        "another source: {o:?}"
    );
    // The next second, the budget is back.
    let (o, _) = go(&mut l, 8, UA, &invite(70, "c3@x"));
    assert!(matches!(o, Outcome::Forward { .. }), "{o:?}");
    // Without a budget, nothing is refused.
    let mut off = BadInputLimiter::new(0, 4).with_new_dialogs(0);
    for i in 0..50 {
        let (o, _) = go(&mut off, 9, UA, &invite(70, &format!("d{i}@x")));
        assert!(matches!(o, Outcome::Forward { .. }), "{o:?}");
    }
}

#[test]
fn a_source_at_twice_its_budget_is_banned_for_a_while() {
    let (p, t, _) = setup();
    let mut l = BadInputLimiter::new(0, 4).with_new_dialogs(2).with_ban(5);
    let mut out = vec![0u8; 65_536];
    let mut go = |l: &mut BadInputLimiter, sec: u32, b: &[u8]| {
        p.handle(&t, l, sec, UA.parse().unwrap(), b, &mut out)
    };
    let mut seen = Vec::new();
    for i in 0..6 {
        seen.push(match go(&mut l, 7, &invite(70, &format!("b{i}@x"))) {
            Outcome::Forward { .. } => "fwd",
            Outcome::Reply { status: 503, .. } => "503",
            Outcome::Drop(Drop::Banned) => "banned",
            o => panic!("{o:?}"),
        });
    }
    // Two in budget, two refused (the fourth makes twice the budget),
    // then silence.
    assert_eq!(seen, ["fwd", "fwd", "503", "503", "banned", "banned"]);
    assert!(matches!(
        go(&mut l, 11, &invite(70, "b9@x")),
        Outcome::Drop(Drop::Banned)
    ));
    // In-dialog requests of the banned source still pass.
    let bye = in_dialog_bye("b0@x");
    assert!(matches!(
        go(&mut l, 11, bye.as_bytes()),
        Outcome::Forward { .. }
    ));
    // The ban ends after 5 s.
    assert!(matches!(
        go(&mut l, 12, &invite(70, "b10@x")),
        Outcome::Forward { .. }
    ));
    // Without a ban, refusals go on as 503s.
    let mut nb = BadInputLimiter::new(0, 4).with_new_dialogs(1).with_ban(0);
    for i in 0..5 {
        let o = go(&mut nb, 7, &invite(70, &format!("n{i}@x")));
        assert!(
            i == 0 || matches!(o, Outcome::Reply { status: 503, .. }),
            "{o:?}"
        );
    }
}

#[test]
fn rfc3261_16_3_limits_and_loops_are_answered() {
    let (p, t, mut l) = setup();
    let (o, out) = run(&p, &t, &mut l, UA, &invite(0, "mf0@x"));
    assert!(matches!(o, Outcome::Reply { status: 483, .. }), "{o:?}");
    assert!(out.starts_with(b"SIP/2.0 483 Too Many Hops\r\n"));
    // Our own forward comes back unchanged: 482.
    let mut l2 = BadInputLimiter::new(0, 4);
    let (_, fwd) = run(&p, &t, &mut l2, UA, &invite(70, "loop@x"));
    let looped = String::from_utf8(fwd).unwrap().replacen(
        "Via: ",
        "Via: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKx\r\nVia: ",
        1,
    );
    let (o, _) = run(&p, &t, &mut l2, "10.0.0.1:5070", looped.as_bytes());
    assert!(matches!(o, Outcome::Reply { status: 482, .. }), "{o:?}");
    // Nothing up: 503.
    let none = Table::new(
        t.backends().to_vec(),
        vec![false, false],
        2,
        &Hashing::default(),
    );
    let (o, _) = run(&p, &none, &mut l2, UA, &invite(70, "n@x"));
    assert!(matches!(o, Outcome::Reply { status: 503, .. }), "{o:?}");
}

#[test]
fn keepalives_junk_and_the_per_source_limit() {
    let (p, t, mut l) = setup();
    // RFC 5626 §4.4.1: a double-CRLF ping gets a CRLF pong; a lone
    // CRLF (some phones' NAT keep-alive) is dropped.
    let (o, pong) = run(&p, &t, &mut l, UA, b"\r\n\r\n");
    assert_eq!(
        (o, pong.as_slice()),
        (
            Outcome::Pong {
                to: UA.parse().unwrap()
            },
            &b"\r\n"[..]
        )
    );
    assert_eq!(
        run(&p, &t, &mut l, UA, b"\r\n").0,
        Outcome::Drop(Drop::Keepalive)
    );
    // Three bad datagrams are answered or dropped; the fourth is limited.
    for _ in 0..3 {
        let (o, _) = run(&p, &t, &mut l, UA, b"\x00\x01garbage");
        assert_eq!(o, Outcome::Drop(Drop::Malformed(Reason::NotSip)));
    }
    assert_eq!(
        run(&p, &t, &mut l, UA, &invite(70, "ok@x")).0,
        Outcome::Drop(Drop::RateLimited)
    );
    // Another source is not affected.
    assert!(matches!(
        run(&p, &t, &mut l, "198.51.100.8:5060", &invite(70, "ok@x")).0,
        Outcome::Forward { .. }
    ));
    // A bad request with a usable Via gets 400 naming the header.
    let (p, t, mut l) = setup();
    let bad = String::from_utf8(invite(70, "b@x"))
        .unwrap()
        .replace("CSeq: 1 INVITE", "CSeq: 1 BYE");
    let (o, out) = run(&p, &t, &mut l, UA, bad.as_bytes());
    assert!(matches!(o, Outcome::Reply { status: 400, to, .. } if to == UA.parse().unwrap()));
    assert!(out.starts_with(b"SIP/2.0 400 CSeq method does not match request method\r\n"));
}

#[test]
fn worker_delegated_via_goes_out_alone_and_answers_come_back_by_key() {
    let (p, t, mut l) = setup();
    let k = t.key_for_backend(1).unwrap();
    // The worker's Via carries the key with its tag for the branch.
    let kh = String::from_utf8(
        Hashing::default()
            .key_token(k, Bound::Branch, b"z9hG4bKw1")
            .to_vec(),
    )
    .unwrap();
    let inv = format!(
        "INVITE sip:carol@203.0.113.5:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k={kh}\r\n\
Max-Forwards: 70\r\nTo: <sip:carol@c.example>\r\nFrom: <sip:b2bua@192.0.2.1>;tag=w\r\nCall-ID: leg-b@x\r\n\
CSeq: 1 INVITE\r\nContact: <sip:b2bua@192.0.2.1:5060;k={kh}>\r\nContent-Length: 0\r\n\r\n"
    );
    let (o, out) = run(&p, &t, &mut l, "10.0.0.2:5070", inv.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { peer: Peer::Client, request: true, to, .. } if to == "203.0.113.5:5060".parse().unwrap()),
        "{o:?}"
    );
    let m = scan(&out).unwrap();
    assert_eq!(
        m.vias().count(),
        1,
        "the callee sees the edge's address only"
    );
    assert_eq!(m.top_via().branch(), Some(&b"z9hG4bKw1"[..]));
    assert!(m.record_route_field().is_none());
    assert_eq!(m.max_forwards(), Some(69));
    // The 180 from the callee: our Via alone, routed by k to the owner.
    let ringing = format!(
        "SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k={kh};received=192.0.2.1\r\n\
To: <sip:carol@c.example>;tag=c\r\nFrom: <sip:b2bua@192.0.2.1>;tag=w\r\nCall-ID: leg-b@x\r\nCSeq: 1 INVITE\r\n\
Content-Length: 0\r\n\r\n"
    );
    let (o, out) = run(&p, &t, &mut l, "203.0.113.5:5060", ringing.as_bytes());
    assert!(
        matches!(
            o,
            Outcome::Forward {
                peer: Peer::Backend(1),
                request: false,
                ..
            }
        ),
        "{o:?}"
    );
    assert_eq!(out, ringing.as_bytes(), "passed on unchanged");
    // After a failover the same key goes to the new owner.
    let one_down = Table::new(
        t.backends().to_vec(),
        vec![true, false],
        2,
        &Hashing::default(),
    );
    let (o, _) = run(
        &p,
        &one_down,
        &mut l,
        "203.0.113.5:5060",
        ringing.as_bytes(),
    );
    assert!(
        matches!(
            o,
            Outcome::Forward {
                peer: Peer::Backend(0),
                ..
            }
        ),
        "{o:?}"
    );
    // Our Via alone without a key, or with a bare key, or with the
    // token of another branch, cannot be routed.
    let bare = String::from_utf8(hex_u64(k).to_vec()).unwrap();
    for (k_param, branch) in [
        (String::new(), "z9hG4bKw1"),
        (format!(";k={bare}"), "z9hG4bKw1"),
        (format!(";k={kh}"), "z9hG4bKw2"),
    ] {
        let v = ringing
            .replace(&format!(";k={kh}"), &k_param)
            .replace("branch=z9hG4bKw1", &format!("branch={branch}"));
        assert_eq!(
            run(&p, &t, &mut l, "203.0.113.5:5060", v.as_bytes()).0,
            Outcome::Drop(Drop::Unroutable),
            "{k_param} {branch}"
        );
    }
}

#[test]
fn a_register_goes_to_the_owner_of_its_aor_and_a_call_to_a_binding_to_its_flow() {
    let (p, t, mut l) = setup();
    let reg = |call_id: &str, to: &str| {
        format!(
            "REGISTER sip:192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bK{call_id}\r\n\
Max-Forwards: 70\r\nTo: <{to}>\r\nFrom: <sip:alice@a.example>;tag=f1\r\n\
Call-ID: {call_id}\r\nCSeq: 1 REGISTER\r\nContact: <sip:alice@10.9.9.9:5060>\r\nContent-Length: 0\r\n\r\n"
        )
    };
    let key = Hashing::default().affinity_key(b"alice@a.example");
    let owner = t.route(key).unwrap().1;
    // Whatever the Call-ID, the AOR (host in any case, any port) picks the worker.
    for (id, to) in [
        ("r1", "sip:alice@a.example"),
        ("r2", "sip:alice@A.Example:5062"),
    ] {
        let (o, _) = run(&p, &t, &mut l, UA, reg(id, to).as_bytes());
        assert!(
            matches!(o, Outcome::Forward { to, .. } if to == owner.into()),
            "{o:?}"
        );
    }
    // A worker's INVITE to the phone: our Route with the flow the
    // REGISTER came from; the private Contact stays the Request-URI.
    let inv = "INVITE sip:alice@10.9.9.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k=0000000000000001\r\n\
Route: <sip:192.0.2.1:5060;lr;flow=198.51.100.7:33333>\r\nMax-Forwards: 70\r\nTo: <sip:alice@a.example>\r\n\
From: <sip:bob@b.example>;tag=w1\r\nCall-ID: w@x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", inv.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { to, peer: Peer::Client, .. } if to == UA.parse().unwrap()),
        "{o:?}"
    );
    let m = scan(&out).unwrap();
    assert!(m.route_field().is_none(), "our Route is removed");
    assert_eq!(m.request_uri().unwrap().host(), b"10.9.9.9");
    // From a client (a PBX calling through our Path), a flow in our
    // Route is not obeyed: it goes to a worker, Route kept when it has
    // a token (`ft`), and the worker checks the token.
    let inv = inv.replace("flow=198.51.100.7:33333>", "flow=198.51.100.7:33333;ft=00>");
    let (o, out) = run(&p, &t, &mut l, UA, inv.as_bytes());
    assert!(
        matches!(
            o,
            Outcome::Forward {
                peer: Peer::Backend(_),
                ..
            }
        ),
        "{o:?}"
    );
    let m = scan(&out).unwrap();
    let r = m.top_route().unwrap().unwrap();
    assert_eq!(r.uri().param(b"flow"), Some(&b"198.51.100.7:33333"[..]));
}

#[test]
fn requests_from_a_backend_go_out_by_route_or_request_uri() {
    let (p, t, mut l) = setup();
    let bye = "BYE sip:alice@198.51.100.7:33333 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKs1\r\n\
Route: <sip:192.0.2.1:5060;lr;k=0000000000000001>\r\nMax-Forwards: 70\r\nTo: <sip:alice@a.example>;tag=f1\r\n\
From: <sip:bob@biloxi.example>;tag=t\r\nCall-ID: c@x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
    let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", bye.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { to, peer: Peer::Client, .. } if to == UA.parse().unwrap()),
        "{o:?}"
    );
    assert!(scan(&out).unwrap().route_field().is_none());
    // A backend's new INVITE is record-routed with a key it owns.
    let inv = String::from_utf8(invite(70, "out@x"))
        .unwrap()
        .replace(
            "INVITE sip:bob@biloxi.example",
            "INVITE sip:carol@203.0.113.5:5060",
        )
        .replace("10.9.9.9:5060;branch", "10.0.0.2:5070;branch");
    let (o, out) = run(&p, &t, &mut l, "10.0.0.2:5070", inv.as_bytes());
    assert!(
        matches!(
            o,
            Outcome::Forward {
                peer: Peer::Client,
                ..
            }
        ),
        "{o:?}"
    );
    let m = scan(&out).unwrap();
    let k = Hashing::default()
        .open_key_token(
            m.record_routes().next().unwrap().uri().param(b"k").unwrap(),
            Bound::CallId,
            b"out@x",
        )
        .unwrap();
    assert_eq!(
        t.route(k).unwrap().0,
        1,
        "answers come back to the backend that called"
    );
    // A host name cannot be forwarded to.
    let named = inv.replace("carol@203.0.113.5:5060", "carol@pbx.example");
    assert_eq!(
        run(&p, &t, &mut l, "10.0.0.2:5070", named.as_bytes()).0,
        Outcome::Drop(Drop::Unroutable)
    );
}

#[test]
fn a_workers_request_to_a_denied_network_is_answered_403_and_a_flow_still_goes() {
    let (p, t, mut l) = setup();
    let inv = |to: &str| {
        String::from_utf8(invite(70, "out@x"))
            .unwrap()
            .replace(
                "INVITE sip:bob@biloxi.example",
                &format!("INVITE sip:carol@{to}"),
            )
            .replace("10.9.9.9:5060;branch", "10.0.0.2:5070;branch")
    };
    let status = |p: &Proxy, l: &mut BadInputLimiter, to: &str| match run(
        p,
        &t,
        l,
        "10.0.0.2:5070",
        inv(to).as_bytes(),
    )
    .0
    {
        Outcome::Reply { status, to, .. } => {
            assert_eq!(
                to,
                Flow::udp("10.0.0.2:5070".parse().unwrap()),
                "to the worker"
            );
            status
        }
        Outcome::Forward { .. } => 0,
        o => panic!("{o:?}"),
    };
    // Built in: the cloud metadata address, multicast, IPv6 link-local.
    assert_eq!(status(&p, &mut l, "169.254.169.254:80"), 403);
    assert_eq!(status(&p, &mut l, "224.0.0.1:5060"), 403);
    assert_eq!(status(&p, &mut l, "[fe80::1]:5060"), 403);
    assert_eq!(
        status(&p, &mut l, "10.1.2.3:5060"),
        0,
        "private ranges pass unless denied"
    );
    // A site's list: its private network denied but for its PBXs.
    let cidr = |s: &str| s.parse::<handover_sip::Cidr>().unwrap();
    let p = p.with_destinations(Destinations::new(
        vec![cidr("10.1.2.0/24")],
        vec![cidr("10.0.0.0/8")],
    ));
    assert_eq!(status(&p, &mut l, "10.9.9.9:5060"), 403);
    assert_eq!(status(&p, &mut l, "10.1.2.3:5060"), 0, "allowed: a PBX");
    assert_eq!(status(&p, &mut l, "203.0.113.5:5060"), 0);
    assert_eq!(
        status(&p, &mut l, "192.168.1.9:5060"),
        0,
        "a deny list replaces the private default"
    );
    assert_eq!(
        status(&p, &mut l, "169.254.169.254:80"),
        403,
        "the built-in list stays"
    );
    // A registered phone's flow goes wherever its REGISTER came from.
    let bye = "BYE sip:alice@10.9.9.9:5060 SIP/2.0\r\nVia: SIP/2.0/UDP 10.0.0.1:5070;branch=z9hG4bKs1\r\n\
Route: <sip:192.0.2.1:5060;lr;k=0000000000000001;flow=10.9.9.9:5060>\r\nMax-Forwards: 70\r\nTo: <sip:alice@a.example>;tag=f1\r\n\
From: <sip:bob@biloxi.example>;tag=t\r\nCall-ID: c@x\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n";
    assert!(
        matches!(run(&p, &t, &mut l, "10.0.0.1:5070", bye.as_bytes()).0, Outcome::Forward { to, .. } if to == Flow::udp("10.9.9.9:5060".parse().unwrap())),
    );
    // A phone's own request is routed by key as ever (the list is for
    // what workers send out).
    assert!(matches!(
        run(&p, &t, &mut l, "10.9.9.9:5060", &invite(70, "in@x")).0,
        Outcome::Forward {
            peer: Peer::Backend(_),
            ..
        }
    ));
}

fn stream_proxy() -> (Proxy, Table, BadInputLimiter) {
    let (p, t, l) = setup();
    let p = p
        .with_listener(Transport::Tcp, EDGE.parse().unwrap())
        .with_listener(Transport::Tls, "192.0.2.1:5061".parse().unwrap());
    (p, t, l)
}

#[test]
fn a_request_on_a_stream_records_its_connection_and_the_answer_goes_back_on_it() {
    let (p, t, mut l) = stream_proxy();
    let inv = String::from_utf8(invite(70, "tls-1@x")).unwrap().replace(
        "SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKa1;rport",
        "SIP/2.0/TLS 10.9.9.9:5061;branch=z9hG4bKa1",
    );
    let from = "tls:198.51.100.7:40001";
    let (o, out) = run(&p, &t, &mut l, from, inv.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { peer: Peer::Backend(_), to, .. } if to.transport == Transport::Udp),
        "{o:?}"
    );
    let m = scan(&out).unwrap();
    // Our Via to the worker is UDP; the phone's now names the connection.
    assert_eq!(m.top_via().transport(), b"UDP");
    let phone = m.vias().nth(1).unwrap();
    assert_eq!(phone.flow().unwrap().to_string(), from);
    // The Record-Route names our TLS listener and the flow, so the
    // phone's in-dialog requests come back over TLS and the worker's
    // reach the phone on this connection.
    let rr = m.record_routes().next().unwrap();
    assert_eq!(rr.uri().port(), Some(5061));
    assert_eq!(rr.uri().param(b"transport"), Some(&b"tls"[..]));
    assert_eq!(rr.uri().param(b"flow"), Some(from.as_bytes()));
    // The worker's 200 comes back through our Via and goes out on the
    // connection, not to the Via's sent-by port.
    let ok = String::from_utf8(out.clone())
        .unwrap()
        .replacen("INVITE sip:bob@biloxi.example SIP/2.0", "SIP/2.0 200 OK", 1)
        .replace(
            "To: <sip:bob@biloxi.example>",
            "To: <sip:bob@biloxi.example>;tag=w",
        );
    let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", ok.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { peer: Peer::Client, request: false, to, .. } if to == from.parse().unwrap()),
        "{o:?}"
    );
    assert_eq!(scan(&out).unwrap().vias().count(), 1);
}

#[test]
fn a_worker_request_to_a_stream_flow_goes_on_it_naming_that_transport() {
    let (p, t, mut l) = stream_proxy();
    let inv = "INVITE sip:alice@10.9.9.9:5060;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k=0000000000000001\r\n\
Route: <sip:192.0.2.1:5060;lr;flow=tcp:198.51.100.7:40002>\r\nMax-Forwards: 70\r\nTo: <sip:alice@a.example>\r\n\
From: <sip:bob@b.example>;tag=w1\r\nCall-ID: w@x\r\nCSeq: 1 INVITE\r\nContact: <sip:192.0.2.1:5060;k=0000000000000001>\r\nContent-Length: 0\r\n\r\n";
    let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", inv.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { peer: Peer::Client, request: true, to, .. } if to == "tcp:198.51.100.7:40002".parse().unwrap()),
        "{o:?}"
    );
    let m = scan(&out).unwrap();
    assert_eq!(m.top_via().transport(), b"TCP");
    assert_eq!(m.vias().count(), 1);
    let rr = m.record_routes().next().unwrap();
    assert_eq!(rr.uri().param(b"transport"), Some(&b"tcp"[..]));
    // The worker's key (its Via's), tagged by the edge for this Call-ID.
    let k = String::from_utf8(
        Hashing::default()
            .key_token(1, Bound::CallId, b"w@x")
            .to_vec(),
    )
    .unwrap();
    assert_eq!(rr.uri().param(b"k"), Some(k.as_bytes()));
    assert_eq!(
        rr.uri().param(b"flow"),
        Some(&b"tcp:198.51.100.7:40002"[..])
    );
    // The phone's BYE comes back by that Record-Route (our TCP listener).
    let bye = format!(
        "BYE sip:192.0.2.1:5060;k={k} SIP/2.0\r\nVia: SIP/2.0/TCP 10.9.9.9:5060;branch=z9hG4bKp1\r\n\
Route: <sip:192.0.2.1:5060;transport=tcp;lr;k={k};flow=tcp:198.51.100.7:40002>\r\n\
Max-Forwards: 70\r\nTo: <sip:bob@b.example>;tag=w1\r\nFrom: <sip:alice@a.example>;tag=a1\r\nCall-ID: w@x\r\n\
CSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n"
    );
    let (o, out) = run(&p, &t, &mut l, "tcp:198.51.100.7:40002", bye.as_bytes());
    let owner = t.route(1).unwrap();
    assert!(
        matches!(o, Outcome::Forward { peer: Peer::Backend(i), .. } if i == owner.0),
        "{o:?}"
    );
    assert!(
        scan(&out).unwrap().route_field().is_none(),
        "our Route is ours to remove"
    );
}

#[test]
fn rfc5626_5_3_a_request_for_a_gone_flow_is_answered_430() {
    let (p, _, _) = stream_proxy();
    let inv = "INVITE sip:alice@10.9.9.9 SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k=1\r\n\
Max-Forwards: 70\r\nTo: <sip:alice@a.example>\r\nFrom: <sip:bob@b.example>;tag=w1\r\nCall-ID: w@x\r\n\
CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n";
    let mut out = vec![0u8; 4096];
    let n = p.flow_failed(inv.as_bytes(), &mut out).unwrap();
    let m = scan(&out[..n]).unwrap();
    assert_eq!(m.status(), Some(430));
    assert!(out.starts_with(b"SIP/2.0 430 Flow Failed\r\n"));
    let ack = inv
        .replace("INVITE sip", "ACK sip")
        .replace("1 INVITE", "1 ACK");
    assert_eq!(
        p.flow_failed(ack.as_bytes(), &mut out),
        None,
        "no answer to an ACK"
    );
}

#[test]
fn rfc3263_a_target_uri_with_transport_tcp_is_reached_on_a_connection() {
    let (p, t, mut l) = stream_proxy();
    let inv = "INVITE sip:b@203.0.113.5:5070;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw9;k=0000000000000001\r\n\
Max-Forwards: 70\r\nTo: <sip:b@b.example>\r\nFrom: <sip:a@a.example>;tag=w1\r\nCall-ID: out@x\r\n\
CSeq: 1 INVITE\r\nContact: <sip:192.0.2.1:5060;k=0000000000000001>\r\nContent-Length: 0\r\n\r\n";
    let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", inv.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { peer: Peer::Connect, to, .. } if to == "tcp:203.0.113.5:5070".parse().unwrap()),
        "{o:?}"
    );
    let m = scan(&out).unwrap();
    assert_eq!(m.top_via().transport(), b"TCP");
    assert_eq!(
        m.record_routes().next().unwrap().uri().param(b"flow"),
        Some(&b"tcp:203.0.113.5:5070"[..])
    );
    // sips: means TLS, 5061 by default; no transport: UDP as before.
    let sips = inv.replace("sip:b@203.0.113.5:5070;transport=tcp", "sips:b@203.0.113.5");
    let (o, _) = run(&p, &t, &mut l, "10.0.0.1:5070", sips.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { to, .. } if to == "tls:203.0.113.5:5061".parse().unwrap()),
        "{o:?}"
    );
    // RFC 7118: `transport=ws` is WebSocket, in a SIPS URI on TLS; the
    // Via names it.
    let ws = inv.replace(";transport=tcp", ";transport=ws");
    let (o, out) = run(&p, &t, &mut l, "10.0.0.1:5070", ws.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { peer: Peer::Connect, to, .. } if to == "ws:203.0.113.5:5070".parse().unwrap()),
        "{o:?}"
    );
    assert_eq!(scan(&out).unwrap().top_via().transport(), b"WS");
    let wss = inv.replace(
        "sip:b@203.0.113.5:5070;transport=tcp",
        "sips:b@203.0.113.5;transport=ws",
    );
    let (o, _) = run(&p, &t, &mut l, "10.0.0.1:5070", wss.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { peer: Peer::Connect, to, .. } if to == "wss:203.0.113.5:443".parse().unwrap()),
        "{o:?}"
    );
    let udp = inv.replace(";transport=tcp", "");
    let (o, _) = run(&p, &t, &mut l, "10.0.0.1:5070", udp.as_bytes());
    assert!(
        matches!(o, Outcome::Forward { peer: Peer::Client, to, .. } if to == "203.0.113.5:5070".parse().unwrap()),
        "{o:?}"
    );
}

#[test]
fn edges_that_share_an_address_name_themselves_beside_their_flows() {
    let internal: SocketAddr = "10.8.0.5:5060".parse().unwrap();
    let (p, t, mut l) = stream_proxy();
    let p = p.with_internal(internal);
    let h = Hashing::default();
    let inv = String::from_utf8(invite(70, "fe-1@x")).unwrap().replace(
        "SIP/2.0/UDP 10.9.9.9:5060;branch=z9hG4bKa1;rport",
        "SIP/2.0/TCP 10.9.9.9:5060;branch=z9hG4bKa1",
    );
    let from = "tcp:198.51.100.7:40001";
    let (_, out) = run(&p, &t, &mut l, from, inv.as_bytes());
    let m = scan(&out).unwrap();
    // The worker answers this edge, not the shared advertised address.
    assert_eq!(m.top_via().host(), b"192.0.2.1");
    assert_eq!(m.top_via().edge_target(), Some(internal));
    // Our Record-Route names this edge beside the flow, tagged for it.
    let rr = m.record_routes().next().unwrap();
    let (flow, fe) = (
        rr.uri().param(b"flow").unwrap(),
        rr.uri().param(b"fe").unwrap(),
    );
    assert_eq!(flow, from.as_bytes());
    assert_eq!(h.open_edge(flow, fe), Some(internal));
    assert_eq!(h.open_edge(b"tcp:198.51.100.7:40009", fe), None);

    // A UDP client's request: the Via names us, no flow in the Record-Route.
    let (_, out) = run(&p, &t, &mut l, UA, &invite(70, "fe-2@x"));
    let m = scan(&out).unwrap();
    assert_eq!(m.top_via().edge_target(), Some(internal));
    let rr = m.record_routes().next().unwrap();
    assert_eq!(rr.uri().param(b"fe"), None);

    // A worker's request for a phone on a connection: Record-Routed with
    // the flow and this edge.
    let w = "INVITE sip:alice@10.9.9.9:5060;transport=tcp SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bKw1;k=0000000000000001\r\n\
Route: <sip:192.0.2.1:5060;lr;flow=tcp:198.51.100.7:40002>\r\nMax-Forwards: 70\r\nTo: <sip:alice@a.example>\r\n\
From: <sip:bob@b.example>;tag=w1\r\nCall-ID: w@x\r\nCSeq: 1 INVITE\r\nContact: <sip:192.0.2.1:5060;k=0000000000000001>\r\nContent-Length: 0\r\n\r\n";
    let (_, out) = run(&p, &t, &mut l, "10.0.0.1:5070", w.as_bytes());
    let m = scan(&out).unwrap();
    let rr = m.record_routes().next().unwrap();
    let flow = rr.uri().param(b"flow").unwrap();
    assert_eq!(flow, b"tcp:198.51.100.7:40002");
    assert_eq!(
        h.open_edge(flow, rr.uri().param(b"fe").unwrap()),
        Some(internal)
    );

    // An edge that does not name itself writes nothing of the kind.
    let (p, t, mut l) = stream_proxy();
    let (_, out) = run(&p, &t, &mut l, from, inv.as_bytes());
    assert!(!String::from_utf8_lossy(&out).contains("fe="));
}
