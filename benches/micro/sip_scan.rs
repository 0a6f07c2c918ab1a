//! Scan-and-route and the forwarding rewrite of `handover-sip`, against a
//! full parse of the same bytes by rsip, in one run.
//!
//! `cargo bench -p handover-benches --bench sip_scan`
//!
//! - `scan_route`: what the edge does to pick a worker: scan, then the
//!   affinity key (hash of Call-ID for a new INVITE; the `k` parameter of our
//!   own Via for a response).
//! - `forward`: scan plus the whole stateless-proxy rewrite into a send
//!   buffer (new Via with stateless branch, received/rport, Max-Forwards,
//!   Route, `k` parameter).
//! - `rsip_parse`: `rsip::SipMessage::try_from`, rsip's full parse (headers
//!   stay untyped strings).
//! - `rsip_parse_typed`: the same plus the typed Via, CSeq and Call-ID a
//!   router needs, so both sides deliver the same facts.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use handover_sip::ids::{Bound, Hashing, hex_u64, parse_hex_u64};
use handover_sip::{Rewrite, scan};
use rsip::prelude::*;
use std::hint::black_box;

const SDP: &str = "v=0\r\no=alice 2890844526 2890844526 IN IP4 192.0.2.101\r\ns=-\r\n\
c=IN IP4 192.0.2.101\r\nt=0 0\r\nm=audio 49172 RTP/AVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";

