//! The per-connection exchange state machine, shared by the kernel programs
//! (which call it on every hook) and the host's unit tests (which check its
//! rules without root): keepalive reuse, how a connection's end is read from
//! how far its exchange got, when the request counts as acknowledged, and
//! which exchanges are waiting for an answer.
//!
//! Every method is `#[inline(always)]`, free of panics and loops, so the BPF
//! verifier accepts it inside any program.
use crate::{Exchange, FLAG_CONNECTED, FLAG_RESET_SEEN, FLAG_REUSED, UpstreamAddr};

/// How an exchange ended: `Exchange::end` on the wire (0 while in flight).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum End {
    /// `connect()` itself returned the error in `Exchange::errno`.
    ConnectSyscallError = 1,
    /// The kernel reported an error on a connecting TCP socket (RST, ICMP, timeout).
    ConnectSocketError = 2,
    /// nginx closed a TCP socket still in SYN_SENT: it gave up waiting (or
    /// its client left; user space tells which).
    ConnectAbandoned = 3,
    /// A response came and the exchange ended: the connection was reused for
    /// the next request, or closed by either side after the response.
    ResponseDone = 4,
    /// The upstream closed the connection before any response byte.
    PeerClosed = 5,
    /// The connection was reset (or failed with `errno`) once established.
    PeerReset = 6,
    /// nginx closed the connection while still waiting for the first
    /// response byte: its timeout, or its client left (user space tells which).
    NginxClosed = 7,
    /// `socket()` failed in a worker (`Exchange::errno`: out of descriptors,
    /// memory...) before it could connect: where to is not known.
    SocketFailed = 8,
    /// The worker died with the exchange in flight (its sockets closed by
    /// its exit, not by nginx).
    WorkerDied = 9,
}

impl End {
    /// The code written to `Exchange::end`.
    #[inline(always)]
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The end a code stands for; `None` for 0 (in flight) or an unknown code.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            1 => End::ConnectSyscallError,
            2 => End::ConnectSocketError,
            3 => End::ConnectAbandoned,
            4 => End::ResponseDone,
            5 => End::PeerClosed,
            6 => End::PeerReset,
            7 => End::NginxClosed,
            8 => End::SocketFailed,
            9 => End::WorkerDied,
            _ => return None,
        })
    }

    /// Whether the connect itself failed (no exchange took place).
    pub const fn is_connect_failure(self) -> bool {
        matches!(
            self,
            End::ConnectSyscallError
                | End::ConnectSocketError
                | End::ConnectAbandoned
                | End::SocketFailed
        )
    }

    /// Whether nginx itself ended it while waiting: its timer fired, or its
    /// client went away (the two are told apart by [`crate::ClientGoneRecord`]).
    pub const fn is_nginx_giving_up(self) -> bool {
        matches!(self, End::ConnectAbandoned | End::NginxClosed)
    }
}

/// How far an exchange got: `Exchange::phase` on the wire.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connecting or connected; no request written yet.
    Idle = 0,
    /// Request being written or written; no response byte read.
    Sending = 1,
    /// Response bytes read.
    Receiving = 2,
}

impl Phase {
    /// The code written to `Exchange::phase`.
    #[inline(always)]
    pub const fn code(self) -> u32 {
        self as u32
    }

    /// The phase a code stands for; `None` for an unknown code.
    pub const fn from_code(code: u32) -> Option<Self> {
        Some(match code {
            0 => Phase::Idle,
            1 => Phase::Sending,
            2 => Phase::Receiving,
            _ => return None,
        })
    }
}

/// The end of an exchange, as a hook decides it: what to stamp on the
/// record it sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ending {
    /// How it ended.
    pub end: End,
    /// Positive errno, 0 when none.
    pub errno: u32,
    /// When it ended (CLOCK_MONOTONIC ns).
    pub end_ns: u64,
}

/// What a hook does with a connection after an event on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Keep following it.
    Keep,
    /// Forget it without a record (nothing was asked on it).
    Forget,
    /// Send the record with this ending, then forget the connection.
    Finish(Ending),
}

