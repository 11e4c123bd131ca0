//! ngx-trace: explains nginx upstream failures from inside the kernel.
//!
//! The tree is the pipeline: `kernel/` (checks, BTF and tracefs, hooks,
//! load and attach, the ring-buffer drain and record decode) → `nginx/`
//! (processes, configuration, error logs, backends) → `diagnosis/`
//! (timings, verdicts, fates, causes, the log join) → `report/` (events,
//! output, summary, histograms, metrics) → `commands/` (trace and its
//! session, top, explain, tune, version). Dependencies run that way only.
//! Every stage stands on `exit` (errors and exit codes), `notice` (the
//! operator's notices), `sanitize` (untrusted text made safe), `human`
//! (numbers as people read them), `capped` (bounded per-name tables) and
//! `slow` (the side thread for work that may take long); this file parses
//! the arguments, dispatches and maps errors to exit codes.

mod capped;
mod cli;
mod commands;
mod diagnosis;
mod exit;
#[cfg(test)]
mod fuzz;
mod human;
mod kernel;
mod nginx;
mod notice;
mod report;
mod sanitize;
mod slow;

use std::io::{self, IsTerminal as _};

use clap::Parser as _;

use crate::{
    cli::{Cli, Mode},
    commands::{explain, top, trace::trace, tune},
};

fn main() {
    let mode = match Cli::try_parse() {
        Ok(cli) => cli.mode(),
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ngx-trace: failed to start the async runtime: {e}");
            std::process::exit(exit::FAILURE);
        }
    };
    let result = match mode {
        Mode::Trace(args) => runtime.block_on(trace(args, None)),
        Mode::Explain(args) => match (&args.log, args.follow) {
            (Some(log), false) => args.trace.no_export("explain LOG").and_then(|()| {
                explain::offline(
                    log,
                    args.from.as_deref(),
                    args.trace.config.as_deref(),
                    args.trace.json,
                )
            }),
            _ => {
                let live = explain::Live::new(
                    args.log.clone(),
                    args.trace.config.clone(),
                    args.trace.json,
                );
                runtime.block_on(trace(args.trace, Some(Box::new(live))))
            }
        },
        Mode::Generate(what) => cli::generate(&what).map_err(anyhow::Error::from),
        Mode::Top(args) => {
            if io::stdout().is_terminal() {
                runtime.block_on(trace(args, Some(Box::new(top::Top::new()))))
            } else {
                notice::notice(
                    "stdout is not a terminal: printing one line per failure instead of the \
                     live view",
                );
                runtime.block_on(trace(args, None))
            }
        }
        Mode::Tune(args) => match &args.from {
            Some(from) => args.trace.no_export("tune --from").and_then(|()| {
                tune::from_recording(
                    from,
                    args.trace.config.as_deref(),
                    &args.trace.comm,
                    args.false_timeout_rate,
                    args.trace.json,
                )
            }),
            None => {
                let watcher = tune::TuneLive::new(
                    args.false_timeout_rate,
                    args.trace.config.clone(),
                    args.trace.json,
                );
                runtime.block_on(trace(args.trace, Some(Box::new(watcher))))
            }
        },
    };
    match result {
        Ok(()) => std::process::exit(exit::OK),
        Err(err) => {
            if exit::is_broken_pipe(&err) {
                std::process::exit(exit::OK);
            }
            // Errors can quote what a traced process chose (a path, a
            // name): escaped like every other line for the terminal.
            eprintln!("ngx-trace: {}", sanitize::line(&format!("{err:#}")));
            std::process::exit(exit::code_of(&err));
        }
    }
}
