//! A counting gate on live instances.
//!
//! The pooling allocator has a fixed number of instance slots; a call that
//! finds none free would fail. Callers wait here for a slot instead. (A
//! blocking counterpart of `tokio::sync::Semaphore`, which has no blocking
//! acquire: plugin calls run on blocking threads.)

use std::sync::{Condvar, Mutex};

pub struct Slots {
    state: Mutex<State>,
    freed: Condvar,
}

/// Free slots, and callers waiting for one (a release wakes one only if
/// any waits: `Condvar::notify_one` is a system call even when none does).
struct State {
    free: usize,
    waiting: usize,
}

pub struct SlotGuard<'a> {
    slots: &'a Slots,
}

impl Slots {
    pub fn new(capacity: usize) -> Slots {
        Slots {
            state: Mutex::new(State {
                free: capacity.max(1),
                waiting: 0,
            }),
            freed: Condvar::new(),
        }
    }

    pub fn acquire(&self) -> SlotGuard<'_> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        while state.free == 0 {
            state.waiting += 1;
            state = self.freed.wait(state).unwrap_or_else(|p| p.into_inner());
            state.waiting -= 1;
        }
        state.free -= 1;
        SlotGuard { slots: self }
    }
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        let mut state = self.slots.state.lock().unwrap_or_else(|p| p.into_inner());
        state.free += 1;
        if state.waiting > 0 {
            self.slots.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    #[test]
    fn acquire_waits_for_a_free_slot() {
        let slots = Arc::new(Slots::new(1));
        let acquired = Arc::new(AtomicBool::new(false));
        let held = slots.acquire();
        let waiter = std::thread::spawn({
            let (slots, acquired) = (slots.clone(), acquired.clone());
            move || {
                let _slot = slots.acquire();
                acquired.store(true, Ordering::SeqCst);
            }
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(
            !acquired.load(Ordering::SeqCst),
            "a second slot was handed out"
        );
        drop(held);
        waiter.join().unwrap();
        assert!(acquired.load(Ordering::SeqCst));
    }

    #[test]
    fn zero_capacity_still_admits_one() {
        let slots = Slots::new(0);
        drop(slots.acquire());
        drop(slots.acquire());
    }
}
