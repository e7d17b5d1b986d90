//! The client's record of server host keys, in OpenSSH's known_hosts format.
//!
//! A line is `HOSTS KEYTYPE BASE64 [COMMENT]`, HOSTS a comma-separated list of patterns:
//! `host` for port 22, `[host]:port` otherwise, `*`/`?` wildcards, `!` negation, or hashed
//! (`|1|salt|hmac`). `@revoked` lines refuse a key; `@cert-authority` lines are skipped
//! (ferry does not use host certificates).

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::Path;

use data_encoding::BASE64;
use russh::keys::{HashAlg, PublicKey};

/// What known_hosts says about a host's key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HostKeyStatus {
    /// The key is recorded for this host.
    Known,
    /// Nothing is recorded for this host.
    Unknown,
    /// Another key is recorded for this host (or this key is revoked): refuse.
    Changed {
        /// The 1-based line of the recorded key.
        line: usize,
        /// The recorded key's type, when it differs from the offered one.
        other_type: Option<String>,
    },
}

/// How `host:port` is written in known_hosts: `host` for port 22, else `[host]:port`.
pub fn host_pattern(host: &str, port: u16) -> String {
    if port == 22 && !host.contains(':') {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// The key's SHA-256 fingerprint as OpenSSH prints it (`SHA256:...`).
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// Looks `host:port` up in the file at `path` (a missing file knows no host).
pub fn check(path: &Path, host: &str, port: u16, key: &PublicKey) -> io::Result<HostKeyStatus> {
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(HostKeyStatus::Unknown),
        Err(e) => return Err(e),
    };
    Ok(check_text(&text, host, port, key))
}

/// [`check`] on the file's contents.
pub fn check_text(text: &str, host: &str, port: u16, key: &PublicKey) -> HostKeyStatus {
    let name = host_pattern(host, port);
    let mut known = false;
    let mut changed = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let mut first = fields.next().unwrap_or("");
        let mut revoked = false;
        if let Some(marker) = first.strip_prefix('@') {
            match marker {
                "revoked" => revoked = true,
                _ => continue,
            }
            first = fields.next().unwrap_or("");
        }
        let (Some(_keytype), Some(b64)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !hosts_match(first, &name) && !revoked {
            continue;
        }
        let Ok(recorded) = russh::keys::parse_public_key_base64(b64) else {
            continue;
        };
        let same = recorded.key_data() == key.key_data();
        if revoked {
            if same {
                return HostKeyStatus::Changed {
                    line: line_no,
                    other_type: None,
                };
            }
            continue;
        }
        if same {
            known = true;
        } else if changed.is_none() {
            let other_type = (recorded.algorithm() != key.algorithm())
                .then(|| recorded.algorithm().as_str().to_string());
            changed = Some(HostKeyStatus::Changed {
                line: line_no,
                other_type,
            });
        }
    }
    // As in OpenSSH, a matching line wins over other keys recorded for the host; a key of
    // another type alone refuses too, since ferryd has a single host key.
    if known {
        HostKeyStatus::Known
    } else {
        changed.unwrap_or(HostKeyStatus::Unknown)
    }
}

/// Appends `host:port key` to the file at `path`, creating it (and its directory) if needed.
pub fn append(path: &Path, host: &str, port: u16, key: &PublicKey) -> io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut f = OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)?;
    let mut needs_newline = false;
    if f.seek(SeekFrom::End(-1)).is_ok() {
        let mut last = [0u8; 1];
        f.read_exact(&mut last)?;
        needs_newline = last[0] != b'\n';
    }
    let mut key = key.clone();
    key.set_comment("");
    let openssh = key.to_openssh().map_err(io::Error::other)?;
    let mut line = String::new();
    if needs_newline {
        line.push('\n');
    }
    line.push_str(&host_pattern(host, port));
    line.push(' ');
    line.push_str(openssh.trim());
    line.push('\n');
    f.write_all(line.as_bytes())?;
    f.sync_all()
}

/// Whether a comma-separated pattern list matches `name`: a negated match wins.
fn hosts_match(patterns: &str, name: &str) -> bool {
    let mut matched = false;
    for p in patterns.split(',') {
        if let Some(neg) = p.strip_prefix('!') {
            if glob(neg.as_bytes(), name.as_bytes()) {
                return false;
            }
        } else if p.starts_with("|1|") {
            matched |= hashed_match(p, name);
        } else {
            matched |= glob(p.as_bytes(), name.as_bytes());
        }
    }
    matched
}

/// `|1|base64(salt)|base64(hmac_sha1(salt, name))`.
fn hashed_match(entry: &str, name: &str) -> bool {
    use aws_lc_rs::hmac;
    let mut parts = entry.split('|').skip(2);
    let (Some(salt), Some(hash)) = (parts.next(), parts.next()) else {
        return false;
    };
    let (Ok(salt), Ok(hash)) = (
        BASE64.decode(salt.as_bytes()),
        BASE64.decode(hash.as_bytes()),
    ) else {
        return false;
    };
    let key = hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt);
    hmac::verify(&key, name.as_bytes(), &hash).is_ok()
}

