//! Tests of [`PartitionLog`] on real files in temporary directories.

use std::fs;
use std::time::Instant;

use kafka_protocol::records::Compression;

use super::batch::*;
use super::error::{BatchError, StorageError};
use super::segment::{FAIL_AFTER_BYTES, index_path, log_path, timeindex_path};
use super::testutil::*;
use super::{FlushPolicy, LogConfig, PartitionLog};

const NOW: i64 = 1_700_000_000_000;

fn cfg() -> LogConfig {
    LogConfig {
        flush: FlushPolicy::Never,
        ..LogConfig::default()
    }
}

/// A batch of `n` records "k{i}"/"v{i}" with timestamps ts, ts+1, ...
fn batch(n: usize, ts: i64) -> Vec<u8> {
    let recs: Vec<_> = (0..n)
        .map(|i| kv(&format!("k{i}"), &format!("v{i}"), ts + i as i64))
        .collect();
    encode_batch(&recs, Compression::None, -1, -1, -1)
}

fn idem(n: usize, pid: i64, epoch: i16, seq: i32) -> Vec<u8> {
    let recs: Vec<_> = (0..n).map(|i| kv("k", &format!("v{i}"), NOW)).collect();
    encode_batch(&recs, Compression::None, pid, epoch, seq)
}

fn headers(bytes: &[u8]) -> Vec<BatchHeader> {
    parse_batches(bytes).map(|r| r.unwrap().1).collect()
}

fn open(dir: &std::path::Path, config: LogConfig) -> PartitionLog {
    PartitionLog::open(dir, config, NOW).unwrap()
}

#[test]
fn round_trip_every_codec() {
    for codec in ALL_CODECS {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), cfg());
        let mut expected = Vec::new();
        for b in 0..3 {
            let mut recs: Vec<_> = (0..4)
                .map(|i| kv(&format!("key-{b}-{i}"), &"x".repeat(50 + i), NOW + i as i64))
                .collect();
            recs[1].headers = vec![
                ("h".into(), Some(bytes::Bytes::from_static(b"hv"))),
                ("n".into(), None),
            ];
            recs[2].value = None;
            let info = log
                .append(&encode_batch(&recs, codec, -1, -1, -1), NOW)
                .unwrap();
            assert_eq!(info.base_offset, b * 4);
            assert_eq!(info.last_offset, b * 4 + 3);
            assert_eq!(info.record_count, 4);
            expected.extend(
                recs.into_iter()
                    .enumerate()
                    .map(|(i, r)| (b * 4 + i as i64, r)),
            );
        }
        let got = decode_all(&log.read(0, usize::MAX).unwrap());
        assert_eq!(got, expected, "codec {codec:?}");
        assert_eq!(log.log_end_offset(), 12);
    }
}

#[test]
fn offsets_are_assigned_across_batches_and_requests() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    let mut two = batch(3, NOW);
    two.extend_from_slice(&batch(2, NOW));
    let info = log.append(&two, NOW).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.record_count),
        (0, 4, 5)
    );
    let info = log.append(&batch(1, NOW), NOW).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (5, 5));
    let hs = headers(&log.read(0, usize::MAX).unwrap());
    assert_eq!(
        hs.iter().map(|h| h.base_offset).collect::<Vec<_>>(),
        vec![0, 3, 5]
    );
    assert!(log.read(6, 100).unwrap().is_empty());
    assert!(matches!(
        log.read(7, 100),
        Err(StorageError::OffsetOutOfRange {
            offset: 7,
            start: 0,
            end: 6
        })
    ));
    assert!(matches!(
        log.read(-1, 100),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn fetch_mid_batch_returns_whole_batch_and_kip74() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    let big = batch(10, NOW);
    log.append(&big, NOW).unwrap();
    log.append(&batch(2, NOW), NOW).unwrap();
    let got = log.read(4, usize::MAX).unwrap();
    let hs = headers(&got);
    assert_eq!(hs[0].base_offset, 0);
    assert_eq!(hs.len(), 2);
    // max_bytes smaller than the first batch: still exactly one whole batch.
    let got = log.read(4, 1).unwrap();
    assert_eq!(got.len(), big.len());
    assert_eq!(headers(&got).len(), 1);
    let got = log.read(0, big.len() + 10).unwrap();
    assert_eq!(headers(&got).len(), 1);
    let got = log.read(10, 0).unwrap();
    assert_eq!(headers(&got)[0].base_offset, 10);
}

#[test]
fn a_read_is_the_longest_run_of_whole_batches_within_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    let mut sizes = Vec::new();
    for n in 1..=12 {
        let b = batch(n, NOW);
        sizes.push(b.len());
        log.append(&b, NOW).unwrap();
    }
    let total: usize = sizes.iter().sum();
    for max_bytes in 0..=total + 3 {
        // At least the first batch, then each next one while the sum stays within max_bytes.
        let mut want = sizes[0];
        for s in &sizes[1..] {
            if want + s > max_bytes {
                break;
            }
            want += s;
        }
        let got = log.read(0, max_bytes).unwrap();
        assert_eq!(got.len(), want, "max_bytes {max_bytes}");
        assert_eq!(
            headers(&got).iter().map(|h| h.total_size()).sum::<usize>(),
            want
        );
    }
}

#[test]
fn a_planned_read_returns_the_log_as_it_was_when_planned() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1,
        retention_ms: Some(1000),
        ..cfg()
    };
    let mut log = open(dir.path(), config);
    log.append(&batch(3, NOW), NOW).unwrap();
    log.append(&batch(2, NOW + 5000), NOW).unwrap();
    let from_start = log.plan_read(1, usize::MAX).unwrap();
    let from_active = log.plan_read(3, usize::MAX).unwrap();
    let at_end = log.plan_read(5, usize::MAX).unwrap();
    // After the plans (i.e. after the lock is released): more appends, and retention deletes the
    // first segment's files.
    log.append(&batch(4, NOW + 6000), NOW).unwrap();
    assert_eq!(log.maintenance(NOW + 2500).unwrap().segments_deleted, 1);
    assert!(!log_path(dir.path(), 0).exists());

    let hs = headers(&from_start.read().unwrap());
    assert_eq!(
        hs.len(),
        1,
        "one segment's worth, read from the deleted file"
    );
    assert_eq!((hs[0].base_offset, hs[0].last_offset()), (0, 2));
    let hs = headers(&from_active.read().unwrap());
    assert_eq!(hs.len(), 1, "not the batch appended after the plan");
    assert_eq!((hs[0].base_offset, hs[0].last_offset()), (3, 4));
    assert!(at_end.read().unwrap().is_empty());
}

#[test]
fn damaged_batches_are_rejected_with_the_right_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    let good = batch(2, NOW);
    let mut crc = good.clone();
    let last = crc.len() - 1;
    crc[last] ^= 1;
    assert!(matches!(
        log.append(&crc, NOW),
        Err(StorageError::CorruptRecord {
            position: 0,
            source: BatchError::CrcMismatch { .. }
        })
    ));
    let mut magic = good.clone();
    magic[MAGIC_POS] = 1;
    assert!(matches!(
        log.append(&magic, NOW),
        Err(StorageError::CorruptRecord {
            source: BatchError::BadMagic { magic: 1 },
            ..
        })
    ));
    assert!(matches!(
        log.append(&good[..good.len() - 5], NOW),
        Err(StorageError::CorruptRecord {
            source: BatchError::Truncated { .. },
            ..
        })
    ));
    assert!(matches!(
        log.append(&good[..30], NOW),
        Err(StorageError::CorruptRecord {
            source: BatchError::TooShort { len: 30 },
            ..
        })
    ));
    let mut long = good.clone();
    put_i32(
        &mut long,
        LENGTH_POS,
        (good.len() - LOG_OVERHEAD + 1) as i32,
    );
    assert!(matches!(
        log.append(&long, NOW),
        Err(StorageError::CorruptRecord {
            source: BatchError::Truncated { .. },
            ..
        })
    ));
    let mut short = good.clone();
    put_i32(
        &mut short,
        LENGTH_POS,
        (good.len() - LOG_OVERHEAD - 1) as i32,
    );
    assert!(matches!(
        log.append(&short, NOW),
        Err(StorageError::CorruptRecord { .. })
    ));
    let mut count = good.clone();
    put_i32(&mut count, RECORD_COUNT_POS, 3);
    rewrite_crc(&mut count);
    assert!(matches!(
        log.append(&count, NOW),
        Err(StorageError::InvalidRecord { .. })
    ));
    assert!(matches!(
        log.append(&[], NOW),
        Err(StorageError::InvalidRecord { .. })
    ));
    // All or nothing: a good batch followed by a corrupt one writes nothing.
    let mut pair = good.clone();
    pair.extend_from_slice(&crc);
    assert!(matches!(
        log.append(&pair, NOW),
        Err(StorageError::CorruptRecord { source: BatchError::CrcMismatch { .. }, position }) if position == good.len()
    ));
    assert_eq!(log.log_end_offset(), 0);
    assert_eq!(log.size_bytes(), 0);
    log.append(&good, NOW).unwrap();
    assert_eq!(log.log_end_offset(), 2);
}

