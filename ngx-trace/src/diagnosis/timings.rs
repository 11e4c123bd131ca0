//! Phase durations of a connect attempt or exchange, from the kernel's
//! timestamps.
use ngx_trace_common::End;

use crate::kernel::records::Finished;

/// Phase durations of a connect attempt or exchange, µs; unknown ones are
/// `None`, and left out of the JSON `timings_us` object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Timings {
    /// `connect()` to handshake done (or to the connect's failure).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connect: Option<u64>,
    /// Last request byte written to its acknowledgement (TCP).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_acked: Option<u64>,
    /// Last request byte written to the first response byte in the kernel.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_byte: Option<u64>,
    /// First response byte in the kernel to nginx reading it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nginx_read_delay: Option<u64>,
    /// Exchange start (connect, or first request byte when reused) to its end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<u64>,
    /// On a kept-alive connection: how long it sat idle before this
    /// request (a backend closing idle connections first shows here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle_before: Option<u64>,
    /// First to last request byte written (what `*_send_timeout` bounds).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_write: Option<u64>,
    /// The longest wait between two response reads with data (what
    /// `*_read_timeout` bounds once the answer started).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub longest_read_gap: Option<u64>,
}

/// `to_ns - from_ns` in µs, when `from_ns` was seen and precedes `to_ns`.
pub fn span_us(from_ns: u64, to_ns: u64) -> Option<u64> {
    (from_ns != 0 && to_ns >= from_ns).then(|| (to_ns - from_ns) / 1000)
}

/// The phase timings the kernel's timestamps give.
pub fn timings(x: &Finished) -> Timings {
    let f = &x.facts;
    Timings {
        connect: if x.end.is_connect_failure() {
            span_us(f.start_ns, x.end_ns)
        } else {
            (f.connect_ns != 0).then_some(f.connect_ns / 1000)
        },
        request_acked: span_us(f.req_last_ns, f.acked_ns),
        // An answer that came before the request was all written (a 413
        // during an upload) came at once.
        // What woke a connection the upstream closed or reset before
        // answering was its FIN or RST, not a response byte.
        first_byte: if f.resp_first_read_ns == 0
            && matches!(x.end, End::PeerClosed | End::PeerReset)
        {
            None
        } else if f.resp_kernel_ns != 0 && f.resp_kernel_ns < f.req_last_ns {
            Some(0)
        } else {
            span_us(f.req_last_ns, f.resp_kernel_ns)
        },
        nginx_read_delay: span_us(f.resp_kernel_ns, f.resp_first_read_ns),
        total: span_us(f.start_ns, x.end_ns),
        idle_before: (f.reused && f.idle_ns != 0).then_some(f.idle_ns / 1000),
        request_write: span_us(f.req_first_ns, f.req_last_ns),
        longest_read_gap: (f.read_gap_max_ns != 0).then_some(f.read_gap_max_ns / 1000),
    }
}