/// `*` and `?` wildcards, case-insensitive (host names), as OpenSSH's `match_pattern`.
fn glob(p: &[u8], s: &[u8]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi].eq_ignore_ascii_case(&s[si])) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use russh::keys::ssh_key::private::{Ed25519Keypair, PrivateKey};

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
            .public_key()
            .clone()
    }

    fn b64(k: &PublicKey) -> String {
        k.to_openssh().unwrap()
    }

    #[test]
    fn patterns() {
        assert_eq!(host_pattern("example.org", 22), "example.org");
        assert_eq!(host_pattern("127.0.0.1", 33001), "[127.0.0.1]:33001");
        assert_eq!(host_pattern("::1", 22), "[::1]:22");
        assert!(glob(b"*.example.org", b"a.example.org"));
        assert!(glob(b"h?st", b"HOST"));
        assert!(!glob(b"*.example.org", b"example.org"));
        assert!(glob(b"[10.0.0.*]:33001", b"[10.0.0.7]:33001"));
        assert!(hosts_match("a,b,[c]:1", "[c]:1"));
        assert!(!hosts_match("*,!bad", "bad"));
        assert!(hosts_match("*,!bad", "good"));
    }

    #[test]
    fn unknown_known_changed() {
        let k1 = key(1);
        let k2 = key(2);
        let text = format!("# comment\n\n[h]:33001 {}\nother {}\n", b64(&k1), b64(&k2));
        assert_eq!(check_text(&text, "h", 33001, &k1), HostKeyStatus::Known);
        assert_eq!(check_text(&text, "h", 22, &k1), HostKeyStatus::Unknown);
        assert_eq!(
            check_text(&text, "nobody", 33001, &k1),
            HostKeyStatus::Unknown
        );
        assert_eq!(
            check_text(&text, "h", 33001, &k2),
            HostKeyStatus::Changed {
                line: 3,
                other_type: None
            }
        );
        assert_eq!(check_text(&text, "other", 22, &k2), HostKeyStatus::Known);
    }

    #[test]
    fn revoked_keys_are_refused() {
        let k1 = key(1);
        let text = format!("@revoked * {}\nh {}\n", b64(&k1), b64(&k1));
        assert!(matches!(
            check_text(&text, "h", 22, &k1),
            HostKeyStatus::Changed { line: 1, .. }
        ));
    }

    #[test]
    fn malformed_lines_are_skipped() {
        let k1 = key(1);
        let text = format!(
            "garbage\nh ssh-ed25519 !!!notbase64\n@cert-authority * {}\nh {}\n",
            b64(&key(3)),
            b64(&k1)
        );
        assert_eq!(check_text(&text, "h", 22, &k1), HostKeyStatus::Known);
    }

    #[test]
    fn hashed_hosts_match() {
        use aws_lc_rs::hmac;
        let k1 = key(1);
        let salt = [9u8; 20];
        let tag = hmac::sign(
            &hmac::Key::new(hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, &salt),
            b"[srv]:33001",
        );
        let entry = format!(
            "|1|{}|{}",
            BASE64.encode(&salt),
            BASE64.encode(tag.as_ref())
        );
        let text = format!("{entry} {}\n", b64(&k1));
        assert_eq!(check_text(&text, "srv", 33001, &k1), HostKeyStatus::Known);
        assert_eq!(check_text(&text, "srv", 33002, &k1), HostKeyStatus::Unknown);
        assert!(matches!(
            check_text(&text, "srv", 33001, &key(2)),
            HostKeyStatus::Changed { .. }
        ));
    }

    #[test]
    fn append_then_check() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("sub/known_hosts");
        let k1 = key(1);
        assert_eq!(
            check(&path, "h", 4000, &k1).unwrap(),
            HostKeyStatus::Unknown
        );
        append(&path, "h", 4000, &k1).unwrap();
        assert_eq!(check(&path, "h", 4000, &k1).unwrap(), HostKeyStatus::Known);
        // A file that does not end in a newline gets one before the new line.
        fs::write(&path, fs::read_to_string(&path).unwrap().trim_end()).unwrap();
        append(&path, "g", 22, &key(2)).unwrap();
        let text = fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 2);
        assert!(text.lines().nth(1).unwrap().starts_with("g ssh-ed25519 "));
        assert!(text.starts_with("[h]:4000 ssh-ed25519 "));
        assert_eq!(
            check(&path, "g", 22, &key(2)).unwrap(),
            HostKeyStatus::Known
        );
        assert!(fingerprint(&k1).starts_with("SHA256:"));
    }
}
