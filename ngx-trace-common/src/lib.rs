//! Types shared by the ngx-trace kernel programs and user space.
//!
//! Everything that crosses the kernel/user boundary is declared here, once:
//! ring-buffer records, the configuration set before load, map and program
//! names. Structs are `#[repr(C)]` with explicit padding and no `bool`, so
//! both sides agree on every byte; each has a compile-time size check.
//!
//! For user space only, behind feature `btf` (part of `user`): [`btf`], a
//! reader of the kernel's BTF, shared by ngx-trace and xtask's bench.
#![cfg_attr(not(test), no_std)]

// The BTF reader reads a file and allocates: user space only.
#[cfg(feature = "btf")]
extern crate std;

#[cfg(feature = "btf")]
pub mod btf;
pub mod limit;
mod state;

pub use state::{End, Ending, Next, Phase};

/// Ring buffer carrying [`UpstreamRecord`], [`ProcessRecord`],
/// [`ClientGoneRecord`] and [`FateRecord`] to user space.
pub const MAP_EVENTS: &str = "EVENTS";
/// Size of [`MAP_EVENTS`]: about 4,000 exchanges, a second of a busy proxy
/// between two drains even when printing every exchange as JSON.
pub const EVENTS_BYTES: u32 = 1024 * 1024;
/// Per-CPU drop counters, indexed by the `LOST_*` constants.
pub const MAP_LOST: &str = "LOST";
/// Upstream connections in flight, by `struct sock` address (value: [`Exchange`]).
pub const MAP_CONNS: &str = "CONNS";
/// Socket-local storage marking the sockets that are upstream connections
/// of traced workers (value: [`SockMark`]): the hot hooks leave at once for
/// every other socket, without a hash lookup. User space marks kept-alive
/// connections opened before tracing ([`MARK_ADOPT`]) by socket fd.
pub const MAP_UPSTREAM_SOCKS: &str = "UPSTREAM_SOCKS";
/// Thread ids of the traced nginx processes (key: pid, value:
/// [`NGINX_PID_TRACED`] or [`NGINX_PID_WORKER`]).
pub const MAP_NGINX_PIDS: &str = "NGINX_PIDS";
/// Name of the global holding the [`Config`].
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Type of a map as the kernel program declares it (`BPF_MAP_TYPE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MapKind {
    /// `BPF_MAP_TYPE_RINGBUF`.
    RingBuf,
    /// `BPF_MAP_TYPE_PERCPU_ARRAY`.
    PerCpuArray,
    /// `BPF_MAP_TYPE_HASH`.
    Hash,
    /// `BPF_MAP_TYPE_LRU_HASH` (user space opens it as a hash map too).
    LruHash,
    /// `BPF_MAP_TYPE_SK_STORAGE` (a BTF map; key: a socket fd in user space).
    SkStorage,
}

/// A map user space opens by name, with the layout it expects.
#[derive(Clone, Copy, Debug)]
pub struct MapSpec {
    /// Name of the map in the eBPF object (one of the `MAP_*` constants).
    pub name: &'static str,
    /// Its type.
    pub kind: MapKind,
    /// Key size in bytes: the size of the key type user space uses
    /// (0 for a ring buffer, which has none).
    pub key_size: u32,
    /// Value size in bytes: the size of the value type user space uses.
    pub value_size: u32,
}

/// Every map user space opens by name, with the key and value types of
/// `ngx-trace/src/kernel/programs.rs`: a unit test of ngx-trace checks them against
/// the built object, so a renamed map or a changed type fails without root.
pub const USER_MAPS: &[MapSpec] = &[
    MapSpec {
        name: MAP_EVENTS,
        kind: MapKind::RingBuf,
        key_size: 0,
        value_size: 0,
    },
    MapSpec {
        name: MAP_LOST,
        kind: MapKind::PerCpuArray,
        key_size: core::mem::size_of::<u32>() as u32,
        value_size: core::mem::size_of::<u64>() as u32,
    },
    MapSpec {
        name: MAP_CONNS,
        kind: MapKind::Hash,
        key_size: core::mem::size_of::<u64>() as u32,
        value_size: core::mem::size_of::<Exchange>() as u32,
    },
    MapSpec {
        name: MAP_UPSTREAM_SOCKS,
        kind: MapKind::SkStorage,
        key_size: core::mem::size_of::<i32>() as u32,
        value_size: core::mem::size_of::<SockMark>() as u32,
    },
    MapSpec {
        name: MAP_NGINX_PIDS,
        kind: MapKind::Hash,
        key_size: core::mem::size_of::<u32>() as u32,
        value_size: core::mem::size_of::<u32>() as u32,
    },
];

/// Index in [`MAP_LOST`]: records dropped because the ring buffer was full.
pub const LOST_RINGBUF_FULL: u32 = 0;
/// Index in [`MAP_LOST`]: state dropped because a bounded map was full
/// (an upstream connection left untraced: [`MAP_CONNS`] never evicts).
pub const LOST_MAP_FULL: u32 = 1;
/// Index in [`MAP_LOST`]: facts about processes other than traced nginx
/// ones (fatal signals, failed exits: sources as busy as the whole host)
/// dropped over the kernel's rate limit ([`limit`]). Not nginx records.
pub const LOST_FATES_LIMITED: u32 = 2;
/// Index in [`MAP_LOST`]: request copies ([`RequestRecord`]) dropped
/// because the ring buffer was full. Not records of exchanges (those are
/// counted apart, exactly): their exchanges come without `request`.
pub const LOST_REQUEST_COPIES: u32 = 3;
/// Number of slots in [`MAP_LOST`].
pub const LOST_SLOTS: u32 = 4;

/// `Exchange::fd` of a connection adopted mid-life: its fd is not known.
pub const FD_UNKNOWN: u32 = u32::MAX;

/// Value stored in [`MAP_NGINX_PIDS`] for a traced process (master,
/// `nginx -s` signal process, a worker still initialising, a thread).
pub const NGINX_PID_TRACED: u32 = 1;
/// Value stored in [`MAP_NGINX_PIDS`] for a process that runs nginx's event
/// loop (it created an epoll instance): only its connects are upstreams, not
/// the ones glibc makes for the master (nscd, at start and reload).
pub const NGINX_PID_WORKER: u32 = 2;

/// How a program hooks into the kernel, best first: each capability takes
/// the first mechanism the running kernel offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A BTF tracepoint (`tp_btf`): arguments straight from the kernel,
    /// without the classic tracepoint's record being built (cheapest).
    BtfTracepoint,
    /// A classic tracepoint: fields at offsets read from tracefs.
    Tracepoint,
    /// fentry on a kernel function (BTF trampoline): its typed arguments.
    FEntry,
    /// fexit on a kernel function: its typed arguments and return value.
    FExit,
    /// kprobe on a kernel function's entry: its arguments from the
    /// registers, untyped (fields read with the probe helper), for kernels
    /// that refuse BPF trampolines (arm64 before 6.0, some hardened builds).
    KProbe,
    /// kretprobe: a kernel function's return value (its arguments, saved by
    /// the matching [`Hook::KProbe`], come from a per-thread map).
    KRetProbe,
}

impl Hook {
    /// Every mechanism, best first.
    pub const ALL: [Hook; 6] = [
        Hook::BtfTracepoint,
        Hook::Tracepoint,
        Hook::FEntry,
        Hook::FExit,
        Hook::KProbe,
        Hook::KRetProbe,
    ];

    /// The name `--check` shows (and `--avoid-hooks` takes).
    pub const fn name(self) -> &'static str {
        match self {
            Hook::BtfTracepoint => "tp_btf",
            Hook::Tracepoint => "tracepoint",
            Hook::FEntry => "fentry",
            Hook::FExit => "fexit",
            Hook::KProbe => "kprobe",
            Hook::KRetProbe => "kretprobe",
        }
    }

    /// Preference, lower first. Entry and return hooks of one kind rank
    /// the same: a capability's programs of one rank form one alternative
    /// (a kretprobe needs its kprobe).
    pub const fn rank(self) -> u8 {
        match self {
            Hook::BtfTracepoint => 0,
            Hook::Tracepoint => 1,
            Hook::FEntry | Hook::FExit => 2,
            Hook::KProbe | Hook::KRetProbe => 3,
        }
    }
}

/// One kernel program: its name in the object, the capability it gives,
/// and where it attaches.
#[derive(Clone, Copy, Debug)]
pub struct ProgramSpec {
    /// Function name of the program in the eBPF object.
    pub program: &'static str,
    /// What the kernel side sees through it. Programs with the same
    /// capability and hook rank ([`Hook::rank`]) form one alternative (several kernel functions
    /// may be needed, e.g. one per protocol); a capability's alternatives
    /// come best first (table order), and the first the running kernel
    /// accepts is attached, the others are not.
    pub capability: &'static str,
    /// The mechanism.
    pub hook: Hook,
    /// Tracepoint category (directory under `events/`); empty for kernel
    /// functions.
    pub category: &'static str,
    /// Tracepoint or kernel function name.
    pub target: &'static str,
    /// What the program is for, shown when the capability is missing.
    pub purpose: &'static str,
    /// Skipped when the kernel lacks it (the tracepoint or function: IPv6
    /// built as a module, an architecture without a legacy syscall).
    pub optional: bool,
}

/// Every program ngx-trace can load, in attach order (process tracking
/// first so no nginx process is missed while the others attach), each
/// capability's alternatives together, best first.
pub const PROGRAMS: &[ProgramSpec] = &[
    ProgramSpec {
        program: "sched_process_fork",
        capability: "process forks",
        hook: Hook::Tracepoint,
        category: "sched",
        target: "sched_process_fork",
        purpose: "follow workers forked by the nginx master",
        optional: false,
    },
    ProgramSpec {
        program: "sched_process_exec",
        capability: "program starts",
        hook: Hook::Tracepoint,
        category: "sched",
        target: "sched_process_exec",
        purpose: "notice nginx instances that start while tracing",
        optional: false,
    },
    ProgramSpec {
        program: "sched_process_exit",
        capability: "process exits",
        hook: Hook::Tracepoint,
        category: "sched",
        target: "sched_process_exit",
        purpose: "forget nginx processes that exit; tell how a backend or worker died",
        optional: false,
    },
    ProgramSpec {
        program: "signal_generate_btf",
        capability: "signals sent",
        hook: Hook::BtfTracepoint,
        category: "signal",
        target: "signal_generate",
        purpose: "name who killed a backend or worker, and with which signal",
        optional: false,
    },
    ProgramSpec {
        program: "signal_generate",
        capability: "signals sent",
        hook: Hook::Tracepoint,
        category: "signal",
        target: "signal_generate",
        purpose: "name who killed a backend or worker, and with which signal",
        optional: false,
    },
    ProgramSpec {
        program: "mark_victim",
        capability: "OOM kills",
        hook: Hook::Tracepoint,
        category: "oom",
        target: "mark_victim",
        purpose: "tell an OOM kill of a backend or worker from other deaths",
        optional: false,
    },
    ProgramSpec {
        program: "sys_enter_epoll_create1",
        capability: "event loops",
        hook: Hook::Tracepoint,
        category: "syscalls",
        target: "sys_enter_epoll_create1",
        purpose: "tell workers (event loop) from master and signal processes",
        optional: false,
    },
    ProgramSpec {
        program: "sys_enter_epoll_create",
        capability: "event loops, legacy",
        hook: Hook::Tracepoint,
        category: "syscalls",
        target: "sys_enter_epoll_create",
        purpose: "tell workers (event loop) from master and signal processes",
        // Architectures without the legacy syscall (arm64) only have epoll_create1.
        optional: true,
    },
    ProgramSpec {
        program: "sys_enter_socket",
        capability: "socket() calls",
        hook: Hook::Tracepoint,
        category: "syscalls",
        target: "sys_enter_socket",
        purpose: "see which kind of socket a worker asks for",
        optional: false,
    },
    ProgramSpec {
        program: "sys_exit_socket",
        capability: "socket() results",
        hook: Hook::Tracepoint,
        category: "syscalls",
        target: "sys_exit_socket",
        purpose: "catch a worker out of descriptors before it can connect (EMFILE, ENFILE)",
        optional: false,
    },
    ProgramSpec {
        program: "sys_enter_connect",
        capability: "connect() calls",
        hook: Hook::Tracepoint,
        category: "syscalls",
        target: "sys_enter_connect",
        purpose: "see which upstream a worker connects to",
        optional: false,
    },
    ProgramSpec {
        program: "sys_exit_connect",
        capability: "connect() results",
        hook: Hook::Tracepoint,
        category: "syscalls",
        target: "sys_exit_connect",
        purpose: "catch connect() errors (UNIX sockets, local TCP errors)",
        optional: false,
    },
    ProgramSpec {
        program: "inet_sock_set_state",
        capability: "TCP state changes",
        hook: Hook::BtfTracepoint,
        category: "sock",
        target: "inet_sock_set_state",
        purpose: "follow TCP upstream handshakes",
        optional: false,
    },
    ProgramSpec {
        program: "inet_sk_error_report_btf",
        capability: "socket errors",
        hook: Hook::BtfTracepoint,
        category: "sock",
        target: "inet_sk_error_report",
        purpose: "catch asynchronous TCP connect errors (refused, unreachable)",
        optional: false,
    },
    ProgramSpec {
        program: "inet_sk_error_report",
        capability: "socket errors",
        hook: Hook::Tracepoint,
        category: "sock",
        target: "inet_sk_error_report",
        purpose: "catch asynchronous TCP connect errors (refused, unreachable)",
        optional: false,
    },
    ProgramSpec {
        program: "sock_def_error_report_entry",
        capability: "socket errors",
        hook: Hook::FEntry,
        category: "",
        target: "sock_def_error_report",
        purpose: "catch asynchronous TCP connect errors (refused, unreachable)",
        optional: false,
    },
    ProgramSpec {
        program: "sock_def_error_report_kprobe",
        capability: "socket errors",
        hook: Hook::KProbe,
        category: "",
        target: "sock_def_error_report",
        purpose: "catch asynchronous TCP connect errors (refused, unreachable)",
        optional: false,
    },
    ProgramSpec {
        program: "tcp_receive_reset_btf",
        capability: "resets received",
        hook: Hook::BtfTracepoint,
        category: "tcp",
        target: "tcp_receive_reset",
        purpose: "see resets sent by the upstream",
        optional: false,
    },
    ProgramSpec {
        program: "tcp_receive_reset",
        capability: "resets received",
        hook: Hook::Tracepoint,
        category: "tcp",
        target: "tcp_receive_reset",
        purpose: "see resets sent by the upstream",
        optional: false,
    },
    ProgramSpec {
        program: "tcp_retransmit_skb_btf",
        capability: "retransmissions",
        hook: Hook::BtfTracepoint,
        category: "tcp",
        target: "tcp_retransmit_skb",
        purpose: "count SYN and data retransmissions",
        optional: false,
    },
    ProgramSpec {
        program: "tcp_retransmit_skb",
        capability: "retransmissions",
        hook: Hook::Tracepoint,
        category: "tcp",
        target: "tcp_retransmit_skb",
        purpose: "count SYN and data retransmissions",
        optional: false,
    },
    ProgramSpec {
        program: "tcp_destroy_sock",
        capability: "TCP sockets freed",
        hook: Hook::BtfTracepoint,
        category: "tcp",
        target: "tcp_destroy_sock",
        purpose: "notice nginx giving up on a connect (proxy_connect_timeout)",
        optional: false,
    },
    ProgramSpec {
        program: "sys_enter_getsockopt",
        capability: "connect errors read",
        hook: Hook::Tracepoint,
        category: "syscalls",
        target: "sys_enter_getsockopt",
        purpose: "see the connect error nginx reads (SO_ERROR), ICMP ones included",
        optional: false,
    },
    ProgramSpec {
        program: "sys_exit_getsockopt",
        capability: "connect errors read",
        hook: Hook::Tracepoint,
        category: "syscalls",
        target: "sys_exit_getsockopt",
        purpose: "see the connect error nginx reads (SO_ERROR), ICMP ones included",
        optional: false,
    },
    ProgramSpec {
        program: "sys_enter_close",
        capability: "close() calls",
        hook: Hook::Tracepoint,
        category: "syscalls",
        target: "sys_enter_close",
        purpose: "notice nginx closing an upstream connection (its read timeout)",
        optional: false,
    },
    ProgramSpec {
        program: "sock_send_length",
        capability: "request written",
        hook: Hook::BtfTracepoint,
        category: "sock",
        target: "sock_send_length",
        purpose: "time the request a worker writes",
        optional: false,
    },
    ProgramSpec {
        program: "inet_sendmsg_exit",
        capability: "request written",
        hook: Hook::FExit,
        category: "",
        target: "inet_sendmsg",
        purpose: "time the request a worker writes",
        optional: false,
    },
    ProgramSpec {
        program: "inet6_sendmsg_exit",
        capability: "request written",
        hook: Hook::FExit,
        category: "",
        target: "inet6_sendmsg",
        purpose: "time the request a worker writes",
        optional: true,
    },
    ProgramSpec {
        program: "unix_stream_sendmsg_exit",
        capability: "request written",
        hook: Hook::FExit,
        category: "",
        target: "unix_stream_sendmsg",
        purpose: "time the request a worker writes",
        optional: false,
    },
    ProgramSpec {
        program: "inet_sendmsg_kprobe",
        capability: "request written",
        hook: Hook::KProbe,
        category: "",
        target: "inet_sendmsg",
        purpose: "time the request a worker writes",
        optional: false,
    },
    ProgramSpec {
        program: "inet6_sendmsg_kprobe",
        capability: "request written",
        hook: Hook::KProbe,
        category: "",
        target: "inet6_sendmsg",
        purpose: "time the request a worker writes",
        optional: true,
    },
    ProgramSpec {
        program: "unix_stream_sendmsg_kprobe",
        capability: "request written",
        hook: Hook::KProbe,
        category: "",
        target: "unix_stream_sendmsg",
        purpose: "time the request a worker writes",
        optional: false,
    },
    ProgramSpec {
        program: "inet_sendmsg_kretprobe",
        capability: "request written",
        hook: Hook::KRetProbe,
        category: "",
        target: "inet_sendmsg",
        purpose: "time the request a worker writes",
        optional: false,
    },
    ProgramSpec {
        program: "inet6_sendmsg_kretprobe",
        capability: "request written",
        hook: Hook::KRetProbe,
        category: "",
        target: "inet6_sendmsg",
        purpose: "time the request a worker writes",
        optional: true,
    },
    ProgramSpec {
        program: "unix_stream_sendmsg_kretprobe",
        capability: "request written",
        hook: Hook::KRetProbe,
        category: "",
        target: "unix_stream_sendmsg",
        purpose: "time the request a worker writes",
        optional: false,
    },
    ProgramSpec {
        program: "sock_recv_length",
        capability: "response read",
        hook: Hook::BtfTracepoint,
        category: "sock",
        target: "sock_recv_length",
        purpose: "time the response a worker reads",
        optional: false,
    },
    ProgramSpec {
        program: "inet_recvmsg_exit",
        capability: "response read",
        hook: Hook::FExit,
        category: "",
        target: "inet_recvmsg",
        purpose: "time the response a worker reads",
        optional: false,
    },
    ProgramSpec {
        program: "inet6_recvmsg_exit",
        capability: "response read",
        hook: Hook::FExit,
        category: "",
        target: "inet6_recvmsg",
        purpose: "time the response a worker reads",
        optional: true,
    },
    ProgramSpec {
        program: "unix_stream_recvmsg_exit",
        capability: "response read",
        hook: Hook::FExit,
        category: "",
        target: "unix_stream_recvmsg",
        purpose: "time the response a worker reads",
        optional: false,
    },
    ProgramSpec {
        program: "inet_recvmsg_kprobe",
        capability: "response read",
        hook: Hook::KProbe,
        category: "",
        target: "inet_recvmsg",
        purpose: "time the response a worker reads",
        optional: false,
    },
    ProgramSpec {
        program: "inet6_recvmsg_kprobe",
        capability: "response read",
        hook: Hook::KProbe,
        category: "",
        target: "inet6_recvmsg",
        purpose: "time the response a worker reads",
        optional: true,
    },
    ProgramSpec {
        program: "unix_stream_recvmsg_kprobe",
        capability: "response read",
        hook: Hook::KProbe,
        category: "",
        target: "unix_stream_recvmsg",
        purpose: "time the response a worker reads",
        optional: false,
    },
    ProgramSpec {
        program: "inet_recvmsg_kretprobe",
        capability: "response read",
        hook: Hook::KRetProbe,
        category: "",
        target: "inet_recvmsg",
        purpose: "time the response a worker reads",
        optional: false,
    },
    ProgramSpec {
        program: "inet6_recvmsg_kretprobe",
        capability: "response read",
        hook: Hook::KRetProbe,
        category: "",
        target: "inet6_recvmsg",
        purpose: "time the response a worker reads",
        optional: true,
    },
    ProgramSpec {
        program: "unix_stream_recvmsg_kretprobe",
        capability: "response read",
        hook: Hook::KRetProbe,
        category: "",
        target: "unix_stream_recvmsg",
        purpose: "time the response a worker reads",
        optional: false,
    },
    ProgramSpec {
        program: "sk_data_ready",
        capability: "response arriving",
        hook: Hook::BtfTracepoint,
        category: "sock",
        target: "sk_data_ready",
        purpose: "see the first response byte arrive in the kernel",
        optional: false,
    },
    ProgramSpec {
        program: "sock_def_readable_entry",
        capability: "response arriving",
        hook: Hook::FEntry,
        category: "",
        target: "sock_def_readable",
        purpose: "see the first response byte arrive in the kernel",
        optional: false,
    },
    ProgramSpec {
        program: "sock_def_readable_kprobe",
        capability: "response arriving",
        hook: Hook::KProbe,
        category: "",
        target: "sock_def_readable",
        purpose: "see the first response byte arrive in the kernel",
        optional: false,
    },
];

/// Tracepoint field offsets, read from tracefs `format` files at start-up
/// because they differ between kernel versions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    /// `sys_enter_connect.fd`
    pub connect_fd: u32,
    /// `sys_enter_connect.uservaddr`
    pub connect_uservaddr: u32,
    /// `sys_exit_connect.ret`
    pub connect_ret: u32,
    /// `inet_sk_error_report.error`
    pub error_report_error: u32,
    /// `inet_sk_error_report.dport` (host byte order)
    pub error_report_dport: u32,
    /// `tcp_receive_reset.skaddr`
    pub receive_reset_skaddr: u32,
    /// `tcp_retransmit_skb.skaddr`
    pub retransmit_skaddr: u32,
    /// `tcp_retransmit_skb.state`
    pub retransmit_state: u32,
    /// `tcp_retransmit_skb.sport` (host byte order)
    pub retransmit_sport: u32,
    /// `tcp_retransmit_skb.dport` (host byte order)
    pub retransmit_dport: u32,
    /// `tcp_retransmit_skb.saddr` (4 bytes)
    pub retransmit_saddr: u32,
    /// `tcp_retransmit_skb.saddr_v6` (16 bytes)
    pub retransmit_saddr_v6: u32,
    /// `sched_process_fork.child_pid`
    pub fork_child_pid: u32,
    /// `sys_enter_close.fd`
    pub close_fd: u32,
    /// `mark_victim.pid`
    pub mark_victim_pid: u32,
    /// `sys_enter_socket.family`
    pub socket_family: u32,
    /// `sys_enter_socket.type`
    pub socket_type: u32,
    /// `sys_exit_socket.ret`
    pub socket_ret: u32,
    /// `sys_enter_getsockopt.fd`
    pub getsockopt_fd: u32,
    /// `sys_enter_getsockopt.level`
    pub getsockopt_level: u32,
    /// `sys_enter_getsockopt.optname`
    pub getsockopt_optname: u32,
    /// `sys_enter_getsockopt.optval`
    pub getsockopt_optval: u32,
    /// `sys_exit_getsockopt.ret`
    pub getsockopt_ret: u32,
    /// `signal_generate.sig`
    pub signal_sig: u32,
    /// `signal_generate.code`
    pub signal_code: u32,
    /// `signal_generate.comm` (the target's, 16 bytes)
    pub signal_comm: u32,
    /// `signal_generate.pid` (the target thread)
    pub signal_pid: u32,
    /// `signal_generate.result`
    pub signal_result: u32,
}

/// Byte offsets of kernel struct fields the programs read, taken from the
/// running kernel's BTF at start (Rust BPF objects carry no CO-RE
/// relocations, and these layouts differ between kernel builds).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StructOffsets {
    /// `struct tcp_sock.snd_una` (u32): first byte not acknowledged.
    pub tcp_snd_una: u32,
    /// `struct tcp_sock.write_seq` (u32): one past the last byte written
    /// by the application (sent or still queued).
    pub tcp_write_seq: u32,
    /// `struct tcp_sock.srtt_us` (u32): smoothed RTT << 3, µs.
    pub tcp_srtt_us: u32,
    /// `struct tcp_sock.delivered_mstamp` (u64): when new data was last
    /// acknowledged, µs on the monotonic clock.
    pub tcp_delivered_mstamp: u32,
    /// `struct sock.sk_bpf_storage` (pointer): NULL on a socket that holds
    /// no socket-local storage at all, read before any helper call.
    pub sk_bpf_storage: u32,
    /// `struct sock_common.skc_family` (u16, `struct sock` starts with it):
    /// only a UNIX socket's first write can bind a waiting UNIX connect.
    pub sk_family: u32,
    /// `struct task_struct.files` (pointer): the current thread's fd table,
    /// the way from a `connect()` fd to its socket's type.
    pub task_files: u32,
    /// `struct files_struct.fdt` (pointer).
    pub files_fdt: u32,
    /// `struct fdtable.max_fds` (u32): fds at or above it are not open.
    pub fdtable_max_fds: u32,
    /// `struct fdtable.fd` (pointer to the array of `struct file *`).
    pub fdtable_fd: u32,
    /// `struct file.private_data` (pointer): a socket file's `struct socket`.
    pub file_private_data: u32,
    /// `struct socket.type` (u16): `SOCK_STREAM`, `SOCK_DGRAM`...
    pub socket_type: u32,
    /// `struct socket.sk` (pointer): the socket of the `struct socket` that
    /// the protocols' `sendmsg`/`recvmsg` get, where the tracepoints are missing.
    pub socket_sk: u32,
    /// `struct sock.sk_err` (int): the error an error report is about.
    pub sk_err: u32,
    /// `struct sock_common.skc_state` (u8): the socket's `TCP_*` state.
    pub sk_state: u32,
    /// `struct task_struct.flags` (u32): `PF_EXITING` tells a worker's
    /// sockets closed by its death from ones it closed.
    pub task_flags: u32,
    /// `struct task_struct.exit_code` (int): how a process ended, as
    /// `wait()` reports it (signal in the low 7 bits, 0x80 core dumped,
    /// exit status above).
    pub task_exit_code: u32,
    /// `struct task_struct.tgid` (int): the process of a task.
    pub task_tgid: u32,
    /// `struct task_struct.real_parent` (pointer).
    pub task_real_parent: u32,
    /// `struct task_struct.comm` (16 bytes).
    pub task_comm: u32,
    /// `struct sock.sk_peer_pid` (pointer to `struct pid`): for a UNIX
    /// connection, the creator of the listening socket it reached.
    pub sk_peer_pid: u32,
    /// `struct pid.numbers` (`struct upid`, whose first member `nr` is the
    /// pid in the initial namespace).
    pub pid_numbers: u32,
    /// `struct task_struct.cgroups` (pointer to `struct css_set`).
    pub task_cgroups: u32,
    /// `struct css_set.subsys` (array of `struct cgroup_subsys_state *`).
    pub css_set_subsys: u32,
    /// Index of the memory controller in `subsys` (`memory_cgrp_id`: its
    /// row in `/proc/cgroups`); `u32::MAX` when the kernel has none.
    pub memory_cgrp_id: u32,
    /// `struct cgroup_subsys_state.parent` (pointer).
    pub css_parent: u32,
    /// `struct mem_cgroup.memory` (`struct page_counter`); `struct
    /// mem_cgroup` starts with its `css`.
    pub memcg_memory: u32,
    /// `struct page_counter.usage` (atomic long, pages).
    pub page_counter_usage: u32,
    /// `struct page_counter.max` (unsigned long, pages).
    pub page_counter_max: u32,
    /// `struct sock_common.skc_num` (u16, host order): the local port.
    pub sk_num: u32,
    /// `struct sock_common.skc_dport` (u16, network order): the remote port.
    pub sk_dport: u32,
    /// `struct sock_common.skc_rcv_saddr` (4 bytes): the local IPv4 address.
    pub sk_rcv_saddr: u32,
    /// `struct sock_common.skc_v6_rcv_saddr` (16 bytes): the local IPv6
    /// address.
    pub sk_v6_rcv_saddr: u32,
    /// Where a task's signal handlers are (see [`SighandOffsets`]).
    pub sighand: SighandOffsets,
}

