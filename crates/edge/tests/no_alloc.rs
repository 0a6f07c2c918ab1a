//! The edge's whole per-datagram decision allocates nothing: a new INVITE
//! (routed, Via and Record-Route added), its 200 OK (verified, Via popped),
//! the INVITE on a TCP connection, a keepalive, junk, and a refused request answered with 400, each through
//! `Proxy::handle`, counted by dhat.
//!
//! dhat counts every thread's allocations, so this binary runs without
//! libtest's harness (`harness = false`): only the measured code runs.

use std::net::SocketAddr;

use handover_edge::{BadInputLimiter, Outcome, Proxy, Table};
use handover_sip::ids::Hashing;
use handover_sip::{Flow, Limits, Transport};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    proxy_handle_does_not_allocate();
    // The line scripts/test.sh adds up, as libtest would print it.
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}

fn proxy_handle_does_not_allocate() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let h = Hashing::default();
    let backends: Vec<SocketAddr> = vec![
        "10.0.0.1:5070".parse().unwrap(),
        "10.0.0.2:5070".parse().unwrap(),
    ];
    let table = Table::new(backends, vec![true, true], 1, &h);
    let proxy = Proxy::new(
        "192.0.2.1:5060".parse().unwrap(),
        h,
        Limits::default(),
        true,
    )
    .with_listener(Transport::Tcp, "192.0.2.1:5060".parse().unwrap());
    let mut limiter = BadInputLimiter::new(1000, 8)
        .with_new_dialogs(1000)
        .with_ban(10);
    let ua: Flow = "198.51.100.7:33333".parse().unwrap();
    // The same phone on a TCP connection: rport forced, flow in the Record-Route.
    let tcp_ua: Flow = "tcp:198.51.100.7:40000".parse().unwrap();
    let invite = b"INVITE sip:bob@biloxi.example SIP/2.0\r\nVia: SIP/2.0/UDP 198.51.100.7:33333;branch=z9hG4bKa1;rport\r\n\
Max-Forwards: 70\r\nTo: <sip:bob@biloxi.example>\r\nFrom: <sip:alice@a.example>;tag=f1\r\nCall-ID: c1@x\r\n\
CSeq: 1 INVITE\r\nContact: <sip:alice@198.51.100.7:33333>\r\nContent-Length: 0\r\n\r\n";
    let bad = b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP a;branch=z9hG4bKb\r\nFrom: <sip:a@b>;tag=1\r\n\
To: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\n\r\n";
    let mut out = vec![0u8; 70_000];
    let mut resp = vec![0u8; 4096];

    // Warm-up outside the count: build the 200 OK from what was forwarded.
    let Outcome::Forward { len, .. } = proxy.handle(&table, &mut limiter, 0, ua, invite, &mut out)
    else {
        panic!("forwarded")
    };
    let fwd = String::from_utf8(out[..len].to_vec()).unwrap();
    let ok = fwd
        .replacen("INVITE sip:bob@biloxi.example SIP/2.0", "SIP/2.0 200 OK", 1)
        .replace(
            "To: <sip:bob@biloxi.example>",
            "To: <sip:bob@biloxi.example>;tag=b1",
        );
    let ok = ok.as_bytes();
    resp[..ok.len()].copy_from_slice(ok);
    let ok = &resp[..ok.len()];

    // Each kind takes the path it should (the count below is not vacuous).
    let backend: Flow = "10.0.0.1:5070".parse().unwrap();
    assert!(matches!(
        proxy.handle(&table, &mut limiter, 0, backend, ok, &mut out),
        Outcome::Forward { request: false, .. }
    ));
    assert!(matches!(
        proxy.handle(&table, &mut limiter, 0, ua, bad, &mut out),
        Outcome::Reply { status: 400, .. }
    ));

    let before = dhat::HeapStats::get();
    let mut n = 0;
    for _ in 0..100 {
        for (from, d) in [
            (ua, &invite[..]),
            (tcp_ua, &invite[..]),
            (backend, ok),
            (ua, b"\r\n\r\n"),
            (ua, b"\x16\x03\x01junk"),
            (ua, bad),
        ] {
            match proxy.handle(&table, &mut limiter, 0, from, d, &mut out) {
                Outcome::Forward { len, .. } | Outcome::Reply { len, .. } => n += len,
                Outcome::Pong { .. } => n += 2,
                Outcome::Drop(_) => n += 1,
            }
        }
    }
    let after = dhat::HeapStats::get();
    assert!(n > 0);
    dhat::assert_eq!(after.total_blocks - before.total_blocks, 0);
}
