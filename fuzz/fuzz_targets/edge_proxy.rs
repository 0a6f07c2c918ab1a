//! Any datagram, from a client or from a backend, through the edge's
//! per-datagram decision (`Proxy::handle`): no panic; what it forwards
//! scans; what it answers is a response with the status it claims.
#![no_main]

use std::net::SocketAddr;

use handover_edge::{BadInputLimiter, Outcome, Proxy, Table};
use handover_sip::ids::Hashing;
use handover_sip::{Flow, Limits, Transport, scan};
use libfuzzer_sys::fuzz_target;

/// Built once: the shard table is 4096 rendezvous computations.
struct Setup {
    tables: Vec<Table>,
    proxies: [Proxy; 2],
    backend: SocketAddr,
}

fn setup() -> &'static Setup {
    static S: std::sync::OnceLock<Setup> = std::sync::OnceLock::new();
    S.get_or_init(|| {
        let h = Hashing::default();
        let backends: Vec<SocketAddr> = vec!["10.0.0.1:5070".parse().unwrap(), "10.0.0.2:5070".parse().unwrap()];
        let tables = (0..4)
            .map(|i| Table::new(backends.clone(), vec![i & 1 == 0, i & 2 == 0], 1, &h))
            .collect();
        let edge = "192.0.2.1:5060".parse().unwrap();
        Setup {
            tables,
            proxies: [
                Proxy::new(edge, h, Limits::default(), true)
                    .with_listener(Transport::Tcp, edge)
                    .with_listener(Transport::Tls, SocketAddr::new(edge.ip(), 5061)),
                Proxy::new(edge, h, Limits::default(), false),
            ],
            backend: backends[0],
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, dgram)) = data.split_first() else { return };
    let s = setup();
    let table = &s.tables[usize::from((sel >> 1) & 3)];
    let proxy = &s.proxies[usize::from((sel >> 3) & 1)];
    let mut limiter = BadInputLimiter::new(u32::from(sel >> 4), 4);
    // Clients on UDP, and (the top bit) on a TLS connection.
    let from = match (sel & 1, sel >> 7) {
        (0, _) => Flow::udp(s.backend),
        (_, 0) => "198.51.100.7:33333".parse().unwrap(),
        _ => "tls:198.51.100.7:33333".parse().unwrap(),
    };
    let mut out = vec![0u8; 70_000];
    match proxy.handle(table, &mut limiter, 0, from, dgram, &mut out) {
        Outcome::Forward { len, request, .. } => {
            let m = scan(&out[..len]).expect("what the edge forwards scans");
            assert_eq!(m.is_request(), request);
        }
        Outcome::Reply { len, status, .. } => {
            let s = format!("SIP/2.0 {status} ");
            assert!(out[..len].starts_with(s.as_bytes()));
        }
        Outcome::Pong { .. } => assert_eq!(&out[..2], b"\r\n"),
        Outcome::Drop(_) => {}
    }
});
