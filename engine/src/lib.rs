//! ferry-engine: the thread-per-core glue between the sans-IO core (`ferry-proto`), the kernel
//! (`ferry-io`) and the control plane. `ferryd` and `ferry` are built here.
//!
//! Empty until the engine issue lands; only this crate may know executors, rings and sockets
//! together.
#![warn(missing_docs)]
