//! Confinement of users to their docroot.
//!
//! Every path a client names is relative to the user's docroot (a leading `/` means the
//! docroot itself). Nothing from the network may lead outside it: `..` components, control
//! characters and symbolic links that point out of the docroot are refused. Spaces and any
//! Unicode are fine.
//!
//! The check runs when a request arrives. A local user who swaps a directory for a symbolic
//! link between the check and the write can still race it; ferryd is meant to own its
//! docroots.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::path::{Component, Path, PathBuf};

use crate::control::ErrorCode;
use crate::listing::Listings;

/// Why a path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// A `..` component.
    #[error("{path:?}: `..` is not allowed in paths")]
    ParentComponent {
        /// The path as given.
        path: String,
    },
    /// A NUL or another control character.
    #[error("{path:?}: control characters are not allowed in file names")]
    ControlCharacter {
        /// The path as given (escaped when printed).
        path: String,
    },
    /// An absolute path where a relative one is required.
    #[error("{path:?}: an absolute path is not allowed here")]
    Absolute {
        /// The path as given.
        path: String,
    },
    /// An empty or `.` component, or an empty path, where a plain name is required.
    #[error("{path:?}: empty or `.` path components are not allowed here")]
    EmptyComponent {
        /// The path as given.
        path: String,
    },
    /// The path exists but leads outside the docroot (a symbolic link).
    #[error("{path:?} leads outside the docroot through a symbolic link")]
    Escapes {
        /// The path as given.
        path: String,
    },
    /// A symbolic link whose target does not exist: where it would lead cannot be checked.
    #[error("{path:?} goes through a symbolic link that points nowhere")]
    DanglingLink {
        /// The path as given.
        path: String,
    },
    /// The docroot itself is missing or unreadable.
    #[error("the docroot {docroot} cannot be used: {reason}")]
    Docroot {
        /// The docroot.
        docroot: PathBuf,
        /// The operating system's error.
        reason: String,
        /// The code of the operating system's error.
        code: ErrorCode,
    },
    /// Looking at an existing component failed.
    #[error("{path:?}: {reason}")]
    Io {
        /// The path as given.
        path: String,
        /// The operating system's error.
        reason: String,
        /// The code of the operating system's error.
        code: ErrorCode,
    },
}

impl PathError {
    /// The stable code a client sees.
    pub fn code(&self) -> ErrorCode {
        match self {
            PathError::ParentComponent { .. }
            | PathError::Absolute { .. }
            | PathError::Escapes { .. }
            | PathError::DanglingLink { .. } => ErrorCode::OutsideDocroot,
            PathError::ControlCharacter { .. } | PathError::EmptyComponent { .. } => {
                ErrorCode::InvalidPath
            }
            PathError::Docroot { code, .. } | PathError::Io { code, .. } => *code,
        }
    }
}

fn has_control(s: &str) -> bool {
    s.chars().any(char::is_control)
}

/// Checks a path from a manifest: relative, `/`-separated plain names, none of them empty,
/// `.` or `..`, and no control characters.
pub fn validate_relative(name: &str) -> Result<(), PathError> {
    let path = || name.to_string();
    if has_control(name) {
        return Err(PathError::ControlCharacter { path: path() });
    }
    if name.starts_with('/') {
        return Err(PathError::Absolute { path: path() });
    }
    let mut any = false;
    for comp in name.split('/') {
        match comp {
            ".." => return Err(PathError::ParentComponent { path: path() }),
            "" | "." => return Err(PathError::EmptyComponent { path: path() }),
            _ => any = true,
        }
    }
    if !any {
        return Err(PathError::EmptyComponent { path: path() });
    }
    Ok(())
}

/// A user's docroot, canonicalised once, that client paths are confined to.
#[derive(Clone, Debug)]
pub struct Docroot {
    root: PathBuf,
}

impl Docroot {
    /// Opens the docroot (it must exist and be a directory).
    pub fn open(docroot: &Path) -> Result<Docroot, PathError> {
        let err = |e: io::Error| PathError::Docroot {
            docroot: docroot.to_path_buf(),
            reason: e.to_string(),
            code: match e.kind() {
                io::ErrorKind::NotFound => ErrorCode::DestinationMissing,
                _ => ErrorCode::from_io(&e),
            },
        };
        let root = docroot.canonicalize().map_err(err)?;
        if !root.is_dir() {
            return Err(err(io::Error::from(io::ErrorKind::NotADirectory)));
        }
        Ok(Docroot { root })
    }

