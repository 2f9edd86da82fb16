//! A deliberately bad filter for the broker's fault tests. Its config picks the fault:
//!
//! - `loop`: never returns (the host's epoch deadline must stop it);
//! - `trap`: panics, which traps the instance;
//! - `oom`: grows memory until the host's cap refuses;
//! - `drop-all`: behaves, and drops every record.

use runnel_plugin::{Filter, Record};

enum Faulty {
    Loop,
    Trap,
    Oom,
    DropAll,
}

impl Filter for Faulty {
    fn init(config: &str) -> Result<Self, String> {
        Ok(match config.trim() {
            "loop" => Faulty::Loop,
            "trap" => Faulty::Trap,
            "oom" => Faulty::Oom,
            "drop-all" => Faulty::DropAll,
            // Said as given, control characters included: the host makes it one line.
            other => return Err(format!("unknown fault: {other}")),
        })
    }

    fn keep(&mut self, record: &Record<'_>) -> bool {
        match self {
            Faulty::Loop => {
                let mut n = record.timestamp();
                loop {
                    n = std::hint::black_box(n.wrapping_mul(31).wrapping_add(7));
                }
            }
            Faulty::Trap => panic!("faulty-filter: trap on purpose"),
            Faulty::Oom => {
                let mut hog: Vec<Vec<u8>> = Vec::new();
                loop {
                    hog.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hog);
                }
            }
            Faulty::DropAll => false,
        }
    }
}

runnel_plugin::filter!(Faulty);