/// Where `task->sighand->action[sig - 1].sa.sa_handler` is: whether a
/// signal sent to another process would end it (`SIG_DFL`) or is one it
/// handles. Every field is [`SighandOffsets::UNKNOWN`] when this kernel's
/// BTF does not tell; then no signal is left out for being handled.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SighandOffsets {
    /// `struct task_struct.sighand` (pointer to `struct sighand_struct`).
    pub task_sighand: u32,
    /// `struct sighand_struct.action` (`struct k_sigaction[_NSIG]`).
    pub action: u32,
    /// Size of one `struct k_sigaction`.
    pub action_size: u32,
    /// Offset of `sa.sa_handler` in a `struct k_sigaction`.
    pub handler: u32,
}

impl SighandOffsets {
    /// A field this kernel's BTF does not give.
    pub const UNKNOWN: u32 = u32::MAX;
    /// Offsets not known: handled signals are not told from fatal ones.
    pub const NONE: Self = Self {
        task_sighand: Self::UNKNOWN,
        action: Self::UNKNOWN,
        action_size: Self::UNKNOWN,
        handler: Self::UNKNOWN,
    };

    /// Whether every offset is known.
    pub const fn known(&self) -> bool {
        self.task_sighand != Self::UNKNOWN
            && self.action != Self::UNKNOWN
            && self.action_size != Self::UNKNOWN
            && self.handler != Self::UNKNOWN
    }
}

