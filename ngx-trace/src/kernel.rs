//! Loading the eBPF object, attaching its programs, and the maps user space uses.
use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf, SkStorage},
    programs::{BtfTracePoint, FEntry, FExit, ProgramError, TracePoint},
};
use ngx_trace_common::{
    Config, Exchange, GLOBAL_CONFIG, Hook, LOST_SLOTS, MAP_CONNS, MAP_EVENTS, MAP_LOST,
    MAP_NGINX_PIDS, MAP_UPSTREAM_SOCKS, NGINX_PID_TRACED, NGINX_PID_WORKER, ProgramSpec, SockMark,
};

use crate::{
    exit::{self, UserError},
    hooks::{self, Alternative, Capability, Chosen},
    load_error::{load_error, save_verifier_log},
};

/// The eBPF object built from `ngx-trace-ebpf` by `build.rs`.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ngx-trace"));

/// `bpf_map_update_elem` flag: fail rather than replace an existing value.
const BPF_NOEXIST: u64 = 1;

/// Loaded and attached programs, with the maps user space reads.
pub struct Kernel {
    /// Owns programs and links: dropping it detaches everything.
    _ebpf: Ebpf,
    /// Drop counters.
    lost: PerCpuArray<MapData, u64>,
    /// Traced pids.
    pids: HashMap<MapData, u32, u32>,
    /// Upstream connections in flight.
    conns: HashMap<MapData, u64, Exchange>,
    /// Marks on upstream sockets.
    upstream_socks: SkStorage<MapData, SockMark>,
    /// How long loading and attaching took.
    pub attach_time: Duration,
    /// The mechanism chosen for every capability.
    pub chosen: Vec<Chosen>,
}

impl Kernel {
    /// Loads the object with `config` and attaches, for every capability,
    /// the best program this kernel accepts (`tracefs`: where tracepoints
    /// are listed); returns the ring buffer of records apart, to be polled.
    pub fn attach(config: &Config, tracefs: &Path) -> Result<(Self, RingBuf<MapData>)> {
        let started = Instant::now();
        // Not needed on kernels with memcg accounting (5.11+); harmless when refused.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: valid pointer to an rlimit.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };

        let mut ebpf = EbpfLoader::new()
            .override_global(GLOBAL_CONFIG, config, true)
            .load(EBPF_OBJECT)
            .map_err(|e| {
                UserError::new(
                    exit::KERNEL,
                    format!("failed to load the eBPF object: {e} (is this kernel built with CONFIG_BPF_SYSCALL and BTF?)"),
                )
            })?;
        let btf = Btf::from_sys_fs().map_err(|e| {
            UserError::new(
                exit::KERNEL,
                format!(
                    "failed to read the kernel's BTF at /sys/kernel/btf/vmlinux ({e}): \
                     ngx-trace needs a kernel built with CONFIG_DEBUG_INFO_BTF"
                ),
            )
        })?;
        let mut chosen = Vec::new();
        for capability in hooks::capabilities() {
            chosen.push(attach_capability(&mut ebpf, &btf, tracefs, &capability)?);
        }
        let events = RingBuf::try_from(ebpf.take_map(MAP_EVENTS).context("no EVENTS map")?)
            .context("EVENTS is not a ring buffer")?;
        let lost = PerCpuArray::try_from(ebpf.take_map(MAP_LOST).context("no LOST map")?)
            .context("LOST is not a per-CPU array")?;
        let pids = HashMap::try_from(ebpf.take_map(MAP_NGINX_PIDS).context("no pid map")?)
            .context("NGINX_PIDS is not a hash map")?;
        let conns = HashMap::try_from(ebpf.take_map(MAP_CONNS).context("no CONNS map")?)
            .context("CONNS is not a hash map")?;
        let upstream_socks = SkStorage::try_from(
            ebpf.take_map(MAP_UPSTREAM_SOCKS)
                .context("no UPSTREAM_SOCKS map")?,
        )
        .context("UPSTREAM_SOCKS is not socket storage")?;
        let kernel = Self {
            _ebpf: ebpf,
            lost,
            conns,
            upstream_socks,
            pids,
            attach_time: started.elapsed(),
            chosen,
        };
        Ok((kernel, events))
    }

