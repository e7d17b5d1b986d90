//! ferryd's configuration: one TOML file, written by `ferryd init DIR` and read by
//! `ferryd run --config DIR/ferryd.toml`.
//!
//! Relative paths in the file are relative to the directory that holds it, so a server
//! directory can be moved as a whole.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ferry_tuning::Policy;
use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::{Ed25519Keypair, PrivateKey};

/// The default TCP (SSH control) and UDP (data) port.
pub const DEFAULT_PORT: u16 = 33001;
/// The default control socket.
pub const DEFAULT_CTL_SOCKET: &str = "/run/ferry/ctl.sock";
/// The config file's name inside a server directory.
pub const CONFIG_FILE: &str = "ferryd.toml";

/// Why a configuration could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The TOML is malformed or a value is out of range.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// `ferryd init` found an existing server directory.
    #[error(
        "{path} already exists; ferryd init never overwrites a configuration \
         (choose another directory or remove the old files first)"
    )]
    Exists {
        /// The file that exists.
        path: PathBuf,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ConfigError + '_ {
    move |source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// One user's settings (`[users.NAME]`).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's docroot; the server's `docroot` when absent.
    #[serde(default)]
    pub docroot: Option<PathBuf>,
    /// Keys that log in as this user, besides `authorized_keys` lines whose comment names
    /// the user: fingerprints (`SHA256:...`) or OpenSSH public key lines.
    #[serde(default)]
    pub keys: Vec<String>,
}

/// ferryd's settings.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FerrydConfig {
    /// Address both sockets bind.
    pub listen: IpAddr,
    /// TCP port of the SSH control channel (0 picks a free one).
    pub tcp_port: u16,
    /// UDP port of the data plane (0 picks a free one).
    pub udp_port: u16,
    /// The server's ed25519 host key (OpenSSH private key format).
    pub host_key: PathBuf,
    /// Public keys allowed to log in, OpenSSH format; each key's comment names its user.
    pub authorized_keys: PathBuf,
    /// The docroot of users without one of their own.
    pub docroot: PathBuf,
    /// Per-user settings.
    pub users: BTreeMap<String, UserConfig>,
    /// Target rate when the client names none, bits per second (`"100g"` in the file).
    #[serde(with = "rate_serde")]
    pub default_target_rate: u64,
    /// The most any session may ask for, bits per second.
    #[serde(with = "rate_serde")]
    pub max_target_rate: u64,
    /// Minimum rate when the client names none, bits per second.
    #[serde(with = "rate_serde")]
    pub min_rate: u64,
    /// Rate policy when the client names none: fixed, high, fair or low.
    pub policy: String,
    /// Payload bytes per datagram when the client names none.
    pub block_size: u32,
    /// CPU cores for the data plane: one pinned data thread per core, each with its own
    /// UDP socket (empty: every core this process may run on).
    pub cores: Vec<usize>,
    /// The control socket that ferryctl talks to.
    pub ctl_socket: PathBuf,
    /// Host-wide caps (`[caps]`), shared by all sessions; `ferryctl caps` changes them live.
    pub caps: CapsConfig,
    /// The transfer log: one line per session start and end (empty: none).
    pub transfer_log: PathBuf,
    /// Where to serve Prometheus metrics (`"127.0.0.1:9464"`); off when absent.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// ferryd's own log on stderr: `text` or `json`.
    pub log_format: crate::logging::LogFormat,
}

/// Host-wide caps in bits per second (`"300m"` in the file); absent or `"none"`: uncapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CapsConfig {
    /// All data this host receives.
    #[serde(with = "opt_rate_serde", skip_serializing_if = "Option::is_none")]
    pub inbound: Option<u64>,
    /// All data this host sends.
    #[serde(with = "opt_rate_serde", skip_serializing_if = "Option::is_none")]
    pub outbound: Option<u64>,
    /// All `low`-policy sessions together.
    #[serde(with = "opt_rate_serde", skip_serializing_if = "Option::is_none")]
    pub background: Option<u64>,
}

impl CapsConfig {
    /// As the data plane takes them.
    pub fn settings(&self) -> crate::caps::CapSettings {
        crate::caps::CapSettings {
            inbound_bps: self.inbound,
            outbound_bps: self.outbound,
            background_bps: self.background,
        }
    }
}