#[test]
fn max_message_bytes_both_sides_of_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let b = batch(5, NOW);
    let mut log = open(
        dir.path(),
        LogConfig {
            max_message_bytes: b.len() as u64,
            ..cfg()
        },
    );
    log.append(&b, NOW).unwrap();
    log.set_config(LogConfig {
        max_message_bytes: b.len() as u64 - 1,
        ..cfg()
    });
    match log.append(&b, NOW) {
        Err(StorageError::MessageTooLarge { size, max }) => {
            assert_eq!((size, max), (b.len() as u64, b.len() as u64 - 1))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn compacted_topics_reject_null_keys() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            compact: true,
            ..cfg()
        },
    );
    let b = encode_batch(
        &[kv("a", "1", NOW), unkeyed("x", NOW)],
        Compression::Gzip,
        -1,
        -1,
        -1,
    );
    assert!(matches!(
        log.append(&b, NOW),
        Err(StorageError::InvalidRecord { .. })
    ));
    log.append(&batch(2, NOW), NOW).unwrap();
}

/// Every offset reads back the batch that contains it.
fn check_every_offset(log: &PartitionLog) {
    for off in log.log_start_offset()..log.log_end_offset() {
        let got = log.read(off, 1).unwrap();
        let h = headers(&got)[0];
        assert!(
            h.base_offset <= off && off <= h.last_offset(),
            "offset {off} got {h:?}"
        );
    }
}

#[test]
fn roll_by_size_and_index_lookups_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1000,
        index_interval_bytes: 150,
        ..cfg()
    };
    let mut log = open(dir.path(), config.clone());
    for i in 0..60 {
        log.append(&batch(1 + i % 3, NOW + i as i64), NOW).unwrap();
    }
    assert!(log.segment_count() > 3, "{}", log.segment_count());
    for s in &log.segments {
        assert!(s.size <= 1000);
    }
    assert!(log.segments[0].offset_index_len() > 2);
    // A rolled segment's indexes, kept in memory until its index files are written, hold no
    // spare room.
    let sealed = &log.segments[0];
    assert_eq!(
        sealed.index_capacity(),
        (sealed.offset_index_len(), sealed.time_index_len())
    );
    check_every_offset(&log);
    assert!(!index_path(dir.path(), 0).exists(), "written by the seal");
    log.seal_all().unwrap();
    assert!(index_path(dir.path(), 0).exists());
    let end = log.log_end_offset();
    let bases = log.segment_bases();
    let all = log.read(0, usize::MAX).unwrap();
    drop(log);
    let log = open(dir.path(), config);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.segment_bases(), bases);
    assert_eq!(log.read(0, usize::MAX).unwrap(), all);
    check_every_offset(&log);
}

/// Once a sealed segment's index files are written its indexes leave the heap, and every
/// lookup in the files finds what the lookup in memory found: the same start positions, the
/// same batches for every offset and the same offsets for every timestamp, also after a
/// restart. Index files that go missing or are swapped for wrong ones cost longer walks, never
/// a wrong read.
#[test]
fn sealed_segments_leave_their_indexes_to_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1000,
        index_interval_bytes: 150,
        ..cfg()
    };
    let mut log = open(dir.path(), config.clone());
    for i in 0..60 {
        log.append(&batch(1 + i % 3, NOW + 10 * i as i64), NOW)
            .unwrap();
    }
    let positions = |log: &PartitionLog| -> Vec<Vec<u64>> {
        let end = log.log_end_offset();
        log.segments
            .iter()
            .map(|s| (s.base_offset..end).map(|o| s.index_position(o)).collect())
            .collect()
    };
    let by_time = |log: &PartitionLog| -> Vec<Option<(i64, i64)>> {
        (NOW - 5..NOW + 10 * 60 + 5)
            .map(|t| log.offset_for_timestamp(t).unwrap())
            .collect()
    };
    let in_memory = positions(&log);
    let times = by_time(&log);
    let all = log.read(0, usize::MAX).unwrap();
    assert!(log.segments[0].index_capacity().0 > 2);
    log.seal_all().unwrap();
    let sealed = log.segment_count() - 1;
    assert!(sealed >= 3, "{sealed}");
    let on_disk = |log: &PartitionLog| {
        log.segments
            .iter()
            .filter(|s| s.index_capacity() == (0, 0))
            .count()
    };
    assert_eq!(
        on_disk(&log),
        sealed,
        "every sealed segment, not the active one"
    );
    assert_eq!(positions(&log), in_memory);
    assert_eq!(by_time(&log), times);
    assert_eq!(log.read(0, usize::MAX).unwrap(), all);
    check_every_offset(&log);
    drop(log);
    let log = open(dir.path(), config.clone());
    assert_eq!(on_disk(&log), sealed);
    assert_eq!(positions(&log), in_memory);
    assert_eq!(by_time(&log), times);
    check_every_offset(&log);
    // Opened with a denser index interval, a sealed segment whose scan after its last entry
    // adds entries has its files written again, and leaves them to the files.
    let index_bytes = |log: &PartitionLog| -> u64 {
        let bases = log.segment_bases();
        let sealed = &bases[..bases.len() - 1];
        sealed
            .iter()
            .map(|&b| fs::metadata(index_path(dir.path(), b)).unwrap().len())
            .sum()
    };
    let before = index_bytes(&log);
    drop(log);
    let denser = LogConfig {
        index_interval_bytes: 1,
        ..config.clone()
    };
    let log = open(dir.path(), denser);
    assert!(index_bytes(&log) > before, "entries added and written");
    assert_eq!(on_disk(&log), sealed);
    assert_eq!(by_time(&log), times);
    check_every_offset(&log);
    // Segment 0's offset index replaced by segment 1's (entries that name other batches) and
    // segment 1's files removed: the reads walk from the segments' starts instead.
    let second = log.segment_bases()[1];
    fs::copy(index_path(dir.path(), second), index_path(dir.path(), 0)).unwrap();
    fs::remove_file(index_path(dir.path(), second)).unwrap();
    fs::remove_file(timeindex_path(dir.path(), second)).unwrap();
    assert_eq!(log.read(0, usize::MAX).unwrap(), all);
    check_every_offset(&log);
    assert_eq!(by_time(&log), times);
    assert_eq!(log.segments[1].index_position(second + 5), 0);
}

#[test]
fn roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_age_ms: 1000,
            ..cfg()
        },
    );
    log.append(&batch(1, NOW), NOW).unwrap();
    log.append(&batch(1, NOW), NOW + 1000).unwrap();
    assert_eq!(log.segment_count(), 1);
    log.append(&batch(1, NOW), NOW + 1001).unwrap();
    assert_eq!(log.segment_bases(), vec![0, 2]);
}

#[test]
fn timestamp_lookups() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 300,
            index_interval_bytes: 1,
            ..cfg()
        },
    );
    assert_eq!(log.max_timestamp().unwrap(), None);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), None);
    // Batches at offsets 0-2 (ts 100..102), 3-5 (ts 200..202), 6-8 (ts 300..302), ...
    for b in 0..6 {
        log.append(&batch(3, 100 * (b + 1)), NOW).unwrap();
    }
    assert!(log.segment_count() > 1);
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 100)));
    assert_eq!(log.offset_for_timestamp(101).unwrap(), Some((1, 101)));
    assert_eq!(log.offset_for_timestamp(150).unwrap(), Some((3, 200)));
    assert_eq!(log.offset_for_timestamp(302).unwrap(), Some((8, 302)));
    assert_eq!(log.offset_for_timestamp(602).unwrap(), Some((17, 602)));
    assert_eq!(log.offset_for_timestamp(603).unwrap(), None);
    assert_eq!(log.max_timestamp().unwrap(), Some((602, 17)));
}

