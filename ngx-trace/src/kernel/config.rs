//! The configuration the kernel programs load with: tracepoint field
//! offsets (tracefs), struct field offsets (BTF), where the request copy
//! finds a call's registers, and what to follow.
use std::path::Path;

use anyhow::Result;
use ngx_trace_common::{Config, StructOffsets, SyscallRegs, btf::Btf};

use crate::{
    exit::{self, UserError},
    kernel::{programs::sighand_offsets, syscall_regs::syscall_regs, tracefs},
};

/// This kernel's release (`uname -r`), empty when unreadable.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|r| r.trim().to_string())
        .unwrap_or_default()
}

/// What the programs are asked to do, beside what this kernel decides.
pub struct Wanted<'a> {
    /// nginx's process name.
    pub comm: &'a str,
    /// Follow nginx instances that start while tracing (not `--pid`).
    pub follow_new_instances: bool,
    /// Copy the start of each request (not `--no-request-path`).
    pub request_copy: bool,
}

/// The kernel configuration for `wanted` on this kernel (tracefs at
/// `root`), and how requests are copied (what `--check` says; `Err`: why
/// they are not).
pub fn config(wanted: &Wanted, root: &Path) -> Result<(Config, Result<String, String>)> {
    let mut comm = [0u8; 16];
    comm[..wanted.comm.len()].copy_from_slice(wanted.comm.as_bytes());
    let btf = Btf::from_sys_fs().map_err(|e| UserError::new(exit::KERNEL, e))?;
    let (syscall, request_copy) = if !wanted.request_copy {
        (SyscallRegs::OFF, Err("off (--no-request-path)".to_string()))
    } else {
        match syscall_regs(&btf) {
            Ok(regs) => {
                let at = if regs.regs_at[0] == regs.regs_at[1] {
                    regs.regs_at[0].to_string()
                } else {
                    format!("{} or {}", regs.regs_at[0], regs.regs_at[1])
                };
                (
                    regs,
                    Ok(format!(
                        "from the registers of the call writing an exchange's first bytes \
                         (struct pt_regs at task_struct.stack + {at})"
                    )),
                )
            }
            Err(why) => (SyscallRegs::OFF, Err(format!("not copied: {why}"))),
        }
    };
    let config = Config {
        offsets: tracefs::read_offsets(root)?,
        structs: struct_offsets(&btf)?,
        follow_new_instances: u32::from(wanted.follow_new_instances),
        sk_storage: u32::from(ngx_trace_common::sk_storage_for_tracing(&kernel_release())),
        comm,
        syscall,
    };
    Ok((config, request_copy))
}

/// Offsets of the kernel struct fields the programs read, from this
/// kernel's BTF; a field this kernel lacks, or one of another size than the
/// programs read, is named.
fn struct_offsets(btf: &Btf) -> Result<StructOffsets> {
    let kernel_error = |e: String| UserError::new(exit::KERNEL, e);
    let field = |strukt: &str, name: &str, size: u32| -> Result<u32> {
        let member = btf.member(strukt, name).map_err(kernel_error)?;
        if member.size != size {
            return Err(kernel_error(format!(
                "struct {strukt} member `{name}` has {} bytes on this kernel, expected {size}: \
                 an unsupported kernel layout, please report it with `uname -r`",
                member.size
            ))
            .into());
        }
        Ok(member.offset)
    };
    Ok(StructOffsets {
        tcp_snd_una: field("tcp_sock", "snd_una", 4)?,
        tcp_write_seq: field("tcp_sock", "write_seq", 4)?,
        tcp_srtt_us: field("tcp_sock", "srtt_us", 4)?,
        tcp_delivered_mstamp: field("tcp_sock", "delivered_mstamp", 8)?,
        sk_bpf_storage: field("sock", "sk_bpf_storage", 8)?,
        sk_family: field("sock_common", "skc_family", 2)?,
        task_files: field("task_struct", "files", 8)?,
        files_fdt: field("files_struct", "fdt", 8)?,
        fdtable_max_fds: field("fdtable", "max_fds", 4)?,
        fdtable_fd: field("fdtable", "fd", 8)?,
        file_private_data: field("file", "private_data", 8)?,
        socket_type: field("socket", "type", 2)?,
        socket_sk: field("socket", "sk", 8)?,
        sk_err: field("sock", "sk_err", 4)?,
        sk_state: field("sock_common", "skc_state", 1)?,
        task_flags: field("task_struct", "flags", 4)?,
        task_exit_code: field("task_struct", "exit_code", 4)?,
        task_tgid: field("task_struct", "tgid", 4)?,
        task_real_parent: field("task_struct", "real_parent", 8)?,
        task_comm: field("task_struct", "comm", 16)?,
        sk_peer_pid: field("sock", "sk_peer_pid", 8)?,
        // A flexible (or one-element) array: only its start matters.
        pid_numbers: btf.member("pid", "numbers").map_err(kernel_error)?.offset,
        task_cgroups: field("task_struct", "cgroups", 8)?,
        css_set_subsys: btf
            .member("css_set", "subsys")
            .map_err(kernel_error)?
            .offset,
        memory_cgrp_id: memory_cgrp_id(btf),
        css_parent: field("cgroup_subsys_state", "parent", 8)?,
        memcg_memory: btf
            .member("mem_cgroup", "memory")
            .map_err(kernel_error)?
            .offset,
        page_counter_usage: field("page_counter", "usage", 8)?,
        page_counter_max: field("page_counter", "max", 8)?,
        sk_num: field("sock_common", "skc_num", 2)?,
        sk_dport: field("sock_common", "skc_dport", 2)?,
        sk_rcv_saddr: field("sock_common", "skc_rcv_saddr", 4)?,
        sk_v6_rcv_saddr: field("sock_common", "skc_v6_rcv_saddr", 16)?,
        sighand: sighand_offsets(btf),
    })
}

/// The memory controller's index among the kernel's cgroup subsystems:
/// the enumerator `memory_cgrp_id` in its BTF (recent kernels leave
/// controllers out of `/proc/cgroups`: its rows are no index);
/// `u32::MAX` when the kernel has none (OOM kills then name no limit).
fn memory_cgrp_id(btf: &Btf) -> u32 {
    btf.enum_value("memory_cgrp_id")
        .ok()
        .and_then(|id| u32::try_from(id).ok())
        .unwrap_or(u32::MAX)
}
