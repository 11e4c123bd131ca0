//! Fields of a `struct task_struct`, read with the probe helper at offsets
//! from the running kernel's BTF: for the rare events that name a process
//! (signals, exits), never on the per-socket paths.
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};

use crate::config::config;

/// `PF_EXITING`: the task is in `do_exit()`.
const PF_EXITING: u32 = 0x4;

#[inline(always)]
fn read<T>(task: u64, offset: u32) -> Option<T> {
    // SAFETY: the probe helper fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel((task + offset as u64) as *const T) }.ok()
}

/// The current task.
#[inline(always)]
pub fn current() -> u64 {
    unsafe { bpf_get_current_task() }
}

/// Whether `task` is exiting: its files are being closed by its death.
#[inline(always)]
pub fn is_exiting(task: u64) -> bool {
    read::<u32>(task, config!(structs.task_flags)).is_some_and(|f| f & PF_EXITING != 0)
}

/// `task->exit_code`: the `wait()` status it ends with (set on entry to
/// `do_exit()`).
#[inline(always)]
pub fn exit_code(task: u64) -> u32 {
    read::<i32>(task, config!(structs.task_exit_code)).unwrap_or(0) as u32
}

/// `task->tgid`: its process.
#[inline(always)]
pub fn tgid(task: u64) -> u32 {
    read::<i32>(task, config!(structs.task_tgid)).unwrap_or(0) as u32
}

/// The process of `task->real_parent` (0 when unreadable).
#[inline(always)]
pub fn parent_tgid(task: u64) -> u32 {
    match read::<u64>(task, config!(structs.task_real_parent)) {
        Some(parent) if parent != 0 => tgid(parent),
        _ => 0,
    }
}

/// `task->comm`.
#[inline(always)]
pub fn comm(task: u64) -> [u8; 16] {
    read::<[u8; 16]>(task, config!(structs.task_comm)).unwrap_or([0; 16])
}

/// `SIG_DFL`: a signal's default action.
const SIG_DFL: u64 = 0;

/// Whether `task` handles signal `sig` (1 to 64) itself, or ignores it:
/// its disposition is not the default. `false` when unknown (no offsets
/// in this kernel's BTF, or unreadable).
#[inline(always)]
pub fn handles(task: u64, sig: u32) -> bool {
    let at = config!(structs.sighand);
    if !at.known() || !(1..=64).contains(&sig) {
        return false;
    }
    let Some(sighand) = read::<u64>(task, at.task_sighand) else {
        return false;
    };
    if sighand == 0 {
        return false;
    }
    let action = at.action as u64 + (sig as u64 - 1) * at.action_size as u64 + at.handler as u64;
    // SAFETY: the probe helper fails cleanly on a bad address.
    unsafe { bpf_probe_read_kernel((sighand + action) as *const u64) }
        .is_ok_and(|handler| handler != SIG_DFL)
}

/// The pid (initial namespace) of the `struct pid` at `pid`, 0 when none.
#[inline(always)]
pub fn pid_nr(pid: u64) -> u32 {
    if pid == 0 {
        return 0;
    }
    read::<i32>(pid, config!(structs.pid_numbers)).unwrap_or(0) as u32
}

/// Notes the current process as the one on the other end of the exchange
/// at `state` (the upstream's FIN or reset arrives in its context on
/// loopback), unless it is the worker itself or none (softirq on an idle
/// CPU).
#[inline(always)]
pub fn note_closer(state: *mut ngx_trace_common::Exchange) {
    let me = (aya_ebpf::helpers::bpf_get_current_pid_tgid() >> 32) as u32;
    if me != 0 && me != unsafe { (*state).tgid } {
        unsafe { (*state).peer_pid = me };
        // Its exit, even with status 0, joins the close (a full map only
        // evicts the oldest watch).
        let _ = crate::maps::WATCHED_EXITS.insert(me, 1, 0);
    }
}

/// Levels of memory cgroups walked up from a task's own.
const MEMCG_DEPTH: u32 = 8;

/// The memory cgroup limit `task`'s allocations hit, pages: the tightest
/// limit from its memory cgroup up that its usage has reached (within 1%,
/// the charge that failed was not added); 0 when none was (a host-wide OOM,
/// or no memory controller).
#[inline(always)]
pub fn memory_limit_hit(task: u64) -> u64 {
    let id = config!(structs.memory_cgrp_id);
    if id == u32::MAX {
        return 0;
    }
    let Some(cset) = read::<u64>(task, config!(structs.task_cgroups)) else {
        return 0;
    };
    let Some(mut css) = read::<u64>(cset, config!(structs.css_set_subsys) + id * 8) else {
        return 0;
    };
    let counter = config!(structs.memcg_memory);
    let mut hit = 0u64;
    for _ in 0..MEMCG_DEPTH {
        if css == 0 {
            break;
        }
        let max = read::<u64>(css, counter + config!(structs.page_counter_max)).unwrap_or(0);
        let usage = read::<u64>(css, counter + config!(structs.page_counter_usage)).unwrap_or(0);
        if max != 0 && usage + max / 100 >= max && (hit == 0 || max < hit) {
            hit = max;
        }
        css = read::<u64>(css, config!(structs.css_parent)).unwrap_or(0);
    }
    hit
}
