//! The global allocator: mimalloc, called the way its own C `malloc` override calls it.
//!
//! Why not the `mimalloc` crate's `MiMalloc`: it passes every allocation to
//! `mi_malloc_aligned`, whose fast path only serves blocks of up to 1 KiB. Everything larger
//! (hyper's 8 KiB read buffer, which it reallocates after each request head it parses, h2's
//! frame buffers, connection outboxes) took mimalloc's generic aligned path: about 200
//! instructions a call and 850 per proxied HTTP/1.1 request under callgrind
//! (`bench/callgrind.sh`). The alignment Rust asks for is almost always one mimalloc's plain
//! `mi_malloc` already guarantees (16 bytes on 64-bit targets), so that is what we call; only
//! the rare over-aligned layout (tokio's 128-byte aligned task cells) goes the aligned way.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// The alignment every `mi_malloc` block of at least that size has (`MI_MAX_ALIGN_SIZE`).
const MI_MAX_ALIGN: usize = 16;

pub struct MiMalloc;

/// Whether plain `mi_malloc` satisfies the layout: smaller blocks are aligned to their size
/// class, which is at least the requested alignment when that alignment is no larger than
/// the size (the same rule std's `System` allocator uses for `malloc`).
fn plain(align: usize, size: usize) -> bool {
    align <= MI_MAX_ALIGN && align <= size
}

