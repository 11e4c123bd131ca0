//! TCP upstream sockets: the handshake and its outcome (done, refused,
//! unreachable, abandoned by nginx), resets and errors once established,
//! retransmissions.
//!
//! These hooks fire for every TCP socket on the host: the BTF ones leave
//! after the socket-mark check (`sock_mark`) for anything that is not an
//! upstream socket of a worker, the classic ones after one map lookup.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, fentry, kprobe, tracepoint},
    programs::{BtfTracePointContext, FEntryContext, ProbeContext, TracePointContext},
};

use crate::{
    config::offset,
    maps::{CONNECTS, CONNS, LAST_CLOSED},
    peer::{self, Retransmitter},
    record::{apply, client_gone},
    sock_mark::{follow, sk_err, sk_state, upstream_state},
    task,
};

const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_FIN_WAIT1: i32 = 4;
const TCP_CLOSE: i32 = 7;
const TCP_CLOSE_WAIT: i32 = 8;
const TCP_LAST_ACK: i32 = 9;

/// SYN_SENT inside a worker's `connect()` marks an upstream socket; later
/// transitions of such a socket give the handshake's outcome. Arguments:
/// `(sk, oldstate, newstate)`; only TCP enters SYN_SENT, and only sockets
/// marked then are followed, so no protocol check is needed.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn inet_sock_set_state(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    if newstate == TCP_SYN_SENT {
        let pid_tgid = bpf_get_current_pid_tgid();
        let Some(call) = CONNECTS.get_ptr_mut(pid_tgid) else {
            return 0;
        };
        unsafe { (*call).sk = sk };
        follow(sk, unsafe { &(*call).exchange });
        return 0;
    }
    let Some(state) = upstream_state(sk) else {
        if oldstate == TCP_CLOSE_WAIT && (newstate == TCP_LAST_ACK || newstate == TCP_CLOSE) {
            // Closing a connection whose peer left first: a client that
            // went away, if this thread just gave up on an exchange.
            client_gone(sk);
        }
        return 0;
    };
    if oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED {
        unsafe { (*state).handshake_done(bpf_ktime_get_ns()) };
        peer::remember(sk, state);
    } else if oldstate == TCP_ESTABLISHED && newstate == TCP_CLOSE_WAIT {
        // The upstream's FIN: who sent it (nginx reads the end later).
        task::note_closer(state);
    } else if oldstate == TCP_ESTABLISHED && newstate == TCP_FIN_WAIT1 {
        // nginx closed it (seen here when its fd is unknown: an adopted one).
        let next = unsafe { (*state).closed(false, bpf_ktime_get_ns()) };
        apply(sk, state, next);
    } else if newstate == TCP_CLOSE {
        // An error report may follow on this CPU; it names no socket.
        if let Some(slot) = LAST_CLOSED.get_ptr_mut(0) {
            unsafe { *slot = sk };
        }
    }
    0
}

/// The error that closed an upstream socket: while connecting 111 (reset in
/// reply to the SYN), 113/101 (ICMP), 110 (the kernel gave up); once
/// established 104 (reset) or 110 (retransmissions timed out). Argument:
/// `(sk)`, the error in `sk->sk_err`.
///
/// A BTF tracepoint rather than the classic one (below, kept as a
/// fallback): the kernel skips a classic tracepoint's program whenever any
/// kprobe or classic tracepoint program, or a map access from user space
/// preempted on that CPU, holds the CPU's BPF guard (seen on kernels with
/// lazy preemption: refusals lost under load); a BTF tracepoint only when
/// the same program is already running there.
#[btf_tracepoint(function = "inet_sk_error_report")]
pub fn inet_sk_error_report_btf(ctx: BtfTracePointContext) -> u32 {
    error_reported::<false>(ctx.arg(0));
    0
}

/// The same through the classic tracepoint, whose record names ports, not
/// the socket (see `LAST_CLOSED`).
#[tracepoint]
pub fn inet_sk_error_report(ctx: TracePointContext) -> u32 {
    let _ = try_error_report(&ctx);
    0
}

fn try_error_report(ctx: &TracePointContext) -> Result<(), i64> {
    let Some(slot) = LAST_CLOSED.get_ptr_mut(0) else {
        return Ok(());
    };
    let sk = unsafe { *slot };
    if sk == 0 {
        return Ok(());
    }
    unsafe { *slot = 0 };
    let Some(state) = CONNS.get_ptr_mut(sk) else {
        return Ok(());
    };
    // The slot is only a hint: the report must be about the same peer port.
    let dport = unsafe { ctx.read_at::<u16>(offset!(error_report_dport)) }?;
    if dport != u16::from_be(unsafe { (*state).addr.port_be }) {
        return Ok(());
    }
    let error = unsafe { ctx.read_at::<i32>(offset!(error_report_error)) }?.unsigned_abs();
    let next = unsafe { (*state).socket_error(error, bpf_ktime_get_ns()) };
    apply(sk, state, next);
    Ok(())
}

