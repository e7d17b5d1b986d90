//! Files split across sessions: several sessions (on one ferryd's cores, or on cluster
//! nodes that share the storage) each write their piece of one `NAME.partial`, and the
//! last to finish renames it.
//!
//! A piece is a [`FileEntry`] with a [`Part`]: the session sees a file of the piece's
//! length, and the data plane adds the piece's offset to every read and write. Each piece
//! keeps its own checkpoint, `NAME.partial.OFFSET.ckpt`, in the same format as a whole
//! file's `NAME.partial.ckpt`: the whole file's size and mtime, and the byte ranges (in
//! whole-file offsets) this piece has made durable. So the file's checkpoints, together,
//! say what `NAME.partial` holds, whoever wrote it: [`held`] is their union, the resume
//! of a piece starts from its share of that union, and a later transfer that does not
//! split the file resumes from it just as well.
//!
//! **Invariant:** `NAME.partial` becomes `NAME` only when the union of its checkpoints
//! covers the whole file. Each piece, when complete, syncs the partial, writes its
//! complete checkpoint, and only then calls [`assemble`], which checks the union under an
//! exclusive `flock` of the partial: of two pieces that finish at once, exactly one sees
//! the whole and renames; the other finds the partial gone.

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use ferry_proto::RangeSet;
use ferry_proto::checkpoint::Checkpoint;

use crate::data::FileEntry;
use crate::listing::Listings;
use crate::resume::{self, CHECKPOINT_SUFFIX, FileAction, FilePlan, PARTIAL_SUFFIX, ResumePolicy};

/// `NAME.partial.OFFSET.ckpt`: the checkpoint of the piece at `offset` of the file at
/// `path`.
pub fn piece_checkpoint_path(path: &Path, offset: u64) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!("{PARTIAL_SUFFIX}.{offset}{CHECKPOINT_SUFFIX}"));
    PathBuf::from(p)
}

/// Where the checkpoint of `entry` (a whole file or a piece) received at `path` lives.
pub fn checkpoint_path_for(path: &Path, entry: &FileEntry) -> PathBuf {
    match entry.part {
        Some(p) => piece_checkpoint_path(path, p.offset),
        None => resume::checkpoint_path(path),
    }
}

/// Every checkpoint file of the file at `path`: the whole file's and its pieces', in name
/// order, as `seen` lists its directory.
pub fn checkpoint_files(path: &Path, seen: &mut Listings) -> io::Result<Vec<PathBuf>> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Ok(Vec::new());
    };
    let prefix = format!("{name}{PARTIAL_SUFFIX}");
    let mut out = seen.starting_with(dir, &prefix)?;
    out.retain(|p| {
        let Some(rest) = p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(&prefix))
        else {
            return false;
        };
        let whole = rest == CHECKPOINT_SUFFIX;
        let piece = rest
            .strip_prefix('.')
            .and_then(|r| r.strip_suffix(CHECKPOINT_SUFFIX))
            .is_some_and(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()));
        whole || piece
    });
    Ok(out)
}

/// The bytes of the file at `path` that its checkpoints, together, name as durable for
/// the source of `whole_size` bytes modified at `mtime`. `Err(why)` when one of them is
/// damaged or describes another source: then none of them can be trusted.
pub fn held(
    path: &Path,
    whole_size: u64,
    mtime: (i64, u32),
    seen: &mut Listings,
) -> Result<RangeSet, String> {
    let files = checkpoint_files(path, seen)
        .map_err(|e| format!("the checkpoints cannot be listed ({e})"))?;
    let mut all = RangeSet::new();
    for f in files {
        let bytes = match fs::read(&f) {
            Ok(b) => b,
            // Removed meanwhile by a piece that assembled the file.
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("a checkpoint cannot be read ({e})")),
        };
        let ckpt = Checkpoint::decode(&bytes).map_err(|e| format!("restarted: {e}"))?;
        if !ckpt.matches(whole_size, mtime) {
            return Err("restarted: the source changed since the partial file was written".into());
        }
        for r in ckpt.bytes.ranges() {
            all.insert(r.start.min(whole_size)..r.end.min(whole_size));
        }
    }
    Ok(all)
}

/// Removes every checkpoint of the file at `path` (the whole file's and its pieces').
pub fn remove_checkpoints(path: &Path, seen: &mut Listings) -> io::Result<()> {
    for f in checkpoint_files(path, seen)? {
        resume::remove_checkpoint_at(&f)?;
    }
    Ok(())
}

/// The part of `held` (whole-file byte ranges) that falls in the piece `entry`, counted
/// from the piece's first byte.
pub fn piece_share(held: &RangeSet, entry: &FileEntry) -> RangeSet {
    let (start, end) = (entry.offset(), entry.offset() + entry.size);
    RangeSet::from_ranges(held.ranges().iter().filter_map(|r| {
        let (a, b) = (r.start.max(start), r.end.min(end));
        (a < b).then(|| a - start..b - start)
    }))
}

