//! nginx error logs: found from the files nginx's processes hold open, and
//! followed as nginx writes them, surviving rotation like `tail -F` (a new
//! file at the path is read from its start, after the rest of the old one).
//!
//! ngx-trace reads them as root, and anything can call itself nginx: what
//! a traced process holds open, and what its log path leads to, are its
//! choice. So a log is only ever read if it is a regular file (a FIFO would
//! hang the tracer, `/dev/zero` never ends, opening some devices acts), it
//! is opened `O_PATH` first and checked before it is opened for reading; a
//! discovered log is opened through the descriptor nginx holds
//! (`/proc/<pid>/fd/N`: the very file, whatever a path in another mount
//! namespace would resolve to on this host), a log given by path is never
//! opened through a symbolic link at its end; and no poll reads more than
//! [`READ_PER_POLL`] of a log nor keeps a line longer than [`MAX_LINE`].
use std::{
    fs::{File, Metadata, OpenOptions},
    io::{self, Read as _, Seek as _, SeekFrom},
    os::{
        fd::AsRawFd as _,
        unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::{Path, PathBuf},
};

use crate::{nginx::errorlog, notice::notice};

/// `O_WRONLY`, `O_RDWR`: a log is open for writing.
const WRITE_FLAGS: u32 = 0o1 | 0o2;
/// Most bytes read from one log in one poll: a log written faster (or one
/// that never ends) is read on at the next poll, the tracer keeps up with
/// the rest.
pub const READ_PER_POLL: u64 = 1 << 20;
/// Longest line kept, in bytes (nginx's own records stay under 4 KiB); a
/// longer one is cut there and marked with [`CUT_MARK`].
pub const MAX_LINE: usize = 16 * 1024;
/// Ends a line cut at [`MAX_LINE`].
pub const CUT_MARK: &str = " [ngx-trace: line cut at 16 KiB]";

/// A file's identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ident {
    dev: u64,
    ino: u64,
}

impl Ident {
    fn of(meta: &Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
        }
    }
}

/// What a file that is not a regular one is, for an error.
fn kind_of(meta: &Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_symlink() {
        "a symbolic link"
    } else if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file, never blocking: it is
/// opened `O_PATH` (which opens no device and waits on no FIFO), checked,
/// then reopened for reading through `/proc/self/fd`. With `follow` false a
/// symbolic link at the end of `path` is refused; with `follow` true, a
/// magic link (`/proc/<pid>/fd/N`) leads to the file it stands for.
pub fn open_regular(path: &Path, follow: bool) -> io::Result<File> {
    let nofollow = if follow { 0 } else { libc::O_NOFOLLOW };
    let handle = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | nofollow)
        .open(path)?;
    let meta = handle.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is {}, not a regular file",
                path.display(),
                kind_of(&meta)
            ),
        ));
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(format!("/proc/self/fd/{}", handle.as_raw_fd()))?;
    let opened = file.metadata()?;
    if !opened.is_file() || Ident::of(&opened) != Ident::of(&meta) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} changed while it was opened", path.display()),
        ));
    }
    Ok(file)
}

/// Where a followed log's current file is found.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// A path given to ngx-trace: a new file there is a rotation.
    Path(PathBuf),
    /// Descriptor `fd` of process `pid`, while it names `target` (the log's
    /// path as nginx sees it): a new file behind it is a rotation.
    Fd { pid: u32, fd: u32, target: PathBuf },
}

/// What a source leads to now.
enum Now {
    /// A regular file: its identity and size.
    File(Ident, u64),
    /// Nothing to read there now (a rotation under way, something else
    /// planted at the path): the file followed is kept.
    Nothing,
    /// The process closed the log, or is gone.
    Gone,
}

impl Source {
    fn fd_path(pid: u32, fd: u32) -> PathBuf {
        PathBuf::from(format!("/proc/{pid}/fd/{fd}"))
    }

