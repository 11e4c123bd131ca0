//! Request/response exchanges on upstream connections, TCP and UNIX: the
//! request written, the response arriving and read, and how it ended.
//!
//! An exchange starts with the first request byte a worker writes, and ends
//! when the next request starts on the same connection (keepalive), or when
//! either side closes or resets the connection.
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use ngx_trace_common::{
    END_NGINX_CLOSED, END_PEER_CLOSED, END_PEER_RESET, END_RESPONSE_DONE, Exchange, FLAG_CONNECTED,
    FLAG_REUSED, LOST_MAP_FULL, PHASE_IDLE, PHASE_RECEIVING, PHASE_SENDING,
};

use crate::{
    config::offset,
    maps::{CONNS, FD_CONNS, UNIX_BIND, count_lost, fd_key, forget},
    record::emit,
};

const EAGAIN: u32 = 11;
const EINTR: u32 = 4;

/// Ends the exchange of a closing connection by how far it got: nothing
/// asked (forgotten), waiting for the answer (`peer` closed it early, or
/// nginx gave up), or answered (done at the last byte read).
#[inline(always)]
pub fn end_by_phase(sk: u64, state: *mut Exchange, peer: bool) {
    let now = unsafe { bpf_ktime_get_ns() };
    match unsafe { (*state).phase } {
        PHASE_SENDING => {
            let end = if peer {
                END_PEER_CLOSED
            } else {
                END_NGINX_CLOSED
            };
            emit(state, end, 0, now);
        }
        PHASE_RECEIVING => emit(state, END_RESPONSE_DONE, 0, unsafe {
            (*state).resp_last_read_ns
        }),
        _ => {}
    }
    forget(sk, state);
}

/// The connection of `sk` for a worker writing to it: a known one, or the
/// UNIX connection this thread connected last and has not written to yet
/// (nginx writes the request right after `connect()` returns 0).
#[inline(always)]
fn writer_conn(sk: u64) -> Option<*mut Exchange> {
    if let Some(state) = CONNS.get_ptr_mut(sk) {
        return Some(state);
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let bind = UNIX_BIND.get_ptr(pid_tgid)?;
    let (tgid, fd) = unsafe { ((*bind).tgid, (*bind).fd) };
    if CONNS.insert(sk, unsafe { *bind }, 0).is_err()
        || FD_CONNS.insert(fd_key(tgid, fd), sk, 0).is_err()
    {
        count_lost(LOST_MAP_FULL);
    }
    let _ = UNIX_BIND.remove(pid_tgid);
    CONNS.get_ptr_mut(sk)
}

/// A worker wrote to an upstream connection: the request (or the next one,
/// which ends the previous exchange). Arguments: `(sk, ret, flags)`.
#[btf_tracepoint(function = "sock_send_length")]
pub fn sock_send_length(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    if ret <= 0 {
        return 0;
    }
    let Some(state) = writer_conn(sk) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    unsafe {
        // Anything from the upstream after this instant answers this write.
        let before = max(
            (*state).start_ns,
            max((*state).req_last_ns, (*state).resp_last_read_ns),
        );
        match (*state).phase {
            PHASE_IDLE => (*state).req_first_ns = now,
            PHASE_RECEIVING => {
                // Keepalive: a new request ends the previous exchange.
                emit(state, END_RESPONSE_DONE, 0, (*state).resp_last_read_ns);
                let s = &mut *state;
                s.start_ns = now;
                s.connect_ns = 0;
                s.req_first_ns = now;
                s.resp_kernel_ns = 0;
                s.resp_first_read_ns = 0;
                s.resp_last_read_ns = 0;
                s.end = 0;
                s.errno = 0;
                s.flags = (s.flags & FLAG_CONNECTED) | FLAG_REUSED;
                s.syn_retransmits = 0;
                s.retransmits = 0;
                s.index += 1;
            }
            _ => {}
        }
        (*state).req_last_ns = now;
        // Acknowledged while the write was still running (loopback), or not yet.
        (*state).acked_ns = if (*state).ack_hint_ns > before {
            now
        } else {
            0
        };
        (*state).phase = PHASE_SENDING;
    }
    0
}

#[inline(always)]
fn max(a: u64, b: u64) -> u64 {
    if a > b { a } else { b }
}

/// A worker read from an upstream connection: response bytes, the end of
/// the stream (the upstream closed), or an error (reset). Arguments:
/// `(sk, ret, flags)`.
#[btf_tracepoint(function = "sock_recv_length")]
pub fn sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let ret: i32 = ctx.arg(1);
    let Some(state) = CONNS.get_ptr_mut(sk) else {
        return 0;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    if ret > 0 {
        unsafe {
            let s = &mut *state;
            if s.phase == PHASE_IDLE {
                return 0;
            }
            if s.resp_first_read_ns == 0 {
                s.resp_first_read_ns = now;
                if s.resp_kernel_ns == 0 {
                    s.resp_kernel_ns = now;
                }
            }
            s.resp_last_read_ns = now;
            s.phase = PHASE_RECEIVING;
        }
    } else if ret == 0 {
        end_by_phase(sk, state, true);
    } else {
        let errno = ret.unsigned_abs();
        if errno != EAGAIN && errno != EINTR {
            if unsafe { (*state).phase } == PHASE_IDLE {
                forget(sk, state);
            } else {
                emit(state, END_PEER_RESET, errno, now);
                forget(sk, state);
            }
        }
    }
    0
}

/// Data arrived in the kernel for an upstream connection: the first
/// response byte, before nginx reads it. Argument: `(sk)`.
#[btf_tracepoint(function = "sk_data_ready")]
pub fn sk_data_ready(ctx: BtfTracePointContext) -> u32 {
    let sk: u64 = ctx.arg(0);
    let Some(state) = CONNS.get_ptr_mut(sk) else {
        return 0;
    };
    unsafe {
        if (*state).phase == PHASE_SENDING && (*state).resp_kernel_ns == 0 {
            (*state).resp_kernel_ns = bpf_ktime_get_ns();
        }
    }
    0
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
        && unsafe { (*state).flags } & FLAG_CONNECTED != 0
    {
        end_by_phase(sk, state, false);
    }
    0
}
