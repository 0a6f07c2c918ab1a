//! The registrar's rules, on a virtual clock.

use super::*;
use crate::register::{qvalue, seconds};
use handover_sip::scan;

const T0: u64 = 1_700_000_000_000;

fn registrar(replicated: bool) -> Registrar {
    Registrar::new(
        Config {
            wall_epoch_ms: T0,
            max_contacts: 3,
            ..Config::default()
        },
        replicated,
        Locations::shared(),
    )
}

/// A REGISTER as a worker gets it: the edge's Via on top, the phone's
/// below with where the edge saw it (`received`/`rport`).
fn register(branch: &str, cseq: u32, contacts: &[&str], expires: Option<&str>) -> Vec<u8> {
    let mut s = format!(
        "REGISTER sip:example.com SIP/2.0\r\nVia: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-e{branch};k=1\r\n\
Via: SIP/2.0/UDP 10.0.0.9:5060;branch=z9hG4bK{branch};received=203.0.113.7;rport=40001\r\n\
Max-Forwards: 69\r\nTo: <sip:alice@example.com>\r\nFrom: <sip:alice@example.com>;tag=1\r\n\
Call-ID: reg-1@10.0.0.9\r\nCSeq: {cseq} REGISTER\r\n"
    );
    for c in contacts {
        s.push_str(&format!("Contact: {c}\r\n"));
    }
    if let Some(e) = expires {
        s.push_str(&format!("Expires: {e}\r\n"));
    }
    s.push_str("Content-Length: 0\r\n\r\n");
    s.into_bytes()
}

fn at(s: u64) -> Instant {
    Instant::from_epoch(Duration::from_secs(s))
}

/// Runs one REGISTER (after the retransmission check) and returns what went out.
fn run(r: &mut Registrar, now: Instant, b: &[u8]) -> Vec<String> {
    let m = scan(b).unwrap();
    if !r.absorb(now, &m) {
        r.register(now, &m, None, 7, b"tag1");
    }
    sent(r)
}

fn sent(r: &mut Registrar) -> Vec<String> {
    std::iter::from_fn(|| r.poll_transmit())
        .map(|(_, b)| String::from_utf8(b).unwrap())
        .collect()
}

#[test]
fn rfc3261_10_3_the_200_waits_for_the_commit_and_retransmissions_get_it_again() {
    let mut r = registrar(true);
    let b = register("a", 1, &["<sip:alice@10.0.0.9:5060>"], Some("600"));
    assert!(run(&mut r, at(1), &b).is_empty(), "held until committed");
    let w = r.poll_write().expect("a write");
    // The version is the wall clock's millisecond (see the last test).
    assert_eq!(
        (w.aor.as_slice(), w.version, w.key),
        (&b"alice@example.com"[..], T0 + 1_000, 7)
    );
    assert_eq!(
        w.bindings[0].flow,
        Some("203.0.113.7:40001".parse().unwrap())
    );
    assert_eq!(w.bindings[0].expires_ms, T0 + 1_000 + 600_000);
    assert!(
        run(&mut r, at(2), &b).is_empty(),
        "a retransmission is absorbed"
    );
    r.apply(w.clone());
    r.committed(&w.aor, w.version, true);
    let out = sent(&mut r);
    assert_eq!(out.len(), 1);
    assert!(out[0].starts_with("SIP/2.0 200 OK\r\n"), "{}", out[0]);
    assert!(
        out[0].contains("Contact: <sip:alice@10.0.0.9:5060>;expires=600\r\n"),
        "{}",
        out[0]
    );
    assert!(out[0].contains("To: <sip:alice@example.com>;tag=tag1"));
    assert_eq!(run(&mut r, at(3), &b), out, "the same 200 again");
    let t = r.targets(7, b"alice@example.com", at(3));
    assert_eq!(t.len(), 1);
    assert!(
        r.targets(7, b"alice@example.com", at(602)).is_empty(),
        "expired"
    );
    // The owner writes it out; another worker leaves it to the owner.
    r.sweep(at(602), |_| false);
    assert!(r.poll_write().is_none());
    r.sweep(at(606), |_| true);
    assert!(r.poll_write().is_none(), "looked at again 5 s later");
    r.sweep(at(607), |_| true);
    let w = r.poll_write().expect("expired bindings written out");
    assert!(w.bindings.is_empty() && w.version == T0 + 607_000);
    assert_eq!(r.stats().expired, 1);
}

