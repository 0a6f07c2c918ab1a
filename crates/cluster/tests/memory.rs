//! What a replicated call costs every replica's table in heap bytes (dhat
//! counts every byte the test allocates): calls stored as a worker writes
//! them (its first upsert with our 2xx to A, then A's ACK), records the
//! size of a SIPp call's compressed one. Issue 19's budget is 2 KiB per
//! active call for a worker's whole RSS with three workers, where each
//! keeps a third of the calls live and every call's record here.
//!
//! Runs without libtest's harness (`harness = false`), so dhat sees only
//! this test's allocations.

use handover_cluster::{Table, pb};
use pb::command::Command as C;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The table's heap bytes per stored call may not grow past this.
const BUDGET: usize = 760;

/// Bytes that do not compress, as a compressed record's.
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let n = 20_000u64;
    let mut t = Table::new(4096);
    for node in 1..=3 {
        t.apply(C::Up(pb::MemberUp { node }));
    }
    let (before, blocks_before) = {
        let s = dhat::HeapStats::get();
        (s.curr_bytes, s.curr_blocks)
    };
    for i in 0..n {
        let call_id = format!("{i}-4242@127.0.0.1").into_bytes();
        let key = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let owner = t.owner_of_key(key);
        t.apply(C::Upsert(pb::CallUpsert {
            call_id: call_id.clone(),
            key,
            version: 1,
            owner,
            // SIPp's call record, LZ4-compressed: about 480 bytes.
            record: noise(480, i),
            record_lz4: true,
            other_call_id: format!("{:032x}", key as u128 * 7).into_bytes(),
            a_ok: noise(556, !i),
            answered_unix_ms: 1_700_000_000_000 + i,
            leg_call_id: Vec::new(),
            hang_up: None,
        }));
        t.apply(C::Acked(pb::CallAcked { call_id }));
    }
    assert_eq!(t.call_count(), n as usize);
    let s = dhat::HeapStats::get();
    let per = (s.curr_bytes - before) / n as usize;
    let blocks = (s.curr_blocks - blocks_before) as f64 / n as f64;
    println!("table: {per} heap bytes per stored call ({blocks:.1} blocks)");
    dhat::assert!(
        per <= BUDGET,
        "{per} bytes per call in the table (budget {BUDGET})"
    );
}
