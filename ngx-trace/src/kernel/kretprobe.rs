//! kretprobes with room for many calls in flight. A kretprobe tracks each
//! call of its function from entry to return in one of `maxactive` slots;
//! a call that finds none free is never seen returning. Through perf's
//! kprobe PMU (how aya attaches) the kernel gives 10 slots on a 2-CPU host
//! (`max(10, 2 × CPUs)`), and every thread on the host blocked in
//! `recvmsg` (a local backend waiting for its next request) holds one:
//! the workers' own returns were missed (tried on Linux 6.1: 230 of 800
//! exchanges without their response). Created through tracefs instead, a
//! kretprobe takes `maxactive` from its definition (`r4096:...`).
use std::{
    fs::{self, OpenOptions},
    io::Write as _,
    os::fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result, bail};
use aya_obj::generated::{
    PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF, PERF_FLAG_FD_CLOEXEC, perf_event_attr,
    perf_type_id,
};

/// Calls in flight a kretprobe can follow: the kernel's maximum
/// (`KRETPROBE_MAXACTIVE_MAX`); a few hundred KiB per probe.
const MAXACTIVE: u32 = 4096;

/// Group of ngx-trace's probe events in tracefs.
const GROUP: &str = "ngx_trace";

/// An attached kretprobe: detached and its tracefs event removed on drop.
pub struct RetProbe {
    /// The kernel function.
    function: String,
    /// The perf event the program is attached to.
    perf: Option<OwnedFd>,
    /// `kprobe_events` of the tracefs it was created in.
    events_file: PathBuf,
    /// The event's name in [`GROUP`].
    event: String,
}

impl RetProbe {
    /// The kernel function it probes.
    pub fn function(&self) -> &str {
        &self.function
    }
}

impl Drop for RetProbe {
    fn drop(&mut self) {
        // The event can only go once nothing uses it.
        drop(self.perf.take());
        let _ = remove_event(&self.events_file, &self.event);
    }
}

/// Attaches `program` (a loaded kretprobe program) to the return of
/// `function`, through a tracefs probe event at `tracefs`.
pub fn attach(program: BorrowedFd<'_>, tracefs: &Path, function: &str) -> Result<RetProbe> {
    let events_file = tracefs.join("kprobe_events");
    remove_stale(&events_file);
    let event = event_name(std::process::id(), start_nonce(), function);
    let definition = format!("r{MAXACTIVE}:{GROUP}/{event} {function}\n");
    OpenOptions::new()
        .append(true)
        .open(&events_file)
        .and_then(|mut f| f.write_all(definition.as_bytes()))
        .with_context(|| {
            format!(
                "failed to create a kretprobe on {function}() in {}",
                events_file.display()
            )
        })?;
    // From here on, dropping the probe removes the event.
    let mut probe = RetProbe {
        function: function.to_string(),
        perf: None,
        events_file,
        event,
    };
    let id_file = tracefs
        .join("events")
        .join(GROUP)
        .join(&probe.event)
        .join("id");
    let id: u64 = fs::read_to_string(&id_file)
        .with_context(|| format!("failed to read {}", id_file.display()))?
        .trim()
        .parse()
        .with_context(|| format!("{} holds no event id", id_file.display()))?;
    probe.perf = Some(open_tracepoint_event(id)?);
    let perf = probe.perf.as_ref().map(|fd| fd.as_raw_fd()).unwrap_or(-1);
    // SAFETY: ioctls on a perf event fd we own, with a program fd.
    unsafe {
        if libc::ioctl(perf, PERF_EVENT_IOC_SET_BPF as _, program.as_raw_fd()) != 0 {
            bail!(
                "failed to attach the program to the kretprobe on {function}(): {}",
                std::io::Error::last_os_error()
            );
        }
        if libc::ioctl(perf, PERF_EVENT_IOC_ENABLE as _, 0) != 0 {
            bail!(
                "failed to enable the kretprobe on {function}(): {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(probe)
}

/// The perf event of tracepoint `id` (a probe event is one), all CPUs.
fn open_tracepoint_event(id: u64) -> Result<OwnedFd> {
    // SAFETY: all-zero is a valid perf_event_attr.
    let mut attr: perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = perf_type_id::PERF_TYPE_TRACEPOINT as u32;
    attr.size = size_of::<perf_event_attr>() as u32;
    attr.config = id;
    attr.__bindgen_anon_1.sample_period = 1;
    attr.__bindgen_anon_2.wakeup_events = 1;
    // SAFETY: a valid attr; pid -1 with cpu 0 is how a BPF program is
    // attached to a tracepoint for every CPU.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            &raw const attr,
            -1,
            0,
            -1,
            PERF_FLAG_FD_CLOEXEC as libc::c_ulong,
        )
    };
    if fd < 0 {
        bail!(
            "perf_event_open of probe event {id} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: a new fd the kernel just returned, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The event name of `function`'s kretprobe for tracer `pid`; `nonce`
/// tells this tracer from an earlier one with the same pid (pid 1 in a
/// container), whose leftovers are never judged stale.
fn event_name(pid: u32, nonce: u64, function: &str) -> String {
    format!("r_{pid}_{nonce}_{function}")
}

/// A number of this run: the monotonic clock at its first kretprobe (µs).
fn start_nonce() -> u64 {
    static NONCE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *NONCE.get_or_init(|| crate::kernel::clock::monotonic_ns() / 1000)
}

/// The pid in an event name of ours.
fn pid_of(event: &str) -> Option<u32> {
    event.strip_prefix("r_")?.split('_').next()?.parse().ok()
}

/// Removes `event` of [`GROUP`] from `kprobe_events`.
fn remove_event(events_file: &Path, event: &str) -> std::io::Result<()> {
    OpenOptions::new()
        .append(true)
        .open(events_file)?
        .write_all(format!("-:{GROUP}/{event}\n").as_bytes())
}

/// Removes the events a tracer that no longer runs left behind (killed
/// with SIGKILL: its drop never ran).
fn remove_stale(events_file: &Path) {
    let Ok(list) = fs::read_to_string(events_file) else {
        return;
    };
    for event in stale_events(&list) {
        let _ = remove_event(events_file, &event);
    }
}

/// Our events in `list` (a `kprobe_events` listing) whose tracer is gone.
fn stale_events(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|line| {
            let name = line.split_whitespace().next()?.split_once(':')?.1;
            let event = name.strip_prefix(GROUP)?.strip_prefix('/')?;
            let pid = pid_of(event)?;
            (!Path::new(&format!("/proc/{pid}")).exists()).then(|| event.to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_left_by_a_gone_tracer_are_found_and_ours_kept() {
        let me = std::process::id();
        let list = format!(
            "r4096:ngx_trace/r_{me}_5_inet_recvmsg inet_recvmsg\n\
             r4096:ngx_trace/r_999999999_5_unix_stream_recvmsg unix_stream_recvmsg\n\
             r16:kprobes/r_999999999_other other\n\
             p:kprobes/myprobe do_sys_open\n"
        );
        assert_eq!(
            stale_events(&list),
            ["r_999999999_5_unix_stream_recvmsg".to_string()]
        );
        assert_eq!(pid_of(&event_name(42, 7, "inet6_sendmsg")), Some(42));
        assert_eq!(event_name(42, 7, "inet6_sendmsg"), "r_42_7_inet6_sendmsg");
    }
}
