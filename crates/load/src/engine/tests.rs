use super::*;
use crate::*;

#[test]
fn mixes_parse_and_keep_their_weights() {
    let m: Mix = "basic=70,hold=10,blind=10,attended=10".parse().unwrap();
    let mut n = BTreeMap::new();
    for i in 0..10_000 {
        *n.entry(m.pick(i)).or_insert(0u32) += 1;
    }
    assert!((6800..7200).contains(&n[&Scenario::Basic]), "{n:?}");
    assert!((800..1200).contains(&n[&Scenario::Attended]), "{n:?}");
    assert!(
        "basic,fax".parse::<Mix>().unwrap_err().contains("`fax`"),
        "names the bad scenario"
    );
    assert!("basic=x".parse::<Mix>().unwrap_err().contains("weight `x`"));
    assert!("basic=0".parse::<Mix>().is_err());
}

/// Plays `n` calls of the engine with itself, in memory: every
/// datagram it sends comes straight back (a loopback with no system
/// between), and time moves 1 ms per round. Returns what was sent.
fn play_alone(e: &mut Engine<rand_chacha::ChaCha12Rng>, s: Scenario, n: usize) -> Vec<Vec<u8>> {
    let mut now = Instant::from_epoch(Duration::ZERO);
    let mut sent = Vec::new();
    for _ in 0..n {
        e.start_call(now, s);
    }
    for _ in 0..10_000 {
        let out: Vec<Vec<u8>> = e.drain_transmit().collect();
        for d in &out {
            e.handle_datagram(now, d);
        }
        sent.extend(out);
        now = now + Duration::from_millis(1);
        e.handle_timeout(now);
        if e.active() == 0 && e.out.is_empty() {
            break;
        }
    }
    sent
}

fn engine() -> Engine<rand_chacha::ChaCha12Rng> {
    let a: SocketAddr = "127.0.0.1:5070".parse().unwrap();
    Engine::new(
        EngineConfig {
            local: a,
            target: a,
            hold: Duration::from_millis(1000),
            timers: TimerConfig::default(),
            callee: "b".into(),
        },
        <rand_chacha::ChaCha12Rng as rand_core::SeedableRng>::seed_from_u64(7),
    )
}

#[test]
fn finished_legs_are_retired_at_once_and_a_resent_bye_is_still_answered() {
    let mut e = engine();
    let sent = play_alone(&mut e, Scenario::Basic, 50);
    let c = e.counts();
    assert_eq!((c.succeeded, c.failed, c.retransmissions), (50, 0, 0));
    assert_eq!(e.setting_up(), 0);
    // Both legs of every call are gone, with nothing left to resend.
    assert_eq!(e.legs(), 0, "every finished leg is retired");
    // A BYE resent after its 200 was lost is answered 200 again (the
    // leg is gone; the 200 is rebuilt from the request); any other
    // request in that dialog gets 481.
    let bye = sent
        .iter()
        .find(|d| d.starts_with(b"BYE "))
        .expect("a BYE was sent")
        .clone();
    let now = Instant::from_epoch(Duration::from_secs(20));
    e.handle_datagram(now, &bye);
    let answers: Vec<Vec<u8>> = e.drain_transmit().collect();
    assert_eq!(answers.len(), 1);
    assert!(
        answers[0].starts_with(b"SIP/2.0 200 "),
        "{}",
        String::from_utf8_lossy(&answers[0])
    );
    let info = String::from_utf8_lossy(&bye)
        .replacen("BYE ", "INFO ", 1)
        .replace(" BYE\r\n", " INFO\r\n");
    e.handle_datagram(now, info.as_bytes());
    let answers: Vec<Vec<u8>> = e.drain_transmit().collect();
    assert!(answers[0].starts_with(b"SIP/2.0 481 "));
    // After 64*T1 the dialog is forgotten entirely: a BYE is then an
    // unknown dialog's (481).
    e.expire(now + TimerConfig::default().t1x64() * 2);
    e.handle_datagram(now, &bye);
    let answers: Vec<Vec<u8>> = e.drain_transmit().collect();
    assert!(answers[0].starts_with(b"SIP/2.0 481 "));
}

#[test]
fn every_scenario_plays_against_itself_in_memory() {
    for s in [
        Scenario::Basic,
        Scenario::Hold,
        Scenario::Blind,
        Scenario::Attended,
    ] {
        let mut e = engine();
        play_alone(&mut e, s, 20);
        let c = e.counts();
        assert_eq!(
            (c.succeeded, c.failed),
            (20, 0),
            "{s:?}: {:?}",
            e.failures()
        );
        assert_eq!(e.legs(), 0, "{s:?}: legs left");
    }
}

