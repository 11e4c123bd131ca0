//! The upstream filter of the hot hooks: socket-local storage marks the
//! sockets that are upstream connections of traced workers. For every other
//! socket on the host (clients, backends, other services) a hook costs one
//! load (`sk->sk_bpf_storage` is NULL on a socket without any socket-local
//! storage), then leaves. On Linux 5.10, whose tracing programs cannot use
//! socket-local storage, the `CONNS` hash lookup is the filter.
use core::{ffi::c_void, ptr};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE},
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel, generated::bpf_sk_storage_get},
};
use ngx_trace_common::{
    AF_UNIX, Exchange, LOST_MAP_FULL, MARK_ADOPT, MARK_FOLLOWED, SockMark, UpstreamAddr,
};

use crate::{
    config::config,
    maps::{CONNS, FD_CONNS, UPSTREAM_SOCKS, count_lost, fd_key},
};

/// `EEXIST`, as a map helper returns it (negated).
const EEXIST: i32 = 17;

#[inline(always)]
fn storage() -> *mut c_void {
    ptr::from_ref(&UPSTREAM_SOCKS).cast_mut().cast()
}

/// The mark on `sk`, a `struct sock *` the kernel handed a BTF tracepoint.
#[inline(always)]
fn mark_of(sk: u64) -> Option<*mut SockMark> {
    if config!(sk_storage) == 0 {
        return None;
    }
    // Most sockets hold no socket-local storage at all: one load of
    // `sk->sk_bpf_storage` (a typed, verifier-checked read of the BTF
    // pointer) tells, without a helper call.
    let storage_at = sk + config!(structs.sk_bpf_storage) as u64;
    // SAFETY: `sk` is a `struct sock *` argument of a BTF tracepoint and the
    // offset is that of its `sk_bpf_storage` member on this kernel.
    if unsafe { ptr::read_volatile(storage_at as *const u64) } == 0 {
        return None;
    }
    // SAFETY: `sk` is the tracepoint's typed socket argument (the verifier
    // checks it); no value is inserted without the CREATE flag.
    let mark = unsafe { bpf_sk_storage_get(storage(), sk as *mut c_void, ptr::null_mut(), 0) };
    (!mark.is_null()).then_some(mark.cast())
}

/// Whether `sk` carries a mark (followed now or once).
#[inline(always)]
pub fn is_marked(sk: u64) -> bool {
    if config!(sk_storage) == 0 {
        // Without marks: followed now.
        return CONNS.get_ptr(sk).is_some();
    }
    mark_of(sk).is_some()
}

/// Starts following `sk`, a worker's new upstream connection: marks it,
/// then records its state and its fd. Nothing is recorded when the mark
/// cannot be made (the hooks would never see the socket), nor when
/// `CONNS` is full (this new connection goes untraced; the ones followed
/// already, the longest-waiting first among them, stay): counted as lost.
#[inline(always)]
pub fn follow(sk: u64, exchange: &Exchange) {
    let mut value = SockMark {
        kind: MARK_FOLLOWED,
        tgid: exchange.tgid,
        fd: exchange.fd,
        _pad: 0,
        addr: UpstreamAddr::ZERO,
    };
    if config!(sk_storage) == 0 {
        if CONNS.insert(sk, exchange, 0).is_err()
            || FD_CONNS
                .insert(fd_key(exchange.tgid, exchange.fd), sk, 0)
                .is_err()
        {
            count_lost(LOST_MAP_FULL);
        }
        return;
    }
    // SAFETY: as in `mark_of`; the helper copies `value`.
    let mark = unsafe {
        bpf_sk_storage_get(
            storage(),
            sk as *mut c_void,
            (&raw mut value).cast(),
            BPF_SK_STORAGE_GET_F_CREATE as u64,
        )
    };
    if mark.is_null()
        || CONNS.insert(sk, exchange, 0).is_err()
        || FD_CONNS
            .insert(fd_key(exchange.tgid, exchange.fd), sk, 0)
            .is_err()
    {
        count_lost(LOST_MAP_FULL);
    }
}

