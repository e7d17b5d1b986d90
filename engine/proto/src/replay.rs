//! Anti-replay: each packet number is accepted at most once.
//!
//! An attacker on the path can re-send a sealed datagram verbatim and it will authenticate
//! again; this window is what rejects it. It keeps the highest packet number accepted and a
//! bitmap of the [`WINDOW`] numbers ending there. Anything older than the window is refused,
//! even if it was never seen: reordering deeper than 65 536 datagrams is treated as loss.
//!
//! Only authenticated datagrams may move the window, or a forged packet number could slide
//! it forward and make every genuine datagram look too old. So the receive path is
//! open → [`ReplayWindow::check_and_mark`] → parse.

use crate::Error;

/// Packet numbers the window remembers, ending at the highest one accepted.
pub const WINDOW: u64 = 65_536;

const WORDS: usize = (WINDOW / 64) as usize;

/// Sliding bitmap over recently accepted packet numbers.
///
/// Bit `pn % WINDOW` stands for `pn` while `pn` lies in the window, so advancing reuses
/// bits in place: cost is proportional to the distance moved (in 64-bit words), capped at
/// clearing the whole 8 KiB map.
#[derive(Clone)]
pub struct ReplayWindow {
    /// Highest packet number accepted; `None` before the first.
    highest: Option<u64>,
    bits: Box<[u64; WORDS]>,
}

impl ReplayWindow {
    /// An empty window: every packet number is new.
    pub fn new() -> Self {
        Self {
            highest: None,
            bits: Box::new([0; WORDS]),
        }
    }

    /// Highest packet number accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Whether `pn` would be accepted; does not change the window.
    ///
    /// Fails with [`Error::Replay`] if `pn` was accepted before or is at or below
    /// `highest − WINDOW`.
    pub fn check(&self, pn: u64) -> Result<(), Error> {
        let Some(h) = self.highest else {
            return Ok(());
        };
        if pn > h {
            return Ok(());
        }
        if h - pn >= WINDOW || self.is_set(pn) {
            return Err(Error::Replay);
        }
        Ok(())
    }

    /// Records `pn` as accepted, sliding the window forward if it is the new highest.
    /// A `pn` already too old is ignored. Call only for datagrams that authenticated.
    pub fn mark(&mut self, pn: u64) {
        match self.highest {
            Some(h) if pn <= h => {
                if h - pn >= WINDOW {
                    return;
                }
            }
            Some(h) => {
                // Bits for h+1..=pn still describe numbers WINDOW earlier; forget them.
                if pn - h >= WINDOW {
                    self.bits.fill(0);
                } else {
                    self.clear(h + 1, pn);
                }
                self.highest = Some(pn);
            }
            None => self.highest = Some(pn),
        }
        let i = (pn % WINDOW) as usize;
        self.bits[i / 64] |= 1 << (i % 64);
    }

    /// [`ReplayWindow::check`], then [`ReplayWindow::mark`] if it passed.
    pub fn check_and_mark(&mut self, pn: u64) -> Result<(), Error> {
        self.check(pn)?;
        self.mark(pn);
        Ok(())
    }

