//! A bounded parallel map for I/O-bound work on many small objects (one metadata object per
//! backup): a few scoped threads take items in turn; results come back in item order.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// Threads for store round trips: enough to hide a round trip's latency, few enough for a
/// small machine and a shared object store.
pub const IO_WORKERS: usize = 8;

/// `f` applied to every item on up to `workers` threads; the results in item order.
pub fn map<T: Sync, R: Send>(items: &[T], workers: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if items.len() <= 1 || workers <= 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::with_capacity(items.len()));
    std::thread::scope(|s| {
        for _ in 0..workers.min(items.len()) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(item) = items.get(i) else { break };
                let r = f(item);
                done.lock().unwrap_or_else(|p| p.into_inner()).push((i, r));
            });
        }
    });
    let mut done = done.into_inner().unwrap_or_else(|p| p.into_inner());
    done.sort_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_visits_each_item_once() {
        let items: Vec<u32> = (0..1000).collect();
        let out = super::map(&items, 8, |x| x * 2);
        assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        assert!(super::map(&Vec::<u32>::new(), 8, |x| *x).is_empty());
    }
}
