//! A bounded, lock-free LIFO stack: the idle HTTP/1.1 connections of one endpoint on one
//! worker.
//!
//! Why last-in, first-out: a request takes the connection returned most recently. Its socket,
//! the kernel's connection state and the upstream's per-connection memory are still in cache,
//! and when traffic falls after a burst, the connections at the bottom stop being used, so
//! `idleTimeout` closes them. A FIFO queue instead rotates every request through every
//! connection the burst opened: each request touches the coldest one, and under light traffic
//! every connection is used often enough never to reach its idle timeout, so the pool never
//! shrinks. At 5,000 requests per second the proxy's CPU per request fell by 5–10% against
//! the FIFO queue (docs/benchmarks.md, "Idle connections: most recent first").
//!
//! How: a Treiber stack over an array of slots. Two stacks share the array: the entries
//! and the free slots. Each stack's head packs a slot index with a tag that every change
//! bumps, so a thread whose head was popped and pushed back meanwhile (ABA) fails its
//! compare-exchange and retries, instead of installing a stale `next`. A slot's value is
//! touched only by the thread that holds the slot, having popped it from one of the stacks
//! (or, the first time, having claimed it from the slots never used).
//!
//! Memory grows with use: the slots are allocated in chunks of 8, 16, 32, ... slots, a chunk
//! when the first slot in it is claimed, and kept until the stack is dropped (so a slot's
//! address never changes while another thread may read it). A stack that never held an
//! entry allocates nothing; one that held at most n entries at once has about 2n slots at
//! most (a slot is claimed only when none is free). Until 2026-12 every stack allocated its whole capacity up front: 512 slots of 56
//! bytes on each of two workers, 57 KB for every endpoint in the config, used or not
//! (docs/benchmarks.md, "Memory and load time against the number of endpoints").

use std::cell::UnsafeCell;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// No slot: the end of a stack.
const NIL: u32 = u32::MAX;

/// Slots in the first chunk; chunk `k` has `FIRST_CHUNK << k`.
const FIRST_CHUNK: u32 = 8;
/// Chunks at most: room for `FIRST_CHUNK * (2^CHUNKS - 1)` slots.
const CHUNKS: usize = 12;
/// The largest capacity a stack can have.
const MAX_CAPACITY: u32 = FIRST_CHUNK * ((1 << CHUNKS) - 1);

pub struct IdleStack<T> {
    /// Chunk `k` holds slots `FIRST_CHUNK * (2^k - 1)` up to the next chunk's first; null
    /// until one of them is first claimed.
    chunks: [AtomicPtr<Slot<T>>; CHUNKS],
    /// Slots claimed so far (they are `0..claimed`), at most `capacity`.
    claimed: AtomicU32,
    capacity: u32,
    entries: Head,
    free: Head,
    /// Entries, counted before an entry is published and after one is taken, so it never
    /// reads low (it can read high for a moment).
    len: AtomicUsize,
    /// Owns `T`s (in the slots): `Send` only if `T` is, and never `Sync` but by the impl below.
    _owns: PhantomData<Slot<T>>,
}

/// The chunk holding slot `index`, and the slot's place in it.
#[inline]
fn chunk_of(index: u32) -> (usize, usize) {
    let q = index / FIRST_CHUNK + 1;
    let k = 31 - q.leading_zeros();
    (k as usize, (index - FIRST_CHUNK * ((1 << k) - 1)) as usize)
}

/// How many slots chunk `k` has.
fn chunk_len(k: usize) -> usize {
    (FIRST_CHUNK as usize) << k
}

struct Slot<T> {
    /// The slot below this one in whichever stack holds it.
    next: AtomicU32,
    value: UnsafeCell<Option<T>>,
}

// SAFETY: a slot's value is only accessed by the one thread that popped the slot from a stack
// (see `push` and `pop`), and moving it between threads needs `T: Send`.
unsafe impl<T: Send> Sync for IdleStack<T> {}

/// A stack head: the top slot's index in the low 32 bits, a change counter in the high 32.
struct Head(AtomicU64);

impl Head {
    fn new(top: u32) -> Self {
        Head(AtomicU64::new(u64::from(top)))
    }