#[test]
fn log_append_time_patches_timestamp_and_crc() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            log_append_time: true,
            ..cfg()
        },
    );
    let info = log.append(&batch(3, 5), NOW + 7).unwrap();
    assert_eq!(info.log_append_time, NOW + 7);
    let got = log.read(0, usize::MAX).unwrap();
    let h = check_batch(&got).unwrap();
    assert!(h.is_log_append_time());
    assert_eq!(h.max_timestamp, NOW + 7);
    assert_eq!(h.first_timestamp, 5, "Kafka leaves firstTimestamp alone");
    assert_eq!(decode_all(&got).len(), 3);
    // Every record carries the append time; the earliest of them is reported.
    assert_eq!(log.max_timestamp().unwrap(), Some((NOW + 7, 0)));
    assert_eq!(log.offset_for_timestamp(NOW).unwrap(), Some((0, NOW + 7)));
    let plain = open(tempfile::tempdir().unwrap().path(), cfg())
        .append(&batch(1, 5), NOW)
        .unwrap();
    assert_eq!(plain.log_append_time, -1);
}

#[test]
fn recovery_of_a_tail_cut_at_every_byte() {
    let a = batch(2, NOW);
    let b = batch(3, NOW);
    let full = a.len() + b.len();
    for cut in a.len()..full {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), cfg());
        log.append(&a, NOW).unwrap();
        log.append(&b, NOW).unwrap();
        drop(log);
        let f = fs::OpenOptions::new()
            .write(true)
            .open(log_path(dir.path(), 0))
            .unwrap();
        f.set_len(cut as u64).unwrap();
        drop(f);
        let mut log = open(dir.path(), cfg());
        assert_eq!(log.log_end_offset(), 2, "cut at {cut}");
        assert_eq!(log.size_bytes(), a.len() as u64);
        assert_eq!(headers(&log.read(0, usize::MAX).unwrap()).len(), 1);
        assert_eq!(log.append(&b, NOW).unwrap().base_offset, 2);
        assert_eq!(decode_all(&log.read(0, usize::MAX).unwrap()).len(), 5);
    }
}

#[test]
fn recovery_discards_garbage_and_rolled_empty_segments_work() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 1,
            ..cfg()
        },
    );
    log.append(&batch(2, NOW), NOW).unwrap();
    log.append(&batch(2, NOW), NOW).unwrap();
    drop(log);
    let path = log_path(dir.path(), 2);
    let mut bytes = fs::read(&path).unwrap();
    let len = bytes.len();
    bytes.extend_from_slice(&[0xAB; 100]);
    fs::write(&path, &bytes).unwrap();
    // An empty trailing segment, as left by a crash right after a roll.
    fs::write(log_path(dir.path(), 4), b"").unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 1,
            ..cfg()
        },
    );
    assert_eq!(fs::metadata(&path).unwrap().len(), len as u64);
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.append(&batch(1, NOW), NOW).unwrap().base_offset, 4);
    check_every_offset(&log);
}

/// A closed log of 40 small batches over several segments with dense indexes: its config and
/// every byte it returns.
fn several_indexed_segments(dir: &std::path::Path) -> (LogConfig, bytes::Bytes) {
    let config = LogConfig {
        segment_bytes: 3000,
        index_interval_bytes: 100,
        ..cfg()
    };
    let mut log = open(dir, config.clone());
    for i in 0..40 {
        log.append(&batch(2, NOW + i), NOW).unwrap();
    }
    let all = log.read(0, usize::MAX).unwrap();
    log.close().unwrap();
    (config, all)
}

#[test]
fn corrupt_index_files_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let (config, all) = several_indexed_segments(dir.path());
    let ip = index_path(dir.path(), 0);
    let good = fs::read(&ip).unwrap();
    assert!(good.len() >= 16);
    // Torn entry, then an entry pointing into the middle of a batch.
    fs::write(&ip, &good[..good.len() - 3]).unwrap();
    let log = open(dir.path(), config.clone());
    assert_eq!(fs::read(&ip).unwrap(), good, "rebuilt");
    check_every_offset(&log);
    drop(log);
    let mut bad = good.clone();
    let n = bad.len();
    bad[n - 1] = bad[n - 1].wrapping_add(1);
    fs::write(&ip, &bad).unwrap();
    let log = open(dir.path(), config);
    assert_eq!(fs::read(&ip).unwrap(), good, "rebuilt");
    assert_eq!(log.read(0, usize::MAX).unwrap(), all);
    check_every_offset(&log);
}

#[test]
fn idempotent_producer_duplicates_gaps_and_epochs() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    let first = log.append(&idem(3, 7, 0, 0), NOW).unwrap();
    assert_eq!(
        (first.base_offset, first.last_offset, first.duplicate),
        (0, 2, false)
    );
    log.append(&batch(1, NOW), NOW).unwrap(); // another producer at offset 3
    let second = log.append(&idem(2, 7, 0, 3), NOW).unwrap();
    assert_eq!(second.base_offset, 4);
    // Retry of the first batch: not written, original offsets.
    let dup = log.append(&idem(3, 7, 0, 0), NOW).unwrap();
    assert!(dup.duplicate);
    assert_eq!(
        (dup.base_offset, dup.last_offset, dup.record_count),
        (0, 2, 0)
    );
    assert_eq!(log.log_end_offset(), 6);
    // Gap.
    assert!(matches!(
        log.append(&idem(1, 7, 0, 6), NOW),
        Err(StorageError::OutOfOrderSequence {
            producer_id: 7,
            expected: 5,
            got: 6
        })
    ));
    // A producer this partition holds no state for (its batches gone with retention, or its
    // topic made again) may start at any sequence, as with Kafka >= 2.5; it is in sequence
    // from there on.
    log.append(&idem(1, 8, 0, 4), NOW).unwrap();
    assert!(matches!(
        log.append(&idem(1, 8, 0, 6), NOW),
        Err(StorageError::OutOfOrderSequence {
            producer_id: 8,
            expected: 5,
            got: 6
        })
    ));
    log.append(&idem(1, 8, 0, 5), NOW).unwrap();
    // New epoch must start at 0, then fences the old one.
    assert!(matches!(
        log.append(&idem(1, 7, 1, 5), NOW),
        Err(StorageError::OutOfOrderSequence { expected: 0, .. })
    ));
    log.append(&idem(1, 7, 1, 0), NOW).unwrap();
    assert!(matches!(
        log.append(&idem(1, 7, 0, 5), NOW),
        Err(StorageError::InvalidProducerEpoch {
            producer_id: 7,
            epoch: 0,
            current: 1
        })
    ));
    // Only the last five batches are remembered.
    for s in 1..7 {
        log.append(&idem(1, 7, 1, s), NOW).unwrap();
    }
    assert!(log.append(&idem(1, 7, 1, 6), NOW).unwrap().duplicate);
    assert!(matches!(
        log.append(&idem(1, 7, 1, 1), NOW),
        Err(StorageError::OutOfOrderSequence { .. })
    ));
    let end = log.log_end_offset();
    drop(log);
    // State is rebuilt from the log on open.
    let mut log = open(dir.path(), cfg());
    let entry = log.producers.get(7).unwrap().clone();
    assert_eq!(entry.epoch, 1);
    assert_eq!(entry.batches.len(), 5);
    let dup = log.append(&idem(1, 7, 1, 5), NOW).unwrap();
    assert!(dup.duplicate);
    assert_eq!(dup.base_offset, end - 2);
    assert!(matches!(
        log.append(&idem(1, 7, 0, 7), NOW),
        Err(StorageError::InvalidProducerEpoch { .. })
    ));
    assert_eq!(log.append(&idem(1, 7, 1, 7), NOW).unwrap().base_offset, end);
}

#[test]
fn sequence_checks_apply_within_one_append() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    let mut two = idem(2, 9, 0, 0);
    two.extend_from_slice(&idem(2, 9, 0, 2));
    assert_eq!(log.append(&two, NOW).unwrap().last_offset, 3);
    let mut gap = idem(1, 9, 0, 4);
    gap.extend_from_slice(&idem(1, 9, 0, 6));
    assert!(matches!(
        log.append(&gap, NOW),
        Err(StorageError::OutOfOrderSequence { expected: 5, .. })
    ));
    // Nothing of the failed append stuck, including producer state.
    assert_eq!(log.log_end_offset(), 4);
    assert_eq!(log.append(&idem(1, 9, 0, 4), NOW).unwrap().base_offset, 4);
}

