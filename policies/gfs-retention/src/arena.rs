//! The policy's allocator: an arena that never frees.
//!
//! Every evaluation runs in a fresh instance that is thrown away after one call, so
//! freeing is wasted work: lowering 1,000 backups into the policy makes ~6 allocations per
//! backup, and dropping the input frees them all again. Small allocations are cut from
//! 64 KiB chunks taken from the system allocator; large ones go to it directly (and are
//! freed there, told apart by their size). The host's memory cap still bounds the whole.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

const CHUNK: usize = 64 << 10;
/// Larger allocations bypass the arena.
const LARGE: usize = CHUNK / 4;

pub struct Arena {
    next: Cell<usize>,
    end: Cell<usize>,
}

// SAFETY: a policy instance runs on one thread (wasm32, no threads).
unsafe impl Sync for Arena {}

impl Arena {
    pub const fn new() -> Arena {
        Arena {
            next: Cell::new(0),
            end: Cell::new(0),
        }
    }
}

unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > LARGE || layout.align() > 16 {
            return System.alloc(layout);
        }
        let mut start = (self.next.get() + layout.align() - 1) & !(layout.align() - 1);
        if start + layout.size() > self.end.get() {
            let chunk = System.alloc(Layout::from_size_align_unchecked(CHUNK, 16));
            if chunk.is_null() {
                return chunk;
            }
            start = chunk as usize;
            self.end.set(start + CHUNK);
        }
        self.next.set(start + layout.size());
        start as *mut u8
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let small = |size: usize| size <= LARGE && layout.align() <= 16;
        // The newest allocation grows in place while its chunk has room (a Vec being filled).
        if small(layout.size())
            && small(new_size)
            && ptr as usize + layout.size() == self.next.get()
            && ptr as usize + new_size <= self.end.get()
        {
            self.next.set(ptr as usize + new_size);
            return ptr;
        }
        let new = self.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
        if !new.is_null() {
            std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
            self.dealloc(ptr, layout);
        }
        new
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() > LARGE || layout.align() > 16 {
            System.dealloc(ptr, layout);
        } else if ptr as usize + layout.size() == self.next.get() {
            // The newest allocation: give it back (a Vec growing, a temporary).
            self.next.set(ptr as usize);
        }
    }
}