// SAFETY: every method forwards to mimalloc, which returns null on failure and blocks aligned
// as `plain` says, or as explicitly requested from the `_aligned` variants; `mi_free` and
// `mi_realloc` take any block mimalloc handed out.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain FFI calls; see the impl's comment.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_malloc(layout.size()).cast()
            } else {
                mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(layout.align(), layout.size()) {
                mi::mi_zalloc(layout.size()).cast()
            } else {
                mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the `GlobalAlloc` contract).
        unsafe { mi::mi_free(ptr.cast::<c_void>()) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout` (the `GlobalAlloc` contract).
        unsafe {
            if plain(layout.align(), new_size) {
                mi::mi_realloc(ptr.cast(), new_size).cast()
            } else {
                mi::mi_realloc_aligned(ptr.cast(), new_size, layout.align()).cast()
            }
        }
    }
}

/// Runs [`no_transparent_huge_pages`] and [`purge_arenas_only_when_asked`] as the process
/// loads, before Rust's runtime makes the first allocation: in `main` the first would come
/// after mimalloc had faulted in its first arena pages (9.8 MiB idle instead of 6.2).
#[cfg(target_os = "linux")]
#[used]
#[link_section = ".init_array"]
static AT_LOAD: extern "C" fn() = {
    extern "C" fn at_load() {
        no_transparent_huge_pages();
        purge_arenas_only_when_asked();
    }
    at_load
};

/// `mi_option_arena_purge_mult` in mimalloc 3's `mi_option_t` (the version `libmimalloc-sys`
/// builds; checked by a test).
const MI_OPTION_ARENA_PURGE_MULT: std::ffi::c_int = 24;

/// The arena purge delay this sets: mimalloc's `purge_delay` (1 s) times this.
const ARENA_PURGE_MULT: std::ffi::c_long = 60;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// Delays mimalloc's own returning of freed arena memory to the system from 1 s to 60 s,
/// so that [`release_free_memory`], called on the low-priority thread after the work that
/// freed it, is what returns it.
///
/// Why: a reload frees hundreds of megabytes (at 100,000 endpoints: the load's YAML trees and
/// the config it replaced). mimalloc gives freed arena memory back (`madvise`) a second after
/// it was freed, on whichever thread next frees or abandons a page once that time has passed,
/// and that was often a worker: perf showed a worker in `_mi_arenas_collect` →
/// `madvise` for 15 ms, during which every request it held waited (up to 29 ms at the end of
/// a reload, against a p99 of about 1 ms; `bench/reload-latency.sh`). With the delay at 60 s
/// the low-priority thread's forced purge comes first; memory freed by workers (after a
/// burst of connections) goes back within the minute either way.
fn purge_arenas_only_when_asked() {
    // SAFETY: sets an integer option of mimalloc's; no pointers. Valid before and after
    // mimalloc initialises (options are read when used).
    unsafe { mi_option_set(MI_OPTION_ARENA_PURGE_MULT, ARENA_PURGE_MULT) }
}

/// Gives back to the system the memory this thread's heap has free and all the free arena
/// memory of the process.
///
/// Why: loading a config builds and drops far more than the running config keeps (YAML trees,
/// the decoded resources, the plan: about 400 MB for 100,000 endpoints), and mimalloc keeps
/// freed pages for reuse, so the resident size stayed at that peak. Called on the main thread
/// after the first config is applied, where it was loaded, and on the low-priority thread
/// (`low_priority`) after the reload cache is filled and after a reload's old config is
/// dropped: the purge can take tens of milliseconds, which must not be a worker's
/// ([`purge_arenas_only_when_asked`]).
pub fn release_free_memory() {
    extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: `mi_collect` walks this thread's heap and the arenas and returns free pages; it
    // takes no pointer of ours.
    unsafe { mi_collect(true) }
}

/// Turns transparent huge pages off for this process (Linux), as it loads.
///
/// Why: mimalloc asks the kernel for huge pages on its arenas (`madvise(MADV_HUGEPAGE)`), so the
/// first touch of each thread's memory brings in a whole 2 MiB page. Idle, that was 12 MiB of
/// RSS with one worker, 16 MiB with two and 18 MiB with four, against 6.2, 6.7 and 6.8 MiB
/// without, and no difference in CPU per request measured (docs/benchmarks.md). A sidecar runs
/// beside every pod, so its idle memory counts once per pod. The flag is checked when a page is
/// faulted in, so it holds for arenas mimalloc already asked huge pages for.
pub fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    {
        const PR_SET_THP_DISABLE: std::ffi::c_int = 41;
        extern "C" {
            fn prctl(option: std::ffi::c_int, ...) -> std::ffi::c_int;
        }
        // SAFETY: PR_SET_THP_DISABLE takes one integer (the rest are unused, passed as 0); it
        // sets a flag on this process and touches no memory of ours. A failure (an old kernel)
        // only leaves huge pages on.
        unsafe {
            prctl(
                PR_SET_THP_DISABLE,
                1 as std::ffi::c_ulong,
                0 as std::ffi::c_ulong,
                0 as std::ffi::c_ulong,
                0 as std::ffi::c_ulong,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The option numbers are mimalloc 3's: its neighbours hold their documented defaults
    /// (`purge_delay` 1,000 ms at 15, `arena_reserve` 1 GiB in KiB at 23, the deprecated
    /// `purge_extend_delay` 1 at 25), and the one we set holds our value, so the constructor
    /// set the right one.
    #[cfg(target_os = "linux")]
    #[test]
    fn arena_purges_wait_for_the_low_priority_thread() {
        extern "C" {
            fn mi_option_get(option: std::ffi::c_int) -> std::ffi::c_long;
        }
        // SAFETY: reads integer options; no pointers.
        let get = |option| unsafe { mi_option_get(option) };
        assert_eq!((get(15), get(23), get(25)), (1_000, 1 << 20, 1));
        assert_eq!(get(MI_OPTION_ARENA_PURGE_MULT), ARENA_PURGE_MULT);
        assert_eq!(get(15) * ARENA_PURGE_MULT, 60_000, "60 s");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn huge_pages_are_off_for_the_process() {
        no_transparent_huge_pages();
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        // Shown by kernels since 6.x; older ones have no such line to check.
        if let Some(line) = status.lines().find(|l| l.starts_with("THP_enabled:")) {
            assert_eq!(line.split_whitespace().nth(1), Some("0"), "{line}");
        }
    }

    /// Every block is aligned as asked, whichever path served it, through growth and shrinking.
    #[test]
    fn blocks_are_aligned_as_asked_on_both_paths() {
        for align in [1, 2, 4, 8, 16, 32, 64, 128, 4096] {
            for size in [1, 3, 8, 15, 16, 17, 100, 1024, 1025, 8192, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: non-zero sizes; each block is freed once with its own layout.
                unsafe {
                    let p = MiMalloc.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "alloc size {size} align {align}");
                    p.write_bytes(0xA5, size);
                    let grown = MiMalloc.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "realloc size {size} align {align}");
                    assert!((0..size).all(|i| *grown.add(i) == 0xA5), "realloc kept the bytes");
                    MiMalloc.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                    let z = MiMalloc.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0), "zeroed");
                    MiMalloc.dealloc(z, layout);
                }
            }
        }
    }
}
