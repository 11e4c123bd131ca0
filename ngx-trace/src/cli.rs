//! Command-line arguments.
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Watches nginx from inside the kernel and explains its upstream failures.
#[derive(Debug, Parser)]
#[command(name = "ngx-trace", version, about, after_help = crate::exit::HELP)]
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
}

impl Cli {
    /// The tracing options, whether given after `trace` or without it.
    pub fn trace_args(self) -> TraceArgs {
        match self.command {
            Some(Command::Trace(args)) => args,
            None => self.trace,
        }
    }
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

    /// First-byte wait, in ms, from which a backend counts as slow; exchanges
    /// waiting this long are reported while they wait.
    #[arg(long, value_name = "MS", default_value_t = 1000)]
    pub slow: u64,

    /// Print latency histograms every SECS seconds (0: only at exit).
    #[arg(long, value_name = "SECS", default_value_t = 10)]
    pub interval: u64,

    /// Stop after this many seconds (default: until Ctrl-C or SIGTERM).
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub duration: Option<Duration>,

    /// Load and attach everything, report the hooks and kernel features in
    /// use, and exit (0 when all is well): a check for a new host.
    #[arg(long)]
    pub check: bool,

    /// Process name of nginx (its task comm), for renamed builds.
    #[arg(long, value_name = "NAME", default_value = "nginx", value_parser = parse_comm)]
    pub comm: String,
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("`{s}` must be a positive number of seconds"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn parse_comm(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 15 || s.contains('/') {
        return Err("a process name has 1 to 15 bytes and no `/`".into());
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<TraceArgs, clap::Error> {
        Cli::try_parse_from(args).map(Cli::trace_args)
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

    #[test]
    fn comm_must_fit_a_task_name() {
        assert_eq!(parse(&["ngx-trace"]).unwrap().comm, "nginx");
        assert!(parse(&["ngx-trace", "--comm", "a-very-long-process-name"]).is_err());
    }
}