    /// What is there now (a stat, nothing opened), `current` being the
    /// file followed.
    fn now(&self, current: Option<Ident>) -> Now {
        match self {
            Source::Path(path) => match std::fs::symlink_metadata(path) {
                Ok(m) if m.is_file() => Now::File(Ident::of(&m), m.len()),
                _ => Now::Nothing,
            },
            Source::Fd { pid, fd, target } => {
                let link = Self::fd_path(*pid, *fd);
                let Ok(m) = std::fs::metadata(&link) else {
                    return Now::Gone;
                };
                let ident = Ident::of(&m);
                // The file followed (renamed by a rotation, perhaps: nginx
                // writes on to it until told to reopen), or a new file at
                // the log's path behind the same descriptor number.
                if m.is_file()
                    && (Some(ident) == current
                        || std::fs::read_link(&link).ok().as_ref() == Some(target))
                {
                    Now::File(ident, m.len())
                } else {
                    Now::Gone
                }
            }
        }
    }

    /// Opens the file there now, if it is a regular file.
    fn open(&self) -> io::Result<File> {
        match self {
            Source::Path(path) => open_regular(path, false),
            Source::Fd { pid, fd, .. } => open_regular(&Self::fd_path(*pid, *fd), true),
        }
    }
}

/// A log as a traced process holds it: which process's root it is in,
/// and its path there. The same log found again (through another process,
/// or after nginx reopened it) has the same key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogKey {
    root: Ident,
    path: PathBuf,
}

/// A log found open in a traced process.
pub struct Found {
    key: LogKey,
    /// Its path as this process would name it (for notices).
    pub name: PathBuf,
    source: Source,
    ident: Ident,
}

/// The error logs the processes `pids` hold open: regular files open for
/// writing whose last lines are nginx error-log records (or, still empty,
/// whose name says `error`), each once (the master and its workers share
/// theirs). Each is opened through the process's descriptor, never by path.
pub fn discover<'a>(pids: impl IntoIterator<Item = &'a u32>) -> Vec<Found> {
    let mut found: Vec<Found> = Vec::new();
    for &pid in pids {
        let Ok(root) = std::fs::metadata(format!("/proc/{pid}/root")) else {
            continue;
        };
        let root = Ident::of(&root);
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Some(fd) = fd.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(target) = std::fs::read_link(Source::fd_path(pid, fd)) else {
                continue;
            };
            if !target.is_absolute() || target.to_string_lossy().ends_with(" (deleted)") {
                continue;
            }
            let key = LogKey { root, path: target };
            if found.iter().any(|f| f.key == key) || !open_for_writing(pid, fd) {
                continue;
            }
            let Ok(mut file) = open_regular(&Source::fd_path(pid, fd), true) else {
                continue;
            };
            let Ok(meta) = file.metadata() else {
                continue;
            };
            let ident = Ident::of(&meta);
            if found.iter().any(|f| f.ident == ident)
                || !looks_like_error_log(&mut file, &meta, &key.path)
            {
                continue;
            }
            found.push(Found {
                name: reachable(pid, &key.path),
                source: Source::Fd {
                    pid,
                    fd,
                    target: key.path.clone(),
                },
                key,
                ident,
            });
        }
    }
    found
}

fn open_for_writing(pid: u32, fd: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/fdinfo/{fd}"))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("flags:"))
                .and_then(|f| u32::from_str_radix(f.trim(), 8).ok())
        })
        .is_some_and(|flags| flags & WRITE_FLAGS != 0)
}

/// `target` as seen by `pid`, as this process would name it (for notices
/// only: it is never opened by this name).
fn reachable(pid: u32, target: &Path) -> PathBuf {
    let same_root =
        std::fs::read_link(format!("/proc/{pid}/root")).is_ok_and(|root| root == Path::new("/"));
    if same_root {
        target.to_path_buf()
    } else {
        Path::new(&format!("/proc/{pid}/root")).join(target.strip_prefix("/").unwrap_or(target))
    }
}

