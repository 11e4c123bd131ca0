//! The start of each request a worker writes upstream, copied once per
//! exchange for user space to take its method and path from.
//!
//! nginx writes a request (HTTP/1.x's request line and headers, FastCGI's
//! records and params, uwsgi's and SCGI's headers) from one buffer, the
//! first of the write that starts the exchange. The socket hook that sees
//! that write runs inside the system call, so the call's own arguments are
//! in the registers the worker saved on entering the kernel: no hook on
//! `writev()` (which every process on the host makes) is needed, and the
//! cost falls on an exchange's first write alone.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user,
        generated,
    },
};
use ngx_trace_common::{
    CALL_SENDTO, CALL_WRITE, CALL_WRITEV, FD_UNKNOWN, LOST_REQUEST_COPIES, RECORD_REQUEST,
    REQUEST_HEAD, REQUEST_RECORD_FIXED,
};

use crate::{
    config::config,
    maps::{EVENTS, REQUEST_SCRATCH, count_lost},
    record::WAKEUP_BACKLOG,
};

/// `struct user_msghdr.msg_iov`: after `msg_name` and the padded
/// `msg_namelen`.
const MSGHDR_IOV: u64 = 16;

/// The buffer (address, length) the current task's system call writes
/// first, when that call is a write on connection `fd` (`FD_UNKNOWN`: any
/// fd, for a connection whose fd was not learnt).
#[inline(always)]
fn first_buffer(fd: u32) -> Option<(u64, u64)> {
    let task = unsafe { bpf_get_current_task() };
    let stack: u64 =
        unsafe { bpf_probe_read_kernel((task + config!(syscall.task_stack) as u64) as *const u64) }
            .ok()?;
    let calls = config!(syscall.calls);
    for at in config!(syscall.regs_at) {
        let regs = stack + at as u64;
        let Ok(nr) =
            (unsafe { bpf_probe_read_kernel((regs + config!(syscall.nr) as u64) as *const u32) })
        else {
            continue;
        };
        let args = config!(syscall.args);
        let arg =
            |i: usize| unsafe { bpf_probe_read_kernel((regs + args[i] as u64) as *const u64).ok() };
        // The wrong place holds other registers: a call number and the
        // connection's fd (an int: the argument's low 32 bits) both
        // matching there is not a coincidence.
        if !calls.contains(&nr) || (fd != FD_UNKNOWN && arg(0)? as u32 != fd) {
            continue;
        }
        let (buf, len) = (arg(1)?, arg(2)?);
        return if nr == calls[CALL_WRITE] || nr == calls[CALL_SENDTO] {
            Some((buf, len))
        } else {
            let vec = if nr == calls[CALL_WRITEV] {
                buf
            } else {
                // `sendmsg()` (`CALL_SENDMSG`): its iovecs are in the
                // msghdr (`msg_iov`, then `msg_iovlen`).
                let iov =
                    unsafe { bpf_probe_read_user((buf + MSGHDR_IOV) as *const [u64; 2]) }.ok()?;
                if iov[1] == 0 {
                    return None;
                }
                iov[0]
            };
            // `struct iovec { void *iov_base; size_t iov_len; }`
            let iov = unsafe { bpf_probe_read_user(vec as *const [u64; 2]) }.ok()?;
            Some((iov[0], iov[1]))
        };
    }
    None
}

/// The worker's write on connection `fd` started the exchange whose first
/// request byte was written at `req_first_ns`: sends the start of its
/// first buffer. Called from the socket hook, inside the write.
#[inline(always)]
pub fn copy_start(tgid: u32, fd: u32, req_first_ns: u64) {
    // Only the worker's own memory: a process it forked (a script run by a
    // module) shares its sockets, and is not read.
    if config!(syscall.copy) == 0 || (bpf_get_current_pid_tgid() >> 32) as u32 != tgid {
        return;
    }
    let Some((buf, buf_len)) = first_buffer(fd) else {
        return;
    };
    let Some(record) = REQUEST_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let wanted = if buf_len > (REQUEST_HEAD - 1) as u64 {
        (REQUEST_HEAD - 1) as u32
    } else {
        buf_len as u32
    };
    // The mask is the bound the verifier follows.
    let len = wanted & (REQUEST_HEAD as u32 - 1);
    let copied = unsafe {
        generated::bpf_probe_read_user((*record).head.as_mut_ptr() as *mut _, len, buf as *const _)
    };
    if copied < 0 {
        return;
    }
    unsafe {
        (*record).kind = RECORD_REQUEST;
        (*record).tgid = tgid;
        (*record).fd = fd;
        (*record).len = len;
        (*record).req_first_ns = req_first_ns;
    }
    let size = REQUEST_RECORD_FIXED + (len as usize & (REQUEST_HEAD - 1));
    let bytes = unsafe { core::slice::from_raw_parts(record as *const u8, size) };
    // Nobody waits for a request's start: it goes with its exchange's
    // record, which wakes the reader if anything does (see record.rs).
    let flags = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BACKLOG {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    if EVENTS.output::<[u8]>(bytes, flags as u64).is_err() {
        // Not an exchange lost: it is reported, without its request.
        count_lost(LOST_REQUEST_COPIES);
    }
}
