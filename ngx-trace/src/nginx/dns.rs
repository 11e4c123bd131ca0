//! Host names in nginx's configuration, resolved under a deadline: a DNS
//! outage (itself a cause of 502s) must not hold up the tracer. The
//! lookup runs on its own thread, waited for at most [`DEADLINE`]; one
//! that does not answer in time leaves its name unresolved (said once),
//! and no other lookup starts while it is still running, so a dead
//! resolver costs one stuck thread and one deadline, not one per name.
use std::{
    io,
    net::{SocketAddr, ToSocketAddrs},
    sync::{
        Arc, Mutex,
        mpsc::{self, Receiver, RecvTimeoutError, TryRecvError},
    },
    time::Duration,
};

use crate::{nginx::configs::SaidOnce, notice::notice};

/// The longest a lookup is waited for.
pub const DEADLINE: Duration = Duration::from_secs(2);

/// A resolver: `host:port` to its addresses (the system's, or a test's).
pub type ResolveFn = Arc<dyn Fn(&str) -> io::Result<Vec<SocketAddr>> + Send + Sync>;

/// The answer to one lookup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// The addresses.
    Found(Vec<SocketAddr>),
    /// The resolver said the name does not resolve.
    Failed(String),
    /// No answer within the deadline.
    TimedOut,
    /// Not asked: a lookup of this name (given) still runs.
    Busy(String),
}

/// Lookups, at most one outstanding.
pub struct Resolver {
    resolve: ResolveFn,
    deadline: Duration,
    /// The lookup that outlived its deadline, still running: its name and
    /// where its answer comes.
    outstanding: Option<(String, Receiver<io::Result<Vec<SocketAddr>>>)>,
}

impl Resolver {
    /// Resolving with `resolve`, waiting at most `deadline`.
    pub fn new(resolve: ResolveFn, deadline: Duration) -> Self {
        Self {
            resolve,
            deadline,
            outstanding: None,
        }
    }

    /// The system's resolver (getaddrinfo), under [`DEADLINE`].
    pub fn system() -> Self {
        Self::new(
            Arc::new(|name: &str| name.to_socket_addrs().map(Iterator::collect)),
            DEADLINE,
        )
    }

    /// Looks `name` (`host:port`) up.
    pub fn lookup(&mut self, name: &str) -> Answer {
        if let Some((running, answer)) = &self.outstanding {
            match answer.try_recv() {
                Ok(found) => {
                    let same = running == name;
                    self.outstanding = None;
                    if same {
                        return found.into();
                    }
                }
                Err(TryRecvError::Empty) => return Answer::Busy(running.clone()),
                Err(TryRecvError::Disconnected) => self.outstanding = None,
            }
        }
        let (tx, rx) = mpsc::channel();
        let resolve = Arc::clone(&self.resolve);
        let owned = name.to_string();
        let started = std::thread::Builder::new()
            .name("ngx-trace-dns".into())
            .spawn(move || {
                // The receiver may be gone (the answer came too late).
                let _ = tx.send(resolve(&owned));
            });
        if let Err(e) = started {
            return Answer::Failed(format!("cannot start a thread to resolve it: {e}"));
        }
        match rx.recv_timeout(self.deadline) {
            Ok(found) => found.into(),
            Err(RecvTimeoutError::Timeout) => {
                self.outstanding = Some((name.to_string(), rx));
                Answer::TimedOut
            }
            Err(RecvTimeoutError::Disconnected) => {
                Answer::Failed("the resolver thread ended without an answer".into())
            }
        }
    }
}

impl From<io::Result<Vec<SocketAddr>>> for Answer {
    fn from(found: io::Result<Vec<SocketAddr>>) -> Self {
        match found {
            Ok(addrs) => Answer::Found(addrs),
            Err(e) => Answer::Failed(e.to_string()),
        }
    }
}

/// The process's resolver and the notices it said.
static SYSTEM: Mutex<Option<(Resolver, SaidOnce)>> = Mutex::new(None);

/// The addresses of `name` (`host:port`) from the system's resolver under
/// [`DEADLINE`]; none when it does not resolve or the resolver does not
/// answer in time (said once per name).
pub fn resolve(name: &str) -> Vec<SocketAddr> {
    let Ok(mut system) = SYSTEM.lock() else {
        return Vec::new();
    };
    let (resolver, said) = system.get_or_insert_with(|| (Resolver::system(), SaidOnce::default()));
    let why = match resolver.lookup(name) {
        Answer::Found(addrs) => return addrs,
        Answer::Failed(_) => return Vec::new(),
        Answer::TimedOut => format!(
            "DNS gave no answer for {name} within {} s: left unresolved (upstreams named by \
             it are not matched to their configuration)",
            DEADLINE.as_secs()
        ),
        Answer::Busy(running) => format!(
            "{name} left unresolved: DNS has not answered for {running} yet (upstreams named by \
             it are not matched to their configuration)"
        ),
    };
    if said.first(&why) {
        notice(&why);
    }
    Vec::new()
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// A resolver that answers `www:80` at once and never answers
    /// anything else (a dead DNS server), until `release` is dropped.
    fn half_dead() -> (ResolveFn, mpsc::Sender<()>) {
        let (release, wait) = mpsc::channel::<()>();
        let wait = Arc::new(Mutex::new(wait));
        let resolve: ResolveFn = Arc::new(move |name: &str| {
            if name != "www:80" {
                let _ = wait.lock().unwrap().recv();
                return Err(io::Error::other("released"));
            }
            Ok(vec!["192.0.2.1:80".parse().unwrap()])
        });
        (resolve, release)
    }

    #[test]
    fn a_resolver_that_never_answers_costs_one_deadline_then_nothing() {
        let (resolve, release) = half_dead();
        let mut r = Resolver::new(resolve, Duration::from_millis(100));
        assert_eq!(
            r.lookup("www:80"),
            Answer::Found(vec!["192.0.2.1:80".parse().unwrap()])
        );
        let at = Instant::now();
        assert_eq!(r.lookup("db.internal:5432"), Answer::TimedOut);
        assert!(at.elapsed() >= Duration::from_millis(100));
        // The stuck lookup still runs: no second thread, no second wait.
        let at = Instant::now();
        assert_eq!(
            r.lookup("cache.internal:6379"),
            Answer::Busy("db.internal:5432".into())
        );
        assert_eq!(r.lookup("www:80"), Answer::Busy("db.internal:5432".into()));
        assert!(at.elapsed() < Duration::from_millis(50));
        // Once it answers, lookups run again.
        drop(release);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            r.lookup("www:80"),
            Answer::Found(vec!["192.0.2.1:80".parse().unwrap()])
        );
    }
}