    fn pop<T>(&self, slots: &IdleStack<T>) -> Option<u32> {
        let mut head = self.0.load(Ordering::Acquire);
        loop {
            let top = head as u32;
            if top == NIL {
                return None;
            }
            // Possibly stale if another thread took `top` meanwhile; then the tag differs and
            // the exchange fails.
            let next = slots.slot(top).next.load(Ordering::Relaxed);
            #[cfg(test)]
            tests::widen_race_window();
            match self.0.compare_exchange_weak(head, bump(head, next), Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(top),
                Err(now) => head = now,
            }
        }
    }

    fn push<T>(&self, slots: &IdleStack<T>, slot: u32) {
        let mut head = self.0.load(Ordering::Relaxed);
        loop {
            slots.slot(slot).next.store(head as u32, Ordering::Relaxed);
            // Release: whoever pops the slot sees its value and `next`.
            match self.0.compare_exchange_weak(head, bump(head, slot), Ordering::Release, Ordering::Relaxed) {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }
}

/// `head` with `top` as its new top slot and its tag advanced.
fn bump(head: u64, top: u32) -> u64 {
    let tag = (head >> 32).wrapping_add(1) & 0xffff_ffff;
    (tag << 32) | u64::from(top)
}

impl<T> IdleStack<T> {
    /// A stack of at most `capacity` entries (at most 32,760). Allocates nothing until the
    /// first push.
    pub fn new(capacity: usize) -> Self {
        IdleStack {
            chunks: std::array::from_fn(|_| AtomicPtr::new(ptr::null_mut())),
            claimed: AtomicU32::new(0),
            capacity: capacity.min(MAX_CAPACITY as usize) as u32,
            entries: Head::new(NIL),
            free: Head::new(NIL),
            len: AtomicUsize::new(0),
            _owns: PhantomData,
        }
    }

    /// Slot `index`, which was claimed (so its chunk is allocated, and visible to this thread:
    /// the index reached it through a stack head, whose Release/Acquire pair orders the
    /// chunk's publication before it, or this thread claimed it).
    #[inline]
    fn slot(&self, index: u32) -> &Slot<T> {
        let (k, i) = chunk_of(index);
        let chunk = self.chunks[k].load(Ordering::Acquire);
        debug_assert!(!chunk.is_null(), "slot {index} read before its chunk was allocated");
        // SAFETY: a claimed slot's chunk was allocated with `chunk_len(k)` slots (`i` is below
        // that by `chunk_of`) and stays allocated until the stack is dropped, which needs
        // `&mut self`, so the reference cannot outlive it.
        unsafe { &*chunk.add(i) }
    }

    /// A slot never used before, its chunk allocated if it is the first of it; `None` when
    /// all `capacity` slots have been claimed.
    fn claim(&self) -> Option<u32> {
        let index = self
            .claimed
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| (n < self.capacity).then_some(n + 1))
            .ok()?;
        let (k, _) = chunk_of(index);
        if self.chunks[k].load(Ordering::Acquire).is_null() {
            let fresh: Box<[Slot<T>]> = (0..chunk_len(k))
                .map(|_| Slot { next: AtomicU32::new(NIL), value: UnsafeCell::new(None) })
                .collect();
            let fresh = Box::into_raw(fresh).cast::<Slot<T>>();
            // Another thread claiming a slot of the same chunk may have installed it first.
            if self.chunks[k]
                .compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // SAFETY: `fresh` came from `Box::into_raw` of a slice of `chunk_len(k)`
                // slots just above and was never shared.
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(fresh, chunk_len(k))) });
            }
        }
        Some(index)
    }

    /// Puts `value` on top, or hands it back if the stack is full.
    pub fn push(&self, value: T) -> Result<(), T> {
        let Some(slot) = self.free.pop(self).or_else(|| self.claim()) else {
            return Err(value);
        };
        // SAFETY: this thread popped `slot` from the free stack or claimed it, so no other
        // thread accesses its value until it is pushed on `entries` below.
        unsafe { *self.slot(slot).value.get() = Some(value) };
        self.len.fetch_add(1, Ordering::Relaxed);
        self.entries.push(self, slot);
        Ok(())
    }

    /// Takes the entry pushed last.
    pub fn pop(&self) -> Option<T> {
        let slot = self.entries.pop(self)?;
        // SAFETY: this thread popped `slot` from `entries`, so no other thread accesses its
        // value until it is pushed on the free stack below.
        let value = unsafe { (*self.slot(slot).value.get()).take() };
        self.free.push(self, slot);
        self.len.fetch_sub(1, Ordering::Relaxed);
        value
    }

    /// Slots allocated so far.
    #[cfg(test)]
    pub fn allocated_slots(&self) -> usize {
        (0..CHUNKS).filter(|&k| !self.chunks[k].load(Ordering::Relaxed).is_null()).map(chunk_len).sum()
    }

    /// Entries now (approximate while other threads push or pop).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Takes every entry, top first, including ones other threads push meanwhile (up to
    /// twice the capacity in all, so that it ends however fast they push).
    pub fn take_all(&self) -> Vec<T> {
        let mut all = Vec::with_capacity(self.len());
        while all.len() < 2 * self.capacity as usize {
            let Some(v) = self.pop() else { break };
            all.push(v);
        }
        all
    }
}

