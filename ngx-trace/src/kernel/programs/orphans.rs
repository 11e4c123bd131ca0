//! Entries of the in-flight map whose worker is gone and which nobody
//! else will remove. `CONNS` is a plain hash (it never evicts, see the
//! kernel side's `maps.rs`), so an entry no hook and no sweep removes
//! would stay for good. The session forgets the connections of a worker
//! whose exit it saw (within a second); this catches the rest: a worker
//! whose exit record was lost to a full ring buffer (counted there), or
//! one the session did not take for a worker. Such entries are dropped
//! once their process has been gone for [`ORPHAN_AFTER`].
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// How long a process must have been gone before its entries are dropped:
/// far longer than the session takes to report and forget the exchanges of
/// a worker whose exit it saw.
pub const ORPHAN_AFTER: Duration = Duration::from_secs(10);

/// Processes owning entries that were found gone, and since when.
#[derive(Default)]
pub struct Orphans {
    gone_since: HashMap<u32, Instant>,
}

impl Orphans {
    /// Given the processes owning entries now (`tgids`, each once) and
    /// whether a process is `alive`, the ones gone for at least
    /// [`ORPHAN_AFTER`] at `now`: their entries are to be dropped.
    pub fn sweep(&mut self, tgids: &[u32], now: Instant, alive: impl Fn(u32) -> bool) -> Vec<u32> {
        // Processes that own no entry any more are forgotten.
        self.gone_since.retain(|tgid, _| tgids.contains(tgid));
        let mut due = Vec::new();
        for &tgid in tgids {
            if alive(tgid) {
                self.gone_since.remove(&tgid);
                continue;
            }
            let since = *self.gone_since.entry(tgid).or_insert(now);
            if now.duration_since(since) >= ORPHAN_AFTER {
                due.push(tgid);
            }
        }
        due
    }
}

/// Whether process `tgid` exists (a zombie does: it may still be reaped
/// by a master that reports it).
pub fn alive(tgid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(tgid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let ret = unsafe { libc::kill(pid, 0) };
    ret == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_worker_gone_for_ten_seconds_is_swept_and_a_live_one_never() {
        let start = Instant::now();
        let mut orphans = Orphans::default();
        let alive = |tgid: u32| tgid == 100;
        assert!(orphans.sweep(&[100, 200], start, alive).is_empty());
        let later = start + ORPHAN_AFTER - Duration::from_millis(1);
        assert!(
            orphans.sweep(&[100, 200], later, alive).is_empty(),
            "not yet"
        );
        assert_eq!(
            orphans.sweep(&[100, 200], start + ORPHAN_AFTER, alive),
            [200]
        );
        // Its entries forgotten, it is forgotten too.
        orphans.sweep(&[100], start + ORPHAN_AFTER, alive);
        assert!(orphans.gone_since.is_empty());
    }

    #[test]
    fn a_pid_seen_alive_again_starts_over() {
        // A pid reused by a new process (or a failed check) restarts the wait.
        let start = Instant::now();
        let mut orphans = Orphans::default();
        orphans.sweep(&[300], start, |_| false);
        orphans.sweep(&[300], start + Duration::from_secs(5), |_| true);
        let at = start + ORPHAN_AFTER;
        assert!(orphans.sweep(&[300], at, |_| false).is_empty());
        assert_eq!(orphans.sweep(&[300], at + ORPHAN_AFTER, |_| false), [300]);
    }

    #[test]
    fn this_process_is_alive_and_a_reaped_child_is_not() {
        assert!(alive(std::process::id()));
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
        assert!(!alive(0), "pid 0 would mean the process group");
        assert!(!alive(u32::MAX), "pid -1 would mean every process");
    }
}
