//! Key-based compaction (`cleanup.policy=compact`) of sealed segments.
//!
//! One pass, in three steps so that the partition's lock is held only briefly at the start and
//! the end ([`PartitionLog::start_compaction`], [`CompactionPass::run`],
//! [`PartitionLog::finish_compaction`]; [`PartitionLog::maintenance`] does all three):
//! 0. with the log: views of every segment as it is now (file handles, sizes); producers
//!    go on appending to the active segment meanwhile, which only adds records newer than the
//!    pass looks at, so at worst a record that could go stays until the next pass;
//! 1. decode every batch of the viewed log (active segment included) below the pass's limit,
//!    the last stable offset below the high watermark (the log end on a broker alone): a record
//!    a follower's truncation may yet cut must not supersede the value it would leave, nor may
//!    a record read_committed consumers cannot read yet (behind an open transaction), as
//!    Kafka's cleaner stops there too; build key -> latest offset, plus producerId -> base
//!    offset of its last batch;
//! 2. for each sealed segment below the limit, keep a record only if it is the latest for its
//!    key; drop records without a key (they cannot be produced to a compacted topic, but may
//!    predate the policy); drop a tombstone (null value) once its delete horizon has passed,
//!    and only below where the last *complete* pass (one that swapped in every group it
//!    cleaned) stopped, so the values it hides are gone before it goes: never a tombstone
//!    removed while an older value of its key stays (Kafka also drops tombstones only from the
//!    part of the log cleaned before); on a cluster's leader, only below where every follower's
//!    log reaches as far as the leader heard, so a follower that was away longer than
//!    `delete.retention.ms` still gets the deletes (Kafka's followers can miss them). The
//!    horizon is `delete_retention_ms` after the broker wrote the tombstone's segment
//!    (`Segment::written_ms`; not the records' own timestamps, which may be far in the past),
//!    or, in a transaction, its commit marker's segment (what read_committed consumers could
//!    not read was not deleted for them); a pass that first reaches a tombstone after that
//!    (behind another producer's open transaction, or with no pass for that long) counts from
//!    its own time, as Kafka does. The first pass that writes a batch keeping a tombstone
//!    stores that horizon in it, as KIP-534 does (the delete-horizon attribute, the horizon as
//!    the batch's first timestamp, each record's timestamp delta rewritten against it so its
//!    timestamp stays), so merging the segment with newer ones, which gives the merged file a
//!    later write time, does not move the tombstone's clock. Kafka stores the time of that
//!    first cleaning plus `delete.retention.ms`, so it may keep a tombstone longer;
//! 3. adjacent sealed segments are cleaned into one while what they keep fits `segment.bytes`
//!    (and the index's 32-bit relative offsets and positions), as Kafka's cleaner groups them,
//!    so a compacted log keeps about as many segments as its live data fills, not one per
//!    segment ever rolled, tombstones or not. A group ends around a segment already empty when
//!    the pass began (one a start-up cut to nothing keeps the cut bytes beside it: not this
//!    pass's to delete). A lone segment that loses nothing (and takes no late horizon) is left
//!    untouched; any other group is written to `{base}.log.cleaned` (base = its first
//!    segment's), fsynced, with its index files beside it (`.index.cleaned`,
//!    `.timeindex.cleaned`), all without the lock;
//! 4. with the log again, the groups whose segments are all still as the pass read them are
//!    swapped in; the others' files are deleted (retention, DeleteRecords or a follower's
//!    truncation changed the log meanwhile: another size or another file), and the pass does
//!    not count as complete. The swap is crash-safe in three steps, each ended by one fsync of
//!    the directory for all groups: every `{base}.log.cleaned` is renamed to `{base}.log.swap`
//!    (the commit); the segments each replaces are deleted, and the first's index files, and
//!    the groups left with nothing (deleted without a swap, except one that starts the log,
//!    which is kept as an empty segment so that the log start offset stays where it is); each
//!    `.swap` is renamed to `{base}.log` and its index files into place. Any subset of the
//!    groups going in keeps the log right: a record is removed only for a newer one of its key
//!    that stays, or as a tombstone whose older values a complete pass already removed. A
//!    start-up that finds a `.swap` completes it ([`complete_interrupted_swaps`]): it deletes
//!    the segments whose base offset lies inside the swap's offsets and renames it; an error
//!    after the commit while the broker runs does the same at once, by reading the partition
//!    again from the disk. A crash before the commit leaves the old segments (leftover
//!    `.cleaned` files are deleted on open).
//!
//! Batches that keep all their records are copied byte for byte, unless a tombstone's horizon
//! is to be stored in them. Partially kept batches keep their kept records byte for byte too
//! ([`Records::keep_offsets`]: every header, a name given twice included, each record's offset
//! and timestamp deltas), in a batch with the original's header (base offset, first
//! timestamp, lastOffsetDelta, attributes, producer id, epoch and base sequence, as Kafka's
//! cleaner keeps them for v2 batches) but its record count, length,
//! CreateTime max timestamp and CRC, compressed again with the original codec (a batch that
//! takes a horizon also its first timestamp, attributes and timestamp deltas). A batch that
//! loses all records is dropped, except the last batch of each producer, which is kept as an
//! empty (61-byte) batch so that the producer's epoch and sequence survive a restart (Kafka
//! does the same).
//!
//! Transactions: the records of a transaction count for their keys only once it commits; an
//! aborted transaction's batches lose all their records (Kafka's cleaner removes them too), so
//! an aborted value never hides the committed one before it; the batches of a transaction not
//! yet ended are copied unchanged. A marker (control batch) is kept while any batch of its
//! transaction is left in the log (the pass read one since the producer's previous marker) and
//! while it is its producer's last batch (the producer's epoch must survive a restart); past
//! that it is a tombstone of sorts, as in Kafka: its horizon is stored in it when it is next
//! written, and it goes once the horizon has passed, so that a compacted topic written with
//! transactions (Kafka Streams' changelogs with exactly-once) does not keep a marker per
//! transaction for ever.
//!
//! Cost: every maintenance run that has new sealed data (at least `min.cleanable.dirty.ratio`
//! of the sealed log) or a pending tombstone decodes the whole log, and rewrites each group that
//! loses a record or merges segments. The swap holds the log only for renames, deletes and three
//! directory fsyncs: the cleaned segments come with their indexes, nothing is read again.
//! Memory: a digest and an offset for each key of the log ([`KeyHash`]), and a few megabytes
//! whatever the segments' size: segments are read [`CHUNK_BYTES`] at a time and what they keep
//! is written as it goes, but for a group's first segment, held up to [`HOLD_BYTES`] until the
//! pass knows whether it is written at all.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::MaintenanceReport;
use super::batch::*;
use super::error::{StorageError, io_err};
use super::log::PartitionLog;
use super::record_spans::{self, Records};
use super::segment::{
    Segment, SegmentView, cleaned_path, delete_segment_files, index_path, log_path,
    next_offset_of_file, swap_path, timeindex_path,
};
use super::txn::{Marker, marker_of};

fn codec(context: &'static str) -> impl Fn(String) -> StorageError {
    move |reason| StorageError::Codec { context, reason }
}

/// The batch `bytes` (header `h`) with its records uncompressed, for [`Records::parse`].
fn plain(bytes: &[u8], h: &BatchHeader) -> Result<Bytes, StorageError> {
    record_spans::plain_batch(Bytes::copy_from_slice(bytes), h).map_err(codec("compaction decode"))
}

