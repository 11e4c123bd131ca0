//! Loading the eBPF object, attaching its programs, and the maps user space uses.
mod batch;
mod orphans;

use std::{
    os::fd::AsFd as _,
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, IterableMap as _, MapData, MapError, PerCpuArray, RingBuf, SkStorage},
    programs::{BtfTracePoint, FEntry, FExit, KProbe, ProgramError, TracePoint},
    sys::SyscallError,
};
use ngx_trace_common::{
    Config, Exchange, GLOBAL_CONFIG, Hook, LOST_MAP_FULL, LOST_SLOTS, MAP_CONNS, MAP_EVENTS,
    MAP_LOST, MAP_NGINX_PIDS, MAP_UPSTREAM_SOCKS, NGINX_PID_TRACED, NGINX_PID_WORKER, ProgramSpec,
    SighandOffsets, SockMark, UpstreamAddr,
};

use crate::{
    exit::{self, UserError},
    kernel::hooks::{self, Alternative, Avoid, Capability, Chosen},
    kernel::kretprobe::{self, RetProbe},
    kernel::load_error::{load_error, save_verifier_log},
};

/// The eBPF object built from `ngx-trace-ebpf` by `build.rs`.
pub(crate) static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ngx-trace"));

/// `bpf_map_update_elem` flag: fail rather than replace an existing value.
const BPF_NOEXIST: u64 = 1;

/// Loaded and attached programs, with the maps user space reads.
pub struct Kernel {
    /// kretprobes attached through tracefs (declared first: dropped, so
    /// detached, before their programs).
    _retprobes: Vec<RetProbe>,
    /// Owns programs and links: dropping it detaches everything.
    ebpf: Ebpf,
    /// Drop counters.
    lost: PerCpuArray<MapData, u64>,
    /// Traced pids.
    pids: HashMap<MapData, u32, u32>,
    /// Pids left untraced at start because `pids` was full.
    pids_skipped: u64,
    /// Upstream connections in flight.
    conns: HashMap<MapData, u64, Exchange>,
    /// How `conns` is read (a mutex, not a cell: `Kernel` may move to
    /// another thread).
    conns_read: Mutex<ConnsRead>,
    /// Marks on upstream sockets.
    upstream_socks: SkStorage<MapData, SockMark>,
    /// How long loading and attaching took.
    pub attach_time: Duration,
    /// The mechanism chosen for every capability.
    pub chosen: Vec<Chosen>,
    /// The configuration the programs run with (`sk_storage` may differ
    /// from the one asked for: see [`Kernel::without_marks`]).
    pub config: Config,
    /// Why upstream sockets are not marked with socket-local storage (the
    /// `CONNS` hash is the filter, nothing opened before start is
    /// adopted); `None` when they are.
    pub without_marks: Option<&'static str>,
}

/// Why marks are off on kernels before 5.11.
const NO_STORAGE_BEFORE_5_11: &str =
    "this kernel's tracing programs cannot use socket-local storage (Linux 5.11+)";
/// Why marks are off where kprobes stand in for tracepoints.
const NO_STORAGE_IN_KPROBES: &str =
    "kprobes, in use on this kernel, cannot use socket-local storage";

