//! `connect()` of traced processes: where their stream sockets connect, and
//! the errors `connect()` returns itself.
use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns, bpf_probe_read_kernel,
        bpf_probe_read_user, bpf_probe_read_user_str_bytes,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use ngx_trace_common::{
    AF_INET, AF_INET6, AF_UNIX, End, Ending, Exchange, FD_UNKNOWN, LOST_MAP_FULL, UpstreamAddr,
};

use crate::{
    config::{config, offset},
    maps::{
        CONNECTS, CONNS, ConnectCall, ERROR_READS, ErrorRead, FD_CONNS, SOCKET_CALLS, UNIX_BIND,
        count_lost, fd_key, is_worker,
    },
    record::{apply, clear_giveup, emit, finish},
};

const SOCK_STREAM: u16 = 1;
const EINPROGRESS: i64 = 115;

/// The type of the socket behind `fd` in the current process, walking its
/// fd table (`current->files->fdt->fd[fd]->private_data->type`); `None`
/// when a read fails. Only for the rare paths (a failed `connect()`, a UNIX
/// connect), so that no hook on every `socket()` call is needed: a TCP
/// socket that reaches SYN_SENT is a stream socket anyway.
fn socket_type(fd: u32) -> Option<u16> {
    let read = |at: u64| unsafe { bpf_probe_read_kernel(at as *const u64) }.ok();
    let task = unsafe { bpf_get_current_task() };
    let files = read(task + config!(structs.task_files) as u64)?;
    let fdt = read(files + config!(structs.files_fdt) as u64)?;
    let max_fds = unsafe {
        bpf_probe_read_kernel((fdt + config!(structs.fdtable_max_fds) as u64) as *const u32)
    }
    .ok()?;
    if fd >= max_fds {
        return None;
    }
    let fds = read(fdt + config!(structs.fdtable_fd) as u64)?;
    let file = read(fds + fd as u64 * 8)?;
    let socket = read(file + config!(structs.file_private_data) as u64)?;
    unsafe { bpf_probe_read_kernel((socket + config!(structs.socket_type) as u64) as *const u16) }
        .ok()
}

/// Whether `fd` is not a stream socket (the resolver's or syslog's datagram
/// sockets): never an upstream. A type that cannot be read counts as a
/// stream, so a failure is reported rather than lost.
fn is_datagram(fd: u32) -> bool {
    socket_type(fd).is_some_and(|ty| ty != SOCK_STREAM)
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
    let (sk, family, fd) = unsafe {
        (
            (*call).sk,
            (*call).exchange.addr.family,
            (*call).exchange.fd,
        )
    };
    let exchange = unsafe { &raw mut (*call).exchange };
    let failed = Ending {
        end: End::ConnectSyscallError,
        errno: (-ret) as u32,
        end_ns: now,
    };
    let fails = ret < 0 && ret != -EINPROGRESS;
    // Only a failure or a connected UNIX socket can lead anywhere; unless
    // the socket entered SYN_SENT (TCP), make sure it is not the resolver's
    // or syslog's datagram socket.
    if (fails || (family == AF_UNIX && ret == 0)) && (sk != 0 || !is_datagram(fd)) {
        if family == AF_UNIX && ret == 0 {
            unsafe { (*exchange).handshake_done(now) };
            if UNIX_BIND.insert(pid_tgid, unsafe { *exchange }, 0).is_err() {
                count_lost(LOST_MAP_FULL);
            }
        } else if sk == 0 {
            emit(exchange, failed);
        } else if let Some(state) = CONNS.get_ptr_mut(sk) {
            // Not reported yet by the socket hooks: the syscall's error is
            // it (unless a hook on another CPU reports it first).
            finish(sk, state, failed);
        }
    }
    let _ = CONNECTS.remove(pid_tgid);
    0
}

/// `socket()` type bits (the rest are `SOCK_NONBLOCK`, `SOCK_CLOEXEC`).
const SOCK_TYPE_MASK: u64 = 0xf;