const EAGAIN: u32 = 11;
const EINTR: u32 = 4;

#[inline(always)]
const fn max(a: u64, b: u64) -> u64 {
    if a > b { a } else { b }
}

impl Exchange {
    /// A kept-alive connection opened before tracing started, first seen
    /// at `now`: connected, its current exchange half over (its request
    /// unseen, so never reported, see [`Exchange::reportable`]).
    #[inline(always)]
    pub const fn adopted(tgid: u32, fd: u32, now: u64, addr: UpstreamAddr) -> Self {
        let mut e = Self::new(tgid, fd, now, addr);
        e.flags = FLAG_CONNECTED;
        e.phase = Phase::Receiving.code();
        e
    }

    /// Whether `phase` is the current phase.
    #[inline(always)]
    pub fn is_in(&self, phase: Phase) -> bool {
        self.phase == phase.code()
    }

    /// Whether the handshake (or UNIX connect) completed.
    #[inline(always)]
    pub fn is_connected(&self) -> bool {
        self.flags & FLAG_CONNECTED != 0
    }

    /// The handshake (or UNIX `connect()`) completed at `now`.
    #[inline(always)]
    pub fn handshake_done(&mut self, now: u64) {
        self.connect_ns = now.saturating_sub(self.start_ns);
        self.flags |= FLAG_CONNECTED;
    }

    /// A reset arrived for the connection.
    #[inline(always)]
    pub fn reset_seen(&mut self) {
        self.flags |= FLAG_RESET_SEEN;
    }

    /// The exchange a write ends before it starts the next one: a new
    /// request on a kept-alive connection ends the answered exchange, at its
    /// last response byte read. Send it before [`Exchange::request_written`].
    #[inline(always)]
    pub fn ending_before_write(&self) -> Option<Ending> {
        if self.is_in(Phase::Receiving) {
            Some(Ending {
                end: End::ResponseDone,
                errno: 0,
                end_ns: self.resp_last_read_ns,
            })
        } else {
            None
        }
    }

    /// The worker wrote request bytes at `now`: the first ones of an
    /// exchange (after a response, a new exchange on the same connection),
    /// or more of the same request. Its acknowledgement is read later from
    /// the connection's TCP state ([`Exchange::tcp_state_seen`]).
    #[inline(always)]
    pub fn request_written(&mut self, now: u64) {
        if self.is_in(Phase::Idle) {
            self.req_first_ns = now;
        } else if self.is_in(Phase::Receiving) {
            // Keepalive: the next exchange on this connection, after the
            // connection sat idle since the last response byte was read.
            // (Unknown for an adopted connection: nothing read yet.)
            self.idle_ns = if self.resp_last_read_ns == 0 {
                0
            } else {
                now.saturating_sub(self.resp_last_read_ns)
            };
            self.resp_bytes = 0;
            self.read_gap_max_ns = 0;
            self.start_ns = now;
            self.connect_ns = 0;
            self.req_first_ns = now;
            self.resp_kernel_ns = 0;
            self.resp_first_read_ns = 0;
            self.resp_last_read_ns = 0;
            self.end = 0;
            self.errno = 0;
            self.flags = (self.flags & FLAG_CONNECTED) | FLAG_REUSED;
            self.syn_retransmits = 0;
            self.retransmits = 0;
            self.peer_retransmits = 0;
            self.index += 1;
        }
        self.req_last_ns = now;
        self.acked_ns = 0;
        self.phase = Phase::Sending.code();
    }

    /// The first response byte arrived in the kernel at `now` (before nginx
    /// reads it); later arrivals change nothing.
    #[inline(always)]
    pub fn data_arrived(&mut self, now: u64) {
        if self.is_in(Phase::Sending) && self.resp_kernel_ns == 0 {
            self.resp_kernel_ns = now;
        }
    }

