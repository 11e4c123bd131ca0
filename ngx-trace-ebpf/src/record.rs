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
    maps::{CONNS, EVENTS, FD_CONNS, GIVEUP, GIVEUP_SLOTS, GiveUp, count_lost, fd_key, forget},
    sock_mark::is_marked,
    task, tcp_sock,
};

/// Unread bytes from which an answered exchange wakes the reader anyway, so
/// the ring never fills between the reader's periodic drains.
pub(crate) const WAKEUP_BACKLOG: u64 = EVENTS_BYTES as u64 / 4;

/// Ends the exchange at `state` with `ending` and sends it, the
/// connection going on (a kept-alive one's next exchange) or not followed
/// (a connect that failed in the call); a full ring buffer is counted,
/// never silent.
#[inline(always)]
pub fn emit(state: *mut Exchange, ending: Ending) {
    send(state, ending, None);
}

/// Ends the exchange of connection `sk` (`state`, its `CONNS` entry) with
/// `ending`, sends it and forgets the connection: once, whichever of the
/// hooks that see the end gets there first. Two can race on two CPUs (the
/// socket's error report in softirq and the worker's `getsockopt` or
/// `connect` return): removing the entry decides, a hash map's delete
/// succeeding for one caller only (no atomic compare-and-swap on 5.10).
#[inline(always)]
pub fn finish(sk: u64, state: *mut Exchange, ending: Ending) {
    send(state, ending, Some(sk));
}

/// [`emit`], or [`finish`] of connection `forget_sk`.
///
/// Waking the reader costs more than the rest of the program: answered
/// exchanges (the bulk) do not wake it, user space drains them every 100 ms;
/// failures, which a person waits for, do.
#[inline(always)]
fn send(state: *mut Exchange, mut ending: Ending, forget_sk: Option<u64>) {
    let s = unsafe { &mut *state };
    if !s.reportable() {
        if let Some(sk) = forget_sk {
            forget(sk, state);
        }
        return;
    }
    if ending.end.is_nginx_giving_up() && worker_dying(s.tgid) {
        // Its death closes the socket, not nginx's timer: the exchange
        // died with the worker.
        ending.end = End::WorkerDied;
    }
    s.finish(ending);
    let tgid = s.tgid;
    let key = fd_key(tgid, s.fd);
    // The record is written before the entry is removed: a preallocated
    // map hands a freed entry to the next insert at once. (One straight
    // path per outcome: 5.10's verifier loses a reservation carried in an
    // `Option` across branches.)
    let Some(mut entry) = EVENTS.reserve::<UpstreamRecord>(0) else {
        // Lost, counted once: by the hook that wins the entry.
        if forget_sk.is_none_or(|sk| won(sk, key)) {
            count_lost(LOST_RINGBUF_FULL);
        }
        return;
    };
    let r = entry.as_mut_ptr();
    unsafe {
        (*r).kind = RECORD_UPSTREAM;
        (*r)._pad = 0;
        (*r).exchange = *state;
    }
    if let Some(sk) = forget_sk
        && !won(sk, key)
    {
        // Another hook reported and forgot it first.
        entry.discard(0);
        return;
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
        watch_giveup(tgid, ending.end_ns);
    }
}

/// Removes connection `sk` (its fd entry `key` too): whether this caller
/// removed it, so reports it.
#[inline(always)]
fn won(sk: u64, key: u64) -> bool {
    if CONNS.remove(sk).is_err() {
        return false;
    }
    if FD_CONNS.get_ptr(key).is_some_and(|s| unsafe { *s } == sk) {
        let _ = FD_CONNS.remove(key);
    }
    true
}

/// Whether the current task is worker `tgid` exiting (closing its files).
#[inline(always)]
fn worker_dying(tgid: u32) -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == tgid && task::is_exiting(task::current())
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
            finish(sk, state, ending);
        }
    }
}

