//! `high`: like `fair`, but claims about twice a fair share under congestion.

use crate::delay::DelayConfig;

/// The `high` policy's parameters: twice fair's queue share (FAST's equilibrium rate is
/// proportional to α, so twice the rate of a fair flow), and twice its increase when
/// competing with TCP.
pub fn config(mss: usize) -> DelayConfig {
    let fair = crate::fair::config(mss);
    DelayConfig {
        alpha_delay: 2.0 * fair.alpha_delay,
        alpha_min: 2.0 * fair.alpha_min,
        alpha_initial: 2.0 * fair.alpha_initial,
        // Twice a fair flow's claim: two thirds against one competitor.
        competitive_share: 2.0 / 3.0,
        ..fair
    }
}