impl<T> std::fmt::Debug for IdleStack<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleStack").field("len", &self.len()).field("capacity", &self.capacity).finish()
    }
}

impl<T> Drop for IdleStack<T> {
    fn drop(&mut self) {
        for (k, chunk) in self.chunks.iter_mut().enumerate() {
            let chunk = *chunk.get_mut();
            if !chunk.is_null() {
                // SAFETY: installed by `claim` from `Box::into_raw` of `chunk_len(k)` slots, and
                // no other thread can reach it any more (`&mut self`). Dropping the slots drops
                // the entries still in them.
                drop(unsafe { Box::from_raw(ptr::slice_from_raw_parts_mut(chunk, chunk_len(k))) });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::sync::Arc;

    thread_local! {
        static POPS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
    }

    /// Every few pops, gives other threads a chance to run between reading the head and
    /// exchanging it: the window where an unguarded Treiber stack goes wrong (ABA).
    pub(super) fn widen_race_window() {
        let n = POPS.get().wrapping_add(1);
        POPS.set(n);
        if n.is_multiple_of(8) {
            std::thread::yield_now();
        }
    }

    #[test]
    fn last_in_first_out_within_capacity() {
        let s = IdleStack::new(3);
        for i in 1..=3 {
            assert_eq!(s.push(i), Ok(()));
        }
        assert_eq!(s.push(4), Err(4), "a full stack hands the entry back");
        assert_eq!(s.len(), 3);
        assert_eq!((s.pop(), s.pop()), (Some(3), Some(2)));
        assert_eq!(s.push(5), Ok(()));
        assert_eq!((s.pop(), s.pop(), s.pop()), (Some(5), Some(1), None));
        assert_eq!(s.len(), 0);
        let empty = IdleStack::<u8>::new(0);
        assert_eq!((empty.push(1), empty.pop()), (Err(1), None));
    }

    #[test]
    fn slots_are_allocated_as_entries_need_them() {
        let s = IdleStack::new(1024);
        assert_eq!(s.allocated_slots(), 0, "an unused stack allocates nothing");
        assert_eq!(s.pop(), None);
        assert_eq!(s.allocated_slots(), 0);
        s.push(0).unwrap();
        assert_eq!(s.allocated_slots(), 8);
        // Taking and returning one connection at a time reuses the same slot.
        for i in 1..1000 {
            assert_eq!(s.pop(), Some(i - 1));
            s.push(i).unwrap();
        }
        assert_eq!(s.allocated_slots(), 8);
        for i in 0..9 {
            s.push(i).unwrap();
        }
        assert_eq!((s.len(), s.allocated_slots()), (10, 8 + 16));
        let mut want: Vec<i32> = (0..9).rev().collect();
        want.push(999);
        assert_eq!(s.take_all(), want);
        // The whole capacity: chunks of 8, 16, ..., 1,024 slots (2,040 for 1,024 entries).
        for i in 0..1024 {
            s.push(i).unwrap();
        }
        assert_eq!(s.push(1024), Err(1024));
        assert_eq!(s.allocated_slots(), 8 * ((1 << 8) - 1));
        assert_eq!(s.take_all().len(), 1024);
    }

    #[test]
    fn every_slot_index_has_its_own_place_in_a_chunk() {
        let mut seen = vec![vec![false; 0]; CHUNKS];
        for (k, v) in seen.iter_mut().enumerate() {
            *v = vec![false; chunk_len(k)];
        }
        for index in 0..MAX_CAPACITY {
            let (k, i) = chunk_of(index);
            assert!(k < CHUNKS && i < chunk_len(k), "{index} -> ({k}, {i})");
            assert!(!seen[k][i], "{index} shares ({k}, {i})");
            seen[k][i] = true;
        }
        assert!(seen.iter().flatten().all(|&used| used), "every slot of every chunk is reachable");
        assert_eq!(IdleStack::<u8>::new(usize::MAX).capacity, MAX_CAPACITY);
    }

    #[test]
    fn take_all_top_first() {
        let s = IdleStack::new(8);
        for i in 0..6 {
            s.push(i).unwrap();
        }
        assert_eq!(s.take_all(), vec![5, 4, 3, 2, 1, 0]);
        assert_eq!((s.len(), s.pop()), (0, None));
    }

    #[test]
    fn entries_dropped_with_the_stack() {
        let probe = Arc::new(());
        let s = IdleStack::new(4);
        s.push(probe.clone()).unwrap();
        s.push(probe.clone()).unwrap();
        drop(s.pop());
        drop(s);
        assert_eq!(Arc::strong_count(&probe), 1);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Push(u16),
        Pop,
        TakeAll,
    }

    proptest! {
        /// Any sequence of operations behaves as a `Vec` used as a bounded stack.
        #[test]
        fn matches_a_vec(cap in 0usize..40, ops in prop::collection::vec(prop_oneof![
            any::<u16>().prop_map(Op::Push), Just(Op::Pop), Just(Op::TakeAll)], 0..64)) {
            let s = IdleStack::new(cap);
            let mut model: Vec<u16> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(v) => {
                        let expect = if model.len() < cap { model.push(v); Ok(()) } else { Err(v) };
                        prop_assert_eq!(s.push(v), expect);
                    }
                    Op::Pop => prop_assert_eq!(s.pop(), model.pop()),
                    Op::TakeAll => {
                        let top_first: Vec<u16> = model.drain(..).rev().collect();
                        prop_assert_eq!(s.take_all(), top_first);
                    }
                }
                prop_assert_eq!(s.len(), model.len());
            }
        }
    }

    /// Threads pushing, popping and taking all at once never lose, duplicate or corrupt an
    /// entry: within the first chunk, and across chunks that the threads allocate while
    /// racing to claim their first slots.
    #[test]
    fn concurrent_pushes_and_pops_conserve_entries() {
        conserves_entries(8);
        conserves_entries(20);
    }

    fn conserves_entries(capacity: usize) {
        const THREADS: usize = 4;
        const ROUNDS: usize = 200_000;
        let s = Arc::new(IdleStack::new(capacity));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let s = s.clone();
                std::thread::spawn(move || {
                    // Each thread owns the values t, t + THREADS, ...; it holds some and the
                    // stack holds the rest.
                    let mut held: Vec<usize> = (0..4).map(|k| t + k * THREADS).collect();
                    for round in 0..ROUNDS {
                        if round % 3 == 0 || held.is_empty() {
                            if let Some(v) = s.pop() {
                                held.push(v);
                            }
                        } else if let Err(v) = s.push(held.pop().unwrap()) {
                            held.push(v);
                        }
                    }
                    held
                })
            })
            .collect();
        // A sweeper takes everything and puts back what fits, as the pool's eviction does.
        let sweeper = {
            let s = s.clone();
            std::thread::spawn(move || {
                let mut kept = Vec::new();
                for _ in 0..ROUNDS / 20 {
                    let taken = s.take_all();
                    kept.extend(taken.into_iter().rev().filter_map(|v| s.push(v).err()));
                }
                kept
            })
        };
        let mut all: Vec<usize> =
            handles.into_iter().chain([sweeper]).flat_map(|h| h.join().unwrap()).collect();
        while let Some(v) = s.pop() {
            all.push(v);
        }
        all.sort_unstable();
        assert_eq!(all, (0..THREADS * 4).collect::<Vec<_>>());
        assert_eq!(s.len(), 0);
    }
}
