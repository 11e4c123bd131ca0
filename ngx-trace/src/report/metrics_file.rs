//! The `--metrics-file` writer thread: the registry is encoded and written
//! every second here, never on the session's thread, so a slow or stuck
//! filesystem cannot stop the session from draining the kernel's records.
//! A write still running when the next is due makes that one skipped and
//! counted.
use std::{
    collections::HashSet,
    io,
    path::PathBuf,
    sync::{Arc, Condvar, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

use fastmetrics::registry::Registry;

use crate::{notice::notice, report::metrics};

/// How often the file is written.
pub const EVERY: Duration = Duration::from_secs(1);
/// How long the last write at exit is waited for, at most.
const LAST_WRITE_WAIT: Duration = Duration::from_secs(5);
/// How often late writes are said, at most.
const LATE_SAID_EVERY: Duration = Duration::from_secs(60);
/// Distinct write errors said, at most.
const ERRORS_SAID: usize = 16;

/// The session's end of the thread.
pub struct MetricsFile {
    stop: Arc<(Mutex<bool>, Condvar)>,
    done: mpsc::Receiver<u64>,
}

/// After a write due at `due` ends at `now`: when the next is due and how
/// many passes were skipped (their time came while it ran).
pub fn after_write(due: Instant, now: Instant, every: Duration) -> (Instant, u64) {
    let late = now.saturating_duration_since(due);
    let skipped = (late.as_nanos() / every.as_nanos().max(1)) as u64;
    let next = due + every * u32::try_from(skipped + 1).unwrap_or(u32::MAX);
    (next, skipped)
}

impl MetricsFile {
    /// Starts writing `registry` to `path` now and every [`EVERY`].
    pub fn start(registry: Arc<Registry>, path: PathBuf) -> io::Result<Self> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (tx, done) = mpsc::sync_channel(1);
        thread::Builder::new()
            .name("ngx-trace-metrics-file".into())
            .spawn({
                let stop = Arc::clone(&stop);
                move || {
                    let skipped = run(&registry, &path, &stop);
                    let _ = tx.send(skipped);
                }
            })
            .map_err(|e| {
                io::Error::other(format!("failed to start the metrics file thread: {e}"))
            })?;
        Ok(Self { stop, done })
    }

    /// Writes the file a last time and stops; waits for that write at
    /// most [`LAST_WRITE_WAIT`].
    pub fn finish(self) {
        let (lock, wake) = &*self.stop;
        if let Ok(mut stop) = lock.lock() {
            *stop = true;
        }
        wake.notify_all();
        match self.done.recv_timeout(LAST_WRITE_WAIT) {
            Ok(0) => {}
            Ok(skipped) => notice(&format!(
                "{skipped} writes of the metrics file were skipped: the one before was \
                 still running (a slow filesystem?)"
            )),
            Err(_) => notice(&format!(
                "the last write of the metrics file did not end within {} s: the file may \
                 be older than the counts printed",
                LAST_WRITE_WAIT.as_secs()
            )),
        }
    }
}

/// The thread: writes, then waits for the next due time or the stop (a
/// last write); returns the writes skipped.
fn run(registry: &Registry, path: &std::path::Path, stop: &(Mutex<bool>, Condvar)) -> u64 {
    let mut said = HashSet::new();
    let mut skipped_total = 0;
    let mut late_said: Option<Instant> = None;
    let mut due = Instant::now();
    loop {
        write(registry, path, &mut said);
        let (next, skipped) = after_write(due, Instant::now(), EVERY);
        skipped_total += skipped;
        if skipped > 0 && late_said.is_none_or(|at| at.elapsed() >= LATE_SAID_EVERY) {
            late_said = Some(Instant::now());
            notice(&format!(
                "writing the metrics file {} took over {} s: {skipped_total} writes skipped so \
                 far (the counts printed are not affected)",
                path.display(),
                skipped
            ));
        }
        due = next;
        let (lock, wake) = stop;
        let Ok(mut stopped) = lock.lock() else {
            return skipped_total;
        };
        while !*stopped {
            let wait = due.saturating_duration_since(Instant::now());
            if wait.is_zero() {
                break;
            }
            stopped = match wake.wait_timeout(stopped, wait) {
                Ok((s, _)) => s,
                Err(_) => return skipped_total,
            };
        }
        if *stopped {
            drop(stopped);
            write(registry, path, &mut said);
            return skipped_total;
        }
    }
}

/// Writes the file once; a failure is said once per cause and the
/// thread goes on.
fn write(registry: &Registry, path: &std::path::Path, said: &mut HashSet<String>) {
    if let Err(e) = metrics::write_registry(registry, path) {
        let message = format!("{e:#}");
        if said.len() < ERRORS_SAID && said.insert(message.clone()) {
            notice(&message);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_on_time_skips_nothing() {
        let due = Instant::now();
        let (next, skipped) = after_write(due, due + Duration::from_millis(30), EVERY);
        assert_eq!((next, skipped), (due + EVERY, 0));
    }

    #[test]
    fn a_write_running_past_the_next_due_time_skips_it_and_counts_it() {
        let due = Instant::now();
        // 3.2 s: the passes due at 1, 2 and 3 s were skipped; the next at 4 s.
        let (next, skipped) = after_write(due, due + Duration::from_millis(3200), EVERY);
        assert_eq!(skipped, 3);
        assert_eq!(next, due + 4 * EVERY);
    }

    #[test]
    fn the_file_is_written_at_start_and_again_at_the_stop() {
        let dir = std::env::temp_dir().join(format!("ngx-trace-mfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ngx-trace.prom");
        let m = metrics::Metrics::new(&[], 10, Some(path.clone())).unwrap();
        m.set_traced_workers(3);
        let writer = MetricsFile::start(m.registry(), path.clone()).unwrap();
        let started = Instant::now();
        while !path.exists() && started.elapsed() < Duration::from_secs(1) {
            thread::sleep(Duration::from_millis(10));
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ngxtrace_traced_workers 3"), "{text}");
        m.set_traced_workers(5);
        writer.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ngxtrace_traced_workers 5"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
