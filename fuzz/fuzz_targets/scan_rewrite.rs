//! Any datagram through the whole edge path: scan; if it is a message,
//! compute its key and stateless branch, rewrite it as a proxy would and
//! check the output scans with the same Call-ID, body and one more Via; if
//! it is refused, build the answer its verdict asks for and check it is a
//! response with the right status.
#![no_main]

use handover_sip::build::{SliceSink, error_response};
use handover_sip::ids::{Hashing, hex_u64};
use handover_sip::{Rewrite, Verdict, scan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut out = vec![0u8; 70_000];
    match scan(data) {
        Ok(m) => {
            let h = Hashing::default();
            let key = hex_u64(h.affinity_key(m.call_id()));
            let mut rw = Rewrite::new(&m);
            if m.is_request() {
                let branch = h.stateless_branch(&m);
                rw.set_received("192.0.2.1:5060".parse().unwrap()).unwrap();
                let _ = rw.decrement_max_forwards().unwrap();
                if m.route_field().is_some() {
                    let _ = rw.remove_top_route();
                }
                rw.set_uri_param(m.request_uri().unwrap(), b"k", Some(&key)).unwrap();
                rw.prepend_via(&[b"SIP/2.0/UDP 192.0.2.9:5060;branch=", branch.as_bytes()]).unwrap();
            } else {
                rw.remove_top_via().unwrap();
            }
            let n = rw.write_to(&mut out).unwrap();
            assert_eq!(n, rw.output_len());
            if m.is_request() {
                let f = scan(&out[..n]).expect("a rewritten request scans");
                assert_eq!(f.call_id(), m.call_id());
                assert_eq!(f.body(), m.body());
                assert_eq!(f.top_via().host(), b"192.0.2.9");
                assert_eq!(f.request_uri().unwrap().param(b"k"), Some(&key[..]));
            }
        }
        Err(e) => {
            let mut sink = SliceSink::new(&mut out);
            let answered = error_response(&e, Some(b"t"), &mut sink);
            assert_eq!(answered, e.verdict() != Verdict::Drop);
            if let (true, Some(n)) = (answered, sink.finish()) {
                let status = format!("SIP/2.0 {} ", e.reason.status());
                assert!(out[..n].starts_with(status.as_bytes()));
            }
        }
    }
});
