//! Decoding kernel records into typed facts, and naming upstreams as nginx
//! does. This is the one place that reads the kernel's raw codes (`End`,
//! `Phase`, flag bits, record kinds): everything after it works on enums and
//! plain fields, and a code it does not know is a decode error, counted and
//! reported like a lost record, never guessed.
use std::net::{Ipv4Addr, Ipv6Addr};

use ngx_trace_common::{
    AF_INET, AF_INET6, AF_UNIX, ClientGoneRecord, End, Exchange, FATE_EXIT, FATE_OOM, FATE_SIGNAL,
    FD_UNKNOWN, FLAG_CONNECTED, FLAG_RESET_SEEN, FLAG_REUSED, FateRecord, PROC_EXEC, PROC_EXIT,
    PROC_FORK, Phase, ProcessRecord, RECORD_CLIENT_GONE, RECORD_FATE, RECORD_PROCESS,
    RECORD_REQUEST, RECORD_UPSTREAM, REQUEST_RECORD_FIXED, UpstreamAddr, UpstreamRecord,
};

/// One fact about a process, from a kernel fate record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fact {
    /// A signal that ends a process by default was sent to it.
    Signal {
        /// The signal.
        signal: u32,
        /// `si_code`: 0 or negative when a process sent it, positive when
        /// the kernel did (a fault, an OOM kill).
        code: i32,
        /// Who sent it (for a fault: the process itself).
        sender: u32,
        /// The sender's name.
        sender_comm: String,
    },
    /// The OOM killer chose it.
    OomKilled {
        /// The memory cgroup limit it hit, bytes; `None` for a host-wide OOM
        /// or when it could not be read.
        memory_limit: Option<u64>,
    },
    /// It exited, with this `wait()` status.
    Exited {
        /// The status: signal in the low 7 bits, 0x80 core dumped, exit
        /// status in the next byte.
        exit_code: u32,
    },
}

/// A [`Fact`] with its process and time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The process.
    pub pid: u32,
    /// Its parent, 0 when not known.
    pub parent: u32,
    /// Its name, empty when not known.
    pub comm: String,
    /// When (CLOCK_MONOTONIC ns).
    pub time_ns: u64,
    /// What.
    pub fact: Fact,
}

/// What the kernel knows of one upstream connection attempt or exchange,
/// finished or in flight. Timestamps are CLOCK_MONOTONIC ns, 0 when not
/// (yet) seen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Facts {
    /// The nginx worker.
    pub worker_pid: u32,
    /// The worker's fd for the connection (unknown for an adopted one).
    pub fd: Option<u32>,
    /// The upstream, as given to `connect()`.
    pub addr: UpstreamAddr,
    /// How far the exchange got.
    pub phase: Phase,
    /// The TCP handshake (or UNIX connect) completed.
    pub connected: bool,
    /// The exchange runs on a connection used before (keepalive).
    pub reused: bool,
    /// A reset arrived.
    pub reset_seen: bool,
    /// `connect()` entry for a first exchange; first request byte for a reused one.
    pub start_ns: u64,
    /// Duration of the connect, ns (0: not this exchange's, or not done).
    pub connect_ns: u64,
    /// First request byte written.
    pub req_first_ns: u64,
    /// Last request byte written.
    pub req_last_ns: u64,
    /// The upstream's kernel acknowledged the request (TCP).
    pub acked_ns: u64,
    /// First response byte arrived in the kernel.
    pub resp_kernel_ns: u64,
    /// First response byte read by the worker.
    pub resp_first_read_ns: u64,
    /// Last response byte read by the worker.
    pub resp_last_read_ns: u64,
    /// SYNs retransmitted while connecting.
    pub syn_retransmits: u32,
    /// Data segments retransmitted during the exchange.
    pub retransmits: u32,
    /// Data segments the upstream's socket retransmitted during the
    /// exchange (counted for upstreams on this host only).
    pub peer_retransmits: u32,
    /// Response bytes read.
    pub resp_bytes: u64,
    /// How long a kept-alive connection sat idle before this request.
    pub idle_ns: u64,
    /// The longest wait between two response reads with data.
    pub read_gap_max_ns: u64,
    /// Smoothed RTT, µs (TCP, once a segment came back).
    pub srtt_us: Option<u32>,
    /// Exchanges finished on this connection before this one.
    pub index: u32,
    /// User space saw the request acknowledged while it waits (nothing
    /// left unacknowledged on the connection), the time of the ACK unknown.
    pub acked_live: bool,
    /// A process on the other end, as the kernel saw it (see
    /// `Exchange::peer_pid`).
    pub peer_pid: Option<u32>,
}

