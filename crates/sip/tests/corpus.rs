//! The message corpus: every file in `testdata/corpus` carries its expected
//! verdict; generated cases cover what is too big or too binary for a file.
//!
//! File format: `# expect: ok | reply STATUS LABEL | drop LABEL` (what
//! `scan`, the proxy-grade check, says), optional `# ua: …` (what a user
//! agent's `ua_check` adds; `ok` when absent), optional
//! `# field: name=value` checks, `# eol: lf` to keep bare LFs,
//! `# trailing: none` to strip the final line end; a blank line; then the
//! message with LF line ends (turned into CRLF) and `\xHH` escapes.

use std::path::Path;

#[path = "../testdata/corpus_format.rs"]
mod corpus_format;

use handover_sip::build::error_response;
use handover_sip::{Limits, Message, Reason, Scheme, Verdict, scan, scan_with};
use rand::{Rng, SeedableRng, rngs::SmallRng};

fn field(m: &Message<'_>, name: &str) -> String {
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let uri = || m.request_uri().expect("request");
    match name {
        "ruri_user" => s(uri().user().unwrap_or_default()),
        "ruri_host" => s(uri().host()),
        "ruri_port" => uri().port().unwrap().to_string(),
        n if n.starts_with("ruri_param_") => {
            s(uri().param(&n.as_bytes()["ruri_param_".len()..]).unwrap())
        }
        "cseq" => format!("{} {}", m.cseq().seq, s(m.method_bytes())),
        "call_id" => s(m.call_id()),
        "top_branch" => s(m.top_via().branch().unwrap()),
        "top_host" => s(m.top_via().host()),
        "top_port" => m.top_via().port().unwrap().to_string(),
        n if n.starts_with("top_param_") => {
            let p = m
                .top_via()
                .param(&n.as_bytes()["top_param_".len()..])
                .unwrap();
            s(p.value.unwrap().of(m.buf()))
        }
        "body_len" => m.body().len().to_string(),
        "max_forwards" => m.max_forwards().unwrap().to_string(),
        "from_tag" => s(m.from_tag().unwrap()),
        "to_tag" => s(m.to_tag().unwrap()),
        "to_host" => s(m.to().unwrap().uri().host()),
        "contact_host" => s(m.contact().unwrap().unwrap().uri().host()),
        "status" => m.status().unwrap().to_string(),
        "via_count" => m.vias().count().to_string(),
        "record_route_count" => m.record_routes().count().to_string(),
        other => panic!("unknown field {other}"),
    }
}

/// Checks one datagram against an expectation; also checks that an answer
/// built for a refused request is itself a scannable response.
fn check(name: &str, bytes: &[u8], expect: &str, limits: &Limits) -> Option<()> {
    let got = scan_with(bytes, limits);
    let verdict = match &got {
        Ok(_) => "ok".to_string(),
        Err(e) => match e.verdict() {
            Verdict::Reply(s) => format!("reply {s} {}", e.reason.label()),
            Verdict::Drop => format!("drop {}", e.reason.label()),
        },
    };
    assert_eq!(
        verdict,
        expect,
        "case {name}: {:?}",
        got.as_ref().err().map(|e| e.reason)
    );
    if let Err(e) = &got {
        let mut out = Vec::new();
        if error_response(e, Some(b"edge-tag"), &mut out) {
            let text = String::from_utf8_lossy(&out);
            assert!(
                text.starts_with(&format!("SIP/2.0 {} ", e.reason.status())),
                "{name}: {text}"
            );
            // Either a clean response, or refused only for what it copies verbatim.
            if let Err(r) = scan(&out) {
                assert!(
                    matches!(
                        r.reason,
                        Reason::MissingHeader(_)
                            | Reason::MalformedHeader(_)
                            | Reason::DuplicateHeader(_)
                            | Reason::NulByte
                    ),
                    "{name}: the answer is broken: {:?}\n{text}",
                    r.reason
                );
            } else {
                let r = scan(&out).unwrap();
                assert_eq!(r.status(), Some(e.reason.status()));
            }
        }
    }
    Some(())
}

#[test]
fn corpus_files_get_their_expected_verdicts() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/corpus");
    let mut n = 0;
    for case in corpus_format::load_dir(&dir) {
        check(&case.name, &case.bytes, &case.expect, &Limits::default());
        if case.expect == "ok" {
            let m = scan(&case.bytes).unwrap();
            let ua = match m.ua_check() {
                Ok(()) => "ok".to_string(),
                Err(r) => format!("reply {} {}", r.status(), r.label()),
            };
            assert_eq!(ua, case.ua, "case {}: ua_check", case.name);
            for (k, v) in &case.fields {
                assert_eq!(&field(&m, k), v, "case {}: field {k}", case.name);
            }
        }
        n += 1;
    }
    assert!(n >= 45, "corpus went missing: {n} files");
}

