//! Request/response exchanges on upstream connections, TCP and UNIX: the
//! request written, the response arriving and read, and how it ended. The
//! rules themselves are `Exchange`'s methods in ngx-trace-common (unit
//! tested on the host); these hooks feed them kernel events.
//!
//! An exchange starts with the first request byte a worker writes, and ends
//! when the next request starts on the same connection (keepalive), or when
//! either side closes or resets the connection.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, fentry, fexit, kprobe, kretprobe, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, ProbeContext, RetProbeContext,
        TracePointContext,
    },
};
use ngx_trace_common::Exchange;

use crate::{
    config::{config, offset},
    maps::{
        CALL_RECV, CALL_SEND, CONNS, FD_CONNS, SOCK_CALLS, SockCall, UNIX_BIND, fd_key, is_traced,
    },
    record::{apply, clear_giveup, emit, note_close},
    request,
    sock_mark::{follow, is_unix, is_unix_probed, sk_of, sk_of_probed, upstream_state},
    task, tcp_sock,
};

/// `recv()` flag: look at the data without taking it.
const MSG_PEEK: i32 = 2;

/// The connection of `sk` for a worker writing to it: a known one, or the
/// UNIX connection this thread connected last and has not written to yet
/// (nginx writes the request right after `connect()` returns 0).
/// `PROBED`: `sk` is a kprobe's argument, its fields read with the helper.
#[inline(always)]
fn writer_conn<const PROBED: bool>(sk: u64) -> Option<*mut Exchange> {
    if let Some(state) = upstream_state(sk) {
        return Some(state);
    }
    // Writes to TCP sockets (nearly all of them) leave here.
    if !(if PROBED {
        is_unix_probed(sk)
    } else {
        is_unix(sk)
    }) {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let bind = UNIX_BIND.get_ptr(pid_tgid)?;
    follow(sk, unsafe { &*bind });
    let _ = UNIX_BIND.remove(pid_tgid);
    let state = CONNS.get_ptr_mut(sk)?;
    // Who created the listening socket this connection reached (the
    // backend, or its master): which processes serve it, known before any
    // of them can die.
    let owner = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel(
            (sk + config!(structs.sk_peer_pid) as u64) as *const u64,
        )
    }
    .unwrap_or(0);
    unsafe { (*state).peer_pid = task::pid_nr(owner) };
    Some(state)
}

/// A worker wrote to an upstream connection: the request (or the next one,
/// which ends the previous exchange). Arguments: `(sk, ret, flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    request_written(ctx.arg(0), ctx.arg(1));
    0
}

/// The same, on kernels without `sock_send_length` (6.1 and older): the
/// protocol's `sendmsg(sock, msg, size)` returned `ret` (IPv4, IPv6 and UNIX
/// stream sockets; reached through `sock->ops`, so never inlined into the
/// syscalls, unlike `sock_sendmsg`). The socket's `sk` is read at its BTF
/// offset.
#[fexit(function = "inet_sendmsg")]
pub fn inet_sendmsg_exit(ctx: FExitContext) -> u32 {
    request_written(sk_of(ctx.arg(0)), ctx.arg(3));
    0
}

/// See [`inet_sendmsg_exit`].
#[fexit(function = "inet6_sendmsg")]
pub fn inet6_sendmsg_exit(ctx: FExitContext) -> u32 {
    request_written(sk_of(ctx.arg(0)), ctx.arg(3));
    0
}

/// See [`inet_sendmsg_exit`].
#[fexit(function = "unix_stream_sendmsg")]
pub fn unix_stream_sendmsg_exit(ctx: FExitContext) -> u32 {
    request_written(sk_of(ctx.arg(0)), ctx.arg(3));
    0
}

/// Kernel-function probes for kernels that refuse BPF trampolines: a
/// kprobe on `$function` keeps a traced worker's call in `SOCK_CALLS`
/// (other processes leave after one hash lookup), its kretprobe takes it
/// back with the return value (`$returned`).
macro_rules! socket_call_probes {
    ($function:literal, $entry:ident, $exit:ident, $called:ident, $returned:ident) => {
        #[doc = concat!("kprobe on `", $function, "(sock, msg, size, ...)`: see `socket_call_probes`.")]
        #[kprobe]
        pub fn $entry(ctx: ProbeContext) -> u32 {
            // The fourth argument is recvmsg's flags (sendmsg has three).
            if let Some(sock) = ctx.arg::<u64>(0) {
                $called(sock, ctx.arg::<i32>(3).unwrap_or(0));
            }
            0
        }

        #[doc = concat!("kretprobe on `", $function, "`: see `socket_call_probes`.")]
        #[kretprobe]
        pub fn $exit(ctx: RetProbeContext) -> u32 {
            $returned(ctx.ret::<i32>());
            0
        }
    };
}

