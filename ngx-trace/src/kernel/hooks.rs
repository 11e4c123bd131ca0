//! Which mechanism gives each capability on this kernel: the best one it
//! offers (BTF tracepoint, classic tracepoint, fentry/fexit, kprobes), and
//! why the better ones were passed over. One object serves every kernel; user space
//! picks which of its programs to load.
use std::path::Path;

use ngx_trace_common::{Hook, PROGRAMS, ProgramSpec};

use crate::exit::{self, UserError};

/// `category:name` of a tracepoint, `function()` of a kernel function.
pub fn target_name(spec: &ProgramSpec) -> String {
    match spec.hook {
        Hook::BtfTracepoint | Hook::Tracepoint => format!("{}:{}", spec.category, spec.target),
        Hook::FEntry | Hook::FExit | Hook::KProbe | Hook::KRetProbe => {
            format!("{}()", spec.target)
        }
    }
}

/// `hook target, target` for `programs` (`kprobe/kretprobe f()` when each
/// function has both).
pub fn describe(programs: &[&ProgramSpec]) -> String {
    let mut hooks: Vec<&str> = Vec::new();
    let mut targets: Vec<String> = Vec::new();
    for spec in programs {
        if !hooks.contains(&spec.hook.name()) {
            hooks.push(spec.hook.name());
        }
        let target = target_name(spec);
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    format!("{} {}", hooks.join("/"), targets.join(", "))
}

/// One way to give a capability: one or more programs of the same hook
/// rank (several kernel functions may be needed, one per protocol; a
/// kretprobe comes with its kprobe).
#[derive(Debug)]
pub struct Alternative {
    /// The mechanism (of its first program).
    pub hook: Hook,
    /// Its programs; optional ones are skipped where the kernel lacks them.
    pub programs: Vec<&'static ProgramSpec>,
}

impl Alternative {
    /// Its mechanism and targets, as `--check` names them.
    pub fn name(&self) -> String {
        describe(&self.programs)
    }

    /// Whether the user asked not to use it (`--avoid-hooks`).
    pub fn avoided(&self, avoid: &[Avoid]) -> bool {
        self.programs
            .iter()
            .any(|s| avoid.iter().any(|a| a.covers(s)))
    }

    /// Why it cannot be used here, known before loading anything: a
    /// needed tracepoint tracefs (at `root`) lacks.
    pub fn missing(&self, root: &Path) -> Option<String> {
        self.programs
            .iter()
            .filter(|s| !s.optional)
            .find_map(|s| missing(root, s))
    }
}

/// The alternatives of one capability, best first.
#[derive(Debug)]
pub struct Capability {
    /// What the kernel side sees through it.
    pub name: &'static str,
    /// What it is for.
    pub purpose: &'static str,
    /// Its alternatives, best first.
    pub alternatives: Vec<Alternative>,
}

impl Capability {
    /// Whether the kernel side runs without it (only optional programs).
    pub fn optional(&self) -> bool {
        self.alternatives
            .iter()
            .all(|a| a.programs.iter().all(|s| s.optional))
    }
}

/// The capabilities of `programs`, in the order of their first program;
/// programs of one capability with the same hook rank form one alternative.
pub fn capabilities_of(programs: &'static [ProgramSpec]) -> Vec<Capability> {
    let mut list: Vec<Capability> = Vec::new();
    for spec in programs {
        let index = match list.iter().position(|c| c.name == spec.capability) {
            Some(i) => i,
            None => {
                list.push(Capability {
                    name: spec.capability,
                    purpose: spec.purpose,
                    alternatives: Vec::new(),
                });
                list.len() - 1
            }
        };
        let alternatives = &mut list[index].alternatives;
        match alternatives
            .iter_mut()
            .find(|a| a.hook.rank() == spec.hook.rank())
        {
            Some(a) => a.programs.push(spec),
            None => alternatives.push(Alternative {
                hook: spec.hook,
                programs: vec![spec],
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
        Hook::FEntry | Hook::FExit | Hook::KProbe | Hook::KRetProbe => None,
    }
}

/// One item of `--avoid-hooks`: a hook kind, everywhere (`fentry`) or on
/// one target only (`tp_btf:signal_generate`, to try a fallback where the
/// better hook works).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Avoid {
    /// The hook kind.
    pub hook: Hook,
    /// The tracepoint or kernel function; `None`: all of that kind.
    pub target: Option<String>,
}

impl Avoid {
    /// A hook kind avoided everywhere.
    pub fn kind(hook: Hook) -> Self {
        Self { hook, target: None }
    }

    /// Whether it rules out program `spec`.
    pub fn covers(&self, spec: &ProgramSpec) -> bool {
        self.hook == spec.hook && self.target.as_deref().is_none_or(|t| t == spec.target)
    }
}

/// What `--avoid-hooks` names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HookList(pub Vec<Avoid>);

/// Parses `--avoid-hooks` (`fentry,fexit`, `tp_btf:signal_generate`; empty
/// items, as in an empty `NGX_TRACE_AVOID_HOOKS=`, are ignored).
pub fn parse_avoid(list: &str) -> Result<HookList, String> {
    list.split(',')
        .filter(|item| !item.trim().is_empty())
        .map(parse_item)
        .collect::<Result<_, _>>()
        .map(HookList)
}

/// Parses one item of `--avoid-hooks`: `KIND` or `KIND:TARGET`.
fn parse_item(item: &str) -> Result<Avoid, String> {
    let Some((kind, target)) = item.trim().split_once(':') else {
        return parse_hook(item).map(Avoid::kind);
    };
    let hook = parse_hook(kind)?;
    let targets: Vec<&str> = PROGRAMS
        .iter()
        .filter(|s| s.hook == hook)
        .map(|s| s.target)
        .collect();
    if !targets.contains(&target) {
        return Err(format!(
            "no {} program on `{target}`; its targets: {}",
            hook.name(),
            targets.join(", ")
        ));
    }
    Ok(Avoid {
        hook,
        target: Some(target.to_string()),
    })
}

/// Parses one kind of `--avoid-hooks` (`fentry`).
pub fn parse_hook(name: &str) -> Result<Hook, String> {
    let name = name.trim();
    Hook::ALL
        .into_iter()
        .find(|h| h.name() == name)
        .ok_or_else(|| {
            let known: Vec<&str> = Hook::ALL.iter().map(|h| h.name()).collect();
            format!("unknown hook kind `{name}`; known: {}", known.join(", "))
        })
}

/// Fails, before anything is loaded, when a capability has no alternative
/// left on this kernel (every one needs a missing tracepoint or is avoided).
pub fn check_available(root: &Path, avoid: &[Avoid]) -> anyhow::Result<()> {
    let lacking: Vec<String> = capabilities()
        .iter()
        .filter(|c| {
            !c.optional()
                && c.alternatives
                    .iter()
                    .all(|a| a.avoided(avoid) || a.missing(root).is_some())
        })
        .map(|c| {
            let tried: Vec<String> = c.alternatives.iter().map(Alternative::name).collect();
            format!("{} (to {}: {})", c.name, c.purpose, tried.join(" or "))
        })
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    Err(UserError::new(
        exit::KERNEL,
        format!(
            "this kernel offers no way to see {}: ngx-trace needs Linux 5.10 or later \
             with BTF, built with CONFIG_FTRACE_SYSCALLS{}",
            lacking.join("; "),
            if avoid.is_empty() {
                ""
            } else {
                " (and --avoid-hooks rules out the rest)"
            }
        ),
    )
    .into())
}

/// What was chosen for one capability.
#[derive(Debug)]
pub struct Chosen {
    /// The capability.
    pub capability: &'static str,
    /// What it is for.
    pub purpose: &'static str,
    /// The alternative attached (`--check` names it); `None` for an
    /// optional capability this kernel lacks.
    pub alternative: Option<String>,
    /// The programs attached.
    pub programs: Vec<&'static ProgramSpec>,
    /// The better alternatives, each with why it was not used.
    pub passed_over: Vec<(String, String)>,
    /// Optional programs of the chosen alternative this kernel lacks or
    /// refused, each with the reason (what they would have seen is missed).
    pub skipped: Vec<(String, String)>,
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
            let ranks: Vec<u8> = c.alternatives.iter().map(|a| a.hook.rank()).collect();
            assert!(ranks.is_sorted(), "{}: {ranks:?}", c.name);
            // A kretprobe without its kprobe would never find the call.
            for a in &c.alternatives {
                for ret in a.programs.iter().filter(|s| s.hook == Hook::KRetProbe) {
                    assert!(
                        a.programs
                            .iter()
                            .any(|s| s.hook == Hook::KProbe && s.target == ret.target),
                        "{}: {} has no kprobe",
                        c.name,
                        ret.program
                    );
                }
            }
            let purposes: std::collections::BTreeSet<&str> = c
                .alternatives
                .iter()
                .flat_map(|a| a.programs.iter().map(|s| s.purpose))
                .collect();
            assert_eq!(purposes.len(), 1, "{}: {purposes:?}", c.name);
            // An alternative made only of optional programs would attach
            // nothing and still count as chosen.
            for a in &c.alternatives {
                assert!(
                    a.programs.iter().any(|s| !s.optional) || c.optional(),
                    "{}: {}",
                    c.name,
                    a.name()
                );
            }
        }
    }

    #[test]
    fn the_per_socket_capabilities_have_fallbacks_for_older_kernels_and_no_trampolines() {
        let caps = capabilities();
        for (name, functions, probes) in [
            (
                "request written",
                "fexit inet_sendmsg(), inet6_sendmsg(), unix_stream_sendmsg()",
                "kprobe/kretprobe inet_sendmsg(), inet6_sendmsg(), unix_stream_sendmsg()",
            ),
            (
                "response read",
                "fexit inet_recvmsg(), inet6_recvmsg(), unix_stream_recvmsg()",
                "kprobe/kretprobe inet_recvmsg(), inet6_recvmsg(), unix_stream_recvmsg()",
            ),
            (
                "response arriving",
                "fentry sock_def_readable()",
                "kprobe sock_def_readable()",
            ),
            (
                "socket errors",
                "fentry sock_def_error_report()",
                "kprobe sock_def_error_report()",
            ),
        ] {
            let c = caps.iter().find(|c| c.name == name).expect(name);
            let n = c.alternatives.len();
            assert!(n >= 3, "{name}");
            assert_eq!(c.alternatives[n - 2].name(), functions);
            assert_eq!(c.alternatives[n - 1].name(), probes);
        }
    }

    #[test]
    fn avoid_hooks_names_the_kinds_and_rejects_others() {
        assert_eq!(parse_hook(" fexit"), Ok(Hook::FExit));
        assert_eq!(
            parse_avoid("fentry,,fexit,"),
            Ok(HookList(vec![
                Avoid::kind(Hook::FEntry),
                Avoid::kind(Hook::FExit)
            ]))
        );
        assert_eq!(parse_avoid(""), Ok(HookList::default()));
        assert_eq!(parse_hook("kretprobe"), Ok(Hook::KRetProbe));
        let err = parse_hook("kprobes").unwrap_err();
        assert!(err.contains("unknown hook kind `kprobes`"), "{err}");
        assert!(
            err.contains("tp_btf, tracepoint, fentry, fexit, kprobe, kretprobe"),
            "{err}"
        );
        // Avoiding fentry passes over the fentry alternative only.
        let caps = capabilities();
        let c = caps.iter().find(|c| c.name == "response arriving").unwrap();
        let avoided: Vec<bool> = c
            .alternatives
            .iter()
            .map(|a| a.avoided(&[Avoid::kind(Hook::FEntry)]))
            .collect();
        assert_eq!(avoided, [false, true, false]);
    }

    #[test]
    fn avoid_hooks_can_name_one_target_to_try_its_fallback() {
        let HookList(list) = parse_avoid("tp_btf:signal_generate,kprobe").unwrap();
        let caps = capabilities();
        let of = |name: &str| caps.iter().find(|c| c.name == name).unwrap();
        let signals: Vec<bool> = of("signals sent")
            .alternatives
            .iter()
            .map(|a| a.avoided(&list))
            .collect();
        assert_eq!(signals, [true, false], "the classic tracepoint is left");
        // Other BTF tracepoints stay in use.
        assert!(!of("TCP state changes").alternatives[0].avoided(&list));
        let err = parse_avoid("tp_btf:no_such_thing").unwrap_err();
        assert!(
            err.contains("no tp_btf program on `no_such_thing`") && err.contains("signal_generate"),
            "{err}"
        );
        assert!(parse_avoid("tracepoint:inet_sock_set_state").is_err());
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
            .find(|s| s.program == "inet_sendmsg_exit")
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