#[test]
fn injected_write_failure_leaves_the_log_intact() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            index_interval_bytes: 1,
            ..cfg()
        },
    );
    log.append(&batch(2, NOW), NOW).unwrap();
    log.append(&idem(2, 5, 0, 0), NOW).unwrap();
    let before = log.read(0, usize::MAX).unwrap();
    let size = log.size_bytes();
    FAIL_AFTER_BYTES.set(Some(70));
    let err = log.append(&idem(3, 5, 0, 2), NOW).unwrap_err();
    FAIL_AFTER_BYTES.set(None);
    match err {
        StorageError::Io { source, .. } => assert_eq!(source.raw_os_error(), Some(libc::ENOSPC)),
        other => panic!("{other:?}"),
    }
    assert_eq!(log.size_bytes(), size);
    assert_eq!(fs::metadata(log_path(dir.path(), 0)).unwrap().len(), size);
    assert_eq!(log.read(0, usize::MAX).unwrap(), before);
    assert_eq!(log.log_end_offset(), 4);
    // The producer state did not advance: the retry is in sequence, not a duplicate.
    let info = log.append(&idem(3, 5, 0, 2), NOW).unwrap();
    assert_eq!((info.base_offset, info.duplicate), (4, false));
    check_every_offset(&log);
    drop(log);
    let log = open(dir.path(), cfg());
    assert_eq!(log.log_end_offset(), 7);
}

#[test]
fn retention_by_time_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1,
        retention_ms: Some(1000),
        ..cfg()
    };
    let mut log = open(dir.path(), config.clone());
    for i in 0..5 {
        log.append(&batch(2, NOW + i * 1000), NOW).unwrap();
    }
    assert_eq!(log.segment_bases(), vec![0, 2, 4, 6, 8]);
    // Segment 0 holds ts NOW..NOW+1, segment 2 NOW+1000..NOW+1001, ...
    let r = log.maintenance(NOW + 2001).unwrap();
    assert_eq!(r.segments_deleted, 1);
    assert_eq!(log.log_start_offset(), 2);
    assert!(matches!(
        log.read(1, 10),
        Err(StorageError::OffsetOutOfRange {
            offset: 1,
            start: 2,
            ..
        })
    ));
    let r = log.maintenance(NOW + 4500).unwrap();
    assert_eq!(
        r.segments_deleted, 3,
        "the active segment stays while it holds a live record"
    );
    assert_eq!(log.segment_bases(), vec![8]);
    // Everything expired: the active segment is rolled and goes too, as in Kafka.
    let r = log.maintenance(NOW + 100_000).unwrap();
    assert_eq!(r.segments_deleted, 1);
    assert_eq!(log.segment_bases(), vec![10]);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (10, 10));
    assert_eq!(r.log_start_offset, 10);
    assert!(log.read(10, 1000).unwrap().is_empty());
    log.append(&batch(2, NOW + 200_000), NOW + 200_000).unwrap();
    assert_eq!(log.segment_bases(), vec![10]);
    check_every_offset(&log);
    drop(log);
    let log = open(dir.path(), config.clone());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (10, 12));

    let dir = tempfile::tempdir().unwrap();
    let (mut log, one) = five_segments_over_a_two_batch_retention(dir.path());
    let r = log.maintenance(NOW).unwrap();
    assert_eq!((r.segments_deleted, r.bytes_deleted), (3, 3 * one));
    assert_eq!(log.size_bytes(), 2 * one);
    assert_eq!(log.log_start_offset(), 6);
    drop(log);
    let log = open(dir.path(), cfg());
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (6, 10));
}

/// A log of five one-batch segments (two records each) whose retention.bytes keeps two
/// batches, and the size of one batch.
fn five_segments_over_a_two_batch_retention(dir: &std::path::Path) -> (PartitionLog, u64) {
    let one = batch(2, NOW).len() as u64;
    let config = LogConfig {
        segment_bytes: 1,
        retention_ms: None,
        retention_bytes: Some(2 * one),
        ..cfg()
    };
    let mut log = open(dir, config);
    for _ in 0..5 {
        log.append(&batch(2, NOW), NOW).unwrap();
    }
    (log, one)
}

/// A segment file removed by hand (an operator freeing a full disk) counts as deleted when
/// retention gets to it; retention goes on instead of failing at every check.
#[test]
fn retention_takes_a_segment_removed_by_hand_as_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = five_segments_over_a_two_batch_retention(dir.path());
    fs::remove_file(log_path(dir.path(), 0)).unwrap();
    let r = log.maintenance(NOW).unwrap();
    assert_eq!(r.segments_deleted, 3);
    assert_eq!(log.segment_bases(), vec![6, 8]);
}

/// A sealed segment whose index files cannot be written at start (as on a full disk) is
/// served from its index in memory: the start does not fail.
#[test]
fn index_files_that_cannot_be_written_at_start_leave_the_log_served() {
    let dir = tempfile::tempdir().unwrap();
    let (config, all) = several_indexed_segments(dir.path());
    // The first segment's index files give way to directories: writing them fails.
    for path in [index_path(dir.path(), 0), timeindex_path(dir.path(), 0)] {
        fs::remove_file(&path).unwrap();
        fs::create_dir(&path).unwrap();
        fs::write(path.join("in-the-way"), b"").unwrap();
    }
    let log = open(dir.path(), config);
    assert_eq!(log.read(0, usize::MAX).unwrap(), all);
    check_every_offset(&log);
}

#[test]
fn delete_records_before_advances_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 1,
            ..cfg()
        },
    );
    for _ in 0..4 {
        log.append(&batch(2, NOW), NOW).unwrap();
    }
    assert_eq!(log.delete_records_before(3).unwrap(), 3);
    assert_eq!(log.segment_bases(), vec![2, 4, 6]);
    assert!(matches!(
        log.read(2, 10),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    assert_eq!(headers(&log.read(3, 1).unwrap())[0].base_offset, 2);
    assert_eq!(log.delete_records_before(1).unwrap(), 3, "never moves back");
    assert!(matches!(
        log.delete_records_before(9),
        Err(StorageError::OffsetOutOfRange { .. })
    ));
    drop(log);
    let mut log = open(dir.path(), cfg());
    assert_eq!(log.log_start_offset(), 3);
    assert_eq!(log.delete_records_before(8).unwrap(), 8);
    assert_eq!(log.segment_bases(), vec![6]);
    assert!(log.read(8, 10).unwrap().is_empty());
    assert_eq!(log.append(&batch(1, NOW), NOW).unwrap().base_offset, 8);
}

#[test]
fn flush_policy_bookkeeping() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    assert!(!log.needs_flush(NOW + 10_000));
    log.append(&batch(1, NOW), NOW).unwrap();
    assert!(!log.needs_flush(NOW + 999));
    assert!(log.needs_flush(NOW + 1000));
    log.flush(NOW + 1000).unwrap();
    assert!(!log.needs_flush(NOW + 5000));
    log.set_config(LogConfig {
        flush: FlushPolicy::Always,
        ..LogConfig::default()
    });
    log.append(&batch(1, NOW), NOW).unwrap();
    assert!(!log.needs_flush(NOW + 5000));
    log.close().unwrap();
}

#[test]
fn an_interval_flush_syncs_without_the_log_and_a_failed_one_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), LogConfig::default());
    log.append(&batch(1, NOW), NOW).unwrap();
    assert!(log.needs_flush(NOW + 1000));
    let pending = log
        .start_flush(NOW + 1000)
        .unwrap()
        .expect("unflushed data");
    assert!(!log.needs_flush(NOW + 1000));
    // The log is free while the file syncs: appends go on and count as unflushed.
    assert_eq!(
        log.append(&batch(2, NOW), NOW + 1000).unwrap().base_offset,
        1
    );
    pending.sync().unwrap();
    assert!(!log.needs_flush(NOW + 1999));
    assert!(log.needs_flush(NOW + 2000));
    // A failed sync leaves the data unflushed and is tried again at the next check.
    log.flush_failed();
    assert!(log.needs_flush(NOW + 1001));
    log.flush(NOW + 3000).unwrap();
    assert!(
        log.start_flush(NOW + 5000).unwrap().is_none(),
        "nothing appended since"
    );
    assert!(!log.needs_flush(NOW + 5999));
    log.close().unwrap();
}