impl Default for FerrydConfig {
    fn default() -> Self {
        FerrydConfig {
            listen: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            tcp_port: DEFAULT_PORT,
            udp_port: DEFAULT_PORT,
            host_key: PathBuf::from("host_key"),
            authorized_keys: PathBuf::from("authorized_keys"),
            docroot: PathBuf::from("docroot"),
            users: BTreeMap::new(),
            default_target_rate: 100_000_000_000,
            max_target_rate: 100_000_000_000,
            min_rate: 0,
            policy: "fair".to_string(),
            block_size: 8192,
            cores: Vec::new(),
            ctl_socket: PathBuf::from(DEFAULT_CTL_SOCKET),
            caps: CapsConfig::default(),
            transfer_log: PathBuf::from("transfers.log"),
            metrics_listen: None,
            log_format: crate::logging::LogFormat::Text,
        }
    }
}

impl FerrydConfig {
    /// Reads `path`, checks the values and makes every relative path relative to the
    /// directory that holds the file.
    pub fn load(path: &Path) -> Result<FerrydConfig, ConfigError> {
        let text = fs::read_to_string(path).map_err(io_err(path))?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let base = base.canonicalize().map_err(io_err(base))?;
        FerrydConfig::parse(&text, &base).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses TOML text, resolving relative paths against `base`.
    pub fn parse(text: &str, base: &Path) -> Result<FerrydConfig, String> {
        let mut c: FerrydConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.host_key = base.join(&c.host_key);
        c.authorized_keys = base.join(&c.authorized_keys);
        c.docroot = base.join(&c.docroot);
        c.ctl_socket = base.join(&c.ctl_socket);
        if !c.transfer_log.as_os_str().is_empty() {
            c.transfer_log = base.join(&c.transfer_log);
        }
        for (name, user) in c.users.iter_mut() {
            if !valid_user_name(name) {
                return Err(format!(
                    "[users.{name}]: a user name is letters, digits, '.', '_' and '-' only"
                ));
            }
            if let Some(d) = &user.docroot {
                user.docroot = Some(base.join(d));
            }
        }
        c.policy_value()?;
        if c.max_target_rate == 0 {
            return Err("max_target_rate must be above 0".into());
        }
        if c.default_target_rate == 0 {
            return Err("default_target_rate must be above 0".into());
        }
        if !(512..=65_000).contains(&c.block_size) {
            return Err(format!(
                "block_size {} is outside 512..=65000 bytes",
                c.block_size
            ));
        }
        Ok(c)
    }

    /// The default policy as a value.
    pub fn policy_value(&self) -> Result<Policy, String> {
        self.policy.parse().map_err(|_| {
            format!(
                "policy {:?} is not one of fixed, high, fair, low",
                self.policy
            )
        })
    }

    /// The docroot of `user`: its own if the config names one, else the server's.
    pub fn docroot_of(&self, user: &str) -> &Path {
        self.users
            .get(user)
            .and_then(|u| u.docroot.as_deref())
            .unwrap_or(&self.docroot)
    }

    /// Reads the host key.
    pub fn load_host_key(&self) -> Result<PrivateKey, ConfigError> {
        let text = fs::read_to_string(&self.host_key).map_err(io_err(&self.host_key))?;
        PrivateKey::from_openssh(text.as_bytes()).map_err(|e| ConfigError::Invalid {
            path: self.host_key.clone(),
            message: format!("not an OpenSSH private key: {e}"),
        })
    }
}

/// Whether `name` can be a ferry user name: 1 to 64 of `[A-Za-z0-9._-]`, not starting with
/// `-` or `.`.
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['-', '.'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Parses a rate in bits per second (`800k`, `500m`, `10g`): one grammar for ferryd's
/// config, `ferry -l` and `ferryctl set-rate`, kept in `ferry-ctl`, which ferryctl can link
/// without the engine.
pub use ferry_ctl::parse_rate;

/// Writes a rate the way [`parse_rate`] reads it, with the largest exact suffix.
pub fn format_rate(bps: u64) -> String {
    for (suffix, mult) in [
        ("t", 1_000_000_000_000u64),
        ("g", 1_000_000_000),
        ("m", 1_000_000),
    ] {
        if bps >= mult && bps.is_multiple_of(mult) {
            return format!("{}{suffix}", bps / mult);
        }
    }
    if bps >= 1000 && bps.is_multiple_of(1000) {
        return format!("{}k", bps / 1000);
    }
    bps.to_string()
}

/// Rates in the file are strings (`"10g"`) or plain integers (bits per second).
mod rate_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_rate(*v))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        match Raw::deserialize(d)? {
            Raw::Int(n) => Ok(n),
            Raw::Str(s) => super::parse_rate(&s).map_err(serde::de::Error::custom),
        }
    }
}

