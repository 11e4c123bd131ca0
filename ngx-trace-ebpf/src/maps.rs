//! Every map of the kernel side, and the kernel-only state they hold.
use aya_ebpf::{
    btf_maps::SkStorage,
    helpers::bpf_ktime_get_ns,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use ngx_trace_common::{
    EVENTS_BYTES, Exchange, LOST_FATES_LIMITED, LOST_SLOTS, NGINX_PID_WORKER, SockMark, limit,
};

/// Records for user space: one per finished connect and per process change.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// Drop counters (`LOST_*` indexes), summed over CPUs by user space.
#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_SLOTS, 0);

/// Pids of traced nginx processes (and their threads). Not LRU: evicting a
/// worker would silently stop tracing it; a full map is counted instead.
#[map]
pub static NGINX_PIDS: HashMap<u32, u32> = HashMap::with_max_entries(8192, 0);

/// Marks on the upstream sockets of traced workers (socket-local storage):
/// a hook that fires for every socket on the host finds no mark on any
/// other socket and leaves without a hash lookup. Freed with the socket.
#[btf_map]
pub static UPSTREAM_SOCKS: SkStorage<SockMark> = SkStorage::new();

/// Processes whose exit is reported whatever its status (by tgid): those
/// that closed or reset an upstream connection of a traced worker, and
/// those sent a signal that ends a process. A backend that exits with
/// status 0 moments after its close (from a SIGTERM handler, or shutting
/// down) is then still known to have died. LRU: a process that never
/// exits only ages out.
#[map]
pub static WATCHED_EXITS: LruHashMap<u32, u8> = LruHashMap::with_max_entries(4096, 0);

/// `connect()` calls in flight, by pid_tgid.
#[map]
pub static CONNECTS: LruHashMap<u64, ConnectCall> = LruHashMap::with_max_entries(1024, 0);

/// Most upstream connections followed at once.
const MAX_CONNS: u32 = 16384;

/// Upstream connections, by `struct sock` address: connecting, or carrying
/// exchanges. A plain hash, not LRU: when full, an LRU map silently evicts
/// the entry touched longest ago, which is the exchange waiting longest
/// for its answer (exactly the one an incident is about), and the socket
/// is then dropped unseen. Here a full map refuses the *new* connection
/// instead, counted as `LOST_MAP_FULL` (`sock_mark::follow`). Memory stays
/// bounded (preallocated); entries leave when the kernel sees the
/// connection end, and user space forgets those of workers that died. On
/// Linux 5.10 this map is also the upstream filter: unchanged, a lookup.
#[map]
pub static CONNS: HashMap<u64, Exchange> = HashMap::with_max_entries(MAX_CONNS, 0);

/// The `struct sock` of each upstream fd, by `fd_key`: `close()` names an fd.
/// Twice [`CONNS`]'s size, so entries of connections still followed are
/// never the ones evicted (an evicted one would leave its connection's
/// `close()` unseen).
#[map]
pub static FD_CONNS: LruHashMap<u64, u64> = LruHashMap::with_max_entries(2 * MAX_CONNS, 0);

/// Established TCP upstream connections by port pair (see `peer`): the
/// way from a local backend's retransmitting socket to the exchange.
#[map]
pub static PEER_PORTS: LruHashMap<u32, u64> = LruHashMap::with_max_entries(16384, 0);

/// `socket()` calls of workers in flight, by pid_tgid: the family of a
/// stream socket (0 for another kind).
#[map]
pub static SOCKET_CALLS: LruHashMap<u64, u16> = LruHashMap::with_max_entries(1024, 0);

/// `getsockopt(SO_ERROR)` calls of workers in flight, by pid_tgid: the fd
/// and where the error is written.
#[map]
pub static ERROR_READS: LruHashMap<u64, ErrorRead> = LruHashMap::with_max_entries(1024, 0);

/// A worker's `getsockopt(fd, SOL_SOCKET, SO_ERROR, optval, ...)`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ErrorRead {
    /// Where the kernel writes the error (user memory).
    pub optval: u64,
    /// The socket asked about.
    pub fd: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// UNIX connections made but not yet written to, by pid_tgid: `connect()`
/// does not name the `struct sock`, the first write does.
#[map]
pub static UNIX_BIND: LruHashMap<u64, Exchange> = LruHashMap::with_max_entries(1024, 0);

/// Socket calls of traced workers in flight, by pid_tgid, where kprobes
/// stand in for the tracepoints: the kretprobe sees only the return value,
/// so the kprobe keeps the socket (and flags) here.
#[map]
pub static SOCK_CALLS: LruHashMap<u64, SockCall> = LruHashMap::with_max_entries(1024, 0);

/// Where a request record is built before it is sent (too large for the
/// BPF stack): one per CPU.
#[map]
pub static REQUEST_SCRATCH: PerCpuArray<ngx_trace_common::RequestRecord> =
    PerCpuArray::with_max_entries(1, 0);

/// Arguments of a `sendmsg`/`recvmsg` call in flight (see [`SOCK_CALLS`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockCall {
    /// The `struct sock`; 0 for a socket that is not an upstream.
    pub sk: u64,
    /// When the call started (`bpf_ktime_get_ns`).
    pub start_ns: u64,
    /// `recvmsg` flags (0 for `sendmsg`).
    pub flags: i32,
    /// [`CALL_SEND`] or [`CALL_RECV`].
    pub kind: u32,
}

