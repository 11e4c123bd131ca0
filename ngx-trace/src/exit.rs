//! Exit codes, and the error type that carries one to `main`.
use std::fmt;

/// Everything went well.
pub const OK: i32 = 0;
/// A failure not covered below (see the message).
pub const FAILURE: i32 = 1;
/// Bad command line (clap's own code).
pub const USAGE: i32 = 2;
/// Not root, or missing CAP_BPF / CAP_PERFMON.
pub const PRIVILEGES: i32 = 3;
/// The kernel lacks something needed: tracefs, a tracepoint, BPF support.
pub const KERNEL: i32 = 4;
/// `--pid` names no process, or a process that is not nginx.
pub const NO_SUCH_NGINX: i32 = 5;

/// Text for `--help`.
pub const HELP: &str = "\
Exit codes:
  0  success (also when stdout is closed early)
  1  runtime failure
  2  bad command line
  3  not root, or missing CAP_BPF and CAP_PERFMON
  4  kernel lacks tracefs, a needed tracepoint, or BPF support
  5  --pid is not a running nginx process";

/// An error the user can act on, with the exit code that documents it.
#[derive(Debug)]
pub struct UserError {
    /// One of the codes above.
    pub code: i32,
    /// One sentence: what failed and what to do.
    pub message: String,
}

impl UserError {
    /// A new error with `code`.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for UserError {}

/// The exit code for an error: the first [`UserError`] in its chain, else 1.
pub fn code_of(err: &anyhow::Error) -> i32 {
    err.chain()
        .find_map(|e| e.downcast_ref::<UserError>())
        .map_or(FAILURE, |e| e.code)
}