impl Kernel {
    /// Loads the object with `config` and attaches, for every capability,
    /// the best program this kernel accepts (`tracefs`: where tracepoints
    /// are listed), never one of the `avoid` kinds; returns the ring buffer
    /// of records apart, to be polled.
    pub fn attach(
        config: &Config,
        tracefs: &Path,
        avoid: &[Avoid],
    ) -> Result<(Self, RingBuf<MapData>)> {
        let started = Instant::now();
        // Not needed on kernels with memcg accounting (5.11+); harmless when refused.
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: valid pointer to an rlimit.
        let _ = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
        let mut config = *config;
        let mut without_marks = (config.sk_storage == 0).then_some(NO_STORAGE_BEFORE_5_11);
        let (mut ebpf, chosen, retprobes) = loop {
            let mut ebpf = EbpfLoader::new()
                .override_global(GLOBAL_CONFIG, &config, true)
                .load(EBPF_OBJECT)
                .map_err(|e| {
                    UserError::new(
                        exit::KERNEL,
                        format!("failed to load the eBPF object: {e} (is this kernel built with CONFIG_BPF_SYSCALL and BTF?)"),
                    )
                })?;
            // The loader parsed the kernel's BTF for itself and dropped it
            // with the statement: the copy the attach needs (fentry
            // targets) is parsed after, never both alive at once (they
            // were the tracer's peak memory, 42 MB against 27 MB running).
            let btf = Btf::from_sys_fs().map_err(|e| {
                UserError::new(
                    exit::KERNEL,
                    format!(
                        "failed to read the kernel's BTF at /sys/kernel/btf/vmlinux ({e}): \
                             ngx-trace needs a kernel built with CONFIG_DEBUG_INFO_BTF"
                    ),
                )
            })?;
            let marks = config.sk_storage == 1;
            let mut chosen = Vec::new();
            let mut attacher = Attacher {
                ebpf: &mut ebpf,
                btf: &btf,
                tracefs,
                retprobes: Vec::new(),
            };
            for capability in hooks::capabilities() {
                match attacher.capability(&capability, avoid, marks)? {
                    Some(c) => chosen.push(c),
                    None => break,
                }
            }
            let retprobes = attacher.retprobes;
            if chosen.len() == hooks::capabilities().len() {
                break (ebpf, chosen, retprobes);
            }
            // A capability needs kprobes, which cannot reach socket-local
            // storage: start again (dropping `ebpf` detaches everything)
            // with the hash as the filter everywhere, so the verifier drops
            // the storage code from every program.
            config.sk_storage = 0;
            without_marks = Some(NO_STORAGE_IN_KPROBES);
        };
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
            _retprobes: retprobes,
            ebpf,
            lost,
            conns,
            conns_read: Mutex::new(ConnsRead::default()),
            upstream_socks,
            pids,
            pids_skipped: 0,
            attach_time: started.elapsed(),
            chosen,
            config,
            without_marks,
        };
        Ok((kernel, events))
    }

    /// How many programs are attached.
    pub fn attached(&self) -> usize {
        self.chosen.iter().map(|c| c.programs.len()).sum()
    }

    /// Starts tracing `pid`; a `worker` already runs its event loop.
    /// `false` when the kernel's set of traced processes is full: `pid` is
    /// left untraced and counted with the records lost to a full map (as
    /// the kernel counts a fork it cannot follow), rather than the run
    /// failing (under systemd, a crash loop while something holds
    /// thousands of processes named nginx).
    pub fn trace_pid(&mut self, pid: u32, worker: bool) -> Result<bool> {
        let mark = if worker {
            NGINX_PID_WORKER
        } else {
            NGINX_PID_TRACED
        };
        match self.pids.insert(pid, mark, 0) {
            Ok(()) => Ok(true),
            Err(e) if is_full(&e) => {
                self.pids_skipped += 1;
                Ok(false)
            }
            Err(e) => Err(e).with_context(|| format!("failed to add pid {pid} to the traced set")),
        }
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

    /// The upstream connections the kernel tracks now, by socket (see
    /// [`Kernel::conns_batch`]).
    pub fn conns(&self) -> impl Iterator<Item = (u64, Exchange)> + '_ {
        let mut conns = Vec::new();
        self.conns_batch(&mut conns);
        conns.into_iter()
    }

    /// The upstream connections the kernel tracks now, by socket, into
    /// `out` (cleared first): in batches of 256 (`BPF_MAP_LOOKUP_BATCH`),
    /// into buffers kept from one read to the next. Where the kernel
    /// cannot (said once), entry by entry from then on; entries that
    /// change while being read that way are skipped (the next read sees
    /// them). Entries of a process gone for 10 s are dropped from the map
    /// and left out (see `kernel/orphans.rs`).
    pub fn conns_batch(&self, out: &mut Vec<(u64, Exchange)>) {
        let mut guard = self
            .conns_read
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let read = &mut *guard;
        let fd = self.conns.map().fd().as_fd();
        let mut done = false;
        if !read.one_by_one {
            let batches = read.batches.get_or_insert_with(|| {
                batch::Batches::new(0, Exchange::new(0, 0, 0, UpstreamAddr::ZERO))
            });
            match batches.read(out, |call| batch::lookup_batch(fd, call)) {
                Ok(()) => done = true,
                Err(e) => {
                    read.one_by_one = true;
                    read.batches = None;
                    crate::notice::notice(&format!(
                        "reading the in-flight connections (CONNS) in batches failed ({e}): \
                         reading them entry by entry from now on, two syscalls each"
                    ));
                }
            }
        }
        if !done {
            out.clear();
            out.extend(self.conns.iter().filter_map(Result::ok));
        }
        read.tgids.clear();
        read.tgids.extend(out.iter().map(|(_, ex)| ex.tgid));
        read.tgids.sort_unstable();
        read.tgids.dedup();
        let gone = read
            .orphans
            .sweep(&read.tgids, Instant::now(), orphans::alive);
        if !gone.is_empty() {
            out.retain(|(sk, ex)| {
                if !gone.contains(&ex.tgid) {
                    return true;
                }
                // Already gone is no error.
                let _ = batch::delete(fd, sk);
                false
            });
        }
    }

    /// Forgets the connections `sks` (those of a worker that died: no
    /// hook sees its UNIX sockets closed). One already gone is no error.
    pub fn forget(&mut self, sks: &[u64]) {
        for sk in sks {
            let _ = self.conns.remove(sk);
        }
    }

    /// Times so far the kernel skipped one of the attached programs instead
    /// of running it: its per-CPU guard against BPF recursion was held, by
    /// another BPF program or by a map read from user space preempted on
    /// that CPU (kprobes and classic tracepoints share one guard per CPU).
    /// Each may be a missed event. Counted by recent kernels (from 6.7 for
    /// kprobes and classic tracepoints); 0 where the kernel does not.
    pub fn hooks_skipped(&self) -> u64 {
        self.chosen
            .iter()
            .flat_map(|c| &c.programs)
            .filter_map(|spec| self.ebpf.program(spec.program)?.fd().ok())
            .map(|fd| recursion_misses(fd.as_fd()).unwrap_or(0))
            .sum()
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
        totals[LOST_MAP_FULL as usize] += self.pids_skipped;
        Ok(totals)
    }
}

