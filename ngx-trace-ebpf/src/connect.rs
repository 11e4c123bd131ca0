//! `socket()` and `connect()` of traced processes: which stream sockets they
//! open, where they connect, and the errors `connect()` returns itself.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user,
        bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use ngx_trace_common::{
    AF_INET, AF_INET6, AF_UNIX, END_CONNECT_SYSCALL_ERROR, END_CONNECTED, LOST_MAP_FULL,
    UpstreamAddr,
};

use crate::{
    config::offset,
    maps::{
        CONNECTS, ConnectCall, SOCKET_CALLS, SOCKET_TYPES, SOCKS, count_lost, fd_key, is_worker,
    },
    record::{Outcome, emit_upstream},
};

const SOCK_STREAM: u32 = 1;
/// `socket()`'s type argument also carries SOCK_NONBLOCK and SOCK_CLOEXEC.
const SOCK_TYPE_MASK: u32 = 0xf;
const EINPROGRESS: i64 = 115;

/// Remembers the type a traced process asks `socket()` for.
#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_worker((pid_tgid >> 32) as u32) {
        return 0;
    }
    let Ok(ty) = (unsafe { ctx.read_at::<u64>(offset!(socket_type)) }) else {
        return 0;
    };
    let _ = SOCKET_CALLS.insert(pid_tgid, (ty as u32) & SOCK_TYPE_MASK, 0);
    0
}

/// Binds the type to the fd `socket()` returned.
#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(ty) = SOCKET_CALLS.get_ptr(pid_tgid) else {
        return 0;
    };
    let ty = unsafe { *ty };
    let _ = SOCKET_CALLS.remove(pid_tgid);
    let Ok(fd) = (unsafe { ctx.read_at::<i64>(offset!(socket_ret)) }) else {
        return 0;
    };
    if fd >= 0 {
        let _ = SOCKET_TYPES.insert(fd_key((pid_tgid >> 32) as u32, fd as u32), ty, 0);
    }
    0
}

/// Records where a worker connects a stream socket.
#[tracepoint]
pub fn sys_enter_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_worker(tgid) {
        return 0;
    }
    let _ = try_enter_connect(&ctx, pid_tgid, tgid);
    0
}

fn try_enter_connect(ctx: &TracePointContext, pid_tgid: u64, tgid: u32) -> Result<(), i64> {
    let fd = unsafe { ctx.read_at::<u64>(offset!(connect_fd)) }?;
    // Datagram sockets (resolver, syslog) are never upstreams. An fd created
    // before tracing started has no entry and is taken as a stream.
    if let Some(ty) = SOCKET_TYPES.get_ptr(fd_key(tgid, fd as u32))
        && unsafe { *ty } != SOCK_STREAM
    {
        return Ok(());
    }
    let uaddr = unsafe { ctx.read_at::<u64>(offset!(connect_uservaddr)) }? as *const u8;
    let family = unsafe { bpf_probe_read_user(uaddr as *const u16) }?;
    if family != AF_INET && family != AF_INET6 && family != AF_UNIX {
        return Ok(());
    }
    let call = ConnectCall {
        start_ns: unsafe { bpf_ktime_get_ns() },
        sk: 0,
        addr: UpstreamAddr::ZERO,
    };
    if CONNECTS.insert(pid_tgid, call, 0).is_err() {
        count_lost(LOST_MAP_FULL);
        return Ok(());
    }
    // Fill the address in place, in the map value, to keep the stack small.
    let Some(call) = CONNECTS.get_ptr_mut(pid_tgid) else {
        return Ok(());
    };
    let addr = unsafe { &mut (*call).addr };
    addr.family = family;
    match family {
        AF_INET => {
            // sockaddr_in: family, port, 4-byte address.
            let sin = unsafe { bpf_probe_read_user(uaddr as *const [u8; 8]) }?;
            addr.port_be = u16::from_ne_bytes([sin[2], sin[3]]);
            addr.data[..4].copy_from_slice(&sin[4..8]);
        }
        AF_INET6 => {
            // sockaddr_in6: family, port, flowinfo, 16-byte address.
            let sin6 = unsafe { bpf_probe_read_user(uaddr as *const [u8; 24]) }?;
            addr.port_be = u16::from_ne_bytes([sin6[2], sin6[3]]);
            addr.data[..16].copy_from_slice(&sin6[8..24]);
        }
        _ => {
            unsafe { bpf_probe_read_user_str_bytes(uaddr.add(2), &mut addr.data) }?;
        }
    }
    Ok(())
}

/// `connect()` returned: UNIX sockets are done here; TCP only when the
/// syscall itself failed (the handshake is followed in `tcp_state`).
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = CONNECTS.get_ptr(pid_tgid) else {
        return 0;
    };
    let ret = unsafe { ctx.read_at::<i64>(offset!(connect_ret)) }.unwrap_or(0);
    let (start_ns, sk, family) = unsafe { ((*call).start_ns, (*call).sk, (*call).addr.family) };
    let mut outcome = Outcome {
        tgid: (pid_tgid >> 32) as u32,
        end: END_CONNECT_SYSCALL_ERROR,
        errno: (-ret) as u32,
        start_ns,
        end_ns: unsafe { bpf_ktime_get_ns() },
        syn_retransmits: 0,
        flags: 0,
    };
    if family == AF_UNIX {
        if ret == 0 {
            outcome.end = END_CONNECTED;
            outcome.errno = 0;
            emit_upstream(&outcome, unsafe { &raw const (*call).addr });
        } else if ret < 0 {
            emit_upstream(&outcome, unsafe { &raw const (*call).addr });
        }
    } else if ret < 0 && ret != -EINPROGRESS {
        if sk == 0 {
            emit_upstream(&outcome, unsafe { &raw const (*call).addr });
        } else if let Some(state) = SOCKS.get_ptr(sk) {
            // Not reported yet by the socket hooks: the syscall's error is it.
            unsafe {
                outcome.syn_retransmits = (*state).syn_retransmits;
                outcome.flags = (*state).flags;
            }
            emit_upstream(&outcome, unsafe { &raw const (*call).addr });
            let _ = SOCKS.remove(sk);
        }
    }
    let _ = CONNECTS.remove(pid_tgid);
    0
}
