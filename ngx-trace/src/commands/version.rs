//! `ngx-trace --version`: the build, and what this kernel offers it, from
//! what can be read without loading anything (`--check`, as root, loads and
//! attaches everything and lists the hooks chosen).
use std::{path::Path, sync::OnceLock};

/// Whether `path` exists, or `None` when it cannot be told (no permission).
fn exists(path: &str) -> Option<bool> {
    Path::new(path).try_exists().ok()
}

/// Whether any of `paths` exists: `None` when none is found and one
/// cannot be told.
fn any_exists(paths: &[&str]) -> Option<bool> {
    let found: Vec<Option<bool>> = paths.iter().map(|p| exists(p)).collect();
    if found.contains(&Some(true)) {
        Some(true)
    } else if found.contains(&None) {
        None
    } else {
        Some(false)
    }
}

fn yes_no(found: Option<bool>, yes: &str, no: &str) -> String {
    match found {
        Some(true) => yes.to_string(),
        Some(false) => no.to_string(),
        None => "unknown without root".to_string(),
    }
}

/// Kernel major and minor of `release`.
fn major_minor(release: &str) -> Option<(u32, u32)> {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().ok());
    Some((parts.next()??, parts.next()??))
}

/// The `--version` text: version, then this kernel's features.
pub fn long_version() -> &'static str {
    static TEXT: OnceLock<String> = OnceLock::new();
    TEXT.get_or_init(|| {
        let release = crate::kernel::config::kernel_release();
        let at_least = |v: (u32, u32)| major_minor(&release).is_none_or(|r| r >= v);
        let tracefs = any_exists(&[
            "/sys/kernel/tracing/events",
            "/sys/kernel/debug/tracing/events",
        ]);
        let kprobes = any_exists(&[
            "/sys/kernel/tracing/kprobe_events",
            "/sys/kernel/debug/tracing/kprobe_events",
        ]);
        format!(
            "{version}\n\
             kernel {release}:\n  \
             BTF (/sys/kernel/btf/vmlinux): {btf}\n  \
             tracefs: {tracefs}\n  \
             BPF ring buffer (5.8+): {ringbuf}\n  \
             socket storage in tracing programs (5.11+): {storage}\n  \
             kprobes (fallback for hooks this kernel lacks): {kprobes}\n\
             `sudo ngx-trace --check` loads and attaches everything and lists the hooks chosen",
            version = env!("CARGO_PKG_VERSION"),
            btf = yes_no(
                exists("/sys/kernel/btf/vmlinux"),
                "yes (BTF tracepoints, struct offsets)",
                "no: ngx-trace needs it (CONFIG_DEBUG_INFO_BTF)"
            ),
            tracefs = yes_no(tracefs, "mounted", "not mounted (ngx-trace mounts it)"),
            ringbuf = if at_least((5, 8)) {
                "yes"
            } else {
                "no: ngx-trace needs it"
            },
            storage = if ngx_trace_common::sk_storage_for_tracing(&release) {
                "yes"
            } else {
                "no: upstream sockets are told by a hash, and kept-alive connections \
                 opened before start are not adopted"
            },
            kprobes = yes_no(kprobes, "yes", "no"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_version_names_the_build_and_the_kernel() {
        let text = long_version();
        assert!(text.starts_with(env!("CARGO_PKG_VERSION")), "{text}");
        assert!(text.contains(&format!(
            "kernel {}:",
            crate::kernel::config::kernel_release()
        )));
        assert!(text.contains("BPF ring buffer (5.8+): "), "{text}");
        assert_eq!(major_minor("5.10.0-28-amd64"), Some((5, 10)));
    }
}