    /// The worker's read returned `ret` at `now`: response bytes, the end of
    /// the stream (the upstream closed), or an error (a reset).
    #[inline(always)]
    pub fn response_read(&mut self, ret: i32, now: u64) -> Next {
        if ret > 0 {
            if self.is_in(Phase::Idle) {
                return Next::Keep;
            }
            if self.resp_first_read_ns == 0 {
                self.resp_first_read_ns = now;
                if self.resp_kernel_ns == 0 {
                    self.resp_kernel_ns = now;
                }
            }
            if self.resp_last_read_ns != 0 {
                // The wait between two reads with data: what nginx's read
                // timeout bounds once the answer has started.
                let gap = now.saturating_sub(self.resp_last_read_ns);
                if gap > self.read_gap_max_ns {
                    self.read_gap_max_ns = gap;
                }
            }
            self.resp_last_read_ns = now;
            self.resp_bytes += ret as u64;
            self.phase = Phase::Receiving.code();
            return Next::Keep;
        }
        if ret == 0 {
            return self.closed(true, now);
        }
        let errno = ret.unsigned_abs();
        if errno == EAGAIN || errno == EINTR {
            Next::Keep
        } else if self.is_in(Phase::Idle) {
            Next::Forget
        } else {
            Next::Finish(Ending {
                end: End::PeerReset,
                errno,
                end_ns: now,
            })
        }
    }

    /// The connection closes at `now`, by the upstream (`by_peer`) or by
    /// nginx: its exchange ends by how far it got. Nothing asked: forgotten;
    /// waiting for the answer: the upstream closed it early, or nginx gave
    /// up; answered: done at the last byte read.
    #[inline(always)]
    pub fn closed(&self, by_peer: bool, now: u64) -> Next {
        if self.is_in(Phase::Sending) {
            Next::Finish(Ending {
                end: if by_peer {
                    End::PeerClosed
                } else {
                    End::NginxClosed
                },
                errno: 0,
                end_ns: now,
            })
        } else if self.is_in(Phase::Receiving) {
            Next::Finish(Ending {
                end: End::ResponseDone,
                errno: 0,
                end_ns: self.resp_last_read_ns,
            })
        } else {
            Next::Forget
        }
    }

    /// The socket is destroyed at `now` while still followed: a connect
    /// nginx gave up on (no error came), or a connection whose `close()` was
    /// not seen.
    #[inline(always)]
    pub fn destroyed(&self, now: u64) -> Next {
        if self.is_connected() {
            self.closed(false, now)
        } else {
            Next::Finish(Ending {
                end: End::ConnectAbandoned,
                errno: 0,
                end_ns: now,
            })
        }
    }

    /// The kernel reported `errno` on the socket at `now`: a failed connect
    /// (refused, unreachable, timed out) or a reset once established. On an
    /// answered exchange (a kept-alive connection waiting in nginx's pool, or
    /// a response still being read) nothing is decided here: nginx's next
    /// read on the connection tells which.
    #[inline(always)]
    pub fn socket_error(&self, errno: u32, now: u64) -> Next {
        if self.is_in(Phase::Receiving) {
            return Next::Keep;
        }
        Next::Finish(Ending {
            end: if self.is_connected() {
                End::PeerReset
            } else {
                End::ConnectSocketError
            },
            errno,
            end_ns: now,
        })
    }

    /// nginx peeked at an idle kept-alive connection (`MSG_PEEK`: its pool's
    /// check when the connection becomes readable) and read `ret`: the end of
    /// the stream or an error closes the pooled connection, and the answered
    /// exchange ends at its last byte read. Nothing else changes.
    #[inline(always)]
    pub fn pool_checked(&self, ret: i32) -> Next {
        if !self.is_in(Phase::Receiving)
            || ret > 0
            || ret == -(EAGAIN as i32)
            || ret == -(EINTR as i32)
        {
            return Next::Keep;
        }
        self.closed(true, self.resp_last_read_ns)
    }