/// [`SockCall::kind`] of a `sendmsg`.
pub const CALL_SEND: u32 = 1;
/// [`SockCall::kind`] of a `recvmsg`.
pub const CALL_RECV: u32 = 2;

/// The upstream socket this CPU last saw closing: the error report that
/// follows it on the same CPU carries no socket address, only ports.
#[map]
pub static LAST_CLOSED: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Slots of [`GIVEUP`]: a thread's slot is its id modulo this (a power of
/// two), whichever CPU it runs on. Two workers whose ids are equal modulo
/// it, giving up within the same 50 ms, share a slot (the later one wins);
/// 65536 slots (2 MiB) make that rare with dozens of workers.
pub const GIVEUP_SLOTS: u32 = 65536;

/// The exchanges threads last gave up on (see `record::client_gone`), one
/// slot per thread id modulo [`GIVEUP_SLOTS`] (an array: the lookup is
/// inlined, no hash on the sends that check it); `pid_tgid` 0 when none
/// is watched. By thread, not by CPU: a worker may move to another CPU
/// between giving up and closing its client's connection.
#[map]
pub static GIVEUP: Array<GiveUp> = Array::with_max_entries(GIVEUP_SLOTS, 0);

/// Exchanges nginx gave up on, watched for their client leaving.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GiveUp {
    /// The thread that gave up (0: nothing watched).
    pub pid_tgid: u64,
    /// End of the first exchange given up on since the thread last wrote.
    pub first_end_ns: u64,
    /// End of the last one (the same for a single give-up).
    pub last_end_ns: u64,
    /// 1 once the thread called `close()` on a non-upstream descriptor.
    pub closing: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// A `connect()` call of a worker.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectCall {
    /// The `struct sock` that entered SYN_SENT during this call (TCP), or 0.
    pub sk: u64,
    /// The attempt.
    pub exchange: Exchange,
}

/// Key of [`FD_CONNS`]: process and fd.
#[inline(always)]
pub fn fd_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

/// [`FATE_LIMITS`] slot of fatal signals sent to untraced processes.
pub const LIMIT_SIGNALS: u32 = 0;
/// [`FATE_LIMITS`] slot of failed exits of untraced processes.
pub const LIMIT_EXITS: u32 = 1;

/// Per-CPU rate limits of the host-wide sources, one slot each
/// (`LIMIT_*`): see `ngx_trace_common::limit`.
#[map]
pub static FATE_LIMITS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2, 0);

/// Whether a record of the host-wide source `slot` fits this CPU's rate
/// limit now; one that does not is counted as `LOST_FATES_LIMITED`.
#[inline(always)]
pub fn within_limit(slot: u32) -> bool {
    let Some(state) = FATE_LIMITS.get_ptr_mut(slot) else {
        return true;
    };
    // Per-CPU slot: a program nested on this CPU (a signal sent from an
    // interrupt) may race this update, costing the limit one record of
    // precision, never a wrong count.
    match limit::admit(unsafe { *state }, unsafe { bpf_ktime_get_ns() }) {
        Some(next) => {
            unsafe { *state = next };
            true
        }
        None => {
            count_lost(LOST_FATES_LIMITED);
            false
        }
    }
}

/// Counts a drop in [`LOST`].
#[inline(always)]
pub fn count_lost(slot: u32) {
    if let Some(counter) = LOST.get_ptr_mut(slot) {
        // Per-CPU slot: no other writer.
        unsafe { *counter += 1 };
    }
}

/// Whether `tgid` belongs to a traced nginx process.
#[inline(always)]
pub fn is_traced(tgid: u32) -> bool {
    NGINX_PIDS.get_ptr(tgid).is_some()
}

/// Whether `tgid` is a traced nginx process running its event loop.
#[inline(always)]
pub fn is_worker(tgid: u32) -> bool {
    NGINX_PIDS
        .get_ptr(tgid)
        .is_some_and(|mark| unsafe { *mark } == NGINX_PID_WORKER)
}

/// Forgets an upstream connection.
#[inline(always)]
pub fn forget(sk: u64, state: *const Exchange) {
    let key = unsafe { fd_key((*state).tgid, (*state).fd) };
    if FD_CONNS.get_ptr(key).is_some_and(|s| unsafe { *s } == sk) {
        let _ = FD_CONNS.remove(key);
    }
    let _ = CONNS.remove(sk);
}