impl Default for SighandOffsets {
    fn default() -> Self {
        Self::NONE
    }
}

/// Configuration set by user space before the programs load.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Tracepoint field offsets of the running kernel.
    pub offsets: Offsets,
    /// Struct field offsets of the running kernel.
    pub structs: StructOffsets,
    /// 1: an exec of a program named [`Config::comm`] starts tracing that
    /// process (all instances on the host); 0: only the instance given by pid.
    pub follow_new_instances: u32,
    /// 1: tracing programs may use socket-local storage (Linux 5.11+), the
    /// cheap upstream filter; 0: the filter is the `CONNS` hash itself.
    /// Read-only at load, so the verifier drops the branch not taken (the
    /// storage helper is unknown to tracing programs before 5.11).
    pub sk_storage: u32,
    /// Process name (task comm, NUL padded) of nginx.
    pub comm: [u8; 16],
    /// Where the request copy finds the call writing a request.
    pub syscall: SyscallRegs,
}

/// Where the request copy finds the system call that writes an exchange's
/// first bytes: the registers the writing task saved on entering the
/// kernel (`struct pt_regs`, at the top of its kernel stack). The socket
/// hook that sees that write runs inside the call, so the copy needs no
/// hook of its own on `writev()` and friends, which every process makes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallRegs {
    /// 1: copy the start of each exchange's request; 0: never
    /// (`--no-request-path`, or an architecture whose layout is not known).
    pub copy: u32,
    /// `struct task_struct.stack` (pointer): the bottom of the task's kernel
    /// stack.
    pub task_stack: u32,
    /// From `task->stack` to `struct pt_regs`: `THREAD_SIZE - sizeof(struct
    /// pt_regs)`, then that less the padding some builds leave above it
    /// (x86_64 with FRED: 16 bytes). Tried in turn: only the right one holds
    /// a known call number and the connection's fd.
    pub regs_at: [u32; 2],
    /// Offset in `struct pt_regs` of the call's number (read as 32 bits).
    pub nr: u32,
    /// Offsets in `struct pt_regs` of the call's first three arguments.
    pub args: [u32; 3],
    /// This architecture's numbers of `write`, `writev`, `sendto`, `sendmsg`.
    pub calls: [u32; 4],
}

