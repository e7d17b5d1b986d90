//! Which blocks a receiver holds, in memory bounded by the window.

use crate::ranges::RangeSet;

/// A set of global block numbers that is complete below `cum()`, and sparse in a window of
/// at most `capacity` blocks above it: a ring of bit words that slides as `cum` advances.
#[derive(Clone, Debug)]
pub struct BlockSet {
    words: std::collections::VecDeque<u64>,
    /// Block number of bit 0 of `words[0]`; a multiple of 64.
    base: u64,
    /// Every block below this is held.
    cum: u64,
    capacity: u64,
    held: u64,
    /// Blocks held before the session started (a resumed file), wherever they lie.
    preheld: RangeSet,
}

/// What inserting a block did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Insert {
    /// The block is new.
    New,
    /// The block was already held.
    Duplicate,
    /// The block lies beyond the window; the sender overran it.
    BeyondWindow,
}

impl BlockSet {
    /// An empty set tracking at most `capacity` blocks above `cum`.
    pub fn new(capacity: u64) -> Self {
        Self::with_held(capacity, RangeSet::new())
    }

    /// A set that starts with `held` (a resumed transfer), tracking at most `capacity`
    /// blocks above `cum` besides them.
    pub fn with_held(capacity: u64, held: RangeSet) -> Self {
        let mut s = BlockSet {
            words: Default::default(),
            base: 0,
            cum: 0,
            capacity: capacity.max(64),
            held: held.len(),
            preheld: held,
        };
        s.advance();
        s
    }

    /// Every block below this is held.
    pub fn cum(&self) -> u64 {
        self.cum
    }

    /// Blocks held in all.
    pub fn held(&self) -> u64 {
        self.held
    }

    /// Whether `block` is held.
    pub fn contains(&self, block: u64) -> bool {
        if block < self.cum || self.is_preheld(block) {
            return true;
        }
        let i = (block - self.base) / 64;
        self.words
            .get(i as usize)
            .is_some_and(|w| w & (1 << ((block - self.base) % 64)) != 0)
    }

    /// Adds `block`.
    pub fn insert(&mut self, block: u64) -> Insert {
        if block < self.cum || self.is_preheld(block) {
            return Insert::Duplicate;
        }
        if block >= self.cum + self.capacity {
            return Insert::BeyondWindow;
        }
        let i = ((block - self.base) / 64) as usize;
        if i >= self.words.len() {
            self.words.resize(i + 1, 0);
        }
        let bit = 1u64 << ((block - self.base) % 64);
        if self.words[i] & bit != 0 {
            return Insert::Duplicate;
        }
        self.words[i] |= bit;
        self.held += 1;
        if block == self.cum {
            self.advance();
        }
        Insert::New
    }

    fn is_preheld(&self, block: u64) -> bool {
        !self.preheld.is_empty() && self.preheld.contains(block)
    }

    /// Moves `cum` over every held block at it, then drops the ring words below it.
    fn advance(&mut self) {
        loop {
            if !self.preheld.is_empty()
                && let Some(r) = self.preheld.range_at(self.cum)
            {
                self.cum = r.end;
                continue;
            }
            let off = self.cum - self.base;
            let Some(&w) = self.words.get((off / 64) as usize) else {
                break;
            };
            let ones = (w >> (off % 64)).trailing_ones();
            if ones == 0 {
                break;
            }
            self.cum += u64::from(ones);
        }
        let passed = (((self.cum - self.base) / 64) as usize).min(self.words.len());
        self.words.drain(..passed);
        self.base += 64 * passed as u64;
        if self.words.is_empty() {
            self.base = self.cum / 64 * 64;
        }
    }

    /// The blocks in `[from, to)` not held, as maximal runs `(first, count)`, at most
    /// `limit` runs, appended to `out`.
    pub fn missing_runs(&self, from: u64, to: u64, limit: usize, out: &mut Vec<(u64, u64)>) {
        let mut b = from.max(self.cum);
        let mut pushed = 0;
        while b < to && pushed < limit {
            // Skip held blocks a word at a time where possible.
            if self.contains(b) {
                b += 1;
                continue;
            }
            let start = b;
            while b < to && !self.contains(b) {
                b += 1;
            }
            out.push((start, b - start));
            pushed += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cum_slides_and_duplicates_are_seen() {
        let mut s = BlockSet::new(1000);
        assert_eq!(s.insert(1), Insert::New);
        assert_eq!(s.cum(), 0);
        assert_eq!(s.insert(0), Insert::New);
        assert_eq!(s.cum(), 2);
        assert_eq!(s.insert(1), Insert::Duplicate);
        for b in 2..200 {
            s.insert(b);
        }
        assert_eq!(s.cum(), 200);
        assert_eq!(s.insert(1300), Insert::BeyondWindow);
        let mut runs = vec![];
        s.insert(205);
        s.missing_runs(0, 210, 10, &mut runs);
        assert_eq!(runs, vec![(200, 5), (206, 4)]);
    }

    #[test]
    fn preheld_blocks_count_and_cum_jumps_over_them() {
        let held = RangeSet::from_ranges([0..10, 20..30, 100..5000]);
        let mut s = BlockSet::with_held(64, held);
        assert_eq!(s.cum(), 10);
        assert_eq!(s.held(), 10 + 10 + 4900);
        assert!(s.contains(25) && s.contains(4999) && !s.contains(15));
        // Held at the start, so a duplicate, even far beyond the window.
        assert_eq!(s.insert(4000), Insert::Duplicate);
        for b in 10..20 {
            assert_eq!(s.insert(b), Insert::New);
        }
        assert_eq!(s.cum(), 30);
        let mut runs = vec![];
        s.missing_runs(0, 6000, 10, &mut runs);
        assert_eq!(runs, vec![(30, 70), (5000, 1000)]);
        for b in 30..100 {
            s.insert(b);
        }
        assert_eq!(s.cum(), 5000);
        assert_eq!(s.insert(5001), Insert::New);
        assert_eq!(s.insert(5000), Insert::New);
        assert_eq!(s.cum(), 5002);
    }

    proptest! {
        #[test]
        fn with_held_matches_a_model(
            held in proptest::collection::vec((0u64..300, 0u64..40), 0..8),
            ops in proptest::collection::vec(0u64..400, 0..300),
        ) {
            let held = RangeSet::from_ranges(held.into_iter().map(|(a, n)| a..a + n));
            let mut model: std::collections::BTreeSet<u64> =
                held.ranges().iter().flat_map(|r| r.clone()).collect();
            let mut s = BlockSet::with_held(1 << 20, held);
            for b in ops {
                let new = model.insert(b);
                prop_assert_eq!(s.insert(b) == Insert::New, new);
                let cum = (0..).find(|x| !model.contains(x)).unwrap();
                prop_assert_eq!(s.cum(), cum);
            }
            for b in 0..450 {
                prop_assert_eq!(s.contains(b), model.contains(&b));
            }
            prop_assert_eq!(s.held(), model.len() as u64);
        }

        #[test]
        fn matches_a_model(ops in proptest::collection::vec(0u64..500, 0..400)) {
            let mut s = BlockSet::new(1 << 20);
            let mut model = std::collections::BTreeSet::new();
            for b in ops {
                let new = model.insert(b);
                prop_assert_eq!(s.insert(b) == Insert::New, new);
                let cum = (0..).find(|x| !model.contains(x)).unwrap();
                prop_assert_eq!(s.cum(), cum);
            }
            for b in 0..520 {
                prop_assert_eq!(s.contains(b), model.contains(&b));
            }
            prop_assert_eq!(s.held(), model.len() as u64);
        }
    }
}