#[test]
fn a_roll_leaves_the_fsync_and_the_index_files_to_a_seal_run_without_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1,
        ..cfg()
    };
    let mut log = open(dir.path(), config.clone());
    for i in 0..3 {
        log.append(&batch(2, NOW + i), NOW).unwrap();
    }
    assert_eq!(log.segment_bases(), vec![0, 2, 4]);
    let seals = log.start_seals();
    assert_eq!(
        seals.iter().map(|s| s.base_offset()).collect::<Vec<_>>(),
        vec![0, 2]
    );
    assert!(!index_path(dir.path(), 0).exists());
    // The log is free while the seals run: appends go on (and roll again), and DeleteRecords
    // removes segment 0 before its seal finishes.
    log.append(&batch(2, NOW + 3), NOW).unwrap();
    assert_eq!(log.delete_records_before(2).unwrap(), 2);
    for seal in &seals {
        seal.run().unwrap();
        log.seal_done(seal);
    }
    assert!(
        !index_path(dir.path(), 0).exists(),
        "no index files left for a deleted segment"
    );
    assert!(index_path(dir.path(), 2).exists());
    assert!(
        !index_path(dir.path(), 4).exists(),
        "rolled after the start"
    );
    assert_eq!(
        log.start_seals()
            .iter()
            .map(|s| s.base_offset())
            .collect::<Vec<_>>(),
        vec![4],
        "only the segment rolled since"
    );

    // A crash before that seal: segment 4 has no index files and is scanned whole on open.
    let end = log.log_end_offset();
    let all = log.read(2, usize::MAX).unwrap();
    drop(log);
    let mut log = open(dir.path(), config);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.read(2, usize::MAX).unwrap(), all);
    check_every_offset(&log);
    assert!(index_path(dir.path(), 4).exists(), "rebuilt by the scan");
    assert!(log.start_seals().is_empty());
    // A clean close seals what a roll left.
    log.append(&batch(2, NOW + 4), NOW).unwrap();
    assert_eq!(log.start_seals().len(), 1);
    log.close().unwrap();
    assert!(index_path(dir.path(), 6).exists());
}

#[test]
fn walks_over_batches_of_every_size_find_the_same_batches_after_reopening() {
    // Tiny batches (many per read), batches larger than the largest read, and runs of each, so
    // that the forward reader's reads start, end and jump at every kind of boundary.
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 3 * 1024 * 1024,
        index_interval_bytes: 4096,
        max_message_bytes: 2 * 1024 * 1024,
        ..cfg()
    };
    let mut log = open(dir.path(), config.clone());
    let mut offsets = Vec::new();
    for i in 0..400usize {
        let value = match i % 50 {
            7 => "v".repeat(1_300_000),
            8..=10 => "w".repeat(9_000 * (i % 50)),
            _ => "x".repeat(i % 13),
        };
        let b = encode_batch(
            &[kv("k", &value, NOW + i as i64)],
            Compression::None,
            -1,
            -1,
            -1,
        );
        offsets.push(log.append(&b, NOW).unwrap().base_offset);
    }
    assert!(log.segment_count() > 2, "{}", log.segment_count());
    let end = log.log_end_offset();
    let bases = log.segment_bases();
    // A crash: no seal ran, so every segment is scanned whole on open.
    drop(log);
    let log = open(dir.path(), config.clone());
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(log.segment_bases(), bases);
    check_every_offset(&log);
    for &o in &offsets {
        assert_eq!(headers(&log.read(o, 1).unwrap())[0].base_offset, o);
    }
    // A clean restart: sealed segments from their index files.
    log.close().unwrap();
    let log = open(dir.path(), config);
    assert_eq!(log.log_end_offset(), end);
    check_every_offset(&log);
}

#[test]
fn a_seal_writes_no_index_files_beside_the_log_of_a_topic_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("t-0");
    let config = LogConfig {
        segment_bytes: 1,
        ..cfg()
    };
    let mut log = open(&part, config.clone());
    log.append(&batch(2, NOW), NOW).unwrap();
    log.append(&batch(2, NOW), NOW).unwrap();
    let seals = log.start_seals();
    assert_eq!(seals.len(), 1);
    // The topic is deleted and made again while the seal runs.
    log.remove().unwrap();
    let mut again = open(&part, config);
    again.append(&batch(1, NOW), NOW).unwrap();
    seals[0].run().unwrap();
    assert!(!index_path(&part, 0).exists());
    assert_eq!(again.log_end_offset(), 1);
    again.close().unwrap();
}

#[test]
fn remove_deletes_the_directory() {
    let dir = tempfile::tempdir().unwrap();
    let part = dir.path().join("topic-0");
    let mut log = open(&part, cfg());
    log.append(&batch(1, NOW), NOW).unwrap();
    assert_eq!(log.dir(), part.as_path());
    log.remove().unwrap();
    assert!(!part.exists());
}

#[test]
fn append_speed_sanity() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 64 << 20,
            ..cfg()
        },
    );
    let recs: Vec<_> = (0..1000)
        .map(|i| kv(&format!("{i:08}"), &"v".repeat(92), NOW))
        .collect();
    let b = encode_batch(&recs, Compression::None, -1, -1, -1);
    let start = Instant::now();
    for _ in 0..1000 {
        log.append(&b, NOW).unwrap();
    }
    let elapsed = start.elapsed();
    assert_eq!(log.log_end_offset(), 1_000_000);
    println!(
        "appended 1000 batches x 1000 records ({} MB) in {elapsed:?}, {} segments",
        log.size_bytes() >> 20,
        log.segment_count()
    );
    let start = Instant::now();
    let mut off = 0;
    while off < log.log_end_offset() {
        let got = log.read(off, 1 << 20).unwrap();
        off = headers(&got).last().unwrap().next_offset();
    }
    println!("read back in {:?}", start.elapsed());
}

/// A batch as a plugin's filter leaves it: the records `kept` (indexes) of `batch(n, ts)` at the
/// offsets they were produced at, or none (a header-only batch).
fn filtered(n: usize, ts: i64, kept: &[usize]) -> Vec<u8> {
    use super::record_spans::{Records, compressed};
    let full = batch(n, ts);
    let h = BatchHeader::parse(&full).unwrap();
    if kept.is_empty() {
        return super::empty_batch(&full, &h);
    }
    compressed(
        Records::parse(&full, &h)
            .unwrap()
            .keep_offsets(&h, kept, None),
    )
    .unwrap()
}

/// ListOffsets MAX_TIMESTAMP and by timestamp name a record that is there: a batch a plugin
/// emptied (its header keeps the producer's timestamps, it holds no record) is passed over,
/// also when it is what the time index leads to; in a LogAppendTime log the answer is the
/// first record a filter kept, not the batch's base offset (where nothing is stored).
#[test]
fn timestamp_lookups_name_stored_records_past_emptied_batches_and_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let dense = LogConfig {
        index_interval_bytes: 1,
        ..cfg()
    };
    let mut log = open(&dir.path().join("create"), dense.clone());
    log.append(&batch(2, 420), NOW).unwrap(); // 0-1
    log.append_rewritten(&filtered(2, 450, &[]), NOW).unwrap(); // 2-3, none
    log.append(&batch(2, 100), NOW).unwrap(); // 4-5
    log.append_rewritten(&filtered(3, 500, &[]), NOW).unwrap(); // 6-8, none
    log.append(&batch(1, 150), NOW).unwrap(); // 9
    assert_eq!(log.max_timestamp().unwrap(), Some((421, 1)));
    // By timestamp, the emptied batches give way to the records after them.
    assert_eq!(log.offset_for_timestamp(430).unwrap(), None);
    assert_eq!(log.offset_for_timestamp(140).unwrap(), Some((0, 420)));
    log.append(&batch(1, 600), NOW).unwrap(); // 10
    assert_eq!(log.offset_for_timestamp(430).unwrap(), Some((10, 600)));
    let mut log = open(
        &dir.path().join("append-time"),
        LogConfig {
            log_append_time: true,
            ..dense
        },
    );
    log.append(&batch(2, 100), NOW).unwrap(); // 0-1
    log.append_rewritten(&filtered(4, 100, &[1, 3]), NOW + 5)
        .unwrap(); // 2-5: 3 and 5 stored
    assert_eq!(log.max_timestamp().unwrap(), Some((NOW + 5, 3)));
}

