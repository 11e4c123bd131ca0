//! Writing records to the ring buffer.
use ngx_trace_common::{LOST_RINGBUF_FULL, RECORD_UPSTREAM, UpstreamAddr, UpstreamRecord};

use crate::maps::{EVENTS, count_lost};

/// The facts of one finished connect, minus the address (copied by pointer
/// so the 112-byte address is never staged on the 512-byte BPF stack).
pub struct Outcome {
    pub tgid: u32,
    pub end: u32,
    pub errno: u32,
    pub start_ns: u64,
    pub end_ns: u64,
    pub syn_retransmits: u32,
    pub flags: u32,
}

/// Sends one [`UpstreamRecord`]; a full ring buffer is counted, never silent.
#[inline(always)]
pub fn emit_upstream(outcome: &Outcome, addr: *const UpstreamAddr) {
    let Some(mut entry) = EVENTS.reserve::<UpstreamRecord>(0) else {
        count_lost(LOST_RINGBUF_FULL);
        return;
    };
    let r = entry.as_mut_ptr();
    unsafe {
        (*r).kind = RECORD_UPSTREAM;
        (*r).tgid = outcome.tgid;
        (*r).end = outcome.end;
        (*r).errno = outcome.errno;
        (*r).start_ns = outcome.start_ns;
        (*r).end_ns = outcome.end_ns;
        (*r).syn_retransmits = outcome.syn_retransmits;
        (*r).flags = outcome.flags;
        (*r).addr = *addr;
    }
    entry.submit(0);
}