/// How [`Kernel::conns_batch`] reads the in-flight map.
#[derive(Default)]
struct ConnsRead {
    /// Buffers of the batch reads (made at the first).
    batches: Option<batch::Batches<u64, Exchange>>,
    /// The kernel refused a batch read: entry by entry from then on.
    one_by_one: bool,
    /// The processes owning entries at the last read (kept for its room).
    tgids: Vec<u32>,
    /// Entries left behind by processes gone.
    orphans: orphans::Orphans,
}

/// Entries of `struct sighand_struct.action`: `_NSIG`, 64 on every
/// architecture ngx-trace builds for (x86_64, arm64).
const NSIG: u32 = 64;

/// Where the running kernel keeps a task's signal handlers, from its BTF
/// (`btf`): the kernel side leaves out the signals a process sends itself
/// and handles. [`SighandOffsets::NONE`] when the BTF does not tell (a
/// layout not understood): then none is left out, nothing fails.
pub fn sighand_offsets(btf: &ngx_trace_common::btf::Btf) -> SighandOffsets {
    let member = |strukt: &str, name: &str| btf.member(strukt, name).ok();
    let offsets = || {
        let sighand = member("task_struct", "sighand")?;
        let action = member("sighand_struct", "action")?;
        let sa = member("k_sigaction", "sa")?;
        let handler = member("sigaction", "sa_handler")?;
        let action_size = action.size / NSIG;
        let handler_at = sa.offset + handler.offset;
        let fits = sighand.size == 8
            && handler.size == 8
            && action.size % NSIG == 0
            && handler_at + handler.size <= action_size;
        fits.then_some(SighandOffsets {
            task_sighand: sighand.offset,
            action: action.offset,
            action_size,
            handler: handler_at,
        })
    };
    offsets().unwrap_or(SighandOffsets::NONE)
}

