//! Checks made before anything is loaded: privileges and tracefs.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result};

use crate::exit::{self, UserError};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Names of the capabilities missing from the effective set `cap_eff` for
/// loading BPF programs and attaching them to tracepoints.
pub fn missing_capabilities(cap_eff: u64) -> Vec<&'static str> {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// The `CapEff:` mask of a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

/// Fails with exit code 3 unless this process may load and attach BPF programs.
pub fn check_privileges() -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status")
        .context("failed to read /proc/self/status to check capabilities")?;
    let cap_eff = parse_cap_eff(&status).unwrap_or(0);
    let missing = missing_capabilities(cap_eff);
    if missing.is_empty() {
        return Ok(());
    }
    Err(UserError::new(
        exit::PRIVILEGES,
        format!(
            "ngx-trace must run as root or with CAP_BPF and CAP_PERFMON (missing {}): \
             run it with sudo",
            missing.join(" and ")
        ),
    )
    .into())
}

/// Where tracefs is mounted, mounting it at the standard place if it is not.
pub fn tracefs_root() -> Result<PathBuf> {
    for candidate in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(candidate).join("events").is_dir() {
            return Ok(PathBuf::from(candidate));
        }
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: constant NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 && Path::new("/sys/kernel/tracing/events").is_dir() {
        return Ok(PathBuf::from("/sys/kernel/tracing"));
    }
    let err = std::io::Error::last_os_error();
    Err(UserError::new(
        exit::KERNEL,
        format!(
            "tracefs is not mounted and mounting it failed ({err}): \
             run `mount -t tracefs nodev /sys/kernel/tracing`, or use a kernel with CONFIG_TRACING"
        ),
    )
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_has_every_capability() {
        // CapEff of a root shell on Linux 6.18.
        let status = "Name:\tcat\nCapInh:\t0000000000000000\nCapPrm:\t000001ffffffffff\n\
                      CapEff:\t000001ffffffffff\nCapBnd:\t000001ffffffffff\n";
        let cap_eff = parse_cap_eff(status).unwrap();
        assert!(missing_capabilities(cap_eff).is_empty());
    }

    #[test]
    fn unprivileged_user_misses_bpf_and_perfmon() {
        let cap_eff = parse_cap_eff("CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(missing_capabilities(cap_eff), ["CAP_BPF", "CAP_PERFMON"]);
    }

    #[test]
    fn bpf_without_perfmon_is_not_enough() {
        assert_eq!(missing_capabilities(1 << CAP_BPF), ["CAP_PERFMON"]);
        assert!(missing_capabilities((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
    }
}
