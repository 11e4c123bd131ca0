//! A host full of sockets: idle established TCP connections on loopback,
//! held by `idle-conns` helper processes (this crate's binary), several of
//! them since one process may hold only the hard `RLIMIT_NOFILE` (20,000 on
//! the CI machine) descriptors. Killed and reaped on drop.
use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
};

/// Connections one helper holds at most: both ends are its own, so 16,000
/// descriptors, under the hard limit of 20,000; fewer where the hard
/// limit is lower (4,096 in the test VMs), see [`per_process`].
pub const PER_PROCESS: usize = 8_000;

/// Connections one helper may hold here: [`PER_PROCESS`], or as many as
/// the hard `RLIMIT_NOFILE` leaves room for (two descriptors each, and a
/// margin for the process's own).
pub fn per_process() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid pointer to an rlimit.
    let hard = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) } == 0 {
        limit.rlim_max as usize
    } else {
        1024
    };
    PER_PROCESS.min(hard.saturating_sub(128) / 2).max(1)
}

/// Kernel memory one idle loopback connection costs, bytes: two sockets
/// (about 2.3 KB of `tcp_sock` each), their files, dentries and inodes:
/// `MemAvailable` dropped by 5.6 KB per connection on the CI host (8,000
/// connections), rounded up for other kernels.
pub const BYTES_PER_CONNECTION: u64 = 10 * 1024;

/// The binary `name` of this crate: beside the running executable (a test
/// in `target/<profile>/deps/`, or the xtask in `target/<profile>/`), or in
/// its parent directory.
pub fn helper_binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("path of the running program");
    let dir = exe.parent().expect("the program's directory");
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .map(|d| d.join(name))
        .find(|bin| bin.is_file())
        .unwrap_or_else(|| {
            panic!(
                "no {name} binary beside {} or in its parent directory: cargo builds it with \
                 the integration tests (`cargo test -p ngx-trace-tests`), or build it with \
                 `cargo build -p ngx-trace-tests --bin {name}`",
                exe.display()
            )
        })
}

/// `MemAvailable` from `/proc/meminfo`, bytes.
pub fn mem_available() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib * 1024)
}

/// How many of `wanted` idle connections this host can afford: at most a
/// quarter of `available` bytes of memory (the rest is for nginx, the
/// tracer and the test), and `wanted` when that fits. With the reason, to
/// print: a smaller run must say so, never pass silently for the full one.
pub fn affordable(wanted: usize, available: u64) -> (usize, String) {
    let fit = (available / 4 / BYTES_PER_CONNECTION) as usize;
    if fit >= wanted {
        (
            wanted,
            format!(
                "{wanted} idle connections ({} sockets): {} MiB available",
                2 * wanted,
                available >> 20
            ),
        )
    } else {
        (
            fit,
            format!(
                "only {fit} of {wanted} idle connections ({} sockets): {} MiB available, \
                 a quarter of it at {} KiB per connection (a small VM)",
                2 * fit,
                available >> 20,
                BYTES_PER_CONNECTION / 1024
            ),
        )
    }
}

/// One helper process.
struct Holder {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// Idle established connections on loopback, spread over helper processes.
pub struct IdleConnections {
    holders: Vec<Holder>,
    total: usize,
}

impl IdleConnections {
    /// Opens `total` idle connections (2 × `total` sockets in the host's
    /// table) with the `idle-conns` binary found by [`helper_binary`];
    /// returns once all are established.
    pub fn spread(total: usize) -> Self {
        Self::spread_with(&helper_binary("idle-conns"), total)
    }

    /// [`IdleConnections::spread`] with the `idle-conns` binary at `bin`.
    pub fn spread_with(bin: &std::path::Path, total: usize) -> Self {
        let processes = total.div_ceil(per_process());
        let mut idle = Self {
            holders: Vec::with_capacity(processes),
            total,
        };
        let mut readers = Vec::with_capacity(processes);
        for i in 0..processes {
            // Even shares, the first ones one more.
            let share = total / processes + usize::from(i < total % processes);
            let mut child = Command::new(bin)
                .arg(share.to_string())
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
            let stdout = child.stdout.take().expect("idle-conns stdout");
            let stdin = child.stdin.take();
            idle.holders.push(Holder { child, stdin });
            readers.push((share, BufReader::new(stdout)));
        }
        // They connect in parallel; each says `ready N` once done.
        for (share, mut reader) in readers {
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            assert_eq!(
                line.trim(),
                format!("ready {share}"),
                "an idle-conns helper failed to open its {share} connections (its stderr \
                 says why)"
            );
        }
        idle
    }

    /// Connections held.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Pids of the helper processes.
    pub fn pids(&self) -> Vec<u32> {
        self.holders.iter().map(|h| h.child.id()).collect()
    }
}

impl Drop for IdleConnections {
    fn drop(&mut self) {
        for holder in &mut self.holders {
            drop(holder.stdin.take());
            let _ = holder.child.kill();
        }
        for holder in &mut self.holders {
            let _ = holder.child.wait();
        }
    }
}
