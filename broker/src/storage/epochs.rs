//! Leader epochs of a partition log (KIP-101, KIP-279, KIP-320): which epoch wrote which range
//! of offsets, for OffsetForLeaderEpoch and the epochs ListOffsets returns.
//!
//! Every batch a leader appends carries the leader's epoch in its header
//! (`partitionLeaderEpoch`, outside the CRC), and followers store those bytes unchanged, so the
//! log itself says where each epoch began: the first batch of each epoch larger than the ones
//! before it. Nothing else is kept on disk; opening a log reads every batch header anyway (for
//! the producers' state) and rebuilds the list from them, and a log cut back is read again.
//! Batches without an epoch (-1: written before epochs were stamped, or by a producer straight
//! into a log that stamps none) are passed over.
//!
//! What this gives up against Kafka's checkpoint file: an epoch whose first batches compaction
//! or retention removed is listed from its first batch left, and one they removed whole is not
//! listed. The end offset given for an earlier epoch is then later than Kafka's, never earlier:
//! a client may miss a truncation there (of records compaction removed anyway), but is never
//! sent back to offsets it had not read.

/// Where each leader epoch began, in order of both: (epoch, first offset).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeaderEpochs {
    starts: Vec<(i32, i64)>,
}

impl LeaderEpochs {
    /// Notes a batch of `epoch` at `base_offset` appended at the log's end: the start of a new
    /// epoch when it is larger than the last one. Batches of an earlier epoch than the last
    /// (which a log appended in order does not hold) and of none (-1) change nothing.
    pub fn observe(&mut self, epoch: i32, base_offset: i64) {
        if epoch < 0 {
            return;
        }
        match self.starts.last() {
            Some(&(last, _)) if epoch <= last => {}
            _ => self.starts.push((epoch, base_offset)),
        }
    }

    /// The largest epoch that wrote to the log, if any did.
    pub fn latest(&self) -> Option<i32> {
        self.starts.last().map(|&(epoch, _)| epoch)
    }

    /// The epoch that wrote `offset`: the last one begun at or before it; `None` before the
    /// first one listed.
    pub fn epoch_at(&self, offset: i64) -> Option<i32> {
        let i = self.starts.partition_point(|&(_, start)| start <= offset);
        i.checked_sub(1).map(|i| self.starts[i].0)
    }

    /// OffsetForLeaderEpoch's answer for `epoch` on a log ending at `log_end`: the largest
    /// epoch at or below it that wrote here, and the offset after that epoch's last record
    /// (where the next larger epoch began, or the log end for the latest). (-1, -1) when
    /// `epoch` is larger than any here (or -1, or the log holds no epoch); `epoch` itself with
    /// the first listed start when it is older than every epoch listed.
    pub fn end_offset_for(&self, epoch: i32, log_end: i64) -> (i32, i64) {
        const UNDEFINED: (i32, i64) = (-1, -1);
        let Some(latest) = self.latest() else {
            return UNDEFINED;
        };
        if epoch < 0 {
            return UNDEFINED;
        }
        if epoch == latest {
            return (epoch, log_end);
        }
        // The first epoch larger than the one asked about.
        let above = self.starts.partition_point(|&(e, _)| e <= epoch);
        let Some(&(_, next_start)) = self.starts.get(above) else {
            return UNDEFINED;
        };
        match above.checked_sub(1) {
            Some(i) => (self.starts[i].0, next_start),
            None => (epoch, next_start),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epochs(starts: &[(i32, i64)]) -> LeaderEpochs {
        let mut e = LeaderEpochs::default();
        for &(epoch, offset) in starts {
            e.observe(epoch, offset);
        }
        e
    }

    #[test]
    fn an_epoch_begins_at_its_first_batch_and_unstamped_or_older_batches_begin_none() {
        let e = epochs(&[
            (-1, 0),
            (0, 5),
            (0, 9),
            (-1, 12),
            (2, 20),
            (1, 25),
            (2, 30),
            (4, 40),
        ]);
        assert_eq!(e.starts, vec![(0, 5), (2, 20), (4, 40)]);
        assert_eq!(e.latest(), Some(4));
        assert_eq!(LeaderEpochs::default().latest(), None);
    }

    #[test]
    fn the_epoch_at_an_offset_is_the_last_begun_at_or_before_it() {
        let e = epochs(&[(0, 5), (2, 20), (4, 40)]);
        assert_eq!(e.epoch_at(0), None);
        assert_eq!(e.epoch_at(4), None);
        assert_eq!(e.epoch_at(5), Some(0));
        assert_eq!(e.epoch_at(19), Some(0));
        assert_eq!(e.epoch_at(20), Some(2));
        assert_eq!(e.epoch_at(39), Some(2));
        assert_eq!(e.epoch_at(40), Some(4));
        assert_eq!(e.epoch_at(1_000), Some(4));
    }

    #[test]
    fn an_epochs_end_offset_is_where_the_next_began_or_the_log_end_for_the_latest() {
        let e = epochs(&[(1, 5), (3, 20), (4, 40)]);
        let end = 57;
        // The latest: the log end.
        assert_eq!(e.end_offset_for(4, end), (4, 57));
        // One listed: where the next began.
        assert_eq!(e.end_offset_for(1, end), (1, 20));
        assert_eq!(e.end_offset_for(3, end), (3, 40));
        // One that never wrote here, between two that did: the one below it, ended where the
        // next began.
        assert_eq!(e.end_offset_for(2, end), (1, 20));
        // Older than every one listed: itself, ended where the first began.
        assert_eq!(e.end_offset_for(0, end), (0, 5));
        // Newer than any here, or none: undefined.
        assert_eq!(e.end_offset_for(5, end), (-1, -1));
        assert_eq!(e.end_offset_for(-1, end), (-1, -1));
        assert_eq!(LeaderEpochs::default().end_offset_for(0, end), (-1, -1));
    }
}