#[test]
fn corruption_inside_a_sealed_segment_truncates_only_that_segment() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 400,
        index_interval_bytes: 1,
        ..cfg()
    };
    let mut log = open(dir.path(), config.clone());
    for i in 0..12 {
        log.append(&batch(2, NOW + i), NOW).unwrap();
    }
    let bases = log.segment_bases();
    assert!(bases.len() >= 3);
    let one = batch(2, NOW).len();
    log.close().unwrap();
    // Flip a record byte in the second batch of the first (sealed) segment, and remove its
    // index files as a crash during the roll would. (A sealed segment whose index files pass
    // the consistency check is only re-scanned after its last index entry: like Kafka, open
    // does not re-read whole sealed segments, whose data was fsynced before their index files.)
    let p = log_path(dir.path(), 0);
    fs::remove_file(index_path(dir.path(), 0)).unwrap();
    let mut bytes = fs::read(&p).unwrap();
    bytes[one + BATCH_HEADER_LEN + 2] ^= 0xff;
    fs::write(&p, &bytes).unwrap();
    let log = open(dir.path(), config);
    assert_eq!(fs::metadata(&p).unwrap().len(), one as u64);
    // What was cut is kept beside the segment, byte for byte.
    let kept: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("00000000000000000000.log.discarded-"))
        .collect();
    assert_eq!(kept.len(), 1, "{kept:?}");
    assert_eq!(fs::read(dir.path().join(&kept[0])).unwrap(), bytes[one..]);
    assert_eq!(log.segment_bases(), bases);
    assert_eq!(log.log_end_offset(), 24);
    // Offsets 2.. of the damaged segment are gone; a fetch there starts at the next segment.
    assert_eq!(headers(&log.read(2, 1).unwrap())[0].base_offset, bases[1]);
    for off in bases[1]..24 {
        let h = headers(&log.read(off, 1).unwrap())[0];
        assert!(h.base_offset <= off && off <= h.last_offset());
    }
    // The kept tail goes when its segment does.
    let mut log = log;
    log.delete_records_before(bases[1]).unwrap();
    assert_eq!(log.segment_bases()[0], bases[1]);
    assert!(
        !dir.path().join(&kept[0]).exists(),
        "the kept tail was deleted"
    );
}

#[test]
fn max_timestamp_names_the_exact_record_and_ignores_deleted_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    // One batch whose largest timestamp is its second record.
    let recs = vec![
        kv("a", "1", 5_000),
        kv("b", "2", 9_000),
        kv("c", "3", 7_000),
        kv("d", "4", 8_000),
    ];
    log.append(&encode_batch(&recs, Compression::None, -1, -1, -1), NOW)
        .unwrap();
    assert_eq!(
        log.max_timestamp().unwrap(),
        Some((9_000, 1)),
        "the record, not the batch's last offset"
    );
    // Single-record batches after it, then DeleteRecords past the maximum.
    for ts in [6_000, 8_500, 6_500] {
        log.append(
            &encode_batch(&[kv("e", "5", ts)], Compression::None, -1, -1, -1),
            NOW,
        )
        .unwrap();
    }
    assert_eq!(log.max_timestamp().unwrap(), Some((9_000, 1)));
    log.delete_records_before(2).unwrap();
    assert_eq!(
        log.max_timestamp().unwrap(),
        Some((8_500, 5)),
        "records before the log start no longer count"
    );
    log.delete_records_before(6).unwrap();
    assert_eq!(log.max_timestamp().unwrap(), Some((6_500, 6)));
}

#[test]
fn an_uncompressed_batch_that_lies_about_its_record_count_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    let mut b = batch(3, NOW);
    // Claim 1000 records (and the matching lastOffsetDelta), with a valid CRC.
    b[57..61].copy_from_slice(&1000i32.to_be_bytes());
    b[23..27].copy_from_slice(&999i32.to_be_bytes());
    let crc = crate::storage::batch::compute_crc(&b);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    let err = log.append(&b, NOW).unwrap_err();
    assert!(matches!(err, StorageError::CorruptRecord { .. }), "{err:?}");
    assert_eq!(log.log_end_offset(), 0, "no offsets were taken");
    // Honest batches of every codec still pass.
    for codec in [Compression::None, Compression::Gzip, Compression::Zstd] {
        log.append(
            &encode_batch(&[kv("k", "v", NOW), kv("k2", "v2", NOW)], codec, -1, -1, -1),
            NOW,
        )
        .unwrap();
    }
    assert_eq!(log.log_end_offset(), 6);
}

/// A batch the plugins rewrote keeps its producer's span of offsets with fewer records (for
/// an idempotent producer, also none): `append_rewritten` stores it, an idempotent producer's
/// next batch is in sequence, also after a restart; the plain `append` refuses such batches
/// from the network.
#[test]
fn rewritten_batches_keep_the_producer_s_span() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    // Five records produced with sequences 0..=4, two kept: lastOffsetDelta stays 4.
    let full = idem(5, 7, 0, 0);
    let h = BatchHeader::parse(&full).unwrap();
    let mut narrow = idem(2, 7, 0, 0);
    put_i32(&mut narrow, LAST_OFFSET_DELTA_POS, 4);
    rewrite_crc(&mut narrow);
    assert!(matches!(
        log.append(&narrow, NOW),
        Err(StorageError::InvalidRecord { .. })
    ));
    let info = log.append_rewritten(&narrow, NOW).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.record_count),
        (0, 4, 2)
    );
    // Then a batch whose every record was dropped: a header-only batch for sequences 5..=9.
    let mut all_dropped = idem(5, 7, 0, 5);
    let dropped_h = BatchHeader::parse(&all_dropped).unwrap();
    all_dropped = super::empty_batch(&all_dropped, &dropped_h);
    assert!(log.append(&all_dropped, NOW).is_err());
    let info = log.append_rewritten(&all_dropped, NOW).unwrap();
    assert_eq!(
        (info.base_offset, info.last_offset, info.record_count),
        (5, 9, 0)
    );
    // The producer's next batch (sequence 10) is in sequence; a retry of the first is a
    // duplicate with the offsets first assigned.
    assert_eq!(log.append(&idem(1, 7, 0, 10), NOW).unwrap().base_offset, 10);
    let dup = log.append(&full, NOW).unwrap();
    assert!(dup.duplicate);
    assert_eq!((dup.base_offset, dup.last_offset), (0, 4));
    assert_eq!(h.last_sequence(), 4);
    let read = log.read(0, usize::MAX).unwrap();
    let offsets: Vec<i64> = decode_all(&read).iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, vec![0, 1, 10]);
    drop(log);
    // State rebuilt from the stored headers agrees.
    let mut log = open(dir.path(), cfg());
    assert_eq!(log.append(&idem(2, 7, 0, 11), NOW).unwrap().base_offset, 11);
    // So may a batch without a producer id: span more offsets than it holds records (a filter
    // dropped some), or hold none.
    let mut plain = batch(2, NOW);
    put_i32(&mut plain, LAST_OFFSET_DELTA_POS, 4);
    rewrite_crc(&mut plain);
    assert!(log.append(&plain, NOW).is_err());
    let info = log.append_rewritten(&plain, NOW).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (13, 17));
    let plain_h = BatchHeader::parse(&plain).unwrap();
    let none = super::empty_batch(&plain, &plain_h);
    assert!(log.append(&none, NOW).is_err());
    let info = log.append_rewritten(&none, NOW).unwrap();
    assert_eq!((info.base_offset, info.last_offset), (18, 22));
    assert_eq!(log.log_end_offset(), 23);
}

