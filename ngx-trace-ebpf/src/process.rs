//! Following the nginx process tree (fork, exec, exit), and the fates of
//! processes: signals that kill, OOM kills, exits. The fate hooks fire
//! for every process (no per-socket cost): user space ties them to the
//! backends and workers of failed exchanges. Any process can make them as
//! fast as it likes, so those of untraced processes never wake the reader
//! (the failure record that needs one does) and are rate-limited per CPU
//! (`maps::within_limit`); traced nginx processes' are always sent.
use aya_ebpf::{
    EbpfContext as _,
    bindings::BPF_RB_NO_WAKEUP,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use ngx_trace_common::{
    FATE_EXIT, FATE_OOM, FATE_SIGNAL, FateRecord, LOST_MAP_FULL, LOST_RINGBUF_FULL,
    NGINX_PID_TRACED, NGINX_PID_WORKER, PROC_EXEC, PROC_EXIT, PROC_FORK, ProcessRecord,
    RECORD_FATE, RECORD_PROCESS,
};

use crate::{
    config::{config, offset},
    maps::{
        EVENTS, LIMIT_EXITS, LIMIT_SIGNALS, NGINX_PIDS, WATCHED_EXITS, count_lost, is_traced,
        within_limit,
    },
    task,
};

fn emit_process(what: u32, pid: u32, parent: u32) {
    let record = ProcessRecord {
        kind: RECORD_PROCESS,
        what,
        pid,
        parent,
    };
    if EVENTS.output::<ProcessRecord>(&record, 0).is_err() {
        count_lost(LOST_RINGBUF_FULL);
    }
}

fn trace_pid(pid: u32, mark: u32) -> bool {
    if NGINX_PIDS.insert(pid, mark, 0).is_err() {
        count_lost(LOST_MAP_FULL);
        return false;
    }
    true
}

/// A traced process forked: trace the child before it runs, so a new worker
/// (reload, restart, respawn) is covered from its first instruction.
#[tracepoint]
pub fn sched_process_fork(ctx: TracePointContext) -> u32 {
    if !is_traced(ctx.tgid()) {
        return 0;
    }
    let Ok(child) = (unsafe { ctx.read_at::<i32>(offset!(fork_child_pid)) }) else {
        return 0;
    };
    // Threads fork too (nginx thread pools); they are tracked by tid and
    // dropped at exit. User space tells processes from threads.
    if trace_pid(child as u32, NGINX_PID_TRACED) {
        emit_process(PROC_FORK, child as u32, ctx.tgid());
    }
    0
}

/// A program named like nginx started: a new instance to follow (unless
/// tracing one given instance). A traced process that execs something else
/// is no longer nginx.
#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let traced = is_traced(tgid);
    if !traced && config!(follow_new_instances) == 0 {
        return 0;
    }
    let Ok(comm) = bpf_get_current_comm() else {
        return 0;
    };
    let want: [u8; 16] = config!(comm);
    let mut matches = true;
    let mut i = 0;
    while i < comm.len() {
        if comm[i] != want[i] {
            matches = false;
            break;
        }
        if comm[i] == 0 {
            break;
        }
        i += 1;
    }
    if matches && !traced {
        if trace_pid(tgid, NGINX_PID_TRACED) {
            emit_process(PROC_EXEC, tgid, 0);
        }
    } else if !matches && traced {
        let _ = NGINX_PIDS.remove(tgid);
        emit_process(PROC_EXIT, tgid, 0);
    }
    0
}

