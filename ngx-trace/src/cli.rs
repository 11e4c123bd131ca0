//! Command-line arguments.
use std::{path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

/// Watches nginx from inside the kernel and explains its upstream failures.
#[derive(Debug, Parser)]
#[command(
    name = "ngx-trace",
    version,
    long_version = crate::commands::version::long_version(),
    about,
    after_help = crate::exit::help()
)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    trace: TraceArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Trace nginx upstream connections live (the default).
    Trace(TraceArgs),
    /// Put the kernel's evidence under each upstream line of nginx's error
    /// log: live (tracing meanwhile), or after the fact from a recording.
    Explain(ExplainArgs),
    /// Advise timeout values from nginx's configuration and the latencies
    /// measured (live until the duration ends or Ctrl-C, or from a
    /// recording).
    Tune(TuneArgs),
    /// A full-screen live view, one row per upstream, refreshed every
    /// second (keys: s sort, / filter, p pause, q quit); line output when
    /// stdout is not a terminal.
    Top(TraceArgs),
    /// The man page or a shell's completions, generated from this command
    /// line's definition (for packaging).
    #[command(hide = true)]
    Generate {
        /// `man`, `bash`, `zsh` or `fish`.
        #[arg(value_parser = ["man", "bash", "zsh", "fish"])]
        what: String,
    },
}

/// What to run.
#[derive(Debug)]
pub enum Mode {
    /// `ngx-trace [trace]`.
    Trace(TraceArgs),
    /// `ngx-trace explain`.
    Explain(ExplainArgs),
    /// `ngx-trace tune`.
    Tune(TuneArgs),
    /// `ngx-trace top`.
    Top(TraceArgs),
    /// `ngx-trace generate`.
    Generate(String),
}

impl TraceArgs {
    /// Fails when export options are given to `mode`, which traces nothing.
    pub fn no_export(&self, mode: &str) -> anyhow::Result<()> {
        if self.metrics_listen.is_some() || self.metrics_file.is_some() {
            return Err(crate::exit::UserError::new(
                crate::exit::USAGE,
                format!(
                    "--metrics-listen and --metrics-file export what tracing measures: `{mode}` \
                     traces nothing (drop them, or trace with `ngx-trace --record FILE` and export \
                     meanwhile)"
                ),
            )
            .into());
        }
        Ok(())
    }

    /// The hooks not to use (`--avoid-hooks`).
    pub fn avoid(&self) -> Vec<crate::kernel::hooks::Avoid> {
        self.avoid_hooks
            .as_ref()
            .map_or_else(Vec::new, |list| list.0.clone())
    }
}

impl Cli {
    /// What to run; tracing options may come after `trace` or without it.
    pub fn mode(self) -> Mode {
        match self.command {
            Some(Command::Trace(args)) => Mode::Trace(args),
            Some(Command::Explain(args)) => Mode::Explain(args),
            Some(Command::Tune(args)) => Mode::Tune(args),
            Some(Command::Top(args)) => Mode::Top(args),
            Some(Command::Generate { what }) => Mode::Generate(what),
            None => Mode::Trace(self.trace),
        }
    }
}

/// Options of `ngx-trace tune`.
#[derive(Debug, Args, Clone)]
pub struct TuneArgs {
    /// Tune from a recording made by `ngx-trace trace --record FILE`
    /// instead of tracing now.
    #[arg(long, value_name = "RECORDING")]
    pub from: Option<PathBuf>,

    /// The share of measured exchanges a recommended timeout may cut.
    #[arg(long, value_name = "R", default_value_t = 0.001, value_parser = parse_rate)]
    pub false_timeout_rate: f64,

    /// The tracing options (live tuning).
    #[command(flatten)]
    pub trace: TraceArgs,
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let rate: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number (a share: 0.001 is 0.1%)"))?;
    if !(rate > 0.0 && rate < 1.0) {
        return Err(format!("`{s}` must be above 0 and below 1 (0.001 is 0.1%)"));
    }
    Ok(rate)
}

/// Options of `ngx-trace explain`.
#[derive(Debug, Args, Clone)]
pub struct ExplainArgs {
    /// The error log to explain (`-`: standard input). Without it: the error
    /// logs of the traced nginx instances (found from the files they hold
    /// open), followed live while tracing.
    #[arg(value_name = "LOG")]
    pub log: Option<PathBuf>,

    /// Read LOG as nginx writes to it, tracing meanwhile (surviving log
    /// rotation, like `tail -F`).
    #[arg(long, conflicts_with = "from")]
    pub follow: bool,

    /// Explain LOG with a recording made by `ngx-trace trace --record FILE`
    /// instead of tracing now.
    #[arg(long, value_name = "RECORDING", requires = "log")]
    pub from: Option<PathBuf>,

    /// The tracing options (live explain).
    #[command(flatten)]
    pub trace: TraceArgs,
}

