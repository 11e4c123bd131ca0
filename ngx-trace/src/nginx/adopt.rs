//! Kept-alive upstream connections opened before tracing started: found
//! once, at start, from `/proc` (a worker's established TCP connection from
//! a port nothing listens on is one it connected), and marked for the
//! kernel through a copy of the worker's socket fd (`pidfd_getfd`). The
//! kernel then follows each from its next event, with no hook left running
//! for every read on the host to find them.
//!
//! The worker runs on between the listing and the copy: a copy is marked
//! only once it is checked to be the very socket listed.
use std::{
    collections::{BTreeMap, BTreeSet},
    os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
};

use ngx_trace_common::{MARK_ADOPT, SockMark};

use crate::{
    kernel::proc_net::{socket_fds, socket_table},
    kernel::programs::Kernel,
};

/// A copy, in this process, of fd `fd` of process `pid` (Linux 5.6+; needs
/// the right to ptrace it, which root has).
fn steal_fd(pid: u32, fd: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: plain syscalls with integer arguments; each returned fd is
    // owned here and closed on every path.
    unsafe {
        let pidfd = libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0);
        if pidfd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let pidfd = OwnedFd::from_raw_fd(pidfd as i32);
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(copy as i32))
    }
}

/// What `fstat` says of a descriptor: which file it is, and its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileId {
    /// The filesystem (for a socket: the kernel's socket filesystem).
    dev: u64,
    /// The inode (for a socket: the N of `socket:[N]`).
    ino: u64,
    /// `st_mode`: type and permissions.
    mode: u32,
}

/// The identity of the file `fd` refers to.
fn file_id(fd: BorrowedFd<'_>) -> std::io::Result<FileId> {
    // SAFETY: all-zero is a valid `stat`, filled in by the kernel.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd and a valid pointer to a `stat`.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(FileId {
        dev: st.st_dev,
        ino: st.st_ino,
        mode: st.st_mode,
    })
}

/// The device of the kernel's socket filesystem (one for every socket of
/// the host, whatever its namespace), from a socket of our own; `None` if
/// none can be made (the inode and type are checked still).
pub(crate) fn sockfs_dev() -> Option<u64> {
    let probe = std::os::unix::net::UnixDatagram::unbound().ok()?;
    file_id(probe.as_fd()).ok().map(|id| id.dev)
}

/// Whether `copy` is the socket `socket:[inode]` (on the socket filesystem
/// `sockfs`, when known), rather than another file the worker opened under
/// the same fd number since it was listed.
fn is_listed_socket(copy: FileId, inode: u64, sockfs: Option<u64>) -> bool {
    copy.mode & libc::S_IFMT == libc::S_IFSOCK
        && copy.ino == inode
        && sockfs.is_none_or(|dev| copy.dev == dev)
}

/// Whether `fd` is a socket (on the socket filesystem `sockfs`, when
/// known): the check of [`is_listed_socket`], for a copy whose inode was
/// not listed beforehand.
pub(crate) fn is_socket(fd: BorrowedFd<'_>, sockfs: Option<u64>) -> bool {
    file_id(fd).is_ok_and(|id| is_listed_socket(id, id.ino, sockfs))
}

/// A copy of fd `fd` of process `pid`, checked to be the socket
/// `socket:[inode]` listed a moment before (else closed: an error).
fn steal_socket(pid: u32, fd: i32, inode: u64, sockfs: Option<u64>) -> Result<OwnedFd, String> {
    let copy = steal_fd(pid, fd).map_err(|e| e.to_string())?;
    let id = file_id(copy.as_fd()).map_err(|e| format!("fstat of its copy: {e}"))?;
    if !is_listed_socket(id, inode, sockfs) {
        return Err(format!(
            "no longer the socket {inode} listed a moment before (closed and reused): skipped"
        ));
    }
    Ok(copy)
}

/// A worker and its socket inodes (by inode, its fd).
type WorkerSockets = (u32, BTreeMap<u64, i32>);

