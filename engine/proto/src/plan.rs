//! Splitting one transfer across several sessions: which bytes each session carries.
//!
//! A transfer of many files, or of one large file, goes faster over several sessions (one
//! per core, or per cluster node) when one session is CPU-bound. [`plan`] divides a
//! manifest into `n` session plans balanced by bytes:
//!
//! - files below the split threshold travel whole (a small file is never split: its
//!   per-file cost is a fixed price), placed largest first on the least loaded session;
//! - files at or above it are cut into ranges aligned to the split unit, and those ranges
//!   fill the sessions up to a common level, so that every plan ends within one unit of
//!   the even share whenever there are enough large-file bytes to level them.
//!
//! Every byte of every file is in exactly one piece of one plan; pieces of a split file
//! are disjoint ranges that the receiving side writes at their offsets into one
//! `NAME.partial`. Empty files go, whole, to the first plan.

/// A run of one file's bytes that one session carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The file's index in the manifest.
    pub file: u32,
    /// First byte.
    pub offset: u64,
    /// Bytes (0 only for an empty file).
    pub len: u64,
}

/// What one session carries.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionPlan {
    /// Its pieces: whole small files first, then ranges of large ones in file order.
    pub pieces: Vec<Piece>,
    /// Their bytes.
    pub bytes: u64,
}

/// Divides files of `sizes` (manifest order) among `n` sessions (at least one). Files of
/// `split_threshold` bytes or more are split into ranges aligned to `unit` (at least 1).
pub fn plan(sizes: &[u64], n: usize, split_threshold: u64, unit: u64) -> Vec<SessionPlan> {
    let n = n.max(1);
    let unit = unit.max(1);
    let mut plans = vec![SessionPlan::default(); n];
    let (big, small): (Vec<usize>, Vec<usize>) =
        (0..sizes.len()).partition(|&i| sizes[i] >= split_threshold && sizes[i] > 0);

    // Whole files, largest first, each to the least loaded session (ties: the first).
    let mut small = small;
    small.sort_by_key(|&i| (std::cmp::Reverse(sizes[i]), i));
    for i in small {
        let s = (0..n).min_by_key(|&s| plans[s].bytes).expect("n >= 1");
        let p = if sizes[i] == 0 { 0 } else { s };
        plans[p].pieces.push(Piece {
            file: i as u32,
            offset: 0,
            len: sizes[i],
        });
        plans[p].bytes += sizes[i];
    }

    // Large files as one stream, cut so that every session reaches a common level.
    let big_total: u64 = big.iter().map(|&i| sizes[i]).sum();
    if big_total == 0 {
        return plans;
    }
    let loads: Vec<u64> = plans.iter().map(|p| p.bytes).collect();
    let files: Vec<(u32, u64)> = big.iter().map(|&i| (i as u32, sizes[i])).collect();
    let cuts = cuts(&files, &loads, big_total, unit);
    let mut from = 0u64;
    for (s, &to) in cuts.iter().enumerate() {
        for piece in stream_pieces(&files, from, to) {
            plans[s].bytes += piece.len;
            plans[s].pieces.push(piece);
        }
        from = to;
    }
    plans
}

/// Where each session's share of the large-file stream ends: the least loaded fill first
/// up to a common level, and each cut falls on a multiple of `unit` within its file.
fn cuts(files: &[(u32, u64)], loads: &[u64], total: u64, unit: u64) -> Vec<u64> {
    // The level L at which max(0, L - load) summed over the sessions pours exactly `total`
    // bytes: the k least loaded sessions fill to it, L = (total + their loads) / k, for the
    // largest k whose k-th load is still below that L.
    let mut sorted = loads.to_vec();
    sorted.sort_unstable();
    let mut level = 0.0f64;
    let mut sum = 0u128;
    for (k, &load) in sorted.iter().enumerate() {
        sum += load as u128;
        let l = (total as u128 + sum) as f64 / (k + 1) as f64;
        if k == 0 || (load as f64) < l {
            level = l;
        } else {
            break;
        }
    }
    let n = loads.len();
    let mut out = Vec::with_capacity(n);
    let mut ideal = 0.0f64;
    let mut last = 0u64;
    for (s, &load) in loads.iter().enumerate() {
        ideal += (level - load as f64).max(0.0);
        let cut = if s + 1 == n {
            total
        } else {
            align(files, ideal.min(total as f64), unit)
        };
        last = last.max(cut);
        out.push(last);
    }
    out
}

/// `at` (a position in the stream of `files`) moved to the nearest multiple of `unit`
/// within the file it falls in (or that file's end).
fn align(files: &[(u32, u64)], at: f64, unit: u64) -> u64 {
    let mut start = 0u64;
    for &(_, size) in files {
        if at < (start + size) as f64 {
            let off = (at - start as f64).max(0.0);
            let rounded = (((off / unit as f64).round() as u64) * unit).min(size);
            return start + rounded;
        }
        start += size;
    }
    start
}