socket_call_probes!(
    "inet_sendmsg",
    inet_sendmsg_kprobe,
    inet_sendmsg_kretprobe,
    send_called,
    send_returned
);
socket_call_probes!(
    "inet6_sendmsg",
    inet6_sendmsg_kprobe,
    inet6_sendmsg_kretprobe,
    send_called,
    send_returned
);
socket_call_probes!(
    "unix_stream_sendmsg",
    unix_stream_sendmsg_kprobe,
    unix_stream_sendmsg_kretprobe,
    send_called,
    send_returned
);
socket_call_probes!(
    "inet_recvmsg",
    inet_recvmsg_kprobe,
    inet_recvmsg_kretprobe,
    recv_called,
    recv_returned
);
socket_call_probes!(
    "inet6_recvmsg",
    inet6_recvmsg_kprobe,
    inet6_recvmsg_kretprobe,
    recv_called,
    recv_returned
);
socket_call_probes!(
    "unix_stream_recvmsg",
    unix_stream_recvmsg_kprobe,
    unix_stream_recvmsg_kretprobe,
    recv_called,
    recv_returned
);

/// A `sendmsg` starts on `sock`. Other processes leave after one lookup.
/// A traced worker's call is always kept, with its socket when that is an
/// upstream (or a UNIX socket this thread may be about to bind to its
/// connect), else 0: each return then takes its own call, never one whose
/// return went unseen.
#[inline(always)]
fn send_called(sock: u64, _flags: i32) {
    // As in `request_written`: every write counts, whatever its socket.
    clear_giveup();
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return;
    }
    let sk = sk_of_probed(sock);
    let wanted = CONNS.get_ptr(sk).is_some()
        || (UNIX_BIND.get_ptr(pid_tgid).is_some() && is_unix_probed(sk));
    keep_call(pid_tgid, if wanted { sk } else { 0 }, 0, CALL_SEND);
}

/// A `sendmsg` returns `ret`.
#[inline(always)]
fn send_returned(ret: i32) {
    if let Some(call) = take_call(CALL_SEND) {
        written::<true>(call.sk, ret);
    }
}

/// A `recvmsg` starts on `sock`: kept as in [`send_called`].
#[inline(always)]
fn recv_called(sock: u64, flags: i32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_traced((pid_tgid >> 32) as u32) {
        return;
    }
    let sk = sk_of_probed(sock);
    let wanted = CONNS.get_ptr(sk).is_some();
    keep_call(pid_tgid, if wanted { sk } else { 0 }, flags, CALL_RECV);
}

/// A `recvmsg` returns `ret`.
#[inline(always)]
fn recv_returned(ret: i32) {
    if let Some(call) = take_call(CALL_RECV) {
        response_read(call.sk, ret, call.flags);
    }
}

/// Keeps the call thread `pid_tgid` starts, replacing any before it.
#[inline(always)]
fn keep_call(pid_tgid: u64, sk: u64, flags: i32, kind: u32) {
    let call = SockCall {
        sk,
        start_ns: unsafe { bpf_ktime_get_ns() },
        flags,
        kind,
    };
    let _ = SOCK_CALLS.insert(pid_tgid, call, 0);
}

/// Longest a worker's call on an upstream socket takes: nginx's sockets do
/// not block, its calls return within microseconds.
const CALL_MAX_NS: u64 = 100_000_000;

/// The call of `kind` on an upstream socket this thread's kprobe kept,
/// removed (`None` for a call on another socket, or one not of `kind` or
/// too old: kept by a kprobe whose kretprobe did not run).
#[inline(always)]
fn take_call(kind: u32) -> Option<SockCall> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let call = unsafe { *SOCK_CALLS.get_ptr(pid_tgid)? };
    let _ = SOCK_CALLS.remove(pid_tgid);
    let fresh = unsafe { bpf_ktime_get_ns() } < call.start_ns + CALL_MAX_NS;
    (call.sk != 0 && call.kind == kind && fresh).then_some(call)
}

/// `sk` sent `ret` bytes (or failed).
#[inline(always)]
fn request_written(sk: u64, ret: i32) {
    // Any write, even one that fails (the 504 page to a client that reset,
    // a retried request), means a give-up just before was nginx's timeout,
    // not its client leaving.
    clear_giveup();
    written::<false>(sk, ret);
}

/// `sk` sent `ret` bytes: the request, or the next one on a kept-alive
/// connection. `PROBED`: as for [`writer_conn`].
#[inline(always)]
fn written<const PROBED: bool>(sk: u64, ret: i32) {
    if ret <= 0 {
        return;
    }
    let Some(state) = writer_conn::<PROBED>(sk) else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if let Some(previous) = unsafe { (*state).ending_before_write() } {
        emit(state, previous);
    }
    unsafe { (*state).request_written(now) };
    // The exchange's first write: its request's start.
    if unsafe { (*state).req_first_ns } == now {
        let (tgid, fd) = unsafe { ((*state).tgid, (*state).fd) };
        request::copy_start(tgid, fd, now);
    }
}

