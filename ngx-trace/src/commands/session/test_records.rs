//! Kernel records as the programs write them, for the session's tests.
use ngx_trace_common::{
    AF_INET, ClientGoneRecord, End, Exchange, FATE_EXIT, FATE_SIGNAL, FLAG_CONNECTED, FateRecord,
    Phase, RECORD_CLIENT_GONE, RECORD_FATE, RECORD_UPSTREAM, UpstreamAddr, UpstreamRecord,
};

use crate::{
    kernel::records::{Entry, Record, decode},
    nginx::procs,
};

/// A millisecond, in ns.
pub const MS: u64 = 1_000_000;

/// The bytes of a plain `repr(C)` record.
pub fn bytes_of<T>(record: &T) -> Vec<u8> {
    // SAFETY: a plain repr(C) struct viewed as bytes.
    unsafe { std::slice::from_raw_parts((record as *const T).cast::<u8>(), size_of::<T>()) }
        .to_vec()
}

/// 127.0.0.1:`port`.
pub fn loopback(port: u16) -> UpstreamAddr {
    let mut addr = UpstreamAddr::ZERO;
    addr.family = AF_INET;
    addr.port_be = port.to_be();
    addr.data[..4].copy_from_slice(&[127, 0, 0, 1]);
    addr
}

/// Worker `tgid`'s exchange with `addr`, connected, whose request was
/// written `waited_ns` before `at_ns`, no answer yet.
pub fn waiting(tgid: u32, addr: UpstreamAddr, at_ns: u64, waited_ns: u64) -> Exchange {
    let mut ex = Exchange::new(tgid, 9, at_ns - waited_ns - MS, addr);
    ex.flags = FLAG_CONNECTED;
    ex.connect_ns = 100_000;
    ex.req_first_ns = at_ns - waited_ns;
    ex.req_last_ns = at_ns - waited_ns;
    ex.phase = Phase::Sending.code();
    ex
}

/// The record of `ex` ending as `end` at `end_ns`.
fn ended(mut ex: Exchange, end: End, end_ns: u64) -> Vec<u8> {
    ex.end = end.code();
    ex.end_ns = end_ns;
    bytes_of(&UpstreamRecord {
        kind: RECORD_UPSTREAM,
        _pad: 0,
        exchange: ex,
    })
}

/// The record of worker `tgid` giving up at `end_ns` on a request it
/// wrote 300 ms earlier.
pub fn gave_up(tgid: u32, end_ns: u64) -> Vec<u8> {
    let ex = waiting(tgid, loopback(8080), end_ns, 300 * MS);
    ended(ex, End::NginxClosed, end_ns)
}

/// The record of worker `tgid` closing its client's connection at
/// `closed`, right after giving up from `first` to `last`.
pub fn client_gone(tgid: u32, first: u64, last: u64, closed: u64) -> Vec<u8> {
    bytes_of(&ClientGoneRecord {
        kind: RECORD_CLIENT_GONE,
        tgid,
        first_giveup_ns: first,
        last_giveup_ns: last,
        closed_ns: closed,
    })
}

/// The record of worker `tgid`'s exchange that local process `peer`
/// ended with a FIN at `end_ns`, before any response byte.
pub fn closed_by(tgid: u32, peer: u32, end_ns: u64) -> Vec<u8> {
    let mut ex = waiting(tgid, loopback(8000), end_ns, 1_000 * MS);
    ex.peer_pid = peer;
    ended(ex, End::PeerClosed, end_ns)
}

/// A fate record: `signal` (with its sender) when given, else the exit
/// with the kernel's `exit_code`.
pub fn fate_of(
    pid: u32,
    parent: u32,
    time_ns: u64,
    signal: Option<(u32, u32)>,
    exit_code: u32,
) -> Vec<u8> {
    bytes_of(&FateRecord {
        kind: RECORD_FATE,
        what: if signal.is_some() {
            FATE_SIGNAL
        } else {
            FATE_EXIT
        },
        pid,
        parent,
        signal: signal.map_or(0, |s| s.0),
        code: 0,
        exit_code,
        sender: signal.map_or(0, |s| s.1),
        memory_limit_pages: 0,
        time_ns,
        comm: *b"gunicorn\0\0\0\0\0\0\0\0",
        sender_comm: *b"gunicorn\0\0\0\0\0\0\0\0",
    })
}

/// [`fate_of`], decoded as the session gets it.
pub fn fate_entry(
    pid: u32,
    parent: u32,
    time_ns: u64,
    signal: Option<(u32, u32)>,
    exit_code: u32,
) -> Entry {
    match decode(&fate_of(pid, parent, time_ns, signal, exit_code)) {
        Ok(Record::Fate(entry)) => entry,
        other => panic!("not a fate: {other:?}"),
    }
}

/// A real process titled as an nginx worker (`sleep 60` renamed), once
/// `/proc` shows the title: `spawn` may return while the child is still in
/// `execve()`. Kill it to make the worker die.
pub fn titled_worker() -> std::process::Child {
    use std::os::unix::process::CommandExt as _;
    let child = std::process::Command::new("sleep")
        .arg0("nginx: worker process")
        .arg("60")
        .spawn()
        .expect("sleep runs");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !procs::is_worker(child.id()) {
        assert!(std::time::Instant::now() < deadline, "sleep got no title");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child
}
