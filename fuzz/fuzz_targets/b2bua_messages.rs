//! Datagrams into a worker's B2BUA that holds one answered, replicated
//! call (its ids fixed by a seeded generator), with the clock moving
//! between them: no panic, and everything the B2BUA sends scans (an answer
//! to what does not scan may lack a header the input lacked).
//!
//! Input: a first byte (bit 0: local transfer mode), then datagrams
//! separated by a zero byte; each one's first byte moves the
//! clock (its value × 50 ms) before it is delivered, and timers run. In a
//! datagram, `$B` stands for leg B's Call-ID, `$T` for our tag on leg B
//! and `$A` for our tag on leg A, so a corpus can name the live dialogs
//! (see fuzz/README.md).
#![no_main]

use std::time::Duration;

use handover_call::{B2bua, Config, Replication, Routes, TransferMode};
use handover_sip::ids::Hashing;
use handover_sip::scan;
use handover_txn::{Instant, TimerConfig};
use libfuzzer_sys::fuzz_target;

struct Seq(u64);

impl rand_core::RngCore for Seq {
    fn next_u32(&mut self) -> u32 {
        self.next_u64() as u32
    }
    fn next_u64(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0
    }
    fn fill_bytes(&mut self, d: &mut [u8]) {
        rand_core::impls::fill_bytes_via_next(self, d)
    }
}

const SDP: &str = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 6000 RTP/AVP 0\r\n";

fn at(ms: u64) -> Instant {
    Instant::from_epoch(Duration::from_millis(ms))
}

fn b2bua(mode: TransferMode) -> B2bua<Seq> {
    let mut routes = Routes::default();
    for spec in ["b=127.0.0.1:5071", "c=127.0.0.1:5072"] {
        routes.add(spec).expect("a valid route");
    }
    let cfg = Config {
        advertised: "127.0.0.1:5060".into(),
        timers: TimerConfig::default(),
        hashing: Hashing::default(),
        routes,
        max_call_age: Duration::from_secs(3600),
        ring_timeout: Duration::from_secs(60),
        transfer_mode: mode,
        trusted: Default::default(),
        max_calls: 16,
        max_calls_per_source: 0,
        limits: Default::default(),
        identity_headers: Vec::new(),
        assert_identity: false,
    };
    let mut b = B2bua::new(cfg, Seq(7));
    b.set_replication(true);
    b.set_member(1);
    b
}

/// A B2BUA with call `a-call` answered and acknowledged, and its ids
/// (leg B's Call-ID, our tag on leg B, our tag on leg A).
fn answered(mode: TransferMode) -> (B2bua<Seq>, [Vec<u8>; 3]) {
    let mut b = b2bua(mode);
    let inv = format!(
        "INVITE sip:b@127.0.0.1:5060 SIP/2.0\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hxedge;k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKa1;received=127.0.0.1;rport=5061\r\n\
Record-Route: <sip:127.0.0.1:5060;lr;k=1>\r\nMax-Forwards: 69\r\n\
From: <sip:alice@127.0.0.1:5061>;tag=at\r\nTo: <sip:b@127.0.0.1:5060>\r\nCall-ID: a-call\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:alice@127.0.0.1:5061>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    b.handle_datagram(at(0), inv.as_bytes());
    let sent: Vec<Vec<u8>> = std::iter::from_fn(|| b.poll_transmit()).map(|(_, m)| m).collect();
    let bi_bytes = sent
        .into_iter()
        .find(|m| m.starts_with(b"INVITE "))
        .expect("an INVITE to B");
    let bi = scan(&bi_bytes).expect("it scans");
    let b_call_id = bi.call_id().to_vec();
    let b_tag = bi.from_tag().expect("our tag").to_vec();
    let ok = format!(
        "SIP/2.0 200 OK\r\nVia: {}\r\nFrom: {}\r\nTo: {};tag=bt\r\nCall-ID: {}\r\nCSeq: 1 INVITE\r\n\
Contact: <sip:b@127.0.0.1:5071>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{SDP}",
        String::from_utf8_lossy(bi.top_via().span().of(bi.buf())),
        String::from_utf8_lossy(bi.from_field().value.of(bi.buf())),
        String::from_utf8_lossy(bi.to_field().value.of(bi.buf())),
        String::from_utf8_lossy(&b_call_id),
        SDP.len()
    );
    b.handle_datagram(at(10), ok.as_bytes());
    while let Some(r) = b.poll_replication() {
        if let Replication::Upsert(rec) = r {
            b.stored(&rec.id, rec.version);
            b.committed(at(20), &rec.id);
        }
    }
    let a_tag = std::iter::from_fn(|| b.poll_transmit())
        .map(|(_, m)| m)
        .find(|m| m.starts_with(b"SIP/2.0 200"))
        .and_then(|m| scan(&m).ok().and_then(|r| r.to_tag().map(<[u8]>::to_vec)))
        .expect("the 2xx to A");
    let ack = format!(
        "ACK sip:b2bua@127.0.0.1:5060;k=1 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bK-hxack;k=1\r\n\
Via: SIP/2.0/UDP 127.0.0.1:5061;branch=z9hG4bKack\r\nMax-Forwards: 69\r\nFrom: <sip:alice@127.0.0.1:5061>;tag=at\r\n\
To: <sip:b@127.0.0.1:5060>;tag={}\r\nCall-ID: a-call\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        String::from_utf8_lossy(&a_tag)
    );
    b.handle_datagram(at(30), ack.as_bytes());
    while b.poll_transmit().is_some() {}
    (b, [b_call_id, b_tag, a_tag])
}

/// `d` with the placeholders filled in.
fn fill(d: &[u8], ids: &[Vec<u8>; 3]) -> Vec<u8> {
    let mut out = Vec::with_capacity(d.len() + 64);
    let mut i = 0;
    while i < d.len() {
        match (d[i], d.get(i + 1)) {
            (b'$', Some(b'B')) => out.extend_from_slice(&ids[0]),
            (b'$', Some(b'T')) => out.extend_from_slice(&ids[1]),
            (b'$', Some(b'A')) => out.extend_from_slice(&ids[2]),
            (c, _) => {
                out.push(c);
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else { return };
    let mode = if sel & 1 == 0 {
        TransferMode::Passthrough
    } else {
        TransferMode::Local
    };
    let (mut b, ids) = answered(mode);
    let mut now = 100;
    for chunk in data.split(|&c| c == 0).filter(|c| !c.is_empty()).take(32) {
        let (&step, dgram) = chunk.split_first().expect("not empty");
        now += u64::from(step) * 50;
        b.handle_timeout(at(now));
        let d = fill(dgram, &ids);
        b.handle_datagram(at(now), &d);
        let whole = scan(&d).is_ok();
        while let Some((_, out)) = b.poll_transmit() {
            if !whole && (out.starts_with(b"SIP/2.0 4") || out.starts_with(b"SIP/2.0 5")) {
                continue;
            }
            if let Err(e) = scan(&out) {
                panic!("sent what does not scan ({e:?}):\n{}", String::from_utf8_lossy(&out));
            }
        }
        while let Some(r) = b.poll_replication() {
            if let Replication::Upsert(rec) = r {
                b.stored(&rec.id, rec.version);
                b.committed(at(now), &rec.id);
            }
        }
    }
});
