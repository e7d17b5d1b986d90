//! The control plane: an SSH channel (russh) between `ferry` and `ferryd`.
//!
//! ferryd embeds its own SSH server ([`server`]) with its own host key and authorized_keys;
//! no system sshd is involved. The client ([`client`]) logs in with a key file or ssh-agent
//! and checks the host key against known_hosts ([`known_hosts`]). Over the channel the two
//! agree, in JSON lines ([`messages`]), on the user's docroot, the manifest, the UDP port,
//! cipher, rates and a fresh random session secret; then the data plane takes over.
//!
//! tokio runs on the control thread only: sessions reach the data plane as plain
//! [`crate::data::SessionSpec`] values.

pub mod authorized_keys;
pub mod claims;
pub mod client;
pub mod errors;
pub mod known_hosts;
pub mod messages;
pub mod server;

pub use client::{ClientOptions, Control};
pub use errors::{ControlError, ErrorCode};
pub use messages::{Done, DownloadRequest, Manifest, Ready, TransferParams, UploadRequest};
pub use server::{ServeError, ServerHandle, SessionStarter, serve};

/// The SSH subsystem (and exec command) that speaks the ferry control protocol.
pub const SUBSYSTEM: &str = "ferry";