/// [`SyscallRegs::calls`] index of `write(fd, buf, count)`.
pub const CALL_WRITE: usize = 0;
/// [`SyscallRegs::calls`] index of `writev(fd, iov, iovcnt)`.
pub const CALL_WRITEV: usize = 1;
/// [`SyscallRegs::calls`] index of `sendto(fd, buf, len, ...)`.
pub const CALL_SENDTO: usize = 2;
/// [`SyscallRegs::calls`] index of `sendmsg(fd, msg, flags)`.
pub const CALL_SENDMSG: usize = 3;

impl Default for SyscallRegs {
    fn default() -> Self {
        Self::OFF
    }
}

impl SyscallRegs {
    /// No copy.
    pub const OFF: Self = Self {
        copy: 0,
        task_stack: 0,
        regs_at: [0; 2],
        nr: 0,
        args: [0; 3],
        calls: [u32::MAX; 4],
    };
}

/// Whether tracing programs may use socket-local storage on the kernel
/// `release` (`uname -r`): from Linux 5.11. An unreadable release is taken
/// as a recent kernel (the programs' load then says what is missing).
pub fn sk_storage_for_tracing(release: &str) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    match (parts.next().flatten(), parts.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor) >= (5, 11),
        _ => true,
    }
}

/// Address family values as the kernel uses them.
pub const AF_UNIX: u16 = 1;
/// IPv4.
pub const AF_INET: u16 = 2;
/// IPv6.
pub const AF_INET6: u16 = 10;

