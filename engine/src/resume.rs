//! Resume and overwrite: what the receiving side does with each file before data moves,
//! and the checkpoint files that make a partial file resumable.
//!
//! The receiving side (ferryd for an upload, `ferry recv` for a download) decides for each
//! file of a session, against what already lies at its destination:
//!
//! 1. An existing complete file `NAME` is kept or replaced by the overwrite policy
//!    ([`Overwrite`]). What "different" means depends on the resume level: at 0 every
//!    existing file is different; at 1, another size or mtime; at 2 and 3, another size or
//!    content, by the source's sparse or full checksums ([`crate::sums`]).
//! 2. A file that goes ahead resumes from `NAME.partial` when the resume level is at
//!    least 1 and `NAME.partial.ckpt` is intact and names this very source (size and
//!    mtime); at 2 and 3 the held bytes must also match the source's sparse or full
//!    checksums. The blocks it holds are never sent again. Otherwise the partial and its
//!    checkpoint are removed and the file starts from nothing.
//!
//! **Invariant:** a checkpoint never names bytes that are not durable: the partial file is
//! `fdatasync`ed before the checkpoint that covers its data is written, and a checkpoint
//! replaces its predecessor by `rename`, so it is whole or absent (and its CRC catches the
//! rest).

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use ferry_proto::RangeSet;
use ferry_proto::checkpoint::Checkpoint;

use crate::data::FileEntry;
use crate::listing::Listings;
use crate::sums::FileSums;

/// Suffix of a file being received.
pub const PARTIAL_SUFFIX: &str = ".partial";
/// Suffix of a partial file's checkpoint, after [`PARTIAL_SUFFIX`].
pub const CHECKPOINT_SUFFIX: &str = ".ckpt";

/// When an existing destination file is replaced.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Never: an existing file is kept.
    Never,
    /// Always.
    Always,
    /// When it differs from the source (the default).
    #[default]
    Diff,
    /// When it is older than the source.
    Older,
    /// When it differs and is older.
    DiffOlder,
}

impl Overwrite {
    /// The name `--overwrite` takes.
    pub const fn as_str(self) -> &'static str {
        match self {
            Overwrite::Never => "never",
            Overwrite::Always => "always",
            Overwrite::Diff => "diff",
            Overwrite::Older => "older",
            Overwrite::DiffOlder => "diff+older",
        }
    }
}

impl std::str::FromStr for Overwrite {
    type Err = String;

    /// `never`, `always`, `diff`, `older` or `diff+older`; empty means `diff`.
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "never" => Overwrite::Never,
            "always" => Overwrite::Always,
            "" | "diff" => Overwrite::Diff,
            "older" => Overwrite::Older,
            "diff+older" => Overwrite::DiffOlder,
            _ => {
                return Err(format!(
                    "unknown overwrite policy {s:?} (never, always, diff, older, diff+older)"
                ));
            }
        })
    }
}

impl std::fmt::Display for Overwrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The resume level and overwrite policy of a transfer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResumePolicy {
    /// 0: always send whole files; 1: resume when size and mtime match; 2 and 3: also
    /// compare sparse or full checksums of the source.
    pub level: u8,
    /// What happens to existing complete files.
    pub overwrite: Overwrite,
}

/// What happens to one file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileAction {
    /// Sent whole.
    #[default]
    Send,
    /// Sent but for the blocks the receiver holds.
    Resume,
    /// Not sent: the destination is kept as it is.
    Skip,
}

impl FileAction {
    /// `sent`, `resumed` or `skipped`: what happened, for reports.
    pub const fn outcome(self) -> &'static str {
        match self {
            FileAction::Send => "sent",
            FileAction::Resume => "resumed",
            FileAction::Skip => "skipped",
        }
    }
}

/// The receiving side's decision for one file, told to the sender over the control channel.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FilePlan {
    /// Send, resume or skip.
    pub action: FileAction,
    /// For a resume: the file's blocks (in the session's block size, counted from the
    /// file's start) that the receiver holds, as `[first, end)` pairs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<(u64, u64)>,
    /// Why, in a few words, for people.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

impl FilePlan {
    fn send(reason: impl Into<String>) -> FilePlan {
        FilePlan {
            action: FileAction::Send,
            held: Vec::new(),
            reason: reason.into(),
        }
    }