/// Whether a failed insert into a BPF hash map means it is full
/// (`E2BIG`), or the kernel lacks the memory for one more entry
/// (`ENOMEM`, `ENOSPC`): an entry left out, not a broken map.
fn is_full(e: &MapError) -> bool {
    match e {
        MapError::SyscallError(SyscallError { io_error, .. }) => matches!(
            io_error.raw_os_error(),
            Some(libc::E2BIG | libc::ENOMEM | libc::ENOSPC)
        ),
        _ => false,
    }
}

/// `recursion_misses` of the program `fd` (`BPF_OBJ_GET_INFO_BY_FD`).
fn recursion_misses(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<u64> {
    use std::os::fd::AsRawFd as _;
    /// The `info` member of `union bpf_attr`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: all-zero is a valid bpf_prog_info.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: size_of_val(&info) as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: a valid attr of its size; the kernel writes at most
    // `info_len` bytes into `info` (fewer on older kernels: the rest stays 0).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            size_of::<InfoAttr>() as libc::c_long,
        )
    };
    if ret != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info.recursion_misses)
}

/// An optional program not attached: its target, and why.
type Skipped = (String, String);

/// Attaches programs of the object, keeping what must live as long as they.
struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    btf: &'a Btf,
    tracefs: &'a Path,
    /// kretprobes attached so far.
    retprobes: Vec<RetProbe>,
}