/// Length of `sun_path` in `struct sockaddr_un`.
pub const UNIX_PATH_LEN: usize = 108;

/// The upstream a worker connected to, as given to `connect()`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UpstreamAddr {
    /// `AF_INET`, `AF_INET6` or `AF_UNIX`.
    pub family: u16,
    /// TCP port in network byte order (0 for UNIX).
    pub port_be: u16,
    /// IPv4: 4 bytes; IPv6: 16 bytes; UNIX: `sun_path`, NUL terminated.
    pub data: [u8; UNIX_PATH_LEN],
}

impl UpstreamAddr {
    /// An address with every byte zero.
    pub const ZERO: Self = Self {
        family: 0,
        port_be: 0,
        data: [0; UNIX_PATH_LEN],
    };
}

/// [`SockMark::kind`]: the socket is an upstream connection the kernel
/// follows (its state is in [`MAP_CONNS`]).
pub const MARK_FOLLOWED: u32 = 1;
/// [`SockMark::kind`]: a kept-alive upstream connection opened before
/// tracing started, marked by user space: the kernel starts following it at
/// its next event.
pub const MARK_ADOPT: u32 = 2;

/// What socket-local storage holds for an upstream socket.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SockMark {
    /// [`MARK_FOLLOWED`] or [`MARK_ADOPT`].
    pub kind: u32,
    /// The worker process that owns the connection.
    pub tgid: u32,
    /// The worker's fd for it.
    pub fd: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// The upstream (for [`MARK_ADOPT`]: the kernel has not seen the connect).
    pub addr: UpstreamAddr,
}