#[test]
fn control_batches_and_transactional_batches_without_a_producer_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    for (bit, why) in [
        (ATTR_TRANSACTIONAL, "no producer id"),
        (0x20, "coordinators"),
    ] {
        let mut b = batch(2, NOW);
        let attrs = i16::from_be_bytes([b[21], b[22]]) | bit;
        b[21..23].copy_from_slice(&attrs.to_be_bytes());
        rewrite_crc(&mut b);
        match log.append(&b, NOW) {
            Err(e @ StorageError::InvalidRecord { .. }) => {
                assert!(e.to_string().contains(why), "{e}")
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(log.log_end_offset(), 0);
}

#[test]
fn markers_end_transactions_and_the_state_survives_a_reopen() {
    use super::{AbortedTxn, Marker};
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    let two = [kv("a", "1", NOW), kv("b", "2", NOW)];
    assert_eq!(
        log.append(&transactional_batch(&two, 7, 0, 0), NOW)
            .unwrap()
            .base_offset,
        0
    );
    assert_eq!(
        log.append(&transactional_batch(&two, 8, 0, 0), NOW)
            .unwrap()
            .base_offset,
        2
    );
    assert_eq!(log.append(&batch(1, NOW), NOW).unwrap().base_offset, 4);
    // Both open: the stable part ends where producer 7's transaction starts.
    assert_eq!(log.last_stable_offset(5), 0);
    assert!(log.has_open_transaction(7) && log.has_open_transaction(8));
    assert_eq!(log.append_marker(7, 0, Marker::Abort, NOW).unwrap(), 5);
    assert_eq!(log.last_stable_offset(6), 2);
    assert_eq!(log.append_marker(8, 0, Marker::Commit, NOW).unwrap(), 6);
    // Until the high watermark passes the marker (a follower copied it), the transaction still
    // holds read_committed readers back.
    assert_eq!(log.last_stable_offset(6), 2);
    assert_eq!(log.last_stable_offset(7), 7);
    // A high watermark below the open transactions bounds it too.
    assert_eq!(log.last_stable_offset(3), 3);
    let aborted = AbortedTxn {
        producer_id: 7,
        first_offset: 0,
        last_offset: 5,
    };
    let check = |log: &mut PartitionLog| {
        assert_eq!(log.aborted_transactions(0, 7), vec![aborted]);
        assert_eq!(log.aborted_transactions(5, 7), vec![aborted]);
        assert!(log.aborted_transactions(6, 7).is_empty());
        assert!(!log.has_open_transaction(7) && !log.has_open_transaction(8));
        assert_eq!(log.last_stable_offset(7), 7);
    };
    check(&mut log);
    // A marker is a control batch consumers recognise: read back, it says what it is.
    let read = log.read(5, 1 << 20).unwrap();
    let h = headers(&read)[0];
    assert!(h.is_control() && h.is_transactional() && h.producer_id == 7);
    drop(log);
    let mut log = open(dir.path(), cfg());
    check(&mut log);
    // An open transaction is rebuilt too.
    log.append(&transactional_batch(&two, 8, 0, 2), NOW)
        .unwrap();
    drop(log);
    let mut log = open(dir.path(), cfg());
    assert_eq!(log.last_stable_offset(9), 7);
    assert_eq!(log.open_transactions(), vec![(8, 0)]);
    // Until it ends, the producer's batches here must be transactional.
    match log.append(&idem(1, 8, 0, 4), NOW) {
        Err(StorageError::OutsideTransaction { producer_id: 8 }) => {}
        other => panic!("{other:?}"),
    }
    // A marker with a newer epoch (the coordinator fenced the producer) fences the old epoch
    // here; the new epoch starts at any sequence.
    log.append_marker(8, 1, Marker::Abort, NOW).unwrap();
    match log.append(&transactional_batch(&two, 8, 0, 4), NOW) {
        Err(StorageError::InvalidProducerEpoch { .. }) => {}
        other => panic!("{other:?}"),
    }
    log.append(&transactional_batch(&two, 8, 1, 0), NOW)
        .unwrap();
    assert_eq!(log.last_stable_offset(12), 10);
}

/// The whole log as stored, from its start.
fn stored(log: &PartitionLog) -> Vec<u8> {
    let mut out = Vec::new();
    let mut at = log.log_start_offset();
    while at < log.log_end_offset() {
        let bytes = log.read(at, 1 << 20).unwrap();
        at = headers(&bytes).last().unwrap().next_offset();
        out.extend_from_slice(&bytes);
    }
    out
}

#[test]
fn a_replica_stores_the_leaders_batches_byte_for_byte() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let small = LogConfig {
        segment_bytes: 300,
        ..cfg()
    };
    let mut leader = open(ld.path(), small.clone());
    let mut follower = open(fd.path(), small);
    for i in 0..6 {
        leader.append(&batch(3, NOW + i), NOW).unwrap();
    }
    leader.append(&idem(2, 7, 0, 0), NOW).unwrap();
    // Fetched in two parts, the second overlapping the first (a fetch may start inside a
    // batch the follower has): the overlap is skipped.
    let all = stored(&leader);
    let cut = headers(&all)[..3]
        .iter()
        .map(|h| h.total_size())
        .sum::<usize>();
    let info = follower.append_replica(&all[..cut], NOW).unwrap().unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 8));
    follower.append_replica(&all, NOW).unwrap().unwrap();
    assert_eq!(follower.append_replica(&all, NOW).unwrap(), None);
    assert_eq!(stored(&follower), all);
    assert_eq!(follower.log_end_offset(), leader.log_end_offset());
    // The producer's state came along: its next batch is in sequence on the follower too.
    follower.append(&idem(1, 7, 0, 2), NOW).unwrap();
    // A damaged batch is refused and nothing of it is written.
    let mut bad = leader.read(0, 1).unwrap().to_vec();
    let last = bad.len() - 1;
    bad[last] ^= 0xff;
    let mut fresh = open(tempfile::tempdir().unwrap().path(), cfg());
    assert!(fresh.append_replica(&bad, NOW).is_err());
    assert_eq!(fresh.log_end_offset(), 0);
}

#[test]
fn a_replica_cuts_its_log_back_to_a_batch_boundary_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let small = LogConfig {
        segment_bytes: 300,
        ..cfg()
    };
    let mut log = open(dir.path(), small.clone());
    for i in 0..8 {
        log.append(&batch(3, NOW + i), NOW).unwrap();
    }
    assert!(log.segment_count() > 2);
    let before = stored(&log);
    // Offset 10 is inside the batch 9..=11: the cut lands at 9.
    log.truncate_to(10, NOW).unwrap();
    assert_eq!(log.log_end_offset(), 9);
    let kept = headers(&before)[..3]
        .iter()
        .map(|h| h.total_size())
        .sum::<usize>();
    assert_eq!(stored(&log), &before[..kept]);
    // The cut holds across a restart, and appends go on from it.
    drop(log);
    let mut log = open(dir.path(), small.clone());
    assert_eq!(log.log_end_offset(), 9);
    assert_eq!(log.append(&batch(1, NOW), NOW).unwrap().base_offset, 9);
    // Behind the leader's log start: the log starts again, empty, where the leader's does.
    log.restart_at(500, NOW).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
    drop(log);
    let log = open(dir.path(), small);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
}

#[test]
fn reads_below_a_limit_stop_at_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(
        dir.path(),
        LogConfig {
            segment_bytes: 300,
            ..cfg()
        },
    );
    for i in 0..8 {
        log.append(&batch(3, NOW + i), NOW).unwrap();
    }
    let below = |from: i64, limit: i64| {
        let bytes = log
            .plan_read_below(from, 1 << 20, limit)
            .unwrap()
            .read()
            .unwrap();
        headers(&bytes)
            .iter()
            .map(|h| h.base_offset)
            .collect::<Vec<_>>()
    };
    // Read through segment after segment, never past offset 15.
    let mut seen = Vec::new();
    let mut at = 0;
    loop {
        let got = below(at, 15);
        let Some(&last) = got.last() else { break };
        seen.extend(got);
        at = last + 3;
    }
    assert_eq!(seen, [0, 3, 6, 9, 12]);
    assert!(below(15, 15).is_empty());
    assert_eq!(
        below(0, 24).len(),
        headers(&log.read(0, 1 << 20).unwrap()).len()
    );
}

#[test]
fn an_empty_replica_starts_at_a_batch_the_leaders_log_start_falls_in() {
    let (ld, fd) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut leader = open(ld.path(), cfg());
    leader.append(&batch(100, NOW), NOW).unwrap();
    leader.delete_records_before(50).unwrap();
    let mut follower = open(fd.path(), cfg());
    // The follower was told the leader's log starts at 50, and got the batch 0..=99.
    follower.restart_at(50, NOW).unwrap();
    let info = follower
        .append_replica(&leader.read(50, 1 << 20).unwrap(), NOW)
        .unwrap()
        .unwrap();
    assert_eq!((info.base_offset, info.last_offset), (0, 99));
    follower.delete_records_before(50).unwrap();
    assert_eq!(
        (follower.log_start_offset(), follower.log_end_offset()),
        (50, 100)
    );
    // A log that holds batches is not restarted for one that overlaps its end.
    let mut other = open(tempfile::tempdir().unwrap().path(), cfg());
    other.append(&batch(10, NOW), NOW).unwrap();
    assert!(
        other
            .append_replica(&leader.read(50, 1 << 20).unwrap(), NOW)
            .is_err()
    );
}

