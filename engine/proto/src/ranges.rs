//! Sets of `u64` as sorted, disjoint, half-open ranges: the blocks a resumed session starts
//! with, and the bytes of a file a receiver has written.

use core::ops::Range;

/// A set of `u64` kept as sorted, disjoint, non-adjacent ranges `[start, end)`.
///
/// Inserting next to the last range (the common case: data arrives mostly in order) is
/// O(1); elsewhere it is a binary search and at most one shift of the range list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<Range<u64>>,
    len: u64,
}

impl RangeSet {
    /// The empty set.
    pub fn new() -> Self {
        RangeSet::default()
    }

    /// The union of `ranges`, in any order, overlapping or not; empty ones are ignored.
    pub fn from_ranges(ranges: impl IntoIterator<Item = Range<u64>>) -> Self {
        let mut set = RangeSet::new();
        for r in ranges {
            set.insert(r);
        }
        set
    }

    /// Adds every number in `r`.
    pub fn insert(&mut self, r: Range<u64>) {
        if r.start >= r.end {
            return;
        }
        if let Some(last) = self.ranges.last_mut()
            && last.end <= r.start
        {
            if last.end == r.start {
                last.end = r.end;
            } else {
                self.ranges.push(r.clone());
            }
            self.len += r.end - r.start;
            return;
        }
        // The ranges touching or overlapping `r` are `ranges[first..last]`.
        let first = self.ranges.partition_point(|x| x.end < r.start);
        let last = self.ranges.partition_point(|x| x.start <= r.end);
        let mut merged = r;
        for x in &self.ranges[first..last] {
            merged.start = merged.start.min(x.start);
            merged.end = merged.end.max(x.end);
            self.len -= x.end - x.start;
        }
        self.len += merged.end - merged.start;
        self.ranges.splice(first..last, [merged]);
    }

    /// Whether `x` is in the set.
    pub fn contains(&self, x: u64) -> bool {
        self.range_at(x).is_some()
    }

    /// The range holding `x`, if any.
    pub fn range_at(&self, x: u64) -> Option<Range<u64>> {
        let i = self.ranges.partition_point(|r| r.end <= x);
        self.ranges.get(i).filter(|r| r.start <= x).cloned()
    }

    /// How many numbers the set holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// How many numbers of `[from, to)` the set holds.
    pub fn count_in(&self, from: u64, to: u64) -> u64 {
        let i = self.ranges.partition_point(|r| r.end <= from);
        self.ranges[i..]
            .iter()
            .take_while(|r| r.start < to)
            .map(|r| r.end.min(to) - r.start.max(from))
            .sum()
    }

    /// The ranges, lowest first.
    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// The largest number not in the set below `end`, if any.
    pub fn last_gap_below(&self, end: u64) -> Option<u64> {
        let mut x = end.checked_sub(1)?;
        loop {
            match self.range_at(x) {
                None => return Some(x),
                Some(r) => x = r.start.checked_sub(1)?,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    #[test]
    fn merges_touching_and_overlapping_ranges() {
        let mut s = RangeSet::from_ranges([10..20, 0..5, 5..7, 30..40, 18..31]);
        assert_eq!(s.ranges(), &[0..7, 10..40]);
        assert_eq!(s.len(), 37);
        s.insert(7..10);
        assert_eq!(s.ranges(), std::slice::from_ref(&(0..40)));
        assert_eq!(s.count_in(35, 100), 5);
        assert_eq!(s.range_at(39), Some(0..40));
        assert_eq!(s.range_at(40), None);
        assert_eq!(s.last_gap_below(40), None);
        assert_eq!(s.last_gap_below(42), Some(41));
        let s = RangeSet::from_ranges([0..3, 5..9]);
        assert_eq!(s.last_gap_below(9), Some(4));
    }

    proptest! {
        #[test]
        fn matches_a_model(ops in proptest::collection::vec((0u64..200, 0u64..20), 0..60)) {
            let mut s = RangeSet::new();
            let mut model = BTreeSet::new();
            for (start, len) in ops {
                s.insert(start..start + len);
                model.extend(start..start + len);
            }
            prop_assert_eq!(s.len(), model.len() as u64);
            for x in 0..230 {
                prop_assert_eq!(s.contains(x), model.contains(&x));
            }
            for w in s.ranges().windows(2) {
                prop_assert!(w[0].end < w[1].start, "ranges must not touch: {:?}", s.ranges());
            }
            prop_assert_eq!(s.count_in(50, 120), model.range(50..120).count() as u64);
        }
    }
}