/// A task exited. A traced one is forgotten (threads by tid, processes by
/// pid); the end of a traced process is sent with how it ended, and so is
/// that of any other process ending by a signal or a non-zero status (a
/// backend that crashed, was killed or gave up). Runs before the task's
/// files are closed: its record comes before the ends of the connections
/// its death closes.
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = pid_tgid as u32;
    let traced = NGINX_PIDS.remove(pid).is_ok();
    if pid != (pid_tgid >> 32) as u32 {
        return 0;
    }
    let current = task::current();
    let exit_code = task::exit_code(current);
    // A watched process (it closed an upstream connection, or was told to
    // end) is reported whatever its status: its death joins that close.
    let watched = WATCHED_EXITS.remove(pid).is_ok();
    if traced || ((exit_code != 0 || watched) && within_limit(LIMIT_EXITS)) {
        let fate = FateRecord {
            kind: RECORD_FATE,
            what: FATE_EXIT,
            pid,
            parent: task::parent_tgid(current),
            signal: 0,
            code: 0,
            exit_code,
            sender: 0,
            memory_limit_pages: 0,
            time_ns: unsafe { bpf_ktime_get_ns() },
            comm: bpf_get_current_comm().unwrap_or([0; 16]),
            sender_comm: [0; 16],
        };
        emit_fate(&fate, wakeup(traced));
    }
    if traced {
        emit_process(PROC_EXIT, pid, 0);
    }
    0
}

fn emit_fate(fate: &FateRecord, flags: u64) {
    if EVENTS.output::<FateRecord>(fate, flags).is_err() {
        count_lost(LOST_RINGBUF_FULL);
    }
}

/// Signals whose default action ends the process, as a bit mask: HUP, INT,
/// QUIT, ILL, TRAP, ABRT, BUS, FPE, KILL, SEGV, TERM, XCPU, XFSZ, SYS.
/// (Not USR1/USR2, PIPE, ALRM: control signals and a write's own error,
/// frequent and rarely fatal to a server.)
const FATAL_SIGNALS: u32 = (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 6)
    | (1 << 7)
    | (1 << 8)
    | (1 << 9)
    | (1 << 11)
    | (1 << 15)
    | (1 << 24)
    | (1 << 25)
    | (1 << 31);

/// `si_code` of a signal sent with `SEND_SIG_PRIV` (by the kernel).
const SI_KERNEL: i32 = 0x80;

/// A signal that ends a process by default was queued for a task: who sent
/// it (the current task), to whom, and whether by a process or the kernel.
/// Arguments: `(sig, info, task, group, result)`; `result` 0 (delivered) or
/// 4 (queued without its info) means it was queued.
#[btf_tracepoint(function = "signal_generate")]
pub fn signal_generate_btf(ctx: BtfTracePointContext) -> u32 {
    let sig: i32 = ctx.arg(0);
    let result: i32 = ctx.arg(4);
    if !kills(sig, result) {
        return 0;
    }
    let info: u64 = ctx.arg(1);
    let target: u64 = ctx.arg(2);
    let pid = task::tgid(target);
    let sender = (bpf_get_current_pid_tgid() >> 32) as u32;
    let traced = is_traced(pid);
    // A signal a process sends itself and handles ends nothing (a loop of
    // them is a flood, from anything, named nginx or not): left out. One
    // handled but sent by another process is kept: it tells a process to
    // end (gunicorn's arbiter, PHP-FPM's master, `nginx -s`), and a
    // handler that re-raises its signal has reset it to the default first.
    if sender == pid && task::handles(target, sig as u32) {
        return 0;
    }
    if !traced && !within_limit(LIMIT_SIGNALS) {
        return 0;
    }
    // SEND_SIG_NOINFO (0) is a process's kill, SEND_SIG_PRIV (1) the
    // kernel's; otherwise `si_code` is the third int of the siginfo.
    let code = match info {
        0 => 0,
        1 => SI_KERNEL,
        _ => unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((info + 8) as *const i32) }
            .unwrap_or(0),
    };
    let fate = FateRecord {
        kind: RECORD_FATE,
        what: FATE_SIGNAL,
        pid,
        parent: task::parent_tgid(target),
        signal: sig as u32,
        code,
        exit_code: 0,
        sender,
        memory_limit_pages: 0,
        time_ns: unsafe { bpf_ktime_get_ns() },
        comm: task::comm(target),
        sender_comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    emit_fate(&fate, wakeup(traced));
    let _ = WATCHED_EXITS.insert(pid, 1, 0);
    0
}