    /// How many programs are attached.
    pub fn attached(&self) -> usize {
        self.chosen.iter().map(|c| c.programs.len()).sum()
    }

    /// Starts tracing `pid`; a `worker` already runs its event loop.
    pub fn trace_pid(&mut self, pid: u32, worker: bool) -> Result<()> {
        let mark = if worker {
            NGINX_PID_WORKER
        } else {
            NGINX_PID_TRACED
        };
        self.pids
            .insert(pid, mark, 0)
            .with_context(|| format!("failed to add pid {pid} to the traced set"))
    }

    /// Marks `sock` (this process's copy of a worker's socket fd) for the
    /// kernel: an upstream connection to follow from its next event.
    pub fn mark_upstream(
        &mut self,
        sock: &impl std::os::fd::AsRawFd,
        mark: SockMark,
    ) -> Result<()> {
        // BPF_NOEXIST: a connection the kernel began to follow since the
        // programs were attached keeps its mark.
        self.upstream_socks
            .insert(sock, mark, BPF_NOEXIST)
            .context("failed to mark the socket in UPSTREAM_SOCKS")
    }

    /// The upstream connections the kernel tracks now, by socket. Entries
    /// that change while being read are skipped (the next read sees them).
    pub fn conns(&self) -> impl Iterator<Item = (u64, Exchange)> + '_ {
        self.conns.iter().filter_map(Result::ok)
    }

    /// Records dropped so far, summed over CPUs, per `LOST_*` slot.
    pub fn lost(&self) -> Result<[u64; LOST_SLOTS as usize]> {
        let mut totals = [0u64; LOST_SLOTS as usize];
        for (slot, total) in totals.iter_mut().enumerate() {
            let values = self
                .lost
                .get(&(slot as u32), 0)
                .context("failed to read the lost-event counters")?;
            *total = values.iter().sum();
        }
        Ok(totals)
    }
}

/// Attaches the first alternative of `capability` this kernel accepts;
/// the better ones it refused are kept with the reason. When none is left,
/// the last one's error says why, with the others' reasons.
fn attach_capability(
    ebpf: &mut Ebpf,
    btf: &Btf,
    tracefs: &Path,
    capability: &Capability,
) -> Result<Chosen> {
    let mut passed_over: Vec<(String, String)> = Vec::new();
    let last = capability.alternatives.len() - 1;
    for (i, alternative) in capability.alternatives.iter().enumerate() {
        if let Some(why) = alternative.missing(tracefs) {
            passed_over.push((alternative.name(), why));
            continue;
        }
        match attach_alternative(ebpf, btf, tracefs, alternative) {
            Ok((programs, skipped)) => {
                let targets: Vec<String> = programs.iter().map(|s| hooks::target_name(s)).collect();
                return Ok(Chosen {
                    capability: capability.name,
                    purpose: capability.purpose,
                    alternative: (!programs.is_empty())
                        .then(|| format!("{} {}", alternative.hook.name(), targets.join(", "))),
                    programs,
                    passed_over,
                    skipped,
                });
            }
            Err(e) if i < last => passed_over.push((alternative.name(), format!("{e:#}"))),
            Err(e) if passed_over.is_empty() => return Err(e),
            Err(e) => {
                let others: Vec<String> = passed_over
                    .iter()
                    .map(|(name, why)| format!("{name}: {why}"))
                    .collect();
                return Err(e.context(format!(
                    "no way to see {} on this kernel (better ones: {})",
                    capability.name,
                    others.join("; ")
                )));
            }
        }
    }
    if !capability.optional() {
        let why: Vec<String> = passed_over
            .iter()
            .map(|(name, why)| format!("{name}: {why}"))
            .collect();
        return Err(UserError::new(
            exit::KERNEL,
            format!(
                "this kernel offers no way to see {} (to {}): {}",
                capability.name,
                capability.purpose,
                why.join("; ")
            ),
        )
        .into());
    }
    // An optional capability this kernel lacks: the kernel side runs
    // without it.
    Ok(Chosen {
        capability: capability.name,
        purpose: capability.purpose,
        alternative: None,
        programs: Vec::new(),
        passed_over,
        skipped: Vec::new(),
    })
}

