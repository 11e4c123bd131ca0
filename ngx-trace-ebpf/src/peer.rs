//! The other end of a local TCP upstream: the backend's own socket, on this
//! host when the upstream is. A response segment lost on its way back to
//! nginx is retransmitted by that socket, not by nginx's, so nginx's counts
//! alone would take the late first byte for a slow backend.
//!
//! Each established upstream connection is remembered by its port pair in
//! `PEER_PORTS`; a retransmission by a socket that is not an upstream (rare
//! on any host: no cost on the per-segment paths) looks its ports up there,
//! and counts in the exchange when the addresses match too.
use core::ptr;

use aya_ebpf::helpers::bpf_probe_read_kernel;
use ngx_trace_common::{AF_INET, AF_INET6, Exchange};

use crate::{
    config::config,
    maps::{CONNS, PEER_PORTS},
};

/// Key of [`PEER_PORTS`]: nginx's local port and the upstream's port, both
/// in host order, as the backend's socket sees them (remote, local).
#[inline(always)]
fn key(nginx_port: u16, upstream_port: u16) -> u32 {
    (u32::from(nginx_port) << 16) | u32::from(upstream_port)
}

/// A typed load of the field at `offset` of `sk`, a BTF tracepoint's socket.
#[inline(always)]
fn field<T>(sk: u64, offset: u32) -> T {
    // SAFETY: `sk` is a `struct sock *` argument of a BTF tracepoint and the
    // offset is that of a `struct sock_common` member on this kernel.
    unsafe { ptr::read_volatile((sk + u64::from(offset)) as *const T) }
}

/// Remembers `sk`, an upstream connection that just got established (its
/// local port is bound by now), for its peer's retransmissions.
#[inline(always)]
pub fn remember(sk: u64, state: *const Exchange) {
    let family = unsafe { (*state).addr.family };
    if family != AF_INET && family != AF_INET6 {
        return;
    }
    let local: u16 = field(sk, config!(structs.sk_num));
    let upstream = u16::from_be(unsafe { (*state).addr.port_be });
    // LRU: an entry outlives its connection at most until reused, and a
    // lookup checks that the socket still has these ports.
    let _ = PEER_PORTS.insert(key(local, upstream), sk, 0);
}

/// What a retransmitting socket says of itself: its ports (host order) and
/// its local address (IPv4, and IPv6 where the socket has one).
pub struct Retransmitter {
    /// Its local port: the upstream's port, if it is a peer.
    pub local_port: u16,
    /// Its remote port: nginx's local port, if it is a peer.
    pub remote_port: u16,
    /// Its local IPv4 address, as stored (also set on a v4-mapped IPv6
    /// socket).
    pub addr4: u32,
    /// Its local IPv6 address, as stored.
    pub addr6: [u64; 2],
}

impl Retransmitter {
    /// The socket `sk` of a BTF tracepoint.
    #[inline(always)]
    pub fn of(sk: u64) -> Self {
        Self {
            local_port: field(sk, config!(structs.sk_num)),
            remote_port: u16::from_be(field(sk, config!(structs.sk_dport))),
            addr4: field(sk, config!(structs.sk_rcv_saddr)),
            addr6: field(sk, config!(structs.sk_v6_rcv_saddr)),
        }
    }
}

/// Counts a retransmission by `peer` in the exchange of the upstream
/// connection it is the other end of, if any.
#[inline(always)]
pub fn retransmitted(peer: &Retransmitter) {
    let Some(sk) = PEER_PORTS.get_ptr(key(peer.remote_port, peer.local_port)) else {
        return;
    };
    let sk = unsafe { *sk };
    let Some(state) = CONNS.get_ptr_mut(sk) else {
        return;
    };
    // The entry may name a socket since reused for another connection.
    let local =
        unsafe { bpf_probe_read_kernel((sk + u64::from(config!(structs.sk_num))) as *const u16) };
    if local != Ok(peer.remote_port) {
        return;
    }
    let addr = unsafe { &(*state).addr };
    // Compared as words: no memcmp in BPF.
    let word = |at: usize| u64::from_ne_bytes(array(&addr.data, at));
    let same_host_end = match addr.family {
        AF_INET => u32::from_ne_bytes(array(&addr.data, 0)) == peer.addr4,
        AF_INET6 => word(0) == peer.addr6[0] && word(8) == peer.addr6[1],
        _ => false,
    };
    if same_host_end && u16::from_be(addr.port_be) == peer.local_port {
        unsafe { (*state).peer_retransmits += 1 };
    }
}

/// `N` bytes of `data` from `at`.
#[inline(always)]
fn array<const N: usize>(data: &[u8], at: usize) -> [u8; N] {
    let mut out = [0u8; N];
    let mut i = 0;
    while i < N {
        out[i] = data[at + i];
        i += 1;
    }
    out
}
