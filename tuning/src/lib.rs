//! ferry-tuning: rate control for ferry, pure and deterministic.
//!
//! - [`Controller`]: the trait every policy implements (events in with `now`, a pacing rate
//!   and a window out); [`PolicyController`] picks one of the four policies at run time.
//! - Policies side by side: [`fixed`], [`fair`], [`high`], [`low`]; the last three share
//!   the delay-based engine in [`delay`].
//! - [`Pacer`] turns a rate into departure times; [`HostCap`] caps a whole host, and
//!   [`share::allocate`] divides such a cap among sessions by policy.
//!
//! Nothing here reads a clock: `now` is always an argument.
#![warn(missing_docs)]

pub mod cap;
pub mod controller;
pub mod delay;
pub mod fair;
pub mod filter;
pub mod fixed;
pub mod high;
pub mod low;
pub mod pacer;
pub mod policy;
pub mod share;
pub mod time;

pub use cap::{CapLease, HostCap};
pub use controller::{Controller, PathSignal, Policy, RateLimits};
pub use pacer::Pacer;
pub use policy::PolicyController;
pub use time::Timestamp;
