//! `ngx-trace --check`: load and attach everything, say what is in use, exit.
use std::{collections::BTreeSet, path::Path};

use crate::{kernel::programs::Kernel, report::output::Output};
use anyhow::Result;

/// `--check`: what was loaded and attached, and what this host offers.
pub fn report(
    kernel: &Kernel,
    tracefs: &Path,
    nginx: &BTreeSet<u32>,
    request_copy: &Result<String, String>,
) -> Result<()> {
    let mut out = String::new();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    out.push_str(&format!("kernel: Linux {}\n", release.trim()));
    out.push_str(&format!("tracefs: {}\n", tracefs.display()));
    let btf = Path::new("/sys/kernel/btf/vmlinux").exists();
    out.push_str(&format!("kernel BTF: {}\n", if btf { "yes" } else { "no" }));
    let t = &kernel.config.structs;
    out.push_str(&format!(
        "struct offsets (BTF): tcp_sock.snd_una {}, write_seq {}, srtt_us {}, \
         delivered_mstamp {}; sock.sk_bpf_storage {}; sock_common.skc_family {}; \
         task_struct.files {}; files_struct.fdt {}; fdtable.max_fds {}, fd {}; \
         file.private_data {}; socket.type {}, sk {}; sock.sk_err {}; \
         sock_common.skc_state {}\n",
        t.tcp_snd_una,
        t.tcp_write_seq,
        t.tcp_srtt_us,
        t.tcp_delivered_mstamp,
        t.sk_bpf_storage,
        t.sk_family,
        t.task_files,
        t.files_fdt,
        t.fdtable_max_fds,
        t.fdtable_fd,
        t.file_private_data,
        t.socket_type,
        t.socket_sk,
        t.sk_err,
        t.sk_state
    ));
    match kernel.without_marks {
        None => out.push_str("upstream filter: socket-local storage (BPF_MAP_TYPE_SK_STORAGE)\n"),
        Some(why) => out.push_str(&format!(
            "upstream filter: the CONNS hash ({why}; kept-alive connections opened \
             before start are not adopted)\n"
        )),
    }
    out.push_str(&format!(
        "ring buffer: yes ({} KiB)\n",
        ngx_trace_common::EVENTS_BYTES / 1024
    ));
    out.push_str(&format!(
        "programs: {} loaded and attached in {} ms\n",
        kernel.attached(),
        kernel.attach_time.as_millis()
    ));
    // Per capability: the mechanism chosen, and why the better ones were
    // not (a missing tracepoint, a refusal at load).
    for chosen in &kernel.chosen {
        match &chosen.alternative {
            Some(alternative) => out.push_str(&format!(
                "  {:<20} {alternative} ({})\n",
                chosen.capability, chosen.purpose
            )),
            None => out.push_str(&format!(
                "  {:<20} skipped (optional; this kernel lacks it)\n",
                chosen.capability
            )),
        }
        for (better, why) in &chosen.passed_over {
            out.push_str(&format!("  {:<20}   not {better}: {why}\n", ""));
        }
        for (target, why) in &chosen.skipped {
            out.push_str(&format!("  {:<20}   without {target}: {why}\n", ""));
        }
    }
    // Not a program: the socket hooks copy, from the writing call's registers.
    match request_copy {
        Ok(how) => out.push_str(&format!("  {:<20} {how}\n", "request paths")),
        Err(why) => out.push_str(&format!("  {:<20} {why}\n", "request paths")),
    }
    let lost: u64 = kernel.lost()?.iter().sum();
    out.push_str(&format!("lost-event counters: readable ({lost} so far)\n"));
    out.push_str(&format!(
        "nginx processes now: {}\n",
        if nginx.is_empty() {
            "none (ngx-trace would wait for nginx)".to_string()
        } else {
            nginx
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(" ")
        }
    ));
    out.push_str("check: ok\n");
    Output::new(false).text(out.trim_end())?;
    Ok(())
}
