//! Memory cgroups with a limit, so that the kernel's OOM killer kills a
//! backend for real: cgroup v1 (`memory.limit_in_bytes`) or v2
//! (`memory.max`), whichever hierarchy has the memory controller here. When
//! no cgroup2 is mounted at all (a virtme-ng guest may have none), one is
//! mounted on a fresh directory. Everything is undone on drop.
use std::{
    ffi::CString,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::TempDir;

/// Which cgroup interface a [`MemoryCgroup`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// A `cgroup` mount with the `memory` option.
    V1,
    /// The unified hierarchy (`cgroup2`).
    V2,
}

/// A cgroup of its own with a memory limit (and no swap to escape to);
/// its processes are killed and it is removed on drop.
///
/// Declare it before the helpers owning its processes (they are dropped
/// first, in reverse order, and reap them), though drop also kills what is
/// left in it.
pub struct MemoryCgroup {
    path: PathBuf,
    version: Version,
    /// The `cgroup.subtree_control` we added `+memory` to, to take it back.
    enabled_in: Option<PathBuf>,
    /// Our own mount of cgroup2, when nothing was mounted.
    mount: Option<TempDir>,
}

/// One line of /proc/self/mountinfo: where, what, with which options.
struct Mount {
    point: PathBuf,
    fstype: String,
    super_options: String,
}

/// Mount points are escaped in mountinfo (`\040` for a space, ...).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsStr::from_bytes(&out))
}

fn mounts() -> Vec<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").expect("read /proc/self/mountinfo");
    text.lines()
        .filter_map(|line| {
            // id parent dev root point options [optional...] - fstype source super
            let (mine, fs) = line.split_once(" - ")?;
            let point = unescape(mine.split(' ').nth(4)?);
            let mut fs = fs.split(' ');
            Some(Mount {
                point,
                fstype: fs.next()?.to_string(),
                super_options: fs.nth(1).unwrap_or_default().to_string(),
            })
        })
        .collect()
}

/// Whether the cgroup2 hierarchy at `root` offers the memory controller.
fn v2_has_memory(root: &Path) -> bool {
    std::fs::read_to_string(root.join("cgroup.controllers"))
        .is_ok_and(|c| c.split_whitespace().any(|c| c == "memory"))
}

/// The root of the mounted hierarchy holding the memory controller.
fn memory_hierarchy(mounts: &[Mount]) -> Option<(PathBuf, Version)> {
    mounts.iter().find_map(|m| match m.fstype.as_str() {
        "cgroup2" if v2_has_memory(&m.point) => Some((m.point.clone(), Version::V2)),
        "cgroup" if m.super_options.split(',').any(|o| o == "memory") => {
            Some((m.point.clone(), Version::V1))
        }
        _ => None,
    })
}

