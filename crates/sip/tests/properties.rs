//! Property tests: build → scan gives back the same fields, in every spelling
//! the grammar allows (compact forms, case, folding, LWS); rewrites keep the
//! message well formed; nothing panics on any input.

use handover_sip::build::error_response;
use handover_sip::ids::Hashing;
use handover_sip::{Rewrite, Rport, scan};
use proptest::prelude::*;

#[derive(Debug, Clone)]
pub struct Spec {
    pub method: String,
    pub user: String,
    pub host: String,
    pub port: Option<u16>,
    pub via_host: String,
    pub via_port: Option<u16>,
    pub branch: String,
    pub from_tag: String,
    pub to_tag: Option<String>,
    pub call_id: String,
    pub cseq: u32,
    pub max_forwards: u8,
    pub body: String,
}

pub fn host() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,10}(\\.[a-z][a-z0-9]{0,8}){0,3}",
        (any::<u8>(), any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        any::<[u16; 8]>().prop_map(|s| format!("[{}]", std::net::Ipv6Addr::from(s))),
    ]
}

pub fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![
            Just("INVITE".to_string()),
            Just("BYE".to_string()),
            Just("OPTIONS".to_string()),
            Just("REFER".to_string()),
            Just("NOTIFY".to_string()),
            "[A-Z]{3,10}",
        ],
        "[a-zA-Z0-9_.!~*'()&=+$,;?/-]{1,16}",
        host(),
        proptest::option::of(1u16..),
        host(),
        proptest::option::of(1u16..),
        "[a-zA-Z0-9.!%*_+`'~-]{1,32}",
        "[a-zA-Z0-9]{1,20}",
        proptest::option::of("[a-zA-Z0-9]{1,20}"),
        (
            "[a-zA-Z0-9.!%*_+`'~()<>:\\\\\"/\\[\\]?{}-]{1,40}(@[a-z0-9.]{1,20})?",
            0u32..(1 << 31),
            any::<u8>(),
            "[ -~\r\n]{0,300}",
        ),
    )
        .prop_map(
            |(
                method,
                user,
                host,
                port,
                via_host,
                via_port,
                b,
                from_tag,
                to_tag,
                (call_id, cseq, mf, body),
            )| Spec {
                method,
                user,
                host,
                port,
                via_host,
                via_port,
                branch: format!("z9hG4bK{b}"),
                from_tag,
                to_tag,
                call_id,
                cseq,
                max_forwards: mf,
                body,
            },
        )
}

/// How to spell the headers.
#[derive(Debug, Clone, Copy)]
pub struct Style {
    pub compact: bool,
    pub upper: bool,
    pub fold: bool,
    pub spaces: bool,
}

pub fn style() -> impl Strategy<Value = Style> {
    (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()).prop_map(
        |(compact, upper, fold, spaces)| Style {
            compact,
            upper,
            fold,
            spaces,
        },
    )
}