#[test]
fn rfc3261_10_3_expiry_limits_wildcard_and_order() {
    let mut r = registrar(false);
    let out = run(
        &mut r,
        at(1),
        &register("a", 1, &["<sip:alice@10.0.0.9>"], Some("30")),
    );
    assert!(
        out[0].starts_with("SIP/2.0 423 Interval Too Brief\r\n"),
        "{}",
        out[0]
    );
    assert!(out[0].contains("Min-Expires: 60\r\n"));
    // An absurd Expires is clamped, never an overflow.
    let out = run(
        &mut r,
        at(1),
        &register(
            "b",
            2,
            &["<sip:alice@10.0.0.9>"],
            Some("18446744073709551616999"),
        ),
    );
    assert!(out[0].contains(";expires=3600\r\n"), "{}", out[0]);
    assert_eq!(r.targets(7, b"alice@example.com", at(1)).len(), 1, "{r:?}");
    // Several contacts, with q and their own expires; best first.
    let out = run(
        &mut r,
        at(2),
        &register(
            "c",
            3,
            &["<sip:alice@10.0.0.10>;q=0.5, <sip:alice@10.0.0.11>;q=1.0;expires=120"],
            None,
        ),
    );
    assert_eq!(out[0].matches("Contact: ").count(), 3, "{}", out[0]);
    assert!(out[0].contains("<sip:alice@10.0.0.10>;expires=3600;q=0.500"));
    let t: Vec<Vec<u8>> = r
        .targets(7, b"alice@example.com", at(3))
        .into_iter()
        .map(|b| b.contact.to_vec())
        .collect();
    assert_eq!(
        t,
        [
            &b"sip:alice@10.0.0.9"[..],
            b"sip:alice@10.0.0.11",
            b"sip:alice@10.0.0.10"
        ]
    );
    // A fourth contact is one too many.
    let out = run(
        &mut r,
        at(3),
        &register("d", 4, &["<sip:alice@10.0.0.12>"], None),
    );
    assert!(
        out[0].starts_with("SIP/2.0 403 Too Many Contacts"),
        "{}",
        out[0]
    );
    // An older CSeq of the same Call-ID changes nothing.
    let out = run(
        &mut r,
        at(3),
        &register("e", 3, &["<sip:alice@10.0.0.10>"], Some("0")),
    );
    assert!(out[0].starts_with("SIP/2.0 500 "), "{}", out[0]);
    // `*` needs Expires: 0 and no other contact.
    let out = run(&mut r, at(3), &register("f", 5, &["*"], Some("60")));
    assert!(
        out[0].starts_with("SIP/2.0 400 Invalid Wildcard"),
        "{}",
        out[0]
    );
    // A Contact we could never call (not SIP, SIPS or tel) binds nothing.
    for (branch, c) in [
        ("h", "<mailto:alice@example.com>"),
        ("i", "<s)p:alice@10.0.0.13>"),
    ] {
        let out = run(&mut r, at(3), &register(branch, 5, &[c], None));
        assert!(
            out[0].starts_with("SIP/2.0 400 Bad Contact"),
            "{c}: {}",
            out[0]
        );
    }
    let out = run(&mut r, at(3), &register("g", 6, &["*"], Some("0")));
    assert!(out[0].starts_with("SIP/2.0 200 OK") && !out[0].contains("Contact:"));
    assert!(r.targets(7, b"alice@example.com", at(3)).is_empty());
    assert_eq!(r.aors(), 0);
    let s = r.stats();
    assert_eq!((s.created, s.removed, s.refused), (3, 3, 6));
}