/// A worker read from an upstream connection: response bytes, the end of
/// the stream (the upstream closed), or an error (reset). Arguments:
/// `(sk, ret, flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    response_read(ctx.arg(0), ctx.arg(1), ctx.arg(2));
    0
}

/// The same, on kernels without `sock_recv_length` (6.1 and older): the
/// protocol's `recvmsg(sock, msg, size, flags)` returned `ret` (as for
/// sending, through `sock->ops`).
#[fexit(function = "inet_recvmsg")]
pub fn inet_recvmsg_exit(ctx: FExitContext) -> u32 {
    response_read(sk_of(ctx.arg(0)), ctx.arg(4), ctx.arg(3));
    0
}

/// See [`inet_recvmsg_exit`].
#[fexit(function = "inet6_recvmsg")]
pub fn inet6_recvmsg_exit(ctx: FExitContext) -> u32 {
    response_read(sk_of(ctx.arg(0)), ctx.arg(4), ctx.arg(3));
    0
}

/// See [`inet_recvmsg_exit`].
#[fexit(function = "unix_stream_recvmsg")]
pub fn unix_stream_recvmsg_exit(ctx: FExitContext) -> u32 {
    response_read(sk_of(ctx.arg(0)), ctx.arg(4), ctx.arg(3));
    0
}

/// `sk` read `ret` bytes (0: end of stream; negative: error) with `flags`.
#[inline(always)]
fn response_read(sk: u64, ret: i32, flags: i32) {
    let Some(state) = upstream_state(sk) else {
        return;
    };
    let next = if flags & MSG_PEEK != 0 {
        // nginx's keepalive pool checking an idle connection.
        unsafe { (*state).pool_checked(ret) }
    } else {
        if ret > 0 && unsafe { (*state).resp_kernel_ns } == 0 {
            // The first byte's arrival was not seen (on loopback it can
            // come before the write's own hook runs): read the TCP state
            // now, as its arrival would have.
            tcp_sock::refresh(state, sk);
        }
        unsafe { (*state).response_read(ret, bpf_ktime_get_ns()) }
    };
    apply(sk, state, next);
}

/// Data arrived in the kernel for an upstream connection: the first
/// response byte, before nginx reads it. Argument: `(sk)`.
#[btf_tracepoint(function = "sk_data_ready")]
pub fn sk_data_ready(ctx: BtfTracePointContext) -> u32 {
    data_arrived(ctx.arg(0));
    0
}

/// The same, on kernels without `sk_data_ready` (6.1 and older): the default
/// wake-up of TCP and UNIX stream sockets, `sock_def_readable(sk)`.
#[fentry(function = "sock_def_readable")]
pub fn sock_def_readable_entry(ctx: FEntryContext) -> u32 {
    data_arrived(ctx.arg(0));
    0
}

/// The same with a kprobe, on kernels that refuse BPF trampolines.
#[kprobe]
pub fn sock_def_readable_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        data_arrived(sk);
    }
    0
}

/// Data arrived for `sk`.
#[inline(always)]
fn data_arrived(sk: u64) {
    let Some(state) = upstream_state(sk) else {
        return;
    };
    let first = unsafe { (*state).resp_kernel_ns } == 0;
    unsafe { (*state).data_arrived(bpf_ktime_get_ns()) };
    if first && unsafe { (*state).resp_kernel_ns } != 0 {
        // The answer is here: was the request acknowledged, and when?
        tcp_sock::refresh(state, sk);
    }
}

/// A worker closes an upstream connection.
#[tracepoint]
pub fn sys_enter_close(ctx: TracePointContext) -> u32 {
    let Ok(fd) = (unsafe { ctx.read_at::<u64>(offset!(close_fd)) }) else {
        return 0;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let key = fd_key((pid_tgid >> 32) as u32, fd as u32);
    let Some(sk) = FD_CONNS.get_ptr(key) else {
        // Perhaps its client's connection, right after giving up.
        note_close();
        // A UNIX connection closed before its first write: never bind it.
        if let Some(bind) = UNIX_BIND.get_ptr(pid_tgid)
            && unsafe { (*bind).fd } == fd as u32
        {
            let _ = UNIX_BIND.remove(pid_tgid);
        }
        return 0;
    };
    let sk = unsafe { *sk };
    let _ = FD_CONNS.remove(key);
    if let Some(state) = CONNS.get_ptr_mut(sk)
        && unsafe { (*state).is_connected() }
    {
        let next = unsafe { (*state).closed(false, bpf_ktime_get_ns()) };
        apply(sk, state, next);
    }
    0
}