/// What happens to the piece `entry` of the file received at `path`: the overwrite policy
/// judges the existing complete file by size and mtime (the pieces of one file are all
/// judged alike), and at resume level 1 and up the piece resumes from its share of the
/// file's checkpoints. Checksum levels count as level 1 here: the source's checksums cover
/// whole files. A piece never removes `NAME.partial`: other sessions may be writing it.
pub fn plan_piece(
    path: &Path,
    entry: &FileEntry,
    block_size: u32,
    policy: ResumePolicy,
    seen: &mut Listings,
) -> io::Result<FilePlan> {
    let whole = FileEntry {
        size: entry.whole_size(),
        part: None,
        ..entry.clone()
    };
    let level1 = ResumePolicy {
        level: policy.level.min(1),
        ..policy
    };
    if let Some(skip) = resume::keep_existing_file(path, &whole, level1, seen)? {
        return Ok(skip);
    }
    if policy.level == 0 {
        remove_file_if_any(&checkpoint_path_for(path, entry), seen)?;
        return Ok(FilePlan::default());
    }
    let held = match held(path, whole.size, whole.mtime, seen) {
        Ok(h) => h,
        Err(why) => {
            remove_file_if_any(&checkpoint_path_for(path, entry), seen)?;
            return Ok(FilePlan {
                reason: why,
                ..FilePlan::default()
            });
        }
    };
    let partial_len = fs::metadata(resume::partial_path(path)).map_or(0, |m| m.len());
    let share = piece_share(&held, entry);
    if share.is_empty() || partial_len < whole.size {
        return Ok(FilePlan::default());
    }
    let ckpt = Checkpoint {
        block_size,
        size: entry.size,
        mtime: entry.mtime,
        bytes: share,
    };
    let blocks = ckpt.held_blocks(block_size);
    if blocks.is_empty() {
        return Ok(FilePlan::default());
    }
    Ok(FilePlan {
        action: FileAction::Resume,
        held: blocks.ranges().iter().map(|r| (r.start, r.end)).collect(),
        reason: format!("{} bytes of this piece already there", ckpt.bytes.len()),
    })
}

fn remove_file_if_any(p: &Path, seen: &mut Listings) -> io::Result<()> {
    if !seen.may_exist(p) {
        return Ok(());
    }
    match fs::remove_file(p) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// After a piece of `entry` has made its bytes durable and written its complete
/// checkpoint: renames `NAME.partial` to `NAME` (mtime and mode stamped, checkpoints
/// removed) if the file's checkpoints now cover it whole. Returns whether this call
/// renamed it; `Ok(false)` also when another piece already has.
pub fn assemble(path: &Path, entry: &FileEntry) -> io::Result<bool> {
    let partial = resume::partial_path(path);
    let f = match File::options().read(true).write(true).open(&partial) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    let _lock = Flock::exclusive(&f)?;
    // Renamed while this waited for the lock: the other piece saw the whole.
    match fs::metadata(&partial) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
        Ok(_) => {}
    }
    let whole = entry.whole_size();
    // Read afresh, under the lock: what other pieces wrote a moment ago counts.
    let mut seen = Listings::new();
    let held = held(path, whole, entry.mtime, &mut seen).map_err(io::Error::other)?;
    if held.len() < whole {
        return Ok(false);
    }
    let mtime =
        UNIX_EPOCH + Duration::new(entry.mtime.0.max(0) as u64, entry.mtime.1.min(999_999_999));
    let _ = f.set_modified(mtime);
    if entry.mode != 0 {
        let _ = f.set_permissions(fs::Permissions::from_mode(entry.mode & 0o7777));
    }
    fs::rename(&partial, path)?;
    remove_checkpoints(path, &mut seen)?;
    Ok(true)
}

/// An exclusive `flock(2)` on an open file, released when dropped.
struct Flock<'a>(&'a File);

