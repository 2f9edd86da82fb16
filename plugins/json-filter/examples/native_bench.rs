//! The filter's cost natively, per reading of `runnel bench plugins` (the same 100-byte JSON
//! readings, config `temp > 20`): best of 50 rounds of 20,000 calls. Compare with the bench's
//! "plugin alone" figure to see what running it as WebAssembly adds.
//!
//!     cargo run --release --example native_bench -p json-filter   (in plugins/)

use json_filter::Condition;
use std::time::Instant;

/// `broker/src/cli/bench_plugins.rs`'s reading `i`.
fn reading(i: u64) -> Vec<u8> {
    let head = format!(
        r#"{{"device":"d{:05}","temp":{}.{},"hum":{},"seq":{i},"pad":""#,
        i % 1000,
        i % 40,
        i % 10,
        40 + i % 20
    );
    let mut v = head.into_bytes();
    while v.len() < 98 {
        v.push(b'x');
    }
    v.extend_from_slice(b"\"}");
    v
}

fn main() {
    let docs: Vec<Vec<u8>> = (0..1000).map(reading).collect();
    let c = Condition::parse("temp > 20").unwrap();
    let mut best = f64::MAX;
    let mut kept = 0;
    for _ in 0..50 {
        let t = Instant::now();
        for _ in 0..20 {
            for d in &docs {
                kept += c.matches(Some(std::hint::black_box(d))) as usize;
            }
        }
        best = best.min(t.elapsed().as_nanos() as f64 / 20_000.0);
    }
    println!("{best:.1} ns/record (kept {kept})");
}
