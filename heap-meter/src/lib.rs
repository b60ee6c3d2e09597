//! Counts heap bytes per thread, so a component can hold what it keeps to a
//! budget by measuring it rather than guessing: the agent binary installs
//! [`CountingAllocator`] as its global allocator; a component wraps the work
//! whose memory it owns in [`measure`].
//!
//! [`return_freed_memory`] sets glibc's malloc up so memory freed after a
//! burst (a window's batch, a binary's unwind table) goes back to the
//! system instead of staying resident in per-thread arenas.
//!
//! Each thread keeps its own net count (bytes allocated minus bytes freed
//! on that thread), so measuring costs one thread-local add per allocation
//! and no shared cache line; a measurement is exact for work done on the
//! calling thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    // Const-initialised and without a destructor: usable from the allocator
    // at any point of a thread's life, and never allocates itself.
    static NET_BYTES: Cell<i64> = const { Cell::new(0) };
    // The highest NET_BYTES reached since `measure` last reset it.
    static PEAK_BYTES: Cell<i64> = const { Cell::new(0) };
}

static INSTALLED: AtomicBool = AtomicBool::new(false);

/// The system allocator, counting each thread's net heap bytes.
pub struct CountingAllocator;

fn add(delta: i64) {
    // A load first: every thread storing the flag would share a cache line.
    if !INSTALLED.load(Ordering::Relaxed) {
        INSTALLED.store(true, Ordering::Relaxed);
    }
    let _ = NET_BYTES.try_with(|n| {
        let now = n.get().wrapping_add(delta);
        n.set(now);
        if delta > 0 {
            let _ = PEAK_BYTES.try_with(|p| p.set(p.get().max(now)));
        }
    });
}

// SAFETY: every call goes to `System` unchanged; the count is a side effect.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            add(layout.size() as i64);
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            add(layout.size() as i64);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        add(-(layout.size() as i64));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            add(new_size as i64 - layout.size() as i64);
        }
        new
    }
}

/// Whether [`CountingAllocator`] is this process's allocator (it has
/// counted at least one allocation).
pub fn installed() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

/// Net heap bytes the calling thread allocated so far (allocations minus
/// frees; negative when it freed what another thread allocated).
pub fn thread_net_bytes() -> i64 {
    NET_BYTES.with(Cell::get)
}

/// Runs `f` and returns its result with the net heap bytes it allocated on
/// this thread (what it freed subtracted): what `f` kept.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, i64) {
    let (out, usage) = measure_peak(f);
    (out, usage.kept)
}

/// Heap use of a piece of work on one thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Net bytes allocated: what the work kept.
    pub kept: i64,
    /// The most bytes it held at any moment, above where it started.
    pub peak: i64,
}

/// Runs `f` and returns its result with its [`Usage`] on this thread.
pub fn measure_peak<T>(f: impl FnOnce() -> T) -> (T, Usage) {
    let before = thread_net_bytes();
    let outer_peak = PEAK_BYTES.with(|p| p.replace(before));
    let out = f();
    let peak = PEAK_BYTES.with(|p| {
        let inner = p.get();
        p.set(outer_peak.max(inner));
        inner
    });
    let usage = Usage {
        kept: thread_net_bytes().wrapping_sub(before),
        peak: peak.wrapping_sub(before),
    };
    (out, usage)
}

/// Has glibc's malloc give freed memory back to the system: at most two
/// arenas (one per thread by default, each keeping its own free memory),
/// blocks of 128 KiB and more mapped on their own (unmapped when freed), and
/// free memory above 128 KiB at the top of a heap returned. Without this a
/// quiet agent kept 28 MiB resident of which 12 were live. A setting whose
/// `MALLOC_*_` environment variable is set is left to it. Call it first
/// thing in `main`, before threads start; a no-op on other C libraries.
pub fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, param, value) in [
        ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 2),
        ("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 128 << 10),
        ("MALLOC_TRIM_THRESHOLD_", libc::M_TRIM_THRESHOLD, 128 << 10),
    ] {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt only changes malloc's tunables; it returns 0
            // for a value it refuses, which leaves the default in place.
            unsafe { libc::mallopt(param, value) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[global_allocator]
    static ALLOC: CountingAllocator = CountingAllocator;

    #[test]
    fn what_a_closure_keeps_is_counted_and_what_it_frees_is_not() {
        let (kept, bytes) = measure(|| {
            let _temporary = vec![0u8; 1 << 20];
            vec![0u8; 4096]
        });
        assert!(installed());
        assert_eq!(bytes, 4096);
        let ((), freed) = measure(|| drop(kept));
        assert_eq!(freed, -4096);
    }

    #[test]
    fn the_peak_is_the_most_held_at_once_and_nests() {
        let ((), outer) = measure_peak(|| {
            let ((), inner) = measure_peak(|| drop(std::hint::black_box(vec![0u8; 1 << 20])));
            assert_eq!(
                inner,
                Usage {
                    kept: 0,
                    peak: 1 << 20
                }
            );
            drop(std::hint::black_box(vec![0u8; 1000]));
        });
        assert_eq!(
            outer,
            Usage {
                kept: 0,
                peak: 1 << 20
            }
        );
    }

    #[test]
    fn growth_in_place_counts_the_difference() {
        let mut v: Vec<u8> = Vec::with_capacity(100);
        let ((), bytes) = measure(|| v.reserve_exact(1000));
        assert_eq!(bytes, v.capacity() as i64 - 100);
    }

    #[test]
    fn other_threads_do_not_count() {
        let ((), bytes) = measure(|| {
            std::thread::spawn(|| std::hint::black_box(vec![0u8; 1 << 16]))
                .join()
                .unwrap();
        });
        // The thread's own bookkeeping may allocate here; its 64 KiB does not.
        assert!(bytes < 1 << 16, "{bytes}");
    }
}