    /// The canonical docroot.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Maps a client's path (relative to the docroot; a leading `/` is the docroot itself)
    /// to a path on disk inside the docroot. The part that exists is resolved (symbolic
    /// links included, and they must stay inside); the rest is appended as plain names.
    pub fn confine(&self, requested: &str) -> Result<PathBuf, PathError> {
        let path = || requested.to_string();
        if has_control(requested) {
            return Err(PathError::ControlCharacter { path: path() });
        }
        let comps: Vec<&str> = requested
            .split('/')
            .filter(|c| !c.is_empty() && *c != ".")
            .collect();
        if comps.contains(&"..") {
            return Err(PathError::ParentComponent { path: path() });
        }
        let mut cur = self.root.clone();
        for (i, comp) in comps.iter().enumerate() {
            let next = cur.join(comp);
            match fs::symlink_metadata(&next) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    let target = match next.canonicalize() {
                        Ok(t) => t,
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {
                            return Err(PathError::DanglingLink { path: path() });
                        }
                        Err(e) => return Err(io_error(requested, &e)),
                    };
                    if !target.starts_with(&self.root) {
                        return Err(PathError::Escapes { path: path() });
                    }
                    cur = target;
                }
                Ok(_) => cur = next,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    // Nothing below exists: the remaining names are plain, already checked.
                    let mut out = next;
                    for rest in &comps[i + 1..] {
                        out.push(rest);
                    }
                    return Ok(out);
                }
                Err(e) => return Err(io_error(requested, &e)),
            }
        }
        debug_assert!(cur.starts_with(&self.root));
        Ok(cur)
    }

    /// Confines `rel` (a manifest path, checked with [`validate_relative`]) below the
    /// client path `base`.
    pub fn confine_entry(&self, base: &str, rel: &str) -> Result<PathBuf, PathError> {
        validate_relative(rel)?;
        self.confine(&format!("{base}/{rel}"))
    }

    /// The path of `abs` relative to the docroot, for messages (`/` is the docroot).
    pub fn display(&self, abs: &Path) -> String {
        match abs.strip_prefix(&self.root) {
            Ok(rel) => {
                let mut s = String::from("/");
                let parts: Vec<_> = rel
                    .components()
                    .filter_map(|c| match c {
                        Component::Normal(n) => Some(n.to_string_lossy().into_owned()),
                        _ => None,
                    })
                    .collect();
                s.push_str(&parts.join("/"));
                s
            }
            Err(_) => abs.display().to_string(),
        }
    }
}

/// Confines the entries of one manifest below one client path, the way
/// [`Docroot::confine_entry`] does each, at a fraction of the lookups: each directory is
/// resolved once, and a name that its directory's listing lacks (a new file) needs no
/// lookup of its own. A name that is there goes through the full check.
///
/// The race the module notes widens to the request: a directory is resolved once for all
/// its entries.
pub struct EntryConfiner<'r> {
    root: &'r Docroot,
    base: String,
    /// Each directory of the manifest (relative to `base`) as confined.
    dirs: HashMap<String, PathBuf>,
}

impl<'r> EntryConfiner<'r> {
    /// For entries below the client path `base`.
    pub fn new(root: &'r Docroot, base: &str) -> Self {
        EntryConfiner {
            root,
            base: base.to_string(),
            dirs: HashMap::new(),
        }
    }

