//! Which session receives into which destination file: one at a time per file.
//!
//! A client killed halfway leaves its session behind on ferryd until the data timeout.
//! When the same file is asked for again (the client re-runs with `-k`), the new session
//! takes the file over: the old one is told to end (it flushes its checkpoint), and the
//! new one waits for it to let go before it reads that checkpoint. Without this the old
//! session's last checkpoint could land after the new session's, or after the file was
//! complete and renamed.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

/// The destination files each receiving session holds.
#[derive(Debug, Default)]
pub struct Claims {
    held: Mutex<HashMap<PathBuf, u32>>,
    freed: Condvar,
}

impl Claims {
    /// Claims `paths` for `session`. Sessions holding any of them are passed to `evict`
    /// (which should end them; their paths are freed by [`Claims::release`] when they
    /// have ended), then this waits up to `wait` for the paths to be free. Returns the
    /// paths still held by others when the wait runs out.
    pub fn claim(
        &self,
        session: u32,
        paths: &[PathBuf],
        wait: Duration,
        evict: impl Fn(u32),
    ) -> Result<(), Vec<PathBuf>> {
        let deadline = Instant::now() + wait;
        let holders: BTreeSet<u32> = {
            let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            paths
                .iter()
                .filter_map(|p| held.get(p).copied())
                .filter(|&s| s != session)
                .collect()
        };
        for old in holders {
            evict(old);
        }
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let busy: Vec<PathBuf> = paths
                .iter()
                .filter(|p| held.get(*p).is_some_and(|&s| s != session))
                .cloned()
                .collect();
            if busy.is_empty() {
                for p in paths {
                    held.insert(p.clone(), session);
                }
                return Ok(());
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(busy);
            }
            held = self
                .freed
                .wait_timeout(held, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Frees every path `session` holds.
    pub fn release(&self, session: u32) {
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.retain(|_, s| *s != session);
        self.freed.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_new_session_takes_a_file_over_once_the_old_one_lets_go() {
        let claims = Arc::new(Claims::default());
        let a = vec![PathBuf::from("/d/a")];
        claims.claim(1, &a, Duration::ZERO, |_| {}).unwrap();
        // Nobody lets go: the wait runs out.
        assert_eq!(
            claims.claim(2, &a, Duration::from_millis(20), |_| {}),
            Err(a.clone())
        );
        // The evicted session ends a little later, on another thread.
        let c = claims.clone();
        let evicted = Mutex::new(Vec::new());
        claims
            .claim(2, &a, Duration::from_secs(5), |old| {
                evicted.lock().unwrap().push(old);
                let c = c.clone();
                std::thread::spawn(move || {
                    std::thread::sleep(Duration::from_millis(30));
                    c.release(old);
                });
            })
            .unwrap();
        assert_eq!(*evicted.lock().unwrap(), vec![1]);
        // Other files are not in the way; re-claiming one's own is fine.
        claims
            .claim(3, &[PathBuf::from("/d/b")], Duration::ZERO, |_| panic!())
            .unwrap();
        claims.claim(2, &a, Duration::ZERO, |_| panic!()).unwrap();
    }
}
