//! The tracing modes the bench compares with no tracer, in the order of
//! every table, and what each one starts on the front nginx.
use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use ngx_trace_tests::nginx::Nginx;

use super::runner::{Bench, Tracer};

/// A tracing mode compared with no tracer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Mode {
    None,
    Default,
    AllJson,
    /// Defaults plus `--metrics-listen`, scraped every second meanwhile.
    Metrics,
    Bpftrace,
    /// Defaults without the request copy: the baseline of its cost.
    NoRequestPath,
}

impl Mode {
    pub(super) fn label(self) -> &'static str {
        match self {
            Mode::None => "no tracer",
            Mode::Default => "ngx-trace (defaults)",
            Mode::AllJson => "ngx-trace --all --json",
            Mode::Metrics => "ngx-trace --metrics-listen (scraped every 1 s)",
            Mode::Bpftrace => "bpftrace script",
            Mode::NoRequestPath => "ngx-trace --no-request-path",
        }
    }
}

/// The traced modes, in the order of every table.
pub(super) const TRACED_MODES: [Mode; 4] =
    [Mode::Default, Mode::AllJson, Mode::Metrics, Mode::Bpftrace];

impl Bench {
    /// Starts `mode`'s tracer on the front nginx (none for [`Mode::None`]).
    pub(super) fn start(&self, mode: Mode, front: &Nginx) -> Result<Option<Tracer>> {
        let out = self.dir.path().join("tracer.out");
        let file = std::fs::File::create(&out)?;
        let master = front.master_pid().to_string();
        let child = match mode {
            Mode::None => return Ok(None),
            Mode::Default => Command::new(&self.bin)
                .args(["--pid", &master])
                .stdout(file)
                .stderr(Stdio::null())
                .spawn()?,
            Mode::NoRequestPath => Command::new(&self.bin)
                .args(["--no-request-path", "--pid", &master])
                .stdout(file)
                .stderr(Stdio::null())
                .spawn()?,
            Mode::AllJson => Command::new(&self.bin)
                .args(["--all", "--json", "--pid", &master])
                .stdout(file)
                .stderr(Stdio::null())
                .spawn()?,
            Mode::Metrics => Command::new(&self.bin)
                .args(["--pid", &master, "--metrics-listen"])
                .arg(self.metrics_port.to_string())
                .stdout(file)
                .stderr(Stdio::null())
                .spawn()?,
            Mode::Bpftrace => {
                let workers = front.workers();
                Command::new("bpftrace")
                    .arg(&self.script)
                    .args(workers.iter().map(u32::to_string))
                    .stdout(file)
                    .stderr(Stdio::null())
                    .spawn()?
            }
        };
        // Guarded before waiting, so that nothing below can leak it.
        let tracer = Tracer::new(child, out.clone());
        if mode == Mode::Bpftrace {
            // Attached well within this (~1 s).
            std::thread::sleep(Duration::from_millis(2500));
            return Ok(Some(tracer));
        }
        // ngx-trace names the workers it traces once attached (~50 ms
        // here, seconds in an emulated VM).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !std::fs::read_to_string(&out)
            .unwrap_or_default()
            .contains("workers")
        {
            if Instant::now() > deadline {
                bail!("{} did not attach within 60 s", mode.label());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Some(tracer))
    }
}
