//! What a binding costs the location service in heap bytes (dhat counts
//! every byte the test allocates): 100,000 phones, one binding each, as
//! `REGISTER sip:… Contact: <sip:uNNNNN@10.1.x.y:5060>` leaves them. The
//! issue's budget is 512 bytes per binding per replica for everything a
//! worker keeps; the locations are the part that stays.
//!
//! Runs without libtest's harness (`harness = false`), so dhat sees only
//! this test's allocations.

use handover_registrar::{Binding, Locations};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

/// The budget of the locations per binding, bytes (see docs/benchmarks.md
/// for a worker's whole RSS per binding).
const BUDGET: usize = 300;

fn main() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let n = 100_000u64;
    let before = dhat::HeapStats::get().curr_bytes;
    let mut l = Locations::default();
    for i in 0..n {
        let aor = format!("u{i}@example.com");
        let flow = format!("192.0.2.{}:{}", i % 250 + 1, 5060 + i % 1000);
        l.put(
            i.wrapping_mul(0x9E37_79B9_7F4A_7C15),
            aor.as_bytes(),
            1,
            vec![Binding {
                contact: format!("sip:u{i}@10.1.{}.{}:5060", i / 250 % 250, i % 250)
                    .into_bytes()
                    .into(),
                flow: flow.parse().ok(),
                expires_ms: 1_700_000_000_000 + i,
                call_id_hash: i,
                cseq: 1,
                q: 1000,
                path: Box::new([]),
                edge: None,
            }],
        );
    }
    let per = (dhat::HeapStats::get().curr_bytes - before) / n as usize;
    println!("locations: {per} heap bytes per binding ({n} AORs, one binding each)");
    dhat::assert!(per <= BUDGET, "{per} bytes per binding");
    drop(l);
    // The line scripts/test.sh adds up, as libtest would print it.
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
