//! What befell processes: the kernel's fate records (signals that kill,
//! OOM kills, exits) kept for a while, and the fate of one process over a
//! span of time, told as `oom_killed`, `killed`, `crashed`, `exited` or
//! `signalled` (still alive), with the sentence a person reads.
use std::collections::{HashMap, VecDeque};

use serde::Serialize;

use crate::human::human_us;

pub use crate::kernel::records::{Entry, Fact};

/// How long facts are kept: longer than any exchange nginx lets wait with
/// its default timeouts (60 s), with room for raised ones.
const KEEP_NS: u64 = 15 * 60 * 1_000_000_000;
/// Most facts kept (a storm of crashing processes cannot grow memory).
const KEEP_MAX: usize = 16_384;

/// How far out of time order facts may arrive (records of different CPUs
/// share the ring buffer): [`FateLog::pids_between`] looks this much
/// beyond its span in the time-ordered list, then filters exactly.
const DISORDER_NS: u64 = 1_000_000_000;

/// Recent facts, indexed by process: a lookup costs the facts of one
/// process, not the whole log (a reset looks up every candidate).
#[derive(Debug, Default)]
pub struct FateLog {
    /// (time, pid) of every fact, oldest first: for expiry and spans.
    order: VecDeque<(u64, u32)>,
    /// The facts of each process, oldest first.
    by_pid: HashMap<u32, VecDeque<Entry>>,
}

impl FateLog {
    /// Adds a fact (facts come in time order).
    pub fn add(&mut self, entry: Entry) {
        while self.order.len() >= KEEP_MAX
            || self
                .order
                .front()
                .is_some_and(|(t, _)| t + KEEP_NS < entry.time_ns)
        {
            self.pop_oldest();
        }
        self.order.push_back((entry.time_ns, entry.pid));
        self.by_pid.entry(entry.pid).or_default().push_back(entry);
    }

    fn pop_oldest(&mut self) {
        let Some((_, pid)) = self.order.pop_front() else {
            return;
        };
        if let Some(facts) = self.by_pid.get_mut(&pid) {
            facts.pop_front();
            if facts.is_empty() {
                self.by_pid.remove(&pid);
            }
        }
    }

    /// The processes with facts from `from_ns` to `to_ns`, each once.
    pub fn pids_between(&self, from_ns: u64, to_ns: u64) -> Vec<u32> {
        let first = self
            .order
            .partition_point(|(t, _)| t.saturating_add(DISORDER_NS) < from_ns);
        let mut pids: Vec<u32> = self
            .order
            .range(first..)
            .take_while(|(t, _)| t.saturating_sub(DISORDER_NS) <= to_ns)
            .filter(|(t, _)| (from_ns..=to_ns).contains(t))
            .map(|(_, pid)| *pid)
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// The fate of `pid` from `from_ns` to `to_ns`, if anything befell it.
    pub fn fate(&self, pid: u32, from_ns: u64, to_ns: u64) -> Option<Fate> {
        let facts: Vec<&Entry> = self
            .by_pid
            .get(&pid)?
            .iter()
            .filter(|e| (from_ns..=to_ns).contains(&e.time_ns))
            .collect();
        Fate::from_facts(pid, &facts)
    }

    /// The parent and name the facts give for `pid`.
    pub fn identity(&self, pid: u32) -> (u32, String) {
        let mut parent = 0;
        let mut comm = String::new();
        for e in self.by_pid.get(&pid).into_iter().flatten() {
            if e.parent != 0 {
                parent = e.parent;
            }
            if !e.comm.is_empty() {
                comm.clone_from(&e.comm);
            }
        }
        (parent, comm)
    }
}

/// How a process ended (or that it was only signalled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FateKind {
    /// The OOM killer killed it.
    OomKilled,
    /// Another process (or the kernel) killed it with a signal, or told it
    /// to end and it did.
    Killed,
    /// It died of a fault (SIGSEGV, SIGBUS...) or aborted itself.
    Crashed,
    /// It exited on its own.
    Exited,
    /// It was sent a signal that ends a process, and has not ended (yet).
    Signalled,
}

impl FateKind {
    /// The JSON spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            FateKind::OomKilled => "oom_killed",
            FateKind::Killed => "killed",
            FateKind::Crashed => "crashed",
            FateKind::Exited => "exited",
            FateKind::Signalled => "signalled",
        }
    }

    /// Whether the process is dead.
    pub fn is_death(self) -> bool {
        self != FateKind::Signalled
    }
}