/// An optional program not attached: its target, and why.
type Skipped = (String, String);

/// Attaches every program of `alternative`; an optional one this kernel
/// lacks or refuses is skipped, with the reason. On a failure of another,
/// unloads those it attached.
fn attach_alternative(
    ebpf: &mut Ebpf,
    btf: &Btf,
    tracefs: &Path,
    alternative: &Alternative,
) -> Result<(Vec<&'static ProgramSpec>, Vec<Skipped>)> {
    let mut attached = Vec::new();
    let mut skipped = Vec::new();
    for &spec in &alternative.programs {
        if spec.optional
            && let Some(why) = hooks::missing(tracefs, spec)
        {
            skipped.push((hooks::target_name(spec), why));
            continue;
        }
        match attach_one(ebpf, btf, spec) {
            Ok(()) => attached.push(spec),
            // A kernel function this kernel lacks (IPv6 as a module).
            Err(e) if spec.optional => skipped.push((hooks::target_name(spec), format!("{e:#}"))),
            Err(e) => {
                for done in &attached {
                    unload(ebpf, done);
                }
                return Err(e);
            }
        }
    }
    Ok((attached, skipped))
}

/// Detaches and unloads one program (best effort: it goes with the object
/// at exit anyway).
fn unload(ebpf: &mut Ebpf, spec: &ProgramSpec) {
    let Some(program) = ebpf.program_mut(spec.program) else {
        return;
    };
    let _ = match spec.hook {
        Hook::BtfTracepoint => <&mut BtfTracePoint>::try_from(program).map(|p| p.unload()),
        Hook::Tracepoint => <&mut TracePoint>::try_from(program).map(|p| p.unload()),
        Hook::FEntry => <&mut FEntry>::try_from(program).map(|p| p.unload()),
        Hook::FExit => <&mut FExit>::try_from(program).map(|p| p.unload()),
    };
}

/// Loads and attaches one program.
fn attach_one(ebpf: &mut Ebpf, btf: &Btf, spec: &ProgramSpec) -> Result<()> {
    let refused = |e: &ProgramError| load_error(spec.program, e, save_verifier_log);
    let not_attached = |e: &dyn std::fmt::Display| {
        UserError::new(
            exit::KERNEL,
            format!(
                "failed to attach to {} {} (to {}): {e}",
                spec.hook.name(),
                hooks::target_name(spec),
                spec.purpose
            ),
        )
    };
    let program = ebpf
        .program_mut(spec.program)
        .with_context(|| format!("the eBPF object has no program {}", spec.program))?;
    let wrong_kind = || format!("program {} is not a {}", spec.program, spec.hook.name());
    match spec.hook {
        Hook::BtfTracepoint => {
            let program: &mut BtfTracePoint = program.try_into().with_context(wrong_kind)?;
            program.load(spec.target, btf).map_err(|e| refused(&e))?;
            program.attach().map_err(|e| not_attached(&e))?;
        }
        Hook::Tracepoint => {
            let program: &mut TracePoint = program.try_into().with_context(wrong_kind)?;
            program.load().map_err(|e| refused(&e))?;
            program
                .attach(spec.category, spec.target)
                .map_err(|e| not_attached(&e))?;
        }
        Hook::FEntry => {
            let program: &mut FEntry = program.try_into().with_context(wrong_kind)?;
            program.load(spec.target, btf).map_err(|e| refused(&e))?;
            program.attach().map_err(|e| not_attached(&e))?;
        }
        Hook::FExit => {
            let program: &mut FExit = program.try_into().with_context(wrong_kind)?;
            program.load(spec.target, btf).map_err(|e| refused(&e))?;
            program.attach().map_err(|e| not_attached(&e))?;
        }
    }
    Ok(())
}
