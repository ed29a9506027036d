//! The guest's allocator: a bump arena, in front of the standard allocator.
//!
//! The host runs every call in a fresh instance, its linear memory reset to
//! the module's initial image, so a call's allocations never outlive it.
//! A general allocator's bookkeeping is wasted there, and it is most of the
//! cost of the canonical ABI's lowering: the host asks `cabi_realloc` once
//! per string of a `list<string>` column (2,000 times for a 1,000-record
//! `blob-paths` batch). Here an allocation moves a pointer, freeing the most
//! recent block moves it back (stack-like), growing the most recent block (a
//! `String` being pushed to) grows it in place; blocks freed out of order
//! stay used until the call ends.
//!
//! The arena starts in [`STATIC_BYTES`] of the module's static memory (a
//! call over a few records grows nothing), then grows the linear memory
//! itself, by at least [`GROW_STEP`] and then doubling, so that a batch
//! changes the memory's size (a page-protection change in the host) once or
//! twice instead of at every 64 KiB. Past [`GROWN_BYTES`], allocations go to
//! the standard allocator (dlmalloc), which grows the memory up to the
//! host's per-call memory cap as before: a runaway allocation still traps
//! with the cap's error.
//!
//! It is the global allocator of a wasm32 build of any crate using the SDK.
//! A type that brings its own allocator turns it off with the SDK's
//! `system-allocator` feature.

use core::alloc::{GlobalAlloc, Layout};
use core::cell::{Cell, UnsafeCell};
use std::alloc::System;

/// Bytes of the arena in the module's static memory: what a call over a
/// few records needs, so that it grows nothing. Pages a call touched stay
/// resident in the host's instance slot and are reset after every later
/// call, so this is kept small.
pub const STATIC_BYTES: usize = 64 << 10;

/// Most bytes the arena grows the linear memory by in one call, past
/// [`STATIC_BYTES`]; a 1,000-record batch of the shipped types takes about
/// 0.4 MiB. Past it, allocations go to the standard allocator.
pub const GROWN_BYTES: usize = 8 << 20;

/// The least the arena grows the memory by at a time (each growth is a
/// page-protection change in the host), and the size of its first growth.
pub const GROW_STEP: usize = 256 << 10;

/// A WebAssembly page.
const PAGE: usize = 64 << 10;

/// The bump allocator: a static region of `N` bytes, then up to
/// [`GROWN_BYTES`] of linear memory grown for it (in one contiguous range),
/// then [`System`].
pub struct Arena<const N: usize> {
    memory: UnsafeCell<Aligned<N>>,
    /// The first free byte of the current region (an address; 0 before the
    /// first allocation).
    next: Cell<usize>,
    /// The end of the current region.
    end: Cell<usize>,
    /// The grown range, `[grown_start, end)` once allocations moved there.
    grown_start: Cell<usize>,
}

#[repr(C, align(16))]
struct Aligned<const N: usize>([u8; N]);

// SAFETY: wasm32 guests of the component model are single-threaded; the
// SDK's unit tests use an arena from one thread.
unsafe impl<const N: usize> Sync for Arena<N> {}

impl<const N: usize> Arena<N> {
    /// An empty arena.
    pub const fn new() -> Self {
        Arena {
            memory: UnsafeCell::new(Aligned([0; N])),
            next: Cell::new(0),
            end: Cell::new(0),
            grown_start: Cell::new(0),
        }
    }

    fn base(&self) -> usize {
        self.memory.get() as usize
    }

    /// Whether the block at `ptr` was allocated here.
    fn owns(&self, ptr: *mut u8) -> bool {
        let addr = ptr as usize;
        addr.wrapping_sub(self.base()) < N
            || (self.grown_start.get() != 0
                && (self.grown_start.get()..self.end.get()).contains(&addr))
    }

    /// `layout`'s block from the arena, growing it if needed and allowed.
    fn bump(&self, layout: Layout) -> Option<*mut u8> {
        if self.end.get() == 0 {
            self.next.set(self.base());
            self.end.set(self.base() + N);
        }
        if let Some(ptr) = self.fit(layout) {
            return Some(ptr);
        }
        let room = layout.size().checked_add(layout.align())?;
        let grown = match self.grown_start.get() {
            0 => self.start_grown(room),
            _ => self.extend(self.next.get().checked_add(room)?),
        };
        if grown {
            self.fit(layout)
        } else {
            None
        }
    }

    /// `layout`'s block from the current region, if it fits.
    fn fit(&self, layout: Layout) -> Option<*mut u8> {
        let start = self.next.get().checked_next_multiple_of(layout.align())?;
        let end = start.checked_add(layout.size())?;
        if end > self.end.get() {
            return None;
        }
        self.next.set(end);
        Some(start as *mut u8)
    }

    /// Moves from the static region to memory grown with room for `room`
    /// bytes.
    fn start_grown(&self, room: usize) -> bool {
        let step = room.max(GROW_STEP).next_multiple_of(PAGE);
        if step > GROWN_BYTES {
            return false;
        }
        let Some(start) = grow_memory(step / PAGE) else {
            return false;
        };
        self.grown_start.set(start);
        self.next.set(start);
        self.end.set(start + step);
        true
    }

