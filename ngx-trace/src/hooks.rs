//! Which mechanism gives each capability on this kernel: the best one it
//! offers (BTF tracepoint, classic tracepoint, fentry/fexit), and why the
//! better ones were passed over. One object serves every kernel; user space
//! picks which of its programs to load.
use std::path::Path;

use ngx_trace_common::{Hook, PROGRAMS, ProgramSpec};

use crate::exit::{self, UserError};

/// `category:name` of a tracepoint, `function()` of a kernel function.
pub fn target_name(spec: &ProgramSpec) -> String {
    match spec.hook {
        Hook::BtfTracepoint | Hook::Tracepoint => format!("{}:{}", spec.category, spec.target),
        Hook::FEntry | Hook::FExit => format!("{}()", spec.target),
    }
}

/// The alternatives of one capability, best first.
#[derive(Debug)]
pub struct Capability {
    /// What the kernel side sees through it.
    pub name: &'static str,
    /// Its programs, best first.
    pub candidates: Vec<&'static ProgramSpec>,
}

impl Capability {
    /// Whether the kernel side runs without it (only optional programs).
    pub fn optional(&self) -> bool {
        self.candidates.iter().all(|c| c.optional)
    }
}

/// The capabilities of `programs`, in the order of their first program.
pub fn capabilities_of(programs: &'static [ProgramSpec]) -> Vec<Capability> {
    let mut list: Vec<Capability> = Vec::new();
    for spec in programs {
        match list.iter_mut().find(|c| c.name == spec.capability) {
            Some(c) => c.candidates.push(spec),
            None => list.push(Capability {
                name: spec.capability,
                candidates: vec![spec],
            }),
        }
    }
    list
}

/// Every capability ngx-trace uses.
pub fn capabilities() -> Vec<Capability> {
    capabilities_of(PROGRAMS)
}

/// Why `spec` cannot be used here, known before loading anything: a
/// tracepoint tracefs (at `root`) lacks. Kernel functions are judged at
/// load time (BTF and the kernel's trampolines decide).
pub fn missing(root: &Path, spec: &ProgramSpec) -> Option<String> {
    match spec.hook {
        Hook::BtfTracepoint | Hook::Tracepoint => {
            let format = root
                .join("events")
                .join(spec.category)
                .join(spec.target)
                .join("format");
            (!format.exists())
                .then(|| format!("no tracepoint {} on this kernel", target_name(spec)))
        }
        Hook::FEntry | Hook::FExit => None,
    }
}

/// Fails, before anything is loaded, when a capability has no candidate
/// left on this kernel (every one a missing tracepoint).
pub fn check_available(root: &Path) -> anyhow::Result<()> {
    let lacking: Vec<String> = capabilities()
        .iter()
        .filter(|c| !c.optional() && c.candidates.iter().all(|s| missing(root, s).is_some()))
        .map(|c| {
            let tried: Vec<String> = c.candidates.iter().map(|s| target_name(s)).collect();
            format!(
                "{} (to {}: {})",
                c.name,
                c.candidates[0].purpose,
                tried.join(" or ")
            )
        })
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    Err(UserError::new(
        exit::KERNEL,
        format!(
            "this kernel offers no way to see {}: ngx-trace needs Linux 5.11 or later \
             with BTF, built with CONFIG_FTRACE_SYSCALLS",
            lacking.join("; ")
        ),
    )
    .into())
}

/// What was chosen for one capability.
#[derive(Debug)]
pub struct Chosen {
    /// The capability.
    pub capability: &'static str,
    /// The program attached; `None` for an optional capability this kernel
    /// lacks.
    pub spec: Option<&'static ProgramSpec>,
    /// The better candidates, each with why it was not used.
    pub passed_over: Vec<(&'static ProgramSpec, String)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_capability_has_its_tracepoint_first_and_one_purpose() {
        let caps = capabilities();
        assert!(!caps.is_empty());
        for c in &caps {
            // Best first: a tracepoint, when there is one, comes before any
            // kernel-function fallback.
            let ranks: Vec<u8> = c
                .candidates
                .iter()
                .map(|s| match s.hook {
                    Hook::BtfTracepoint => 0,
                    Hook::Tracepoint => 1,
                    Hook::FEntry | Hook::FExit => 2,
                })
                .collect();
            assert!(ranks.is_sorted(), "{}: {ranks:?}", c.name);
            let purposes: std::collections::BTreeSet<&str> =
                c.candidates.iter().map(|s| s.purpose).collect();
            assert_eq!(purposes.len(), 1, "{}: {purposes:?}", c.name);
        }
    }

    #[test]
    fn the_per_socket_capabilities_have_a_fallback_for_kernels_before_6_3() {
        let caps = capabilities();
        for name in [
            "request written",
            "response read",
            "response arriving",
            "socket errors",
        ] {
            let c = caps.iter().find(|c| c.name == name).expect(name);
            assert!(
                c.candidates
                    .iter()
                    .any(|s| matches!(s.hook, Hook::FEntry | Hook::FExit)),
                "{name}: {:?}",
                c.candidates
            );
        }
    }

    #[test]
    fn a_missing_tracepoint_is_named_and_functions_wait_for_load() {
        let dir = std::env::temp_dir().join(format!("ngx-trace-hooks-{}", std::process::id()));
        let spec = PROGRAMS
            .iter()
            .find(|s| s.program == "sock_send_length")
            .unwrap();
        let fexit = PROGRAMS
            .iter()
            .find(|s| s.program == "sock_sendmsg_exit")
            .unwrap();
        assert_eq!(
            missing(&dir, spec).as_deref(),
            Some("no tracepoint sock:sock_send_length on this kernel")
        );
        assert_eq!(missing(&dir, fexit), None);
        let format = dir.join("events/sock/sock_send_length");
        std::fs::create_dir_all(&format).unwrap();
        std::fs::write(format.join("format"), "name: sock_send_length\n").unwrap();
        assert_eq!(missing(&dir, spec), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
