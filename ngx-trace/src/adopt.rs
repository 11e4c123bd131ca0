//! Kept-alive upstream connections opened before tracing started: found
//! once, at start, from `/proc` (a worker's established TCP connection from
//! a port nothing listens on is one it connected), and marked for the
//! kernel through a copy of the worker's socket fd (`pidfd_getfd`). The
//! kernel then follows each from its next event, with no hook left running
//! for every read on the host to find them.
use std::{
    collections::BTreeSet,
    os::fd::{FromRawFd as _, OwnedFd},
};

use ngx_trace_common::{MARK_ADOPT, SockMark};

use crate::{
    kernel::Kernel,
    proc_net::{socket_fds, socket_table},
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
        use std::os::fd::AsRawFd as _;
        let copy = libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0);
        if copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(copy as i32))
    }
}

/// Marks for adoption the kept-alive upstream connections `workers` hold
/// now. Returns how many were marked, and the first failure if some could
/// not be (the rest are still marked; those are reported from their next
/// connection on).
pub fn kept_alive(kernel: &mut Kernel, workers: &BTreeSet<u32>) -> (usize, Option<String>) {
    let mut marked = 0;
    let mut failure = None;
    for &pid in workers {
        let fds = socket_fds(pid);
        if fds.is_empty() {
            continue;
        }
        let table = socket_table(pid);
        for conn in table.established {
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
            match steal_fd(pid, fd)
                .map_err(|e| e.to_string())
                .and_then(|sock| {
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
    (marked, failure)
}