    /// The connection's TCP state, read at an event of this exchange (the
    /// first response byte arriving, or its end): whether everything
    /// written is acknowledged (`all_acked`: `snd_una == write_seq`), when
    /// new data was last acknowledged (`delivered_ns`: `delivered_mstamp`),
    /// and the smoothed RTT. The request counts as acknowledged at that
    /// acknowledgement, or at its last byte written if the ACK came while
    /// the write still ran (loopback).
    #[inline(always)]
    pub fn tcp_state_seen(&mut self, all_acked: bool, delivered_ns: u64, srtt_us: u32) {
        self.srtt_us = srtt_us;
        if all_acked && self.acked_ns == 0 && !self.is_in(Phase::Idle) && self.req_last_ns != 0 {
            self.acked_ns = max(delivered_ns, self.req_last_ns);
        }
    }

    /// Whether a finished exchange is worth a record: not one joined half
    /// over on an adopted connection (its request was never seen). A new
    /// connection reset before its request's write was seen is: on
    /// loopback the backend can read the request and reset the connection
    /// on another CPU before the worker's write hook has run.
    #[inline(always)]
    pub fn reportable(&self) -> bool {
        !(self.is_connected() && self.req_first_ns == 0 && !self.is_in(Phase::Idle))
    }

    /// Stamps `ending` on the exchange, as its record carries it.
    #[inline(always)]
    pub fn finish(&mut self, ending: Ending) {
        self.end = ending.end.code();
        self.errno = ending.errno;
        self.end_ns = ending.end_ns;
    }