/// What befell one process over a span of time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fate {
    /// The process.
    pub pid: u32,
    /// What.
    pub kind: FateKind,
    /// The signal that killed it (or was sent to it).
    pub signal: Option<u32>,
    /// Who sent that signal (not for a fault or an OOM kill).
    pub sender: Option<(u32, String)>,
    /// Whether it dumped core.
    pub core_dumped: bool,
    /// Its exit status, when it exited on its own.
    pub exit_status: Option<u32>,
    /// The memory cgroup limit an OOM kill hit, bytes.
    pub memory_limit: Option<u64>,
    /// When it happened: the OOM kill, the signal, or the exit.
    pub time_ns: u64,
    /// When it exited, if it did within the span looked at.
    pub exit_ns: Option<u64>,
}

/// Signals whose default action dumps core: a process dying of one that
/// the kernel (a fault) or the process itself (`abort()`) raised crashed.
fn dumps_core(signal: u32) -> bool {
    matches!(signal, 3 | 4 | 5 | 6 | 7 | 8 | 11 | 24 | 25 | 31)
}

impl Fate {
    /// The fate `facts` (of `pid`, in time order) tell, if any.
    pub fn from_facts(pid: u32, facts: &[&Entry]) -> Option<Fate> {
        let oom = facts.iter().find_map(|e| match e.fact {
            Fact::OomKilled { memory_limit } => Some((e.time_ns, memory_limit)),
            _ => None,
        });
        let exit = facts.iter().find_map(|e| match e.fact {
            Fact::Exited { exit_code } => Some((e.time_ns, exit_code)),
            _ => None,
        });
        let signals: Vec<(u64, u32, i32, u32, &str)> = facts
            .iter()
            .filter_map(|e| match &e.fact {
                Fact::Signal {
                    signal,
                    code,
                    sender,
                    sender_comm,
                } => Some((e.time_ns, *signal, *code, *sender, sender_comm.as_str())),
                _ => None,
            })
            .collect();
        let core_dumped = exit.is_some_and(|(_, code)| code & 0x80 != 0);
        let by_another = |s: &&(u64, u32, i32, u32, &str)| s.2 <= 0 && s.3 != pid;
        let mut fate = Fate {
            pid,
            kind: FateKind::Exited,
            signal: None,
            sender: None,
            core_dumped,
            exit_status: None,
            memory_limit: None,
            time_ns: 0,
            exit_ns: exit.map(|(t, _)| t),
        };
        if let Some((time_ns, memory_limit)) = oom {
            fate.kind = FateKind::OomKilled;
            fate.signal = Some(9);
            fate.memory_limit = memory_limit;
            fate.time_ns = time_ns;
            return Some(fate);
        }
        match exit {
            Some((time_ns, code)) if code & 0x7f != 0 => {
                let signal = code & 0x7f;
                fate.signal = Some(signal);
                fate.time_ns = time_ns;
                // A handler that cleans up re-raises the signal on itself
                // (PHP-FPM's children do): the sender is the other one.
                let sent = signals
                    .iter()
                    .rev()
                    .find(|s| s.1 == signal && by_another(s))
                    .or_else(|| signals.iter().rev().find(|s| s.1 == signal));
                match sent {
                    Some(s) if by_another(&s) => {
                        fate.kind = FateKind::Killed;
                        fate.sender = Some((s.3, s.4.to_string()));
                        fate.time_ns = s.0;
                    }
                    Some(s) => {
                        fate.kind = if dumps_core(signal) {
                            FateKind::Crashed
                        } else {
                            FateKind::Killed
                        };
                        fate.time_ns = s.0;
                    }
                    None if dumps_core(signal) => fate.kind = FateKind::Crashed,
                    None => fate.kind = FateKind::Killed,
                }
            }
            Some((time_ns, code)) => {
                // Told to end by another process, and it did (gunicorn's
                // workers exit on SIGABRT from their arbiter).
                if let Some(s) = signals.iter().rev().find(by_another) {
                    fate.kind = FateKind::Killed;
                    fate.signal = Some(s.1);
                    fate.sender = Some((s.3, s.4.to_string()));
                    fate.time_ns = s.0;
                } else {
                    fate.time_ns = time_ns;
                }
                fate.exit_status = Some((code >> 8) & 0xff);
            }
            None => {
                let s = signals.last()?;
                fate.kind = FateKind::Signalled;
                fate.signal = Some(s.1);
                if by_another(&s) {
                    fate.sender = Some((s.3, s.4.to_string()));
                }
                fate.time_ns = s.0;
            }
        }
        Some(fate)
    }
}

