//! `fair`: share evenly with other flows, hold a fair share against TCP.

use crate::delay::DelayConfig;

/// Bytes a fair flow keeps queued at the bottleneck, at least: 256 KiB is 2 ms at 1 Gbit/s
/// and 20 ms at 100 Mbit/s — enough to measure above timer and scheduling noise, small
/// beside the buffers of real paths.
pub const ALPHA: f64 = 256.0 * 1024.0;

/// ... and at least this many datagrams, so that the queue does not run dry between the
/// bursts of large (jumbo or GSO-sized) datagrams.
pub const ALPHA_DATAGRAMS: f64 = 8.0;

/// The `fair` policy's parameters for datagrams of `mss` payload bytes.
pub fn config(mss: usize) -> DelayConfig {
    DelayConfig {
        alpha: ALPHA.max(ALPHA_DATAGRAMS * mss as f64),
        gamma: 0.5,
        competitive: true,
        competitive_increase: 1.0,
        competitive_beta: 0.5,
        mss: mss as f64,
        initial_rate: 12.5e6,
    }
}
