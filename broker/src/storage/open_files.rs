//! Room in the process's open-files limit for new segment files (every segment of every
//! partition holds one open, as Kafka's do): new partitions and segment rolls are refused when
//! they would leave less than a tenth of the limit free, kept for connections, the admin
//! listener and a restart's opening of every partition. Without it a topic with a tiny
//! `segment.bytes` takes every file the process may open, and the broker can then accept no
//! connection (not even `/health`) and roll no other partition.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The share of the limit kept free: a tenth, and at least [`KEPT_MIN`].
const KEPT_SHARE: u64 = 10;
const KEPT_MIN: u64 = 256;
/// How long a count of the open files is used before counting again (files opened since are
/// added to it; closed ones are seen at the next count).
const RECOUNT: Duration = Duration::from_secs(1);

/// The last count, and when it was taken. Process-wide, as the limit is.
static COUNTED: Mutex<Option<(Instant, u64)>> = Mutex::new(None);

/// No room for `wanted` more files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoRoom {
    pub wanted: u64,
    pub open: u64,
    pub limit: u64,
    pub kept: u64,
}

/// Whether `wanted` more files leave the kept share of the limit free (always, where the count
/// or the limit cannot be known).
pub fn room_for(wanted: u64) -> Result<(), NoRoom> {
    let Some((open, limit)) = open_files() else {
        return Ok(());
    };
    let kept = (limit / KEPT_SHARE).max(KEPT_MIN);
    if open.saturating_add(wanted).saturating_add(kept) > limit {
        return Err(NoRoom {
            wanted,
            open,
            limit,
            kept,
        });
    }
    Ok(())
}

/// Adds `n` files opened since the last count to it.
pub fn opened(n: u64) {
    let mut counted = COUNTED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, open)) = counted.as_mut() {
        *open += n;
    }
}

/// The files this process has open and its limit, if both can be known (Linux's
/// `/proc/self/fd`); counted at most every [`RECOUNT`].
fn open_files() -> Option<(u64, u64)> {
    let limit = crate::admin::process::max_fds()?;
    let mut counted = COUNTED.lock().unwrap_or_else(|p| p.into_inner());
    match *counted {
        Some((at, open)) if at.elapsed() < RECOUNT => Some((open, limit)),
        _ => {
            let open = crate::admin::process::open_fds()?;
            *counted = Some((Instant::now(), open));
            Some((open, limit))
        }
    }
}