/// The (key, offset, is a tombstone) of each record of a plain batch.
fn keys<'a>(
    records: &'a Records<'_>,
    h: &'a BatchHeader,
) -> impl Iterator<Item = (Option<&'a [u8]>, i64, bool)> + 'a {
    let (batch, spans) = records.parts();
    spans.iter().map(move |s| {
        (
            s.key.clone().map(|k| &batch[k]),
            h.base_offset + i64::from(s.offset_delta),
            s.value.is_none(),
        )
    })
}

/// A header-only copy of `batch`: no records, same offsets range, producer fields and sequence.
pub(crate) fn empty_batch(batch: &[u8], h: &BatchHeader) -> Vec<u8> {
    let mut out = batch[..BATCH_HEADER_LEN].to_vec();
    put_i32(
        &mut out,
        LENGTH_POS,
        (BATCH_HEADER_LEN - LOG_OVERHEAD) as i32,
    );
    put_i16(
        &mut out,
        ATTRIBUTES_POS,
        h.attributes & !ATTR_COMPRESSION_MASK,
    );
    put_i32(&mut out, RECORD_COUNT_POS, 0);
    rewrite_crc(&mut out);
    out
}

/// An open transaction as the first read of a pass finds it.
#[derive(Default)]
struct OpenTxn {
    /// The base offsets of its batches.
    batches: Vec<i64>,
    /// The (key, offset) of their records, which count once it commits.
    keys: Vec<(KeyHash, i64)>,
    /// The base offsets of its batches holding a tombstone with no horizon stored yet.
    tombstones: Vec<i64>,
}

/// A record key as a pass remembers it: the first 16 bytes of its SHA-256, as Kafka's cleaner
/// keeps a digest of each key rather than the key. The map of a log's keys then costs about 25
/// bytes a key whatever the keys' lengths, where keeping the keys cost their bytes, an
/// allocation and a 32-byte handle each. Two keys of one log sharing a digest is as likely as
/// a random 128-bit collision; making two collide on purpose takes about 2^64 hashes, and
/// another producer's key cannot be matched.
type KeyHash = [u8; 16];

fn key_hash(key: &[u8]) -> KeyHash {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(key);
    let mut out = [0u8; 16];
    out.copy_from_slice(&digest[..16]);
    out
}

/// What a pass reads of a segment at a time (whole batches; a larger batch alone), and gathers
/// of kept batches before writing them.
const CHUNK_BYTES: usize = 1 << 20;

/// The most of a segment's kept batches a pass holds in memory while it cannot yet tell whether
/// the segment is to be written at all (a lone segment that keeps every record is not). Past
/// it the pass only counts what the segment loses, and reads it again if it must be written.
const HOLD_BYTES: usize = 4 << 20;

#[cfg(test)]
thread_local! {
    /// Test seam: [`HOLD_BYTES`] for passes run on this thread.
    static HOLD_LIMIT: std::cell::Cell<usize> = const { std::cell::Cell::new(HOLD_BYTES) };
}

fn hold_limit() -> usize {
    #[cfg(test)]
    return HOLD_LIMIT.get();
    #[cfg(not(test))]
    HOLD_BYTES
}

/// Visit (header, bytes) of every batch of a segment, reading it [`CHUNK_BYTES`] at a time.
fn for_each_batch(
    seg: &SegmentView,
    mut f: impl FnMut(&BatchHeader, &[u8]) -> Result<(), StorageError>,
) -> Result<(), StorageError> {
    let mut pos = 0u64;
    while pos < seg.size {
        let chunk = seg.read_batches(pos, CHUNK_BYTES, true)?;
        if chunk.is_empty() {
            break;
        }
        let mut at = 0;
        while at < chunk.len() {
            // Whole batches, whose headers `read_batches` parsed.
            let h = BatchHeader::parse(&chunk[at..])
                .map_err(|e| codec("compaction read")(e.to_string()))?;
            let end = at + h.total_size();
            f(&h, &chunk[at..end])?;
            at = end;
        }
        pos += chunk.len() as u64;
    }
    Ok(())
}

/// A cleaned segment being written, its kept batches gathered [`CHUNK_BYTES`] at a time.
struct Out {
    segment: Segment,
    buf: Vec<u8>,
    /// When the broker wrote the segment whose batches are being gathered.
    written_ms: i64,
}

impl Out {
    fn create(pass: &CompactionPass, base: i64, written_ms: i64) -> Result<Out, StorageError> {
        Ok(Out {
            segment: Segment::create_cleaned(&pass.dir, base, pass.index_interval, written_ms)?,
            buf: Vec::new(),
            written_ms,
        })
    }

    /// Goes on with the batches of a segment the broker wrote at `written_ms`.
    fn member(&mut self, written_ms: i64) -> Result<(), StorageError> {
        self.flush()?;
        self.written_ms = written_ms;
        Ok(())
    }

    fn push(&mut self, batches: &[u8]) -> Result<(), StorageError> {
        if self.buf.len() + batches.len() > CHUNK_BYTES {
            self.flush()?;
        }
        if batches.len() >= CHUNK_BYTES {
            return self.segment.append_copied(batches, self.written_ms);
        }
        self.buf.extend_from_slice(batches);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StorageError> {
        if !self.buf.is_empty() {
            self.segment.append_copied(&self.buf, self.written_ms)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Written whole: fsynced, with its index files beside it.
    fn finish(mut self) -> Result<Segment, StorageError> {
        self.flush()?;
        self.segment.finish_cleaned()?;
        Ok(self.segment)
    }
}

/// How a group's first segment is being cleaned, before the pass knows whether it is written.
enum First {
    /// Its kept batches so far, up to [`HOLD_BYTES`].
    Holding(Vec<u8>),
    /// It lost a record, or took a horizon it must keep: written.
    Writing(Out),
    /// More than [`HOLD_BYTES`] kept and nothing lost by then: only counting from there.
    Counting,
}

/// A group's first segment, not written because it loses nothing, until a second one joins.
enum Held {
    /// Its kept batches (tombstones may have taken their horizon).
    Bytes(Vec<u8>),
    /// Too large to hold: cleaned again when written, from the transactions read before it.
    Again(TxnsRead),
}

/// The producers whose transactional batches a pass has read since their last marker, and
/// whether it kept any of them: a marker may go only once none of its transaction's batches is
/// left in the log, which the pass knows when it reads the marker having read none (Kafka's
/// rule). A batch that goes in this very pass counts as read (its group may yet be left out of
/// the swap), but makes the marker due at the next pass.
type TxnsRead = HashMap<i64, bool>;

/// New sealed segments that start a pass whatever their share of the log: segments that roll
/// often (a small `segment.ms`) cost a file and a descriptor each until a pass merges them,
/// and would pile up by the hundreds before `min.cleanable.dirty.ratio` is reached.
const MERGE_AT_SEGMENTS: usize = 64;

/// When compaction last ran to completion, to skip runs with nothing to do.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CompactionState {
    /// Where the last pass that swapped in every group it cleaned stopped (the active segment's
    /// base, or the first segment reaching the high watermark): the sealed data below it is
    /// clean, and its tombstones may go once `delete.retention.ms` has passed, since that pass
    /// removed every older value they hide. 0 after a start.
    clean_through: i64,
    /// Whether a pass that swapped in every group it cleaned ran since the start.
    cleaned_once: bool,
    /// Earliest time a kept tombstone becomes removable.
    next_tombstone_expiry: Option<i64>,
    /// The offset of the first tombstone or marker the last pass kept past its horizon because
    /// it was at or above the pass's bound (a follower had not copied it, or the part of the
    /// log cleaned before ended below it): the next pass is due when the bound passes it, not
    /// at every check nor whenever a slow follower's log end moves.
    held_from: Option<i64>,
}

/// A compaction pass taken out of the log ([`PartitionLog::start_compaction`]): run it without
/// the log's lock, then hand the outcome to [`PartitionLog::finish_compaction`].
pub struct CompactionPass {
    dir: PathBuf,
    /// Every segment as it was; the last one was the active segment.
    views: Vec<SegmentView>,
    /// Records at or above it are not looked at, and segments reaching it are not cleaned:
    /// the last stable offset below the high watermark in a cluster (records above it may yet
    /// be cut by a truncation, and must not supersede the values they would leave) or the log
    /// end on a broker alone.
    limit: i64,
    /// Tombstones (and transaction markers) below it may go: [`CompactionState::clean_through`]
    /// when the pass began, or less where a follower's log ends below it.
    tombstones_below: i64,
    /// The same, if a complete pass ran since the start: a tombstone at or above it is one
    /// this pass reaches first.
    first_reached_from: Option<i64>,
    delete_retention_ms: i64,
    /// `retention.ms` when the topic also deletes by time (`compact,delete`).
    retention_ms: Option<i64>,
    /// `segment.bytes`: the most a group of cleaned segments may hold.
    segment_bytes: u64,
    index_interval: u64,
}

/// What a [`CompactionPass`] made: cleaned groups of sealed segments, to be swapped in.
pub struct CompactionOutcome {
    cleaned: Vec<Cleaned>,
    /// Where the pass stopped cleaning: the base of the active segment when it started, or of
    /// the first sealed segment reaching its limit.
    cleaned_through: i64,
    next_tombstone_expiry: Option<i64>,
    /// [`CompactionState::held_from`] after this pass.
    held_from: Option<i64>,
}

/// Adjacent sealed segments cleaned into one.
struct Cleaned {
    /// The segments it replaces, as the pass read them, in log order: if any of them changed
    /// since (another file, another size), the group is stale.
    members: Vec<SegmentView>,
    /// What they keep, open on `{base}.log.cleaned` with its indexes (`base` is the first
    /// member's); empty when every record of the group went.
    segment: Segment,
    removed: u64,
    /// Offsets of the transaction markers it removed: once it is swapped in, an aborted
    /// transaction ended by one is no longer listed to read_committed consumers.
    markers_removed: Vec<i64>,
}

impl Cleaned {
    fn base(&self) -> i64 {
        self.members[0].base_offset
    }

    /// Deletes the group's files, cleaned or committed (a stale or abandoned group).
    fn discard(&self, dir: &Path) {
        let base = self.base();
        for p in cleaned_files(dir, base)
            .into_iter()
            .chain([swap_path(dir, base)])
        {
            let _ = fs::remove_file(p);
        }
    }
}

/// The log and index files of a cleaned segment at `base`.
fn cleaned_files(dir: &Path, base: i64) -> [PathBuf; 3] {
    [
        log_path(dir, base),
        index_path(dir, base),
        timeindex_path(dir, base),
    ]
    .map(|p| cleaned_path(&p))
}

/// A group of segments being cleaned into one. A first member that keeps everything is held
/// ([`Held`]) until a second one joins, so that a lone segment that keeps everything is not
/// written again.
#[derive(Default)]
struct Group {
    members: Vec<SegmentView>,
    /// The maxTimestamp of the first member's first batch (`NO_TIMESTAMP` if none).
    start_ts: i64,
    held: Option<Held>,
    out: Option<Out>,
    size: u64,
    removed: u64,
    markers_removed: Vec<i64>,
}

impl Group {
    /// Whether `len` more bytes whose last offset is at most `last` fit the group.
    fn fits(&self, len: u64, last: i64, segment_bytes: u64) -> bool {
        let base = self.members.first().map_or(last, |m| m.base_offset);
        self.size + len <= segment_bytes.min(u32::MAX as u64) && last - base <= i32::MAX as i64
    }
}

/// One sealed segment cleaned: the size of its kept batches, how many records went, the
/// earliest delete horizon of the tombstones it keeps, and how many batches keep a tombstone
/// first seen late (whose horizon must be written).
#[derive(Default)]
struct Kept {
    size: u64,
    removed: u64,
    next_tombstone_expiry: Option<i64>,
    /// The offset of the first tombstone or marker it keeps past its horizon, at or above the
    /// bound.
    held: Option<i64>,
    late: u64,
    /// Batches without records (a plugin's filter emptied them) that went.
    empties_removed: u64,
    /// Offsets of the markers that went.
    markers_removed: Vec<i64>,
}

impl Kept {
    /// Whether the segment must be written: it lost a record or an emptied batch, or took a
    /// horizon it must keep.
    fn changed(&self) -> u64 {
        self.removed + self.late + self.empties_removed
    }

    /// Notes a tombstone or marker at `offset` kept with delete horizon `horizon`: due to go
    /// then, or, past it, held by the pass's bound.
    fn keeps_until(&mut self, now_ms: i64, horizon: i64, offset: i64) {
        if now_ms > horizon {
            self.held = earliest(self.held, Some(offset));
        } else {
            self.next_tombstone_expiry = earliest(self.next_tombstone_expiry, Some(horizon));
        }
    }
}

/// What the first read of a pass learned about the whole log.
struct Latest {
    /// key -> offset of its latest value.
    latest: HashMap<KeyHash, i64>,
    /// producer id -> base offset of its last batch.
    last_batch: HashMap<i64, i64>,
    /// Base offsets of the batches of aborted transactions.
    aborted: HashSet<i64>,
    /// Base offsets of the batches of transactions not yet ended.
    undecided: HashSet<i64>,
    /// Base offset of a committed batch holding a tombstone with no horizon stored -> when the
    /// broker wrote its commit (its marker's segment's write time): a delete counts from then,
    /// since read_committed consumers could not read it before.
    committed_at: HashMap<i64, i64>,
}

impl CompactionPass {
    /// Reads the viewed segments, and writes and fsyncs the cleaned groups of sealed segments.
    /// Needs no lock: the views hold their file handles and sizes.
    pub fn run(self, now_ms: i64) -> Result<CompactionOutcome, StorageError> {
        let mut cleaned = Vec::new();
        let mut group = None;
        let result = self.clean(now_ms, &mut cleaned, &mut group);
        if result.is_err() {
            for c in &cleaned {
                c.discard(&self.dir);
            }
            if let Some(first) = group.as_ref().and_then(|g| g.members.first()) {
                for p in cleaned_files(&self.dir, first.base_offset) {
                    let _ = fs::remove_file(p);
                }
            }
        }
        let (cleaned_through, next_tombstone_expiry, held) = result?;
        Ok(CompactionOutcome {
            cleaned,
            cleaned_through,
            next_tombstone_expiry,
            held_from: held,
        })
    }

    /// Cleans the sealed segments below the limit; returns where it stopped, when a kept
    /// tombstone is next due, and the first one past its horizon held by the bound.
    fn clean(
        &self,
        now_ms: i64,
        cleaned: &mut Vec<Cleaned>,
        group: &mut Option<Group>,
    ) -> Result<(i64, Option<i64>, Option<i64>), StorageError> {
        let latest = self.latest()?;
        let mut next_expiry: Option<i64> = None;
        let mut held = None;
        let sealed = &self.views[..self.views.len() - 1];
        let mut cleaned_through = self.views.last().map_or(0, |v| v.base_offset);
        let kept_aside = self.with_kept_tails();
        let mut txns = TxnsRead::new();
        for (i, seg) in sealed.iter().enumerate() {
            if self.views[i + 1].base_offset > self.limit {
                cleaned_through = seg.base_offset;
                break;
            }
            if seg.size == 0 {
                // Empty before this pass (a start-up cut it to nothing): not this pass's to
                // merge or delete.
                self.close(group.take(), cleaned)?;
                continue;
            }
            // Whether the segment joins the group is decided before it is cleaned, from its
            // size and offsets as they are (what it keeps is no larger but for a few bytes a
            // record where a horizon is stored, which `segment.bytes`, at most 2 GiB, leaves
            // room for in the index's 32-bit positions), so that the pass writes as it reads;
            // what this pass leaves small merges at the next.
            let last = self.views[i + 1].base_offset - 1;
            let joins = group.as_ref().is_some_and(|g| {
                g.fits(seg.size, last, self.segment_bytes)
                    && self.joins_in_time(g.start_ts, seg.max_timestamp)
                    // A cut tail kept beside the segment goes with the segment's own files, when
                    // retention deletes it; merged into another, it would go now.
                    && !kept_aside.contains(&seg.base_offset)
            });
            if !joins {
                self.close(group.take(), cleaned)?;
            }
            let mut start_ts = NO_TIMESTAMP;
            if group.is_none() {
                seg.for_each_header(0, |_, h| {
                    start_ts = h.max_timestamp;
                    false
                })?;
            }
            let g = group.get_or_insert_with(|| Group {
                start_ts,
                ..Group::default()
            });
            g.members.push(seg.clone());
            let first = &g.members[0];
            if let Some(held) = g.held.take() {
                // A second segment joins: the group is written, from its first segment.
                let mut out = Out::create(self, first.base_offset, first.written_ms)?;
                match held {
                    Held::Bytes(bytes) => out.push(&bytes)?,
                    Held::Again(mut before) => {
                        let push = |b: &[u8], _| out.push(b);
                        self.clean_segment(first, &latest, now_ms, &mut before, push)?;
                    }
                }
                g.out = Some(out);
            }
            let kept = match &mut g.out {
                Some(out) => {
                    out.member(seg.written_ms)?;
                    self.clean_segment(seg, &latest, now_ms, &mut txns, |b, _| out.push(b))?
                }
                None => self.clean_first(seg, &latest, now_ms, &mut txns, g)?,
            };
            next_expiry = earliest(next_expiry, kept.next_tombstone_expiry);
            held = earliest(held, kept.held);
            g.size += kept.size;
            g.removed += kept.removed;
            g.markers_removed.extend(kept.markers_removed);
        }
        self.close(group.take(), cleaned)?;
        Ok((cleaned_through, next_expiry, held))
    }

    /// Cleans `seg`, the first segment of group `g`: written if it loses a record, else held
    /// ([`Held`]) until a second segment joins. Its kept batches are held in memory up to
    /// [`HOLD_BYTES`]; a larger segment that loses a record only after that is read again.
    fn clean_first(
        &self,
        seg: &SegmentView,
        latest: &Latest,
        now_ms: i64,
        txns: &mut TxnsRead,
        g: &mut Group,
    ) -> Result<Kept, StorageError> {
        let mut before = txns.clone();
        let mut state = First::Holding(Vec::new());
        let kept = self.clean_segment(seg, latest, now_ms, txns, |b, changed| {
            match &mut state {
                First::Holding(held) if held.len() + b.len() <= hold_limit() => {
                    held.extend_from_slice(b);
                }
                First::Holding(held) if changed > 0 => {
                    let mut out = Out::create(self, seg.base_offset, seg.written_ms)?;
                    out.push(held)?;
                    out.push(b)?;
                    state = First::Writing(out);
                }
                First::Holding(_) => state = First::Counting,
                First::Writing(out) => out.push(b)?,
                First::Counting => {}
            }
            Ok(())
        })?;
        match state {
            First::Holding(held) if kept.changed() == 0 => g.held = Some(Held::Bytes(held)),
            First::Counting if kept.changed() == 0 => g.held = Some(Held::Again(before)),
            First::Holding(held) => {
                let mut out = Out::create(self, seg.base_offset, seg.written_ms)?;
                out.push(&held)?;
                g.out = Some(out);
            }
            First::Writing(out) => g.out = Some(out),
            First::Counting => {
                // It changed past the first HOLD_BYTES: read again, written this time.
                let mut out = Out::create(self, seg.base_offset, seg.written_ms)?;
                self.clean_segment(seg, latest, now_ms, &mut before, |b, _| out.push(b))?;
                g.out = Some(out);
            }
        }
        Ok(kept)
    }

    /// On a topic that also deletes by time, whether a segment whose newest record is at
    /// `max_timestamp` may join a group whose first batch is at `start_ts`: retention deletes a
    /// segment by its newest record, so a group must not span more than a tenth of
    /// `retention.ms`, or its oldest records would outlive their time (and merging every new
    /// segment into the first would keep the whole log).
    fn joins_in_time(&self, start_ts: i64, max_timestamp: i64) -> bool {
        self.retention_ms.is_none_or(|r| {
            start_ts != NO_TIMESTAMP
                && max_timestamp != NO_TIMESTAMP
                && max_timestamp.saturating_sub(start_ts) <= r / 10
        })
    }

    /// Base offsets of the segments with a tail a start-up cut and kept beside them
    /// (`{base}.log.discarded-*`).
    fn with_kept_tails(&self) -> HashSet<i64> {
        fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let (stem, _) = name.to_str()?.split_once(".log.discarded-")?;
                super::log::parse_base(stem)
            })
            .collect()
    }

    /// Ends a group: one that was written is made durable and joins the outcome.
    fn close(&self, group: Option<Group>, cleaned: &mut Vec<Cleaned>) -> Result<(), StorageError> {
        let Some(Group {
            members,
            out: Some(out),
            removed,
            markers_removed,
            ..
        }) = group
        else {
            return Ok(());
        };
        let base = members[0].base_offset;
        match out.finish() {
            Ok(segment) => {
                cleaned.push(Cleaned {
                    members,
                    segment,
                    removed,
                    markers_removed,
                });
                Ok(())
            }
            Err(e) => {
                for p in cleaned_files(&self.dir, base) {
                    let _ = fs::remove_file(p);
                }
                Err(e)
            }
        }
    }

    /// Reads every batch of the viewed log (the active segment included) for the latest offset
    /// of each key and what became of each transaction.
    fn latest(&self) -> Result<Latest, StorageError> {
        let mut latest: HashMap<KeyHash, i64> = HashMap::new();
        let mut last_batch: HashMap<i64, i64> = HashMap::new();
        // A transaction's keys count once it commits; an aborted one's batches are dropped, an
        // undecided one's are kept as they are.
        let mut open: HashMap<i64, OpenTxn> = HashMap::new();
        let mut aborted: HashSet<i64> = HashSet::new();
        let mut committed_at: HashMap<i64, i64> = HashMap::new();
        let newest = |latest: &mut HashMap<KeyHash, i64>, k: KeyHash, offset: i64| {
            let at = latest.entry(k).or_insert(offset);
            *at = (*at).max(offset);
        };
        for seg in &self.views {
            for_each_batch(seg, |h, bytes| {
                if h.last_offset() >= self.limit {
                    return Ok(());
                }
                if h.has_producer_id() {
                    last_batch.insert(h.producer_id, h.base_offset);
                }
                if h.is_control() {
                    if let Some(txn) = open.remove(&h.producer_id) {
                        if marker_of(bytes) == Some(Marker::Commit) {
                            for (k, offset) in txn.keys {
                                newest(&mut latest, k, offset);
                            }
                            for base in txn.tombstones {
                                committed_at.insert(base, seg.written_ms);
                            }
                        } else {
                            aborted.extend(txn.batches);
                        }
                    }
                    return Ok(());
                }
                let plain = plain(bytes, h)?;
                let records = Records::parse(&plain, h).map_err(codec("compaction decode"))?;
                let keyed =
                    keys(&records, h).filter_map(|(k, offset, _)| Some((key_hash(k?), offset)));
                if h.is_transactional() {
                    let txn = open.entry(h.producer_id).or_default();
                    txn.batches.push(h.base_offset);
                    txn.keys.extend(keyed);
                    if h.delete_horizon().is_none() && keys(&records, h).any(|(_, _, t)| t) {
                        txn.tombstones.push(h.base_offset);
                    }
                    return Ok(());
                }
                for (k, offset) in keyed {
                    newest(&mut latest, k, offset);
                }
                Ok(())
            })?;
        }
        let undecided = open.into_values().flat_map(|t| t.batches).collect();
        Ok(Latest {
            latest,
            last_batch,
            aborted,
            undecided,
            committed_at,
        })
    }

    /// Cleans sealed segment `seg`: hands `emit` each batch with only the records to keep (see
    /// the module docs) and whether the segment must be written so far ([`Kept::changed`]). `txns`: the
    /// transactions read before it, and after it when it returns.
    fn clean_segment(
        &self,
        seg: &SegmentView,
        log: &Latest,
        now_ms: i64,
        txns: &mut TxnsRead,
        mut emit: impl FnMut(&[u8], u64) -> Result<(), StorageError>,
    ) -> Result<Kept, StorageError> {
        let mut kept = Kept::default();
        for_each_batch(seg, |h, bytes| {
            // A tombstone's or a marker's delete horizon: stored in the batch by the pass that
            // first wrote it keeping one, else `delete.retention.ms` after the segment was
            // written (or, in a transaction, its commit).
            let stored = h.delete_horizon();
            let written = log
                .committed_at
                .get(&h.base_offset)
                .map_or(seg.written_ms, |&c| c.max(seg.written_ms));
            let horizon = stored.unwrap_or(written.saturating_add(self.delete_retention_ms));
            if h.is_control() {
                // A marker goes once none of its transaction's batches is left, its horizon
                // has passed, and it is not its producer's last batch (whose epoch must
                // survive a restart), as in Kafka.
                let read = txns.remove(&h.producer_id);
                let eligible = marker_of(bytes).is_some()
                    && log.last_batch.get(&h.producer_id) != Some(&h.base_offset);
                if !eligible || read.is_some() {
                    if eligible && read == Some(false) {
                        // Its transaction's last batches go now: the next pass may take it.
                        let due = Some(horizon);
                        kept.next_tombstone_expiry = earliest(kept.next_tombstone_expiry, due);
                    }
                    kept.size += bytes.len() as u64;
                    return emit(bytes, kept.changed());
                }
                if now_ms > horizon && h.base_offset < self.tombstones_below {
                    kept.removed += h.record_count.max(0) as u64;
                    kept.markers_removed.push(h.base_offset);
                    return Ok(());
                }
                kept.keeps_until(now_ms, horizon, h.base_offset);
                let tagged;
                let out = if stored.is_some() {
                    bytes
                } else {
                    let plain = plain(bytes, h)?;
                    let records = Records::parse(&plain, h).map_err(codec("compaction decode"))?;
                    let all: Vec<usize> = (0..records.len()).collect();
                    tagged = record_spans::compressed(records.keep_offsets(h, &all, Some(horizon)))
                        .map_err(codec("compaction encode"))?;
                    &tagged[..]
                };
                kept.size += out.len() as u64;
                return emit(out, kept.changed());
            }
            if h.is_transactional() {
                txns.entry(h.producer_id).or_insert(false);
            }
            if log.undecided.contains(&h.base_offset) {
                txns.insert(h.producer_id, true);
                kept.size += bytes.len() as u64;
                return emit(bytes, kept.changed());
            }
            // A delete first seen after that horizon (a pass that stops where an earlier one did
            // not reach; it was behind an open transaction, so read_committed consumers could
            // not read it, or no pass ran for that long) counts from now, as Kafka counts from
            // the first cleaning that sees it; its batch is written to keep that.
            let late = stored.is_none()
                && self.first_reached_from.is_some_and(|b| h.base_offset >= b)
                && now_ms >= horizon;
            let horizon = if late {
                now_ms.saturating_add(self.delete_retention_ms)
            } else {
                horizon
            };
            let plain = plain(bytes, h)?;
            let records = Records::parse(&plain, h).map_err(codec("compaction decode"))?;
            let total = records.len();
            let dropped = log.aborted.contains(&h.base_offset);
            // The offset of the first tombstone it keeps.
            let mut keeps_tombstone = None;
            let keep: Vec<usize> = keys(&records, h)
                .enumerate()
                .filter(|(_, (key, offset, tombstone))| {
                    if dropped {
                        return false;
                    }
                    let Some(k) = key else { return false };
                    if log.latest.get(&key_hash(k)) != Some(offset) {
                        return false;
                    }
                    if *tombstone {
                        if now_ms > horizon && *offset < self.tombstones_below {
                            return false;
                        }
                        keeps_tombstone = earliest(keeps_tombstone, Some(*offset));
                    }
                    true
                })
                .map(|(i, _)| i)
                .collect();
            kept.removed += (total - keep.len()) as u64;
            if let Some(first) = keeps_tombstone {
                kept.keeps_until(now_ms, horizon, first);
                kept.late += u64::from(late);
            }
            // A tombstone's horizon goes into its batch when the batch is first written again,
            // so that merging its segment with later ones (a new write time) does not move it.
            let store_horizon = (keeps_tombstone.is_some() && stored.is_none()).then_some(horizon);
            let rewritten;
            // A batch without records (a plugin's filter emptied it) is kept, as one that lost
            // all its records here is, only while it is its producer's last.
            let out = if keep.len() == total && total > 0 && store_horizon.is_none() {
                bytes
            } else if !keep.is_empty() {
                rewritten = record_spans::compressed(records.keep_offsets(h, &keep, store_horizon))
                    .map_err(codec("compaction encode"))?;
                &rewritten[..]
            } else if h.has_producer_id()
                && log.last_batch.get(&h.producer_id) == Some(&h.base_offset)
            {
                rewritten = empty_batch(bytes, h);
                &rewritten[..]
            } else {
                kept.empties_removed += u64::from(total == 0);
                return Ok(());
            };
            if h.is_transactional() {
                txns.insert(h.producer_id, true);
            }
            kept.size += out.len() as u64;
            emit(out, kept.changed())
        })?;
        Ok(kept)
    }
}

/// The earlier of two optional times.
fn earliest(a: Option<i64>, b: Option<i64>) -> Option<i64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Completes the swaps a crash interrupted after a pass committed them (step 4 of the module
/// docs): for each `{base}.log.swap` in `dir`, the segments whose base offset lies after `base`
/// and below the swap's next offset are deleted (their kept records are in it; a segment
/// after its last batch gave it nothing and stays), the base segment's index files too, and
/// the swap becomes `{base}.log`. Runs when a log is opened, before its segments are listed.
pub(super) fn complete_interrupted_swaps(dir: &Path) -> Result<(), StorageError> {
    let mut swaps = Vec::new();
    let mut logs = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let path = entry.map_err(io_err(dir))?.path();
        let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        if let Some(base) = name
            .strip_suffix(".log.swap")
            .and_then(super::log::parse_base)
        {
            swaps.push(base);
        } else if let Some(base) = name.strip_suffix(".log").and_then(super::log::parse_base) {
            logs.push(base);
        }
    }
    if swaps.is_empty() {
        return Ok(());
    }
    swaps.sort_unstable();
    for &base in &swaps {
        let swap = swap_path(dir, base);
        let next = next_offset_of_file(&swap, base)?;
        let replaced: Vec<i64> = logs
            .iter()
            .copied()
            .filter(|&b| b > base && b < next)
            .collect();
        for &b in &replaced {
            delete_segment_files(dir, b)?;
        }
        for p in [index_path(dir, base), timeindex_path(dir, base)] {
            remove_if_there(&p)?;
        }
        let path = log_path(dir, base);
        fs::rename(&swap, &path).map_err(io_err(&path))?;
        tracing::info!(
            segment = %path.display(),
            segments_deleted_now = replaced.len(),
            "completed a compaction swap that a stop interrupted after its commit"
        );
    }
    sync_dir(dir)
}

#[cfg(test)]
thread_local! {
    /// Test seam: when `Some(n)`, a swap on this thread stops with an error at its n-th stop
    /// (1: after the commit; 2: after deleting each replaced segment; 3: after the deletes),
    /// leaving the files as a crash there would.
    static STOP_SWAP_AT: std::cell::Cell<Option<u8>> = const { std::cell::Cell::new(None) };
}

#[cfg(test)]
fn stop_here(step: u8, dir: &Path) -> Result<(), StorageError> {
    if STOP_SWAP_AT.get() == Some(step) {
        return Err(StorageError::Io {
            path: dir.to_path_buf(),
            source: std::io::Error::other("stopped for a test"),
        });
    }
    Ok(())
}

#[cfg(not(test))]
fn stop_here(_step: u8, _dir: &Path) -> Result<(), StorageError> {
    Ok(())
}

fn remove_if_there(path: &Path) -> Result<(), StorageError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(path)(e)),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir))
}

