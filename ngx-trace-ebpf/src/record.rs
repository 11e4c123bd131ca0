//! Writing records to the ring buffer.
use ngx_trace_common::{Exchange, LOST_RINGBUF_FULL, RECORD_UPSTREAM, UpstreamRecord};

use crate::maps::{EVENTS, count_lost};

/// Ends the exchange at `state` (a map value) with `end` and `errno` at
/// `end_ns`, and sends it; a full ring buffer is counted, never silent.
#[inline(always)]
pub fn emit(state: *mut Exchange, end: u32, errno: u32, end_ns: u64) {
    unsafe {
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
    entry.submit(0);
}