/// An optional rate: absent, `"none"` or 0 is `None`.
mod opt_rate_serde {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(r) => s.serialize_str(&super::format_rate(*r)),
            None => s.serialize_str("none"),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u64),
            Str(String),
        }
        let rate = match Raw::deserialize(d)? {
            Raw::Int(n) => n,
            Raw::Str(s) if s.trim() == "none" => 0,
            Raw::Str(s) => super::parse_rate(&s).map_err(serde::de::Error::custom)?,
        };
        Ok((rate > 0).then_some(rate))
    }
}

const TEMPLATE: &str = r#"# ferryd configuration, written by `ferryd init`.
# Relative paths are relative to this file's directory.

listen = "0.0.0.0"
tcp_port = 33001          # SSH control channel
udp_port = 33001          # data

host_key = "host_key"
# One OpenSSH public key per line; the key's comment is the user name
# (up to an '@': "alice@laptop" logs in as alice).
authorized_keys = "authorized_keys"
docroot = "docroot"       # users without a docroot of their own share this one

# Rates in bits per second: 800k, 500m, 10g.
default_target_rate = "100g"  # fair/high/low find the path's capacity below it
max_target_rate = "100g"
min_rate = "0"
policy = "fair"           # fixed | high | fair | low
block_size = 8192         # payload bytes per datagram when the client names none

cores = []                # one pinned data thread per core; empty: every available core
ctl_socket = "/run/ferry/ctl.sock"
transfer_log = "transfers.log"  # one line per session start and end; "" for none
# metrics_listen = "127.0.0.1:9464"  # Prometheus text metrics at /metrics (off by default)
log_format = "text"       # ferryd's log on stderr: text | json (RUST_LOG filters it)

# Host-wide caps, shared by every session on every core ("none": uncapped);
# `ferryctl caps` changes them while ferryd runs.
[caps]
inbound = "none"          # all uploads to this host together
outbound = "none"         # all downloads from it together
background = "none"       # all low-policy sessions together

# Per-user settings: a docroot of their own, and keys that log in as them besides
# authorized_keys lines whose comment names them (fingerprints or public key lines).
# [users.alice]
# docroot = "/srv/ferry/alice"
# keys = ["SHA256:..."]
"#;

/// What `ferryd init` wrote.
#[derive(Debug)]
pub struct InitReport {
    /// The config file.
    pub config: PathBuf,
    /// The host key's public half, one OpenSSH line.
    pub host_public_key: String,
    /// The host key's SHA-256 fingerprint.
    pub fingerprint: String,
}