impl PartitionLog {
    /// One whole compaction pass with the log held (see the module docs), on a broker alone
    /// (the limit is the last stable offset below the log end).
    pub(super) fn compact(
        &mut self,
        now_ms: i64,
        report: &mut MaintenanceReport,
    ) -> Result<(), StorageError> {
        let limit = self.last_stable_offset(self.log_end_offset());
        if let Some(pass) = self.start_compaction(now_ms, limit, i64::MAX)? {
            let outcome = pass.run(now_ms)?;
            self.finish_compaction(outcome, now_ms, report)?;
        }
        Ok(())
    }

    /// A compaction pass when the policy asks for one and there is something to do (new sealed
    /// data, at least `min.cleanable.dirty.ratio` of it or [`MERGE_AT_SEGMENTS`] segments, or a
    /// tombstone or marker due to go); `None` otherwise. `limit` is the last stable offset
    /// below the high watermark (the log end on a broker alone): what is at or above it is
    /// neither looked at nor cleaned. `copied_below` is, on a cluster's leader, the lowest log
    /// end of its followers (`i64::MAX` elsewhere): no delete at or above it goes. Cheap: run
    /// the pass itself ([`CompactionPass::run`]) after releasing the log.
    pub fn start_compaction(
        &self,
        now_ms: i64,
        limit: i64,
        copied_below: i64,
    ) -> Result<Option<CompactionPass>, StorageError> {
        self.check_not_failed()?;
        // Most partitions do not compact: nothing to add up for them at each look.
        if !self.config.compact {
            return Ok(None);
        }
        let state = self.compaction;
        let tombstones_below = state.clean_through.min(copied_below);
        // The share of sealed bytes written since the last cleaning (all of it after a restart).
        let sealed = &self.segments[..self.segments.len().saturating_sub(1)];
        let dirty: u64 = sealed
            .iter()
            .filter(|s| s.base_offset >= state.clean_through)
            .map(|s| s.size)
            .sum();
        let total: u64 = sealed.iter().map(|s| s.size).sum();
        let dirty_segments = sealed
            .iter()
            .filter(|s| s.base_offset >= state.clean_through)
            .count();
        let new_data = dirty > 0
            && (dirty as f64 >= self.config.min_cleanable_dirty_ratio * total as f64
                || dirty_segments >= MERGE_AT_SEGMENTS);
        let tombstones_due = state.next_tombstone_expiry.is_some_and(|t| now_ms > t)
            || state.held_from.is_some_and(|held| tombstones_below > held);
        // Not while a rolled segment awaits its seal: the pass would read it before it is durable
        // and a seal running across the swap could write stale index files.
        let sealing = !self.unsealed.is_empty();
        if !self.config.compact
            || self.segments.len() < 2
            || !(new_data || tombstones_due)
            || sealing
        {
            return Ok(None);
        }
        let views = self.segments.iter().map(Segment::view).collect();
        Ok(Some(CompactionPass {
            dir: self.dir.clone(),
            views,
            limit,
            tombstones_below,
            first_reached_from: state.cleaned_once.then_some(state.clean_through),
            delete_retention_ms: self.config.delete_retention_ms,
            retention_ms: self.config.retention_ms.filter(|_| self.config.delete),
            segment_bytes: self.config.segment_bytes,
            index_interval: self.config.index_interval_bytes,
        }))
    }

