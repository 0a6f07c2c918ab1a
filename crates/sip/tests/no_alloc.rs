//! The scan-and-rewrite path allocates nothing: dhat counts every heap
//! allocation of this test binary while a request and a response go through
//! the whole edge path (scan, routing key, stateless branch, rewrite into a
//! send buffer, and an error answer into a fixed buffer).
//!
//! dhat counts the allocations of every thread, so this binary runs without
//! libtest's harness (`harness = false`): libtest's own threads allocate at
//! times of their own (once, under load in CI, 4 blocks in the loop), and
//! here nothing but the loop runs.

use handover_sip::build::{SliceSink, error_response};
use handover_sip::ids::{Hashing, hex_u64};
use handover_sip::{Rewrite, scan};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const INVITE: &[u8] = b"INVITE sip:bob@biloxi.example;transport=udp SIP/2.0\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example:5060;branch=z9hG4bK776asdhds;rport\r\n\
Route: <sip:edge.example;lr>\r\nMax-Forwards: 70\r\nTo: Bob <sip:bob@biloxi.example>\r\n\
From: Alice <sip:alice@atlanta.example>;tag=1928301774\r\nCall-ID: a84b4c76e66710@pc33.atlanta.example\r\n\
CSeq: 314159 INVITE\r\nContact: <sip:alice@pc33.atlanta.example>\r\nContent-Type: application/sdp\r\n\
Content-Length: 4\r\n\r\nv=0\n";

const OK200: &[u8] = b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP edge.example:5060;branch=z9hG4bK-hx1;k=00000000000000ff\r\n\
Via: SIP/2.0/UDP pc33.atlanta.example:5060;branch=z9hG4bK776asdhds;rport=5060;received=192.0.2.1\r\n\
To: Bob <sip:bob@biloxi.example>;tag=a6c85cf\r\nFrom: Alice <sip:alice@atlanta.example>;tag=1928301774\r\n\
Call-ID: a84b4c76e66710@pc33.atlanta.example\r\nCSeq: 314159 INVITE\r\nContent-Length: 0\r\n\r\n";

fn main() {
    scan_route_and_rewrite_do_not_allocate();
    // The line scripts/test.sh adds up, as libtest would print it.
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn scan_route_and_rewrite_do_not_allocate() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let src: std::net::SocketAddr = "198.51.100.7:33333".parse().unwrap();
    let bad = b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKb\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
    let hashing = Hashing::default();
    let mut out = [0u8; 4096];
    let mut total = 0usize;

    let before = dhat::HeapStats::get();
    for _ in 0..100 {
        // Request: key from Call-ID, stateless branch, full proxy rewrite.
        let m = scan(INVITE).unwrap();
        let key = hex_u64(hashing.affinity_key(m.call_id()));
        let branch = hashing.stateless_branch(&m);
        let mut rw = Rewrite::new(&m);
        rw.set_received(src).unwrap();
        rw.decrement_max_forwards().unwrap().unwrap();
        rw.remove_top_route().unwrap();
        rw.set_uri_param(m.request_uri().unwrap(), b"k", Some(&key))
            .unwrap();
        rw.prepend_via(&[
            b"SIP/2.0/UDP 192.0.2.10:5060;branch=",
            branch.as_bytes(),
            b";k=",
            &key,
        ])
        .unwrap();
        total += rw.write_to(&mut out).unwrap();

        // Response: key from our Via, pop it.
        let r = scan(OK200).unwrap();
        let k = r.top_via().param(b"k").unwrap().value.unwrap().of(r.buf());
        total += handover_sip::ids::parse_hex_u64(k).unwrap() as usize & 1;
        let mut rw = Rewrite::new(&r);
        rw.remove_top_via().unwrap();
        total += rw.write_to(&mut out).unwrap();

        // A refused request answered from a fixed buffer.
        let e = scan(bad).unwrap_err();
        let mut sink = SliceSink::new(&mut out);
        assert!(error_response(&e, Some(b"edge"), &mut sink));
        total += sink.finish().unwrap();
    }
    let after = dhat::HeapStats::get();
    assert!(total > 0);
    dhat::assert_eq!(after.total_blocks - before.total_blocks, 0);
}
