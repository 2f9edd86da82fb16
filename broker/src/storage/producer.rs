//! Idempotent-producer state of one partition (Kafka's ProducerStateManager; which transactions
//! are open is `txn.rs`).
//!
//! For every producerId seen in a non-control batch: the current epoch and the metadata of its
//! last [`MAX_CACHED_BATCHES`] batches (first/last sequence, first/last offset).
//!
//! Rules applied to a batch with producerId >= 0 before it is written:
//! * epoch lower than the current one -> `InvalidProducerEpoch` (the producer was fenced);
//! * epoch higher than the current one -> must start at sequence 0, else `OutOfOrderSequence`;
//!   the old epoch's batches are forgotten;
//! * same epoch, sequence range equal to one of the cached batches -> duplicate: not written, the
//!   original offsets are returned;
//! * same epoch, otherwise the first sequence must be last sequence + 1 (wrapping at i32::MAX),
//!   else `OutOfOrderSequence`;
//! * unknown producerId: any sequence is accepted, as Kafka >= 2.5 does. The state is rebuilt
//!   from the whole retained log on open (see `log.rs`), so a producer is unknown when it never
//!   wrote here, when retention removed all of its batches before a restart, or when its topic
//!   was deleted and made again; a producer carrying on after either must not be failed
//!   (librdkafka and the Java client treat OUT_OF_ORDER_SEQUENCE_NUMBER as fatal).

use std::collections::{HashMap, VecDeque};

use super::batch::{BatchHeader, increment_sequence};
use super::error::StorageError;

/// Batches remembered per producer for duplicate detection (Kafka: 5, which is also the
/// largest `max.in.flight.requests.per.connection` allowed with idempotence).
pub(crate) const MAX_CACHED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BatchMeta {
    pub(crate) first_seq: i32,
    pub(crate) last_seq: i32,
    pub(crate) first_offset: i64,
    pub(crate) last_offset: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ProducerEntry {
    pub(crate) epoch: i16,
    pub(crate) batches: VecDeque<BatchMeta>,
    /// The largest timestamp of its last batch or marker (DescribeProducers).
    pub(crate) last_timestamp: i64,
}

/// Outcome of [`ProducerStates::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SeqCheck {
    /// Not idempotent (no producerId) or control batch: no checks.
    NotIdempotent,
    /// In sequence: write it.
    Append,
    /// Already written: skip, answer with these offsets.
    Duplicate(BatchMeta),
}

#[derive(Debug, Clone, Default)]
pub(crate) struct ProducerStates {
    map: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    /// The highest producer id with a state here.
    pub(crate) fn max_producer_id(&self) -> Option<i64> {
        self.map.keys().copied().max()
    }

    /// The epoch `producer_id` last wrote (or a marker fenced it) with.
    pub(crate) fn epoch_of(&self, producer_id: i64) -> Option<i16> {
        self.map.get(&producer_id).map(|e| e.epoch)
    }