    /// Swaps in the groups a pass cleaned, except those whose segments changed since it started
    /// (their files are deleted), and remembers how far the log is clean when every group went
    /// in (step 4 of the module docs). An error after the swap's commit reads the log again from
    /// the disk, which completes the swap as a start-up would.
    pub fn finish_compaction(
        &mut self,
        outcome: CompactionOutcome,
        now_ms: i64,
        report: &mut MaintenanceReport,
    ) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        let mut swaps = Vec::new();
        let mut drops = Vec::new();
        let mut complete = true;
        for c in outcome.cleaned {
            match self.replaced_by(&c) {
                // Nothing left and not the log's first segment: the segments just go.
                Some(i) if c.segment.size == 0 && i > 0 => {
                    c.discard(&dir);
                    drops.push(c);
                }
                Some(_) => swaps.push(c),
                None => {
                    complete = false;
                    c.discard(&dir);
                }
            }
        }
        commit_swaps(&dir, &swaps)?;
        let markers_removed: HashSet<i64> = swaps
            .iter()
            .chain(&drops)
            .flat_map(|c| c.markers_removed.iter().copied())
            .collect();
        if let Err(e) = self.apply_swaps(swaps, drops, report) {
            tracing::error!(dir = %dir.display(), error = %e, "a compaction swap failed after its commit; reading the partition again from the disk, which completes it");
            self.reopen(now_ms)?;
            return Err(e);
        }
        // An aborted transaction whose marker went has none of its records left either (a marker
        // goes only then): listing it would make read_committed consumers drop its producer's
        // later batches while they wait for a marker that is not there.
        self.txns.forget_aborted_at(&markers_removed);
        self.compaction.next_tombstone_expiry = outcome.next_tombstone_expiry;
        self.compaction.held_from = outcome.held_from;
        if complete {
            self.compaction.clean_through = outcome.cleaned_through;
            self.compaction.cleaned_once = true;
        } else if outcome.held_from.is_some() {
            // Its bound did not move (no complete pass): looked at again at the next check.
            self.compaction.held_from = None;
            self.compaction.next_tombstone_expiry =
                earliest(outcome.next_tombstone_expiry, Some(now_ms));
        }
        Ok(())
    }

    /// Where the sealed segments a group replaces start in the log, if they are all still there
    /// as the pass read them.
    fn replaced_by(&self, c: &Cleaned) -> Option<usize> {
        let sealed = &self.segments[..self.segments.len() - 1];
        let i = sealed.iter().position(|s| s.base_offset == c.base())?;
        let now = sealed.get(i..i + c.members.len())?;
        now.iter()
            .zip(&c.members)
            .all(|(s, m)| m.is_of(s) && s.base_offset == m.base_offset && s.size == m.size)
            .then_some(i)
    }

    /// What follows the commit of a swap (module docs, step 4): the segments each swap replaces
    /// are deleted, and those of the groups left with nothing (every record they held is
    /// superseded by one kept in this log, swapped in or not); the swaps are renamed into
    /// place; one directory fsync after each step.
    fn apply_swaps(
        &mut self,
        swaps: Vec<Cleaned>,
        drops: Vec<Cleaned>,
        report: &mut MaintenanceReport,
    ) -> Result<(), StorageError> {
        let dir = self.dir.clone();
        stop_here(1, &dir)?;
        for c in &swaps {
            for m in &c.members[1..] {
                delete_segment_files(&dir, m.base_offset)?;
                stop_here(2, &dir)?;
            }
            for p in [index_path(&dir, c.base()), timeindex_path(&dir, c.base())] {
                remove_if_there(&p)?;
            }
        }
        for c in &drops {
            for m in &c.members {
                delete_segment_files(&dir, m.base_offset)?;
            }
        }
        if swaps.is_empty() && drops.is_empty() {
            return Ok(());
        }
        sync_dir(&dir)?;
        stop_here(3, &dir)?;
        for c in drops {
            for m in &c.members {
                self.segments.retain(|s| s.base_offset != m.base_offset);
                self.unsealed.retain(|&b| b != m.base_offset);
            }
            report.segments_deleted += c.members.len();
            report.records_removed += c.removed;
        }
        if swaps.is_empty() {
            return Ok(());
        }
        for c in swaps {
            let base = c.base();
            let path = log_path(&dir, base);
            fs::rename(swap_path(&dir, base), &path).map_err(io_err(&path))?;
            let mut segment = c.segment;
            let mut placed = true;
            for p in [index_path(&dir, base), timeindex_path(&dir, base)] {
                if let Err(e) = fs::rename(cleaned_path(&p), &p) {
                    // The index stays in memory; the next start rebuilds the file from the log.
                    tracing::warn!(file = %p.display(), error = %e, "cannot put a compacted segment's index file in place");
                    placed = false;
                }
            }
            if placed {
                segment.release_indexes();
            }
            let i = self
                .segments
                .iter()
                .position(|s| s.base_offset == base)
                .expect("checked by replaced_by, and the log was held since");
            let replaced = c.members.len();
            self.segments.splice(i..i + replaced, [segment]);
            for m in &c.members {
                self.unsealed.retain(|&u| u != m.base_offset);
            }
            report.segments_compacted += 1;
            report.segments_deleted += replaced - 1;
            report.records_removed += c.removed;
        }
        sync_dir(&dir)
    }
}

