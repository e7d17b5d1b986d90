//! `high`: like `fair`, but claims about twice a fair share under congestion.

use crate::delay::DelayConfig;

/// The `high` policy's parameters: twice fair's queue share (FAST's equilibrium rate is
/// proportional to α, so twice the rate of a fair flow), and twice its increase when
/// competing with TCP.
pub fn config(mss: usize) -> DelayConfig {
    let fair = crate::fair::config(mss);
    DelayConfig {
        alpha: 2.0 * fair.alpha,
        competitive_increase: 2.0 * fair.competitive_increase,
        competitive_beta: 0.7,
        ..fair
    }
}