impl Facts {
    /// Whether it is waiting for the upstream's answer now.
    pub fn waiting_for_response(&self) -> bool {
        self.connected && self.phase == Phase::Sending && self.resp_kernel_ns == 0
    }
}

/// A finished connect attempt or exchange.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Finished {
    /// What was seen.
    pub facts: Facts,
    /// How it ended, as the kernel saw it.
    pub end: End,
    /// The errno the kernel gave, if any.
    pub errno: Option<u32>,
    /// When it ended.
    pub end_ns: u64,
    /// nginx gave up on it because its client had gone away (joined from a
    /// [`Record::ClientGone`]); only meaningful when `end` is nginx giving up.
    pub client_left: bool,
}

/// A change to the set of traced processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessChange {
    /// A traced process forked `pid`, now traced.
    Fork {
        /// The child.
        pid: u32,
    },
    /// A new nginx instance `pid` was exec'd and is now traced.
    Exec {
        /// The process.
        pid: u32,
    },
    /// A traced process exited (or exec'd something that is not nginx).
    Exit {
        /// The process.
        pid: u32,
    },
}

/// One record from the kernel.
#[derive(Debug, Clone)]
pub enum Record {
    /// A finished connect attempt or exchange.
    Upstream(Finished),
    /// A change to the traced processes.
    Process(ProcessChange),
    /// A worker gave up on the exchanges that ended from `first_giveup_ns`
    /// to `last_giveup_ns` because its client left (it then closed the
    /// client's connection at `closed_ns`).
    ClientGone {
        /// The worker.
        worker_pid: u32,
        /// `end_ns` of the first exchange given up on.
        first_giveup_ns: u64,
        /// `end_ns` of the last one.
        last_giveup_ns: u64,
        /// When the client connection was closed.
        closed_ns: u64,
    },
    /// Something befell a process: a signal, an OOM kill, an exit.
    Fate(Entry),
    /// The start of the request of the exchange worker `worker_pid` began
    /// at `req_first_ns`, decoded (`None`: not a protocol ngx-trace reads).
    Request {
        /// The worker.
        worker_pid: u32,
        /// `Facts::req_first_ns` of the exchange.
        req_first_ns: u64,
        /// Its method and path.
        request: Option<crate::kernel::request_head::Request>,
    },
}

/// The kernel's page size, bytes.
fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

/// A task comm (NUL padded) as text.
pub fn comm_text(comm: &[u8; 16]) -> String {
    let len = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    String::from_utf8_lossy(&comm[..len]).into_owned()
}

