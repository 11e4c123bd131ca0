//! Loading the eBPF object, attaching its programs, and the maps user space uses.
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf, SkStorage},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use ngx_trace_common::{
    Config, Exchange, GLOBAL_CONFIG, LOST_SLOTS, MAP_CONNS, MAP_EVENTS, MAP_LOST, MAP_NGINX_PIDS,
    MAP_UPSTREAM_SOCKS, NGINX_PID_TRACED, NGINX_PID_WORKER, ProgramSpec, SockMark,
};

use crate::{
    exit::{self, UserError},
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
    /// `category:name` of every attached tracepoint.
    pub attached: Vec<String>,
}

impl Kernel {
    /// Loads the object with `config` and attaches `programs`; returns the ring buffer of records apart, to be polled.
    pub fn attach(config: &Config, programs: &[&ProgramSpec]) -> Result<(Self, RingBuf<MapData>)> {
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
        let mut attached = Vec::new();
        for spec in programs {
            let refused = |e: &ProgramError| load_error(spec.program, e, save_verifier_log);
            let not_attached = |e: &dyn std::fmt::Display| {
                UserError::new(
                    exit::KERNEL,
                    format!(
                        "failed to attach to tracepoint {}:{} (to {}): {e}",
                        spec.category, spec.tracepoint, spec.purpose
                    ),
                )
            };
            let program = ebpf
                .program_mut(spec.program)
                .with_context(|| format!("the eBPF object has no program {}", spec.program))?;
            if spec.btf {
                let program: &mut BtfTracePoint = program
                    .try_into()
                    .with_context(|| format!("program {} is not a BTF tracepoint", spec.program))?;
                program
                    .load(spec.tracepoint, &btf)
                    .map_err(|e| refused(&e))?;
                program.attach().map_err(|e| not_attached(&e))?;
            } else {
                let program: &mut TracePoint = program
                    .try_into()
                    .with_context(|| format!("program {} is not a tracepoint", spec.program))?;
                program.load().map_err(|e| refused(&e))?;
                program
                    .attach(spec.category, spec.tracepoint)
                    .map_err(|e| not_attached(&e))?;
            }
            attached.push(format!("{}:{}", spec.category, spec.tracepoint));
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
            attached,
        };
        Ok((kernel, events))
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
