//! placeholder (being written)
/// Stable error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    /// Placeholder.
    Internal,
}
