//! Review answers kept for a while.

use std::{
    collections::HashMap,
    fmt,
    hash::Hash,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

/// A map whose entries expire; bounded by dropping everything when full
/// (after dropping what expired). Time is passed in so tests control it.
pub(super) struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    max: usize,
}

impl<K, V> fmt::Debug for TtlCache<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Sizes only: keys and values identify callers.
        f.debug_struct("TtlCache")
            .field("len", &self.lock().len())
            .field("max", &self.max)
            .finish()
    }
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub(super) fn new(max: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            max,
        }
    }

    pub(super) fn get(&self, key: &K, now: Instant) -> Option<V> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some((value, expires)) if *expires > now => Some(value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    pub(super) fn insert(&self, key: K, value: V, ttl: Duration, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= self.max && !entries.contains_key(&key) {
            entries.retain(|_, (_, expires)| *expires > now);
            if entries.len() >= self.max {
                entries.clear();
            }
        }
        entries.insert(key, (value, now + ttl));
    }
}

impl<K, V> TtlCache<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<K, (V, Instant)>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_cache_expires_entries() {
        let cache = TtlCache::new(10);
        let t0 = Instant::now();
        cache.insert("a", 1, Duration::from_secs(10), t0);
        assert_eq!(cache.get(&"a", t0), Some(1));
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(9)), Some(1));
        assert_eq!(cache.get(&"a", t0 + Duration::from_secs(10)), None);
        assert_eq!(
            cache.lock().len(),
            0,
            "an expired entry is removed when seen"
        );
        assert_eq!(cache.get(&"b", t0), None);
    }

    #[test]
    fn ttl_cache_is_bounded() {
        let cache = TtlCache::new(3);
        let t0 = Instant::now();
        cache.insert(1, (), Duration::from_secs(1), t0);
        cache.insert(2, (), Duration::from_secs(100), t0);
        cache.insert(3, (), Duration::from_secs(100), t0);
        // Full: the expired entry makes room, the live ones stay.
        let t1 = t0 + Duration::from_secs(2);
        cache.insert(4, (), Duration::from_secs(100), t1);
        assert_eq!(cache.lock().len(), 3);
        assert_eq!(cache.get(&2, t1), Some(()));
        // Replacing an existing key needs no room.
        cache.insert(4, (), Duration::from_secs(100), t1);
        assert_eq!(cache.lock().len(), 3);
        // Full of live entries: all dropped.
        cache.insert(5, (), Duration::from_secs(100), t1);
        assert_eq!(cache.lock().len(), 1);
        assert_eq!(cache.get(&5, t1), Some(()));
        assert_eq!(cache.get(&2, t1), None);
    }
}
