//! What can go wrong reading a control message.

use std::io;

/// Why a control message could not be read. Every malformed input ends here: the decoders
/// never panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A line longer than the limit (the rest of the line is not read: close the
    /// connection).
    #[error("message over the {max}-byte limit")]
    TooLarge {
        /// The limit, in bytes, without the newline.
        max: usize,
    },
    /// Not JSON, or JSON of the wrong shape.
    #[error("malformed control message: {0}")]
    Malformed(String),
    /// The peer speaks another version of the protocol.
    #[error(
        "control protocol version {got} is not supported (this side speaks {supported}); \
         use a ferryctl of the same release as ferryd"
    )]
    Version {
        /// The version the message carries.
        got: u64,
        /// The version this side speaks.
        supported: u32,
    },
    /// Reading the stream failed (timeout, reset).
    #[error("reading the control socket: {0}")]
    Io(#[from] io::Error),
}
