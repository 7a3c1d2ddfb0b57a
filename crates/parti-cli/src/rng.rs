//! A small seeded generator for the fault schedules of `sim` and `chaos`, and a seed for it.
//! A leaf: depends on nothing in the crate.

/// A seed from the clock and the process ID.
pub(crate) fn random_seed() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    SplitMix(u64::from(now.subsec_nanos()) ^ now.as_secs() ^ u64::from(std::process::id())).next()
}

/// SplitMix64: a small seeded generator for the schedule's choices.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    /// The next number of the sequence.
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// One of `items` (`None` when empty).
    pub(crate) fn choose<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        let len = u64::try_from(items.len()).ok().filter(|&l| l > 0)?;
        let at = usize::try_from(self.next() % len).ok()?;
        items.get(at).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_follow_the_seed() {
        let items = [1, 2, 3, 4, 5];
        let a: Vec<_> = (0..20)
            .scan(SplitMix(9), |r, _| Some(r.choose(&items)))
            .collect();
        let b: Vec<_> = (0..20)
            .scan(SplitMix(9), |r, _| Some(r.choose(&items)))
            .collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|x| x.is_some()));
        assert_eq!(SplitMix(1).choose::<u8>(&[]), None);
    }
}
