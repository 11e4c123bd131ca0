//! TCP upstream sockets from SYN_SENT to their outcome: handshake done,
//! refused, unreachable, or abandoned by nginx (its connect timeout).
//!
//! These hooks fire for every TCP socket on the host; anything that is not
//! an upstream socket of a traced worker leaves after one map lookup.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use ngx_trace_common::{
    END_CONNECT_ABANDONED, END_CONNECT_SOCKET_ERROR, END_CONNECTED, FLAG_RESET_SEEN, LOST_MAP_FULL,
};

use crate::{
    config::offset,
    maps::{CONNECTS, LAST_CLOSED, SOCKS, SockState, count_lost},
    record::{Outcome, emit_upstream},
};

const IPPROTO_TCP: u16 = 6;
const TCP_ESTABLISHED: i32 = 1;
const TCP_SYN_SENT: i32 = 2;
const TCP_CLOSE: i32 = 7;

/// Reports the socket's outcome and forgets it.
fn finish(sk: u64, state: *const SockState, end: u32, errno: u32) {
    let outcome = unsafe {
        Outcome {
            tgid: (*state).tgid,
            end,
            errno,
            start_ns: (*state).start_ns,
            end_ns: bpf_ktime_get_ns(),
            syn_retransmits: (*state).syn_retransmits,
            flags: (*state).flags,
        }
    };
    emit_upstream(&outcome, unsafe { &raw const (*state).addr });
    let _ = SOCKS.remove(sk);
}

/// SYN_SENT inside a traced `connect()` marks an upstream socket; later
/// transitions of such a socket give the handshake's outcome.
#[tracepoint]
pub fn inet_sock_set_state(ctx: TracePointContext) -> u32 {
    let _ = try_set_state(&ctx);
    0
}

fn try_set_state(ctx: &TracePointContext) -> Result<(), i64> {
    if unsafe { ctx.read_at::<u16>(offset!(set_state_protocol)) }? != IPPROTO_TCP {
        return Ok(());
    }
    let sk = unsafe { ctx.read_at::<u64>(offset!(set_state_skaddr)) }?;
    let newstate = unsafe { ctx.read_at::<i32>(offset!(set_state_newstate)) }?;
    if newstate == TCP_SYN_SENT {
        let pid_tgid = bpf_get_current_pid_tgid();
        let Some(call) = CONNECTS.get_ptr_mut(pid_tgid) else {
            return Ok(());
        };
        let state = unsafe {
            (*call).sk = sk;
            SockState {
                start_ns: (*call).start_ns,
                tgid: (pid_tgid >> 32) as u32,
                syn_retransmits: 0,
                flags: 0,
                _pad: 0,
                addr: (*call).addr,
            }
        };
        if SOCKS.insert(sk, state, 0).is_err() {
            count_lost(LOST_MAP_FULL);
        }
        return Ok(());
    }
    let Some(state) = SOCKS.get_ptr(sk) else {
        return Ok(());
    };
    let oldstate = unsafe { ctx.read_at::<i32>(offset!(set_state_oldstate)) }?;
    if oldstate == TCP_SYN_SENT && newstate == TCP_ESTABLISHED {
        finish(sk, state, END_CONNECTED, 0);
    } else if newstate == TCP_CLOSE {
        // An error report may follow on this CPU; it names no socket.
        if let Some(slot) = LAST_CLOSED.get_ptr_mut(0) {
            unsafe { *slot = sk };
        }
    }
    Ok(())
}

/// The error that closed a connecting upstream socket (111 for a reset in
/// reply to the SYN, 113/101 from ICMP, 110 when the kernel gave up).
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
    let Some(state) = SOCKS.get_ptr(sk) else {
        return Ok(());
    };
    // The slot is only a hint: the report must be about the same peer port.
    let dport = unsafe { ctx.read_at::<u16>(offset!(error_report_dport)) }?;
    if dport != u16::from_be(unsafe { (*state).addr.port_be }) {
        return Ok(());
    }
    let error = unsafe { ctx.read_at::<i32>(offset!(error_report_error)) }?;
    finish(sk, state, END_CONNECT_SOCKET_ERROR, error.unsigned_abs());
    Ok(())
}

/// A reset for a connecting upstream socket.
#[tracepoint]
pub fn tcp_receive_reset(ctx: TracePointContext) -> u32 {
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(offset!(receive_reset_skaddr)) }) else {
        return 0;
    };
    if let Some(state) = SOCKS.get_ptr_mut(sk) {
        unsafe { (*state).flags |= FLAG_RESET_SEEN };
    }
    0
}

/// Counts SYN retransmissions of connecting upstream sockets.
#[tracepoint]
pub fn tcp_retransmit_skb(ctx: TracePointContext) -> u32 {
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(offset!(retransmit_skaddr)) }) else {
        return 0;
    };
    let Some(state) = SOCKS.get_ptr_mut(sk) else {
        return 0;
    };
    if unsafe { ctx.read_at::<i32>(offset!(retransmit_state)) } == Ok(TCP_SYN_SENT) {
        unsafe { (*state).syn_retransmits += 1 };
    }
    0
}

/// A connecting upstream socket destroyed with no error: nginx closed it
/// while still waiting for the handshake (`proxy_connect_timeout`).
#[tracepoint]
pub fn tcp_destroy_sock(ctx: TracePointContext) -> u32 {
    let Ok(sk) = (unsafe { ctx.read_at::<u64>(offset!(destroy_skaddr)) }) else {
        return 0;
    };
    if let Some(state) = SOCKS.get_ptr(sk) {
        finish(sk, state, END_CONNECT_ABANDONED, 0);
    }
    0
}