/// Options of `ngx-trace trace`.
#[derive(Debug, Args, Clone)]
pub struct TraceArgs {
    /// Trace only the nginx instance this pid belongs to (master or worker);
    /// default: every nginx on the host, including ones started later.
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,

    /// Print JSON Lines (one object per event) instead of text.
    #[arg(long)]
    pub json: bool,

    /// Print every exchange, healthy ones too (default: failed or slow ones).
    #[arg(long)]
    pub all: bool,

    /// nginx's configuration as a saved `nginx -T` dump (default: each traced
    /// instance's own files, read as data with its master's rights).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Also write every event, healthy exchanges included, as JSON Lines to
    /// FILE (a new file, created with mode 0600), for `ngx-trace explain LOG
    /// --from FILE` later.
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,

    /// First-byte wait, in ms, from which a backend counts as slow; exchanges
    /// waiting this long are reported while they wait.
    #[arg(long, value_name = "MS", default_value_t = 1000, value_parser = parse_slow_ms)]
    pub slow: u64,

    /// Print latency histograms every SECS seconds (0: only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 10, value_parser = parse_interval)]
    pub interval: u64,

    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,

    /// Load and attach everything, report the hooks and kernel features in
    /// use, and exit (0 when all is well): a check for a new host.
    #[arg(long)]
    pub check: bool,

    /// Hook kinds not to use, comma separated (tp_btf, tracepoint, fentry,
    /// fexit, kprobe, kretprobe), each everywhere or on one target
    /// (`tp_btf:signal_generate`): each capability falls back to the next
    /// mechanism, as on a kernel that lacks these (`--check` shows the
    /// choice). For a kernel whose trampolines misbehave, and for testing
    /// the fallbacks.
    #[arg(
        long,
        value_name = "KINDS",
        env = "NGX_TRACE_AVOID_HOOKS",
        value_parser = crate::kernel::hooks::parse_avoid
    )]
    pub avoid_hooks: Option<crate::kernel::hooks::HookList>,

    /// Copy nothing of the requests nginx writes upstream: exchanges then
    /// carry no method and path (by default the kernel copies the start of
    /// each request, and ngx-trace keeps its method and path alone, never
    /// the query string).
    #[arg(long)]
    pub no_request_path: bool,

    /// Serve Prometheus metrics at http://ADDR/metrics (OpenMetrics when the
    /// scraper asks for it, else Prometheus text). A port alone listens on
    /// 127.0.0.1; any other address must be written out (`0.0.0.0:9438`).
    #[arg(long, value_name = "ADDR", value_parser = crate::report::metrics_http::parse_listen)]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Write the metrics to FILE every second, atomically, in Prometheus
    /// text (for node_exporter's textfile collector: name it `*.prom`).
    #[arg(long, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,

    /// Distinct upstream servers labelled in the metrics; later ones are
    /// counted as `server="other"` (and counted in
    /// `ngxtrace_folded_servers`).
    #[arg(long, value_name = "N", default_value_t = 200)]
    pub metrics_max_servers: usize,

    /// Process name of nginx (its task comm), for renamed builds.
    #[arg(long, value_name = "NAME", default_value = "nginx", value_parser = parse_comm)]
    pub comm: String,
}

/// The longest `--duration` or `--interval`, in seconds: one year. Far
/// beyond any real use, and far below what overflows a `Duration` or a
/// tokio deadline (`Instant::now() + interval` panics on overflow).
pub const MAX_SECS: u64 = 365 * 24 * 3600;