/// The pieces of `files` (one stream) between stream positions `from` and `to`.
fn stream_pieces(files: &[(u32, u64)], from: u64, to: u64) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut start = 0u64;
    for &(file, size) in files {
        let (a, b) = (from.max(start), to.min(start + size));
        if a < b {
            out.push(Piece {
                file,
                offset: a - start,
                len: b - a,
            });
        }
        start += size;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: u64 = 1 << 20;

    /// Every byte of every file in exactly one piece.
    fn assert_covers(sizes: &[u64], plans: &[SessionPlan]) {
        let mut by_file: Vec<Vec<(u64, u64)>> = vec![Vec::new(); sizes.len()];
        for p in plans {
            assert_eq!(p.bytes, p.pieces.iter().map(|x| x.len).sum::<u64>());
            for x in &p.pieces {
                by_file[x.file as usize].push((x.offset, x.len));
            }
        }
        for (i, mut ranges) in by_file.into_iter().enumerate() {
            ranges.sort();
            assert!(!ranges.is_empty(), "file {i} in no plan");
            let mut at = 0;
            for (off, len) in ranges {
                assert_eq!(off, at, "file {i}: gap or overlap at {at}");
                at += len;
            }
            assert_eq!(at, sizes[i], "file {i}: covered {at} of {}", sizes[i]);
        }
    }

    #[test]
    fn one_large_file_splits_evenly_on_unit_boundaries() {
        let sizes = [2048 * MIB];
        let plans = plan(&sizes, 2, 60_000_000, 4 * MIB);
        assert_covers(&sizes, &plans);
        assert_eq!(plans[0].bytes, 1024 * MIB);
        assert_eq!(
            plans[1].pieces,
            vec![Piece {
                file: 0,
                offset: 1024 * MIB,
                len: 1024 * MIB
            }]
        );
        // Three sessions: cuts on 4 MiB boundaries, within a unit of each other.
        let plans = plan(&sizes, 3, 60_000_000, 4 * MIB);
        assert_covers(&sizes, &plans);
        for p in &plans[..2] {
            assert_eq!((p.pieces[0].offset + p.bytes) % (4 * MIB), 0, "{plans:?}");
        }
        let (lo, hi) = (
            plans.iter().map(|p| p.bytes).min(),
            plans.iter().map(|p| p.bytes).max(),
        );
        assert!(hi.unwrap() - lo.unwrap() <= 4 * MIB, "{plans:?}");
    }

    #[test]
    fn small_files_travel_whole_and_large_ones_level_the_plans() {
        let mut sizes = vec![MIB; 10];
        sizes.push(100 * MIB);
        sizes.push(0);
        let plans = plan(&sizes, 3, 60 * MIB, MIB);
        assert_covers(&sizes, &plans);
        for p in &plans {
            for x in &p.pieces {
                if sizes[x.file as usize] < 60 * MIB {
                    assert_eq!((x.offset, x.len), (0, sizes[x.file as usize]));
                }
            }
        }
        let bytes: Vec<u64> = plans.iter().map(|p| p.bytes).collect();
        assert!(
            bytes.iter().max().unwrap() - bytes.iter().min().unwrap() <= MIB,
            "{bytes:?}"
        );
        // The empty file goes to the first plan.
        assert!(plans[0].pieces.iter().any(|x| x.file == 11 && x.len == 0));
    }

    #[test]
    fn one_session_carries_everything_in_order() {
        let sizes = [5, 100, 0, 7];
        let plans = plan(&sizes, 1, 50, 8);
        assert_eq!(plans.len(), 1);
        assert_covers(&sizes, &plans);
        assert_eq!(plans[0].bytes, 112);
    }

    proptest! {
        #[test]
        fn plans_cover_every_byte_once_and_balance(
            sizes in proptest::collection::vec(prop_oneof![0u64..70, 0u64..5000], 0..40),
            n in 1usize..9,
            threshold in 1u64..200,
            unit in 1u64..64,
        ) {
            let plans = plan(&sizes, n, threshold, unit);
            prop_assert_eq!(plans.len(), n);
            assert_covers(&sizes, &plans);
            // Pieces of split files start on unit boundaries or where a file starts.
            for p in &plans {
                for x in &p.pieces {
                    prop_assert!(x.offset == 0 || x.offset % unit == 0, "{:?}", x);
                }
            }
            // When the large files alone could level the small ones, every plan ends within
            // one unit of the even share.
            let small_only: Vec<u64> = plan(
                &sizes.iter().map(|&s| if s >= threshold { 0 } else { s }).collect::<Vec<_>>(),
                n, threshold, unit,
            ).iter().map(|p| p.bytes).collect();
            let top = *small_only.iter().max().unwrap();
            let deficit: u64 = small_only.iter().map(|&b| top - b).sum();
            let big: u64 = sizes.iter().filter(|&&s| s >= threshold).sum();
            if big >= deficit + n as u64 * unit {
                let bytes: Vec<u64> = plans.iter().map(|p| p.bytes).collect();
                let even = bytes.iter().sum::<u64>() as f64 / n as f64;
                for b in &bytes {
                    prop_assert!((*b as f64 - even).abs() <= unit as f64, "{:?} (unit {})", bytes, unit);
                }
            }
        }
    }
}
