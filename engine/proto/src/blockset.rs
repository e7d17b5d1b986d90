//! Which blocks a receiver holds, in memory bounded by the window.

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
        BlockSet {
            words: Default::default(),
            base: 0,
            cum: 0,
            capacity: capacity.max(64),
            held: 0,
        }
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
        if block < self.cum {
            return true;
        }
        let i = (block - self.base) / 64;
        self.words
            .get(i as usize)
            .is_some_and(|w| w & (1 << ((block - self.base) % 64)) != 0)
    }

    /// Adds `block`.
    pub fn insert(&mut self, block: u64) -> Insert {
        if block < self.cum {
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

    fn advance(&mut self) {
        while let Some(&w) = self.words.front() {
            if w == u64::MAX {
                self.words.pop_front();
                self.base += 64;
                self.cum = self.base;
                continue;
            }
            let from = (self.cum - self.base) as u32;
            let ones = (w >> from).trailing_ones();
            self.cum += u64::from(ones);
            break;
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

    proptest! {
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
