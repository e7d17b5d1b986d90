//! `fair`: share evenly with other flows, hold a fair share against TCP.

use crate::delay::DelayConfig;

/// Queue a fair flow keeps filled at the bottleneck: 5 ms of its capacity, enough to
/// measure above timer and scheduling noise, small beside the buffers of real paths.
pub const ALPHA_DELAY: f64 = 0.005;

/// Least α in datagrams, so that the queue does not run dry between bursts of large (jumbo
/// or GSO-sized) datagrams.
pub const ALPHA_DATAGRAMS: f64 = 4.0;

/// The `fair` policy's parameters for datagrams of `mss` payload bytes.
pub fn config(mss: usize) -> DelayConfig {
    DelayConfig {
        alpha_delay: ALPHA_DELAY,
        alpha_min: ALPHA_DATAGRAMS * mss as f64,
        alpha_initial: 256.0 * 1024.0,
        gamma: 0.5,
        competitive: true,
        // An even split with one buffer-filling competitor.
        competitive_share: 0.5,
        mss: mss as f64,
        initial_rate: 12.5e6,
    }
}
