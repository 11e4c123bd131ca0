//! Facts read from an upstream connection's `struct tcp_sock` at events
//! that already fire for it (the first response byte, the exchange's end),
//! instead of a hook on every segment received on the host: whether the
//! request was acknowledged (every byte written, `write_seq`, is below
//! `snd_una`) and when, and the smoothed RTT. Field offsets
//! come from the running kernel's BTF, read by user space.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use ngx_trace_common::{AF_UNIX, Exchange};

use crate::config::config;

#[inline(always)]
fn read<T>(sk: u64, offset: u32) -> Option<T> {
    // SAFETY: a kernel address read with the probe helper, which fails
    // cleanly on a bad address.
    unsafe { bpf_probe_read_kernel((sk + offset as u64) as *const T) }.ok()
}

/// Reads the TCP state of `sk` into the exchange at `state` (nothing for a
/// UNIX connection).
#[inline(always)]
pub fn refresh(state: *mut Exchange, sk: u64) {
    if unsafe { (*state).addr.family } == AF_UNIX {
        return;
    }
    let (Some(snd_una), Some(write_seq), Some(srtt), Some(delivered_us)) = (
        read::<u32>(sk, config!(structs.tcp_snd_una)),
        read::<u32>(sk, config!(structs.tcp_write_seq)),
        read::<u32>(sk, config!(structs.tcp_srtt_us)),
        read::<u64>(sk, config!(structs.tcp_delivered_mstamp)),
    ) else {
        return;
    };
    // srtt_us holds the smoothed RTT << 3; delivered_mstamp is
    // tcp_clock_us(), the monotonic clock bpf_ktime_get_ns() reads, in µs.
    unsafe { (*state).tcp_state_seen(snd_una == write_seq, delivered_us * 1000, srtt >> 3) };
}
