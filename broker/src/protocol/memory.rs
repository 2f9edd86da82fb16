//! Broker-wide memory budgets: what consumers' Fetch answers not yet written may hold
//! (`broker.fetch_memory_bytes`), and what large requests being read and handled may hold
//! (`broker.queued_max_request_bytes`, Kafka's `queued.max.request.bytes`).
//!
//! **Fetch answers.** An answer is built in memory (Kafka sends record bytes from the page cache
//! instead), and it lives until its client has read it: a connection whose client stops reading
//! holds one answer of up to `broker.fetch_max_bytes`. Each connection's share is bounded, but
//! the shares add up over connections: fifteen stalled consumers held 873 MB before this budget.
//! A consumer's fetch takes what it may return from the budget as it reads the logs
//! ([`Budget::take_up_to`]): all it asks for while the budget has room, less when it has not.
//! With none left it still gets its first batch whole (KIP-74), so every consumer goes on making
//! progress, one batch a fetch, while the answers held by others are written. What is taken is
//! kept ([`Held`]) until the answer's last byte is written to the socket, or the connection
//! ends. Followers' replica fetches are not counted: they are bounded by their own request and
//! starving them would shrink the in-sync replicas.
//!
//! **Large requests.** A request frame over [`LARGE_REQUEST`] takes its whole declared size
//! ([`Budget::take`]) before the rest of it is read, waiting while the budget lacks room (its
//! connection is not read meanwhile, so TCP holds the client back), and keeps it until the
//! request is handled. Without it, a dozen clients each sending most of a 100 MiB frame hold
//! over a gigabyte; smaller requests (produce batches as clients send them by default) never
//! wait.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Request frames larger than this take their size from `broker.queued_max_request_bytes`.
pub const LARGE_REQUEST: usize = 1 << 20;

/// One broker-wide budget of bytes.
pub struct Budget {
    limit: usize,
    used: AtomicUsize,
    /// Answers made smaller for want of room, and takes that waited for it ([`Budget::short`]).
    short: AtomicU64,
    freed: tokio::sync::Notify,
}

impl Budget {
    pub fn new(limit: u64) -> Arc<Budget> {
        Arc::new(Budget {
            limit: usize::try_from(limit).unwrap_or(usize::MAX),
            used: AtomicUsize::new(0),
            short: AtomicU64::new(0),
            freed: tokio::sync::Notify::new(),
        })
    }

    /// Takes `want` bytes, waiting until the budget has room for them (one take larger than the
    /// whole budget waits until nothing else is held).
    pub async fn take(self: &Arc<Self>, want: usize) -> Held {
        let mut waited = false;
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            let mut used = self.used.load(Ordering::Relaxed);
            while used == 0 || used.saturating_add(want) <= self.limit {
                match self.used.compare_exchange_weak(
                    used,
                    used + want,
                    Ordering::AcqRel,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        if waited {
                            self.short.fetch_add(1, Ordering::Relaxed);
                        }
                        return Held {
                            memory: self.clone(),
                            bytes: want,
                        };
                    }
                    Err(now) => used = now,
                }
            }
            waited = true;
            freed.await;
        }
    }

    /// Takes `want` bytes, or what is left of the budget when that is less (possibly none).
    pub fn take_up_to(self: &Arc<Self>, want: usize) -> Held {
        let mut used = self.used.load(Ordering::Relaxed);
        loop {
            let granted = want.min(self.limit.saturating_sub(used));
            match self.used.compare_exchange_weak(
                used,
                used + granted,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return Held {
                        memory: self.clone(),
                        bytes: granted,
                    };
                }
                Err(now) => used = now,
            }
        }
    }

    /// Bytes held now (for fetch answers, more than the limit while first batches larger than
    /// what was left are held).
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Counts an answer made smaller for want of room ([`Budget::take_up_to`] does not: what
    /// was granted may be more than the answer needed).
    pub fn note_short(&self) {
        self.short.fetch_add(1, Ordering::Relaxed);
    }

    /// Answers made smaller ([`Budget::note_short`]), or requests that waited, because the
    /// budget was short.
    pub fn short(&self) -> u64 {
        self.short.load(Ordering::Relaxed)
    }
}

/// Bytes of the budget held by one answer or request; given back when dropped.
pub struct Held {
    memory: Arc<Budget>,
    bytes: usize,
}

impl Held {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `bytes` instead: what the answer turned out to be, which is less than what was taken
    /// unless its first batch was larger than that.
    pub fn resize(&mut self, bytes: usize) {
        if bytes > self.bytes {
            self.memory
                .used
                .fetch_add(bytes - self.bytes, Ordering::AcqRel);
        } else {
            self.memory
                .used
                .fetch_sub(self.bytes - bytes, Ordering::AcqRel);
            self.memory.freed.notify_waiters();
        }
        self.bytes = bytes;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.memory.used.fetch_sub(self.bytes, Ordering::AcqRel);
        self.memory.freed.notify_waiters();
    }
}

/// Where a connection's handler leaves what its answer holds, for the connection to keep until
/// the answer is written. One per connection: its requests are handled one at a time.
#[derive(Default)]
pub struct Holding(Mutex<Option<Held>>);

impl Holding {
    pub fn keep(&self, held: Held) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(held);
    }

    pub fn take(&self) -> Option<Held> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_gets_what_is_left_and_gives_it_back_once_written() {
        let memory = Budget::new(100);
        let mut a = memory.take_up_to(60);
        assert_eq!(a.bytes(), 60);
        let b = memory.take_up_to(60);
        assert_eq!(b.bytes(), 40, "only what is left");
        let c = memory.take_up_to(10);
        assert_eq!(
            c.bytes(),
            0,
            "nothing left: the fetch returns its first batch only"
        );
        // The first answer turned out smaller: the rest is free again.
        a.resize(20);
        assert_eq!(memory.used(), 60);
        assert_eq!(memory.take_up_to(100).bytes(), 40);
        assert_eq!(memory.used(), 60, "the taken 40 went back when dropped");
        // A first batch larger than what was taken is counted whole.
        let mut d = c;
        d.resize(500);
        assert_eq!(memory.used(), 560);
        assert_eq!(memory.take_up_to(1).bytes(), 0);
        drop((a, b, d));
        assert_eq!(memory.used(), 0);
    }

    #[tokio::test]
    async fn a_large_request_waits_for_room_and_one_larger_than_the_budget_for_none_held() {
        let memory = Budget::new(100);
        let a = memory.take(70).await;
        let waiting = tokio::spawn({
            let memory = memory.clone();
            async move { memory.take(50).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!waiting.is_finished(), "70 + 50 is over 100");
        drop(a);
        let b = waiting.await.unwrap();
        assert_eq!((b.bytes(), memory.used(), memory.short()), (50, 50, 1));
        drop(b);
        // Larger than the whole budget: taken once nothing else is.
        let c = memory.take(150).await;
        assert_eq!(memory.used(), 150);
        drop(c);
        assert_eq!(memory.used(), 0);
    }
}
