//! Why a datagram was rejected.
//!
//! Every failure of the decoder, the trailer check and the replay window is one of these
//! values; nothing in the receive path panics on input. The state machines drop the datagram
//! and count the drop under [`Error::as_str`].

/// A decode, authentication or replay failure for one datagram.
///
/// Small and `Copy` so the per-packet path can return it without allocating.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Error {
    /// The datagram or body ends before a fixed-size field does.
    #[error("datagram truncated")]
    Truncated,
    /// A version this build does not speak; carries the version byte.
    #[error("unsupported protocol version {0}")]
    BadVersion(u8),
    /// A packet kind this build does not know; carries the kind byte.
    #[error("unknown packet kind {0}")]
    UnknownKind(u8),
    /// A flag bit that is not defined for the packet kind is set.
    #[error("unknown flag bits set")]
    UnknownFlags,
    /// A length field disagrees with the bytes actually present.
    #[error("length field does not match the body")]
    LengthMismatch,
    /// A data block reference names no valid byte range (empty, or past the end of `u64`).
    #[error("invalid block reference")]
    BadBlock,
    /// A NACK range is empty or runs past the end of `u64`.
    #[error("invalid NACK range")]
    BadNackRange,
    /// Feedback fields contradict each other (`cum_block` above `highest_block`).
    #[error("inconsistent feedback")]
    BadFeedback,
    /// A reserved field is not zero; a later version may give it a meaning.
    #[error("reserved field not zero")]
    Reserved,
    /// More NACK ranges than the 16-bit count can carry.
    #[error("too many NACK ranges")]
    TooManyNacks,
    /// The output buffer cannot hold what is being encoded or sealed.
    #[error("buffer too small")]
    BufferTooSmall,
    /// The AEAD tag did not verify: the datagram was forged, corrupted or sealed with
    /// another key.
    #[error("authentication failed")]
    Authentication,
    /// The CRC32 trailer of an unencrypted (`none`) datagram did not match: corrupted.
    #[error("checksum mismatch")]
    Checksum,
    /// The packet number was seen before or is older than the replay window.
    #[error("replayed or too old packet number")]
    Replay,
    /// A cipher name that is not `none`, `aes128` or `aes256`.
    #[error("unknown cipher (expected none, aes128 or aes256)")]
    BadCipher,
}

impl Error {
    /// How many distinct [`Error::index`] values there are, to size per-reason counters.
    pub const COUNT: usize = 15;

    /// A stable short name, for drop counters and logs; never changes once released.
    pub const fn as_str(&self) -> &'static str {
        match self {
            Error::Truncated => "truncated",
            Error::BadVersion(_) => "bad_version",
            Error::UnknownKind(_) => "unknown_kind",
            Error::UnknownFlags => "unknown_flags",
            Error::LengthMismatch => "length_mismatch",
            Error::BadBlock => "bad_block",
            Error::BadNackRange => "bad_nack_range",
            Error::BadFeedback => "bad_feedback",
            Error::Reserved => "reserved",
            Error::TooManyNacks => "too_many_nacks",
            Error::BufferTooSmall => "buffer_too_small",
            Error::Authentication => "auth",
            Error::Checksum => "checksum",
            Error::Replay => "replay",
            Error::BadCipher => "bad_cipher",
        }
    }

    /// Every error, one of each variant (payloads zero), in `index` order.
    pub const ALL: [Error; Error::COUNT] = [
        Error::Truncated,
        Error::BadVersion(0),
        Error::UnknownKind(0),
        Error::UnknownFlags,
        Error::LengthMismatch,
        Error::BadBlock,
        Error::BadNackRange,
        Error::BadFeedback,
        Error::Reserved,
        Error::TooManyNacks,
        Error::BufferTooSmall,
        Error::Authentication,
        Error::Checksum,
        Error::Replay,
        Error::BadCipher,
    ];

    /// A dense index in `0..COUNT`, so drop counters can be a plain array instead of a map.
    pub const fn index(&self) -> usize {
        match self {
            Error::Truncated => 0,
            Error::BadVersion(_) => 1,
            Error::UnknownKind(_) => 2,
            Error::UnknownFlags => 3,
            Error::LengthMismatch => 4,
            Error::BadBlock => 5,
            Error::BadNackRange => 6,
            Error::BadFeedback => 7,
            Error::Reserved => 8,
            Error::TooManyNacks => 9,
            Error::BufferTooSmall => 10,
            Error::Authentication => 11,
            Error::Checksum => 12,
            Error::Replay => 13,
            Error::BadCipher => 14,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Error;

    #[test]
    fn index_is_dense_and_names_unique() {
        for (i, e) in Error::ALL.iter().enumerate() {
            assert_eq!(e.index(), i);
        }
        let mut names: Vec<_> = Error::ALL.iter().map(Error::as_str).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), Error::COUNT);
    }
}
