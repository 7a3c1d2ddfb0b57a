//! Sorting partitions by keys (the order of [`AssignmentMap`](crate::AssignmentMap) lists)
//! without reading the keys on every comparison.
//!
//! Comparing two partitions reads their keys through two pointers each, a cache miss apiece in
//! a large list. Instead, each partition gets a 16-byte prefix of its keys once, and sorts
//! compare prefixes, falling back to the keys only when two prefixes are equal.

use crate::partition::Partition;

/// The key prefixes of a list of partitions, by position (see [`key_prefix`]).
#[derive(Debug)]
pub(crate) struct KeyPrefixes {
    prefix: Vec<u128>,
    /// False when some partition has no prefix: then every prefix counts as 0, so that sorts
    /// compare the keys themselves.
    usable: bool,
}

impl KeyPrefixes {
    /// No prefixes yet, room for `n`.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            prefix: Vec::with_capacity(n),
            usable: true,
        }
    }

    /// The prefixes of `partitions`.
    pub(crate) fn new(partitions: &[Partition]) -> Self {
        let mut prefixes = Self::with_capacity(partitions.len());
        for p in partitions {
            prefixes.push(p);
        }
        prefixes
    }

    /// Adds the prefix of the next partition (for callers that read the keys anyway).
    pub(crate) fn push(&mut self, partition: &Partition) {
        let prefix = key_prefix(partition.keys());
        self.usable &= prefix.is_some();
        self.prefix.push(prefix.unwrap_or(0));
    }

    /// The prefix of partition `i` (0 when unusable or unknown).
    pub(crate) fn get(&self, i: u32) -> u128 {
        match self.prefix.get(i as usize) {
            Some(&prefix) if self.usable => prefix,
            _ => 0,
        }
    }
}

/// Sorts `entries`, each `(prefix, position in partitions)`, into the order of the partitions
/// (by keys, as `Partition`'s `Ord`). Positions must be valid.
pub(crate) fn sort_by_keys(entries: &mut [(u128, u32)], partitions: &[Partition]) {
    // By prefix, then by position: plain integers, compared without a closure.
    entries.sort_unstable();
    for tied in entries.chunk_by_mut(|a, b| a.0 == b.0) {
        if tied.len() > 1 {
            tied.sort_unstable_by(|a, b| partitions[a.1 as usize].cmp(&partitions[b.1 as usize]));
        }
    }
}

/// The first 16 bytes of `keys` joined with 0 bytes, zero-padded, as a big-endian number.
///
/// When the prefixes of two partitions differ, they are in the order of the partitions' keys:
/// a 0 marks the end of a key and every key byte is above it, so a key that is a prefix of
/// another sorts first, as it should. `None` when a key has a 0 byte in those 16 bytes, which
/// breaks that rule.
pub(crate) fn key_prefix(keys: &[String]) -> Option<u128> {
    let mut bytes = [0u8; 16];
    let mut at = 0;
    for key in keys {
        let Some(room) = bytes.get_mut(at..) else {
            break;
        };
        let n = key.len().min(room.len());
        let (copied, _) = room.split_at_mut(n);
        copied.copy_from_slice(key.as_bytes().get(..n)?);
        if copied.contains(&0) {
            return None;
        }
        // Then one 0 byte (already there) before the next key.
        at += n + 1;
    }
    Some(u128::from_be_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn prefixes_follow_the_key_order() {
        let sorted = [
            &["a"][..],
            &["a", "b"],
            &["a", "bb"],
            &["a-"],
            &["ab"],
            &["abcdefghijklmno"],
            &["abcdefghijklmnop"],
            &["abcdefghijklmnop", "x"],
            &["abcdefghijklmnopq"],
            &["b"],
            &["\u{e9}"],
        ]
        .map(keys);
        for pair in sorted.windows(2) {
            assert!(pair[0] < pair[1], "test keys out of order: {pair:?}");
            let (a, b) = (key_prefix(&pair[0]).unwrap(), key_prefix(&pair[1]).unwrap());
            // Equal prefixes are fine (the keys are compared then), inverted ones are not.
            assert!(a <= b, "{pair:?}");
        }
        assert!(key_prefix(&keys(&["a", "b"])) < key_prefix(&keys(&["ab"])));
        assert_eq!(key_prefix(&keys(&["a\0"])), None);
        // A 0 byte past the first 16 bytes does not matter.
        assert!(key_prefix(&keys(&["abcdefghijklmnop\0"])).is_some());
    }

    #[test]
    fn sorting_matches_the_partition_order_with_and_without_zero_bytes() {
        for zero in ["", "\0"] {
            let parts: Vec<Partition> = (0..500)
                .map(|i| {
                    let keys = [format!("t{}{zero}", i % 7), format!("p{}", (i * 37) % 1000)];
                    Partition::new(keys, i).unwrap()
                })
                .collect();
            let prefixes = KeyPrefixes::new(&parts);
            assert_eq!(prefixes.usable, zero.is_empty());
            let mut entries: Vec<(u128, u32)> = (0..500).map(|i| (prefixes.get(i), i)).collect();
            sort_by_keys(&mut entries, &parts);
            let got: Vec<&Partition> = entries.iter().map(|&(_, i)| &parts[i as usize]).collect();
            let mut expected: Vec<&Partition> = parts.iter().collect();
            expected.sort();
            assert_eq!(got, expected, "{zero:?}");
        }
    }
}
