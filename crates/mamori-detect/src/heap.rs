//! Heap bytes of the containers detector states hold, for
//! [`mamori_core::DetectorState::heap_bytes`]: what their capacities take from the allocator
//! (checked against a counting allocator in `tests/heap_bytes.rs`).

use std::collections::{HashMap, HashSet, VecDeque};
use std::mem::size_of;

/// A vector's buffer.
pub(crate) fn vec<T>(v: &Vec<T>) -> usize {
    v.capacity() * size_of::<T>()
}

/// A ring buffer's.
pub(crate) fn deque<T>(v: &VecDeque<T>) -> usize {
    v.capacity() * size_of::<T>()
}

/// A swiss table's (the standard `HashMap`): its buckets, one control byte per bucket and a
/// group of 16 more. The table reports `capacity = buckets · 7/8` from 8 buckets up and
/// `buckets − 1` below.
fn table(capacity: usize, entry: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = if capacity < 7 {
        capacity + 1
    } else {
        capacity / 7 * 8
    };
    buckets * (entry + 1) + 16
}

/// A hash map's table (the entries' own heap buffers are not included).
pub(crate) fn map<K, V, S>(m: &HashMap<K, V, S>) -> usize {
    table(m.capacity(), size_of::<(K, V)>())
}

/// A hash set's table.
pub(crate) fn set<T, S>(s: &HashSet<T, S>) -> usize {
    table(s.capacity(), size_of::<T>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_sizes_follow_the_reported_capacity() {
        let mut m: HashMap<u64, u64> = HashMap::new();
        assert_eq!(map(&m), 0);
        m.insert(1, 1);
        // 3 slots → 4 buckets of 16 bytes, 4 + 16 control bytes.
        assert_eq!(m.capacity(), 3);
        assert_eq!(map(&m), 4 * 17 + 16);
        for i in 0..1000 {
            m.insert(i, i);
        }
        // 1024 buckets hold 896; 1000 entries need 2048.
        assert_eq!(m.capacity(), 1792);
        assert_eq!(map(&m), 2048 * 17 + 16);
        let v: Vec<u32> = Vec::with_capacity(10);
        assert_eq!(vec(&v), 40);
    }
}