/// A worker asks for a socket: remember whether it is a stream socket an
/// upstream connect could use (its family), or another kind (0), so that
/// its failure can be told apart. Other processes leave after one lookup.
#[tracepoint]
pub fn sys_enter_socket(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_worker((pid_tgid >> 32) as u32) {
        return 0;
    }
    let family = unsafe { ctx.read_at::<u64>(offset!(socket_family)) }.unwrap_or(0) as u16;
    let ty = unsafe { ctx.read_at::<u64>(offset!(socket_type)) }.unwrap_or(0);
    let upstream_kind = ty & SOCK_TYPE_MASK == SOCK_STREAM as u64
        && (family == AF_INET || family == AF_INET6 || family == AF_UNIX);
    // Every call of a worker replaces the last: a failure never reads a
    // stale family.
    let _ = SOCKET_CALLS.insert(pid_tgid, if upstream_kind { family } else { 0 }, 0);
    0
}

/// `socket()` returned: a worker's stream socket that could not be made
/// (out of descriptors: nginx logs `socket() failed (24: Too many open
/// files) while connecting to upstream`) is an upstream connect that never
/// started, reported without its address (nginx had not passed it yet).
#[tracepoint]
pub fn sys_exit_socket(ctx: TracePointContext) -> u32 {
    let ret = unsafe { ctx.read_at::<i64>(offset!(socket_ret)) }.unwrap_or(0);
    if ret >= 0 {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(family) = SOCKET_CALLS.get_ptr(pid_tgid) else {
        return 0;
    };
    let family = unsafe { *family };
    let _ = SOCKET_CALLS.remove(pid_tgid);
    if family == 0 {
        return 0;
    }
    let now = unsafe { bpf_ktime_get_ns() };
    let mut addr = UpstreamAddr::ZERO;
    addr.family = family;
    let mut attempt = Exchange::new((pid_tgid >> 32) as u32, FD_UNKNOWN, now, addr);
    emit(
        &mut attempt,
        Ending {
            end: End::SocketFailed,
            errno: (-ret) as u32,
            end_ns: now,
        },
    );
    0
}

/// `SOL_SOCKET`, `SO_ERROR`.
const SOL_SOCKET: u64 = 1;
const SO_ERROR: u64 = 4;

/// A worker asks a socket for its pending error: how nginx learns that a
/// non-blocking connect failed. Other processes leave after one lookup.
/// nginx asks before each request it sends, on kept-alive connections too:
/// only a connect still in flight is kept for the return (its error may
/// end it), every other call leaves after two lookups, with nothing
/// written to a map.
#[tracepoint]
pub fn sys_enter_getsockopt(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if !is_worker(tgid) {
        return 0;
    }
    let read = |offset: usize| unsafe { ctx.read_at::<u64>(offset) }.unwrap_or(0);
    if read(offset!(getsockopt_level)) != SOL_SOCKET
        || read(offset!(getsockopt_optname)) != SO_ERROR
    {
        return 0;
    }
    let fd = read(offset!(getsockopt_fd)) as u32;
    let Some(&sk) = (unsafe { FD_CONNS.get(fd_key(tgid, fd)) }) else {
        return 0;
    };
    if CONNS
        .get_ptr(sk)
        .is_none_or(|state| unsafe { (*state).is_connected() })
    {
        return 0;
    }
    let call = ErrorRead {
        optval: read(offset!(getsockopt_optval)),
        fd,
        _pad: 0,
    };
    let _ = ERROR_READS.insert(pid_tgid, call, 0);
    0
}

/// The error nginx read ends a connect still in flight with it: an ICMP
/// error (a firewall's REJECT) that arrived while the connecting socket was
/// busy is kept by the kernel as a soft error, with no error report; nginx
/// reads it here and logs `connect() failed (111: ...)`. A connect already
/// ended by its error report (a reset) is no longer followed.
#[tracepoint]
pub fn sys_exit_getsockopt(ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let Some(call) = ERROR_READS.get_ptr(pid_tgid) else {
        return 0;
    };
    let call = unsafe { *call };
    let _ = ERROR_READS.remove(pid_tgid);
    if unsafe { ctx.read_at::<i64>(offset!(getsockopt_ret)) } != Ok(0) {
        return 0;
    }
    let Ok(error) = (unsafe { bpf_probe_read_user(call.optval as *const i32) }) else {
        return 0;
    };
    if error <= 0 {
        return 0;
    }
    let Some(&sk) = (unsafe { FD_CONNS.get(fd_key((pid_tgid >> 32) as u32, call.fd)) }) else {
        return 0;
    };
    let Some(state) = CONNS.get_ptr_mut(sk) else {
        return 0;
    };
    if unsafe { (*state).is_connected() } {
        return 0;
    }
    let next = unsafe { (*state).socket_error(error as u32, bpf_ktime_get_ns()) };
    apply(sk, state, next);
    0
}