/// `SIGKILL`, `SIGTERM`: the name of a signal.
pub fn signal_name(signal: u32) -> String {
    let name = match signal {
        1 => "HUP",
        2 => "INT",
        3 => "QUIT",
        4 => "ILL",
        5 => "TRAP",
        6 => "ABRT",
        7 => "BUS",
        8 => "FPE",
        9 => "KILL",
        11 => "SEGV",
        13 => "PIPE",
        15 => "TERM",
        24 => "XCPU",
        25 => "XFSZ",
        31 => "SYS",
        n => return format!("signal {n}"),
    };
    format!("SIG{name}")
}

/// `64 MiB`, `1.5 GiB`: a memory size as people write limits.
pub fn human_bytes(bytes: u64) -> String {
    const MIB: u64 = 1 << 20;
    if bytes >= 1 << 30 && !bytes.is_multiple_of(1 << 30) {
        format!("{:.1} GiB", bytes as f64 / (1u64 << 30) as f64)
    } else if bytes >= 1 << 30 {
        format!("{} GiB", bytes >> 30)
    } else if bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    }
}

/// The setting that likely sent a supervisor's signal to its worker, by the
/// supervisor's name: the backend's own request timeout.
fn supervisor_timeout(sender_comm: &str) -> &'static str {
    if sender_comm.starts_with("php-fpm") {
        "request_terminate_timeout?"
    } else if sender_comm.starts_with("gunicorn") {
        "gunicorn --timeout?"
    } else if sender_comm.starts_with("uwsgi") {
        "uWSGI harakiri?"
    } else {
        "its supervisor's timeout?"
    }
}

/// How a process ended, or what was sent to it, as the events show it:
/// part of the `peer` object of an upstream event and of a `worker_exit`
/// event.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct FateFacts {
    /// `oom_killed`, `killed`, `crashed`, `exited` or `signalled`.
    pub fate: &'static str,
    /// The signal that killed it (or was sent to it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<u32>,
    /// Who sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_pid: Option<u32>,
    /// The sender's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sender_comm: Option<String>,
    /// Whether it dumped core (known once it exited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub core_dumped: Option<bool>,
    /// Its exit status, when it exited without a signal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_status: Option<u32>,
    /// The memory cgroup limit an OOM kill hit, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<u64>,
}

impl FateFacts {
    /// The facts of `fate`; `exited`: the process is gone (whether it
    /// dumped core is known).
    pub fn of(fate: &Fate, exited: bool) -> Self {
        Self {
            fate: fate.kind.as_str(),
            signal: fate.signal,
            sender_pid: fate.sender.as_ref().map(|s| s.0),
            sender_comm: fate
                .sender
                .as_ref()
                .and_then(|s| (!s.1.is_empty()).then(|| s.1.clone())),
            core_dumped: exited.then_some(fate.core_dumped),
            exit_status: fate.exit_status,
            memory_limit_bytes: fate.memory_limit,
        }
    }
}

/// The `peer` object of an upstream event: the process at the other end of
/// a local upstream's connection, and what befell it.
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct PeerFacts {
    /// The process.
    pub pid: u32,
    /// Its name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Its parent (the PHP-FPM or gunicorn master).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_pid: Option<u32>,
    /// The parent's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent_comm: Option<String>,
    /// What befell it.
    #[serde(flatten)]
    pub fate: FateFacts,
    /// When it exited relative to the connection's end, µs (negative:
    /// before, as a SIGKILL does; positive: a process that closed its
    /// connections on its way out). Absent when it did not exit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_after_close_us: Option<i64>,
}

