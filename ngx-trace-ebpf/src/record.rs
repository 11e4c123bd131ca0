//! Writing records to the ring buffer, and the give-up watch that tells a
//! client leaving from nginx's own timeout.
use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
};
use ngx_trace_common::{
    ClientGoneRecord, EVENTS_BYTES, End, Ending, Exchange, LOST_RINGBUF_FULL, Next,
    RECORD_CLIENT_GONE, RECORD_UPSTREAM, UpstreamRecord,
};

use crate::{
    maps::{EVENTS, GIVEUP, GiveUp, count_lost, forget},
    tcp_sock,
};

/// Unread bytes from which an answered exchange wakes the reader anyway, so
/// the ring never fills between the reader's periodic drains.
const WAKEUP_BACKLOG: u64 = EVENTS_BYTES as u64 / 4;

/// Ends the exchange at `state` (a map value) with `ending` and sends it; a
/// full ring buffer is counted, never silent.
///
/// Waking the reader costs more than the rest of the program: answered
/// exchanges (the bulk) do not wake it, user space drains them every 100 ms;
/// failures, which a person waits for, do.
#[inline(always)]
pub fn emit(state: *mut Exchange, ending: Ending) {
    let s = unsafe { &mut *state };
    if !s.reportable() {
        return;
    }
    s.finish(ending);
    let Some(mut entry) = EVENTS.reserve::<UpstreamRecord>(0) else {
        count_lost(LOST_RINGBUF_FULL);
        return;
    };
    let r = entry.as_mut_ptr();
    unsafe {
        (*r).kind = RECORD_UPSTREAM;
        (*r)._pad = 0;
        (*r).exchange = *state;
    }
    let flags = if ending.end != End::ResponseDone {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BACKLOG {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
    if ending.end.is_nginx_giving_up() {
        watch_giveup(s.tgid, ending.end_ns);
    }
}

/// Acts on what the state machine decided for the connection `sk`.
#[inline(always)]
pub fn apply(sk: u64, state: *mut Exchange, next: Next) {
    match next {
        Next::Keep => {}
        Next::Forget => forget(sk, state),
        Next::Finish(ending) => {
            // The request's acknowledgement, as of its end.
            tcp_sock::refresh(state, sk);
            emit(state, ending);
            forget(sk, state);
        }
    }
}

/// nginx gave up on an exchange of worker `tgid` in this thread: remember
/// it on this CPU, so that a client close by the same thread right after
/// (its 499 path) can be tied to it.
#[inline(always)]
fn watch_giveup(tgid: u32, end_ns: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Only when nginx itself is running (not a socket destroyed in softirq).
    if (pid_tgid >> 32) as u32 != tgid {
        return;
    }
    if let Some(slot) = GIVEUP.get_ptr_mut(0) {
        unsafe {
            *slot = GiveUp {
                pid_tgid,
                end_ns,
                tgid,
                _pad: 0,
            }
        };
    }
}

/// The worker thread did something nginx does only when it goes on after
/// a timeout (a socket write: the 504 page, a retry on a kept-alive
/// connection; a connect: the next upstream): the give-up was not its
/// client leaving. Costs a per-CPU load when nothing is watched.
#[inline(always)]
pub fn clear_giveup() {
    let Some(slot) = GIVEUP.get_ptr_mut(0) else {
        return;
    };
    let watched = unsafe { (*slot).pid_tgid };
    if watched != 0 && watched == bpf_get_current_pid_tgid() {
        unsafe { (*slot).pid_tgid = 0 };
    }
}

/// The current thread closes a client connection whose client already left
/// (FIN or RST received): if it just gave up on an exchange, with no write
/// or connect since, nginx is finalising that request with 499.
#[inline(always)]
pub fn client_gone() {
    let Some(slot) = GIVEUP.get_ptr_mut(0) else {
        return;
    };
    let watched = unsafe { (*slot).pid_tgid };
    if watched == 0 || watched != bpf_get_current_pid_tgid() {
        return;
    }
    let record = ClientGoneRecord {
        kind: RECORD_CLIENT_GONE,
        tgid: unsafe { (*slot).tgid },
        giveup_ns: unsafe { (*slot).end_ns },
        closed_ns: unsafe { bpf_ktime_get_ns() },
    };
    unsafe { (*slot).pid_tgid = 0 };
    if EVENTS.output::<ClientGoneRecord>(&record, 0).is_err() {
        count_lost(LOST_RINGBUF_FULL);
    }
}
