//! Directory listings, each read at most once per request.
//!
//! Planning a received file looks for things that are usually not there: the file itself,
//! its `NAME.partial`, the partial's checkpoint and the checkpoints of split pieces. Asked
//! name by name, that is a handful of failed lookups per file, each walking the whole path
//! again; and finding piece checkpoints read the whole directory once per file, which is
//! quadratic in the size of a directory. [`Listings`] reads a directory once a request has
//! asked about it a few times ([`LIST_AFTER`]; piece checkpoints at once) and then answers
//! "not there" from memory: only a name that is listed costs a lookup.
//!
//! A listing is a snapshot. It is kept for one step of one request (confining a manifest,
//! or planning it once its files are claimed), told of what that step itself creates, and
//! it only ever saves a lookup that would have failed: "may exist" still goes to the file
//! system. A directory that cannot be listed, or that matches names without regard to case
//! (`chattr +F`: `readme` would find `README`, which a listing compared byte for byte would
//! miss), gets no listing, and every name in it may exist.

use std::collections::{BTreeSet, HashMap};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Questions about one directory answered by lookups before it is listed: a request for
/// one or two files in a large directory never reads all of it.
pub const LIST_AFTER: u32 = 4;

/// What one request has learnt of the directories it touches.
#[derive(Debug, Default)]
pub struct Listings {
    dirs: HashMap<PathBuf, Dir>,
}

#[derive(Debug)]
enum Dir {
    /// Asked about this many times, not listed yet.
    Asked(u32),
    /// Its names, or `None` where it cannot be listed (every name may then exist).
    Listed(Option<BTreeSet<OsString>>),
}

impl Dir {
    /// The names in `path` (this directory), read now if they were not yet.
    fn list(&mut self, path: &Path) -> Option<&BTreeSet<OsString>> {
        if let Dir::Asked(_) = self {
            *self = Dir::Listed(read_names(path).ok());
        }
        match self {
            Dir::Listed(names) => names.as_ref(),
            Dir::Asked(_) => unreachable!("listed above"),
        }
    }
}

impl Listings {
    /// Knows nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// What is known of `dir`, made known on the first question. Looked up without
    /// allocating: a request asks this several times for each of its files.
    fn dir(&mut self, dir: &Path) -> &mut Dir {
        if !self.dirs.contains_key(dir) {
            self.dirs.insert(dir.to_path_buf(), Dir::Asked(0));
        }
        self.dirs.get_mut(dir).expect("inserted above")
    }

    /// Whether `path` may exist: `false` only when its directory was listed and the name
    /// is not in it.
    pub fn may_exist(&mut self, path: &Path) -> bool {
        let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
            return true;
        };
        let d = self.dir(dir);
        if let Dir::Asked(n) = d {
            *n += 1;
            if *n <= LIST_AFTER {
                return true;
            }
        }
        d.list(dir).is_none_or(|names| names.contains(name))
    }

    /// The paths in `dir` whose names start with `prefix`, in name order.
    pub fn starting_with(&mut self, dir: &Path, prefix: &str) -> io::Result<Vec<PathBuf>> {
        let matching = |names: &BTreeSet<OsString>| -> Vec<PathBuf> {
            names
                .range(OsString::from(prefix)..)
                .take_while(|n| n.as_encoded_bytes().starts_with(prefix.as_bytes()))
                .map(|n| dir.join(n))
                .collect()
        };
        match self.dir(dir).list(dir) {
            Some(names) => Ok(matching(names)),
            // No listing to keep: read it for this answer alone (or report why not).
            None => read_names(dir).map(|names| matching(&names)),
        }
    }

    /// Notes that `path` and any of its parents this request made now exist, so that a
    /// listing read before they were made does not deny them.
    pub fn created(&mut self, path: &Path) {
        let mut p = path;
        while let (Some(dir), Some(name)) = (p.parent(), p.file_name()) {
            if let Some(Dir::Listed(Some(names))) = self.dirs.get_mut(dir) {
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

/// The names in `dir`; none if it does not exist. A directory that folds case is an
/// error: its names cannot be compared byte for byte.
fn read_names(dir: &Path) -> io::Result<BTreeSet<OsString>> {
    #[cfg(test)]
    READS.with(|r| r.set(r.get() + 1));
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e),
    };
    if folds_case(dir) {
        return Err(io::Error::other("the directory folds case"));
    }
    entries.map(|e| e.map(|e| e.file_name())).collect()
}

/// Whether `dir` has the case-folding attribute (`FS_CASEFOLD_FL`, ext4 and tmpfs).
fn folds_case(dir: &Path) -> bool {
    const FS_CASEFOLD_FL: libc::c_long = 0x4000_0000;
    let Ok(f) = File::open(dir) else {
        return false;
    };
    let mut flags: libc::c_long = 0;
    // SAFETY: FS_IOC_GETFLAGS writes one long through the pointer, on an open descriptor.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), libc::FS_IOC_GETFLAGS, &mut flags) };
    r == 0 && flags & FS_CASEFOLD_FL != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asks about `name` in `dir` until the directory is listed.
    fn listed(seen: &mut Listings, dir: &Path) {
        for _ in 0..=LIST_AFTER {
            seen.may_exist(&dir.join("\u{1}probe"));
        }
    }

    #[test]
    fn absent_names_are_answered_from_one_reading() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("a"), b"").unwrap();
        let mut seen = Listings::new();
        let before = READS.with(|r| r.get());
        // The first few questions are left to lookups: nothing is read.
        for _ in 0..LIST_AFTER {
            assert!(seen.may_exist(&tmp.path().join("b")));
        }
        assert_eq!(READS.with(|r| r.get()), before);
        assert!(!seen.may_exist(&tmp.path().join("b")));
        assert!(seen.may_exist(&tmp.path().join("a")));
        assert_eq!(READS.with(|r| r.get()), before + 1);
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
        listed(&mut seen, &deep);
        listed(&mut seen, tmp.path());
        assert!(!seen.may_exist(&deep.join("f")));
        assert!(!seen.may_exist(&tmp.path().join("x")));
        fs::create_dir_all(&deep).unwrap();
        seen.created(&deep);
        assert!(seen.may_exist(&tmp.path().join("x")));
        assert!(seen.may_exist(&deep));
    }

    #[test]
    fn a_file_where_a_directory_should_be_denies_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, b"").unwrap();
        let mut seen = Listings::new();
        listed(&mut seen, &file);
        assert!(seen.may_exist(&file.join("x")), "the lookup must say why");
        assert!(seen.starting_with(&file, "x").is_err());
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
}
