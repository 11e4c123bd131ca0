//! A local backend's part in an exchange it ended with a close or a reset:
//! how long the exchange waits for that process's exit record, and what
//! befell the process (a crash, a kill, an OOM kill) during the exchange.
use ngx_trace_common::{AF_INET, AF_INET6, AF_UNIX, End, UpstreamAddr};

use crate::{
    diagnosis::{
        fates::{self, Fate, FateLog, PeerFacts},
        peer_wait::{PEER_EXIT_WAIT_NS, SIGNALLED_PEER_WAIT_NS},
        verdict::ETIMEDOUT,
    },
    kernel::records::Finished,
    nginx::{backends::Backends, procs},
};

/// Whether `addr` is surely served on this host (a UNIX socket, a
/// loopback address): only there is the process the kernel saw close the
/// connection the backend (a remote FIN arrives in whichever process the
/// CPU was running).
pub(super) fn on_this_host(addr: &UpstreamAddr) -> bool {
    match addr.family {
        AF_UNIX => true,
        AF_INET => addr.data[0] == 127,
        AF_INET6 => {
            let ip =
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(&addr.data[..16]).unwrap_or([0; 16]));
            ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
        _ => false,
    }
}

/// How long `x` waits for its peer's exit: `x` ended by its peer's close
/// or reset, the peer is a local process (the kernel named it), and no
/// death of it (or of a child of the process named, for a UNIX listener's
/// creator) is in `fates` yet. Longer when it was told to end.
pub(super) fn exit_wait(fates: &FateLog, x: &Finished) -> Option<u64> {
    let by_peer = matches!(x.end, End::PeerClosed | End::PeerReset)
        && x.errno != Some(ETIMEDOUT)
        && on_this_host(&x.facts.addr);
    let peer = x.facts.peer_pid.filter(|_| by_peer)?;
    let mut signalled = false;
    for pid in fates.pids_between(x.facts.start_ns, x.end_ns) {
        if pid != peer && fates.identity(pid).0 != peer {
            continue;
        }
        match fates.fate(pid, x.facts.start_ns, x.end_ns) {
            Some(f) if f.kind.is_death() => return None,
            Some(_) => signalled = true,
            None => {}
        }
    }
    Some(if signalled {
        SIGNALLED_PEER_WAIT_NS
    } else {
        PEER_EXIT_WAIT_NS
    })
}

/// The end of `x`'s window in which a death counts: a death just after
/// the close counts, it was waited for.
fn until(x: &Finished) -> u64 {
    x.end_ns.saturating_add(SIGNALLED_PEER_WAIT_NS)
}

/// Whether anything befell any process during `x` (else there is no peer
/// fate to look for, nor backends to look up).
pub(super) fn any_fate_during(fates: &FateLog, x: &Finished) -> bool {
    !fates.pids_between(x.facts.start_ns, until(x)).is_empty()
}

/// The backend process that held the other end of `x`'s connection, if it
/// died or was signalled during the exchange: its facts, the sentence for
/// the evidence, and whether it died. Among the processes something befell
/// during the exchange, one serving the upstream (as `backends` last found
/// it: holding its listening socket, or a child of one that does), or the
/// one the kernel named; a death before a mere signal, the latest first.
pub(super) fn peer_fate(
    fates: &FateLog,
    backends: &Backends,
    x: &Finished,
) -> Option<(PeerFacts, String, bool)> {
    let f = &x.facts;
    let until = until(x);
    let fate: Fate = fates
        .pids_between(f.start_ns, until)
        .into_iter()
        .filter_map(|pid| {
            let (parent, _) = fates.identity(pid);
            // The kernel's word first: the listener's creator (UNIX), the
            // process that closed (TCP on loopback). Only its death may
            // come after the close: another process serving the upstream
            // that dies then is not this exchange's end.
            let hinted =
                on_this_host(&f.addr) && f.peer_pid.is_some_and(|p| p == pid || p == parent);
            if hinted {
                fates.fate(pid, f.start_ns, until)
            } else if backends.serves(&f.addr, pid, parent) {
                fates.fate(pid, f.start_ns, x.end_ns)
            } else {
                None
            }
        })
        .max_by_key(|fate| (fate.kind.is_death(), fate.time_ns))?;
    let (parent, mut comm) = fates.identity(fate.pid);
    if comm.is_empty() {
        comm = procs::status(fate.pid).map(|s| s.name).unwrap_or_default();
    }
    let parent_comm = procs::status(parent).map(|s| s.name).unwrap_or_default();
    let since = if f.req_last_ns != 0 {
        f.req_last_ns
    } else {
        f.start_ns
    };
    let sentence = fates::describe(&fate, &comm, parent, since, x.end_ns);
    let dead = fate.kind.is_death();
    Some((
        PeerFacts::new(&fate, &comm, (parent, &parent_comm), dead, x.end_ns),
        sentence,
        dead,
    ))
}