/// The longest `--slow`, in ms: one year too. Keeps `slow * 1000` (µs)
/// exact instead of saturated.
pub const MAX_SLOW_MS: u64 = MAX_SECS * 1000;

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    // Checked before converting: `Duration::from_secs_f64` panics on huge values.
    if secs > MAX_SECS as f64 {
        return Err(format!("too long: at most {MAX_SECS} seconds (one year)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_interval(s: &str) -> Result<u64, String> {
    let secs: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of seconds (0: only at exit)"))?;
    if secs > MAX_SECS {
        return Err(format!(
            "too long: at most {MAX_SECS} seconds (one year; 0: only at exit)"
        ));
    }
    Ok(secs)
}

fn parse_slow_ms(s: &str) -> Result<u64, String> {
    let ms: u64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a whole number of milliseconds"))?;
    if ms > MAX_SLOW_MS {
        return Err(format!("too long: at most {MAX_SLOW_MS} ms (one year)"));
    }
    Ok(ms)
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.contains('/') {
        return Err("a process name has 1 to 15 bytes and no `/`".into());
    }
    Ok(s.to_string())
}

/// Writes the man page (`man`) or the completions of shell `what` to
/// stdout, from the command line's own definition.
pub fn generate(what: &str) -> std::io::Result<()> {
    use clap::CommandFactory as _;
    let mut command = Cli::command();
    let mut out = std::io::stdout().lock();
    let shell = match what {
        // The long version describes the kernel it runs on: not the
        // package's build machine's in a man page.
        "man" => {
            return clap_mangen::Man::new(command.long_version(None::<&'static str>))
                .render(&mut out);
        }
        "bash" => clap_complete::Shell::Bash,
        "zsh" => clap_complete::Shell::Zsh,
        _ => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command, "ngx-trace", &mut out);
    Ok(())
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::Hook;

    use crate::kernel::hooks::Avoid;

    use super::*;

    fn parse(args: &[&str]) -> Result<TraceArgs, clap::Error> {
        Cli::try_parse_from(args).map(|cli| match cli.mode() {
            Mode::Trace(args) => args,
            Mode::Explain(args) => args.trace,
            Mode::Tune(args) => args.trace,
            Mode::Top(args) => args,
            Mode::Generate(_) => unreachable!("no tracing options"),
        })
    }

    #[test]
    fn avoid_hooks_takes_a_comma_separated_list() {
        let args = parse(&["ngx-trace", "--avoid-hooks", "fentry,fexit"]).unwrap();
        assert_eq!(
            args.avoid(),
            [Avoid::kind(Hook::FEntry), Avoid::kind(Hook::FExit)]
        );
        let err = parse(&["ngx-trace", "--avoid-hooks", "fentry,trampoline"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown hook kind `trampoline`"), "{err}");
    }

    #[test]
    fn trace_is_the_default_subcommand() {
        let plain = parse(&["ngx-trace", "--json", "--pid", "42"]).unwrap();
        let explicit = parse(&["ngx-trace", "trace", "--json", "--pid", "42"]).unwrap();
        assert!(plain.json && explicit.json);
        assert_eq!(plain.pid, Some(42));
        assert_eq!(explicit.pid, Some(42));
    }

    #[test]
    fn duration_accepts_fractions_and_rejects_nonsense() {
        let args = parse(&["ngx-trace", "--duration", "1.5"]).unwrap();
        assert_eq!(args.duration, Some(Duration::from_millis(1500)));
        assert!(parse(&["ngx-trace", "--duration", "0"]).is_err());
        assert!(parse(&["ngx-trace", "--duration", "soon"]).is_err());
    }

    /// `args` fails as a bad value, with one line naming `option` and `limit`.
    fn assert_rejected(args: &[&str], option: &str, limit: &str) {
        let err = parse(args).expect_err("out of range");
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let text = err.to_string();
        let first = text.lines().next().unwrap_or_default();
        assert!(first.contains(option) && first.contains(limit), "{text}");
    }

    #[test]
    fn huge_durations_are_refused_not_a_panic() {
        for huge in ["1e20", "31536000.5", "1e308", "18446744073709551615"] {
            assert_rejected(
                &["ngx-trace", "--duration", huge],
                "--duration",
                "31536000 seconds",
            );
        }
        let year = parse(&["ngx-trace", "--duration", "31536000"]).unwrap();
        assert_eq!(year.duration, Some(Duration::from_secs(MAX_SECS)));
        assert!(parse(&["ngx-trace", "--duration", "inf"]).is_err());
        assert!(parse(&["ngx-trace", "--duration", "NaN"]).is_err());
    }

    #[test]
    fn huge_intervals_are_refused_not_a_panic() {
        for huge in ["18446744073709551615", "31536001"] {
            assert_rejected(
                &["ngx-trace", "--interval", huge],
                "--interval",
                "31536000 seconds",
            );
        }
        let err = parse(&["ngx-trace", "--interval", "18446744073709551616"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        assert_eq!(parse(&["ngx-trace"]).unwrap().interval, 10);
        assert_eq!(
            parse(&["ngx-trace", "--interval", "0"]).unwrap().interval,
            0
        );
        let year = parse(&["ngx-trace", "trace", "--interval", "31536000"]).unwrap();
        assert_eq!(year.interval, MAX_SECS);
        // What `pump` does with it must not overflow.
        let _ = tokio::time::Instant::now() + Duration::from_secs(year.interval);
    }

    #[test]
    fn huge_slow_thresholds_are_refused_not_saturated() {
        for huge in ["18446744073709551615", "31536000001"] {
            assert_rejected(&["ngx-trace", "--slow", huge], "--slow", "31536000000 ms");
        }
        assert_eq!(parse(&["ngx-trace"]).unwrap().slow, 1000);
        let year = parse(&["ngx-trace", "--slow", "31536000000"]).unwrap();
        assert!(year.slow.checked_mul(1000).is_some());
    }

    #[test]
    fn help_lists_the_exit_codes() {
        use clap::CommandFactory as _;
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains(&crate::exit::help()), "{help}");
    }

    #[test]
    fn comm_must_fit_a_task_name() {
        assert_eq!(parse(&["ngx-trace"]).unwrap().comm, "nginx");
        assert!(parse(&["ngx-trace", "--comm", "a-very-long-process-name"]).is_err());
    }
}