    /// Grows the grown range (the current region) up to `end` at least:
    /// by as much again as it holds, [`GROW_STEP`] at least. `false` when it
    /// cannot grow in place (the standard allocator grew the memory since)
    /// or would pass [`GROWN_BYTES`].
    fn extend(&self, end: usize) -> bool {
        let (start, current) = (self.grown_start.get(), self.end.get());
        if start == 0 || memory_end() != Some(current) {
            return false;
        }
        let grown = current - start;
        let step = (end.saturating_sub(current))
            .max(grown)
            .max(GROW_STEP)
            .next_multiple_of(PAGE);
        if grown + step > GROWN_BYTES || grow_memory(step / PAGE) != Some(current) {
            return false;
        }
        self.end.set(current + step);
        true
    }

    /// Whether the block at `ptr` of `size` bytes is the most recent one.
    fn is_last(&self, ptr: *mut u8, size: usize) -> bool {
        ptr as usize + size == self.next.get()
    }
}

/// The end of the linear memory, in bytes.
fn memory_end() -> Option<usize> {
    #[cfg(target_arch = "wasm32")]
    return Some(core::arch::wasm32::memory_size(0) * PAGE);
    #[cfg(not(target_arch = "wasm32"))]
    None
}

/// Grows the linear memory by `pages`; the address of the new pages.
fn grow_memory(pages: usize) -> Option<usize> {
    #[cfg(target_arch = "wasm32")]
    {
        let previous = core::arch::wasm32::memory_grow(0, pages);
        (previous != usize::MAX).then(|| previous * PAGE)
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        let _ = pages;
        None
    }
}

impl<const N: usize> Default for Arena<N> {
    fn default() -> Self {
        Self::new()
    }
}

unsafe impl<const N: usize> GlobalAlloc for Arena<N> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's contract, passed on.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        match self.bump(layout) {
            Some(ptr) => {
                // Blocks freed back to the arena may hold old bytes.
                // SAFETY: `bump` gave `layout.size()` bytes at `ptr`.
                unsafe { ptr.write_bytes(0, layout.size()) };
                ptr
            }
            // SAFETY: the caller's contract, passed on.
            None => unsafe { System.alloc_zeroed(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if !self.owns(ptr) {
            // SAFETY: not ours, so the standard allocator's.
            return unsafe { System.dealloc(ptr, layout) };
        }
        if self.is_last(ptr, layout.size()) {
            self.next.set(ptr as usize);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !self.owns(ptr) {
            // SAFETY: not ours, so the standard allocator's.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        if self.is_last(ptr, layout.size()) {
            let end = ptr as usize + new_size;
            if end <= self.end.get() || self.extend(end) {
                self.next.set(end);
                return ptr;
            }
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: the caller guarantees `new_size` is a valid size for
        // `layout.align()`.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: as above.
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both blocks hold at least `layout.size()` bytes and do
            // not overlap (the new one is past the arena's top or not in it).
            unsafe { core::ptr::copy_nonoverlapping(ptr, new, layout.size()) };
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize, align: usize) -> Layout {
        Layout::from_size_align(size, align).unwrap()
    }

    #[test]
    fn bumps_aligned_and_frees_the_last_block() {
        let arena: Arena<256> = Arena::new();
        unsafe {
            let a = arena.alloc(layout(3, 1));
            let b = arena.alloc(layout(8, 8));
            assert_eq!(b as usize % 8, 0);
            assert!(arena.owns(a) && arena.owns(b));
            // Freeing the last block gives its bytes back; freeing an
            // earlier one does not move the top.
            let top = arena.next.get();
            arena.dealloc(a, layout(3, 1));
            assert_eq!(arena.next.get(), top);
            arena.dealloc(b, layout(8, 8));
            assert_eq!(arena.next.get(), arena.base() + 8);
            assert_eq!(arena.alloc(layout(8, 8)), b);
        }
    }

    #[test]
    fn grows_the_last_block_in_place_and_copies_others() {
        let arena: Arena<256> = Arena::new();
        unsafe {
            let a = arena.alloc(layout(4, 1));
            a.copy_from_nonoverlapping(b"abcd".as_ptr(), 4);
            let grown = arena.realloc(a, layout(4, 1), 100);
            assert_eq!(grown, a);
            assert_eq!(arena.next.get(), arena.base() + 100);
            let b = arena.alloc(layout(1, 1));
            let moved = arena.realloc(a, layout(100, 1), 120);
            assert_ne!(moved, a);
            assert_eq!(core::slice::from_raw_parts(moved, 4), b"abcd");
            assert!(arena.owns(b));
        }
    }

    #[test]
    fn a_full_arena_falls_back_to_the_standard_allocator() {
        let arena: Arena<64> = Arena::new();
        unsafe {
            let small = arena.alloc(layout(48, 8));
            assert!(arena.owns(small));
            let big = arena.alloc(layout(1 << 16, 8));
            assert!(!big.is_null());
            assert!(!arena.owns(big));
            big.write_bytes(7, 1 << 16);
            // Growing a block out of the arena moves it to the standard
            // allocator with its bytes.
            small.write_bytes(9, 48);
            let moved = arena.realloc(small, layout(48, 8), 1 << 10);
            assert!(!arena.owns(moved));
            assert_eq!(*moved.add(47), 9);
            arena.dealloc(moved, layout(1 << 10, 8));
            arena.dealloc(big, layout(1 << 16, 8));
            let zeroed = arena.alloc_zeroed(layout(16, 8));
            assert!(arena.owns(zeroed));
            assert!(core::slice::from_raw_parts(zeroed, 16)
                .iter()
                .all(|&b| b == 0));
        }
    }
}