/// Marks for adoption the kept-alive upstream connections `workers` hold
/// now. Returns how many were marked, and the first failure if some could
/// not be (the rest are still marked; those are reported from their next
/// connection on).
pub fn kept_alive(kernel: &mut Kernel, workers: &BTreeSet<u32>) -> (usize, Option<String>) {
    let mut marked = 0;
    let mut failure = None;
    let sockfs = sockfs_dev();
    // The socket table is read once per network namespace (a busy host's
    // is megabytes of text), for all of its workers' sockets at once.
    let mut spaces: BTreeMap<u64, Vec<WorkerSockets>> = BTreeMap::new();
    for &pid in workers {
        let fds = socket_fds(pid);
        if fds.is_empty() {
            continue;
        }
        let space = std::fs::metadata(format!("/proc/{pid}/ns/net")).map_or(u64::from(pid), |m| {
            use std::os::unix::fs::MetadataExt as _;
            m.ino()
        });
        spaces.entry(space).or_default().push((pid, fds));
    }
    for members in spaces.values() {
        let wanted: BTreeMap<u64, i32> = members
            .iter()
            .flat_map(|(_, fds)| fds.iter().map(|(&inode, &fd)| (inode, fd)))
            .collect();
        let table = socket_table(members[0].0, &wanted);
        for (pid, fds) in members {
            let pid = *pid;
            for conn in &table.established {
                let Some(&fd) = fds.get(&conn.inode) else {
                    continue;
                };
                if table.listening.contains(&conn.local_port) {
                    continue; // a client connection nginx accepted
                }
                let mark = SockMark {
                    kind: MARK_ADOPT,
                    tgid: pid,
                    fd: fd as u32,
                    _pad: 0,
                    addr: conn.remote,
                };
                match steal_socket(pid, fd, conn.inode, sockfs).and_then(|sock| {
                    kernel
                        .mark_upstream(&sock, mark)
                        .map_err(|e| format!("{e:#}"))
                }) {
                    Ok(()) => marked += 1,
                    Err(e) => {
                        failure.get_or_insert(format!("fd {fd} of worker {pid}: {e}"));
                    }
                }
            }
        }
    }
    (marked, failure)
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use super::*;

    const SOCKET: u32 = libc::S_IFSOCK | 0o777;

    #[test]
    fn only_the_listed_socket_passes() {
        let listed = FileId {
            dev: 8,
            ino: 4321,
            mode: SOCKET,
        };
        assert!(is_listed_socket(listed, 4321, Some(8)));
        assert!(is_listed_socket(listed, 4321, None));
        // Another socket under the reused fd number.
        assert!(!is_listed_socket(listed, 4322, Some(8)));
        // A file with the same inode number on another filesystem.
        let file = FileId {
            dev: 2049,
            ino: 4321,
            mode: libc::S_IFREG | 0o644,
        };
        assert!(!is_listed_socket(file, 4321, Some(8)));
        assert!(!is_listed_socket(file, 4321, None));
        let elsewhere = FileId { dev: 9, ..listed };
        assert!(!is_listed_socket(elsewhere, 4321, Some(8)));
    }

    #[test]
    fn a_copy_of_our_own_socket_is_checked_against_its_listing() {
        let (a, b) = UnixStream::pair().unwrap();
        let me = std::process::id();
        let sockfs = sockfs_dev();
        assert!(sockfs.is_some());
        let (ino_a, ino_b) = (
            file_id(a.as_fd()).unwrap().ino,
            file_id(b.as_fd()).unwrap().ino,
        );
        match steal_socket(me, a.as_raw_fd(), ino_a, sockfs) {
            Ok(copy) => assert_eq!(file_id(copy.as_fd()).unwrap().ino, ino_a),
            // pidfd_getfd: Linux 5.6+, and seccomp may forbid it.
            Err(e) if e.contains("not implemented") || e.contains("not permitted") => {
                eprintln!("skipped: pidfd_getfd unavailable here ({e})");
                return;
            }
            Err(e) => panic!("{e}"),
        }
        // fd `a` now holds another socket than the one listed.
        let err = steal_socket(me, a.as_raw_fd(), ino_b, sockfs).unwrap_err();
        assert!(err.contains("no longer the socket"), "{err}");
        // Nor does a file pass for a socket.
        let file = std::fs::File::open("/proc/self/status").unwrap();
        let ino = file_id(file.as_fd()).unwrap().ino;
        let err = steal_socket(me, file.as_raw_fd(), ino, sockfs).unwrap_err();
        assert!(err.contains("no longer the socket"), "{err}");
    }
}