/// How long after a give-up the client close may come: nginx's 499 path
/// closes the client's connection in the same call, microseconds later,
/// unless the worker loses its CPU in between (a busy host: 50 ms was
/// exceeded under emulation with two VMs on two cores). Wide is safe: a
/// give-up nginx goes on from writes (its 504 page) or connects (the next
/// server) before any close, which ends the watch.
const CLIENT_CLOSE_WITHIN_NS: u64 = 250_000_000;

/// nginx gave up on an exchange of worker `tgid` in this thread: remember
/// it for the thread, so that a client close by the same thread right after
/// (its 499 path) can be tied to it. Give-ups in a row with nothing written
/// between them (every stream of an HTTP/2 connection its client dropped)
/// widen the watched range.
#[inline(always)]
fn watch_giveup(tgid: u32, end_ns: u64) {
    let pid_tgid = bpf_get_current_pid_tgid();
    // Only when nginx itself is running (not a socket destroyed in softirq).
    if (pid_tgid >> 32) as u32 != tgid {
        return;
    }
    let Some(slot) = giveup_slot(pid_tgid) else {
        return;
    };
    unsafe {
        if (*slot).pid_tgid == pid_tgid {
            (*slot).last_end_ns = end_ns;
        } else {
            *slot = GiveUp {
                pid_tgid,
                first_end_ns: end_ns,
                last_end_ns: end_ns,
                closing: 0,
                _pad: 0,
            };
        }
    }
}

/// The give-up slot of thread `pid_tgid`.
#[inline(always)]
fn giveup_slot(pid_tgid: u64) -> Option<*mut GiveUp> {
    GIVEUP.get_ptr_mut(pid_tgid as u32 & (GIVEUP_SLOTS - 1))
}

/// The current thread's watch, if it watches something.
#[inline(always)]
fn watched_by_me() -> Option<*mut GiveUp> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // 0 is the idle task (softirq on an idle CPU) and an empty slot alike.
    if pid_tgid == 0 {
        return None;
    }
    let slot = giveup_slot(pid_tgid)?;
    (unsafe { (*slot).pid_tgid } == pid_tgid).then_some(slot)
}

/// The worker thread did something nginx does only when it goes on after
/// a timeout (a socket write: the 504 page, a retry on a kept-alive
/// connection; a connect: the next upstream): the give-up was not its
/// client leaving. Costs an inlined array lookup and a load when the
/// thread watches nothing.
#[inline(always)]
pub fn clear_giveup() {
    if let Some(slot) = watched_by_me() {
        unsafe { (*slot).pid_tgid = 0 };
    }
}

/// The watched thread calls `close()` on a descriptor that is not an
/// upstream connection: only a socket freed inside this call can be its
/// client's (not one freed in softirq that interrupted the thread).
#[inline(always)]
pub fn note_close() {
    if let Some(slot) = watched_by_me() {
        unsafe { (*slot).closing = 1 };
    }
}

/// The current thread, inside `close()`, closes a TCP connection whose peer
/// already left (FIN or RST received), one never marked as an upstream: if
/// it just gave up on an exchange, with no write or connect since, nginx is
/// finalising that request with 499 and closing its client's connection.
#[inline(always)]
pub fn client_gone(sk: u64) {
    let Some(slot) = watched_by_me() else {
        return;
    };
    let now = unsafe { bpf_ktime_get_ns() };
    let (closing, first, last) =
        unsafe { ((*slot).closing, (*slot).first_end_ns, (*slot).last_end_ns) };
    // nginx's own upstream socket (marked, its exchange just forgotten) is
    // closed in the same call: never the client.
    if closing == 0 || now > last + CLIENT_CLOSE_WITHIN_NS || is_marked(sk) {
        return;
    }
    let record = ClientGoneRecord {
        kind: RECORD_CLIENT_GONE,
        tgid: (bpf_get_current_pid_tgid() >> 32) as u32,
        first_giveup_ns: first,
        last_giveup_ns: last,
        closed_ns: now,
    };
    unsafe { (*slot).pid_tgid = 0 };
    if EVENTS.output::<ClientGoneRecord>(&record, 0).is_err() {
        count_lost(LOST_RINGBUF_FULL);
    }
}
