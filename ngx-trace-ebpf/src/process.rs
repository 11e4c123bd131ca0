//! Following the nginx process tree: fork, exec and exit.
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::tracepoint,
    programs::TracePointContext,
};
use ngx_trace_common::{
    LOST_MAP_FULL, LOST_RINGBUF_FULL, NGINX_PID_TRACED, NGINX_PID_WORKER, PROC_EXEC, PROC_EXIT,
    PROC_FORK, ProcessRecord, RECORD_PROCESS,
};

use crate::{
    config::{config, offset},
    maps::{EVENTS, NGINX_PIDS, count_lost, is_traced},
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

/// A traced task exited: forget it (threads by tid, processes by pid).
#[tracepoint]
pub fn sched_process_exit(_ctx: TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let pid = pid_tgid as u32;
    if NGINX_PIDS.remove(pid).is_ok() && pid == (pid_tgid >> 32) as u32 {
        emit_process(PROC_EXIT, pid, 0);
    }
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
