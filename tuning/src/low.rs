//! `low`: a scavenger in the spirit of LEDBAT (RFC 6817).

use crate::delay::DelayConfig;

/// The `low` policy's parameters: one sixteenth of fair's queue share, so beside a fair
/// flow it takes about 6 % and beside a buffer-filling TCP flow (100 ms of queue) a few
/// hundred kbit/s, falling to the minimum rate; it never enters competitive mode.
pub fn config(mss: usize) -> DelayConfig {
    let fair = crate::fair::config(mss);
    DelayConfig {
        alpha_delay: fair.alpha_delay / 16.0,
        alpha_min: mss as f64 / 4.0,
        alpha_initial: fair.alpha_initial / 16.0,
        competitive: false,
        ..fair
    }
}