fn invite() -> Vec<u8> {
    format!(
        "INVITE sip:bob@biloxi.example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf9;rport\r\n\
Max-Forwards: 70\r\n\
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: \"Bob\" <sip:bob@biloxi.example.com>\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 31862 INVITE\r\n\
Contact: <sip:alice@192.0.2.101:5060;transport=udp>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, REFER, NOTIFY, OPTIONS, UPDATE\r\n\
Supported: replaces, timer\r\n\
User-Agent: Handset/4.2\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    )
    .into_bytes()
}

/// A 200 OK answering that INVITE, as a callee sends it back through the
/// edge: our Via on top, SDP answer.
fn ok200() -> Vec<u8> {
    let sdp = "v=0\r\no=bob 2808844564 2808844564 IN IP4 192.0.2.4\r\ns=-\r\n\
c=IN IP4 192.0.2.4\r\nt=0 0\r\nm=audio 3456 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
a=rtpmap:101 telephone-event/8000\r\na=sendrecv\r\n";
    format!(
        "SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-hx5d2c8e1b9a0f4c37.0a1b2c3d;k=5d2c8e1b9a0f4c37\r\n\
Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf9;rport=5060;received=192.0.2.101\r\n\
Record-Route: <sip:192.0.2.1:5060;lr;k=5d2c8e1b9a0f4c37>\r\n\
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: \"Bob\" <sip:bob@biloxi.example.com>;tag=8321234356\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 31862 INVITE\r\n\
Contact: <sip:bob@192.0.2.4:5060>\r\n\
Allow: INVITE, ACK, CANCEL, BYE, REFER, NOTIFY, OPTIONS, UPDATE\r\n\
Supported: replaces, timer\r\n\
Server: PBX/7.1\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
    .into_bytes()
}

/// A bare 200 OK (no body, few headers): a BYE's answer.
fn ok200_bare() -> Vec<u8> {
    b"SIP/2.0 200 OK\r\n\
Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK-hx5d2c8e1b9a0f4c37.0a1b2c3d;k=5d2c8e1b9a0f4c37\r\n\
Via: SIP/2.0/UDP 192.0.2.101:5060;branch=z9hG4bK74bf9;rport=5060;received=192.0.2.101\r\n\
From: \"Alice\" <sip:alice@atlanta.example.com>;tag=9fxced76sl\r\n\
To: \"Bob\" <sip:bob@biloxi.example.com>;tag=8321234356\r\n\
Call-ID: 3848276298220188511@atlanta.example.com\r\n\
CSeq: 31863 BYE\r\n\
Content-Length: 0\r\n\r\n"
        .to_vec()
}

/// The edge's routing decision.
fn route(h: &Hashing, b: &[u8]) -> u64 {
    let m = scan(b).unwrap();
    if m.is_request() {
        h.affinity_key(m.call_id())
    } else {
        let k = m.top_via().param(b"k").and_then(|p| p.value).unwrap();
        parse_hex_u64(k.of(m.buf())).unwrap()
    }
}

fn forward(h: &Hashing, b: &[u8], out: &mut [u8]) -> usize {
    let m = scan(b).unwrap();
    let mut rw = Rewrite::new(&m);
    if m.is_request() {
        let key = hex_u64(h.affinity_key(m.call_id()));
        let branch = h.stateless_branch(&m);
        rw.set_received("198.51.100.7:33333".parse().unwrap())
            .unwrap();
        rw.decrement_max_forwards().unwrap().unwrap();
        rw.set_uri_param(m.request_uri().unwrap(), b"k", Some(&key))
            .unwrap();
        rw.prepend_via(&[
            b"SIP/2.0/UDP 192.0.2.1:5060;branch=",
            branch.as_bytes(),
            b";k=",
            &key,
        ])
        .unwrap();
    } else {
        rw.remove_top_via().unwrap();
    }
    rw.write_to(out).unwrap()
}

fn rsip_typed(b: &[u8]) -> u32 {
    let m = rsip::SipMessage::try_from(b).unwrap();
    let via = m.via_header().unwrap().typed().unwrap();
    let cseq = m.cseq_header().unwrap().typed().unwrap();
    let cid = m.call_id_header().unwrap().value().len();
    cseq.seq + via.branch().map_or(0, |b| b.to_string().len() as u32) + cid as u32
}

fn bench(c: &mut Criterion) {
    let h = Hashing::default();
    let msgs = [
        ("invite", invite()),
        ("ok200", ok200()),
        ("ok200_bare", ok200_bare()),
    ];
    let mut out = vec![0u8; 4096];
    for (name, b) in &msgs {
        assert!(rsip::SipMessage::try_from(b.as_slice()).is_ok());
        let mut g = c.benchmark_group(format!("sip/{name}_{}B", b.len()));
        g.throughput(Throughput::Bytes(b.len() as u64));
        g.bench_function(BenchmarkId::from_parameter("scan_route"), |bn| {
            bn.iter(|| route(&h, black_box(b)))
        });
        g.bench_function(BenchmarkId::from_parameter("forward"), |bn| {
            bn.iter(|| forward(&h, black_box(b), &mut out))
        });
        g.bench_function(BenchmarkId::from_parameter("rsip_parse"), |bn| {
            bn.iter(|| rsip::SipMessage::try_from(black_box(b.as_slice())).unwrap())
        });
        g.bench_function(BenchmarkId::from_parameter("rsip_parse_typed"), |bn| {
            bn.iter(|| rsip_typed(black_box(b)))
        });
        g.finish();
    }
    // What the shard key's tag adds per message (issue 16): the edge
    // makes one per Record-Route and checks one per in-dialog request
    // with a `k`, beside the affinity hash every request has.
    let cid = b"a84b4c76e66710@pc33.atlanta.com";
    let token = h.key_token(7, Bound::CallId, cid);
    let mut g = c.benchmark_group("ids/key_token");
    g.bench_function(BenchmarkId::from_parameter("affinity_key"), |bn| {
        bn.iter(|| h.affinity_key(black_box(cid)))
    });
    g.bench_function(BenchmarkId::from_parameter("key_token"), |bn| {
        bn.iter(|| h.key_token(black_box(7), Bound::CallId, black_box(cid)))
    });
    g.bench_function(BenchmarkId::from_parameter("open_key_token"), |bn| {
        bn.iter(|| h.open_key_token(black_box(&token), Bound::CallId, black_box(cid)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