/// Ring buffer flags of a fate: one of an untraced process is drained on
/// the reader's timer (order in the ring is kept, and the failure record
/// that needs it wakes the reader).
#[inline(always)]
fn wakeup(traced: bool) -> u64 {
    if traced { 0 } else { BPF_RB_NO_WAKEUP as u64 }
}

/// Whether signal `sig`, queued with `result`, is one that ends a process.
#[inline(always)]
fn kills(sig: i32, result: i32) -> bool {
    (1..32).contains(&sig) && FATAL_SIGNALS & (1 << sig) != 0 && (result == 0 || result == 4)
}

/// The same through the classic tracepoint (a fallback), whose record has
/// `si_code` and the target's thread id and name, not its parent (the
/// target's exit record names it). A signal a thread sends itself and
/// handles is left out as above (the target is then the current task).
#[tracepoint]
pub fn signal_generate(ctx: TracePointContext) -> u32 {
    let _ = try_signal_generate(&ctx);
    0
}

fn try_signal_generate(ctx: &TracePointContext) -> Result<(), i64> {
    // SAFETY (every read): offsets of this tracepoint's fields, from tracefs.
    let sig = unsafe { ctx.read_at::<i32>(offset!(signal_sig)) }?;
    let result = unsafe { ctx.read_at::<i32>(offset!(signal_result)) }?;
    if !kills(sig, result) {
        return Ok(());
    }
    let pid = unsafe { ctx.read_at::<i32>(offset!(signal_pid)) }? as u32;
    if pid == bpf_get_current_pid_tgid() as u32 && task::handles(task::current(), sig as u32) {
        return Ok(());
    }
    // The thread's id: traced threads are in the set too.
    let traced = is_traced(pid);
    if !traced && !within_limit(LIMIT_SIGNALS) {
        return Ok(());
    }
    let fate = FateRecord {
        kind: RECORD_FATE,
        what: FATE_SIGNAL,
        pid,
        parent: 0,
        signal: sig as u32,
        code: unsafe { ctx.read_at::<i32>(offset!(signal_code)) }?,
        exit_code: 0,
        sender: ctx.tgid(),
        memory_limit_pages: 0,
        time_ns: unsafe { bpf_ktime_get_ns() },
        comm: unsafe { ctx.read_at::<[u8; 16]>(offset!(signal_comm)) }?,
        sender_comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    emit_fate(&fate, wakeup(traced));
    // The thread's id: a process's own for a signal sent to the process.
    let _ = WATCHED_EXITS.insert(pid, 1, 0);
    Ok(())
}

/// The OOM killer chose a victim (its pid; the current task is the one
/// whose allocation failed, in the memory cgroup that hit its limit).
/// The limit is read here, while the cgroup is sure to exist and the
/// victim has not exited.
#[tracepoint]
pub fn mark_victim(ctx: TracePointContext) -> u32 {
    let Ok(pid) = (unsafe { ctx.read_at::<i32>(offset!(mark_victim_pid)) }) else {
        return 0;
    };
    let fate = FateRecord {
        kind: RECORD_FATE,
        what: FATE_OOM,
        pid: pid as u32,
        parent: 0,
        signal: 0,
        code: 0,
        exit_code: 0,
        sender: ctx.tgid(),
        memory_limit_pages: task::memory_limit_hit(task::current()),
        time_ns: unsafe { bpf_ktime_get_ns() },
        comm: [0; 16],
        sender_comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    emit_fate(&fate, 0);
    0
}

/// A traced process creating an epoll instance is starting nginx's event
/// loop: from now on its connects are upstream connects.
fn mark_worker() -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_traced(tgid) {
        trace_pid(tgid, NGINX_PID_WORKER);
    }
    0
}

/// See [`mark_worker`].
#[tracepoint]
pub fn sys_enter_epoll_create1(_ctx: TracePointContext) -> u32 {
    mark_worker()
}

/// See [`mark_worker`] (nginx calls the legacy syscall where it exists).
#[tracepoint]
pub fn sys_enter_epoll_create(_ctx: TracePointContext) -> u32 {
    mark_worker()
}