fn read<T: Copy>(bytes: &[u8], what: &str) -> Result<T, String> {
    if bytes.len() < size_of::<T>() {
        return Err(format!(
            "{what} record of {} bytes, expected {}",
            bytes.len(),
            size_of::<T>()
        ));
    }
    // SAFETY: length checked; the types are plain integers (any bit pattern
    // is valid) and read_unaligned has no alignment requirement.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// The typed facts of the kernel's state for a connection (a record's
/// body, or an in-flight entry of the connection map).
pub fn facts(ex: &Exchange) -> Result<Facts, String> {
    let phase =
        Phase::from_code(ex.phase).ok_or_else(|| format!("unknown exchange phase {}", ex.phase))?;
    Ok(Facts {
        worker_pid: ex.tgid,
        fd: (ex.fd != FD_UNKNOWN).then_some(ex.fd),
        addr: ex.addr,
        phase,
        connected: ex.flags & FLAG_CONNECTED != 0,
        reused: ex.flags & FLAG_REUSED != 0,
        reset_seen: ex.flags & FLAG_RESET_SEEN != 0,
        start_ns: ex.start_ns,
        connect_ns: ex.connect_ns,
        req_first_ns: ex.req_first_ns,
        req_last_ns: ex.req_last_ns,
        acked_ns: ex.acked_ns,
        resp_kernel_ns: ex.resp_kernel_ns,
        resp_first_read_ns: ex.resp_first_read_ns,
        resp_last_read_ns: ex.resp_last_read_ns,
        syn_retransmits: ex.syn_retransmits,
        retransmits: ex.retransmits,
        peer_retransmits: ex.peer_retransmits,
        resp_bytes: ex.resp_bytes,
        idle_ns: ex.idle_ns,
        read_gap_max_ns: ex.read_gap_max_ns,
        srtt_us: (ex.srtt_us != 0).then_some(ex.srtt_us),
        index: ex.index,
        acked_live: false,
        peer_pid: (ex.peer_pid != 0).then_some(ex.peer_pid),
    })
}

/// A finished exchange from the kernel's record of it.
pub fn finished(ex: &Exchange) -> Result<Finished, String> {
    let end = End::from_code(ex.end).ok_or_else(|| format!("unknown end code {}", ex.end))?;
    Ok(Finished {
        facts: facts(ex)?,
        end,
        errno: (ex.errno != 0).then_some(ex.errno),
        end_ns: ex.end_ns,
        client_left: false,
    })
}

/// Decodes one ring-buffer record; the first 4 bytes say its kind.
pub fn decode(bytes: &[u8]) -> Result<Record, String> {
    let kind = read::<u32>(bytes, "a")?;
    match kind {
        RECORD_UPSTREAM => {
            let r: UpstreamRecord = read(bytes, "an upstream")?;
            finished(&r.exchange).map(Record::Upstream)
        }
        RECORD_PROCESS => {
            let p: ProcessRecord = read(bytes, "a process")?;
            let change = match p.what {
                PROC_FORK => ProcessChange::Fork { pid: p.pid },
                PROC_EXEC => ProcessChange::Exec { pid: p.pid },
                PROC_EXIT => ProcessChange::Exit { pid: p.pid },
                other => return Err(format!("unknown process change {other}")),
            };
            Ok(Record::Process(change))
        }
        RECORD_CLIENT_GONE => {
            let c: ClientGoneRecord = read(bytes, "a client-gone")?;
            Ok(Record::ClientGone {
                worker_pid: c.tgid,
                first_giveup_ns: c.first_giveup_ns,
                last_giveup_ns: c.last_giveup_ns,
                closed_ns: c.closed_ns,
            })
        }
        RECORD_FATE => {
            let f: FateRecord = read(bytes, "a fate")?;
            let fact = match f.what {
                FATE_SIGNAL => Fact::Signal {
                    signal: f.signal,
                    code: f.code,
                    sender: f.sender,
                    sender_comm: comm_text(&f.sender_comm),
                },
                FATE_OOM => Fact::OomKilled {
                    memory_limit: (f.memory_limit_pages != 0)
                        .then(|| f.memory_limit_pages.saturating_mul(page_size())),
                },
                FATE_EXIT => Fact::Exited {
                    exit_code: f.exit_code,
                },
                other => return Err(format!("unknown process fate {other}")),
            };
            Ok(Record::Fate(Entry {
                pid: f.pid,
                parent: f.parent,
                comm: comm_text(&f.comm),
                time_ns: f.time_ns,
                fact,
            }))
        }
        RECORD_REQUEST => {
            // `kind, tgid, fd, len` then `req_first_ns`, then `len` bytes.
            let fixed = bytes
                .get(..REQUEST_RECORD_FIXED)
                .ok_or("a request record cut short")?;
            let word = |at: usize| u32::from_ne_bytes(fixed[at..at + 4].try_into().unwrap());
            let len = word(12) as usize;
            let head = bytes
                .get(REQUEST_RECORD_FIXED..REQUEST_RECORD_FIXED + len)
                .ok_or("a request record shorter than its length")?;
            Ok(Record::Request {
                worker_pid: word(4),
                req_first_ns: u64::from_ne_bytes(fixed[16..24].try_into().unwrap()),
                request: crate::kernel::request_head::decode(head),
            })
        }
        other => Err(format!("unknown record kind {other}")),
    }
}

/// How nginx reaches an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// A UNIX stream socket.
    Unix,
}

impl Transport {
    /// The name in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

/// The upstream as nginx names it (`127.0.0.1:3999`, `[::1]:8080`,
/// `unix:/run/php.sock`), and its transport.
pub fn upstream_name(addr: &UpstreamAddr) -> (Transport, String) {
    let port = u16::from_be(addr.port_be);
    match addr.family {
        AF_INET => {
            let ip = Ipv4Addr::new(addr.data[0], addr.data[1], addr.data[2], addr.data[3]);
            (Transport::Tcp, format!("{ip}:{port}"))
        }
        AF_INET6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addr.data[..16]);
            (
                Transport::Tcp,
                format!("[{}]:{port}", Ipv6Addr::from(octets)),
            )
        }
        AF_UNIX => {
            let len = addr
                .data
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(addr.data.len());
            let path = String::from_utf8_lossy(&addr.data[..len]);
            (Transport::Unix, format!("unix:{path}"))
        }
        family => (Transport::Tcp, format!("family-{family}")),
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn addr(family: u16, port: u16, data: &[u8]) -> UpstreamAddr {
        let mut a = UpstreamAddr::ZERO;
        a.family = family;
        a.port_be = port.to_be();
        a.data[..data.len()].copy_from_slice(data);
        a
    }