/// Mounts cgroup2 on `dir`.
fn mount_cgroup2(dir: &Path) -> std::io::Result<()> {
    let target = CString::new(dir.as_os_str().as_bytes()).expect("no NUL in a temp path");
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let rc = unsafe {
        libc::mount(
            c"cgroup2".as_ptr(),
            target.as_ptr(),
            c"cgroup2".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn unmount(dir: &Path) {
    let Ok(target) = CString::new(dir.as_os_str().as_bytes()) else {
        return;
    };
    // SAFETY: a NUL-terminated string that outlives the call.
    unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
}

/// Why no memory cgroup can be made: what the kernel says of the
/// controller, and the cgroup mounts there are.
fn no_memory_controller(mounts: &[Mount]) -> String {
    let line = std::fs::read_to_string("/proc/cgroups")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("memory"))
        .map_or("no memory line".to_string(), String::from);
    let cgroups: Vec<String> = mounts
        .iter()
        .filter(|m| m.fstype.starts_with("cgroup"))
        .map(|m| format!("{} {} {}", m.fstype, m.point.display(), m.super_options))
        .collect();
    format!(
        "no memory cgroup controller to OOM-kill a backend with: /proc/cgroups says \
         `{line}` (hierarchy, cgroups, enabled); cgroup mounts: {cgroups:?}. \
         The kernel needs CONFIG_MEMCG, and no `cgroup_disable=memory`"
    )
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn write(path: &Path, value: &str) {
    std::fs::write(path, value)
        .unwrap_or_else(|e| panic!("write `{value}` to {}: {e}", path.display()));
}

/// The number after `key ` in a flat-keyed cgroup file (`oom_kill 1`).
fn keyed(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

impl MemoryCgroup {
    /// Creates cgroup `ngx-trace-<name>-<our pid>` at the root of the memory
    /// hierarchy, limited to `limit_bytes` of memory without swap. Panics,
    /// naming why, when the kernel has no memory controller to use: a
    /// kernel test never skips silently.
    pub fn new(name: &str, limit_bytes: u64) -> Self {
        let mounts = mounts();
        let (root, version, mount) = match memory_hierarchy(&mounts) {
            Some((root, version)) => (root, version, None),
            None if !mounts.iter().any(|m| m.fstype == "cgroup2") => {
                // Nothing mounted (a bare VM): the unified hierarchy exists
                // in the kernel all the same, mount it ourselves.
                let dir = TempDir::new("cgroup2");
                mount_cgroup2(dir.path())
                    .unwrap_or_else(|e| panic!("mount cgroup2 on {}: {e}", dir.path().display()));
                if !v2_has_memory(dir.path()) {
                    unmount(dir.path());
                    panic!("{}", no_memory_controller(&mounts));
                }
                (dir.path().to_path_buf(), Version::V2, Some(dir))
            }
            None => panic!("{}", no_memory_controller(&mounts)),
        };
        let mut cgroup = Self {
            path: root.join(format!("ngx-trace-{name}-{}", std::process::id())),
            version,
            enabled_in: None,
            mount,
        };
        // From here on a panic drops `cgroup`, undoing what was done.
        if version == Version::V2 {
            // A v2 child has the memory files only once its parent hands
            // the controller down.
            let control = root.join("cgroup.subtree_control");
            if !read(&control).split_whitespace().any(|c| c == "memory") {
                write(&control, "+memory");
                cgroup.enabled_in = Some(control);
            }
        }
        // A leftover of an earlier run with our pid (empty, or rmdir fails).
        let _ = std::fs::remove_dir(&cgroup.path);
        std::fs::create_dir(&cgroup.path)
            .unwrap_or_else(|e| panic!("create cgroup {}: {e}", cgroup.path.display()));
        match version {
            Version::V1 => {
                cgroup.set("memory.limit_in_bytes", &limit_bytes.to_string());
                // No swap here: at its limit the cgroup's reclaim must not
                // push the backend's pages out instead of OOM-killing it.
                // Best effort: old v1 kernels refuse it below a hierarchy.
                let _ = std::fs::write(cgroup.path.join("memory.swappiness"), "0");
            }
            Version::V2 => {
                cgroup.set("memory.max", &limit_bytes.to_string());
                if cgroup.path.join("memory.swap.max").exists() {
                    cgroup.set("memory.swap.max", "0");
                }
            }
        }
        assert_eq!(
            cgroup.limit_bytes(),
            limit_bytes,
            "the kernel rounded the limit of {}: pass a multiple of the page size",
            cgroup.path.display()
        );
        cgroup
    }

    fn set(&self, file: &str, value: &str) {
        write(&self.path.join(file), value);
    }

    fn get(&self, file: &str) -> String {
        read(&self.path.join(file))
    }

    /// Its directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Which cgroup interface it uses.
    pub fn version(&self) -> Version {
        self.version
    }

    /// Its memory limit as the kernel holds it.
    pub fn limit_bytes(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.limit_in_bytes",
            Version::V2 => "memory.max",
        };
        let text = self.get(file);
        text.trim()
            .parse()
            .unwrap_or_else(|_| panic!("{file} of {} is `{text}`", self.path.display()))
    }

    /// Moves process `pid` (all its threads) into it: its memory from then
    /// on counts against the limit.
    pub fn add(&self, pid: u32) {
        self.set("cgroup.procs", &pid.to_string());
    }

    /// The processes in it.
    pub fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// How many processes the kernel's OOM killer killed in it, by its own
    /// count (`oom_kill` of v1's `memory.oom_control`, v2's `memory.events`).
    pub fn oom_kills(&self) -> u64 {
        let file = match self.version {
            Version::V1 => "memory.oom_control",
            Version::V2 => "memory.events",
        };
        let text = self.get(file);
        keyed(&text, "oom_kill").unwrap_or_else(|| {
            panic!(
                "no oom_kill count in {file} of {} (Linux 4.13+): {text}",
                self.path.display()
            )
        })
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        // rmdir fails while a process is in it: kill them until it is gone.
        let start = Instant::now();
        loop {
            for pid in self.procs() {
                // SAFETY: plain kill(2).
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.path).is_ok() || !self.path.exists() {
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                eprintln!("could not remove cgroup {}", self.path.display());
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(control) = &self.enabled_in {
            // Best effort: another cgroup may use it by now.
            let _ = std::fs::write(control, "-memory");
        }
        if let Some(mount) = &self.mount {
            unmount(mount.path());
        }
    }
}