impl<'a> Flock<'a> {
    fn exclusive(f: &'a File) -> io::Result<Flock<'a>> {
        loop {
            // SAFETY: flock on a valid, open descriptor.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(Flock(f));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for Flock<'_> {
    fn drop(&mut self) {
        // SAFETY: as above; unlocking cannot fail in a way worth reporting.
        unsafe {
            libc::flock(self.0.as_raw_fd(), libc::LOCK_UN);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Part;

    fn piece(size: u64, offset: u64, len: u64) -> FileEntry {
        FileEntry {
            path: "f".into(),
            size: len,
            mtime: (1_700_000_000, 5),
            mode: 0o640,
            part: Some(Part {
                offset,
                whole_size: size,
            }),
        }
    }

    fn ckpt(size: u64, ranges: &[(u64, u64)]) -> Checkpoint {
        Checkpoint {
            block_size: 100,
            size,
            mtime: (1_700_000_000, 5),
            bytes: RangeSet::from_ranges(ranges.iter().map(|&(a, b)| a..b)),
        }
    }

    fn write(path: &Path, offset: Option<u64>, c: &Checkpoint) {
        let target = match offset {
            Some(o) => piece_checkpoint_path(path, o),
            None => resume::checkpoint_path(path),
        };
        resume::write_checkpoint_to(&target, c).unwrap();
    }

    #[test]
    fn names_and_listing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        assert_eq!(
            piece_checkpoint_path(&path, 4096).file_name().unwrap(),
            "a.bin.partial.4096.ckpt"
        );
        for n in [
            "a.bin.partial.ckpt",
            "a.bin.partial.0.ckpt",
            "a.bin.partial.4096.ckpt",
            // Not checkpoints of a.bin:
            "a.bin.partial",
            "a.bin.partial.x.ckpt",
            "a.bin.partial..ckpt",
            "a.bin.partial.ckpt.tmp",
            "b.bin.partial.0.ckpt",
            "a.bin.partial.12.ckpt.tmp",
        ] {
            fs::write(dir.path().join(n), b"").unwrap();
        }
        let names: Vec<_> = checkpoint_files(&path, &mut Listings::new())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "a.bin.partial.0.ckpt",
                "a.bin.partial.4096.ckpt",
                "a.bin.partial.ckpt"
            ]
        );
    }

    #[test]
    fn held_is_the_union_and_one_foreign_checkpoint_condemns_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        write(&path, Some(0), &ckpt(1000, &[(0, 300)]));
        write(&path, Some(500), &ckpt(1000, &[(500, 1000)]));
        write(&path, None, &ckpt(1000, &[(250, 400)]));
        let h = held(&path, 1000, (1_700_000_000, 5), &mut Listings::new()).unwrap();
        assert_eq!(h.ranges(), [0..400, 500..1000]);
        assert_eq!(
            piece_share(&h, &piece(1000, 300, 400)).ranges(),
            [0..100, 200..400]
        );
        // Another size: none of it describes this source.
        write(&path, Some(900), &ckpt(999, &[(900, 999)]));
        assert!(held(&path, 1000, (1_700_000_000, 5), &mut Listings::new()).is_err());
    }

    #[test]
    fn a_piece_resumes_from_its_share_in_its_own_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(resume::partial_path(&path), vec![0u8; 1000]).unwrap();
        // Held: bytes 0..650 (someone else's piece, and more).
        write(&path, Some(0), &ckpt(1000, &[(0, 650)]));
        let p = piece(1000, 400, 600);
        let policy = ResumePolicy {
            level: 2,
            ..Default::default()
        };
        let plan = plan_piece(&path, &p, 100, policy, &mut Listings::new()).unwrap();
        assert_eq!(plan.action, FileAction::Resume);
        // Piece bytes 0..250 held: blocks 0 and 1 whole, block 2 only half.
        assert_eq!(plan.held, [(0, 2)]);
        // Level 0 sends it all and leaves the others' checkpoints and the partial alone.
        let plan = plan_piece(
            &path,
            &p,
            100,
            ResumePolicy::default(),
            &mut Listings::new(),
        )
        .unwrap();
        assert_eq!(plan.action, FileAction::Send);
        assert!(piece_checkpoint_path(&path, 0).exists());
        assert!(resume::partial_path(&path).exists());
    }

    #[test]
    fn assembles_once_the_pieces_cover_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs::write(resume::partial_path(&path), vec![7u8; 1000]).unwrap();
        let (a, b) = (piece(1000, 0, 600), piece(1000, 600, 400));
        write(&path, Some(0), &ckpt(1000, &[(0, 600)]));
        assert!(
            !assemble(&path, &a).unwrap(),
            "half the file is not the file"
        );
        assert!(!path.exists());
        write(&path, Some(600), &ckpt(1000, &[(600, 1000)]));
        assert!(assemble(&path, &b).unwrap());
        assert!(!assemble(&path, &a).unwrap(), "only once");
        let m = fs::metadata(&path).unwrap();
        assert_eq!(m.len(), 1000);
        assert_eq!(m.permissions().mode() & 0o777, 0o640);
        assert_eq!(crate::data::mtime_of(&m), (1_700_000_000, 5));
        assert!(
            checkpoint_files(&path, &mut Listings::new())
                .unwrap()
                .is_empty()
        );
        assert!(!resume::partial_path(&path).exists());
    }
}
