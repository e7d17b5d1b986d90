//! Which keys log in as which ferry user.
//!
//! Two sources, read at every login so that edits need no restart:
//! - `authorized_keys` (OpenSSH format, one key per line): the key's comment names the user,
//!   up to the first `@` (`alice@laptop` logs in as `alice`, ssh-keygen's default comment).
//!   Lines with OpenSSH options (`from="..."`, `command="..."`) are ignored, since ferryd
//!   would not enforce them; a line without a usable user name is ignored too.
//! - `[users.NAME] keys = [...]` in ferryd.toml: fingerprints (`SHA256:...`) or public key
//!   lines that log in as NAME whatever their comment.
//!
//! The SSH user name the client sends must be one of the users the key maps to.

use std::str::FromStr;

use russh::keys::{Algorithm, HashAlg, PublicKey};

use crate::config::{FerrydConfig, valid_user_name};

/// One usable `authorized_keys` line.
#[derive(Clone, Debug)]
pub struct AuthorizedKey {
    /// The key.
    pub key: PublicKey,
    /// The user its comment names.
    pub user: String,
    /// The 1-based line number.
    pub line: usize,
}

/// Parses `authorized_keys` text: the usable keys, and one warning per ignored line.
pub fn parse(text: &str) -> (Vec<AuthorizedKey>, Vec<String>) {
    let mut keys = Vec::new();
    let mut warnings = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split_whitespace();
        let first = fields.next().unwrap_or_default();
        if Algorithm::from_str(first).is_err() {
            warnings.push(format!(
                "line {line_no}: starts with {first:?}, not a key type; key options are not \
                 supported, the line is ignored"
            ));
            continue;
        }
        let Some(b64) = fields.next() else {
            warnings.push(format!(
                "line {line_no}: no key after the key type; ignored"
            ));
            continue;
        };
        let key = match russh::keys::parse_public_key_base64(b64) {
            Ok(k) => k,
            Err(e) => {
                warnings.push(format!("line {line_no}: unreadable key ({e}); ignored"));
                continue;
            }
        };
        let comment = fields.collect::<Vec<_>>().join(" ");
        let user = comment.split('@').next().unwrap_or_default();
        if !valid_user_name(user) {
            warnings.push(format!(
                "line {line_no}: comment {comment:?} does not name a user (letters, digits, \
                 '.', '_', '-'); ignored unless ferryd.toml lists the key under [users]"
            ));
            continue;
        }
        keys.push(AuthorizedKey {
            key,
            user: user.to_string(),
            line: line_no,
        });
    }
    (keys, warnings)
}

/// The users `key` may log in as, from `authorized_keys` text and the config's `[users]`.
pub fn users_for(
    config: &FerrydConfig,
    authorized: &[AuthorizedKey],
    key: &PublicKey,
) -> Vec<String> {
    let mut users: Vec<String> = authorized
        .iter()
        .filter(|a| a.key.key_data() == key.key_data())
        .map(|a| a.user.clone())
        .collect();
    let fp = key.fingerprint(HashAlg::Sha256).to_string();
    for (name, user) in &config.users {
        let listed = user.keys.iter().any(|k| {
            let k = k.trim();
            if k.starts_with("SHA256:") {
                k == fp
            } else {
                PublicKey::from_openssh(k).is_ok_and(|p| p.key_data() == key.key_data())
            }
        });
        if listed {
            users.push(name.clone());
        }
    }
    users.sort();
    users.dedup();
    users
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UserConfig;
    use russh::keys::ssh_key::private::{Ed25519Keypair, PrivateKey};
    use std::path::Path;

    fn key(seed: u8) -> PublicKey {
        PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
            .public_key()
            .clone()
    }

    fn line(k: &PublicKey, comment: &str) -> String {
        let mut k = k.clone();
        k.set_comment(comment);
        k.to_openssh().unwrap()
    }

    #[test]
    fn comments_name_users() {
        let text = format!(
            "# ferry users\n\n{}\n{}\n{}\n",
            line(&key(1), "accept"),
            line(&key(2), "alice@laptop"),
            line(&key(3), "bob smith"),
        );
        let (keys, warnings) = parse(&text);
        assert_eq!(keys.len(), 2, "{warnings:?}");
        assert_eq!(keys[0].user, "accept");
        assert_eq!(keys[0].line, 3);
        assert_eq!(keys[1].user, "alice");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].starts_with("line 5:"));
    }

    #[test]
    fn options_and_garbage_are_ignored() {
        let text = format!(
            "from=\"10.0.0.1\" {}\nssh-ed25519\nssh-ed25519 AAAAnotakey x\nnonsense here\n",
            line(&key(1), "accept")
        );
        let (keys, warnings) = parse(&text);
        assert!(keys.is_empty());
        assert_eq!(warnings.len(), 4);
    }

    #[test]
    fn config_maps_keys_to_users() {
        let (k1, k2, k3) = (key(1), key(2), key(3));
        let mut config = FerrydConfig::parse("", Path::new("/d")).unwrap();
        config.users.insert(
            "carol".into(),
            UserConfig {
                docroot: None,
                keys: vec![k2.fingerprint(HashAlg::Sha256).to_string()],
            },
        );
        config.users.insert(
            "dave".into(),
            UserConfig {
                docroot: None,
                keys: vec![line(&k1, "whatever")],
            },
        );
        let (authorized, _) = parse(&format!("{}\n", line(&k1, "accept")));
        assert_eq!(users_for(&config, &authorized, &k1), vec!["accept", "dave"]);
        assert_eq!(users_for(&config, &authorized, &k2), vec!["carol"]);
        assert!(users_for(&config, &authorized, &k3).is_empty());
    }
}
