//! The start of each request a worker writes upstream, copied once per
//! exchange for user space to take its method and path from.
//!
//! nginx writes a request (HTTP/1.x's request line and headers, FastCGI's
//! records and params, uwsgi's and SCGI's headers) from one buffer, the
//! first of the `writev()` that starts the exchange. Its entry is kept by
//! thread; the socket hook that sees the exchange's first write, inside
//! the same call, copies that buffer's first bytes into the ring buffer.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user, generated},
    macros::tracepoint,
    programs::TracePointContext,
};
use ngx_trace_common::{
    FD_UNKNOWN, LOST_REQUEST_COPIES, RECORD_REQUEST, REQUEST_HEAD, REQUEST_RECORD_FIXED,
};

use crate::{
    config::offset,
    maps::{
        EVENTS, FD_CONNS, REQUEST_SCRATCH, UNIX_BIND, WRITEVS, WritevCall, count_lost, fd_key,
        is_worker,
    },
};

/// The longest a `writev()` takes from its entry to its socket's send:
/// nginx's sockets do not block.
const WRITEV_MAX_NS: u64 = 100_000_000;

/// A worker starts a `writev()`: kept for its thread (other processes leave
/// after one lookup). Not attached with `--no-request-path`.
#[tracepoint]
pub fn sys_enter_writev(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_worker((pid_tgid >> 32) as u32) {
        return 0;
    }
    let (Ok(fd), Ok(vec)) = (unsafe { ctx.read_at::<u64>(offset!(writev_fd)) }, unsafe {
        ctx.read_at::<u64>(offset!(writev_vec))
    }) else {
        return 0;
    };
    // Its responses to clients leave here: only an upstream connection's
    // fd, or the UNIX one this thread connected last (not yet followed).
    let upstream = FD_CONNS
        .get_ptr(fd_key((pid_tgid >> 32) as u32, fd as u32))
        .is_some()
        || UNIX_BIND
            .get_ptr(pid_tgid)
            .is_some_and(|bind| unsafe { (*bind).fd } == fd as u32);
    if !upstream {
        return 0;
    }
    let call = WritevCall {
        vec,
        start_ns: unsafe { bpf_ktime_get_ns() },
        fd: fd as u32,
        _pad: 0,
    };
    let _ = WRITEVS.insert(pid_tgid, call, 0);
    0
}

/// The worker's write on connection `fd` started the exchange whose first
/// request byte was written at `req_first_ns`: sends the start of its
/// first buffer, when this thread is inside a `writev()` on that fd.
#[inline(always)]
pub fn copy_start(tgid: u32, fd: u32, req_first_ns: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = WRITEVS.get_ptr(pid_tgid) else {
        return;
    };
    let call = unsafe { *call };
    let _ = WRITEVS.remove(pid_tgid);
    // Another call's (its send unseen), or another socket's: copy nothing.
    if (fd != FD_UNKNOWN && call.fd != fd) || req_first_ns > call.start_ns + WRITEV_MAX_NS {
        return;
    }
    // `struct iovec { void *iov_base; size_t iov_len; }`
    let Ok(iov) = (unsafe { bpf_probe_read_user(call.vec as *const [u64; 2]) }) else {
        return;
    };
    let Some(record) = REQUEST_SCRATCH.get_ptr_mut(0) else {
        return;
    };
    let wanted = if iov[1] > (REQUEST_HEAD - 1) as u64 {
        (REQUEST_HEAD - 1) as u32
    } else {
        iov[1] as u32
    };
    // The mask is the bound the verifier follows.
    let len = wanted & (REQUEST_HEAD as u32 - 1);
    let copied = unsafe {
        generated::bpf_probe_read_user(
            (*record).head.as_mut_ptr() as *mut _,
            len,
            iov[0] as *const _,
        )
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
    if EVENTS.output::<[u8]>(bytes, 0).is_err() {
        // Not an exchange lost: it is reported, without its request.
        count_lost(LOST_REQUEST_COPIES);
    }
}