/// A peer (standing for the system under test) that calls the
/// engine's user `user`: sends the INVITE, reads the 200, ACKs it.
/// Returns the engine's tag.
fn peer_calls(e: &mut Engine<rand_chacha::ChaCha12Rng>, user: &str, cid: &str) -> String {
    let now = Instant::from_epoch(Duration::from_secs(1));
    let inv = peer_request("INVITE", user, cid, None, 1, "") + &sdp_body();
    e.handle_datagram(now, inv.as_bytes());
    let ok = e
        .drain_transmit()
        .find(|d| d.starts_with(b"SIP/2.0 200 "))
        .expect("the callee answers 200");
    let tag = String::from_utf8(scan(&ok).unwrap().to_tag().unwrap().to_vec()).unwrap();
    let ack = peer_request("ACK", user, cid, Some(&tag), 1, "");
    e.handle_datagram(now, ack.as_bytes());
    let _ = e.drain_transmit().count();
    tag
}

fn sdp_body() -> String {
    "v=0\r\no=p 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\n".into()
}

/// A request from the peer (From-tag `peer`) in Call-ID `cid`, with
/// `extra` header lines; an INVITE carries an SDP body (appended by
/// the caller), everything else none.
fn peer_request(
    method: &str,
    user: &str,
    cid: &str,
    to_tag: Option<&str>,
    cseq: u32,
    extra: &str,
) -> String {
    let to_tag = to_tag.map(|t| format!(";tag={t}")).unwrap_or_default();
    let (ct, len) = if method == "INVITE" {
        ("Content-Type: application/sdp\r\n", sdp_body().len())
    } else {
        ("", 0)
    };
    format!(
        "{method} sip:{user}@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-{method}-{cid}-{cseq}\r\n\
Max-Forwards: 70\r\nFrom: <sip:a1@127.0.0.1:5060>;tag=peer\r\nTo: <sip:{user}@127.0.0.1:5070>{to_tag}\r\n\
Call-ID: {cid}\r\nCSeq: {cseq} {method}\r\nContact: <sip:p@127.0.0.1:5060>\r\n{extra}{ct}Content-Length: {len}\r\n\r\n"
    )
}

