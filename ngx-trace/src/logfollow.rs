//! nginx error logs: found from the files nginx's processes hold open, and
//! followed as nginx writes them, surviving rotation like `tail -F` (a new
//! file at the path is read from its start, after the rest of the old one).
use std::{
    collections::BTreeSet,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use crate::errorlog;

/// `O_WRONLY`, `O_RDWR`: a log is open for writing.
const WRITE_FLAGS: u32 = 0o1 | 0o2;

/// The error logs the processes `pids` hold open: regular files open for
/// writing whose last lines are nginx error-log records (or, still empty,
/// whose name says `error`). Paths are as this process reaches them (through
/// `/proc/PID/root` for a process in another mount namespace).
pub fn discover(pids: &BTreeSet<u32>) -> BTreeSet<PathBuf> {
    let mut logs = BTreeSet::new();
    for &pid in pids {
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if !target.is_absolute() || target.to_string_lossy().ends_with(" (deleted)") {
                continue;
            }
            let name = fd.file_name();
            if !open_for_writing(pid, &name.to_string_lossy()) {
                continue;
            }
            let path = reachable(pid, &target);
            if !logs.contains(&path) && looks_like_error_log(&path) {
                logs.insert(path);
            }
        }
    }
    logs
}

fn open_for_writing(pid: u32, fd: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        })
        .is_some_and(|flags| flags & WRITE_FLAGS != 0)
}

/// `target` as seen by `pid`, reachable from here.
fn reachable(pid: u32, target: &Path) -> PathBuf {
    let same_root =
        std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|root| root == Path::new("/"));
    if same_root {
        target.to_path_buf()
    } else {
        Path::new(&format!("/proc/{pid}/root")).join(target.strip_prefix("/").unwrap_or(target))
    }
}

/// Whether the file at `path` is a regular file holding nginx error-log
/// records at its end (an empty one: whether its name says `error`).
fn looks_like_error_log(path: &Path) -> bool {
    let Ok(mut file) = File::open(path) else {
        return false;
    };
    let Ok(meta) = file.metadata() else {
        return false;
    };
    if !meta.is_file() {
        return false;
    }
    if meta.len() == 0 {
        return path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("error"));
    }
    let tail = meta.len().saturating_sub(8192);
    let mut text = Vec::new();
    if file.seek(SeekFrom::Start(tail)).is_err() || file.read_to_end(&mut text).is_err() {
        return false;
    }
    String::from_utf8_lossy(&text)
        .lines()
        .any(|l| errorlog::parse(l).is_some())
}

/// A log file followed by path.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    inode: u64,
    pos: u64,
    partial: Vec<u8>,
}

impl Follower {
    /// Follows `path` from its current end (lines written from now on).
    pub fn from_end(path: PathBuf) -> Self {
        let mut follower = Self {
            path,
            file: None,
            inode: 0,
            pos: 0,
            partial: Vec::new(),
        };
        if let Ok(file) = File::open(&follower.path)
            && let Ok(meta) = file.metadata()
        {
            follower.inode = meta.ino();
            follower.pos = meta.len();
            follower.file = Some(file);
        }
        follower
    }

    /// The complete lines written since the last call.
    pub fn read_lines(&mut self) -> Vec<String> {
        let mut bytes = Vec::new();
        self.read_open(&mut bytes);
        // Rotated (a new file at the path) or truncated: the rest of the old
        // one was read above; now the new one from its start.
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.ino() != self.inode || meta.len() < self.pos => {
                if let Ok(file) = File::open(&self.path) {
                    self.inode = meta.ino();
                    self.pos = 0;
                    self.file = Some(file);
                    self.read_open(&mut bytes);
                }
            }
            _ => {}
        }
        self.partial.extend_from_slice(&bytes);
        let Some(last_newline) = self.partial.iter().rposition(|&b| b == b'\n') else {
            return Vec::new();
        };
        let complete: Vec<u8> = self.partial.drain(..=last_newline).collect();
        String::from_utf8_lossy(&complete)
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn read_open(&mut self, into: &mut Vec<u8>) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        if file.seek(SeekFrom::Start(self.pos)).is_ok()
            && let Ok(n) = file.read_to_end(into)
        {
            self.pos += n as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write as _;

    use super::*;

    #[test]
    fn follows_across_rotation_and_keeps_partial_lines() {
        let dir = std::env::temp_dir().join(format!("ngx-trace-follow-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("error.log");
        std::fs::write(&path, "old line\n").unwrap();
        let mut f = Follower::from_end(path.clone());
        assert!(f.read_lines().is_empty(), "lines before start are not read");
        let mut w = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        w.write_all(b"one\ntw").unwrap();
        assert_eq!(f.read_lines(), ["one"]);
        w.write_all(b"o\n").unwrap();
        assert_eq!(f.read_lines(), ["two"]);
        // Rotation: the old file moved away (and written once more), a new one
        // created at the path.
        std::fs::rename(&path, dir.join("error.log.1")).unwrap();
        w.write_all(b"three\n").unwrap();
        std::fs::write(&path, "four\n").unwrap();
        assert_eq!(f.read_lines(), ["three", "four"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