pub fn render(s: &Spec, st: Style) -> Vec<u8> {
    let name = |long: &str, short: &str| {
        let n = if st.compact && !short.is_empty() {
            short
        } else {
            long
        };
        if st.upper {
            n.to_uppercase()
        } else {
            n.to_string()
        }
    };
    let colon = if st.spaces { " :  " } else { ": " };
    let fold = if st.fold { "\r\n  " } else { " " };
    let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
    let mut m = format!(
        "{} sip:{}@{}{} SIP/2.0\r\n",
        s.method,
        s.user,
        s.host,
        port(s.port)
    );
    m += &format!(
        "{}{colon}SIP/2.0/UDP{fold}{}{};branch={};rport\r\n",
        name("Via", "v"),
        s.via_host,
        port(s.via_port),
        s.branch
    );
    m += &format!("{}{colon}{}\r\n", name("Max-Forwards", ""), s.max_forwards);
    m += &format!(
        "{}{colon}<sip:{}@{}>;tag={}\r\n",
        name("From", "f"),
        s.user,
        s.host,
        s.from_tag
    );
    m += &format!("{}{colon}<sip:peer@{}>", name("To", "t"), s.host);
    if let Some(t) = &s.to_tag {
        m += &format!(";tag={t}");
    }
    m += "\r\n";
    m += &format!("{}{colon}{}\r\n", name("Call-ID", "i"), s.call_id);
    m += &format!(
        "{}{colon}{}{fold}{}\r\n",
        name("CSeq", ""),
        s.cseq,
        s.method
    );
    m += &format!("{}{colon}text/plain\r\n", name("Content-Type", "c"));
    m += &format!(
        "{}{colon}{}\r\n\r\n",
        name("Content-Length", "l"),
        s.body.len()
    );
    m += &s.body;
    m.into_bytes()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn build_scan_same_fields(s in spec(), st in style()) {
        let b = render(&s, st);
        let m = scan(&b).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&b))))?;
        let u = m.request_uri().unwrap();
        prop_assert_eq!(m.method_bytes(), s.method.as_bytes());
        prop_assert_eq!(u.user().unwrap(), s.user.as_bytes());
        prop_assert_eq!(u.host(), s.host.as_bytes());
        prop_assert_eq!(u.port(), s.port);
        prop_assert_eq!(m.top_via().host(), s.via_host.as_bytes());
        prop_assert_eq!(m.top_via().port(), s.via_port);
        prop_assert_eq!(m.top_via().branch().unwrap(), s.branch.as_bytes());
        prop_assert_eq!(m.top_via().rport(), Rport::Requested);
        prop_assert_eq!(m.from_tag().unwrap(), s.from_tag.as_bytes());
        prop_assert_eq!(m.to_tag(), s.to_tag.as_deref().map(str::as_bytes));
        prop_assert_eq!(m.call_id(), s.call_id.as_bytes());
        prop_assert_eq!(m.cseq().seq, s.cseq);
        prop_assert_eq!(m.max_forwards(), Some(u32::from(s.max_forwards)));
        prop_assert_eq!(m.body(), s.body.as_bytes());
    }

    #[test]
    fn forward_rewrite_keeps_message_well_formed(s in spec(), st in style(), src in any::<std::net::SocketAddr>(), key in any::<u64>()) {
        let b = render(&s, st);
        let m = scan(&b).unwrap();
        let h = Hashing::default();
        let branch = h.stateless_branch(&m);
        let khex = handover_sip::ids::hex_u64(key);
        let mut rw = Rewrite::new(&m);
        rw.set_received(src).unwrap();
        let mf_ok = rw.decrement_max_forwards().unwrap();
        prop_assert_eq!(mf_ok.is_ok(), s.max_forwards > 0);
        rw.set_uri_param(m.request_uri().unwrap(), b"k", Some(&khex)).unwrap();
        rw.prepend_via(&[b"SIP/2.0/UDP 192.0.2.1:5060;branch=", branch.as_bytes(), b";k=", &khex]).unwrap();
        let mut out = vec![0u8; 70_000];
        let n = rw.write_to(&mut out).unwrap();
        prop_assert_eq!(n, rw.output_len());
        let f = scan(&out[..n]).map_err(|e| TestCaseError::fail(format!("{e}: {}", String::from_utf8_lossy(&out[..n]))))?;
        let vias: Vec<_> = f.vias().collect();
        prop_assert_eq!(vias.len(), 2);
        prop_assert_eq!(vias[0].branch().unwrap(), branch.as_bytes());
        prop_assert_eq!(vias[1].branch().unwrap(), s.branch.as_bytes());
        prop_assert_eq!(vias[1].rport(), Rport::Value(src.port()));
        let ip = src.ip().to_string();
        prop_assert_eq!(vias[1].received().unwrap(), ip.as_bytes());
        prop_assert_eq!(f.request_uri().unwrap().param(b"k").unwrap(), &khex[..]);
        prop_assert_eq!(f.call_id(), m.call_id());
        prop_assert_eq!(f.body(), m.body());
        if s.max_forwards > 0 {
            prop_assert_eq!(f.max_forwards(), Some(u32::from(s.max_forwards) - 1));
        }
        // The response path: popping our Via gives back the sender's Via.
        let resp = format!(
            "SIP/2.0 200 OK\r\nVia: {}\r\nVia: {}\r\nFrom: <sip:a@b>;tag={}\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: {}\r\nCSeq: {} {}\r\n\r\n",
            String::from_utf8_lossy(vias[0].span().of(f.buf())),
            String::from_utf8_lossy(vias[1].span().of(f.buf())),
            s.from_tag, s.call_id, s.cseq, s.method
        );
        let r = scan(resp.as_bytes()).unwrap();
        prop_assert!(h.verify_response(&r), "the response to our own forward verifies");
        let mut rw = Rewrite::new(&r);
        rw.remove_top_via().unwrap();
        let n = rw.write_to(&mut out).unwrap();
        let back = scan(&out[..n]).unwrap();
        prop_assert_eq!(back.top_via().branch().unwrap(), s.branch.as_bytes());
        prop_assert_eq!(back.vias().count(), 1);
    }

    #[test]
    fn any_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Err(e) = scan(&b) {
            let mut out = Vec::new();
            let _ = error_response(&e, Some(b"t"), &mut out);
        }
    }

    #[test]
    fn sip_shaped_noise_never_panics(
        lines in proptest::collection::vec("[A-Za-z:;,<>@\"\\\\ \t=./0-9-]{0,40}", 0..20),
        first in prop_oneof![Just("INVITE sip:a@b SIP/2.0"), Just("SIP/2.0 200 OK"), Just("ACK sip:x SIP/2.0")],
    ) {
        let mut m = String::from(first);
        for l in &lines {
            m += "\r\n";
            m += l;
        }
        m += "\r\n\r\n";
        if let Err(e) = scan(m.as_bytes()) {
            let mut out = Vec::new();
            if error_response(&e, Some(b"t"), &mut out) {
                prop_assert!(out.starts_with(b"SIP/2.0 "));
            }
        }
    }
}
