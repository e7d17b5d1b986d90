//! Sharing a host-wide cap among sessions by policy: who gets how much of a virtual link.
//!
//! A cap is not a path: nothing queues at it, so the delay-based controllers cannot feel it
//! and split it among themselves. Instead the host divides the cap explicitly, a few times a
//! second, and hands each session a **ceiling** (a rate it must not exceed on top of its own
//! target). [`allocate`] is that division, as a pure function:
//!
//! 1. every session first gets its minimum rate (scaled down evenly if the minimums alone
//!    exceed the cap);
//! 2. `fixed` sessions then get up to their target (they asked for an exact rate);
//! 3. `high` and `fair` sessions share what is left by weight (2 : 1) up to what each can use,
//!    by water-filling: a session that needs less than its share leaves the rest to others;
//! 4. `low` sessions share only what remains after that (a scavenger's share), and all of
//!    them together no more than the background cap, if there is one.
//!
//! What a session "can use" is its target, or less when it has been delivering clearly less
//! than it was allowed (its path or its peer limits it): then its [`Claim::demand_bps`] says
//! so, and its unused share goes to others. The caller estimates demand with some headroom
//! (for example 1.25 × the measured rate), so a session that could go faster grows back
//! within a few rounds.

use crate::Policy;

/// One session's stake in a cap.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Claim {
    /// The session's rate policy.
    pub policy: Policy,
    /// The session's own target rate, bits per second.
    pub target_bps: u64,
    /// The session's minimum rate, bits per second.
    pub min_bps: u64,
    /// The most it could use now if allowed, when that is known to be below its target.
    pub demand_bps: Option<u64>,
}

impl Claim {
    /// The most this claim should be given: its target, or its demand if lower.
    fn upper(&self) -> u64 {
        let u = self
            .demand_bps
            .map_or(self.target_bps, |d| d.min(self.target_bps));
        u.max(self.min_bps.min(self.target_bps))
    }

    /// The same claim without its demand.
    fn undemanding(&self) -> Claim {
        Claim {
            demand_bps: None,
            ..*self
        }
    }
}

/// Divides `cap_bps` among `claims` (see the module docs); `background_bps` caps the `low`
/// sessions together. Returns each claim's ceiling in bits per second, in order. The
/// ceilings never add up to more than the cap, and none exceeds its claim's target.
pub fn allocate(cap_bps: u64, background_bps: Option<u64>, claims: &[Claim]) -> Vec<u64> {
    let n = claims.len();
    let mut given = vec![0u64; n];
    if n == 0 {
        return given;
    }
    // 1. Minimums, scaled down together if they alone exceed the cap.
    let mins: Vec<u64> = claims.iter().map(|c| c.min_bps.min(c.target_bps)).collect();
    let min_sum: u128 = mins.iter().map(|&m| m as u128).sum();
    for (g, &m) in given.iter_mut().zip(&mins) {
        *g = if min_sum > cap_bps as u128 {
            (m as u128 * cap_bps as u128 / min_sum) as u64
        } else {
            m
        };
    }
    let left = cap_bps.saturating_sub(given.iter().sum());
    let left = by_policy(claims, background_bps, &mut given, left);
    // 5. What nobody asked for goes, the same way, to those whose demand held them back:
    //    room to show that they could use more.
    let undemanding: Vec<Claim> = claims.iter().map(Claim::undemanding).collect();
    by_policy(&undemanding, background_bps, &mut given, left);
    given
}

/// Steps 2 to 4: `budget` to fixed, then high and fair, then low sessions. Returns what
/// is left.
fn by_policy(claims: &[Claim], background_bps: Option<u64>, given: &mut [u64], budget: u64) -> u64 {
    let n = claims.len();
    // 2. Fixed sessions: up to their target, in proportion if they do not all fit.
    let fixed: Vec<usize> = (0..n)
        .filter(|&i| claims[i].policy == Policy::Fixed)
        .collect();
    let left = fill(&fixed, claims, given, budget, |_| 1.0);
    // 3. High and fair by weight.
    let elastic: Vec<usize> = (0..n)
        .filter(|&i| matches!(claims[i].policy, Policy::High | Policy::Fair))
        .collect();
    let left = fill(&elastic, claims, given, left, |p| {
        if p == Policy::High { 2.0 } else { 1.0 }
    });
    // 4. Low: the remainder, within the background cap.
    let low: Vec<usize> = (0..n)
        .filter(|&i| claims[i].policy == Policy::Low)
        .collect();
    let low_now: u64 = low.iter().map(|&i| given[i]).sum();
    let room = background_bps.map_or(left, |b| left.min(b.saturating_sub(low_now)));
    let unspent = fill(&low, claims, given, room, |_| 1.0);
    left - room + unspent
}

