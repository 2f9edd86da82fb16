//! The process allocator, with one guard: requests of 1 GiB or more are served by an anonymous
//! `mmap` with `MAP_NORESERVE` instead of malloc.
//!
//! Why: the kafka-protocol crate (0.18) sizes `Vec::with_capacity` / `reserve` from array and
//! record counts read off the wire before it decodes a single element (upstream PRs #152, #161
//! and #200 are open). A 15-byte Metadata request claiming 2^31 topics asks for ~150 GB; malloc
//! refuses, and Rust turns a refused allocation into `abort()`, which would take the whole broker
//! down. With `MAP_NORESERVE` the kernel hands out the address range without committing memory
//! (overcommit modes 0 and 1), the decoder fails on the next element because the frame is too
//! short, and the untouched mapping is unmapped again: the bad request closes only its own
//! connection. Nothing the broker does legitimately allocates 1 GiB at once (requests are capped
//! by `max_request_bytes`); if something did, it would still work, with its pages committed as
//! they are touched.
//!
//! Every other allocation goes to the system allocator unchanged.
//!
//! [`return_free_memory`] asks glibc's malloc to hand the free pages inside its heaps back to
//! the kernel; the broker calls it every half minute (see `broker.rs`).
#![allow(unsafe_code)] // A global allocator cannot be written without it; see above.

use std::alloc::{GlobalAlloc, Layout, System};

/// Allocations at least this large are mapped, not malloc'ed.
const HUGE: usize = 1 << 30;
const PAGE: usize = 4096;

pub struct GuardedAlloc;

#[global_allocator]
static GLOBAL: GuardedAlloc = GuardedAlloc;

fn is_huge(layout: &Layout) -> bool {
    layout.size() >= HUGE
}

unsafe fn map(size: usize) -> *mut u8 {
    // SAFETY: an anonymous private mapping has no preconditions; failure is MAP_FAILED.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        std::ptr::null_mut()
    } else {
        p.cast()
    }
}

// SAFETY: huge blocks come from `map` (page aligned, zeroed) and go back through `munmap` with
// the same size; everything else is delegated to `System` with the caller's layout. The layout
// of a block decides which path it takes, and callers must pass the same layout to `dealloc`
// and `realloc` that they allocated with, so a block always returns to where it came from.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) && layout.align() <= PAGE {
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if is_huge(&layout) && layout.align() <= PAGE {
            // Fresh anonymous pages are zero.
            unsafe { map(layout.size()) }
        } else {
            unsafe { System.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if is_huge(&layout) && layout.align() <= PAGE {
            unsafe {
                libc::munmap(ptr.cast(), layout.size());
            }
        } else {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new_layout = match Layout::from_size_align(new_size, layout.align()) {
            Ok(l) => l,
            Err(_) => return std::ptr::null_mut(),
        };
        if !is_huge(&layout) && !is_huge(&new_layout) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Crossing the threshold (or resizing a mapped block): move to a new block.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

/// Hands the free pages of the process's malloc heaps back to the kernel when at least
/// `worth` bytes are free in them; true if any were.
///
/// glibc gives memory back by itself only from the top of its main heap: after a burst (a
/// thousand connections and group members come and gone, a large compaction pass) the freed
/// chunks stay mapped in the per-thread arenas, and the broker's resident memory stays at its
/// peak although nothing uses it. `malloc_trim` releases every whole free page of every arena
/// (`madvise(MADV_DONTNEED)`), holding each arena's lock meanwhile; later allocations fault them
/// in again. So it runs only when there is enough to gain (`mallinfo2`'s free bytes).
pub fn return_free_memory(worth: usize) -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 and malloc_trim have no preconditions; each takes the arenas'
        // locks itself.
        unsafe { libc::mallinfo2().fordblks >= worth && libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        let _ = worth;
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_huge_reservation_that_is_never_touched_does_not_abort() {
        // 256 GiB: far more than this machine's memory and swap.
        let v: Vec<u64> = Vec::with_capacity(32 << 30);
        assert!(v.capacity() >= 32 << 30);
        drop(v);
    }

    #[test]
    fn blocks_cross_the_threshold_both_ways_with_their_contents() {
        let mut v: Vec<u8> = vec![7; 1 << 20];
        v.reserve((1 << 30) + 1);
        assert!(v.iter().all(|&b| b == 7) && v.len() == 1 << 20);
        v.push(9);
        v.shrink_to_fit();
        assert_eq!(v.len(), (1 << 20) + 1);
        assert_eq!(v[1 << 20], 9);
    }

    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn freed_memory_goes_back_to_the_kernel() {
        // Many small blocks from another thread (its own arena), all but the last freed: the
        // arena cannot shrink from its top, so glibc keeps the pages until they are trimmed.
        let resident = || -> u64 {
            let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
            let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
            pages * rustix::param::page_size() as u64
        };
        let (before, after) = std::thread::spawn(move || {
            let mut blocks: Vec<Vec<u8>> = (0..64 * 1024).map(|i| vec![i as u8; 1000]).collect();
            let last = blocks.pop();
            drop(blocks);
            let before = resident();
            assert!(super::return_free_memory(1 << 20), "nothing was returned");
            let after = resident();
            drop(last);
            (before, after)
        })
        .join()
        .unwrap();
        assert!(
            after + (32 << 20) < before,
            "resident {before} bytes before the trim, {after} after"
        );
    }
}