/// Whether `file` (a regular file, `meta` its metadata, `name` its path)
/// holds nginx error-log records at its end (an empty one: whether its name
/// says `error`).
fn looks_like_error_log(file: &mut File, meta: &Metadata, name: &Path) -> bool {
    if meta.len() == 0 {
        return name
            .file_name()
            .is_some_and(|n| n.to_string_lossy().contains("error"));
    }
    let tail = meta.len().saturating_sub(8192);
    let mut text = Vec::new();
    if file.seek(SeekFrom::Start(tail)).is_err() || file.take(8192).read_to_end(&mut text).is_err()
    {
        return false;
    }
    String::from_utf8_lossy(&text)
        .lines()
        .any(|l| errorlog::parse(l).is_some())
}

/// Splits bytes into lines of at most [`MAX_LINE`] bytes, across calls: a
/// line not yet ended is kept for the next call, a longer one is cut,
/// marked, and the rest of it skipped.
#[derive(Default)]
pub struct LineCutter {
    partial: Vec<u8>,
    skipping: bool,
}

impl LineCutter {
    /// The lines `bytes` ends (without their `\n`, nor a `\r` before it;
    /// invalid UTF-8 replaced).
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for chunk in bytes.split_inclusive(|&b| b == b'\n') {
            let ended = chunk.last() == Some(&b'\n');
            let body = if ended {
                &chunk[..chunk.len() - 1]
            } else {
                chunk
            };
            if self.skipping {
                self.skipping = !ended;
                continue;
            }
            let room = MAX_LINE - self.partial.len();
            if body.len() > room {
                self.partial.extend_from_slice(&body[..room]);
                let mut line = String::from_utf8_lossy(&self.partial).into_owned();
                line.push_str(CUT_MARK);
                lines.push(line);
                self.partial.clear();
                self.skipping = !ended;
                continue;
            }
            self.partial.extend_from_slice(body);
            if ended {
                let line = self.partial.strip_suffix(b"\r").unwrap_or(&self.partial);
                lines.push(String::from_utf8_lossy(line).into_owned());
                self.partial.clear();
            }
        }
        lines
    }

    /// The last line, when the bytes ended without a newline.
    pub fn finish(&mut self) -> Option<String> {
        // A line cut already was given (and the partial emptied).
        self.skipping = false;
        let rest = std::mem::take(&mut self.partial);
        (!rest.is_empty()).then(|| {
            let line = rest.strip_suffix(b"\r").unwrap_or(&rest);
            String::from_utf8_lossy(line).into_owned()
        })
    }
}

/// A log file followed.
pub struct Follower {
    name: PathBuf,
    /// Discovered logs only: to match the log found again.
    key: Option<LogKey>,
    source: Source,
    file: Option<(File, Ident)>,
    pos: u64,
    lines: LineCutter,
    /// The source is gone (the process closed the log, or exited): the
    /// file still open here is read to its end.
    lost: bool,
    /// Gone, and not found again: let go of once read to its end.
    retiring: bool,
    /// Whether the last read reached the end of the file.
    at_end: bool,
}

impl Follower {
    fn new(name: PathBuf, key: Option<LogKey>, source: Source) -> Self {
        let mut follower = Self {
            name,
            key,
            source,
            file: None,
            pos: 0,
            lines: LineCutter::default(),
            lost: false,
            retiring: false,
            at_end: true,
        };
        if let Ok(file) = follower.source.open()
            && let Ok(meta) = file.metadata()
        {
            follower.pos = meta.len();
            follower.file = Some((file, Ident::of(&meta)));
        }
        follower
    }

    /// Follows the regular file at `path` from its current end (lines
    /// written from now on); fails if there is something else at `path`
    /// (a symbolic link, a FIFO, a device).
    pub fn from_end(path: PathBuf) -> io::Result<Self> {
        open_regular(&path, false)?;
        Ok(Self::new(path.clone(), None, Source::Path(path)))
    }

