//! What a worker's descriptors were when its `socket()` failed: the
//! evidence of an exchange nginx could not start for want of them.
use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// `ENFILE`: the host's file table is full (`EMFILE` is the worker's own limit).
const ENFILE: u32 = 23;

/// How long one reading serves a burst of failures of the same worker.
const READ_EVERY: Duration = Duration::from_secs(1);

/// The most workers whose reading is kept.
const WORKERS_KEPT: usize = 1024;

/// Readings by worker, with when they were taken.
#[derive(Debug, Default)]
pub(super) struct FdCounts(HashMap<u32, (Instant, String)>);

impl FdCounts {
    /// What the descriptors of worker `pid` were when its `socket()` failed
    /// with `errno` (read now, at most once a second per worker): for
    /// EMFILE its limit (every descriptor below it is in use: counting them
    /// would cost one read per descriptor, a million with a raised limit),
    /// or the host's count for ENFILE.
    pub(super) fn describe(&mut self, pid: u32, errno: u32) -> String {
        if let Some((at, text)) = self.0.get(&pid)
            && at.elapsed() < READ_EVERY
        {
            return text.clone();
        }
        let text = if errno == ENFILE {
            let nr = std::fs::read_to_string("/proc/sys/fs/file-nr").unwrap_or_default();
            let fields: Vec<&str> = nr.split_whitespace().collect();
            match (fields.first(), fields.get(2)) {
                (Some(open), Some(max)) => {
                    format!("the host has {open} files open, its limit (fs.file-max) is {max}")
                }
                _ => "the host's file table is full (fs.file-max)".to_string(),
            }
        } else {
            let limit = std::fs::read_to_string(format!("/proc/{pid}/limits"))
                .ok()
                .and_then(|text| open_files_limit(&text));
            match limit {
                Some(limit) => format!(
                    "the worker holds as many descriptors as its limit, {limit} \
                     (worker_rlimit_nofile)"
                ),
                None => "the worker's descriptor limit could not be read (it is gone)".to_string(),
            }
        };
        if self.0.len() > WORKERS_KEPT {
            self.0.clear();
        }
        self.0.insert(pid, (Instant::now(), text.clone()));
        text
    }
}

/// The soft "Max open files" limit in the text of `/proc/<pid>/limits`.
fn open_files_limit(limits: &str) -> Option<String> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This process's soft `RLIMIT_NOFILE`, as the kernel has it.
    fn own_soft_limit() -> u64 {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct it is given.
        assert_eq!(
            unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
            0
        );
        limit.rlim_cur
    }

    #[test]
    fn a_worker_out_of_descriptors_is_told_by_its_own_limit() {
        let pid = std::process::id();
        let text = FdCounts::default().describe(pid, 24);
        assert_eq!(
            text,
            format!(
                "the worker holds as many descriptors as its limit, {} (worker_rlimit_nofile)",
                own_soft_limit()
            )
        );
    }

    #[test]
    fn a_full_file_table_is_told_by_the_hosts_count() {
        let text = FdCounts::default().describe(std::process::id(), ENFILE);
        let max = std::fs::read_to_string("/proc/sys/fs/file-max").unwrap();
        assert!(
            text.starts_with("the host has ")
                && text.ends_with(&format!("its limit (fs.file-max) is {}", max.trim())),
            "{text}"
        );
    }

    #[test]
    fn a_gone_worker_is_said_to_be_gone_and_a_burst_reads_once() {
        let mut counts = FdCounts::default();
        // Beyond pid_max: no such process.
        let text = counts.describe(u32::MAX, 24);
        assert_eq!(
            text,
            "the worker's descriptor limit could not be read (it is gone)"
        );
        // Within the second, the reading is reused, not taken again.
        counts.0.insert(7, (Instant::now(), "kept".to_string()));
        assert_eq!(counts.describe(7, 24), "kept");
    }

    #[test]
    fn the_soft_limit_is_read_from_the_limits_table() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63432                63432                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(open_files_limit(limits).as_deref(), Some("1024"));
        assert_eq!(open_files_limit("Limit  Soft Limit\n"), None);
    }
}