/// `ferryd init DIR`: a config, a fresh ed25519 host key, an empty authorized_keys and a
/// docroot. Refuses to overwrite any existing file.
pub fn init(dir: &Path) -> Result<InitReport, ConfigError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let config = dir.join(CONFIG_FILE);
    let host_key = dir.join("host_key");
    let host_pub = dir.join("host_key.pub");
    let authorized = dir.join("authorized_keys");
    for p in [&config, &host_key, &host_pub, &authorized] {
        if fs::symlink_metadata(p).is_ok() {
            return Err(ConfigError::Exists { path: p.clone() });
        }
    }

    let mut seed = [0u8; 32];
    aws_lc_rs::rand::fill(&mut seed).map_err(|_| ConfigError::Invalid {
        path: host_key.clone(),
        message: "the system random number generator failed".into(),
    })?;
    let mut key = PrivateKey::from(Ed25519Keypair::from_seed(&seed));
    seed.fill(0);
    key.set_comment("ferryd host key");
    let pem = key
        .to_openssh(LineEnding::LF)
        .map_err(|e| ConfigError::Invalid {
            path: host_key.clone(),
            message: e.to_string(),
        })?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| ConfigError::Invalid {
            path: host_pub.clone(),
            message: e.to_string(),
        })?;

    write_new(&host_key, pem.as_bytes(), 0o600)?;
    write_new(&host_pub, format!("{public}\n").as_bytes(), 0o644)?;
    write_new(&authorized, b"", 0o600)?;
    let docroot = dir.join("docroot");
    fs::create_dir_all(&docroot).map_err(io_err(&docroot))?;
    // The config goes last: its presence means the directory is complete.
    write_new(&config, TEMPLATE.as_bytes(), 0o644)?;
    Ok(InitReport {
        config,
        host_public_key: public,
        fingerprint: key
            .public_key()
            .fingerprint(russh::keys::HashAlg::Sha256)
            .to_string(),
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), ConfigError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| {
            if e.kind() == io::ErrorKind::AlreadyExists {
                ConfigError::Exists {
                    path: path.to_path_buf(),
                }
            } else {
                ConfigError::Io {
                    path: path.to_path_buf(),
                    source: e,
                }
            }
        })?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(io_err(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("800k"), Ok(800_000));
        assert_eq!(parse_rate("500m"), Ok(500_000_000));
        assert_eq!(parse_rate("500M"), Ok(500_000_000));
        assert_eq!(parse_rate("10g"), Ok(10_000_000_000));
        assert_eq!(parse_rate("1.5g"), Ok(1_500_000_000));
        assert_eq!(parse_rate("2t"), Ok(2_000_000_000_000));
        assert_eq!(parse_rate("250000"), Ok(250_000));
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate(" 100mbps "), Ok(100_000_000));
        for bad in [
            "",
            "m",
            "-5m",
            "10x",
            "1e9",
            "abc",
            "1.2.3g",
            "99999999999999999999t",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn rates_format_back() {
        for v in [
            0,
            1,
            999,
            800_000,
            500_000_000,
            10_000_000_000,
            1_500_000_000,
            123_456,
        ] {
            assert_eq!(parse_rate(&format_rate(v)), Ok(v));
        }
        assert_eq!(format_rate(10_000_000_000), "10g");
        assert_eq!(format_rate(1_500_000_000), "1500m");
    }

    #[test]
    fn defaults_and_relative_paths() {
        let base = Path::new("/srv/ferry");
        let c = FerrydConfig::parse("", base).unwrap();
        assert_eq!(c.tcp_port, 33001);
        assert_eq!(c.udp_port, 33001);
        assert_eq!(c.docroot, PathBuf::from("/srv/ferry/docroot"));
        assert_eq!(c.host_key, PathBuf::from("/srv/ferry/host_key"));
        assert_eq!(c.ctl_socket, PathBuf::from("/run/ferry/ctl.sock"));
        assert_eq!(c.policy_value(), Ok(Policy::Fair));
    }

    #[test]
    fn users_and_rates_from_toml() {
        let text = r#"
            tcp_port = 0
            max_target_rate = "2g"
            min_rate = 1000000
            policy = "low"
            [users.alice]
            docroot = "alice"
            keys = ["SHA256:abc"]
            [users.bob]
        "#;
        let c = FerrydConfig::parse(text, Path::new("/d")).unwrap();
        assert_eq!(c.tcp_port, 0);
        assert_eq!(c.max_target_rate, 2_000_000_000);
        assert_eq!(c.min_rate, 1_000_000);
        assert_eq!(c.docroot_of("alice"), Path::new("/d/alice"));
        assert_eq!(c.docroot_of("bob"), Path::new("/d/docroot"));
        assert_eq!(c.docroot_of("carol"), Path::new("/d/docroot"));
        assert_eq!(c.users["alice"].keys, vec!["SHA256:abc".to_string()]);
    }

    #[test]
    fn bad_configs_are_refused() {
        let base = Path::new("/d");
        assert!(FerrydConfig::parse("policy = \"fast\"", base).is_err());
        assert!(FerrydConfig::parse("max_target_rate = \"lots\"", base).is_err());
        assert!(FerrydConfig::parse("unknown_key = 1", base).is_err());
        assert!(FerrydConfig::parse("[users.\"../x\"]", base).is_err());
        assert!(FerrydConfig::parse("block_size = 10", base).is_err());
    }

    #[test]
    fn user_names() {
        assert!(valid_user_name("accept"));
        assert!(valid_user_name("a.b_c-1"));
        for bad in ["", "-x", ".x", "a/b", "a b", "a@b", "é"] {
            assert!(!valid_user_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn init_writes_a_complete_directory_and_refuses_to_overwrite() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("srv");
        let report = init(&dir).unwrap();
        assert!(report.fingerprint.starts_with("SHA256:"));
        assert!(report.host_public_key.starts_with("ssh-ed25519 "));
        let mode = |p: &str| fs::metadata(dir.join(p)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("host_key"), 0o600);
        assert_eq!(mode("authorized_keys"), 0o600);
        assert!(dir.join("docroot").is_dir());
        assert_eq!(fs::read(dir.join("authorized_keys")).unwrap(), b"");

        let c = FerrydConfig::load(&dir.join(CONFIG_FILE)).unwrap();
        let canon = dir.canonicalize().unwrap();
        assert_eq!(c.docroot, canon.join("docroot"));
        assert_eq!(c.default_target_rate, 100_000_000_000);
        let key = c.load_host_key().unwrap();
        assert_eq!(key.algorithm(), russh::keys::Algorithm::Ed25519);
        assert_eq!(
            key.public_key()
                .fingerprint(russh::keys::HashAlg::Sha256)
                .to_string(),
            report.fingerprint
        );

        let before = fs::read(dir.join("host_key")).unwrap();
        match init(&dir) {
            Err(ConfigError::Exists { .. }) => {}
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(fs::read(dir.join("host_key")).unwrap(), before);
    }
}