    /// The complete lines written since the last call (at most
    /// [`READ_PER_POLL`] bytes of them; the rest at the next call).
    pub fn read_lines(&mut self) -> Vec<String> {
        let mut bytes = Vec::new();
        let mut budget = READ_PER_POLL;
        self.at_end = self.read_open(&mut bytes, &mut budget);
        if self.at_end {
            // Rotated (a new file there) or truncated: the rest of the old
            // one was read above; now the new one from its start.
            let current = self.file.as_ref().map(|(_, i)| *i);
            match self.source.now(current) {
                Now::File(ident, len) => {
                    self.lost = false;
                    if current != Some(ident) {
                        if let Ok(file) = self.source.open()
                            && let Ok(meta) = file.metadata()
                        {
                            self.file = Some((file, Ident::of(&meta)));
                            self.pos = 0;
                            self.at_end = self.read_open(&mut bytes, &mut budget);
                        }
                    } else if len < self.pos {
                        self.pos = 0;
                        self.at_end = self.read_open(&mut bytes, &mut budget);
                    }
                }
                Now::Nothing => {}
                Now::Gone => self.lost = true,
            }
        }
        self.lines.push(&bytes)
    }

    /// Reads the open file from `pos`, at most `budget` bytes; returns
    /// whether its end was reached.
    fn read_open(&mut self, into: &mut Vec<u8>, budget: &mut u64) -> bool {
        let Some((file, _)) = self.file.as_mut() else {
            return true;
        };
        if file.seek(SeekFrom::Start(self.pos)).is_err() {
            return true;
        }
        match file.take(*budget).read_to_end(into) {
            Ok(n) => {
                self.pos += n as u64;
                *budget -= n as u64;
                *budget > 0
            }
            Err(_) => true,
        }
    }
}

/// The logs followed.
#[derive(Default)]
pub struct Logs {
    followers: Vec<Follower>,
}

impl Logs {
    /// Whether no log is followed.
    pub fn is_empty(&self) -> bool {
        self.followers.is_empty()
    }

    /// Follows the regular file at `path` (given to ngx-trace) from its end.
    pub fn follow_path(&mut self, path: PathBuf) -> io::Result<()> {
        let follower = Follower::from_end(path)?;
        notice(&format!("following {}", follower.name.display()));
        self.followers.push(follower);
        Ok(())
    }

    /// Takes the logs [`discover`] found: a new one is followed from its
    /// end, one followed already reads on from where it is found now (a
    /// log nginx reopened after a rotation: the new file from its start).
    /// A discovered log that no traced process holds any more is let go
    /// of once the rest of it is read.
    pub fn update(&mut self, found: Vec<Found>) {
        for f in &mut self.followers {
            let Some(key) = &f.key else {
                continue;
            };
            match found.iter().find(|n| n.key == *key) {
                Some(n) => {
                    f.source = n.source.clone();
                    f.lost = false;
                    f.retiring = false;
                }
                None => {
                    let current = f.file.as_ref().map(|(_, i)| *i);
                    f.retiring = f.lost || matches!(f.source.now(current), Now::Gone);
                }
            }
        }
        for n in found {
            let known = self.followers.iter().any(|f| {
                f.key.as_ref() == Some(&n.key)
                    || f.file.as_ref().is_some_and(|(_, i)| *i == n.ident)
            });
            if !known {
                notice(&format!("following {}", n.name.display()));
                self.followers
                    .push(Follower::new(n.name, Some(n.key), n.source));
            }
        }
    }

    /// The complete lines written to every log since the last call.
    pub fn read_lines(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        self.followers.retain_mut(|f| {
            lines.extend(f.read_lines());
            if f.retiring && f.at_end {
                notice(&format!(
                    "stopped following {}: no traced process holds it open any more",
                    f.name.display()
                ));
                return false;
            }
            true
        });
        lines
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, sync::mpsc, time::Duration};

    use super::*;

    const RECORD: &str = "2026/11/27 01:02:03 [error] 4243#4243: *17 connect() failed (111: \
                          Connection refused) while connecting to upstream, client: 127.0.0.1";

