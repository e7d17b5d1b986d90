//! Directory listings, each read once per request.
//!
//! Planning a received file looks for things that are usually not there: the file itself,
//! its `NAME.partial`, the partial's checkpoint and the checkpoints of split pieces. Asked
//! name by name, that is a handful of failed lookups per file, each walking the whole path
//! again; and finding piece checkpoints read the whole directory once per file, which is
//! quadratic in the size of a directory. [`Listings`] reads each directory once and
//! answers "not there" from memory: only a name that is listed costs a lookup.
//!
//! A listing is a snapshot, kept for one request (it lives while a manifest is planned)
//! and told of what the request itself creates. It only ever saves a lookup that would
//! have failed: "may exist" still goes to the file system.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// What one request has read of the directories it touches.
#[derive(Debug, Default)]
pub struct Listings {
    /// The names in each directory read; `None` where it could not be read (every name
    /// may then exist).
    dirs: HashMap<PathBuf, Option<BTreeSet<OsString>>>,
}

impl Listings {
    /// Knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The names in `dir`, read on first use: empty when `dir` does not exist, `None` when
    /// it cannot be read.
    fn names(&mut self, dir: &Path) -> &Option<BTreeSet<OsString>> {
        self.dirs
            .entry(dir.to_path_buf())
            .or_insert_with(|| read_names(dir).ok())
    }

    /// Whether `path` may exist: `false` only when its directory was read and the name
    /// is not in it.
    pub fn may_exist(&mut self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return true;
        };
        match self.names(dir) {
            Some(names) => names.contains(name),
            None => true,
        }
    }

    /// The paths in `dir` whose names start with `prefix`, in name order.
    pub fn starting_with(&mut self, dir: &Path, prefix: &str) -> io::Result<Vec<PathBuf>> {
        let names = match self.names(dir) {
            Some(names) => names,
            // Unreadable when listed: read it now to report why.
            None => return read_names(dir).map(|_| Vec::new()),
        };
        let from = OsString::from(prefix);
        Ok(names
            .range(from..)
            .take_while(|n| n.as_encoded_bytes().starts_with(prefix.as_bytes()))
            .map(|n| dir.join(n))
            .collect())
    }

    /// Notes that `path` and any of its parents this request made now exist, so that a
    /// listing read before they were made does not deny them.
    pub fn created(&mut self, path: &Path) {
        let mut p = path;
        while let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            if let Some(Some(names)) = self.dirs.get_mut(dir) {
                names.insert(name.to_owned());
            }
            p = dir;
        }
    }
}

#[cfg(test)]
thread_local! {
    /// Directories read by this thread, for tests that count them.
    pub(crate) static READS: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The names in `dir`; none if it does not exist.
fn read_names(dir: &Path) -> io::Result<BTreeSet<OsString>> {
    #[cfg(test)]
    READS.with(|r| r.set(r.get() + 1));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    match fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.map(|e| e.file_name())).collect(),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
            ) =>
        {
            Ok(BTreeSet::new())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_names_are_answered_from_one_reading() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a"), b"").unwrap();
        let mut seen = Listings::new();
        assert!(seen.may_exist(&tmp.path().join("a")));
        assert!(!seen.may_exist(&tmp.path().join("b")));
        // A snapshot: made afterwards by someone else, still denied...
        fs::write(tmp.path().join("b"), b"").unwrap();
        assert!(!seen.may_exist(&tmp.path().join("b")));
        // ...unless this request says it made it.
        seen.created(&tmp.path().join("b"));
        assert!(seen.may_exist(&tmp.path().join("b")));
    }

    #[test]
    fn a_missing_directory_holds_nothing_and_creations_reach_its_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let mut seen = Listings::new();
        let deep = tmp.path().join("x/y");
        assert!(!seen.may_exist(&deep.join("f")));
        assert!(!seen.may_exist(&tmp.path().join("x")));
        fs::create_dir_all(&deep).unwrap();
        seen.created(&deep);
        assert!(seen.may_exist(&tmp.path().join("x")));
        assert!(seen.may_exist(&deep));
    }

    #[test]
    fn prefixes_are_found_in_name_order() {
        let tmp = tempfile::tempdir().unwrap();
        for n in [
            "f.partial.ckpt",
            "f.partial.8.ckpt",
            "f",
            "g.partial.ckpt",
            "f.partia",
        ] {
            fs::write(tmp.path().join(n), b"").unwrap();
        }
        let mut seen = Listings::new();
        let got = seen.starting_with(tmp.path(), "f.partial").unwrap();
        assert_eq!(
            got,
            vec![
                tmp.path().join("f.partial.8.ckpt"),
                tmp.path().join("f.partial.ckpt")
            ]
        );
        assert!(
            seen.starting_with(&tmp.path().join("none"), "f")
                .unwrap()
                .is_empty()
        );
    }

    #[cfg(unix)]
    #[test]
    fn an_unreadable_directory_denies_nothing() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("locked");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o300)).unwrap();
        let readable = fs::read_dir(&dir).is_ok(); // root reads it anyway
        let mut seen = Listings::new();
        assert!(seen.may_exist(&dir.join("anything")) || readable);
        if !readable {
            assert!(seen.starting_with(&dir, "a").is_err());
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
}
