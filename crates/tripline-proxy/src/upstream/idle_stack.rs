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
//! How: a Treiber stack over a fixed array of slots. Two stacks share the array: the entries
//! and the free slots. Each stack's head packs a slot index with a tag that every change
//! bumps, so a thread whose head was popped and pushed back meanwhile (ABA) fails its
//! compare-exchange and retries, instead of installing a stale `next`. A slot's value is
//! touched only by the thread that holds the slot, having popped it from one of the stacks.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// No slot: the end of a stack.
const NIL: u32 = u32::MAX;

pub struct IdleStack<T> {
    slots: Box<[Slot<T>]>,
    entries: Head,
    free: Head,
    /// Entries, counted before an entry is published and after one is taken, so it never
    /// reads low (it can read high for a moment).
    len: AtomicUsize,
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

    fn pop<T>(&self, slots: &[Slot<T>]) -> Option<u32> {
        let mut head = self.0.load(Ordering::Acquire);
        loop {
            let top = head as u32;
            if top == NIL {
                return None;
            }
            // Possibly stale if another thread took `top` meanwhile; then the tag differs and
            // the exchange fails.
            let next = slots[top as usize].next.load(Ordering::Relaxed);
            #[cfg(test)]
            tests::widen_race_window();
            match self.0.compare_exchange_weak(head, bump(head, next), Ordering::Acquire, Ordering::Acquire) {
                Ok(_) => return Some(top),
                Err(now) => head = now,
            }
        }
    }

    fn push<T>(&self, slots: &[Slot<T>], slot: u32) {
        let mut head = self.0.load(Ordering::Relaxed);
        loop {
            slots[slot as usize].next.store(head as u32, Ordering::Relaxed);
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
    /// A stack of at most `capacity` entries (all slots are allocated now).
    pub fn new(capacity: usize) -> Self {
        let capacity = capacity.min(NIL as usize - 1) as u32;
        let slots = (0..capacity)
            .map(|i| Slot {
                next: AtomicU32::new(if i + 1 < capacity { i + 1 } else { NIL }),
                value: UnsafeCell::new(None),
            })
            .collect();
        IdleStack {
            slots,
            entries: Head::new(NIL),
            free: Head::new(if capacity > 0 { 0 } else { NIL }),
            len: AtomicUsize::new(0),
        }
    }

    /// Puts `value` on top, or hands it back if the stack is full.
    pub fn push(&self, value: T) -> Result<(), T> {
        let Some(slot) = self.free.pop(&self.slots) else {
            return Err(value);
        };
        // SAFETY: this thread popped `slot` from the free stack, so no other thread accesses
        // its value until it is pushed on `entries` below.
        unsafe { *self.slots[slot as usize].value.get() = Some(value) };
        self.len.fetch_add(1, Ordering::Relaxed);
        self.entries.push(&self.slots, slot);
        Ok(())
    }

    /// Takes the entry pushed last.
    pub fn pop(&self) -> Option<T> {
        let slot = self.entries.pop(&self.slots)?;
        // SAFETY: this thread popped `slot` from `entries`, so no other thread accesses its
        // value until it is pushed on the free stack below.
        let value = unsafe { (*self.slots[slot as usize].value.get()).take() };
        self.free.push(&self.slots, slot);
        self.len.fetch_sub(1, Ordering::Relaxed);
        value
    }

    /// Entries now (approximate while other threads push or pop).
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Takes every entry, top first, including ones other threads push meanwhile (up to
    /// twice the capacity in all, so that it ends however fast they push).
    pub fn take_all(&self) -> Vec<T> {
        let mut all = Vec::with_capacity(self.len());
        while all.len() < 2 * self.slots.len() {
            let Some(v) = self.pop() else { break };
            all.push(v);
        }
        all
    }
}

impl<T> std::fmt::Debug for IdleStack<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdleStack").field("len", &self.len()).field("capacity", &self.slots.len()).finish()
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
        if n % 8 == 0 {
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
        fn matches_a_vec(cap in 0usize..6, ops in prop::collection::vec(prop_oneof![
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
    /// entry.
    #[test]
    fn concurrent_pushes_and_pops_conserve_entries() {
        const THREADS: usize = 4;
        const ROUNDS: usize = 200_000;
        let s = Arc::new(IdleStack::new(8));
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