    fn skip(reason: impl Into<String>) -> FilePlan {
        FilePlan {
            action: FileAction::Skip,
            held: Vec::new(),
            reason: reason.into(),
        }
    }

    /// The held blocks as a set of file-local block numbers.
    pub fn held_blocks(&self) -> RangeSet {
        RangeSet::from_ranges(self.held.iter().map(|&(a, b)| a..b))
    }

    /// Payload bytes of the held blocks of a file of `size` bytes in blocks of `block_size`.
    pub fn held_bytes(&self, size: u64, block_size: u32) -> u64 {
        let b = u64::from(block_size.max(1));
        self.held
            .iter()
            .map(|&(first, end)| {
                end.saturating_mul(b)
                    .min(size)
                    .saturating_sub(first.saturating_mul(b))
            })
            .sum()
    }
}

/// `NAME.partial` for the file at `path`.
pub fn partial_path(path: &Path) -> PathBuf {
    with_suffix(path, PARTIAL_SUFFIX)
}

/// `NAME.partial.ckpt` for the file at `path`.
pub fn checkpoint_path(path: &Path) -> PathBuf {
    with_suffix(path, &format!("{PARTIAL_SUFFIX}{CHECKPOINT_SUFFIX}"))
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Decides what happens to `entry`, to be received at `path`, in blocks of `block_size`;
/// `sums` are the source's checksums (levels 2 and 3; without them those levels check as 1
/// does). A file that starts from nothing loses its stale partial and checkpoint here, so
/// no checkpoint can outlive the data it described.
pub fn plan_file(
    path: &Path,
    entry: &FileEntry,
    block_size: u32,
    policy: ResumePolicy,
    sums: Option<&FileSums>,
    seen: &mut Listings,
) -> io::Result<FilePlan> {
    let sums = sums.filter(|s| policy.level >= 2 && !s.is_empty() && s.is_well_formed(entry.size));
    if let Some(skip) = judge_existing(path, entry, policy, sums, seen)? {
        return Ok(skip);
    }
    if policy.level >= 1 {
        match resumable(path, entry, block_size, sums, seen) {
            Ok(Some(plan)) => return Ok(plan),
            Ok(None) => {}
            Err(why) => {
                discard_partial(path, seen)?;
                return Ok(FilePlan::send(why));
            }
        }
    }
    discard_partial(path, seen)?;
    Ok(FilePlan::send(""))
}

/// The plan that skips `entry` when a complete file at `path` stays as it is by the
/// overwrite policy; `None` when the file goes ahead. Without `sums` (levels 0 and 1) the
/// existing file is judged by size and mtime.
pub(crate) fn keep_existing_file(
    path: &Path,
    entry: &FileEntry,
    policy: ResumePolicy,
    seen: &mut Listings,
) -> io::Result<Option<FilePlan>> {
    judge_existing(path, entry, policy, None, seen)
}

fn judge_existing(
    path: &Path,
    entry: &FileEntry,
    policy: ResumePolicy,
    sums: Option<&FileSums>,
    seen: &mut Listings,
) -> io::Result<Option<FilePlan>> {
    if !seen.may_exist(path) {
        return Ok(None);
    }
    let Some(existing) = existing_file(path)? else {
        return Ok(None);
    };
    let differs = match sums {
        _ if policy.level == 0 => true,
        Some(sums) => existing.0 != entry.size || !same_content(path, entry, sums)?,
        None => existing != (entry.size, entry.mtime),
    };
    Ok(keep_existing(existing.1, differs, entry, policy).map(FilePlan::skip))
}

/// Size and mtime of the regular file at `path`, if there is one.
fn existing_file(path: &Path) -> io::Result<Option<(u64, (i64, u32))>> {
    match fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(Some((m.len(), crate::data::mtime_of(&m)))),
        Ok(_) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Whether the file at `path` has the source's content, by its checksums.
fn same_content(path: &Path, src: &FileEntry, sums: &FileSums) -> io::Result<bool> {
    let whole = RangeSet::from_ranges(std::iter::once(0..src.size));
    sums.verify(path, src.size, &whole)
}

/// Why an existing file with modification time `mtime`, which `differs` from the source,
/// stays as it is, or `None` if it is replaced.
fn keep_existing(
    mtime: (i64, u32),
    differs: bool,
    src: &FileEntry,
    policy: ResumePolicy,
) -> Option<String> {
    let older = mtime < src.mtime;
    match policy.overwrite {
        Overwrite::Never => Some("the destination exists (--overwrite never)".into()),
        Overwrite::Always => None,
        Overwrite::Diff if !differs => Some("the destination is the same as the source".into()),
        Overwrite::Older if !older => Some("the destination is not older than the source".into()),
        Overwrite::DiffOlder if !differs || !older => {
            Some("the destination is the same or not older (--overwrite diff+older)".into())
        }
        Overwrite::Diff | Overwrite::Older | Overwrite::DiffOlder => None,
    }
}

/// A resume plan from the partial's checkpoint; `Ok(None)` when there is nothing to resume
/// from, `Err(why)` when what is there cannot be trusted.
fn resumable(
    path: &Path,
    entry: &FileEntry,
    block_size: u32,
    sums: Option<&FileSums>,
    seen: &mut Listings,
) -> Result<Option<FilePlan>, String> {
    // The whole file's checkpoint and those of pieces written by split sessions, together.
    let bytes = crate::split::held(path, entry.size, entry.mtime, seen)?;
    if bytes.is_empty() {
        return Ok(None);
    }
    let ckpt = Checkpoint {
        block_size,
        size: entry.size,
        mtime: entry.mtime,
        bytes,
    };
    let partial_len = fs::metadata(partial_path(path)).map(|m| m.len());
    if partial_len.map_or(true, |len| {
        len < ckpt.bytes.ranges().last().map_or(0, |r| r.end)
    }) {
        return Err("restarted: the partial file is missing or shorter than its checkpoint".into());
    }
    let ckpt = match sums {
        Some(sums) => checked(&partial_path(path), entry.size, ckpt, sums)?,
        None => ckpt,
    };
    let held = ckpt.held_blocks(block_size);
    if held.is_empty() {
        return Ok(None);
    }
    Ok(Some(FilePlan {
        action: FileAction::Resume,
        held: held.ranges().iter().map(|r| (r.start, r.end)).collect(),
        reason: format!("{} bytes already there", ckpt.bytes.len()),
    }))
}

/// The checkpoint of the partial at `partial` as far as the source's checksums bear it out:
/// with full sums (level 3) only the chunks that match are kept; with sparse ones (level 2)
/// one mismatch condemns the whole file.
fn checked(
    partial: &Path,
    size: u64,
    mut ckpt: Checkpoint,
    sums: &FileSums,
) -> Result<Checkpoint, String> {
    let unreadable = |e: io::Error| format!("restarted: the partial file cannot be read ({e})");
    if sums.is_full(size) {
        ckpt.bytes = sums
            .matching(partial, size, &ckpt.bytes)
            .map_err(unreadable)?;
    } else if !sums
        .verify(partial, size, &ckpt.bytes)
        .map_err(unreadable)?
    {
        return Err("restarted: the partial file does not match the source's checksums".into());
    }
    Ok(ckpt)
}

/// Removes `NAME.partial.ckpt` (and a temporary one beside it) and `NAME.partial`, the
/// checkpoint first, and the checkpoints of split pieces (looked for only when there was a
/// partial).
pub fn discard_partial(path: &Path, seen: &mut Listings) -> io::Result<()> {
    let mut had_partial = false;
    let ckpt = checkpoint_path(path);
    let partial = partial_path(path);
    // Where there may be a partial, its checkpoints are looked for whatever the listing
    // says: none may outlive it.
    let all = seen.may_exist(&partial);
    for p in [temporary(&ckpt), ckpt, partial] {
        if !all && !seen.may_exist(&p) {
            continue;
        }
        match fs::remove_file(&p) {
            Ok(()) => had_partial = p.extension().is_some_and(|e| e == "partial"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    if had_partial {
        crate::split::remove_checkpoints(path, seen)?;
    }
    Ok(())
}

/// Writes the checkpoint of the file at `path` atomically: a temporary file, then a rename
/// over the previous checkpoint. The caller has made the bytes it names durable.
pub fn write_checkpoint(path: &Path, ckpt: &Checkpoint) -> io::Result<()> {
    write_checkpoint_to(&checkpoint_path(path), ckpt)
}

/// Writes a checkpoint atomically at `target` (a whole file's or a piece's).
///
/// A write that fails (a full disk) removes its temporary file: the previous checkpoint
/// stays the one that counts, and nothing else is left beside the partial.
pub fn write_checkpoint_to(target: &Path, ckpt: &Checkpoint) -> io::Result<()> {
    let tmp = temporary(target);
    let written = fs::write(&tmp, ckpt.encode()).and_then(|()| fs::rename(&tmp, target));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Where a checkpoint at `target` is written before its rename.
fn temporary(target: &Path) -> PathBuf {
    with_suffix(target, ".tmp")
}

/// Files at least this large are preallocated before their session starts.
pub const PREALLOCATE_FROM: u64 = 1 << 20;

/// Makes room for `entry` (a whole file or a piece) in `NAME.partial` before its session
/// starts, so that a full disk shows up before any data moves and the data thread never
/// waits on the allocation (seconds for gigabytes on a busy tmpfs). A piece reserves its
/// own range and sets the whole file's size. Small files are written in a block or two
/// and skip it.
pub fn preallocate_partial(path: &Path, entry: &FileEntry) -> io::Result<()> {
    if entry.whole_size() < PREALLOCATE_FROM {
        return Ok(());
    }
    let partial = partial_path(path);
    let f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&partial)?;
    // Blocks the partial already has (a resumed file) are not counted again.
    ferry_io::file::preallocate_range(&f, entry.offset(), entry.size)?;
    if f.metadata()?.len() < entry.whole_size() {
        f.set_len(entry.whole_size())?;
    }
    Ok(())
}

/// Removes the checkpoint of the file at `path`, if any.
pub fn remove_checkpoint(path: &Path) -> io::Result<()> {
    remove_checkpoint_at(&checkpoint_path(path))
}

/// Removes the checkpoint file `target` (a whole file's or a piece's), if any, and the
/// temporary one a process killed between its write and its rename left.
pub fn remove_checkpoint_at(target: &Path) -> io::Result<()> {
    for p in [temporary(target), target.to_path_buf()] {
        match fs::remove_file(&p) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn entry(size: u64, mtime: i64) -> FileEntry {
        FileEntry {
            path: "f".into(),
            size,
            mtime: (mtime, 0),
            mode: 0o644,
            part: None,
        }
    }

    fn existing(dir: &Path, size: usize, mtime: i64) -> PathBuf {
        let p = dir.join("f");
        fs::write(&p, vec![1u8; size]).unwrap();
        let f = fs::File::options().write(true).open(&p).unwrap();
        f.set_modified(UNIX_EPOCH + Duration::from_secs(mtime as u64))
            .unwrap();
        p
    }

    fn action(path: &Path, e: &FileEntry, level: u8, overwrite: Overwrite) -> FileAction {
        plan_file(
            path,
            e,
            100,
            ResumePolicy { level, overwrite },
            None,
            &mut Listings::new(),
        )
        .unwrap()
        .action
    }

    /// A checkpoint written after the directory was listed (a session taken over flushing
    /// its own) still goes with its partial: none may outlive the data it describes.
    #[test]
    fn a_checkpoint_the_listing_missed_goes_with_its_partial() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        fs::write(partial_path(&p), b"data").unwrap();
        let mut seen = Listings::new();
        for _ in 0..=crate::listing::LIST_AFTER {
            seen.may_exist(&dir.path().join("other"));
        }
        let ckpt = Checkpoint {
            block_size: 100,
            size: 4,
            mtime: (1, 0),
            bytes: RangeSet::from_ranges(std::iter::once(0..4)),
        };
        write_checkpoint(&p, &ckpt).unwrap();
        discard_partial(&p, &mut seen).unwrap();
        assert_discarded(&p, "discarded");
    }

    /// Neither `NAME.partial` nor its checkpoint is left of the file at `p`.
    fn assert_discarded(p: &Path, what: &str) {
        assert!(!partial_path(p).exists(), "{what}: the partial stays");
        assert!(
            !checkpoint_path(p).exists(),
            "{what}: the checkpoint outlived its partial"
        );
    }

    /// Replacing every file of a full directory used to list the directory once per file,
    /// looking for piece checkpoints: 25 s for 10,000 files.
    #[test]
    fn planning_a_directory_reads_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let policy = ResumePolicy {
            level: 1,
            overwrite: Overwrite::Always,
        };
        let paths: Vec<_> = (0..50).map(|i| dir.path().join(format!("f{i}"))).collect();
        for p in &paths {
            fs::write(p, b"old").unwrap();
            fs::write(partial_path(p), b"").unwrap();
        }
        let mut seen = Listings::new();
        let before = crate::listing::READS.with(|r| r.get());
        for p in &paths {
            let plan = plan_file(p, &entry(10, 1), 100, policy, None, &mut seen).unwrap();
            assert_eq!(plan.action, FileAction::Send);
            assert!(!partial_path(p).exists(), "the stale partial stays");
        }
        let reads = crate::listing::READS.with(|r| r.get()) - before;
        assert_eq!(
            reads, 1,
            "the directory was read {reads} times for 50 files"
        );
    }

    #[test]
    fn overwrite_policies_against_an_existing_file() {
        use FileAction::{Send, Skip};
        use Overwrite::*;
        let dir = tempfile::tempdir().unwrap();
        let p = existing(dir.path(), 10, 1000);
        let same = entry(10, 1000);
        let newer = entry(10, 2000);
        let older_src = entry(12, 500);
        let cases = [
            (Never, &same, 1, Skip),
            (Never, &newer, 1, Skip),
            (Always, &same, 1, Send),
            (Diff, &same, 1, Skip),
            (Diff, &same, 0, Send), // level 0 sends whole files, always
            (Diff, &newer, 1, Send),
            (Older, &newer, 1, Send),
            (Older, &older_src, 1, Skip),
            (Older, &same, 1, Skip),
            (DiffOlder, &newer, 1, Send),
            (DiffOlder, &same, 1, Skip),
            (DiffOlder, &older_src, 1, Skip),
        ];
        for (policy, e, level, want) in cases {
            assert_eq!(
                action(&p, e, level, policy),
                want,
                "{policy} {e:?} -k {level}"
            );
        }
        assert_eq!("diff+older".parse(), Ok(DiffOlder));
        assert!("sometimes".parse::<Overwrite>().is_err());
    }

    fn partial_with(dir: &Path, e: &FileEntry, ckpt: &[u8]) -> PathBuf {
        let p = dir.join("f");
        fs::write(partial_path(&p), vec![0u8; e.size as usize]).unwrap();
        fs::write(checkpoint_path(&p), ckpt).unwrap();
        p
    }

    fn ckpt(e: &FileEntry, bytes: &[std::ops::Range<u64>]) -> Checkpoint {
        Checkpoint {
            block_size: 100,
            size: e.size,
            mtime: e.mtime,
            bytes: RangeSet::from_ranges(bytes.iter().cloned()),
        }
    }

    #[test]
    fn a_good_checkpoint_resumes_whole_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let e = entry(1050, 7);
        let p = partial_with(dir.path(), &e, &ckpt(&e, &[0..250, 400..1050]).encode());
        let plan = plan_file(
            &p,
            &e,
            100,
            ResumePolicy::default_resume(),
            None,
            &mut Listings::new(),
        )
        .unwrap();
        assert_eq!(plan.action, FileAction::Resume);
        assert_eq!(plan.held, vec![(0, 2), (4, 11)]);
        assert_eq!(plan.held_bytes(1050, 100), 200 + 650);
        let wild = FilePlan {
            action: FileAction::Resume,
            held: vec![(u64::MAX - 1, u64::MAX)],
            reason: String::new(),
        };
        assert_eq!(
            wild.held_bytes(1050, 100),
            0,
            "a peer's nonsense is harmless"
        );
        // At level 0 the same partial is thrown away.
        let plan = plan_file(
            &p,
            &e,
            100,
            ResumePolicy::default(),
            None,
            &mut Listings::new(),
        )
        .unwrap();
        assert_eq!(plan.action, FileAction::Send);
        assert!(!partial_path(&p).exists() && !checkpoint_path(&p).exists());
    }

    #[test]
    fn damaged_or_foreign_checkpoints_restart_cleanly() {
        let e = entry(1050, 7);
        let good = ckpt(&e, std::slice::from_ref(&(0..500))).encode();
        let mut flipped = good.clone();
        flipped[45] ^= 0x40;
        let foreign = ckpt(&entry(1050, 8), std::slice::from_ref(&(0..500))).encode();
        for (what, bytes) in [
            ("truncated", &good[..good.len() - 3]),
            ("corrupt", &flipped[..]),
            ("foreign", &foreign[..]),
            ("empty", &[][..]),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let p = partial_with(dir.path(), &e, bytes);
            let plan = plan_file(
                &p,
                &e,
                100,
                ResumePolicy::default_resume(),
                None,
                &mut Listings::new(),
            )
            .unwrap();
            assert_eq!(plan.action, FileAction::Send, "{what}");
            assert!(
                plan.reason.starts_with("restarted"),
                "{what}: {}",
                plan.reason
            );
            assert_discarded(&p, what);
        }
    }

    #[test]
    fn checksum_levels_look_at_content() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("source");
        let data: Vec<u8> = (0..3_200_000u32).map(|i| (i % 253) as u8).collect();
        fs::write(&src, &data).unwrap();
        let e = FileEntry {
            path: "f".into(),
            size: data.len() as u64,
            mtime: (5, 0),
            mode: 0o644,
            part: None,
        };
        let level = |level| ResumePolicy {
            level,
            overwrite: Overwrite::Diff,
        };
        // The same content under another mtime: the same at 2 and 3, not at 1.
        let p = dir.path().join("f");
        fs::write(&p, &data).unwrap();
        for (l, want) in [
            (1, FileAction::Send),
            (2, FileAction::Skip),
            (3, FileAction::Skip),
        ] {
            let sums = FileSums::compute(&src, e.size, l).unwrap();
            let plan = plan_file(&p, &e, 100, level(l), Some(&sums), &mut Listings::new()).unwrap();
            assert_eq!(plan.action, want, "-k {l}");
        }
        fs::remove_file(&p).unwrap();
        // A partial whose checkpoint is right but whose bytes are not: trusted at 1 only.
        for (l, want) in [
            (1, FileAction::Resume),
            (2, FileAction::Send),
            (3, FileAction::Send),
        ] {
            partial_with(
                dir.path(),
                &e,
                &ckpt(&e, std::slice::from_ref(&(0..2_600_000))).encode(),
            );
            let sums = FileSums::compute(&src, e.size, l).unwrap();
            let plan = plan_file(&p, &e, 100, level(l), Some(&sums), &mut Listings::new()).unwrap();
            assert_eq!(plan.action, want, "-k {l}: {}", plan.reason);
        }
        // The right bytes resume at every level.
        for l in 1..=3 {
            partial_with(
                dir.path(),
                &e,
                &ckpt(&e, std::slice::from_ref(&(0..2_600_000))).encode(),
            );
            fs::write(partial_path(&p), &data).unwrap();
            let sums = FileSums::compute(&src, e.size, l).unwrap();
            let plan = plan_file(&p, &e, 100, level(l), Some(&sums), &mut Listings::new()).unwrap();
            assert_eq!(plan.action, FileAction::Resume, "-k {l}: {}", plan.reason);
        }
    }

    #[test]
    fn a_checkpoint_that_cannot_be_written_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let c = Checkpoint {
            block_size: 100,
            size: 1000,
            mtime: (1, 2),
            bytes: RangeSet::from_ranges(std::iter::once(0..500)),
        };
        // The rename fails: a non-empty directory stands where the checkpoint goes (the
        // same path a full disk takes when the write itself fails).
        fs::create_dir_all(checkpoint_path(&p).join("x")).unwrap();
        assert!(write_checkpoint(&p, &c).is_err());
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["f.partial.ckpt"], "a temporary file stayed");
    }

    #[test]
    fn a_temporary_checkpoint_left_by_a_crash_goes_with_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        let tmp = with_suffix(&checkpoint_path(&p), ".tmp");
        // A file that restarts.
        fs::write(partial_path(&p), b"x").unwrap();
        fs::write(&tmp, b"half").unwrap();
        discard_partial(&p, &mut Listings::new()).unwrap();
        assert!(!tmp.exists(), "discard_partial left {}", tmp.display());
        // A file that completes.
        fs::write(checkpoint_path(&p), b"c").unwrap();
        fs::write(&tmp, b"half").unwrap();
        remove_checkpoint(&p).unwrap();
        assert!(!tmp.exists(), "remove_checkpoint left {}", tmp.display());
        assert!(!checkpoint_path(&p).exists());
    }

    impl ResumePolicy {
        fn default_resume() -> Self {
            ResumePolicy {
                level: 1,
                overwrite: Overwrite::Diff,
            }
        }
    }
}
