//! Checkpoints written off the data thread.
//!
//! Making a partial file durable is an `fdatasync`, and at gigabits per second a second's
//! worth of dirty pages takes hundreds of milliseconds to reach the disk. Done on the data
//! thread, that stall overflows the socket buffers and the sender re-sends what was lost.
//! A [`Checkpointer`] does it on a thread of its own: the data thread hands it a clone of
//! the partial file's descriptor and a snapshot of the bytes written so far; the worker
//! syncs the file, then writes the checkpoint. Every byte in the snapshot was written
//! before the snapshot was taken, so the sync covers it: the checkpoint still never names
//! data that is not durable.

use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::sync::mpsc;
use std::thread::JoinHandle;

use ferry_proto::checkpoint::Checkpoint;

use crate::resume;

/// One checkpoint to make durable and write.
struct Job {
    file: File,
    path: PathBuf,
    ckpt: Checkpoint,
    sync: bool,
}

/// A worker thread (started on first use) that syncs partial files and writes their
/// checkpoints, in the order they were submitted.
#[derive(Default)]
pub(crate) struct Checkpointer {
    worker: Option<Worker>,
    in_flight: usize,
}

struct Worker {
    jobs: Option<mpsc::Sender<Job>>,
    acks: mpsc::Receiver<io::Result<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Whether checkpoints handed over earlier are still being written; collects the
    /// outcome of those that were, the first failure as an error.
    pub(crate) fn is_busy(&mut self) -> io::Result<bool> {
        if let Some(w) = &self.worker {
            while self.in_flight > 0 {
                match w.acks.try_recv() {
                    Ok(r) => {
                        self.in_flight -= 1;
                        r?;
                    }
                    Err(_) => break,
                }
            }
        }
        Ok(self.in_flight > 0)
    }

    /// Hands over the checkpoint `ckpt`, to be written at `path`, of a partial file open as
    /// `file`: the worker syncs the partial (if `sync`), then writes the checkpoint.
    pub(crate) fn submit(
        &mut self,
        file: &File,
        path: PathBuf,
        ckpt: Checkpoint,
        sync: bool,
    ) -> io::Result<()> {
        let job = Job {
            file: file.try_clone()?,
            path,
            ckpt,
            sync,
        };
        let worker = match &mut self.worker {
            Some(w) => w,
            None => self.worker.insert(Worker::start()?),
        };
        let sent = worker.jobs.as_ref().map(|j| j.send(job));
        match sent {
            Some(Ok(())) => {
                self.in_flight += 1;
                Ok(())
            }
            _ => Err(io::Error::other("the checkpoint thread has stopped")),
        }
    }

    /// Waits until every checkpoint handed over is written; the first failure is an error.
    pub(crate) fn wait_idle(&mut self) -> io::Result<()> {
        let Some(w) = &self.worker else {
            return Ok(());
        };
        let mut first_error = Ok(());
        while self.in_flight > 0 {
            let r = w
                .acks
                .recv()
                .unwrap_or_else(|_| Err(io::Error::other("the checkpoint thread has stopped")));
            self.in_flight -= 1;
            if first_error.is_ok() {
                first_error = r;
            }
        }
        first_error
    }
}

impl Worker {
    fn start() -> io::Result<Worker> {
        let (jobs, rx) = mpsc::channel::<Job>();
        let (ack, acks) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ferry-ckpt".into())
            .spawn(move || {
                for job in rx {
                    let synced = if job.sync {
                        job.file.sync_data()
                    } else {
                        Ok(())
                    };
                    let r = synced.and_then(|()| resume::write_checkpoint_to(&job.path, &job.ckpt));
                    if ack.send(r).is_err() {
                        break;
                    }
                }
            })?;
        Ok(Worker {
            jobs: Some(jobs),
            acks,
            thread: Some(thread),
        })
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        // Closing the queue ends the thread once it has written what it was given.
        self.jobs.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferry_proto::RangeSet;

    #[test]
    fn checkpoints_are_written_in_the_background_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let partial = File::create(resume::partial_path(&path)).unwrap();
        let mut c = Checkpointer::default();
        assert!(!c.is_busy().unwrap());
        for end in [10, 20, 30] {
            let ckpt = Checkpoint {
                block_size: 10,
                size: 100,
                mtime: (1, 2),
                bytes: RangeSet::from_ranges(std::iter::once(0..end)),
            };
            c.submit(&partial, resume::checkpoint_path(&path), ckpt, true)
                .unwrap();
        }
        c.wait_idle().unwrap();
        assert!(!c.is_busy().unwrap());
        let bytes = std::fs::read(resume::checkpoint_path(&path)).unwrap();
        let last = Checkpoint::decode(&bytes).unwrap();
        assert_eq!(last.bytes.ranges(), std::slice::from_ref(&(0..30)));
    }
}