/// Water-fills `budget` over `members` by weight, each up to its [`Claim::upper`]; returns
/// what is left of the budget.
fn fill(
    members: &[usize],
    claims: &[Claim],
    given: &mut [u64],
    mut budget: u64,
    weight: impl Fn(Policy) -> f64,
) -> u64 {
    let mut open: Vec<usize> = members
        .iter()
        .copied()
        .filter(|&i| given[i] < claims[i].upper())
        .collect();
    // Each round either satisfies at least one member or spends the whole budget.
    while !open.is_empty() && budget > 0 {
        let total_w: f64 = open.iter().map(|&i| weight(claims[i].policy)).sum();
        let per_w = budget as f64 / total_w;
        // Members whose remaining need is below their share are satisfied this round.
        let (sated, hungry): (Vec<usize>, Vec<usize>) = open.iter().partition(|&&i| {
            ((claims[i].upper() - given[i]) as f64) <= per_w * weight(claims[i].policy)
        });
        if sated.is_empty() {
            let mut spent = 0;
            for &i in &hungry {
                let add = (per_w * weight(claims[i].policy)) as u64;
                given[i] += add;
                spent += add;
            }
            return budget.saturating_sub(spent);
        }
        for &i in &sated {
            budget -= claims[i].upper() - given[i];
            given[i] = claims[i].upper();
        }
        open = hungry;
    }
    budget
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: u64 = 1_000_000;

    fn claim(policy: Policy, target: u64) -> Claim {
        Claim {
            policy,
            target_bps: target,
            min_bps: 0,
            demand_bps: None,
        }
    }

    #[test]
    fn equal_fair_sessions_split_evenly() {
        let c = [
            claim(Policy::Fair, 10_000 * M),
            claim(Policy::Fair, 10_000 * M),
        ];
        assert_eq!(allocate(300 * M, None, &c), vec![150 * M, 150 * M]);
    }

    #[test]
    fn high_gets_twice_fair() {
        let c = [
            claim(Policy::High, 10_000 * M),
            claim(Policy::Fair, 10_000 * M),
        ];
        assert_eq!(allocate(300 * M, None, &c), vec![200 * M, 100 * M]);
    }

    #[test]
    fn low_takes_only_what_fair_leaves() {
        let mut fair = claim(Policy::Fair, 10_000 * M);
        let low = Claim {
            min_bps: 10 * M,
            ..claim(Policy::Low, 10_000 * M)
        };
        assert_eq!(allocate(300 * M, None, &[fair, low]), vec![290 * M, 10 * M]);
        // A fair session its path holds to 100 Mbit/s leaves the rest to the scavenger.
        fair.demand_bps = Some(100 * M);
        assert_eq!(
            allocate(300 * M, None, &[fair, low]),
            vec![100 * M, 200 * M]
        );
        // ... within the background cap; what nobody takes is room for the fair one.
        assert_eq!(
            allocate(300 * M, Some(50 * M), &[fair, low]),
            vec![250 * M, 50 * M]
        );
        // A scavenger that its own demand holds near zero still gets what nobody uses.
        let idle_low = Claim {
            demand_bps: Some(M),
            ..low
        };
        assert_eq!(allocate(300 * M, None, &[idle_low]), vec![300 * M]);
    }

    #[test]
    fn fixed_comes_before_elastic_and_a_small_target_frees_the_rest() {
        let c = [
            claim(Policy::Fixed, 100 * M),
            claim(Policy::Fair, 50 * M),
            claim(Policy::Fair, 10_000 * M),
        ];
        assert_eq!(allocate(300 * M, None, &c), vec![100 * M, 50 * M, 150 * M]);
    }

    #[test]
    fn minimums_beyond_the_cap_scale_down() {
        let c = [
            Claim {
                min_bps: 300 * M,
                ..claim(Policy::Fair, 1000 * M)
            },
            Claim {
                min_bps: 100 * M,
                ..claim(Policy::Low, 1000 * M)
            },
        ];
        assert_eq!(allocate(200 * M, None, &c), vec![150 * M, 50 * M]);
    }

    fn any_policy() -> impl Strategy<Value = Policy> {
        prop_oneof![
            Just(Policy::Fixed),
            Just(Policy::High),
            Just(Policy::Fair),
            Just(Policy::Low)
        ]
    }

    fn any_claim() -> impl Strategy<Value = Claim> {
        (
            any_policy(),
            1..100_000 * M,
            0..2_000 * M,
            proptest::option::of(0..100_000 * M),
        )
            .prop_map(|(policy, target_bps, min_bps, demand_bps)| Claim {
                policy,
                target_bps,
                min_bps,
                demand_bps,
            })
    }

    proptest! {
        #[test]
        fn never_over_the_cap_or_a_target(
            cap in 0..100_000 * M,
            background in proptest::option::of(0..100_000 * M),
            claims in proptest::collection::vec(any_claim(), 0..12),
        ) {
            let got = allocate(cap, background, &claims);
            prop_assert_eq!(got.len(), claims.len());
            prop_assert!(got.iter().sum::<u64>() <= cap);
            for (g, c) in got.iter().zip(&claims) {
                prop_assert!(*g <= c.target_bps);
            }
        }

        #[test]
        fn a_cap_nobody_fills_leaves_everyone_their_want(
            claims in proptest::collection::vec(any_claim(), 1..12),
        ) {
            let want: u64 = claims.iter().map(|c| c.upper()).sum();
            let got = allocate(want, None, &claims);
            for (g, c) in got.iter().zip(&claims) {
                prop_assert_eq!(*g, c.upper());
            }
        }

        #[test]
        fn equal_fair_claims_get_equal_shares(n in 1usize..10, cap in 1..100_000 * M) {
            let claims = vec![claim(Policy::Fair, u64::MAX / 16); n];
            let got = allocate(cap, None, &claims);
            let (lo, hi) = (got.iter().min().unwrap(), got.iter().max().unwrap());
            prop_assert!(hi - lo <= 1);
            prop_assert!(cap - got.iter().sum::<u64>() <= n as u64);
        }
    }
}