    /// Check `h` against the state, where `staged` holds entries already updated by earlier
    /// batches of the same append (looked up first).
    pub(crate) fn check(
        &self,
        staged: &HashMap<i64, ProducerEntry>,
        h: &BatchHeader,
    ) -> Result<SeqCheck, StorageError> {
        if !h.has_producer_id() || h.is_control() {
            return Ok(SeqCheck::NotIdempotent);
        }
        let pid = h.producer_id;
        let entry = staged.get(&pid).or_else(|| self.map.get(&pid));
        let out_of_order = |expected| StorageError::OutOfOrderSequence {
            producer_id: pid,
            expected,
            got: h.base_sequence,
        };
        let Some(entry) = entry else {
            return Ok(SeqCheck::Append);
        };
        if h.producer_epoch < entry.epoch {
            return Err(StorageError::InvalidProducerEpoch {
                producer_id: pid,
                epoch: h.producer_epoch,
                current: entry.epoch,
            });
        }
        if h.producer_epoch > entry.epoch {
            return if h.base_sequence == 0 {
                Ok(SeqCheck::Append)
            } else {
                Err(out_of_order(0))
            };
        }
        let last_seq = h.last_sequence();
        if let Some(dup) = entry
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last_seq)
        {
            return Ok(SeqCheck::Duplicate(*dup));
        }
        match entry.batches.back() {
            Some(last) => {
                let expected = increment_sequence(last.last_seq, 1);
                if h.base_sequence == expected {
                    Ok(SeqCheck::Append)
                } else {
                    Err(out_of_order(expected))
                }
            }
            // Known epoch but no batches (e.g. only an empty compacted batch): accept.
            None => Ok(SeqCheck::Append),
        }
    }

    /// Record a written batch (header with its final base offset) into `target`, starting
    /// from the current state of the producer.
    pub(crate) fn stage(&self, staged: &mut HashMap<i64, ProducerEntry>, h: &BatchHeader) {
        if !h.has_producer_id() || h.is_control() {
            return;
        }
        let entry = staged.entry(h.producer_id).or_insert_with(|| {
            self.map
                .get(&h.producer_id)
                .cloned()
                .unwrap_or(ProducerEntry {
                    epoch: h.producer_epoch,
                    batches: VecDeque::new(),
                    last_timestamp: h.max_timestamp,
                })
        });
        apply(entry, h);
    }

    /// Make staged entries current.
    pub(crate) fn commit(&mut self, staged: HashMap<i64, ProducerEntry>) {
        self.map.extend(staged);
    }

    /// Replay a stored batch (open-time rebuild, compaction rebuild, a transaction marker just
    /// written): no checks. A marker with a newer epoch makes it the producer's (the coordinator
    /// fenced the older one), with no batches yet.
    pub(crate) fn replay(&mut self, h: &BatchHeader) {
        if !h.has_producer_id() {
            return;
        }
        if h.is_control() {
            match self.map.get_mut(&h.producer_id) {
                Some(entry) if h.producer_epoch > entry.epoch => {
                    entry.epoch = h.producer_epoch;
                    entry.batches.clear();
                    entry.last_timestamp = h.max_timestamp;
                }
                Some(entry) => entry.last_timestamp = entry.last_timestamp.max(h.max_timestamp),
                None => {
                    let entry = ProducerEntry {
                        epoch: h.producer_epoch,
                        batches: VecDeque::new(),
                        last_timestamp: h.max_timestamp,
                    };
                    self.map.insert(h.producer_id, entry);
                }
            }
            return;
        }
        let entry = self
            .map
            .entry(h.producer_id)
            .or_insert_with(|| ProducerEntry {
                epoch: h.producer_epoch,
                batches: VecDeque::new(),
                last_timestamp: h.max_timestamp,
            });
        apply(entry, h);
    }

    /// Every producer with a state here: its id and entry.
    pub(crate) fn all(&self) -> impl Iterator<Item = (i64, &ProducerEntry)> + '_ {
        self.map.iter().map(|(&pid, entry)| (pid, entry))
    }

    #[cfg(test)]
    pub(crate) fn get(&self, producer_id: i64) -> Option<&ProducerEntry> {
        self.map.get(&producer_id)
    }
}

fn apply(entry: &mut ProducerEntry, h: &BatchHeader) {
    if h.producer_epoch != entry.epoch {
        entry.epoch = h.producer_epoch;
        entry.batches.clear();
    }
    // An empty batch (left by compaction, or by plugins that dropped every record of an
    // idempotent batch) is remembered like any other: it carries the sequence span it covered,
    // so a retry of it is a duplicate and the batch after it is in sequence.
    entry.last_timestamp = h.max_timestamp;
    entry.batches.push_back(BatchMeta {
        first_seq: h.base_sequence,
        last_seq: h.last_sequence(),
        first_offset: h.base_offset,
        last_offset: h.last_offset(),
    });
    while entry.batches.len() > MAX_CACHED_BATCHES {
        entry.batches.pop_front();
    }
}