#[cfg(test)]
mod tests {
    use super::{
        super::test_records::{MS, closed_by, fate_entry},
        *,
    };
    use crate::kernel::records::{Record, decode};

    /// [`closed_by`], decoded.
    fn closed(tgid: u32, peer: u32, end_ns: u64) -> Finished {
        match decode(&closed_by(tgid, peer, end_ns)) {
            Ok(Record::Upstream(x)) => x,
            other => panic!("not an exchange: {other:?}"),
        }
    }

    #[test]
    fn only_loopback_and_unix_upstreams_are_on_this_host() {
        let mut addr = UpstreamAddr::ZERO;
        addr.family = AF_INET;
        addr.data[..4].copy_from_slice(&[127, 0, 0, 2]);
        assert!(on_this_host(&addr));
        addr.data[..4].copy_from_slice(&[10, 1, 2, 3]);
        assert!(!on_this_host(&addr));
        addr.family = AF_INET6;
        addr.data.fill(0);
        addr.data[15] = 1;
        assert!(on_this_host(&addr), "::1");
        addr.data[10..16].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        assert!(on_this_host(&addr), "::ffff:127.0.0.1");
        addr.data[12..16].copy_from_slice(&[192, 0, 2, 1]);
        assert!(!on_this_host(&addr), "::ffff:192.0.2.1");
        addr.family = AF_UNIX;
        assert!(on_this_host(&addr));
    }

    #[test]
    fn a_close_by_a_live_peer_waits_and_longer_when_it_was_told_to_end() {
        let mut fates = FateLog::default();
        let x = closed(42, 777, 10_000 * MS);
        assert_eq!(exit_wait(&fates, &x), Some(PEER_EXIT_WAIT_NS));
        fates.add(fate_entry(777, 700, 9_500 * MS, Some((6, 700)), 0));
        assert_eq!(exit_wait(&fates, &x), Some(SIGNALLED_PEER_WAIT_NS));
        // Its exit known already: no wait.
        fates.add(fate_entry(777, 700, 9_999 * MS, None, 6));
        assert_eq!(exit_wait(&fates, &x), None);
        // A remote peer's close is not a local process's: no wait.
        let mut remote = closed(42, 888, 20_000 * MS);
        remote.facts.addr.data[..4].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(exit_wait(&FateLog::default(), &remote), None);
    }

    #[test]
    fn the_peer_the_kernel_named_is_the_one_whose_death_is_told() {
        let mut fates = FateLog::default();
        let x = closed(42, 777, 10_000 * MS);
        assert!(!any_fate_during(&fates, &x));
        // An unrelated process died meanwhile: not this exchange's peer.
        fates.add(fate_entry(555, 1, 9_990 * MS, None, 9));
        assert!(any_fate_during(&fates, &x));
        assert!(peer_fate(&fates, &Backends::default(), &x).is_none());
        // The peer dies of SIGKILL 2 ms after its close: waited for, told.
        fates.add(fate_entry(777, 700, 10_002 * MS, None, 9));
        let (facts, sentence, dead) =
            peer_fate(&fates, &Backends::default(), &x).expect("the peer's fate");
        assert!(dead);
        assert_eq!(facts.pid, 777);
        assert!(sentence.contains("777"), "{sentence}");
    }
}