impl Attacher<'_> {
    /// Attaches the first alternative of `capability` this kernel accepts,
    /// skipping the `avoid` kinds; the better ones it refused are kept with the
    /// reason. When none is left, the last one's error says why, with the
    /// others' reasons. `None` when the next one to try is a kprobe while the
    /// programs use socket-local storage (`marks`): kprobe programs cannot, the
    /// object must be loaded again without it.
    fn capability(
        &mut self,
        capability: &Capability,
        avoid: &[Avoid],
        marks: bool,
    ) -> Result<Option<Chosen>> {
        let mut passed_over: Vec<(String, String)> = Vec::new();
        let last = capability.alternatives.len() - 1;
        for (i, alternative) in capability.alternatives.iter().enumerate() {
            if alternative.avoided(avoid) {
                passed_over.push((alternative.name(), "avoided (--avoid-hooks)".into()));
                continue;
            }
            if let Some(why) = alternative.missing(self.tracefs) {
                passed_over.push((alternative.name(), why));
                continue;
            }
            if marks && alternative.hook.rank() == Hook::KProbe.rank() {
                return Ok(None);
            }
            match self.alternative(alternative) {
                Ok((programs, skipped)) => {
                    return Ok(Some(Chosen {
                        capability: capability.name,
                        purpose: capability.purpose,
                        alternative: (!programs.is_empty()).then(|| hooks::describe(&programs)),
                        programs,
                        passed_over,
                        skipped,
                    }));
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
        Ok(Some(Chosen {
            capability: capability.name,
            purpose: capability.purpose,
            alternative: None,
            programs: Vec::new(),
            passed_over,
            skipped: Vec::new(),
        }))
    }

    /// Attaches every program of `alternative`; an optional one this kernel
    /// lacks or refuses is skipped, with the reason. On a failure of another,
    /// unloads those it attached.
    fn alternative(
        &mut self,
        alternative: &Alternative,
    ) -> Result<(Vec<&'static ProgramSpec>, Vec<Skipped>)> {
        let mut attached = Vec::new();
        let mut skipped = Vec::new();
        for &spec in &alternative.programs {
            if spec.optional
                && let Some(why) = hooks::missing(self.tracefs, spec)
            {
                skipped.push((hooks::target_name(spec), why));
                continue;
            }
            match self.one(spec) {
                Ok(()) => attached.push(spec),
                // A kernel function this kernel lacks (IPv6 as a module).
                Err(e) if spec.optional => {
                    skipped.push((hooks::target_name(spec), format!("{e:#}")))
                }
                Err(e) => {
                    for done in &attached {
                        self.unload(done);
                    }
                    return Err(e);
                }
            }
        }
        // A function's kprobe without its kretprobe (or the reverse) would
        // keep calls nobody takes: both go, or neither.
        let (lone, kept): (Vec<_>, Vec<_>) = attached.into_iter().partition(|spec| {
            spec.hook.rank() == Hook::KProbe.rank()
                && skipped.iter().any(|(t, _)| *t == hooks::target_name(spec))
        });
        for spec in lone {
            self.unload(spec);
        }
        Ok((kept, skipped))
    }

    /// Detaches and unloads one program (best effort: it goes with the object
    /// at exit anyway).
    fn unload(&mut self, spec: &ProgramSpec) {
        if spec.hook == Hook::KRetProbe {
            self.retprobes.retain(|r| r.function() != spec.target);
        }
        let Some(program) = self.ebpf.program_mut(spec.program) else {
            return;
        };
        let _ = match spec.hook {
            Hook::BtfTracepoint => <&mut BtfTracePoint>::try_from(program).map(|p| p.unload()),
            Hook::Tracepoint => <&mut TracePoint>::try_from(program).map(|p| p.unload()),
            Hook::FEntry => <&mut FEntry>::try_from(program).map(|p| p.unload()),
            Hook::FExit => <&mut FExit>::try_from(program).map(|p| p.unload()),
            Hook::KProbe | Hook::KRetProbe => <&mut KProbe>::try_from(program).map(|p| p.unload()),
        };
    }

    /// Loads and attaches one program.
    fn one(&mut self, spec: &ProgramSpec) -> Result<()> {
        let btf = self.btf;
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
        let program = self
            .ebpf
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
            Hook::KProbe => {
                let program: &mut KProbe = program.try_into().with_context(wrong_kind)?;
                program.load().map_err(|e| refused(&e))?;
                program
                    .attach(spec.target, 0)
                    .map_err(|e| not_attached(&e))?;
            }
            // Through tracefs, for its room for calls in flight (see kretprobe.rs).
            Hook::KRetProbe => {
                let program: &mut KProbe = program.try_into().with_context(wrong_kind)?;
                program.load().map_err(|e| refused(&e))?;
                let fd = program.fd().map_err(|e| refused(&e))?;
                let probe = kretprobe::attach(fd.as_fd(), self.tracefs, spec.target)
                    .map_err(|e| not_attached(&format!("{e:#}")))?;
                self.retprobes.push(probe);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update_failed(errno: i32) -> MapError {
        MapError::SyscallError(SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(errno),
        })
    }

    #[test]
    fn signal_handlers_are_found_in_this_kernels_btf() {
        let btf = ngx_trace_common::btf::Btf::from_sys_fs().expect("kernel BTF");
        let at = sighand_offsets(&btf);
        assert!(at.known(), "{at:?}");
        // `struct k_sigaction` starts with `struct sigaction`, which
        // starts with its handler (x86_64, arm64), and holds at least the
        // handler, flags and mask.
        assert_eq!(at.handler, 0, "{at:?}");
        assert!((24..=64).contains(&at.action_size), "{at:?}");
        // `action` follows the lock, the count and a wait queue head.
        assert!(at.action >= 24, "{at:?}");
    }

    #[test]
    fn a_full_pid_map_skips_the_pid_and_anything_else_fails() {
        for errno in [libc::E2BIG, libc::ENOMEM, libc::ENOSPC] {
            assert!(is_full(&update_failed(errno)), "errno {errno}");
        }
        for errno in [libc::EPERM, libc::EINVAL, libc::EBADF, libc::EEXIST] {
            assert!(!is_full(&update_failed(errno)), "errno {errno}");
        }
        assert!(!is_full(&MapError::KeyNotFound));
    }
}