/// A segment file removed from the middle of a log leaves offsets in no segment: found at the
/// next open (the broker warns of them), and none in a log opened whole.
#[test]
fn offsets_a_removed_segment_held_are_found_missing() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1,
        ..cfg()
    };
    let mut log = open(dir.path(), config.clone());
    for _ in 0..4 {
        log.append(&batch(5, NOW), NOW).unwrap();
    }
    drop(log);
    let log = open(dir.path(), config.clone());
    assert!(super::log::offsets_in_no_segment(&log.segments).is_empty());
    drop(log);
    std::fs::remove_file(log_path(dir.path(), 10)).unwrap();
    let log = open(dir.path(), config);
    assert_eq!(super::log::offsets_in_no_segment(&log.segments), [10..=14]);
    assert_eq!(log.log_end_offset(), 20);
}

/// A failed write is the write's error; a failed fsync fails the log: no appends, reads, seals,
/// flushes, truncations or DeleteRecords until it is opened again from the disk (a retried
/// fsync may succeed though the data never reached it).
#[test]
fn a_failed_fsync_fails_the_log_and_a_failed_write_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig {
        segment_bytes: 1,
        ..cfg()
    };
    let mut log = open(dir.path(), config.clone());
    log.append(&batch(2, NOW), NOW).unwrap();
    log.append(&batch(2, NOW), NOW).unwrap();
    let io = |kind| std::io::Error::from(kind);
    let e = log.note_error(StorageError::Io {
        path: dir.path().join("x"),
        source: io(std::io::ErrorKind::StorageFull),
    });
    assert!(matches!(e, StorageError::Io { .. }));
    assert_eq!(log.failed(), None);
    log.append(&batch(1, NOW), NOW).unwrap();

    log.note_error(StorageError::Sync {
        path: dir.path().join("x"),
        source: io(std::io::ErrorKind::Other),
    });
    assert!(log.failed().is_some_and(|f| f.contains("fsync of")));
    let failed = |r: Result<(), StorageError>| matches!(r, Err(StorageError::Failed { .. }));
    assert!(failed(log.append(&batch(1, NOW), NOW).map(|_| ())));
    assert!(failed(log.read(0, 1 << 20).map(|_| ())));
    assert!(failed(log.flush(NOW)));
    assert!(failed(log.start_flush(NOW).map(|_| ())));
    assert!(log.start_seals().is_empty());
    assert!(failed(log.truncate_to(1, NOW)));
    assert!(failed(log.delete_records_before(1).map(|_| ())));
    assert!(failed(log.offset_for_timestamp(NOW).map(|_| ())));
    assert_eq!(log.log_end_offset(), 5, "nothing written after the failure");
    drop(log);
    // Opened again (the broker's next start): it reads what is on the disk and works.
    let mut log = open(dir.path(), config);
    assert_eq!(log.failed(), None);
    log.append(&batch(1, NOW), NOW).unwrap();
}

/// `batch` with `epoch` as its partitionLeaderEpoch, as a producer may send it.
fn with_epoch(mut batch: Vec<u8>, epoch: i32) -> Vec<u8> {
    put_i32(&mut batch, PARTITION_LEADER_EPOCH_POS, epoch);
    batch
}

#[test]
fn a_leaders_log_stamps_its_epoch_on_every_batch_and_answers_for_each_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = open(dir.path(), cfg());
    // Before anything is written, the leader's epoch begins at the log end.
    log.set_leader_epoch(3);
    assert_eq!(log.end_offset_for_epoch(3), (3, 0));
    assert_eq!(log.latest_epoch(), 3);
    // The producer's own value is overwritten, markers are stamped too, and the CRC (which does
    // not cover the field) still holds.
    log.append(&with_epoch(batch(2, NOW), 9), NOW).unwrap();
    log.append(&idem(3, 7, 0, 0), NOW).unwrap();
    log.set_leader_epoch(5);
    log.append(&batch(1, NOW), NOW).unwrap();
    log.append_marker(7, 0, super::Marker::Abort, NOW).unwrap();
    let read = log.read(0, 1 << 20).unwrap();
    let stamped: Vec<(i64, i32)> = headers(&read)
        .iter()
        .map(|h| (h.base_offset, h.partition_leader_epoch))
        .collect();
    assert_eq!(stamped, vec![(0, 3), (2, 3), (5, 5), (6, 5)]);
    for (_, _, batch) in parse_batches(&read).map(|r| r.unwrap()) {
        check_batch(batch).unwrap();
    }
    let answers = |log: &PartitionLog| {
        (0..7)
            .map(|e| log.end_offset_for_epoch(e))
            .collect::<Vec<_>>()
    };
    let expected = vec![
        (0, 0), // older than any: where the first began
        (1, 0),
        (2, 0),
        (3, 5),   // ended where 5 began
        (3, 5),   // never led here: the one below it
        (5, 7),   // the latest: the log end
        (-1, -1), // newer than any
    ];
    assert_eq!(answers(&log), expected);
    assert_eq!(
        (
            log.epoch_at(0),
            log.epoch_at(4),
            log.epoch_at(5),
            log.epoch_at(6)
        ),
        (3, 3, 5, 5)
    );
    // The same from the batches after a restart, and as a follower's copy (unstamped).
    drop(log);
    let mut log = open(dir.path(), cfg());
    assert_eq!(answers(&log), expected);
    assert_eq!(log.max_epoch_seen(), 5);
    // A follower cut back below the start of epoch 5 no longer lists it.
    log.truncate_to(5, NOW).unwrap();
    assert_eq!(log.latest_epoch(), 3);
    assert_eq!(log.end_offset_for_epoch(3), (3, 5));
    assert_eq!(log.end_offset_for_epoch(5), (-1, -1));
    // And appends the leader's batches with the epochs they carry.
    log.append_replica(
        &{
            let mut b = with_epoch(batch(2, NOW), 6);
            set_base_offset(&mut b, 5);
            b
        },
        NOW,
    )
    .unwrap();
    assert_eq!(log.end_offset_for_epoch(3), (3, 5));
    assert_eq!(log.end_offset_for_epoch(6), (6, 7));
}

#[test]
fn batches_written_before_epochs_were_stamped_name_no_epoch_but_raise_the_next() {
    let dir = tempfile::tempdir().unwrap();
    // A log as an older build left it: producers' own values, unordered, and no
    // leader-epochs-from file.
    let mut log = open(dir.path(), cfg());
    log.append(&with_epoch(batch(2, NOW), 7), NOW).unwrap();
    log.append(&with_epoch(batch(2, NOW), 0), NOW).unwrap();
    log.append(&with_epoch(batch(2, NOW), -1), NOW).unwrap();
    drop(log);
    fs::remove_file(dir.path().join("leader-epochs-from")).unwrap();
    let mut log = open(dir.path(), cfg());
    // None of them begins an epoch (a consumer at offset 5 that read epoch 0 would otherwise
    // be told epoch 0 ended at 2, before it), yet the largest is known, for the leader to
    // take a later one.
    assert_eq!(log.latest_epoch(), -1);
    assert_eq!(log.epoch_at(5), -1);
    assert_eq!(log.max_epoch_seen(), 7);
    log.set_leader_epoch(8);
    assert_eq!(log.end_offset_for_epoch(0), (0, 6));
    assert_eq!(log.end_offset_for_epoch(7), (7, 6));
    log.append(&batch(1, NOW), NOW).unwrap();
    drop(log);
    // The file written at that first open keeps the old batches out after later starts too.
    let log = open(dir.path(), cfg());
    assert_eq!(log.end_offset_for_epoch(0), (0, 6));
    assert_eq!(log.end_offset_for_epoch(8), (8, 7));
    assert_eq!(log.epoch_at(5), -1);
    assert_eq!(log.epoch_at(6), 8);
}
