//! ferry-ctl: the messages of ferryd's control socket, as plain data, and the `ferryctl`
//! binary. It never depends on the engine.
//!
//! Empty until the ferryctl issue lands.
#![warn(missing_docs)]
