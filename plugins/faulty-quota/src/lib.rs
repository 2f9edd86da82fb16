//! A deliberately bad quota policy for the broker's fault tests. Its config picks the fault:
//!
//! - `loop`: never returns (the host's epoch deadline must stop it);
//! - `trap`: panics, which traps the instance;
//! - `oom`: grows memory until the host's cap refuses;
//! - `throttle:MS`: behaves, and throttles every request MS milliseconds;
//! - `reject-long`: rejects every request with a 40,000-byte reason of two lines.

use runnel_plugin::quota::{Decision, QuotaPolicy, Request};

enum Faulty {
    Loop,
    Trap,
    Oom,
    Throttle(u32),
    RejectLong,
}

impl QuotaPolicy for Faulty {
    fn init(config: &str) -> Result<Self, String> {
        let config = config.trim();
        Ok(match config {
            "loop" => Faulty::Loop,
            "trap" => Faulty::Trap,
            "oom" => Faulty::Oom,
            "reject-long" => Faulty::RejectLong,
            _ => match config.strip_prefix("throttle:").map(str::parse) {
                Some(Ok(ms)) => Faulty::Throttle(ms),
                _ => return Err(format!("unknown fault {config:?}")),
            },
        })
    }

    fn decide(&mut self, request: &Request, now_ms: i64) -> Decision {
        match self {
            Faulty::Loop => {
                let mut n = now_ms.wrapping_add(request.bytes as i64);
                loop {
                    n = std::hint::black_box(n.wrapping_mul(31).wrapping_add(7));
                }
            }
            Faulty::Trap => panic!("faulty-quota: trap on purpose"),
            Faulty::Oom => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            Faulty::Throttle(ms) => Decision::Throttle(*ms),
            Faulty::RejectLong => {
                Decision::Reject(format!("{}\n{}", "a".repeat(20_000), "b".repeat(19_999)))
            }
        }
    }
}

runnel_plugin::quota!(Faulty);