/// The same, on kernels without `inet_sk_error_report` (before 5.12): the
/// default error report of TCP sockets, `sock_def_error_report(sk)`, with
/// the error in `sk->sk_err` (read at its BTF offset). No hint needed: the
/// socket is the argument.
#[fentry(function = "sock_def_error_report")]
pub fn sock_def_error_report_entry(ctx: FEntryContext) -> u32 {
    error_reported::<false>(ctx.arg(0));
    0
}

/// The same with a kprobe, on kernels that refuse BPF trampolines.
#[kprobe]
pub fn sock_def_error_report_kprobe(ctx: ProbeContext) -> u32 {
    if let Some(sk) = ctx.arg::<u64>(0) {
        error_reported::<true>(sk);
    }
    0
}

/// An error was reported on `sk`; `PROBED`: `sk` is a kprobe's argument.
#[inline(always)]
fn error_reported<const PROBED: bool>(sk: u64) {
    let Some(state) = upstream_state(sk) else {
        return;
    };
    let error = sk_err::<PROBED>(sk);
    if error == 0 {
        return;
    }
    let next = unsafe { (*state).socket_error(error, bpf_ktime_get_ns()) };
    apply(sk, state, next);
}

/// A reset for an upstream socket. Argument: `(sk)`. (BTF for the reason
/// given at `inet_sk_error_report_btf`.)
#[btf_tracepoint(function = "tcp_receive_reset")]
pub fn tcp_receive_reset_btf(ctx: BtfTracePointContext) -> u32 {
    if let Some(state) = upstream_state(ctx.arg(0)) {
        unsafe { (*state).reset_seen() };
        task::note_closer(state);
    }
    0
}

/// The same through the classic tracepoint (a fallback).
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(offset!(receive_reset_skaddr)) }) else {
        return 0;
    };
    if let Some(state) = CONNS.get_ptr_mut(sk) {
        unsafe { (*state).reset_seen() };
        task::note_closer(state);
    }
    0
}

/// Counts retransmissions of upstream sockets: SYNs while connecting, data
/// during an exchange. Arguments: `(sk, skb, ...)`. (BTF for the reason
/// given at `inet_sk_error_report_btf`.)
#[btf_tracepoint(function = "tcp_retransmit_skb")]
pub fn tcp_retransmit_skb_btf(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let Some(state) = upstream_state(sk) else {
        // Perhaps a local backend resending its response.
        peer::retransmitted(&Retransmitter::of(sk));
        return 0;
    };
    if i32::from(sk_state(sk)) == TCP_SYN_SENT {
        unsafe { (*state).syn_retransmits += 1 };
    } else {
        unsafe { (*state).retransmits += 1 };
    }
    0
}

/// The same through the classic tracepoint (a fallback).
#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(offset!(retransmit_skaddr)) }) else {
        return 0;
    };
    let Some(state) = CONNS.get_ptr_mut(sk) else {
        if let Some(peer) = retransmitter(&ctx) {
            peer::retransmitted(&peer);
        }
        return 0;
    };
    if unsafe { ctx.read_at::<i32>(offset!(retransmit_state)) } == Ok(TCP_SYN_SENT) {
        unsafe { (*state).syn_retransmits += 1 };
    } else {
        unsafe { (*state).retransmits += 1 };
    }
    0
}

/// The retransmitting socket as the classic tracepoint describes it.
fn retransmitter(ctx: &TracePointContext) -> Option<Retransmitter> {
    // SAFETY: offsets of this tracepoint's fields, read from tracefs.
    unsafe {
        Some(Retransmitter {
            local_port: ctx.read_at::<u16>(offset!(retransmit_sport)).ok()?,
            remote_port: ctx.read_at::<u16>(offset!(retransmit_dport)).ok()?,
            addr4: ctx.read_at::<u32>(offset!(retransmit_saddr)).ok()?,
            addr6: ctx.read_at::<[u64; 2]>(offset!(retransmit_saddr_v6)).ok()?,
        })
    }
}

/// An upstream socket destroyed while still tracked: a connect nginx gave up
/// on (no error came), or a connection whose `close()` was not seen. Any
/// other socket destroyed by the thread that just gave up on an exchange is
/// a client connection its client had reset: closed, it is freed at once.
/// Argument: `(sk)`.
#[btf_tracepoint(function = "tcp_destroy_sock")]
pub fn tcp_destroy_sock(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let Some(state) = upstream_state(sk) else {
        client_gone(sk);
        return 0;
    };
    let next = unsafe { (*state).destroyed(bpf_ktime_get_ns()) };
    apply(sk, state, next);
    0
}