    /// A new empty directory for one test.
    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ngx-trace-follow-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// `f`'s result, or a failure if it takes more than 10 s (a hang).
    fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(10))
            .expect("it hung instead of refusing")
    }

    fn mkfifo(path: &Path) {
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    fn append(path: &Path) -> File {
        OpenOptions::new().append(true).open(path).unwrap()
    }

    #[test]
    fn follows_across_rotation_and_keeps_partial_lines() {
        let dir = temp_dir("rotation");
        let path = dir.join("error.log");
        std::fs::write(&path, "old line\n").unwrap();
        let mut f = Follower::from_end(path.clone()).unwrap();
        assert!(f.read_lines().is_empty(), "lines before start are not read");
        let mut w = append(&path);
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

    #[test]
    fn a_fifo_is_refused_without_hanging() {
        let dir = temp_dir("fifo");
        let fifo = dir.join("error.log");
        mkfifo(&fifo);
        let (by_path, through_link) = within({
            let fifo = fifo.clone();
            move || {
                (
                    Follower::from_end(fifo.clone())
                        .err()
                        .map(|e| e.to_string()),
                    open_regular(&fifo, true).err().map(|e| e.to_string()),
                )
            }
        });
        let by_path = by_path.expect("refused");
        assert!(by_path.contains("a FIFO"), "{by_path}");
        assert!(through_link.expect("refused").contains("a FIFO"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_to_dev_zero_is_refused_without_reading_it() {
        let dir = temp_dir("zero");
        let link = dir.join("error.log");
        std::os::unix::fs::symlink("/dev/zero", &link).unwrap();
        let (by_path, followed) = within({
            let link = link.clone();
            move || {
                (
                    Follower::from_end(link.clone())
                        .err()
                        .map(|e| e.to_string()),
                    open_regular(&link, true).err().map(|e| e.to_string()),
                )
            }
        });
        let by_path = by_path.expect("refused");
        assert!(by_path.contains("a symbolic link"), "{by_path}");
        // Even where links are followed (a process's descriptor), a device
        // is not read.
        assert!(followed.expect("refused").contains("a character device"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_link_planted_at_a_followed_path_is_not_followed() {
        let dir = temp_dir("planted");
        let path = dir.join("error.log");
        std::fs::write(&path, "").unwrap();
        let mut f = Follower::from_end(path.clone()).unwrap();
        append(&path).write_all(b"one\n").unwrap();
        assert_eq!(f.read_lines(), ["one"]);
        std::fs::remove_file(&path).unwrap();
        std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
        let lines = within(move || {
            let lines = f.read_lines();
            (lines, f.read_lines())
        });
        assert_eq!(lines, (vec![], vec![]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_long_line_is_cut_and_marked() {
        let dir = temp_dir("long");
        let path = dir.join("error.log");
        std::fs::write(&path, "").unwrap();
        let mut f = Follower::from_end(path.clone()).unwrap();
        let mut w = append(&path);
        let long = "x".repeat(100 * 1024);
        write!(w, "{long}\nshort\n").unwrap();
        let lines = f.read_lines();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE + CUT_MARK.len());
        assert!(lines[0].ends_with(CUT_MARK));
        assert_eq!(lines[1], "short");
        // A long line still being written: cut once, its rest skipped.
        w.write_all(long.as_bytes()).unwrap();
        assert_eq!(f.read_lines().len(), 1);
        w.write_all(b"xxx still the long line\nnext\n").unwrap();
        assert_eq!(f.read_lines(), ["next"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reads_are_bounded_per_poll() {
        let dir = temp_dir("bounded");
        let path = dir.join("error.log");
        std::fs::write(&path, "").unwrap();
        let mut f = Follower::from_end(path.clone()).unwrap();
        let line = format!("{RECORD}\n");
        let count = 3 * READ_PER_POLL as usize / line.len() + 1;
        append(&path)
            .write_all(line.repeat(count).as_bytes())
            .unwrap();
        let mut polls = Vec::new();
        loop {
            let n = f.read_lines().len();
            if n == 0 {
                break;
            }
            polls.push(n);
        }
        assert_eq!(polls.len(), 4, "{polls:?}");
        assert!(
            polls
                .iter()
                .all(|&n| n * line.len() <= READ_PER_POLL as usize + line.len())
        );
        assert_eq!(polls.iter().sum::<usize>(), count);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_cutter_gives_the_last_line_without_its_newline() {
        let mut c = LineCutter::default();
        assert_eq!(c.push(b"a\r\nb\n\nc"), ["a", "b", ""]);
        assert_eq!(c.finish().as_deref(), Some("c"));
        assert_eq!(c.finish(), None);
        assert_eq!(c.push(b"\xffok\n"), ["\u{fffd}ok"]);
    }

    /// This test process as nginx, rotating its log: renamed (nginx writes
    /// on to it), then reopened at its path.
    #[test]
    fn follows_a_discovered_log_across_nginx_reopening_it() {
        let dir = temp_dir("reopen");
        let log = dir.join("error.log");
        std::fs::write(&log, format!("{RECORD}\n")).unwrap();
        let mut old = append(&log);
        let me = std::process::id();
        let ours = |found: Vec<Found>| -> Vec<Found> {
            found
                .into_iter()
                .filter(|f| f.name.starts_with(&dir))
                .collect()
        };
        let mut logs = Logs::default();
        logs.update(ours(discover(&[me])));
        assert!(logs.read_lines().is_empty());
        std::fs::rename(&log, dir.join("error.log.1")).unwrap();
        writeln!(old, "{RECORD} #renamed").unwrap();
        assert_eq!(logs.read_lines(), [format!("{RECORD} #renamed")]);
        // Found again under its new name only: the same file, not a new log,
        // and not one to let go of.
        logs.update(ours(discover(&[me])));
        assert_eq!(logs.followers.len(), 1);
        writeln!(old, "{RECORD} #still").unwrap();
        // Reopened: a new file at the path, the old one closed.
        let mut new = OpenOptions::new()
            .create_new(true)
            .append(true)
            .open(&log)
            .unwrap();
        writeln!(old, "{RECORD} #last").unwrap();
        drop(old);
        writeln!(new, "{RECORD} #new").unwrap();
        logs.update(ours(discover(&[me])));
        assert_eq!(
            logs.read_lines(),
            [
                format!("{RECORD} #still"),
                format!("{RECORD} #last"),
                format!("{RECORD} #new"),
            ]
        );
        assert_eq!(logs.followers.len(), 1);
        drop(new);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// This test process as nginx: it holds a log open for writing, and a
    /// FIFO and /dev/zero too (as a hostile "nginx" would).
    #[test]
    fn discovers_the_log_a_process_holds_and_lets_go_of_it_when_closed() {
        let dir = temp_dir("discover");
        let log = dir.join("error.log");
        std::fs::write(&log, format!("{RECORD}\n")).unwrap();
        let mut writer = append(&log);
        let fifo = dir.join("fifo-error.log");
        mkfifo(&fifo);
        let fifo_writer = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        let zero_writer = OpenOptions::new().write(true).open("/dev/zero").unwrap();
        let me = std::process::id();
        let found = within(move || discover(&[me]));
        let names: Vec<&PathBuf> = found.iter().map(|f| &f.name).collect();
        assert!(names.contains(&&log), "{names:?}");
        assert!(!names.contains(&&fifo), "{names:?}");
        assert!(!names.iter().any(|n| n.starts_with("/dev")), "{names:?}");

        let mut logs = Logs::default();
        logs.update(found.into_iter().filter(|f| f.name == log).collect());
        assert!(logs.read_lines().is_empty(), "followed from its end");
        writeln!(writer, "{RECORD} #2").unwrap();
        assert_eq!(logs.read_lines(), [format!("{RECORD} #2")]);
        // The process closes it (nginx stopped): the rest is read, then the
        // log is let go of.
        writeln!(writer, "{RECORD} #3").unwrap();
        drop(writer);
        let found: Vec<Found> = discover(&[me])
            .into_iter()
            .filter(|f| f.name == log)
            .collect();
        assert!(found.is_empty());
        logs.update(found);
        assert_eq!(logs.read_lines(), [format!("{RECORD} #3")]);
        assert!(logs.is_empty());
        drop((fifo_writer, zero_writer));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
