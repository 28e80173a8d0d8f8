//! A pool of reusable scratch values for parallel workers.
//!
//! Rayon workers may pick up a new task while an earlier one on the same thread is blocked
//! in a nested parallel call, so per-thread scratch (`thread_local!` + `RefCell`) could be
//! borrowed twice. A pool hands each task its own value instead; after warm-up the pool holds
//! as many values as tasks ever ran at once and no longer allocates.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

/// Values of `T` lent out one per task and returned on drop.
#[derive(Debug, Default)]
pub struct ScratchPool<T> {
    free: Mutex<Vec<T>>,
}

impl<T: Default> ScratchPool<T> {
    pub fn new() -> Self {
        ScratchPool {
            free: Mutex::new(Vec::new()),
        }
    }

    /// Borrows a value (a pooled one, or a fresh `T::default()`).
    pub fn take(&self) -> Pooled<'_, T> {
        // A poisoned lock only means another task panicked while pushing or popping; the
        // vector itself is intact, and scratch contents carry no invariants.
        let value = self
            .free
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
            .unwrap_or_default();
        Pooled { pool: self, value }
    }

    /// Values currently idle in the pool.
    pub fn idle(&self) -> usize {
        self.free.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// A value lent by a [`ScratchPool`]; returns to it on drop.
#[derive(Debug)]
pub struct Pooled<'a, T: Default> {
    pool: &'a ScratchPool<T>,
    value: T,
}

impl<T: Default> Deref for Pooled<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: Default> DerefMut for Pooled<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

impl<T: Default> Drop for Pooled<'_, T> {
    fn drop(&mut self) {
        // `take` leaves a default (for the buffer types pooled here, an empty vector: no
        // allocation) in the guard, which is being dropped anyway.
        let v = std::mem::take(&mut self.value);
        self.pool.free.lock().unwrap_or_else(PoisonError::into_inner).push(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_return_to_the_pool() {
        let pool: ScratchPool<Vec<f32>> = ScratchPool::new();
        {
            let mut a = pool.take();
            a.resize(10, 1.0);
            let _b = pool.take();
            assert_eq!(pool.idle(), 0);
        }
        assert_eq!(pool.idle(), 2);
        let a = pool.take();
        assert!(a.len() == 10 || a.is_empty());
    }
}
