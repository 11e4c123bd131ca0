//! Writing records to the ring buffer.
use aya_ebpf::bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use ngx_trace_common::{
    END_RESPONSE_DONE, EVENTS_BYTES, Exchange, FLAG_CONNECTED, LOST_RINGBUF_FULL, RECORD_UPSTREAM,
    UpstreamRecord,
};

use crate::maps::{EVENTS, count_lost};

/// Unread bytes from which an answered exchange wakes the reader anyway, so
/// the ring never fills between the reader's periodic drains.
const WAKEUP_BACKLOG: u64 = EVENTS_BYTES as u64 / 4;

/// Ends the exchange at `state` (a map value) with `end` and `errno` at
/// `end_ns`, and sends it; a full ring buffer is counted, never silent.
///
/// Waking the reader costs more than the rest of the program: answered
/// exchanges (the bulk) do not wake it, user space drains them every 100 ms;
/// failures, which a person waits for, do.
#[inline(always)]
pub fn emit(state: *mut Exchange, end: u32, errno: u32, end_ns: u64) {
    unsafe {
        if (*state).flags & FLAG_CONNECTED != 0 && (*state).req_first_ns == 0 {
            // Joined an adopted connection mid-exchange: its request is unknown.
            return;
        }
        (*state).end = end;
        (*state).errno = errno;
        (*state).end_ns = end_ns;
    }
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
    let flags = if end != END_RESPONSE_DONE {
        0
    } else if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BACKLOG {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(flags as u64);
}