    /// Whether the exchange is waiting for the upstream now: connected, its
    /// request written, no response byte arrived yet.
    #[inline(always)]
    pub fn waiting_for_response(&self) -> bool {
        self.is_connected() && self.is_in(Phase::Sending) && self.resp_kernel_ns == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::AF_INET;

    const MS: u64 = 1_000_000;

    fn addr() -> UpstreamAddr {
        let mut a = UpstreamAddr::ZERO;
        a.family = AF_INET;
        a.port_be = 8080u16.to_be();
        a.data[..4].copy_from_slice(&[127, 0, 0, 1]);
        a
    }

    /// A TCP connection started at 1 s, connected 0.1 ms later.
    fn connected() -> Exchange {
        let mut e = Exchange::new(4242, 17, 1_000 * MS, addr());
        e.handshake_done(e.start_ns + 100_000);
        e
    }

    fn finish(e: &mut Exchange, next: Next) -> Ending {
        let Next::Finish(ending) = next else {
            panic!("expected a finished exchange, got {next:?}");
        };
        e.finish(ending);
        ending
    }

    #[test]
    fn codes_round_trip_and_unknown_codes_are_none() {
        for code in 1..=9 {
            assert_eq!(End::from_code(code).unwrap().code(), code);
        }
        assert_eq!(End::from_code(0), None);
        assert_eq!(End::from_code(10), None);
        for code in 0..=2 {
            assert_eq!(Phase::from_code(code).unwrap().code(), code);
        }
        assert_eq!(Phase::from_code(3), None);
    }

    #[test]
    fn handshake_times_the_connect() {
        let e = connected();
        assert!(e.is_connected());
        assert_eq!(e.connect_ns, 100_000);
        assert!(e.is_in(Phase::Idle));
        assert!(!e.waiting_for_response());
    }

    #[test]
    fn a_request_answered_then_read_is_one_exchange() {
        let mut e = connected();
        let t = e.start_ns + 200_000;
        assert_eq!(e.ending_before_write(), None);
        e.request_written(t);
        e.request_written(t + 10_000);
        assert_eq!((e.req_first_ns, e.req_last_ns), (t, t + 10_000));
        assert!(e.waiting_for_response());
        e.data_arrived(t + 5 * MS);
        e.data_arrived(t + 6 * MS);
        assert_eq!(e.resp_kernel_ns, t + 5 * MS, "the first arrival counts");
        assert!(!e.waiting_for_response());
        assert_eq!(e.response_read(512, t + 5 * MS + 20_000), Next::Keep);
        assert_eq!(e.response_read(100, t + 7 * MS), Next::Keep);
        assert_eq!(e.resp_first_read_ns, t + 5 * MS + 20_000);
        assert_eq!(e.resp_last_read_ns, t + 7 * MS);
        // The upstream closes after answering: done at the last byte read.
        let ending = {
            let next = e.response_read(0, t + 9 * MS);
            finish(&mut e, next)
        };
        assert_eq!(ending.end, End::ResponseDone);
        assert_eq!(e.end_ns, t + 7 * MS);
        assert!(e.reportable());
    }

    #[test]
    fn keepalive_reuse_ends_the_previous_exchange_and_starts_a_reused_one() {
        let mut e = connected();
        let t = e.start_ns + 200_000;
        e.request_written(t);
        e.tcp_state_seen(true, t + 40_000, 30);
        e.response_read(150, t + MS / 2);
        e.response_read(50, t + MS);
        assert_eq!((e.resp_bytes, e.read_gap_max_ns), (200, MS / 2));
        e.retransmits = 2;
        e.peer_retransmits = 1;
        // The next request on the same connection.
        let next = t + 50 * MS;
        let previous = e.ending_before_write().expect("previous exchange ends");
        assert_eq!(
            previous,
            Ending {
                end: End::ResponseDone,
                errno: 0,
                end_ns: t + MS
            }
        );
        e.request_written(next);
        assert_eq!(e.index, 1);
        assert_eq!(e.start_ns, next);
        assert_eq!(e.idle_ns, next - (t + MS), "idle from the last byte read");
        assert_eq!((e.resp_bytes, e.read_gap_max_ns), (0, 0));
        assert_eq!(e.connect_ns, 0, "a reused connection has no connect phase");
        assert_ne!(e.flags & FLAG_REUSED, 0);
        assert!(e.is_connected());
        assert_eq!(
            (e.retransmits, e.peer_retransmits),
            (0, 0),
            "counts are per exchange"
        );
        assert_eq!((e.resp_kernel_ns, e.resp_first_read_ns), (0, 0));
        assert!(e.waiting_for_response());
    }

    #[test]
    fn an_ack_during_the_write_acknowledges_it_at_once() {
        // Loopback: the ACK is processed inside the write, before the
        // write's hook runs: acknowledged at the last byte written.
        let mut e = connected();
        let t = e.start_ns + 200_000;
        e.request_written(t);
        e.tcp_state_seen(true, t - 1_000, 20);
        assert_eq!(e.acked_ns, t);
        assert_eq!(e.srtt_us, 20);
    }

    #[test]
    fn a_later_ack_is_timed_and_a_reused_exchange_waits_for_its_own() {
        let mut e = connected();
        let t = e.start_ns + 200_000;
        e.request_written(t);
        e.tcp_state_seen(false, 0, 25);
        assert_eq!(e.acked_ns, 0, "data still unacknowledged");
        e.tcp_state_seen(true, t + 210 * MS, 27);
        assert_eq!(e.acked_ns, t + 210 * MS);
        e.tcp_state_seen(true, t + 300 * MS, 27);
        assert_eq!(e.acked_ns, t + 210 * MS, "the first time it was seen acked");
        e.response_read(10, t + 301 * MS);
        let next = t + 400 * MS;
        e.request_written(next);
        assert_eq!(e.acked_ns, 0, "the next request is not acknowledged yet");
        e.tcp_state_seen(true, next + 30_000, 27);
        assert_eq!(e.acked_ns, next + 30_000);
        let mut idle = connected();
        idle.tcp_state_seen(true, 5, 27);
        assert_eq!(idle.acked_ns, 0, "nothing asked, nothing acknowledged");
    }

    #[test]
    fn closes_end_by_phase() {
        let mut idle = connected();
        assert_eq!(idle.closed(false, 5), Next::Forget, "nothing asked");
        let mut waiting = connected();
        waiting.request_written(waiting.start_ns + 1_000);
        let nginx = {
            let next = waiting.closed(false, 60_000 * MS);
            finish(&mut waiting, next)
        };
        assert_eq!(nginx.end, End::NginxClosed);
        assert!(nginx.end.is_nginx_giving_up());
        let mut waiting = connected();
        waiting.request_written(waiting.start_ns + 1_000);
        assert_eq!(
            {
                let next = waiting.closed(true, 3 * MS);
                finish(&mut waiting, next)
            }
            .end,
            End::PeerClosed
        );
        idle.request_written(idle.start_ns + 1_000);
        idle.response_read(10, idle.start_ns + 2_000);
        assert_eq!(
            idle.closed(false, 9 * MS),
            Next::Finish(Ending {
                end: End::ResponseDone,
                errno: 0,
                end_ns: idle.start_ns + 2_000
            })
        );
    }

    #[test]
    fn read_errors_reset_a_waiting_exchange_but_not_an_idle_one() {
        let mut e = connected();
        assert_eq!(e.response_read(-104, 10), Next::Forget);
        e.request_written(e.start_ns + 1_000);
        assert_eq!(e.response_read(-11, 20), Next::Keep, "EAGAIN");
        assert_eq!(e.response_read(-4, 20), Next::Keep, "EINTR");
        let ending = {
            let next = e.response_read(-104, 30);
            finish(&mut e, next)
        };
        assert_eq!((ending.end, ending.errno), (End::PeerReset, 104));
    }

    #[test]
    fn a_socket_destroyed_while_connecting_was_abandoned() {
        let connecting = Exchange::new(1, 3, 100, addr());
        assert!(!connecting.is_connected());
        assert_eq!(
            connecting.destroyed(2_100),
            Next::Finish(Ending {
                end: End::ConnectAbandoned,
                errno: 0,
                end_ns: 2_100
            })
        );
        let end = |next: Next| match next {
            Next::Finish(ending) => ending.end,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            end(connecting.socket_error(111, 50)),
            End::ConnectSocketError
        );
        let mut waiting = connected();
        waiting.request_written(waiting.start_ns + 1_000);
        assert_eq!(end(waiting.socket_error(104, 50)), End::PeerReset);
        assert_eq!(connected().destroyed(9), Next::Forget);
    }

    #[test]
    fn a_reset_before_the_requests_write_was_seen_is_reported() {
        // The backend read the request and reset the connection before the
        // worker's write hook ran (loopback, another CPU).
        let mut e = connected();
        let ending = {
            let next = e.socket_error(104, e.start_ns + 200_000);
            finish(&mut e, next)
        };
        assert_eq!((ending.end, ending.errno), (End::PeerReset, 104));
        assert!(e.reportable());
    }

    #[test]
    fn an_adopted_connection_reports_only_exchanges_it_saw_start() {
        let mut e = Exchange::adopted(7, 12, 1_000, addr());
        assert_eq!(e.fd, 12);
        assert!(e.is_in(Phase::Receiving));
        // Its current exchange ends at the next request: not reportable.
        let previous = e.ending_before_write().unwrap();
        e.finish(previous);
        assert!(!e.reportable());
        e.request_written(5_000);
        e.response_read(10, 6_000);
        let ending = {
            let next = e.closed(false, 7_000);
            finish(&mut e, next)
        };
        assert_eq!(ending.end, End::ResponseDone);
        assert!(e.reportable());
        assert_ne!(e.flags & FLAG_REUSED, 0);
    }

    #[test]
    fn an_idle_kept_alive_connection_reset_or_closed_is_an_answered_exchange() {
        let mut e = connected();
        let t = e.start_ns + 1_000;
        e.request_written(t);
        e.response_read(100, t + MS);
        // The backend resets the idle pooled connection: nginx logs nothing.
        assert_eq!(e.socket_error(104, t + 5 * MS), Next::Keep);
        let done = Next::Finish(Ending {
            end: End::ResponseDone,
            errno: 0,
            end_ns: t + MS,
        });
        assert_eq!(e.pool_checked(-104), done);
        assert_eq!(e.pool_checked(0), done);
        assert_eq!(e.pool_checked(-11), Next::Keep, "nothing to read yet");
        assert_eq!(
            e.pool_checked(1),
            Next::Keep,
            "unexpected data: nginx decides"
        );
    }
}