    fn is_set(&self, pn: u64) -> bool {
        let i = (pn % WINDOW) as usize;
        self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    /// Clears the bits of `from..=to`, which spans fewer than `WINDOW` numbers.
    fn clear(&mut self, from: u64, to: u64) {
        let mut pn = from;
        loop {
            let i = (pn % WINDOW) as usize;
            let bit = i % 64;
            // Bits left in this word, limited by what remains of the range.
            let n = ((64 - bit) as u64).min(to - pn + 1);
            let mask = if n == 64 {
                u64::MAX
            } else {
                ((1u64 << n) - 1) << bit
            };
            self.bits[i / 64] &= !mask;
            match pn.checked_add(n) {
                Some(next) if next <= to => pn = next,
                _ => return,
            }
        }
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The bitmap is 8 KiB of noise in a log line.
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    #[test]
    fn fresh_numbers_pass_once() {
        let mut w = ReplayWindow::new();
        assert_eq!(w.highest(), None);
        for pn in [0, 1, 5, 3, 2, 4] {
            assert_eq!(w.check_and_mark(pn), Ok(()));
            assert_eq!(w.check_and_mark(pn), Err(Error::Replay));
        }
        assert_eq!(w.highest(), Some(5));
    }

    #[test]
    fn window_edge() {
        let mut w = ReplayWindow::new();
        w.mark(WINDOW + 10);
        // highest − 65535 is the oldest number still in the window; one below is too old.
        assert_eq!(w.check(11), Ok(()));
        assert_eq!(w.check(10), Err(Error::Replay));
        assert_eq!(w.check(0), Err(Error::Replay));
        w.mark(11);
        assert_eq!(w.check(11), Err(Error::Replay));
        // Advancing by one pushes 11 out: too old now, not merely seen.
        w.mark(WINDOW + 11);
        assert_eq!(w.check(11), Err(Error::Replay));
        assert_eq!(w.check(12), Ok(()));
        // Marking a too-old number is a no-op, not a write to the bit WINDOW + 5 now owns.
        w.mark(5);
        assert_eq!(w.check(WINDOW + 5), Ok(()));
    }

    #[test]
    fn slide_clears_reused_bits() {
        let mut w = ReplayWindow::new();
        for pn in 0..1000 {
            w.mark(pn);
        }
        // Same bit positions as 0..1000, one window later: must read as unseen.
        w.mark(WINDOW + 999);
        for pn in WINDOW..WINDOW + 999 {
            assert_eq!(w.check(pn), Ok(()), "{pn}");
        }
        assert_eq!(w.check(WINDOW + 999), Err(Error::Replay));
    }

    #[test]
    fn huge_jump_and_top_of_range() {
        let mut w = ReplayWindow::new();
        w.mark(7);
        w.mark(u64::MAX - 3);
        assert_eq!(w.check(7), Err(Error::Replay));
        assert_eq!(w.check(u64::MAX - 4), Ok(()));
        w.mark(u64::MAX);
        assert_eq!(w.check(u64::MAX), Err(Error::Replay));
        assert_eq!(w.check(u64::MAX - 3), Err(Error::Replay));
        assert_eq!(w.check(u64::MAX - 1), Ok(()));
    }

    /// The window as a spec: every accepted number, and the highest.
    fn model_check(seen: &HashSet<u64>, highest: Option<u64>, pn: u64) -> bool {
        match highest {
            Some(h) if pn <= h => h - pn < WINDOW && !seen.contains(&pn),
            _ => true,
        }
    }

    fn pn_ops() -> impl Strategy<Value = Vec<u64>> {
        // Mostly near a moving base, with occasional long jumps, so reorder, duplicates,
        // window edges and word-boundary clears all occur.
        prop::collection::vec(
            prop_oneof![
                8 => (0u64..200, any::<bool>()).prop_map(|(d, back)| (d, back, false)),
                2 => (WINDOW - 100..WINDOW + 100, any::<bool>()).prop_map(|(d, b)| (d, b, false)),
                1 => (0u64..3 * WINDOW, Just(false)).prop_map(|(d, b)| (d, b, true)),
            ],
            1..400,
        )
        .prop_map(|steps| {
            let mut base = 1_000_000u64;
            steps
                .into_iter()
                .map(|(d, back, jump)| {
                    if jump {
                        base += d;
                        base
                    } else if back {
                        base.saturating_sub(d)
                    } else {
                        base += d / 4;
                        base + d
                    }
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn matches_hashset_model(ops in pn_ops()) {
            let mut w = ReplayWindow::new();
            let mut seen = HashSet::new();
            let mut highest: Option<u64> = None;
            for pn in ops {
                let want = model_check(&seen, highest, pn);
                prop_assert_eq!(w.check_and_mark(pn).is_ok(), want, "pn {}", pn);
                if want {
                    seen.insert(pn);
                    highest = Some(highest.map_or(pn, |h| h.max(pn)));
                }
                prop_assert_eq!(w.highest(), highest);
            }
        }
    }
}