    /// [`Docroot::confine_entry`] of `rel`, with `seen` listing the directories.
    pub fn confine(&mut self, rel: &str, seen: &mut Listings) -> Result<PathBuf, PathError> {
        validate_relative(rel)?;
        let whole = || self.root.confine(&format!("{}/{rel}", self.base));
        let (dir, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        let dir = match self.dirs.get(dir) {
            Some(d) => d,
            None => match self.root.confine(&format!("{}/{dir}", self.base)) {
                Ok(d) => self.dirs.entry(dir.to_string()).or_insert(d),
                // Reported as the whole path, as confine_entry would.
                Err(_) => return whole(),
            },
        };
        let path = dir.join(name);
        // A name that is there may be a symbolic link; one too long for any file system
        // must be refused as the lookup would: both get the whole check.
        if name.len() > NAME_MAX || seen.may_exist(&path) {
            return whole();
        }
        Ok(path)
    }
}

/// The longest file name Linux file systems take, in bytes.
const NAME_MAX: usize = 255;

fn io_error(requested: &str, e: &io::Error) -> PathError {
    PathError::Io {
        path: requested.to_string(),
        reason: e.to_string(),
        code: ErrorCode::from_io(e),
    }
}

/// Confines `requested` (a client's path) to `docroot`; see [`Docroot::confine`].
pub fn confine(docroot: &Path, requested: &str) -> Result<PathBuf, PathError> {
    Docroot::open(docroot)?.confine(requested)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("docroot");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(root.join("sub/deeper")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(root.join("sub/file.txt"), b"x").unwrap();
        fs::write(outside.join("secret"), b"s").unwrap();
        (tmp, root, outside)
    }

    #[test]
    fn plain_paths_map_inside() {
        let (_t, root, _o) = setup();
        let canon = root.canonicalize().unwrap();
        assert_eq!(confine(&root, "/").unwrap(), canon);
        assert_eq!(confine(&root, "").unwrap(), canon);
        assert_eq!(confine(&root, ".").unwrap(), canon);
        assert_eq!(
            confine(&root, "/sub/file.txt").unwrap(),
            canon.join("sub/file.txt")
        );
        assert_eq!(
            confine(&root, "sub//./deeper/").unwrap(),
            canon.join("sub/deeper")
        );
        assert_eq!(
            confine(&root, "/new/dir/f").unwrap(),
            canon.join("new/dir/f")
        );
    }

    #[test]
    fn spaces_and_unicode_are_fine() {
        let (_t, root, _o) = setup();
        let canon = root.canonicalize().unwrap();
        fs::create_dir(root.join("my files")).unwrap();
        assert_eq!(
            confine(&root, "/my files/résumé 日本.txt").unwrap(),
            canon.join("my files/résumé 日本.txt")
        );
        validate_relative("my files/résumé 日本.txt").unwrap();
        validate_relative("a\\b").unwrap();
        validate_relative("...").unwrap();
        validate_relative(".hidden/x").unwrap();
    }

    #[test]
    fn parent_components_are_refused() {
        let (_t, root, _o) = setup();
        for p in [
            "..",
            "/..",
            "../outside/secret",
            "sub/../../x",
            "/sub/..",
            "a/../b",
        ] {
            let e = confine(&root, p).unwrap_err();
            assert_eq!(e, PathError::ParentComponent { path: p.into() }, "{p}");
            assert_eq!(e.code(), ErrorCode::OutsideDocroot);
        }
    }

    #[test]
    fn control_characters_are_refused() {
        let (_t, root, _o) = setup();
        for p in [
            "a\0b",
            "a\nb",
            "x\x1b[31m",
            "tab\there",
            "del\x7f",
            "c1\u{85}",
        ] {
            let e = confine(&root, p).unwrap_err();
            assert!(matches!(e, PathError::ControlCharacter { .. }), "{p:?}");
            assert_eq!(e.code(), ErrorCode::InvalidPath);
            assert!(validate_relative(p).is_err());
        }
    }

    #[test]
    fn symlinks_inside_are_followed() {
        let (_t, root, _o) = setup();
        let canon = root.canonicalize().unwrap();
        symlink("sub/deeper", root.join("link")).unwrap();
        symlink(canon.join("sub"), root.join("abs-link")).unwrap();
        assert_eq!(
            confine(&root, "link/new").unwrap(),
            canon.join("sub/deeper/new")
        );
        assert_eq!(
            confine(&root, "abs-link/file.txt").unwrap(),
            canon.join("sub/file.txt")
        );
    }

    #[test]
    fn symlinks_leading_outside_are_refused() {
        let (_t, root, outside) = setup();
        symlink(&outside, root.join("out")).unwrap();
        symlink("../../outside/secret", root.join("sub/rel-out")).unwrap();
        symlink("/", root.join("slash")).unwrap();
        symlink("/nonexistent/place", root.join("dangling")).unwrap();
        for p in [
            "out",
            "/out/secret",
            "out/new-file",
            "sub/rel-out",
            "slash/etc/passwd",
        ] {
            let e = confine(&root, p).unwrap_err();
            assert_eq!(e, PathError::Escapes { path: p.into() }, "{p}");
            assert_eq!(e.code(), ErrorCode::OutsideDocroot);
        }
        let e = confine(&root, "dangling/x").unwrap_err();
        assert!(matches!(e, PathError::DanglingLink { .. }));
        assert_eq!(e.code(), ErrorCode::OutsideDocroot);
    }

    #[test]
    fn docroot_reached_through_a_symlink_is_fine() {
        let (t, root, _o) = setup();
        let alias = t.path().join("alias");
        symlink(&root, &alias).unwrap();
        let canon = root.canonicalize().unwrap();
        assert_eq!(confine(&alias, "sub").unwrap(), canon.join("sub"));
    }

    #[test]
    fn missing_docroot_is_reported() {
        let t = tempfile::tempdir().unwrap();
        let e = confine(&t.path().join("nope"), "x").unwrap_err();
        assert!(matches!(e, PathError::Docroot { .. }));
        assert_eq!(e.code(), ErrorCode::DestinationMissing);
    }

    #[test]
    fn relative_names_are_validated() {
        validate_relative("a").unwrap();
        validate_relative("a/b/c.txt").unwrap();
        let empty = |e: &PathError| matches!(e, PathError::EmptyComponent { .. });
        let parent = |e: &PathError| matches!(e, PathError::ParentComponent { .. });
        for p in ["", "a//b", "a/", "./a", "a/./b"] {
            assert!(empty(&validate_relative(p).unwrap_err()), "{p:?}");
        }
        for p in ["..", "a/../../b"] {
            assert!(parent(&validate_relative(p).unwrap_err()), "{p:?}");
        }
        assert!(matches!(
            validate_relative("/etc/passwd"),
            Err(PathError::Absolute { .. })
        ));
        assert!(matches!(
            validate_relative("a\0"),
            Err(PathError::ControlCharacter { .. })
        ));
    }

    #[test]
    fn entries_under_a_base_are_confined() {
        let (_t, root, outside) = setup();
        let d = Docroot::open(&root).unwrap();
        let canon = root.canonicalize().unwrap();
        assert_eq!(d.confine_entry("/", "sub/x").unwrap(), canon.join("sub/x"));
        assert_eq!(
            d.confine_entry("/sub", "deeper/y").unwrap(),
            canon.join("sub/deeper/y")
        );
        symlink(&outside, root.join("sub/out")).unwrap();
        assert!(matches!(
            d.confine_entry("/sub", "out/secret"),
            Err(PathError::Escapes { .. })
        ));
        assert!(d.confine_entry("/", "../x").is_err());
        assert_eq!(d.display(&canon.join("sub/x")), "/sub/x");
        assert_eq!(d.display(&canon), "/");
    }

    /// The confiner of many entries answers as `confine_entry` does for each, links and
    /// all, while it reads each directory once.
    #[test]
    fn many_entries_confine_as_one_does() {
        let (_t, root, outside) = setup();
        symlink(&outside, root.join("sub/out")).unwrap();
        symlink("deeper", root.join("sub/in")).unwrap();
        symlink("/nonexistent", root.join("sub/dangling")).unwrap();
        symlink(outside.join("secret"), root.join("sub/secret-link")).unwrap();
        fs::write(root.join("sub/deeper/there"), b"").unwrap();
        let d = Docroot::open(&root).unwrap();
        let rels = [
            "file.txt",
            "new",
            "deeper/there",
            "deeper/new",
            "out",
            "out/secret",
            "in",
            "in/there",
            "in/new",
            "dangling",
            "dangling/x",
            "secret-link",
            "missing/dir/f",
            "file.txt/x",
            &"n".repeat(300),
            "../x",
            "a\u{7}b",
        ];
        for base in ["/sub", "sub/", "/"] {
            let mut seen = Listings::new();
            let mut many = EntryConfiner::new(&d, base);
            for rel in rels {
                let rel = if base == "/" {
                    format!("sub/{rel}")
                } else {
                    rel.to_string()
                };
                assert_eq!(
                    many.confine(&rel, &mut seen),
                    d.confine_entry(base, &rel),
                    "{base} {rel}"
                );
            }
        }
    }
}