/// `kind` of an [`UpstreamRecord`].
pub const RECORD_UPSTREAM: u32 = 1;
/// `kind` of a [`ProcessRecord`].
pub const RECORD_PROCESS: u32 = 2;
/// `kind` of a [`ClientGoneRecord`].
pub const RECORD_CLIENT_GONE: u32 = 3;
/// `kind` of a [`FateRecord`].
pub const RECORD_FATE: u32 = 4;

/// `kind` of a [`RequestRecord`].
pub const RECORD_REQUEST: u32 = 5;

/// The most bytes of a request's start the kernel copies, and one: the
/// copy's length is masked with `REQUEST_HEAD - 1` (a bound 5.10's
/// verifier follows). 2047 bytes hold an HTTP request line, and FastCGI's
/// params up to `DOCUMENT_URI` with a query of several hundred bytes
/// written twice before it (`QUERY_STRING`, `REQUEST_URI`).
pub const REQUEST_HEAD: usize = 2048;

/// The start of the request a worker wrote on an upstream connection: the
/// first buffer of the exchange's first write (`writev()`, `write()`,
/// `send()` or `sendmsg()`), copied once per exchange. User space takes the
/// method and path from it and drops the rest; the record is sent
/// `REQUEST_RECORD_FIXED + len` bytes long.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct RequestRecord {
    /// Always [`RECORD_REQUEST`].
    pub kind: u32,
    /// The worker process.
    pub tgid: u32,
    /// The worker's fd for the connection.
    pub fd: u32,
    /// Bytes of `head` copied.
    pub len: u32,
    /// `Exchange::req_first_ns` of the exchange it starts.
    pub req_first_ns: u64,
    /// The bytes.
    pub head: [u8; REQUEST_HEAD],
}