impl PeerFacts {
    /// The object for `fate` of the process named `comm` (empty: unknown)
    /// whose parent is `parent` (pid 0: unknown), for a connection that
    /// ended at `end_ns`.
    pub fn new(fate: &Fate, comm: &str, parent: (u32, &str), exited: bool, end_ns: u64) -> Self {
        let known = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Self {
            pid: fate.pid,
            comm: known(comm),
            parent_pid: (parent.0 != 0).then_some(parent.0),
            parent_comm: known(parent.1),
            fate: FateFacts::of(fate, exited),
            exit_after_close_us: fate.exit_ns.map(|t| {
                (t as i128 - end_ns as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64 / 1000
            }),
        }
    }
}

/// What befell a process, in a few words: `killed by SIGKILL from bash pid
/// 99`, `OOM-killed (memory cgroup limit 64 MiB)`, `crashed with SIGSEGV
/// (core dumped)`, `exited with status 1`.
pub fn what_befell(fate: &Fate) -> String {
    let signal = fate.signal.map(signal_name).unwrap_or_default();
    let core = if fate.core_dumped {
        " (core dumped)"
    } else {
        ""
    };
    let from = |sender: &Option<(u32, String)>| match sender {
        Some((pid, comm)) if !comm.is_empty() => format!(" from {comm} pid {pid}"),
        Some((pid, _)) => format!(" from pid {pid}"),
        None => String::new(),
    };
    match fate.kind {
        FateKind::OomKilled => match fate.memory_limit {
            Some(bytes) => format!("OOM-killed (memory cgroup limit {})", human_bytes(bytes)),
            None => "OOM-killed (no memory cgroup limit: the host ran out)".to_string(),
        },
        FateKind::Killed => format!("killed by {signal}{core}{}", from(&fate.sender)),
        FateKind::Signalled => format!("sent {signal}{}", from(&fate.sender)),
        FateKind::Crashed => format!("crashed with {signal}{core}"),
        FateKind::Exited => format!("exited with status {}", fate.exit_status.unwrap_or(0)),
    }
}

/// One sentence: what befell the process, and when relative to the
/// exchange: `since` (the request written) for a kill by another process,
/// `until` (the connection's end) otherwise.
pub fn describe(fate: &Fate, comm: &str, parent: u32, since_ns: u64, until_ns: u64) -> String {
    let who = if comm.is_empty() {
        format!("pid {}", fate.pid)
    } else {
        format!("{comm} pid {}", fate.pid)
    };
    // A death may come just after the close it caused (the exit of a
    // process that closed its sockets on its way out).
    let before_end = || {
        if fate.time_ns > until_ns {
            format!(
                "{} after the connection closed",
                human_us((fate.time_ns - until_ns) / 1000)
            )
        } else {
            format!(
                "{} before the connection closed",
                human_us((until_ns - fate.time_ns) / 1000)
            )
        }
    };
    let signal = fate.signal.map(signal_name).unwrap_or_default();
    let core = if fate.core_dumped {
        " (core dumped)"
    } else {
        ""
    };
    match fate.kind {
        FateKind::OomKilled => {
            let limit = match fate.memory_limit {
                Some(bytes) => format!("memory cgroup limit {}", human_bytes(bytes)),
                None => "no memory cgroup limit: the host ran out".to_string(),
            };
            format!("{who} OOM-killed ({limit}) {}", before_end())
        }
        FateKind::Killed | FateKind::Signalled => {
            let verb = if fate.kind == FateKind::Killed {
                "killed by"
            } else {
                "sent"
            };
            let Some((sender, sender_comm)) = &fate.sender else {
                return format!("{who} {verb} {signal}{core} {}", before_end());
            };
            let after = human_us(fate.time_ns.saturating_sub(since_ns) / 1000);
            let hint = if *sender == parent && matches!(fate.signal, Some(2 | 3 | 6 | 9 | 15)) {
                format!(" ({})", supervisor_timeout(sender_comm))
            } else {
                String::new()
            };
            let from = if sender_comm.is_empty() {
                format!("pid {sender}")
            } else {
                format!("{sender_comm} pid {sender}")
            };
            let still = if fate.kind == FateKind::Signalled {
                ", still running"
            } else {
                ""
            };
            format!(
                "{who} {verb} {signal}{core} from {from} {after} after the request{hint}{still}"
            )
        }
        FateKind::Crashed => format!("{who} crashed with {signal}{core} {}", before_end()),
        FateKind::Exited => format!(
            "{who} exited with status {} {}",
            fate.exit_status.unwrap_or(0),
            before_end()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn signal(pid: u32, t: u64, signal: u32, code: i32, sender: u32, comm: &str) -> Entry {
        Entry {
            pid,
            parent: 4200,
            comm: "php-fpm8.2".into(),
            time_ns: t,
            fact: Fact::Signal {
                signal,
                code,
                sender,
                sender_comm: comm.into(),
            },
        }
    }

    fn exit(pid: u32, t: u64, exit_code: u32) -> Entry {
        Entry {
            pid,
            parent: 4200,
            comm: "php-fpm8.2".into(),
            time_ns: t,
            fact: Fact::Exited { exit_code },
        }
    }

    fn log(entries: Vec<Entry>) -> FateLog {
        let mut log = FateLog::default();
        for e in entries {
            log.add(e);
        }
        log
    }

    #[test]
    fn request_terminate_timeout_is_a_kill_by_the_master_with_its_hint() {
        // What PHP-FPM does: SIGTERM (kill(2), si_code 0) from the master,
        // then the child exits on it (wait status 15).
        // Its SIGTERM handler then re-raises the signal on itself.
        let log = log(vec![
            signal(4242, 2_000 * MS, 15, 0, 4200, "php-fpm8.2"),
            signal(4242, 2_000 * MS + 200_000, 15, 0, 4242, "php-fpm8.2"),
            exit(4242, 2_001 * MS, 15),
        ]);
        let fate = log.fate(4242, 0, 2_002 * MS).unwrap();
        assert_eq!(fate.kind, FateKind::Killed);
        assert_eq!(fate.signal, Some(15));
        assert_eq!(fate.sender, Some((4200, "php-fpm8.2".into())));
        let (parent, comm) = log.identity(4242);
        assert_eq!(
            describe(&fate, &comm, parent, 0, 2_002 * MS),
            "php-fpm8.2 pid 4242 killed by SIGTERM from php-fpm8.2 pid 4200 2.00 s after the \
             request (request_terminate_timeout?)"
        );
    }

    #[test]
    fn a_fault_is_a_crash_and_a_kill_by_another_process_is_not() {
        // SIGSEGV raised by the kernel (si_code SEGV_MAPERR 1) in the process.
        let log1 = log(vec![
            signal(77, 10 * MS, 11, 1, 77, "python3"),
            exit(77, 11 * MS, 11 | 0x80),
        ]);
        let fate = log1.fate(77, 0, 20 * MS).unwrap();
        assert_eq!((fate.kind, fate.core_dumped), (FateKind::Crashed, true));
        assert!(describe(&fate, "python3", 1, 0, 11 * MS).contains("crashed with SIGSEGV"));
        // `kill -SEGV` from a shell is a kill.
        let log2 = log(vec![
            signal(77, 10 * MS, 11, 0, 900, "bash"),
            exit(77, 11 * MS, 11),
        ]);
        assert_eq!(log2.fate(77, 0, 20 * MS).unwrap().kind, FateKind::Killed);
    }

    #[test]
    fn an_oom_kill_wins_and_names_its_limit() {
        let mut log = log(vec![signal(77, 10 * MS, 9, 0x80, 77, "python3")]);
        log.add(Entry {
            pid: 77,
            parent: 1,
            comm: String::new(),
            time_ns: 10 * MS,
            fact: Fact::OomKilled {
                memory_limit: Some(64 << 20),
            },
        });
        log.add(exit(77, 12 * MS, 9));
        let fate = log.fate(77, 0, 20 * MS).unwrap();
        assert_eq!(fate.kind, FateKind::OomKilled);
        assert_eq!(
            describe(&fate, "python3", 1, 0, 10 * MS + 300_000),
            "python3 pid 77 OOM-killed (memory cgroup limit 64 MiB) 0.3 ms before the \
             connection closed"
        );
    }

    #[test]
    fn told_to_stop_then_exiting_is_killed_and_a_plain_exit_is_exited() {
        // gunicorn: SIGABRT from the arbiter, handled, exit status 1.
        let l = log(vec![
            signal(9, 5 * MS, 6, 0, 8, "gunicorn"),
            exit(9, 6 * MS, 1 << 8),
        ]);
        let fate = l.fate(9, 0, 7 * MS).unwrap();
        assert_eq!((fate.kind, fate.signal), (FateKind::Killed, Some(6)));
        let l = log(vec![exit(9, 6 * MS, 3 << 8)]);
        let fate = l.fate(9, 0, 7 * MS).unwrap();
        assert_eq!((fate.kind, fate.exit_status), (FateKind::Exited, Some(3)));
    }

    #[test]
    fn a_signal_alone_is_signalled_and_facts_outside_the_span_count_for_nothing() {
        let l = log(vec![signal(9, 5 * MS, 15, 0, 8, "supervisor")]);
        assert_eq!(l.fate(9, 0, 7 * MS).unwrap().kind, FateKind::Signalled);
        assert_eq!(l.fate(9, 6 * MS, 7 * MS), None);
        assert_eq!(l.fate(10, 0, 7 * MS), None);
        assert_eq!(l.pids_between(0, 7 * MS), vec![9]);
    }

    #[test]
    fn the_log_forgets_old_facts() {
        let mut l = log(vec![exit(1, 0, 256)]);
        l.add(exit(2, KEEP_NS + 1, 256));
        assert!(!l.by_pid.contains_key(&1) && l.by_pid.contains_key(&2));
    }

    #[test]
    fn the_index_answers_as_a_scan_of_every_fact_would() {
        // The facts of the tests above together, some a little out of
        // order (two CPUs), and many bystanders.
        let mut entries = vec![
            signal(4242, 2_000 * MS, 15, 0, 4200, "php-fpm8.2"),
            signal(77, 10 * MS, 11, 1, 77, "python3"),
            exit(77, 11 * MS, 11 | 0x80),
            signal(9, 5 * MS, 6, 0, 8, "gunicorn"),
            exit(9, 6 * MS, 1 << 8),
            signal(4242, 2_000 * MS + 200_000, 15, 0, 4242, "php-fpm8.2"),
            exit(4242, 2_001 * MS, 15),
        ];
        for i in 0..500u32 {
            entries.push(exit(10_000 + i % 50, 2_100 * MS + u64::from(i) * MS, 0));
        }
        entries.sort_by_key(|e| e.time_ns);
        entries.swap(3, 4);
        let l = log(entries.clone());
        let scan_pids = |from: u64, to: u64| {
            let mut p: Vec<u32> = entries
                .iter()
                .filter(|e| (from..=to).contains(&e.time_ns))
                .map(|e| e.pid)
                .collect();
            p.sort_unstable();
            p.dedup();
            p
        };
        let scan_fate = |pid: u32, from: u64, to: u64| {
            let facts: Vec<&Entry> = entries
                .iter()
                .filter(|e| e.pid == pid && (from..=to).contains(&e.time_ns))
                .collect();
            Fate::from_facts(pid, &facts)
        };
        let spans = [
            (0, 7 * MS),
            (6 * MS, 7 * MS),
            (0, 20 * MS),
            (0, 2_002 * MS),
            (2_000 * MS + 1, 2_300 * MS),
            (2_500 * MS, 3_000 * MS),
        ];
        for (from, to) in spans {
            assert_eq!(
                l.pids_between(from, to),
                scan_pids(from, to),
                "{from}..={to}"
            );
            for pid in [9, 77, 4242, 10_003, 10_049, 5] {
                assert_eq!(l.fate(pid, from, to), scan_fate(pid, from, to));
            }
        }
        assert_eq!(l.identity(4242), (4200, "php-fpm8.2".to_string()));
        assert_eq!(l.identity(5), (0, String::new()));
    }

    #[test]
    fn a_full_log_forgets_its_oldest_facts_first() {
        let mut l = FateLog::default();
        for i in 0..KEEP_MAX as u64 + 2 {
            l.add(exit(1 + (i % 3) as u32, i, 0));
        }
        assert_eq!(l.order.len(), KEEP_MAX);
        let indexed: usize = l.by_pid.values().map(VecDeque::len).sum();
        assert_eq!(indexed, KEEP_MAX);
        assert_eq!(l.pids_between(0, 1), Vec::<u32>::new());
        assert_eq!(l.pids_between(2, 4), vec![1, 2, 3]);
    }

    #[test]
    fn sizes_and_signal_names_read_as_people_write_them() {
        assert_eq!(human_bytes(64 << 20), "64 MiB");
        assert_eq!(human_bytes(2 << 30), "2 GiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
        assert_eq!(signal_name(9), "SIGKILL");
        assert_eq!(signal_name(40), "signal 40");
    }
}
