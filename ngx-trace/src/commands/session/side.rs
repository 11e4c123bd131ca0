//! The session's side thread: reading configurations again after a reload
//! and looking up who serves each local upstream, off the drain's path.
//! Its results are taken when the session next looks; its backlog is said,
//! at most every 10 s.
use std::{collections::BTreeSet, path::PathBuf, time::Instant};

use ngx_trace_common::UpstreamAddr;

use super::lost::SKIPPED_REPORT_EVERY;
use crate::{
    nginx::{backends::Backends, configs::Configs},
    notice::notice,
    slow::{self, Done, Side},
};

/// The side thread, and what was said of its backlog.
pub(super) struct SideWork {
    /// `None` when it could not start (said): its jobs are not done.
    side: Option<Side<Done>>,
    /// Side jobs skipped as last said, and when.
    skipped_said: (u64, Option<Instant>),
}

impl SideWork {
    /// Starts the side thread, or says why it could not.
    pub(super) fn start() -> Self {
        let side = Side::start("ngx-trace-side")
            .map_err(|e| {
                notice(&format!(
                    "cannot start the side thread ({e}): configurations are not read again at \
                     a reload, and crashed backends are not named"
                ));
            })
            .ok();
        Self {
            side,
            skipped_said: (0, None),
        }
    }

    /// What the side thread has done since the last call. Says, at most
    /// every 10 s, how many jobs were skipped because it was behind.
    pub(super) fn done(&mut self) -> Vec<Done> {
        let Some(side) = &self.side else {
            return Vec::new();
        };
        let done = side.results().collect();
        let skipped = side.skipped();
        let (said, at) = self.skipped_said;
        if skipped > said && at.is_none_or(|at| at.elapsed() >= SKIPPED_REPORT_EVERY) {
            self.skipped_said = (skipped, Some(Instant::now()));
            notice(&format!(
                "{skipped} side jobs skipped so far (configuration reads, backend lookups; \
                 {} turns over their {} ms budget): the side thread is behind; they are tried \
                 again later, records are not lost",
                side.resumed(),
                slow::BUDGET.as_millis()
            ));
        }
        done
    }

    /// Reads the configuration of the `traced` processes (or `file`) again.
    pub(super) fn read_configs(&mut self, file: Option<PathBuf>, traced: BTreeSet<u32>) {
        if let Some(side) = self.side.as_mut() {
            side.submit(slow::once(move || {
                Done::Configs(Configs::read(file.as_deref(), &traced))
            }));
        }
    }

    /// Asks who serves the upstreams in `addrs` (each with a worker
    /// connecting to it) that `backends` has not looked up lately.
    pub(super) fn look_up_backends<'a>(
        &mut self,
        backends: &mut Backends,
        addrs: impl Iterator<Item = (&'a UpstreamAddr, u32)>,
    ) {
        let Some(side) = self.side.as_mut() else {
            return;
        };
        let stale = backends.stale(addrs);
        if stale.is_empty() {
            return;
        }
        if !side.submit(slow::map(backends.lookup(stale.clone()), Done::Backends)) {
            backends.not_asked(&stale);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The side thread's results, waited for up to 10 s until `enough`.
    fn wait_for(side: &mut SideWork, enough: impl Fn(&[Done]) -> bool) -> Vec<Done> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut all = Vec::new();
        while !enough(&all) {
            assert!(Instant::now() < deadline, "the side thread did nothing");
            std::thread::sleep(Duration::from_millis(10));
            all.extend(side.done());
        }
        all
    }

    #[test]
    fn a_configuration_read_is_done_on_the_side_and_taken_later() {
        let dir = std::env::temp_dir().join(format!("ngx-trace-side-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("nginx.conf");
        std::fs::write(
            &file,
            "events {}\nhttp { server { listen 127.0.0.1:8080; } }\n",
        )
        .unwrap();
        let mut side = SideWork::start();
        side.read_configs(Some(file.clone()), BTreeSet::new());
        let done = wait_for(&mut side, |d| !d.is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            matches!(done.as_slice(), [Done::Configs(_)]),
            "{}",
            done.len()
        );
    }

    #[test]
    fn a_backend_is_looked_up_once_while_fresh() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut addr = UpstreamAddr::ZERO;
        addr.family = ngx_trace_common::AF_INET;
        addr.port_be = port.to_be();
        addr.data[..4].copy_from_slice(&[127, 0, 0, 1]);
        let mut backends = Backends::default();
        let mut side = SideWork::start();
        let worker = std::process::id();
        side.look_up_backends(&mut backends, std::iter::once((&addr, worker)));
        let done = wait_for(&mut side, |d| !d.is_empty());
        let Some(Done::Backends(found)) = done.into_iter().next() else {
            panic!("not a backend lookup");
        };
        backends.found(found);
        assert!(
            backends.serves(&addr, worker, 0),
            "this process listens on {addr:?}"
        );
        // Looked up lately: not asked again.
        side.look_up_backends(&mut backends, std::iter::once((&addr, worker)));
        std::thread::sleep(Duration::from_millis(200));
        assert!(side.done().is_empty());
    }
}