/// The bytes of a [`RequestRecord`] before its `head`.
pub const REQUEST_RECORD_FIXED: usize = 24;

/// `Exchange::flags`: a reset arrived.
pub const FLAG_RESET_SEEN: u32 = 1;
/// `Exchange::flags`: the TCP handshake (or UNIX connect) completed.
pub const FLAG_CONNECTED: u32 = 2;
/// `Exchange::flags`: this exchange runs on a connection used before.
pub const FLAG_REUSED: u32 = 4;

/// One upstream connect attempt or request/response exchange: the kernel's
/// state for a connection (in a map, read by user space for pending
/// exchanges) and the body of the record sent when it finishes.
/// Timestamps are CLOCK_MONOTONIC ns, 0 when not (yet) seen.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Exchange {
    /// `connect()` entry for a first exchange; first request byte for a reused one.
    pub start_ns: u64,
    /// Duration of the connect, ns (first exchange only).
    pub connect_ns: u64,
    /// First request byte written by the worker.
    pub req_first_ns: u64,
    /// Last request byte written by the worker.
    pub req_last_ns: u64,
    /// The upstream's kernel acknowledged everything written (TCP).
    pub acked_ns: u64,
    /// First response byte arrived in the kernel.
    pub resp_kernel_ns: u64,
    /// First response byte read by the worker.
    pub resp_first_read_ns: u64,
    /// Last response byte read by the worker.
    pub resp_last_read_ns: u64,
    /// When the exchange ended.
    pub end_ns: u64,
    /// Worker process id.
    pub tgid: u32,
    /// How it ended: an [`End`] code (0 while in flight).
    pub end: u32,
    /// Positive errno, 0 when none.
    pub errno: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// SYNs retransmitted while connecting.
    pub syn_retransmits: u32,
    /// Data segments retransmitted during this exchange.
    pub retransmits: u32,
    /// Smoothed RTT, µs (TCP, last seen).
    pub srtt_us: u32,
    /// A [`Phase`] code.
    pub phase: u32,
    /// Exchanges finished on this connection before this one.
    pub index: u32,
    /// The worker's fd for the connection.
    pub fd: u32,
    /// A process on the other end, 0 when not known: for a UNIX upstream
    /// the one that created its listening socket (`SO_PEERCRED`: the
    /// backend, or its master); for TCP the task in whose context the
    /// upstream's FIN or reset arrived (on loopback, the closing process).
    pub peer_pid: u32,
    /// Data segments the upstream's own socket retransmitted during this
    /// exchange (the response lost on its way back), counted when the
    /// upstream runs on this host.
    pub peer_retransmits: u32,
    /// Response bytes the worker read in this exchange.
    pub resp_bytes: u64,
    /// For an exchange on a kept-alive connection: how long the connection
    /// sat idle before this request (since the previous response's last
    /// byte was read); 0 otherwise.
    pub idle_ns: u64,
    /// The longest wait between two response reads with data.
    pub read_gap_max_ns: u64,
    /// The upstream.
    pub addr: UpstreamAddr,
}

impl Exchange {
    /// A connect attempt by `tgid` on `fd` to `addr`, started at `start_ns`.
    pub const fn new(tgid: u32, fd: u32, start_ns: u64, addr: UpstreamAddr) -> Self {
        Self {
            start_ns,
            connect_ns: 0,
            req_first_ns: 0,
            req_last_ns: 0,
            acked_ns: 0,
            resp_kernel_ns: 0,
            resp_first_read_ns: 0,
            resp_last_read_ns: 0,
            end_ns: 0,
            tgid,
            end: 0,
            errno: 0,
            flags: 0,
            syn_retransmits: 0,
            retransmits: 0,
            srtt_us: 0,
            phase: Phase::Idle.code(),
            index: 0,
            fd,
            peer_pid: 0,
            peer_retransmits: 0,
            resp_bytes: 0,
            idle_ns: 0,
            read_gap_max_ns: 0,
            addr,
        }
    }
}

