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
    AF_INET, AF_INET6, AF_UNIX, End, Ending, Exchange, LOST_MAP_FULL, UpstreamAddr,
};

use crate::{
    config::offset,
    maps::{
        CONNECTS, CONNS, ConnectCall, SOCKET_CALLS, SOCKET_TYPES, UNIX_BIND, count_lost, fd_key,
        forget, is_worker,
    },
    record::{clear_giveup, emit},
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
    // nginx retrying on the next upstream: a give-up just before was its
    // timeout, not its client leaving.
    clear_giveup();
    let _ = try_enter_connect(&ctx, pid_tgid, tgid);
    0
}

fn try_enter_connect(ctx: &TracePointContext, pid_tgid: u64, tgid: u32) -> Result<(), i64> {
    let fd = unsafe { ctx.read_at::<u64>(offset!(connect_fd)) }? as u32;
    // Datagram sockets (resolver, syslog) are never upstreams. An fd created
    // before tracing started has no entry and is taken as a stream.
    if let Some(ty) = SOCKET_TYPES.get_ptr(fd_key(tgid, fd))
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
        sk: 0,
        exchange: Exchange::new(tgid, fd, unsafe { bpf_ktime_get_ns() }, UpstreamAddr::ZERO),
    };
    if CONNECTS.insert(pid_tgid, call, 0).is_err() {
        count_lost(LOST_MAP_FULL);
        return Ok(());
    }
    // Fill the address in place, in the map value, to keep the stack small.
    let Some(call) = CONNECTS.get_ptr_mut(pid_tgid) else {
        return Ok(());
    };
    let addr = unsafe { &mut (*call).exchange.addr };
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

/// `connect()` returned: UNIX sockets are connected (or not) here; TCP only
/// ends here when the syscall itself failed (the handshake is followed in
/// `tcp_state`).
#[tracepoint]
pub fn sys_exit_connect(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = CONNECTS.get_ptr_mut(pid_tgid) else {
        return 0;
    };
    let ret = unsafe { ctx.read_at::<i64>(offset!(connect_ret)) }.unwrap_or(0);
    let now = unsafe { bpf_ktime_get_ns() };
    let (sk, family) = unsafe { ((*call).sk, (*call).exchange.addr.family) };
    let exchange = unsafe { &raw mut (*call).exchange };
    let failed = Ending {
        end: End::ConnectSyscallError,
        errno: (-ret) as u32,
        end_ns: now,
    };
    if family == AF_UNIX {
        if ret == 0 {
            unsafe { (*exchange).handshake_done(now) };
            if UNIX_BIND.insert(pid_tgid, unsafe { *exchange }, 0).is_err() {
                count_lost(LOST_MAP_FULL);
            }
        } else if ret < 0 {
            emit(exchange, failed);
        }
    } else if ret < 0 && ret != -EINPROGRESS {
        if sk == 0 {
            emit(exchange, failed);
        } else if let Some(state) = CONNS.get_ptr_mut(sk) {
            // Not reported yet by the socket hooks: the syscall's error is it.
            emit(state, failed);
            forget(sk, state);
        }
    }
    let _ = CONNECTS.remove(pid_tgid);
    0
}