/// The followed state of `sk` if it is an upstream connection: unmarked
/// sockets leave here. A socket user space marked for adoption (a kept-alive
/// connection opened before tracing) starts being followed now, its current
/// exchange half over (never reported; the next ones are).
#[inline(always)]
pub fn upstream_state(sk: u64) -> Option<*mut Exchange> {
    if config!(sk_storage) == 0 {
        // Linux 5.10: no socket-local storage for tracing programs; the hash
        // lookup is the filter (and nothing is adopted).
        return CONNS.get_ptr_mut(sk);
    }
    let mark = mark_of(sk)?;
    if let Some(state) = CONNS.get_ptr_mut(sk) {
        return Some(state);
    }
    if unsafe { (*mark).kind } != MARK_ADOPT {
        // Followed once, forgotten since (its exchange ended): nothing to do.
        return None;
    }
    let (tgid, fd, addr) = unsafe { ((*mark).tgid, (*mark).fd, (*mark).addr) };
    let exchange = Exchange::adopted(tgid, fd, unsafe { bpf_ktime_get_ns() }, addr);
    // Another CPU may be adopting it at the same instant: the first wins
    // (EEXIST here). Any other failure is a full map: counted.
    match CONNS.insert(sk, exchange, BPF_NOEXIST as u64) {
        Ok(()) => {
            if FD_CONNS.insert(fd_key(tgid, fd), sk, 0).is_err() {
                count_lost(LOST_MAP_FULL);
            }
        }
        Err(e) if e != -EEXIST => count_lost(LOST_MAP_FULL),
        Err(_) => {}
    }
    unsafe { (*mark).kind = MARK_FOLLOWED };
    CONNS.get_ptr_mut(sk)
}

/// The `struct sock *` of `sock`, a `struct socket *` argument of a traced
/// function: a typed load the verifier follows, so the result is a typed
/// socket pointer too.
#[inline(always)]
pub fn sk_of(sock: u64) -> u64 {
    let sk_at = sock + config!(structs.socket_sk) as u64;
    // SAFETY: `sock` is a `struct socket *` argument of a traced function
    // and the offset is that of its `sk` member on this kernel.
    unsafe { ptr::read_volatile(sk_at as *const u64) }
}

/// Whether `sk` (a BTF tracepoint's socket argument) is a UNIX socket: one
/// typed load of `skc_family`.
#[inline(always)]
pub fn is_unix(sk: u64) -> bool {
    let family_at = sk + config!(structs.sk_family) as u64;
    // SAFETY: `sk` is a `struct sock *` argument of a BTF tracepoint and the
    // offset is that of `__sk_common.skc_family` on this kernel.
    unsafe { ptr::read_volatile(family_at as *const u16) == AF_UNIX }
}

/// `sk->sk_state` (`TCP_*`) of a BTF tracepoint's socket argument.
#[inline(always)]
pub fn sk_state(sk: u64) -> u8 {
    let state_at = sk + config!(structs.sk_state) as u64;
    // SAFETY: `sk` is a `struct sock *` argument of a BTF tracepoint and the
    // offset is that of `__sk_common.skc_state` on this kernel.
    unsafe { ptr::read_volatile(state_at as *const u8) }
}

/// Reads the field at `addr` of a kernel struct a kprobe was handed: its
/// arguments are plain numbers to the verifier, so no direct load.
#[inline(always)]
fn probe_read<T>(addr: u64) -> Option<T> {
    // SAFETY: the probe helper fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel(addr as *const T) }.ok()
}

/// [`sk_of`] in a kprobe (0 when unreadable).
#[inline(always)]
pub fn sk_of_probed(sock: u64) -> u64 {
    probe_read(sock + config!(structs.socket_sk) as u64).unwrap_or(0)
}

/// [`is_unix`] in a kprobe.
#[inline(always)]
pub fn is_unix_probed(sk: u64) -> bool {
    probe_read::<u16>(sk + config!(structs.sk_family) as u64) == Some(AF_UNIX)
}

/// `sk->sk_err`, the error an error report is about; `PROBED` in a kprobe
/// (else `sk` is a typed argument, read directly).
#[inline(always)]
pub fn sk_err<const PROBED: bool>(sk: u64) -> u32 {
    let err_at = sk + config!(structs.sk_err) as u64;
    if PROBED {
        return probe_read::<i32>(err_at).unwrap_or(0).unsigned_abs();
    }
    // SAFETY: `sk` is the traced function's typed socket argument and the
    // offset is that of its `sk_err` member on this kernel.
    unsafe { ptr::read_volatile(err_at as *const i32) }.unsigned_abs()
}