/// The status lines the engine sent for `msg`.
fn answers(e: &mut Engine<rand_chacha::ChaCha12Rng>, msg: &str) -> Vec<String> {
    let now = Instant::from_epoch(Duration::from_secs(2));
    e.handle_datagram(now, msg.as_bytes());
    e.drain_transmit()
        .map(|d| {
            String::from_utf8_lossy(&d)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn rfc3261_12_2_2_a_request_must_match_the_whole_dialog_and_its_cseq_order() {
    let mut e = engine();
    let tag = peer_calls(&mut e, "b", "d1");
    // Right Call-ID and our tag, but another From-tag: no such dialog.
    let wrong =
        peer_request("OPTIONS", "b", "d1", Some(&tag), 2, "").replace(";tag=peer", ";tag=other");
    assert_eq!(
        answers(&mut e, &wrong),
        ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
    // An unknown To-tag: 481 too.
    let unknown = peer_request("OPTIONS", "b", "d1", Some("nobody"), 2, "");
    assert_eq!(
        answers(&mut e, &unknown),
        ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
    // CSeq 5, then 3: out of order, 500.
    let five = peer_request("OPTIONS", "b", "d1", Some(&tag), 5, "");
    assert_eq!(answers(&mut e, &five), ["SIP/2.0 200 OK"]);
    let three = peer_request("OPTIONS", "b", "d1", Some(&tag), 3, "");
    assert_eq!(
        answers(&mut e, &three),
        ["SIP/2.0 500 Server Internal Error"]
    );
}

#[test]
fn methods_a_role_does_not_take_are_refused_405_or_501() {
    let mut e = engine();
    let tag = peer_calls(&mut e, "b", "m1");
    // A callee is no transferee: REFER is 405, with Allow.
    let refer = peer_request(
        "REFER",
        "b",
        "m1",
        Some(&tag),
        2,
        "Refer-To: <sip:c@127.0.0.1>\r\n",
    );
    e.handle_datagram(
        Instant::from_epoch(Duration::from_secs(2)),
        refer.as_bytes(),
    );
    let out: Vec<Vec<u8>> = e.drain_transmit().collect();
    let text = String::from_utf8_lossy(&out[0]).into_owned();
    assert!(text.starts_with("SIP/2.0 405 "), "{text}");
    assert!(
        text.contains("Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, NOTIFY\r\n"),
        "{text}"
    );
    for (i, m) in ["INFO", "UPDATE", "MESSAGE", "SUBSCRIBE"]
        .iter()
        .enumerate()
    {
        let r = peer_request(m, "b", "m1", Some(&tag), 3 + i as u32, "");
        assert_eq!(answers(&mut e, &r), ["SIP/2.0 501 Not Implemented"], "{m}");
    }
}

#[test]
fn rfc6665_a_notify_needs_the_refer_event_and_a_subscription() {
    let mut e = engine();
    let tag = peer_calls(&mut e, "b", "n1");
    let frag = "Content-Type: message/sipfrag\r\nSubscription-State: active\r\n";
    // Another event package: 489 Bad Event.
    let presence = peer_request(
        "NOTIFY",
        "b",
        "n1",
        Some(&tag),
        2,
        &format!("Event: presence\r\n{frag}"),
    );
    assert_eq!(answers(&mut e, &presence), ["SIP/2.0 489 Bad Event"]);
    // The refer package on a leg that sent no REFER: no subscription.
    let refer = peer_request(
        "NOTIFY",
        "b",
        "n1",
        Some(&tag),
        3,
        &format!("Event: refer\r\n{frag}"),
    );
    assert_eq!(
        answers(&mut e, &refer),
        ["SIP/2.0 481 Call/Transaction Does Not Exist"]
    );
    // No Event at all: 489 too.
    let none = peer_request("NOTIFY", "b", "n1", Some(&tag), 4, frag);
    assert_eq!(answers(&mut e, &none), ["SIP/2.0 489 Bad Event"]);
}

#[test]
fn rfc3891_3_a_replaces_must_name_a_live_dialog_of_ours_exactly() {
    let mut e = engine();
    let tag = peer_calls(&mut e, "b", "r1");
    let invite = |cid: &str, replaces: &str| {
        peer_request(
            "INVITE",
            "b",
            cid,
            None,
            1,
            &format!("Replaces: {replaces}\r\n"),
        ) + &sdp_body()
    };
    let first = |v: Vec<String>| {
        v.into_iter()
            .find(|l| !l.starts_with("SIP/2.0 100"))
            .unwrap_or_default()
    };
    // No such Call-ID, or our tag wrong, or the peer's tag wrong: 481.
    for (cid, r) in [
        ("x1", "nope;to-tag=a;from-tag=b".to_string()),
        ("x2", "r1;to-tag=wrong;from-tag=peer".to_string()),
        ("x3", format!("r1;to-tag={tag};from-tag=wrong")),
    ] {
        assert_eq!(
            first(answers(&mut e, &invite(cid, &r))),
            "SIP/2.0 481 Call/Transaction Does Not Exist",
            "{r}"
        );
    }
    // early-only naming a confirmed dialog: 486.
    let r = format!("r1;to-tag={tag};from-tag=peer;early-only");
    assert_eq!(
        first(answers(&mut e, &invite("x4", &r))),
        "SIP/2.0 486 Busy Here"
    );
    // The dialog ended (the peer hung it up): 603.
    let bye = peer_request("BYE", "b", "r1", Some(&tag), 2, "");
    assert_eq!(answers(&mut e, &bye), ["SIP/2.0 200 OK"]);
    let r = format!("r1;to-tag={tag};from-tag=peer");
    assert_eq!(
        first(answers(&mut e, &invite("x5", &r))),
        "SIP/2.0 603 Decline"
    );
}

#[test]
fn a_callee_that_never_gets_its_bye_fails_the_call_naming_its_leg() {
    // A B2BUA that answers A's BYE itself and never relays it: A's
    // side looks fine, B's leg never ends.
    let mut e = engine();
    let mut now = Instant::from_epoch(Duration::ZERO);
    e.start_call(now, Scenario::Basic);
    for _ in 0..20_000 {
        let out: Vec<Vec<u8>> = e.drain_transmit().collect();
        for d in &out {
            if d.starts_with(b"BYE ") {
                let m = scan(d).unwrap();
                let mut ok = Vec::new();
                response(&m.reply_parts(), 200, None, None, &[], &mut ok);
                e.handle_datagram(now, &ok);
            } else {
                e.handle_datagram(now, d);
            }
        }
        now = now + Duration::from_millis(10);
        e.handle_timeout(now);
        e.expire(now);
        if e.active() == 0 {
            break;
        }
    }
    let c = e.counts();
    assert_eq!((c.succeeded, c.failed), (0, 1), "{:?}", e.failures());
    assert_eq!(
        e.failures().keys().collect::<Vec<_>>(),
        ["call did not end in time: B leg never got its BYE"]
    );
}

#[test]
fn answers_mirror_the_offer_direction() {
    assert_eq!(answer_dir(b"v=0\r\na=sendonly\r\n"), "recvonly");
    assert_eq!(answer_dir(b"v=0\r\na=inactive\r\n"), "inactive");
    assert_eq!(answer_dir(b""), "sendrecv");
}

/// The transferee's hold is talk time, not a deadline for the transfer: a
/// REFER that takes longer than the hold to arrive (a message waiting on
/// a shard move or a worker's death) still ends in a completed transfer,
/// and the transferee hangs up after it.
#[test]
fn a_transfer_slower_than_the_hold_completes_and_the_transferee_waits_for_it() {
    for s in [Scenario::Blind, Scenario::Attended] {
        let mut e = engine();
        let mut now = Instant::from_epoch(Duration::ZERO);
        e.start_call(now, s);
        // REFERs reach their receiver 1.5 s late (hold: 1 s).
        let mut late: Vec<(Instant, Vec<u8>)> = Vec::new();
        let mut refer_at = None;
        let mut bye_after_refer = false;
        for _ in 0..20_000 {
            let out: Vec<Vec<u8>> = e.drain_transmit().collect();
            for d in out {
                if d.starts_with(b"REFER ") {
                    late.push((now + Duration::from_millis(1500), d));
                } else {
                    if d.starts_with(b"BYE ") && refer_at.is_some() {
                        bye_after_refer = true;
                    }
                    e.handle_datagram(now, &d);
                }
            }
            let (due, wait): (Vec<_>, Vec<_>) = late.drain(..).partition(|(t, _)| *t <= now);
            late = wait;
            for (_, d) in due {
                refer_at.get_or_insert(now);
                e.handle_datagram(now, &d);
            }
            now = now + Duration::from_millis(1);
            e.handle_timeout(now);
            if e.active() == 0 && e.out.is_empty() && late.is_empty() {
                break;
            }
        }
        let c = e.counts();
        assert_eq!((c.succeeded, c.failed), (1, 0), "{s:?}: {:?}", e.failures());
        assert!(refer_at.is_some() && bye_after_refer, "{s:?}");
    }
}

/// The transferee's final NOTIFY (200 sipfrag) is lost for 3 s, as when
/// the shard of its call moves between workers (a join, a drain) and the
/// first sends and resends find no worker serving it; its later resend gets
/// through. The new call (hold 1 s) ends before that: the transfer is
/// judged once the NOTIFY's transaction has ended, so it completes (the
/// transferor hears the 200) and the call succeeds. A NOTIFY lost for good
/// still fails the call ("timeout (NOTIFY)").
#[test]
fn a_transfer_whose_final_notify_is_late_is_judged_when_the_notify_ends() {
    for (s, lost_for) in [
        (Scenario::Blind, 3000),
        (Scenario::Attended, 3000),
        (Scenario::Blind, 60_000),
    ] {
        let mut e = engine();
        let mut now = Instant::from_epoch(Duration::ZERO);
        e.start_call(now, s);
        let mut first = None;
        let mut dropped = 0;
        let mut final_heard = false;
        for _ in 0..100_000 {
            let out: Vec<Vec<u8>> = e.drain_transmit().collect();
            for d in out {
                let final_notify =
                    d.starts_with(b"NOTIFY ") && d.windows(14).any(|w| w == b"SIP/2.0 200 OK");
                if final_notify {
                    let t0 = *first.get_or_insert(now);
                    if now < t0 + Duration::from_millis(lost_for) {
                        dropped += 1;
                        continue;
                    }
                    final_heard = true;
                }
                e.handle_datagram(now, &d);
            }
            now = now + Duration::from_millis(1);
            e.handle_timeout(now);
            if e.active() == 0 && e.out.is_empty() {
                break;
            }
        }
        let c = e.counts();
        assert!(
            dropped >= 3,
            "{s:?}: the NOTIFY was resent while lost ({dropped})"
        );
        if lost_for < 32_000 {
            assert!(final_heard, "{s:?}");
            assert_eq!((c.succeeded, c.failed), (1, 0), "{s:?}: {:?}", e.failures());
        } else {
            assert_eq!((c.succeeded, c.failed), (0, 1), "{s:?}");
            assert!(
                e.failures().keys().any(|k| k.contains("NOTIFY")),
                "{s:?}: {:?}",
                e.failures()
            );
        }
    }
}
