//! What a held call costs the B2BUA in heap bytes (dhat counts every byte
//! the test allocates): calls set up as SIPp's `uac.xml` and `uas.xml` do
//! (INVITE with SDP, 180, 200 with SDP, ACK), then left up past their
//! transactions' timers. Issue 19's budget is 2 KiB per active call for a
//! worker's whole RSS (docs/benchmarks.md measures that); this is the
//! B2BUA's part, measured without an RSS's noise.
//!
//! Runs without libtest's harness (`harness = false`), so dhat sees only
//! this test's allocations.

use handover_sip::scan;

mod common;
use common::*;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The B2BUA's heap bytes per held call may not grow past this.
const BUDGET: usize = 1950;
/// Nor per call just answered: a worker's RSS is set by this peak (calls
/// set up at 2,000/s keep 64,000 of them young at once, and what they free
/// 32 s later stays resident as holes between later calls). The same since
/// an INVITE transaction idle in Accepted is only its deadline.
const YOUNG_BUDGET: usize = 1950;

/// A's INVITE for call `i`, as SIPp's `uac.xml` sends it through the edge.
fn invite(i: u32) -> String {
    a_invite()
        .replace("Call-ID: a-call", &format!("Call-ID: {i}-4242@127.0.0.1"))
        .replace(";tag=at", &format!(";tag=4242uac{i}"))
        .replace("branch=z9hG4bKa1", &format!("branch=z9hG4bK-4242-{i}-0"))
}

/// A's ACK of our 2xx (tag `a_tag`) for call `i`.
fn ack(i: u32, a_tag: &str) -> String {
    from_a("ACK", 1, &format!("ack{i}"), a_tag, None)
        .replace("Call-ID: a-call", &format!("Call-ID: {i}-4242@127.0.0.1"))
        .replace(";tag=at", &format!(";tag=4242uac{i}"))
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let n = 10_000u32;
    let mut b = b2bua();
    let (before, blocks_before) = {
        let s = dhat::HeapStats::get();
        (s.curr_bytes, s.curr_blocks)
    };
    for i in 0..n {
        let t = u64::from(i);
        b.handle_datagram(at(t), invite(i).as_bytes());
        let sent = out(&mut b);
        let bi = sent
            .iter()
            .find(|(_, m)| first_line(m).starts_with("INVITE "))
            .expect("INVITE to B")
            .1
            .clone();
        let m = scan(&bi).unwrap();
        b.handle_datagram(at(t + 1), b_resp(&m, "180 Ringing", "bt", None).as_bytes());
        b.handle_datagram(
            at(t + 2),
            b_resp(&m, "200 OK", "bt", Some(SDP_B)).as_bytes(),
        );
        let sent = out(&mut b);
        let ok = sent
            .iter()
            .find(|(_, m)| first_line(m) == "SIP/2.0 200 OK")
            .expect("2xx to A");
        let a_tag = String::from_utf8(scan(&ok.1).unwrap().to_tag().unwrap().to_vec()).unwrap();
        b.handle_datagram(at(t + 3), ack(i, &a_tag).as_bytes());
        let _ = out(&mut b);
    }
    let young = (dhat::HeapStats::get().curr_bytes - before) / n as usize;
    println!(
        "b2bua: {young} heap bytes per call just answered (its transactions in their last state)"
    );
    dhat::assert!(
        young <= YOUNG_BUDGET,
        "{young} bytes per call just answered"
    );
    // Past every transaction's timers (64·T1), the calls still up.
    let mut now = u64::from(n) + 3;
    while let Some(t) = b.poll_timeout() {
        let ms = u64::try_from(t.since_epoch().as_millis()).unwrap();
        if ms > u64::from(n) + 40_000 {
            break;
        }
        now = now.max(ms);
        b.handle_timeout(at(now));
        let _ = out(&mut b);
    }
    b.handle_timeout(at(u64::from(n) + 40_000));
    let _ = out(&mut b);
    assert_eq!(b.calls_active(), n as usize, "every call still up");
    let s = dhat::HeapStats::get();
    let per = (s.curr_bytes - before) / n as usize;
    // Each block also costs the allocator a header and its rounding (glibc:
    // 8 to 23 bytes), which RSS shows and these bytes do not.
    let blocks = (s.curr_blocks - blocks_before) as f64 / f64::from(n);
    println!("b2bua: {per} heap bytes in {blocks:.1} blocks per held call ({n} calls)");
    dhat::assert!(per <= BUDGET, "{per} bytes per held call");
    drop(b);
    // The line scripts/test.sh adds up, as libtest would print it.
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
