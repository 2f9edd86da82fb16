//! Log lines that a fault can repeat many times a second (a client's bad frames, a full disk
//! failing every write, a process out of file descriptors) are held to a budget per minute,
//! broker-wide per kind: beyond it they go to debug, and the next line written says how many
//! were held back. A fault must not fill the gateway's disk with its own log.
//!
//! Text a client chose (a client id, a topic or user name it sent) goes into a log line or an
//! error message through [`client_text`]: cut to a length and with control characters escaped,
//! so a client can neither forge log lines nor make one line megabytes long.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

/// A budget of log lines per minute of the clock.
pub(crate) struct LogBudget {
    per_minute: u32,
    minute: AtomicU64,
    used: AtomicU32,
    held_back: AtomicU64,
}

impl LogBudget {
    pub(crate) const fn new(per_minute: u32) -> LogBudget {
        LogBudget {
            per_minute,
            minute: AtomicU64::new(0),
            used: AtomicU32::new(0),
            held_back: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one written)` when a line may be written now.
    pub(crate) fn take(&self) -> Option<u64> {
        self.take_at(crate::broker::now_ms().max(0) as u64 / 60_000)
    }

    /// [`LogBudget::take`] in minute `minute` of the clock.
    fn take_at(&self, minute: u64) -> Option<u64> {
        if self.minute.swap(minute, Ordering::Relaxed) != minute {
            self.used.store(0, Ordering::Relaxed);
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_minute {
            Some(self.held_back.swap(0, Ordering::Relaxed))
        } else {
            self.held_back.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

/// Characters of a client's text kept by [`client_text`].
const CLIENT_TEXT_CHARS: usize = 200;

/// `text` as sent by a client, fit for a log line or an error message: control characters
/// (newlines, escapes), quotes and backslashes written as escapes (a quoted name cannot end its
/// quotes and add fields), and at most [`CLIENT_TEXT_CHARS`] characters, with how many bytes
/// were left out.
pub(crate) fn client_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(CLIENT_TEXT_CHARS + 32));
    for (shown, (i, c)) in text.char_indices().enumerate() {
        if shown == CLIENT_TEXT_CHARS {
            out.push_str(&format!("...({} more bytes)", text.len() - i));
            break;
        }
        if c.is_control() || c == '"' || c == '\\' {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// A `tracing` event at `$level` within `$budget` (a [`LogBudget`]), at debug beyond it, with
/// `held_back` added to the first line written after lines were held back.
macro_rules! within_budget {
    ($budget:expr, $level:ident, $($arg:tt)+) => {
        match $budget.take() {
            Some(0) => tracing::$level!($($arg)+),
            Some(held_back) => tracing::$level!(held_back, $($arg)+),
            None => tracing::debug!($($arg)+),
        }
    };
}
pub(crate) use within_budget;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_text_is_cut_and_cannot_break_a_line() {
        assert_eq!(client_text("sensor-7"), "sensor-7");
        assert_eq!(
            client_text(r#"x" principal="User:admin"#),
            r#"x\" principal=\"User:admin"#
        );
        assert_eq!(
            client_text("a\n2026-12-06 INFO forged\r\u{1b}[31m"),
            "a\\n2026-12-06 INFO forged\\r\\u{1b}[31m"
        );
        let long = "é".repeat(1000);
        let shown = client_text(&long);
        assert!(shown.starts_with(&"é".repeat(200)));
        assert!(shown.ends_with("...(1600 more bytes)"), "{shown}");
    }

    #[test]
    fn lines_beyond_the_budget_are_held_back_and_counted() {
        let budget = LogBudget::new(20);
        let first: Vec<_> = (0..25).map(|_| budget.take_at(7)).collect();
        assert!(first[..20].iter().all(|t| *t == Some(0)));
        assert!(first[20..].iter().all(Option::is_none));
        // The next minute: the first line says how many were held back.
        assert_eq!(budget.take_at(8), Some(5));
        assert_eq!(budget.take_at(8), Some(0));
    }
}