    #[test]
    fn names_upstreams_like_nginx() {
        assert_eq!(
            upstream_name(&addr(AF_INET, 3999, &[127, 0, 0, 1])),
            (Transport::Tcp, "127.0.0.1:3999".into())
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(upstream_name(&addr(AF_INET6, 8080, &v6)).1, "[::1]:8080");
        assert_eq!(
            upstream_name(&addr(AF_UNIX, 0, b"/run/php/php8.2-fpm.sock\0")),
            (Transport::Unix, "unix:/run/php/php8.2-fpm.sock".into())
        );
    }

    fn bytes_of<T>(record: &T) -> &[u8] {
        // SAFETY: a plain repr(C) struct viewed as bytes.
        unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
    }

    fn refused_record() -> UpstreamRecord {
        let mut exchange = Exchange::new(4243, 17, 1_000, addr(AF_INET, 3999, &[127, 0, 0, 1]));
        exchange.end = End::ConnectSocketError.code();
        exchange.errno = 111;
        exchange.end_ns = 91_000;
        exchange.flags = FLAG_RESET_SEEN;
        UpstreamRecord {
            kind: RECORD_UPSTREAM,
            _pad: 0,
            exchange,
        }
    }

    #[test]
    fn decodes_what_the_kernel_writes_into_typed_facts() {
        let record = refused_record();
        let Ok(Record::Upstream(back)) = decode(bytes_of(&record)) else {
            panic!("not decoded as upstream");
        };
        assert_eq!(back.end, End::ConnectSocketError);
        assert_eq!(back.errno, Some(111));
        assert_eq!(back.end_ns, 91_000);
        let f = back.facts;
        assert_eq!((f.worker_pid, f.fd, f.phase), (4243, Some(17), Phase::Idle));
        assert!(f.reset_seen && !f.connected && !f.reused);
        assert_eq!(f.srtt_us, None);
        assert_eq!(upstream_name(&f.addr).1, "127.0.0.1:3999");
    }

    #[test]
    fn unknown_codes_are_decode_errors_never_guesses() {
        let mut record = refused_record();
        record.exchange.end = 42;
        assert_eq!(
            decode(bytes_of(&record)).unwrap_err(),
            "unknown end code 42"
        );
        let mut record = refused_record();
        record.exchange.end = 0;
        assert!(decode(bytes_of(&record)).is_err(), "in flight is no end");
        let mut record = refused_record();
        record.exchange.phase = 9;
        assert_eq!(
            decode(bytes_of(&record)).unwrap_err(),
            "unknown exchange phase 9"
        );
        let process = ProcessRecord {
            kind: RECORD_PROCESS,
            what: 77,
            pid: 1,
            parent: 0,
        };
        assert_eq!(
            decode(bytes_of(&process)).unwrap_err(),
            "unknown process change 77"
        );
    }

    #[test]
    fn decodes_process_changes_and_client_gone() {
        let fork = ProcessRecord {
            kind: RECORD_PROCESS,
            what: PROC_FORK,
            pid: 4300,
            parent: 4200,
        };
        assert!(matches!(
            decode(bytes_of(&fork)),
            Ok(Record::Process(ProcessChange::Fork { pid: 4300 }))
        ));
        let gone = ClientGoneRecord {
            kind: RECORD_CLIENT_GONE,
            tgid: 4243,
            first_giveup_ns: 5_000,
            last_giveup_ns: 5_040,
            closed_ns: 5_080,
        };
        assert!(matches!(
            decode(bytes_of(&gone)),
            Ok(Record::ClientGone {
                worker_pid: 4243,
                first_giveup_ns: 5_000,
                last_giveup_ns: 5_040,
                closed_ns: 5_080
            })
        ));
    }

    #[test]
    fn short_or_unknown_records_are_errors() {
        assert!(decode(&[1, 0]).unwrap_err().contains("2 bytes"));
        assert!(
            decode(&1u32.to_ne_bytes())
                .unwrap_err()
                .contains("upstream record of 4 bytes")
        );
        assert!(
            decode(&9u32.to_ne_bytes())
                .unwrap_err()
                .contains("unknown record kind 9")
        );
    }
}
