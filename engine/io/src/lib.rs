//! ferry-io: the engine's contact with the kernel — io_uring UDP with GSO/GRO, file I/O and
//! CPU placement.
//!
//! Empty until the engine issue lands; it exists now so the crate graph and its dependency
//! rules (this crate depends on none of ferry's crates) are fixed and checked from the start.
#![warn(missing_docs)]