#[test]
fn a_write_the_cluster_refuses_leaves_the_retransmission_to_the_new_owner() {
    let mut r = registrar(true);
    let b = register("a", 1, &["<sip:alice@10.0.0.9>"], None);
    assert!(run(&mut r, at(1), &b).is_empty());
    let w = r.poll_write().unwrap();
    r.committed(&w.aor, w.version, false);
    assert!(sent(&mut r).is_empty());
    assert_eq!(r.stats().lost_writes, 1);
    // Not absorbed any more: handled as new (here, by the same worker).
    let m = scan(&b).unwrap();
    assert!(!r.absorb(at(2), &m));
}

#[test]
fn an_authenticated_user_registers_only_its_own_aor_and_a_query_lists_bindings() {
    let mut r = registrar(false);
    let b = register("a", 1, &["<sip:alice@10.0.0.9>"], None);
    let m = scan(&b).unwrap();
    r.register(at(1), &m, Some(b"bob"), 7, b"t");
    assert!(sent(&mut r)[0].starts_with("SIP/2.0 403 Not Your AOR"));
    let b = register("b", 2, &["<sip:alice@10.0.0.9>"], None);
    r.register(at(1), &scan(&b).unwrap(), Some(b"alice"), 7, b"t");
    assert!(sent(&mut r)[0].starts_with("SIP/2.0 200 OK"));
    let q = register("c", 3, &[], None);
    let out = run(&mut r, at(2), &q);
    assert!(
        out[0].contains("Contact: <sip:alice@10.0.0.9>;expires=3599"),
        "{}",
        out[0]
    );
}

#[test]
fn qvalues_and_seconds_parse_strictly() {
    assert_eq!(qvalue(b"0.5"), Some(500));
    assert_eq!(qvalue(b"1"), Some(1000));
    assert_eq!(qvalue(b"0.125"), Some(125));
    assert_eq!(qvalue(b"1.5"), None);
    assert_eq!(qvalue(b"0.1234"), None);
    assert_eq!(seconds(b" 42 "), Some(42));
    assert_eq!(seconds(b"-1"), None);
    assert_eq!(seconds(b"99999999999999999999999"), Some(u64::MAX));
}

/// An AOR whose last binding went (unregistered, expired, its flow
/// failed) is a tombstone in the replicated table, which refuses any
/// write of it at or below the removal's version. Registered again, the
/// AOR starts from nothing: its version must still pass the tombstone,
/// or the phone never gets an answer (seen with baresip, which
/// unregisters when it quits and registers when it starts).
#[test]
fn an_aor_registered_again_after_its_removal_writes_past_its_tombstone() {
    let mut r = registrar(true);
    let add = register("a", 1, &["<sip:alice@10.0.0.9>"], Some("600"));
    assert!(run(&mut r, at(1), &add).is_empty());
    let w1 = r.poll_write().unwrap();
    r.apply(w1.clone());
    r.committed(&w1.aor, w1.version, true);
    assert_eq!(sent(&mut r).len(), 1);
    let remove = register("b", 2, &["<sip:alice@10.0.0.9>"], Some("0"));
    assert!(run(&mut r, at(1), &remove).is_empty());
    let w2 = r.poll_write().unwrap();
    assert!(w2.bindings.is_empty());
    assert!(
        w2.version > w1.version,
        "{} then {}",
        w1.version,
        w2.version
    );
    r.apply(w2.clone());
    r.committed(&w2.aor, w2.version, true);
    assert_eq!(sent(&mut r).len(), 1);
    // The table now holds a tombstone at w2's version, and no record.
    assert!(r.locations().read().get(7, b"alice@example.com").is_none());
    let again = register("c", 3, &["<sip:alice@10.0.0.9>"], Some("600"));
    assert!(run(&mut r, at(2), &again).is_empty());
    let w3 = r.poll_write().unwrap();
    assert!(
        w3.version > w2.version,
        "past the tombstone: {} after {}",
        w3.version,
        w2.version
    );
    // In the same millisecond as the removal, one more than it would do
    // too; a write is never below its base's version plus one.
    let base = Record {
        version: T0 + 5_000,
        ..Record::default()
    };
    assert_eq!(base.next_version(T0 + 1_000), T0 + 5_001);
    assert_eq!(base.next_version(T0 + 9_000), T0 + 9_000);
}