/// A finished connect attempt or exchange of an nginx worker.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct UpstreamRecord {
    /// Always [`RECORD_UPSTREAM`].
    pub kind: u32,
    /// Explicit padding.
    pub _pad: u32,
    /// What happened.
    pub exchange: Exchange,
}

/// `ProcessRecord::what`: a traced process forked a child that is now traced.
pub const PROC_FORK: u32 = 1;
/// `ProcessRecord::what`: a new nginx instance was exec'd and is now traced.
pub const PROC_EXEC: u32 = 2;
/// `ProcessRecord::what`: a traced process exited.
pub const PROC_EXIT: u32 = 3;

/// A change to the set of traced processes.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessRecord {
    /// Always [`RECORD_PROCESS`].
    pub kind: u32,
    /// One of the `PROC_*` constants.
    pub what: u32,
    /// The process (for fork: the child).
    pub pid: u32,
    /// Its parent (for fork and exec), 0 when not known.
    pub parent: u32,
}

/// A worker closed a client connection its client had already left
/// (FIN or RST received), inside a `close()` right after giving up on
/// upstream exchanges: they ended because the client went away (nginx logs
/// 499), not because nginx's timer fired. No socket write or connect by the
/// worker came between the give-ups and the close, which rules out nginx
/// answering 504 or retrying. Several give-ups in a row (every stream of an
/// HTTP/2 connection) give a range.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ClientGoneRecord {
    /// Always [`RECORD_CLIENT_GONE`].
    pub kind: u32,
    /// The worker process.
    pub tgid: u32,
    /// `Exchange::end_ns` of the first exchange given up on.
    pub first_giveup_ns: u64,
    /// `Exchange::end_ns` of the last one.
    pub last_giveup_ns: u64,
    /// When the client connection was closed.
    pub closed_ns: u64,
}

/// `FateRecord::what`: a signal that kills by default was sent to a
/// process (it may still handle it).
pub const FATE_SIGNAL: u32 = 1;
/// `FateRecord::what`: the OOM killer chose the process.
pub const FATE_OOM: u32 = 2;
/// `FateRecord::what`: the process exited (every exit of a traced nginx
/// process; other processes when they end by a signal or a non-zero status).
pub const FATE_EXIT: u32 = 3;

/// What befell a process: the facts that name a backend or worker that died
/// under an exchange. Rare (signals, OOM kills, failed exits), so sent for
/// every process on the host; user space ties them to exchanges.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FateRecord {
    /// Always [`RECORD_FATE`].
    pub kind: u32,
    /// [`FATE_SIGNAL`], [`FATE_OOM`] or [`FATE_EXIT`].
    pub what: u32,
    /// The process (thread group id).
    pub pid: u32,
    /// Its parent process, 0 when not known.
    pub parent: u32,
    /// The signal ([`FATE_SIGNAL`]).
    pub signal: u32,
    /// The signal's `si_code`: 0 or negative when a process sent it
    /// (`kill`, `tkill`, `sigqueue`), positive when the kernel did (a fault).
    pub code: i32,
    /// `wait()` status of an exit ([`FATE_EXIT`]).
    pub exit_code: u32,
    /// The process that sent the signal, or that was running when the OOM
    /// killer chose its victim.
    pub sender: u32,
    /// For an OOM kill: the memory cgroup limit that was hit, pages (the
    /// tightest limit up the allocating task's memory cgroup tree that its
    /// usage had reached); 0 when none was (the host ran out).
    pub memory_limit_pages: u64,
    /// When it happened (CLOCK_MONOTONIC ns).
    pub time_ns: u64,
    /// The process's name (task comm, NUL padded).
    pub comm: [u8; 16],
    /// The sender's name.
    pub sender_comm: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<Offsets>() == 112);
const _: () = assert!(core::mem::size_of::<StructOffsets>() == 148);
const _: () = assert!(core::mem::size_of::<Config>() == 332);
const _: () = assert!(core::mem::size_of::<FateRecord>() == 80);
const _: () = assert!(core::mem::size_of::<SockMark>() == 128);
const _: () = assert!(core::mem::size_of::<UpstreamAddr>() == 112);
const _: () = assert!(core::mem::size_of::<Exchange>() == 256);
const _: () = assert!(core::mem::size_of::<UpstreamRecord>() == 264);
const _: () = assert!(core::mem::size_of::<ProcessRecord>() == 16);
const _: () = assert!(core::mem::size_of::<ClientGoneRecord>() == 32);
const _: () = assert!(core::mem::size_of::<RequestRecord>() == REQUEST_RECORD_FIXED + REQUEST_HEAD);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and arrays with no implicit padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::UpstreamRecord {}
    unsafe impl aya::Pod for super::Exchange {}
    unsafe impl aya::Pod for super::ProcessRecord {}
    unsafe impl aya::Pod for super::ClientGoneRecord {}
    unsafe impl aya::Pod for super::FateRecord {}
    unsafe impl aya::Pod for super::SockMark {}
}

#[cfg(test)]
mod kernel_release_tests {
    use super::*;

    #[test]
    fn socket_storage_for_tracing_starts_with_linux_5_11() {
        // Releases as Debian's kernels and this host report them.
        assert!(!sk_storage_for_tracing("5.10.0-35-cloud-amd64"));
        assert!(sk_storage_for_tracing("5.11.0"));
        assert!(sk_storage_for_tracing("5.15.0-124-generic"));
        assert!(sk_storage_for_tracing("6.1.0-41-cloud-amd64"));
        assert!(sk_storage_for_tracing("6.18.44-fc-v769"));
        assert!(sk_storage_for_tracing("7.3.0-1-cloud-amd64"));
        assert!(!sk_storage_for_tracing("4.19.0-27-amd64"));
        assert!(sk_storage_for_tracing(""));
    }
}