/// The commit of a swap (module docs, step 4): every group's `{base}.log.cleaned` is renamed
/// `{base}.log.swap`, then the directory fsynced. On failure every group is abandoned and the
/// log is as it was.
fn commit_swaps(dir: &Path, swaps: &[Cleaned]) -> Result<(), StorageError> {
    if swaps.is_empty() {
        return Ok(());
    }
    let committed = swaps
        .iter()
        .try_for_each(|c| {
            let swap = swap_path(dir, c.base());
            fs::rename(cleaned_path(&log_path(dir, c.base())), &swap).map_err(io_err(&swap))
        })
        .and_then(|()| sync_dir(dir));
    if committed.is_err() {
        for c in swaps {
            c.discard(dir);
        }
    }
    committed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testutil::*;
    use crate::storage::{FlushPolicy, LogConfig};
    use kafka_protocol::records::Compression;

    const NOW: i64 = 1_700_000_000_000;
    const DAY: i64 = 24 * 3600 * 1000;

    fn cfg() -> LogConfig {
        LogConfig {
            compact: true,
            delete: false,
            segment_bytes: 1,
            min_cleanable_dirty_ratio: 0.0,
            flush: FlushPolicy::Never,
            ..LogConfig::default()
        }
    }

    /// The whole log as fetches from its start read it, in order.
    fn reads(log: &PartitionLog) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut off = log.log_start_offset();
        while off < log.log_end_offset() {
            let got = log.read(off, usize::MAX).unwrap();
            if got.is_empty() {
                break;
            }
            for r in parse_batches(&got) {
                off = r.unwrap().1.next_offset();
            }
            out.push(got);
        }
        out
    }

    /// key -> value of everything readable, in offset order.
    fn contents(log: &PartitionLog) -> Vec<(i64, TestRec)> {
        reads(log).iter().flat_map(|got| decode_all(got)).collect()
    }

    /// An uncompressed batch of one record, `key` = `value`, at NOW.
    fn one(key: &str, value: &str) -> Vec<u8> {
        encode_batch(&[kv(key, value, NOW)], Compression::None, -1, -1, -1)
    }

    /// An uncompressed batch of one tombstone for `key`, at NOW.
    fn gone(key: &str) -> Vec<u8> {
        encode_batch(&[tombstone(key, NOW)], Compression::None, -1, -1, -1)
    }

    /// What compaction keeps of 60 one-record batches over keys a, b, c in turn.
    fn last_of_60_over_3_keys() -> Vec<(i64, TestRec)> {
        vec![
            (57, kv("a", "a57", NOW)),
            (58, kv("b", "b58", NOW)),
            (59, kv("c", "c59", NOW)),
        ]
    }

    #[test]
    fn emptied_segments_are_deleted_and_their_offsets_read_from_the_next_batch() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        // 60 one-record segments over 3 keys: each key's last value is in the last 3.
        for i in 0..60 {
            let key = ["a", "b", "c"][i % 3];
            log.append(&one(key, &format!("{key}{i}")), NOW).unwrap();
        }
        assert_eq!(log.segment_count(), 60);
        let r = log.maintenance(NOW + 10).unwrap();
        assert_eq!(r.records_removed, 57);
        // The first segment (emptied, but it holds the log start) and those of a, b and c.
        assert_eq!(log.segment_count(), 4);
        assert_eq!(r.segments_deleted, 56);
        let files = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "log")
            })
            .count();
        assert_eq!(files, 4);
        let expect = last_of_60_over_3_keys();
        assert_eq!(contents(&log), expect);
        assert_eq!(log.log_start_offset(), 0);
        // Any offset of a deleted segment reads from the next batch kept.
        for off in [0, 1, 30, 56] {
            let got = decode_all(&log.read(off, 1).unwrap());
            assert_eq!(got[0].0, 57, "fetch at {off}");
        }
        // And so after a restart.
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 60));
        assert_eq!(contents(&log), expect);
        assert_eq!(decode_all(&log.read(20, 1).unwrap())[0].0, 57);
    }

    #[test]
    fn a_segment_empty_for_another_reason_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        for (i, key) in ["a", "b", "c", "a", "d"].iter().enumerate() {
            log.append(&one(key, &format!("{key}{i}")), NOW).unwrap();
        }
        drop(log);
        // Segment 2 (key c) lost its bytes, as a start-up that cut a torn tail leaves one.
        let path = log_path(dir.path(), 2);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(0)
            .unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let r = log.maintenance(NOW + 10).unwrap();
        // a0 goes and its segment with it; the segment emptied by the cut stays.
        assert_eq!(r.records_removed, 1);
        assert_eq!(r.segments_deleted, 0, "the first segment stays");
        assert!(path.exists());
        log.append(&one("b", "b5"), NOW).unwrap();
        let r = log.maintenance(NOW + 20).unwrap();
        assert_eq!(
            (r.records_removed, r.segments_deleted),
            (1, 1),
            "b1's segment"
        );
        assert!(path.exists());
        assert!(!log_path(dir.path(), 1).exists());
    }

    /// The `.log` files in `dir`, and whether anything a pass writes is left there.
    fn log_files(dir: &std::path::Path) -> (usize, usize) {
        let names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        let logs = names.iter().filter(|n| n.ends_with(".log")).count();
        let left = names
            .iter()
            .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap"))
            .count();
        (logs, left)
    }

    /// A log rolled after every batch, then allowed `segment_bytes` per segment.
    fn one_per_segment(
        dir: &std::path::Path,
        batches: &[Vec<u8>],
        segment_bytes: u64,
    ) -> PartitionLog {
        let mut log = PartitionLog::open(
            dir,
            LogConfig {
                index_interval_bytes: 1,
                ..cfg()
            },
            NOW,
        )
        .unwrap();
        for b in batches {
            log.append(b, NOW).unwrap();
        }
        log.seal_all().unwrap();
        log.set_config(LogConfig {
            segment_bytes,
            index_interval_bytes: 1,
            ..cfg()
        });
        log
    }

    #[test]
    fn small_segments_are_merged_up_to_segment_bytes() {
        let dir = tempfile::tempdir().unwrap();
        // 60 one-record segments, every key different: compaction removes nothing.
        let batches: Vec<Vec<u8>> = (0..60).map(|i| one(&format!("k{i:02}"), "v")).collect();
        let size = batches[0].len() as u64;
        let mut log = one_per_segment(dir.path(), &batches, 10 * size);
        let before = contents(&log);
        assert_eq!(before.len(), 60);
        let r = log.maintenance(NOW + 10).unwrap();
        // The 59 sealed ones become 6 of at most 10 batches; the active one stays.
        assert_eq!(r.records_removed, 0);
        assert_eq!((r.segments_compacted, r.segments_deleted), (6, 53));
        assert_eq!(log.segment_bases(), vec![0, 10, 20, 30, 40, 50, 59]);
        assert_eq!(log_files(dir.path()), (7, 0));
        assert_eq!(contents(&log), before);
        for off in 0..60 {
            let got = decode_all(&log.read(off, 1).unwrap());
            assert_eq!(got[0], before[off as usize], "fetch at {off}");
        }
        // A segment rolled later joins the last group while it has room.
        let config = log.config().clone();
        log.set_config(LogConfig {
            segment_bytes: 1,
            ..config.clone()
        });
        log.append(&one("k60", "v"), NOW).unwrap();
        log.set_config(config);
        log.seal_all().unwrap();
        let r = log.maintenance(NOW + 20).unwrap();
        assert_eq!((r.segments_compacted, r.segments_deleted), (1, 1));
        assert_eq!(log.segment_bases(), vec![0, 10, 20, 30, 40, 50, 60]);
        let r = log.maintenance(NOW + 30).unwrap();
        assert_eq!(r, MaintenanceReport::default(), "nothing new to do");
        // The index files the pass wrote are those a start-up would build from the log.
        let written: Vec<Vec<u8>> = [index_path(dir.path(), 10), timeindex_path(dir.path(), 10)]
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert!(!written[0].is_empty());
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        assert_eq!(contents(&log)[..60], before[..]);
        drop(log);
        std::fs::remove_file(index_path(dir.path(), 10)).unwrap();
        std::fs::remove_file(timeindex_path(dir.path(), 10)).unwrap();
        let log = PartitionLog::open(
            dir.path(),
            LogConfig {
                index_interval_bytes: 1,
                ..cfg()
            },
            NOW,
        )
        .unwrap();
        let rebuilt: Vec<Vec<u8>> = [index_path(dir.path(), 10), timeindex_path(dir.path(), 10)]
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert_eq!(written, rebuilt);
        assert_eq!(contents(&log)[..60], before[..]);
    }

    #[test]
    fn merged_segments_keep_only_the_latest_values_and_the_first_base() {
        let dir = tempfile::tempdir().unwrap();
        // 60 one-record segments over 3 keys: each key's last value is in the last 3.
        let batches: Vec<Vec<u8>> = (0..60)
            .map(|i| {
                let key = ["a", "b", "c"][i % 3];
                one(key, &format!("{key}{i}"))
            })
            .collect();
        let mut log = one_per_segment(dir.path(), &batches, 1 << 20);
        let r = log.maintenance(NOW + 10).unwrap();
        assert_eq!(r.records_removed, 57);
        // One segment at the log's start holding a57 and b58, and the active one with c59.
        assert_eq!(log.segment_bases(), vec![0, 59]);
        assert_eq!(log_files(dir.path()), (2, 0));
        let expect = last_of_60_over_3_keys();
        assert_eq!(contents(&log), expect);
        assert_eq!(log.log_start_offset(), 0);
        assert_eq!(decode_all(&log.read(3, 1).unwrap())[0].0, 57);
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 60));
        assert_eq!(contents(&log), expect);
    }

    /// The keys readable in `log`, in offset order.
    fn keys_of(log: &PartitionLog) -> Vec<String> {
        contents(log)
            .into_iter()
            .map(|(_, r)| String::from_utf8(r.key.unwrap().to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn a_tombstone_keeps_its_horizon_in_its_batch_while_its_segment_merges() {
        let dir = tempfile::tempdir().unwrap();
        let batches = vec![
            one("a", "a0"),
            gone("b"),
            one("c", "c0"),
            one("d", "d0"),
            one("e", "e0"), // active
        ];
        let mut log = one_per_segment(dir.path(), &batches, 1 << 20);
        log.maintenance(NOW + 10).unwrap();
        // b's tombstone merges with the segments around it; its batch now says when it may
        // go: delete.retention.ms after the broker stored it.
        assert_eq!(log.segment_bases(), vec![0, 4]);
        let stored = log.read(1, 1).unwrap();
        let (_, h, _) = parse_batches(&stored).next().unwrap().unwrap();
        assert_eq!((h.base_offset, h.delete_horizon()), (1, Some(NOW + DAY)));
        assert_eq!(contents(&log)[1], (1, tombstone("b", NOW)));
        // Half a day later, newer segments merge into the same segment: a new write time for
        // its file, the same horizon for the tombstone.
        let later = NOW + DAY / 2;
        let config = log.config().clone();
        log.set_config(LogConfig {
            segment_bytes: 1,
            ..config.clone()
        });
        log.append(&one("f", "f0"), later).unwrap();
        log.append(&one("g", "g0"), later).unwrap();
        log.set_config(config);
        log.maintenance(later + 10).unwrap();
        assert_eq!(log.segment_bases(), vec![0, 6]);
        assert_eq!(keys_of(&log), ["a", "b", "c", "d", "e", "f", "g"]);
        assert_eq!(log.maintenance(NOW + DAY - 10).unwrap().records_removed, 0);
        // Its day is up: it goes, on the time it was stored.
        assert_eq!(log.maintenance(NOW + DAY + 20).unwrap().records_removed, 1);
        assert_eq!(keys_of(&log), ["a", "c", "d", "e", "f", "g"]);
        assert_eq!(log.segment_bases(), vec![0, 6]);
    }

    /// Every file in `dir`, by name.
    fn files_of(dir: &std::path::Path) -> std::collections::BTreeMap<String, Vec<u8>> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| {
                let path = e.unwrap().path();
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                (name, fs::read(&path).unwrap())
            })
            .collect()
    }

    /// A pass writes the same files whatever it may hold in memory: segments far larger than
    /// the hold that lose a record at their start, at their end or not at all (one keeping a
    /// tombstone, whose horizon would be stored if it were written), alone or merged.
    #[test]
    fn a_pass_writes_the_same_whatever_it_holds_in_memory() {
        // Five segments of 40 batches: unique keys but for a tombstone in the 1st, and one
        // superseded record in the 2nd (its last), the 3rd (its first) and the 4th (its middle).
        let segments: Vec<Vec<Vec<u8>>> = (0..5)
            .map(|s| {
                (0..40)
                    .map(|i| match (s, i) {
                        (1, 39) | (2, 0) | (3, 20) => one(&format!("old{s}"), "superseded"),
                        (0, 7) => gone("lonely"),
                        (4, 30..33) => one(&format!("old{}", i - 29), "newer"),
                        _ => one(&format!("k{s}-{i:02}"), "value"),
                    })
                    .collect()
            })
            .collect();
        let segment_size: u64 = segments[0].iter().map(|b| b.len() as u64).sum();
        let run = |hold: usize, merge: bool| {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                index_interval_bytes: 100,
                ..cfg()
            };
            let mut log = PartitionLog::open(dir.path(), config.clone(), NOW).unwrap();
            log.set_config(LogConfig {
                segment_bytes: 1 << 30,
                ..config.clone()
            });
            for (s, batches) in segments.iter().enumerate() {
                if s > 0 {
                    log.roll(NOW).unwrap();
                }
                for b in batches {
                    log.append(b, NOW).unwrap();
                }
            }
            log.seal_all().unwrap();
            // Each segment alone, or the first three's kept records fit in one.
            let segment_bytes = if merge {
                3 * segment_size
            } else {
                segment_size
            };
            log.set_config(LogConfig {
                segment_bytes,
                ..config
            });
            let first = fs::read(log_path(dir.path(), 0)).unwrap();
            HOLD_LIMIT.set(hold);
            let report = log.maintenance(NOW + 10);
            HOLD_LIMIT.set(HOLD_BYTES);
            let report = report.unwrap();
            let keys = keys_of(&log);
            let stored = log.read(7, 1).unwrap();
            let (_, tombstone, _) = parse_batches(&stored).next().unwrap().unwrap();
            (dir, report, keys, log.segment_bases(), first, tombstone)
        };
        for merge in [false, true] {
            let (want_dir, want, want_keys, want_bases, first, tombstone) = run(HOLD_BYTES, merge);
            assert_eq!(tombstone.base_offset, 7);
            assert_eq!(want.records_removed, 3);
            assert_eq!(want_keys.len(), 5 * 40 - 3);
            assert!(want_keys.contains(&"lonely".to_string()));
            if merge {
                // The first, keeping everything, is written with the two after it, its
                // tombstone's horizon stored.
                assert_eq!(want_bases, vec![0, 120, 160]);
                assert_eq!(tombstone.delete_horizon(), Some(NOW + DAY));
            } else {
                // The first segment loses nothing and is left as it was: its tombstone's batch
                // has no horizon stored.
                assert_eq!((want.segments_compacted, want_bases.len()), (3, 5));
                assert_eq!(tombstone.delete_horizon(), None);
                let after = fs::read(log_path(want_dir.path(), 0)).unwrap();
                assert!(after == first, "the first segment was written again");
            }
            for hold in [0, 1, 300, 2_000] {
                let (dir, report, keys, bases, ..) = run(hold, merge);
                assert_eq!(
                    (report, &keys, &bases),
                    (want.clone(), &want_keys, &want_bases),
                    "hold {hold}, merge {merge}"
                );
                let (got, want_files) = (files_of(dir.path()), files_of(want_dir.path()));
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    want_files.keys().collect::<Vec<_>>()
                );
                for (name, bytes) in &got {
                    assert!(
                        bytes == &want_files[name],
                        "{name} differs: hold {hold}, merge {merge}"
                    );
                }
            }
        }
    }

    /// The log of `one_per_segment` over `batches` after a pass whose swap stopped at `step`
    /// and a restart.
    fn stopped_at(step: u8, batches: &[Vec<u8>]) -> (tempfile::TempDir, PartitionLog) {
        let dir = tempfile::tempdir().unwrap();
        let mut log = one_per_segment(dir.path(), batches, 1 << 20);
        STOP_SWAP_AT.set(Some(step));
        let stopped = log.maintenance(NOW + 10);
        STOP_SWAP_AT.set(None);
        assert!(stopped.is_err(), "stop {step}");
        drop(log);
        let log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        assert_eq!(log_files(dir.path()).1, 0, "stop {step}: nothing left over");
        (dir, log)
    }

    #[test]
    fn a_swap_stopped_at_any_step_is_completed_at_the_next_start() {
        // x0 y0 z0 y1 | w0: the group of the first four keeps x0, z0 and y1.
        let batches = vec![
            one("x", "x0"),
            one("y", "y0"),
            one("z", "z0"),
            one("y", "y1"),
            one("w", "w0"),
        ];
        let expect = vec![
            (0, kv("x", "x0", NOW)),
            (2, kv("z", "z0", NOW)),
            (3, kv("y", "y1", NOW)),
            (4, kv("w", "w0", NOW)),
        ];
        for step in 1..=3 {
            let (_dir, log) = stopped_at(step, &batches);
            assert_eq!(contents(&log), expect, "stop {step}");
            assert_eq!(log.segment_bases(), vec![0, 4], "stop {step}");
            assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 5));
        }
    }

    #[test]
    fn a_stopped_swap_keeps_the_segments_after_its_last_batch() {
        // x0 y0 | y1: the group of the first two keeps only x0, at offset 0. A start-up that
        // completes its swap deletes no segment at 1 or later: y0's stays (y1 supersedes it,
        // so the next pass removes it), and nothing overlaps.
        let batches = vec![one("x", "x0"), one("y", "y0"), one("y", "y1")];
        let (_dir, mut log) = stopped_at(1, &batches);
        assert_eq!(log.segment_bases(), vec![0, 1, 2]);
        assert_eq!(offsets(&log), vec![0, 1, 2]);
        let r = log.maintenance(NOW + 20).unwrap();
        assert_eq!(r.records_removed, 1);
        assert_eq!(offsets(&log), vec![0, 2]);
    }

    /// (key, value) of everything readable.
    fn pairs(log: &PartitionLog) -> Vec<(String, Option<String>)> {
        let text = |b: Option<Bytes>| b.map(|b| String::from_utf8(b.to_vec()).unwrap());
        contents(log)
            .into_iter()
            .map(|(_, r)| (text(r.key).unwrap(), text(r.value)))
            .collect()
    }

    #[test]
    fn a_tombstone_goes_only_after_a_complete_pass_removed_what_it_hides() {
        let dir = tempfile::tempdir().unwrap();
        let batches = vec![
            one("x", "x0"),
            one("k", "v"),
            one("y", "y0"),
            gone("k"),
            one("z", "z0"),
            one("w", "w0"),
        ];
        let size = batches[0].len() as u64;
        let mut log = one_per_segment(dir.path(), &batches, 2 * size + 2);
        // Long after the tombstone was written, a first pass runs while DeleteRecords removes
        // x0's segment: the group holding k=v is stale and stays as it was.
        let later = NOW + 2 * DAY;
        let pass = log
            .start_compaction(later, i64::MAX, i64::MAX)
            .unwrap()
            .unwrap();
        assert_eq!(log.delete_records_before(1).unwrap(), 1);
        let outcome = pass.run(later).unwrap();
        log.finish_compaction(outcome, later, &mut MaintenanceReport::default())
            .unwrap();
        assert!(pairs(&log).contains(&("k".into(), Some("v".into()))));
        // The tombstone stayed with it, and goes once a complete pass has removed k=v.
        assert!(pairs(&log).contains(&("k".into(), None)));
        log.append(&one("q", "q0"), later).unwrap();
        log.maintenance(later + 10).unwrap();
        assert_eq!(
            pairs(&log).iter().filter(|(k, _)| k == "k").count(),
            1,
            "k=v went, its tombstone stays: no complete pass ran before this one"
        );
        log.maintenance(later + 20).unwrap();
        let keys: Vec<String> = pairs(&log).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["y", "z", "w", "q"]);
    }

    #[test]
    fn the_first_pass_after_a_start_keeps_expired_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let batches = vec![one("k", "v"), gone("k"), one("w", "w0")];
        let mut log = one_per_segment(dir.path(), &batches, 1 << 20);
        log.maintenance(NOW + 2 * DAY).unwrap();
        assert_eq!(
            pairs(&log),
            [("k".into(), None), ("w".into(), Some("w0".into()))]
        );
        log.maintenance(NOW + 2 * DAY + 10).unwrap();
        assert_eq!(pairs(&log), [("w".into(), Some("w0".into()))]);
    }

    /// On a leader, a tombstone past its horizon stays while a follower's log ends at or below
    /// it (that follower would never get the delete), without a pass at every check meanwhile,
    /// nor whenever a slow follower's log end moves short of it; once the followers have copied
    /// it, the next check removes it.
    #[test]
    fn a_tombstone_waits_for_every_follower_to_copy_it() {
        let dir = tempfile::tempdir().unwrap();
        let batches = vec![
            one("k", "v"),
            one("a", "a0"),
            one("b", "b0"),
            gone("k"),
            one("w", "w0"),
        ];
        let mut log = one_per_segment(dir.path(), &batches, 1 << 20);
        let later = NOW + 2 * DAY;
        // Whether a pass was due, run if so.
        let pass = |log: &mut PartitionLog, now, copied_below| {
            let Some(pass) = log.start_compaction(now, i64::MAX, copied_below).unwrap() else {
                return false;
            };
            let outcome = pass.run(now).unwrap();
            let mut report = MaintenanceReport::default();
            log.finish_compaction(outcome, now, &mut report).unwrap();
            true
        };
        let keys = |log: &PartitionLog| -> Vec<String> {
            pairs(log).into_iter().map(|(k, _)| k).collect()
        };
        // A follower's log ends at offset 1: the first pass removes k=v and keeps the tombstone
        // (offset 3).
        assert!(pass(&mut log, later, 1));
        assert_eq!(keys(&log), ["a", "b", "k", "w"]);
        // Nothing moved since: no pass.
        assert!(!pass(&mut log, later + 10, 1));
        // The follower moves, short of the tombstone: no pass either.
        assert!(!pass(&mut log, later + 20, 2));
        assert!(!pass(&mut log, later + 30, 3));
        // The follower copied it.
        assert!(pass(&mut log, later + 40, 4));
        assert_eq!(keys(&log), ["a", "b", "w"]);
    }

    #[test]
    fn records_at_or_above_the_limit_supersede_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let batches = vec![
            one("k", "v0"),
            one("a", "a0"),
            one("k", "v1"),
            one("b", "b0"),
        ];
        let mut log = one_per_segment(dir.path(), &batches, 1);
        // The high watermark is 2: k=v1 may yet be cut by a truncation.
        let pass = log
            .start_compaction(NOW + 10, 2, i64::MAX)
            .unwrap()
            .unwrap();
        let outcome = pass.run(NOW + 10).unwrap();
        let mut report = MaintenanceReport::default();
        log.finish_compaction(outcome, NOW + 10, &mut report)
            .unwrap();
        assert_eq!(report.records_removed, 0);
        assert_eq!(offsets(&log), [0, 1, 2, 3]);
        // Once it is below the high watermark, it does.
        let pass = log
            .start_compaction(NOW + 20, 4, i64::MAX)
            .unwrap()
            .unwrap();
        let outcome = pass.run(NOW + 20).unwrap();
        log.finish_compaction(outcome, NOW + 20, &mut report)
            .unwrap();
        assert_eq!(offsets(&log), [1, 2, 3]);
    }

    #[test]
    fn a_pass_over_files_opened_again_since_is_stale() {
        let dir = tempfile::tempdir().unwrap();
        let batches = vec![one("k", "v0"), one("k", "v1"), one("b", "b0")];
        let mut log = one_per_segment(dir.path(), &batches, 1);
        let pass = log
            .start_compaction(NOW + 10, i64::MAX, i64::MAX)
            .unwrap()
            .unwrap();
        // A follower's truncation opens the log again (the same bases and sizes, other files).
        log.reopen(NOW).unwrap();
        let outcome = pass.run(NOW + 10).unwrap();
        let mut report = MaintenanceReport::default();
        log.finish_compaction(outcome, NOW + 10, &mut report)
            .unwrap();
        assert_eq!(report.segments_compacted, 0);
        assert_eq!(log_files(dir.path()), (3, 0));
        assert_eq!(offsets(&log), [0, 1, 2]);
    }

    #[test]
    fn an_error_after_the_commit_completes_the_swap_in_place() {
        let batches = vec![
            one("x", "x0"),
            one("y", "y0"),
            one("z", "z0"),
            one("y", "y1"),
            one("w", "w0"),
        ];
        for step in 1..=3 {
            let dir = tempfile::tempdir().unwrap();
            let mut log = one_per_segment(dir.path(), &batches, 1 << 20);
            STOP_SWAP_AT.set(Some(step));
            let stopped = log.maintenance(NOW + 10);
            STOP_SWAP_AT.set(None);
            assert!(stopped.is_err(), "stop {step}");
            // The log was read again from the disk: the swap is done, nothing left over.
            assert_eq!(log.segment_bases(), [0, 4], "stop {step}");
            assert_eq!(log_files(dir.path()), (2, 0), "stop {step}");
            assert_eq!(offsets(&log), [0, 2, 3, 4], "stop {step}");
            // Retention then deletes what it deletes, and nothing comes back at the next start.
            log.set_config(LogConfig {
                retention_ms: Some(DAY),
                delete: true,
                ..log.config().clone()
            });
            let fresh = [kv("v", "v0", NOW + 3 * DAY)];
            log.append(
                &encode_batch(&fresh, Compression::None, -1, -1, -1),
                NOW + 3 * DAY,
            )
            .unwrap();
            log.retention(NOW + 3 * DAY).unwrap();
            assert_eq!(log.log_start_offset(), 4, "stop {step}");
            drop(log);
            let log = PartitionLog::open(dir.path(), cfg(), NOW + 3 * DAY).unwrap();
            assert_eq!(log.log_start_offset(), 4, "stop {step}");
            assert_eq!(offsets(&log), [4, 5], "stop {step}");
        }
    }

    #[test]
    fn on_a_compact_delete_topic_a_merge_spans_a_tenth_of_retention_at_most() {
        let dir = tempfile::tempdir().unwrap();
        let config = |segment_bytes| LogConfig {
            delete: true,
            retention_ms: Some(10_000),
            segment_bytes,
            ..cfg()
        };
        let mut log = PartitionLog::open(dir.path(), config(1), NOW).unwrap();
        // Ten one-record segments, 500 ms apart, every key different.
        for i in 0..10 {
            let rec = [kv(&format!("k{i}"), "v", NOW + 500 * i)];
            log.append(&encode_batch(&rec, Compression::None, -1, -1, -1), NOW)
                .unwrap();
        }
        log.seal_all().unwrap();
        log.set_config(config(1 << 20));
        log.maintenance(NOW + 5_000).unwrap();
        // Groups of at most 1 s (a tenth of retention.ms) from their first batch.
        assert_eq!(log.segment_bases(), [0, 3, 6, 9]);
        // So retention still deletes the oldest records in their time.
        log.maintenance(NOW + 11_200).unwrap();
        assert_eq!(log.log_start_offset(), 3);
        assert_eq!(offsets(&log), [3, 4, 5, 6, 7, 8, 9]);
    }

    #[test]
    fn a_segment_with_a_kept_tail_is_not_merged_into_another() {
        let dir = tempfile::tempdir().unwrap();
        let batches: Vec<Vec<u8>> = ["a", "b", "c", "d"].iter().map(|k| one(k, "v")).collect();
        let mut log = one_per_segment(dir.path(), &batches, 1 << 20);
        // What a start-up cut from segment 2 and kept beside it, for an operator.
        let kept = dir.path().join(format!("{:020}.log.discarded-{NOW}", 2));
        std::fs::write(&kept, b"torn").unwrap();
        log.maintenance(NOW + 10).unwrap();
        assert_eq!(log.segment_bases(), [0, 2, 3]);
        assert!(kept.exists());
        assert_eq!(offsets(&log), [0, 1, 2, 3]);
    }

    #[test]
    fn many_new_small_segments_start_a_pass_below_the_dirty_ratio() {
        let dir = tempfile::tempdir().unwrap();
        let big = "x".repeat(100_000);
        let mut batches = vec![one("big", &big)];
        batches.extend((0..3).map(|i| one(&format!("k{i}"), "v")));
        let mut log = one_per_segment(dir.path(), &batches, 1 << 20);
        let ratio = |log: &mut PartitionLog, segment_bytes| {
            log.set_config(LogConfig {
                segment_bytes,
                min_cleanable_dirty_ratio: 0.5,
                ..log.config().clone()
            })
        };
        ratio(&mut log, 1 << 20);
        log.maintenance(NOW + 10).unwrap();
        assert_eq!(log.segment_bases(), [0, 3]);
        // New one-record segments are far from half the log, but 64 of them start a pass.
        let add = |log: &mut PartitionLog, from: usize, n: usize| {
            ratio(log, 1);
            for i in from..from + n {
                log.append(&one(&format!("n{i}"), "v"), NOW).unwrap();
            }
            log.seal_all().unwrap();
            ratio(log, 1 << 20);
        };
        add(&mut log, 0, 63);
        assert_eq!(
            log.maintenance(NOW + 20).unwrap(),
            MaintenanceReport::default()
        );
        assert_eq!(log.segment_count(), 65);
        add(&mut log, 63, 1);
        log.maintenance(NOW + 30).unwrap();
        assert_eq!(log.segment_bases(), [0, 67]);
        assert_eq!(offsets(&log).len(), 68);
    }

    #[test]
    fn aborted_records_go_and_undecided_ones_stay() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let plain =
            |k: &str, v: &str| encode_batch(&[kv(k, v, NOW)], Compression::None, -1, -1, -1);
        log.append(&plain("a", "a0"), NOW).unwrap(); // 0
        log.append(&transactional_batch(&[kv("a", "a1", NOW)], 5, 0, 0), NOW)
            .unwrap(); // 1
        log.append_marker(5, 0, Marker::Abort, NOW).unwrap(); // 2
        log.append(&transactional_batch(&[kv("b", "b1", NOW)], 6, 0, 0), NOW)
            .unwrap(); // 3, no end yet
        log.append(&plain("b", "b0"), NOW).unwrap(); // 4
        log.append(&plain("c", "c0"), NOW).unwrap(); // 5, active
        let r = log.maintenance(NOW + 10).unwrap();
        // The aborted a1 goes and does not hide a0; the undecided b1 stays, though b0 is newer.
        assert_eq!(r.records_removed, 1);
        let offsets: Vec<i64> = contents(&log).iter().map(|(o, _)| *o).collect();
        assert_eq!(offsets, vec![0, 2, 3, 4, 5]);
        assert_eq!(log.last_stable_offset(6), 3);
        // Once committed, a transaction's value is the newest for its key.
        log.append(&transactional_batch(&[kv("a", "a2", NOW)], 7, 0, 0), NOW)
            .unwrap(); // 6
        log.append_marker(7, 0, Marker::Commit, NOW).unwrap(); // 7
        log.append_marker(6, 0, Marker::Abort, NOW).unwrap(); // 8
        log.append(&plain("d", "d0"), NOW).unwrap(); // 9, active
        log.maintenance(NOW + 20).unwrap();
        let got = contents(&log);
        let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
        // a0 (replaced by a2) and b1 (aborted) are gone; markers stay.
        assert_eq!(offsets, vec![2, 4, 5, 6, 7, 8, 9]);
        assert_eq!(log.last_stable_offset(10), 10);
        // The state read from the cleaned log agrees.
        drop(log);
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        assert_eq!(log.last_stable_offset(10), 10);
    }

    /// The base offset and whether it is a control batch, of every batch in the log.
    fn batches_of(log: &PartitionLog) -> Vec<(i64, bool)> {
        let mut out = Vec::new();
        for got in reads(log) {
            for r in parse_batches(&got) {
                let (_, h, _) = r.unwrap();
                out.push((h.base_offset, h.is_control()));
            }
        }
        out
    }

    /// A marker goes once nothing of its transaction is left and its horizon has passed, but
    /// not while a batch of its transaction stays, nor when it is its producer's last batch;
    /// the transaction state read from the log after a restart agrees.
    #[test]
    fn a_marker_goes_once_its_transaction_left_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let txn = |k: &str, v: &str, pid: i64, seq: i32| {
            transactional_batch(&[kv(k, v, NOW)], pid, 0, seq)
        };
        log.append(&txn("a", "a0", 5, 0), NOW).unwrap(); // 0
        log.append_marker(5, 0, Marker::Commit, NOW).unwrap(); // 1: a0 is superseded below
        log.append(&txn("b", "b0", 6, 0), NOW).unwrap(); // 2
        log.append_marker(6, 0, Marker::Abort, NOW).unwrap(); // 3: b0 aborted
        log.append(&txn("c", "c0", 7, 0), NOW).unwrap(); // 4
        log.append_marker(7, 0, Marker::Commit, NOW).unwrap(); // 5: c0 stays
        log.append(&one("a", "a1"), NOW).unwrap(); // 6
        for pid in [5, 6, 7] {
            // Each producer's next transaction, so that none of the markers above is its last.
            log.append(&txn("z", "z", pid, 1), NOW).unwrap(); // 7, 9, 11
            log.append_marker(pid, 0, Marker::Commit, NOW).unwrap(); // 8, 10, 12
        }
        log.append(&one("y", "y"), NOW).unwrap(); // 13, active
        let all: Vec<(i64, bool)> = (0..14)
            .map(|o| (o, [1, 3, 5, 8, 10, 12].contains(&o)))
            .collect();
        assert_eq!(batches_of(&log), all);
        // The first pass removes a0, b0 and the first two z; it read their batches, so it
        // keeps every marker.
        let r = log.maintenance(NOW + 10).unwrap();
        assert_eq!(r.records_removed, 4);
        let markers = [1, 3, 5, 8, 10, 12];
        let after_first: Vec<(i64, bool)> = [1, 3, 4, 5, 6, 8, 10, 11, 12, 13]
            .into_iter()
            .map(|o| (o, markers.contains(&o)))
            .collect();
        assert_eq!(batches_of(&log), after_first);
        // Later passes find markers 1 and 3 with nothing of theirs left; they go once their
        // horizon (a day after they were stored) has passed.
        log.append(&one("x", "x"), NOW).unwrap(); // 14
        // Merged now: the markers that may go are written with their horizon.
        log.set_config(LogConfig {
            segment_bytes: 1 << 20,
            ..cfg()
        });
        assert_eq!(log.maintenance(NOW + 20).unwrap().records_removed, 0);
        // The emptied first segment (it holds the log start), one merged, the active one.
        assert_eq!(log.segment_count(), 3);
        for (offset, horizon) in [(1, Some(NOW + DAY)), (3, Some(NOW + DAY)), (5, None)] {
            let got = log.read(offset, 1).unwrap();
            let (_, h, bytes) = parse_batches(&got).next().unwrap().unwrap();
            assert_eq!((h.base_offset, h.delete_horizon()), (offset, horizon));
            assert!(marker_of(bytes).is_some(), "marker {offset} reads as one");
        }
        assert_eq!(log.maintenance(NOW + DAY - 10).unwrap().records_removed, 0);
        // While its marker stays, b0's aborted transaction is listed (its consumers skip to it).
        let b_aborted = crate::storage::AbortedTxn {
            producer_id: 6,
            first_offset: 2,
            last_offset: 3,
        };
        assert_eq!(log.aborted_transactions(0, 15), vec![b_aborted]);
        let r = log.maintenance(NOW + DAY + 30).unwrap();
        assert_eq!(r.records_removed, 2);
        // Once it went, no longer: a consumer told of it would drop producer 6's later batches
        // (10 and 11 here) waiting for a marker that is not there. As the log read again says.
        assert_eq!(log.aborted_transactions(0, 15), vec![]);
        let left = [
            (4, false),
            (5, true),
            (6, false),
            (8, true),
            (10, true),
            (11, false),
            (12, true),
        ];
        assert_eq!(batches_of(&log)[..7], left);
        // 5 stays beside c0; 8, 10 and 12 are their producers' last batches.
        assert_eq!(log.maintenance(NOW + 3 * DAY).unwrap().records_removed, 0);
        assert_eq!(log.open_transactions(), vec![]);
        assert_eq!(log.last_stable_offset(15), 15);
        drop(log);
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW + 3 * DAY).unwrap();
        assert_eq!(batches_of(&log)[..7], left);
        assert_eq!(log.open_transactions(), vec![]);
        assert_eq!(log.last_stable_offset(15), 15);
        assert_eq!(log.aborted_transactions(0, 15), vec![]);
        for pid in [5, 6, 7] {
            assert_eq!(log.producer_epoch(pid), Some(0), "producer {pid}");
        }
        let keys: Vec<String> = keys_of(&log)
            .into_iter()
            .filter(|k| !k.starts_with('\0'))
            .collect();
        assert_eq!(keys, ["c", "a", "z", "y", "x"]);
    }

    /// A pass that removes the last of a transaction's batches keeps its marker (its swap may
    /// yet not go in) but makes it due: a later run takes it without new data.
    #[test]
    fn a_marker_whose_transaction_just_went_is_due_without_new_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        log.append(&transactional_batch(&[kv("a", "a0", NOW)], 5, 0, 0), NOW)
            .unwrap(); // 0
        log.append_marker(5, 0, Marker::Commit, NOW).unwrap(); // 1
        log.append(&one("a", "a1"), NOW).unwrap(); // 2
        log.append(&transactional_batch(&[kv("b", "b0", NOW)], 5, 0, 1), NOW)
            .unwrap(); // 3
        log.append_marker(5, 0, Marker::Commit, NOW).unwrap(); // 4
        log.append(&one("y", "y"), NOW).unwrap(); // 5, active
        assert_eq!(log.maintenance(NOW + 10).unwrap().records_removed, 1);
        assert_eq!(log.maintenance(NOW + 20).unwrap().records_removed, 0);
        assert_eq!(log.maintenance(NOW + DAY + 10).unwrap().records_removed, 1);
        assert_eq!(
            batches_of(&log),
            [(2, false), (3, false), (4, true), (5, false)]
        );
    }

    /// Nothing at or above the last stable offset counts: behind an open transaction, deletes
    /// that read_committed consumers cannot read yet do not remove the values they can.
    #[test]
    fn records_behind_an_open_transaction_supersede_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        for k in ["k0", "k1", "k2"] {
            log.append(&one(k, "v"), NOW).unwrap(); // 0, 1, 2
        }
        log.append(&transactional_batch(&[kv("t", "t0", NOW)], 9, 0, 0), NOW)
            .unwrap(); // 3, open
        for k in ["k0", "k1", "k2"] {
            log.append(&gone(k), NOW).unwrap(); // 4, 5, 6
        }
        log.append(&one("x", "x"), NOW).unwrap(); // 7, active
        for at in [NOW + 10, NOW + 20, NOW + DAY + 10] {
            log.maintenance(at).unwrap();
            assert_eq!(offsets(&log), (0..8).collect::<Vec<_>>(), "at {at}");
        }
        // Committed: the values go, the deletes stay for a pass at least.
        log.append_marker(9, 0, Marker::Commit, NOW + DAY + 20)
            .unwrap(); // 8
        log.append(&one("y", "y"), NOW + DAY + 20).unwrap(); // 9, active
        let r = log.maintenance(NOW + DAY + 30).unwrap();
        assert_eq!(r.records_removed, 3);
        assert_eq!(offsets(&log), vec![3, 4, 5, 6, 7, 8, 9]);
    }

    /// A delete in a transaction counts from its commit: read_committed consumers could not
    /// read it before, however long the transaction stayed open.
    #[test]
    fn a_tombstone_in_a_transaction_counts_from_its_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        log.append(&one("k", "v"), NOW).unwrap(); // 0
        log.append(&transactional_batch(&[tombstone("k", NOW)], 9, 0, 0), NOW)
            .unwrap(); // 1, open for a day
        log.append(&one("x", "x"), NOW).unwrap(); // 2
        let commit = NOW + DAY + 100;
        log.append_marker(9, 0, Marker::Commit, commit).unwrap(); // 3
        log.append(&one("y", "y"), commit).unwrap(); // 4, active
        assert_eq!(log.maintenance(commit + 10).unwrap().records_removed, 1);
        log.append(&one("z", "z"), commit).unwrap(); // 5
        log.maintenance(commit + 20).unwrap();
        log.maintenance(commit + DAY - 10).unwrap();
        assert_eq!(offsets(&log), vec![1, 2, 3, 4, 5]);
        assert_eq!(
            log.maintenance(commit + DAY + 10).unwrap().records_removed,
            1
        );
        assert_eq!(offsets(&log), vec![2, 3, 4, 5]);
    }

    /// ListOffsets by time on a LogAppendTime log finds the first record compaction left in a
    /// batch, not the batch's base offset.
    #[test]
    fn a_time_lookup_in_a_compacted_log_append_time_batch_finds_its_first_record() {
        let dir = tempfile::tempdir().unwrap();
        let config = LogConfig {
            log_append_time: true,
            ..cfg()
        };
        let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
        let recs = [kv("k0", "v", NOW), kv("k1", "v", NOW), kv("k2", "v", NOW)];
        log.append(&encode_batch(&recs, Compression::Lz4, -1, -1, -1), NOW + 5)
            .unwrap(); // 0..=2
        log.append(&one("k0", "w"), NOW + 6).unwrap(); // 3
        log.append(&one("k1", "w"), NOW + 7).unwrap(); // 4
        log.append(&one("y", "y"), NOW + 8).unwrap(); // 5, active
        assert_eq!(log.maintenance(NOW + 10).unwrap().records_removed, 2);
        assert_eq!(offsets(&log), vec![2, 3, 4, 5]);
        assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((2, NOW + 5)));
        assert_eq!(
            log.offset_for_timestamp(NOW + 6).unwrap(),
            Some((3, NOW + 6))
        );
    }

    /// A delete first seen after its horizon (it was behind another producer's open
    /// transaction) counts from the pass that first sees it, as in Kafka, and that pass writes
    /// the horizon into it even in a segment that loses nothing.
    #[test]
    fn a_delete_first_seen_late_counts_from_then() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        log.append(&transactional_batch(&[kv("t", "t0", NOW)], 9, 0, 0), NOW)
            .unwrap(); // 0, open for a day: passes stop at the log's first segment
        log.append(&one("k", "v"), NOW).unwrap(); // 1
        log.append(&gone("k"), NOW).unwrap(); // 2
        log.append(&one("x", "x"), NOW).unwrap(); // 3
        log.append(&one("y", "y"), NOW).unwrap(); // 4, active
        assert_eq!(log.maintenance(NOW + 10).unwrap().records_removed, 0);
        let commit = NOW + DAY + 100;
        log.append_marker(9, 0, Marker::Commit, commit).unwrap(); // 5
        log.append(&one("z", "z"), commit).unwrap(); // 6, active
        let seen = commit + 10;
        assert_eq!(log.maintenance(seen).unwrap().records_removed, 1);
        let stored = log.read(2, 1).unwrap();
        let (_, h, _) = parse_batches(&stored).next().unwrap().unwrap();
        assert_eq!((h.base_offset, h.delete_horizon()), (2, Some(seen + DAY)));
        for at in [seen + 10, seen + DAY - 10] {
            log.maintenance(at).unwrap();
            assert_eq!(offsets(&log), vec![0, 2, 3, 4, 5, 6], "at {at}");
        }
        assert_eq!(log.maintenance(seen + DAY + 10).unwrap().records_removed, 1);
        assert_eq!(offsets(&log), vec![0, 3, 4, 5, 6]);
    }

    /// A delete horizon in a produced batch is not the broker's: the tombstone stays for
    /// delete.retention.ms after it was stored, and its timestamp is the one produced.
    #[test]
    fn a_horizon_a_producer_set_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let mut tagged = gone("k");
        let attributes = i16::from_be_bytes([tagged[21], tagged[22]]) | ATTR_DELETE_HORIZON;
        tagged[21..23].copy_from_slice(&attributes.to_be_bytes());
        rewrite_crc(&mut tagged);
        assert_eq!(
            BatchHeader::parse(&tagged).unwrap().delete_horizon(),
            Some(NOW)
        );
        log.append(&one("k", "v"), NOW).unwrap(); // 0
        log.append(&tagged, NOW).unwrap(); // 1: a horizon already past
        log.append(&one("x", "x"), NOW).unwrap(); // 2
        log.append(&one("y", "y"), NOW).unwrap(); // 3, active
        let stored = log.read(1, 1).unwrap();
        let (_, h, _) = parse_batches(&stored).next().unwrap().unwrap();
        assert_eq!(h.delete_horizon(), None);
        assert_eq!(contents(&log)[1], (1, tombstone("k", NOW)));
        assert_eq!(log.maintenance(NOW + 10).unwrap().records_removed, 1);
        for at in [NOW + 20, NOW + 30, NOW + DAY - 10] {
            log.maintenance(at).unwrap();
            assert_eq!(offsets(&log), vec![1, 2, 3], "at {at}");
        }
        assert_eq!(log.maintenance(NOW + DAY + 10).unwrap().records_removed, 1);
    }

    #[test]
    fn keeps_latest_per_key_and_expires_tombstones() {
        for codec in [Compression::None, Compression::Zstd, Compression::Snappy] {
            let dir = tempfile::tempdir().unwrap();
            let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
            let mut with_header = kv("b", "b1", NOW + 1);
            with_header.headers = vec![("h".into(), Some(Bytes::from_static(b"x")))];
            let batches = vec![
                vec![
                    kv("a", "a0", NOW),
                    with_header.clone(),
                    kv("c", "c0", NOW + 2),
                ],
                vec![kv("a", "a1", NOW + 3), tombstone("c", NOW + 4)],
                vec![kv("d", "d0", NOW + 5)],
                vec![kv("a", "a2", NOW + 6)], // stays in the active segment
            ];
            for b in &batches {
                log.append(&encode_batch(b, codec, -1, -1, -1), NOW)
                    .unwrap();
            }
            assert_eq!(log.segment_count(), 4);
            let end = log.log_end_offset();
            let r = log.maintenance(NOW + 10).unwrap();
            assert_eq!(r.records_removed, 3, "a0, c0, a1");
            assert_eq!(r.segments_compacted, 2);
            let got = contents(&log);
            let offsets: Vec<i64> = got.iter().map(|(o, _)| *o).collect();
            assert_eq!(offsets, vec![1, 4, 5, 6], "codec {codec:?}");
            assert_eq!(got[0].1, with_header, "headers and timestamps preserved");
            assert_eq!(got[1].1, tombstone("c", NOW + 4));
            assert_eq!(log.log_end_offset(), end);
            // A fetch of a removed offset starts at the next kept record's batch.
            assert_eq!(decode_all(&log.read(0, 1).unwrap())[0].0, 1);
            // Nothing new: a second run does nothing.
            assert_eq!(log.maintenance(NOW + 20).unwrap().records_removed, 0);
            // After delete.retention.ms the tombstone goes.
            let r = log.maintenance(NOW + 4 + DAY + 1).unwrap();
            assert_eq!(r.records_removed, 1);
            assert_eq!(
                contents(&log).iter().map(|(o, _)| *o).collect::<Vec<_>>(),
                vec![1, 5, 6]
            );
            // Survives reopen, and appends continue at the same offset.
            drop(log);
            let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
            assert_eq!(
                contents(&log).iter().map(|(o, _)| *o).collect::<Vec<_>>(),
                vec![1, 5, 6]
            );
            assert_eq!(
                log.append(&encode_batch(&[kv("e", "e", NOW)], codec, -1, -1, -1), NOW)
                    .unwrap()
                    .base_offset,
                end
            );
        }
    }

    /// `min.cleanable.dirty.ratio`: once cleaned, a log is cleaned again only when that share
    /// of its sealed bytes is new; at 0 whenever a segment has been sealed since.
    #[test]
    fn cleaning_again_waits_for_the_dirty_ratio() {
        for (ratio, removed_early) in [(0.5, 0), (0.0, 1)] {
            let dir = tempfile::tempdir().unwrap();
            let config = LogConfig {
                min_cleanable_dirty_ratio: ratio,
                ..cfg()
            };
            let mut log = PartitionLog::open(dir.path(), config, NOW).unwrap();
            let put = |log: &mut PartitionLog, key: &str, value: &str| {
                let b = encode_batch(&[kv(key, value, NOW)], Compression::None, -1, -1, -1);
                log.append(&b, NOW).unwrap();
            };
            // One batch per segment: k0..k3 sealed, k4 active; the first pass finds all clean.
            for k in ["k0", "k1", "k2", "k3", "k4"] {
                put(&mut log, k, "old");
            }
            assert_eq!(log.maintenance(NOW).unwrap().records_removed, 0);
            // k4 sealed: 1 of 5 sealed segments new.
            put(&mut log, "k0", "new");
            let r = log.maintenance(NOW).unwrap();
            assert_eq!(r.records_removed, removed_early, "ratio {ratio}");
            // Four more sealed: 5 of 9 new at 0.5 (all the old values go).
            for k in ["k1", "k2", "k3", "k4"] {
                put(&mut log, k, "new");
            }
            let r = log.maintenance(NOW).unwrap();
            assert_eq!(r.records_removed, 5 - removed_early, "ratio {ratio}");
        }
    }

    /// A tombstone's clock is the time the broker stored it, not its own timestamp: one
    /// produced with a timestamp two days old stays readable for delete.retention.ms (a day).
    #[test]
    fn a_tombstone_with_an_old_timestamp_is_kept_for_delete_retention() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        for b in [
            vec![kv("dev1", "v1", NOW)],
            vec![tombstone("dev1", NOW - 2 * DAY)],
            vec![kv("x", "filler", NOW)],
            vec![kv("y", "filler", NOW)], // the active segment
        ] {
            log.append(&encode_batch(&b, Compression::None, -1, -1, -1), NOW)
                .unwrap();
        }
        // The first pass drops v1; the second, with nothing new, keeps the tombstone.
        assert_eq!(log.maintenance(NOW + 10).unwrap().records_removed, 1);
        log.maintenance(NOW + 20).unwrap();
        assert_eq!(offsets(&log), vec![1, 2, 3]);
        // Across a restart too, timed by the files (this test's clock is NOW, so the files
        // the passes did not rewrite are given that time, as if written then).
        drop(log);
        let rewritten = fs::metadata(log_path(dir.path(), 0))
            .unwrap()
            .modified()
            .unwrap();
        assert_eq!(
            rewritten,
            std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW as u64),
            "a rewritten segment keeps the time it was written"
        );
        for e in fs::read_dir(dir.path()).unwrap() {
            let path = e.unwrap().path();
            if path.extension().is_some_and(|x| x == "log") {
                let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(NOW as u64);
                let f = fs::File::options().write(true).open(&path).unwrap();
                f.set_modified(at).unwrap();
            }
        }
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW + 30).unwrap();
        log.maintenance(NOW + 40).unwrap();
        assert_eq!(offsets(&log), vec![1, 2, 3]);
        // A day after it was stored, it goes.
        assert_eq!(log.maintenance(NOW + DAY + 10).unwrap().records_removed, 1);
        assert_eq!(offsets(&log), vec![2, 3]);
    }

    fn offsets(log: &PartitionLog) -> Vec<i64> {
        contents(log).iter().map(|(o, _)| *o).collect()
    }

    fn leftover_cleaned_files(dir: &std::path::Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".cleaned")
            })
            .count()
    }

    #[test]
    fn appends_made_while_a_pass_runs_without_the_log_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        for b in [
            vec![kv("a", "a0", NOW), kv("b", "b0", NOW)],
            vec![kv("a", "a1", NOW + 1)],
            vec![kv("c", "c0", NOW + 2)], // the active segment
        ] {
            log.append(&encode_batch(&b, Compression::None, -1, -1, -1), NOW)
                .unwrap();
        }
        log.seal_all().unwrap();
        let pass = log
            .start_compaction(NOW + 10, i64::MAX, i64::MAX)
            .unwrap()
            .expect("sealed data");
        // The log is free while the pass runs: a newer "a" arrives (and rolls the segment).
        let more = [kv("a", "a2", NOW + 3), kv("d", "d0", NOW + 3)];
        log.append(&encode_batch(&more, Compression::None, -1, -1, -1), NOW)
            .unwrap();
        let outcome = pass.run(NOW + 10).unwrap();
        let mut report = MaintenanceReport::default();
        log.finish_compaction(outcome, NOW + 10, &mut report)
            .unwrap();
        // The pass saw a1 as the latest "a": only a0 went.
        assert_eq!(report.records_removed, 1);
        assert_eq!(offsets(&log), vec![1, 2, 3, 4, 5]);
        assert_eq!(decode_all(&log.read(4, usize::MAX).unwrap())[0].1, more[0]);
        // The next pass sees a2 and removes a1.
        assert_eq!(log.maintenance(NOW + 20).unwrap().records_removed, 1);
        assert_eq!(offsets(&log), vec![1, 3, 4, 5]);
        assert_eq!(leftover_cleaned_files(dir.path()), 0);
    }

    #[test]
    fn a_segment_removed_while_a_pass_runs_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        for b in [
            vec![kv("a", "a0", NOW)],
            vec![kv("a", "a1", NOW + 1)],
            vec![kv("b", "b0", NOW + 2)],
        ] {
            log.append(&encode_batch(&b, Compression::None, -1, -1, -1), NOW)
                .unwrap();
        }
        log.seal_all().unwrap();
        let pass = log
            .start_compaction(NOW + 10, i64::MAX, i64::MAX)
            .unwrap()
            .expect("sealed data");
        // DeleteRecords drops the first segment (the one the pass cleans) meanwhile.
        assert_eq!(log.delete_records_before(1).unwrap(), 1);
        let outcome = pass.run(NOW + 10).unwrap();
        assert_eq!(
            leftover_cleaned_files(dir.path()),
            3,
            "a0's segment was cleaned, with its two index files"
        );
        let mut report = MaintenanceReport::default();
        log.finish_compaction(outcome, NOW + 10, &mut report)
            .unwrap();
        assert_eq!(report.segments_compacted, 0);
        assert_eq!(
            leftover_cleaned_files(dir.path()),
            0,
            "the stale copy is deleted"
        );
        assert_eq!(offsets(&log), vec![1, 2]);
        assert_eq!(log.log_start_offset(), 1);
    }

    #[test]
    fn producer_state_survives_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        log.append(
            &encode_batch(
                &[kv("a", "1", NOW), kv("b", "1", NOW)],
                Compression::Lz4,
                3,
                0,
                0,
            ),
            NOW,
        )
        .unwrap();
        log.append(
            &encode_batch(
                &[kv("a", "2", NOW), kv("b", "2", NOW)],
                Compression::Lz4,
                3,
                0,
                2,
            ),
            NOW,
        )
        .unwrap();
        log.append(
            &encode_batch(
                &[kv("a", "3", NOW), kv("b", "3", NOW)],
                Compression::None,
                -1,
                -1,
                -1,
            ),
            NOW,
        )
        .unwrap();
        log.maintenance(NOW).unwrap();
        // First batch gone; second emptied but kept because it is producer 3's last batch.
        let got = log.read(0, usize::MAX).unwrap();
        let hs: Vec<_> = parse_batches(&got).map(|r| r.unwrap().1).collect();
        assert_eq!(hs[0].record_count, 0);
        assert_eq!(
            (
                hs[0].base_offset,
                hs[0].last_offset(),
                hs[0].last_sequence()
            ),
            (2, 3, 3)
        );
        drop(log);
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let next = encode_batch(&[kv("a", "4", NOW)], Compression::None, 3, 0, 4);
        assert_eq!(log.append(&next, NOW).unwrap().base_offset, 6);
    }

    /// Batches a plugin's filter emptied (stored without records) go at the next pass, even
    /// from a segment that loses nothing else, but for an idempotent producer's last batch,
    /// which its sequence numbers need.
    #[test]
    fn batches_a_filter_emptied_go_but_a_producer_s_last() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let emptied = |b: Vec<u8>| {
            let h = BatchHeader::parse(&b).unwrap();
            empty_batch(&b, &h)
        };
        log.append(&one("a", "1"), NOW).unwrap(); // 0
        log.append_rewritten(&emptied(one("x", "dropped")), NOW)
            .unwrap(); // 1
        let idem = |seq| encode_batch(&[kv("y", "dropped", NOW)], Compression::None, 7, 0, seq);
        log.append_rewritten(&emptied(idem(0)), NOW).unwrap(); // 2
        log.append_rewritten(&emptied(idem(1)), NOW).unwrap(); // 3
        log.append(&one("b", "1"), NOW).unwrap(); // 4
        log.append(&one("c", "1"), NOW).unwrap(); // 5: the active segment
        log.maintenance(NOW).unwrap();
        let got: Vec<BatchHeader> = reads(&log)
            .iter()
            .flat_map(|b| parse_batches(b).map(|r| r.unwrap().1).collect::<Vec<_>>())
            .collect();
        let batches: Vec<(i64, i32)> = got
            .iter()
            .map(|h| (h.base_offset, h.record_count))
            .collect();
        assert_eq!(batches, [(0, 1), (3, 0), (4, 1), (5, 1)]);
        assert_eq!(log.log_end_offset(), 6);
        let next = encode_batch(&[kv("y", "kept", NOW)], Compression::None, 7, 0, 2);
        assert_eq!(log.append(&next, NOW).unwrap().base_offset, 6);
    }

    #[test]
    fn partial_batch_keeps_offsets_and_sequences() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
        let b = encode_batch(
            &[
                kv("a", "1", NOW),
                kv("b", "1", NOW + 1),
                kv("a", "2", NOW + 2),
                kv("c", "1", NOW + 3),
            ],
            Compression::Gzip,
            11,
            2,
            0,
        );
        log.append(&b, NOW).unwrap();
        log.append(
            &encode_batch(&[kv("c", "2", NOW)], Compression::None, -1, -1, -1),
            NOW,
        )
        .unwrap();
        log.append(
            &encode_batch(&[kv("z", "z", NOW)], Compression::None, -1, -1, -1),
            NOW,
        )
        .unwrap();
        log.maintenance(NOW).unwrap();
        let got = log.read(0, usize::MAX).unwrap();
        let h = check_batch(&got).unwrap();
        // As Kafka's cleaner: the batch keeps its base offset and sequence.
        assert_eq!((h.base_offset, h.last_offset(), h.record_count), (0, 3, 2));
        assert_eq!((h.base_sequence, h.last_sequence()), (0, 3));
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.compression()),
            (11, 2, 1)
        );
        let recs = decode_all(&got[..h.total_size()]);
        assert_eq!(
            recs,
            vec![(1, kv("b", "1", NOW + 1)), (2, kv("a", "2", NOW + 2))]
        );
    }

    /// Records a cleaning keeps keep every header, a name given twice included, in every
    /// codec (kafka-protocol's record type keeps one header per name).
    #[test]
    fn kept_records_keep_repeated_headers() {
        for codec in ALL_CODECS {
            let dir = tempfile::tempdir().unwrap();
            let mut log = PartitionLog::open(dir.path(), cfg(), NOW).unwrap();
            let mut recs = vec![
                kv("a", "1", NOW),
                kv("b", "1", NOW + 1),
                kv("a", "2", NOW + 2),
            ];
            recs[1].headers = vec![
                ("trace".into(), Some(Bytes::from_static(b"x"))),
                ("trace".into(), Some(Bytes::from_static(b"y"))),
                ("trace".into(), None),
            ];
            log.append(&broker_encoded_batch(&recs, codec), NOW)
                .unwrap();
            log.append(
                &encode_batch(&[kv("z", "z", NOW)], Compression::None, -1, -1, -1),
                NOW,
            )
            .unwrap();
            let r = log.maintenance(NOW).unwrap();
            assert_eq!(r.records_removed, 1, "{codec:?}");
            let got = log.read(0, usize::MAX).unwrap();
            let first = check_batch(&got).unwrap();
            let kept = read_spans(&got[..first.total_size()]);
            assert_eq!(
                kept,
                vec![(1, recs[1].clone()), (2, recs[2].clone())],
                "{codec:?}"
            );
        }
    }
}