fn invite_with(extra_vias: usize, call_id: &str) -> Vec<u8> {
    let mut s = String::from("INVITE sip:bob@biloxi.example SIP/2.0\r\n");
    for i in 0..extra_vias {
        s += &format!("Via: SIP/2.0/UDP proxy{i}.example:5060;branch=z9hG4bK{i:04}\r\n");
    }
    s += &format!(
        "Max-Forwards: 70\r\nTo: <sip:bob@biloxi.example>\r\nFrom: <sip:a@a.example>;tag=1\r\n\
Call-ID: {call_id}\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    );
    s.into_bytes()
}

#[test]
fn sixty_vias_all_read_in_order() {
    let b = invite_with(60, "sixty@x");
    let m = scan(&b).unwrap();
    let hosts: Vec<_> = m
        .vias()
        .map(|v| String::from_utf8_lossy(v.host()).into_owned())
        .collect();
    assert_eq!(hosts.len(), 60);
    assert_eq!(hosts[0], "proxy0.example");
    assert_eq!(hosts[59], "proxy59.example");
}

#[test]
fn huge_call_id_is_valid() {
    let cid = "x".repeat(20_000) + "@huge.example";
    let b = invite_with(1, &cid);
    let m = scan(&b).unwrap();
    assert_eq!(m.call_id().len(), cid.len());
}

#[test]
fn large_body_up_to_64k() {
    let body = "a".repeat(60_000);
    let mut b = String::from_utf8(invite_with(1, "big@x")).unwrap();
    b = b.replace(
        "Content-Length: 0",
        &format!("Content-Type: text/plain\r\nContent-Length: {}", body.len()),
    );
    b += &body;
    assert_eq!(scan(b.as_bytes()).unwrap().body().len(), 60_000);
    // A smaller configured limit answers 413.
    let limits = Limits {
        max_message_bytes: 4096,
        max_uri_bytes: 1024,
    };
    check(
        "limit_413",
        b.as_bytes(),
        "reply 413 message_too_large",
        &limits,
    );
}

#[test]
fn uri_too_long_is_414() {
    let b = String::from_utf8(invite_with(1, "u@x")).unwrap();
    let long = format!("sip:{}@biloxi.example", "u".repeat(9000));
    let b = b.replacen("sip:bob@biloxi.example", &long, 1);
    check(
        "uri_414",
        b.as_bytes(),
        "reply 414 uri_too_long",
        &Limits::default(),
    );
}

#[test]
fn every_truncation_of_a_message_is_refused_without_panic() {
    let body = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\n";
    let full = format!(
        "INVITE sip:bob@biloxi.example SIP/2.0\r\nVia: SIP/2.0/UDP a.example;branch=z9hG4bKt\r\n\
Max-Forwards: 70\r\nTo: <sip:bob@biloxi.example>\r\nFrom: <sip:a@a.example>;tag=1\r\nCall-ID: t@x\r\n\
CSeq: 1 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let full = full.as_bytes();
    assert!(scan(full).is_ok());
    for cut in 0..full.len() {
        let r = scan(&full[..cut]);
        assert!(
            r.is_err(),
            "a prefix of {cut} bytes must not pass as the whole message"
        );
    }
}

#[test]
fn binary_junk_is_dropped_and_never_panics() {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    for _ in 0..20_000 {
        let len = rng.random_range(0..1500);
        let junk: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        if let Err(e) = scan(&junk) {
            assert_eq!(e.verdict(), Verdict::Drop, "random bytes are not answered");
        }
    }
}

#[test]
fn mutated_messages_never_panic_and_answers_always_scan() {
    let base = invite_with(3, "mut@x");
    let mut rng = SmallRng::seed_from_u64(7);
    let mut answered = 0;
    for _ in 0..20_000 {
        let mut b = base.clone();
        for _ in 0..rng.random_range(1..4) {
            if b.is_empty() {
                break;
            }
            let i = rng.random_range(0..b.len());
            match rng.random_range(0..4) {
                0 => b[i] = rng.random(),
                1 => {
                    b.remove(i);
                }
                2 => b.insert(
                    i,
                    *b"\r\n :;,<>\"\\@\0".get(rng.random_range(0..12)).unwrap(),
                ),
                _ => b.truncate(i),
            }
        }
        if let Err(e) = scan(&b) {
            let mut out = Vec::new();
            if error_response(&e, Some(b"t"), &mut out) {
                answered += 1;
                assert!(out.starts_with(b"SIP/2.0 "));
            }
        }
    }
    assert!(
        answered > 1000,
        "mutations should often be answerable: {answered}"
    );
}

#[test]
fn request_uri_schemes() {
    let b = String::from_utf8(invite_with(1, "s@x")).unwrap();
    let sips = b.replacen("sip:bob@", "sips:bob@", 1);
    assert_eq!(
        scan(sips.as_bytes())
            .unwrap()
            .request_uri()
            .unwrap()
            .scheme(),
        Scheme::Sips
    );
}
