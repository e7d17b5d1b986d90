//! The one error type of this crate.

use std::io;

use thiserror::Error;

/// What went wrong setting up or running the emulator.
#[derive(Debug, Error)]
pub enum Error {
    /// A system call failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
    /// An external command (`ip`) failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// The settings make no sense.
    #[error("invalid configuration: {0}")]
    Config(String),
}

impl Error {
    /// An [`Error::Io`] from the last OS error.
    pub(crate) fn last_os(what: impl Into<String>) -> Error {
        Error::Io {
            what: what.into(),
            source: io::Error::last_os_error(),
        }
    }

    /// An [`Error::Io`] from `source`.
    pub(crate) fn io(what: impl Into<String>, source: io::Error) -> Error {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}
