//! Exit codes, and the error type that carries one to `main`.
use std::{fmt, io};

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

/// Every exit code with its meaning, in order: the one source of the
/// `--help` text, so the two cannot drift apart.
pub const CODES: &[(i32, &str)] = &[
    (OK, "success (also when stdout is closed early)"),
    (
        FAILURE,
        "runtime failure, or a program the BPF verifier rejected (a bug: please report it)",
    ),
    (USAGE, "bad command line"),
    (PRIVILEGES, "not root, or missing CAP_BPF and CAP_PERFMON"),
    (
        KERNEL,
        "the kernel lacks tracefs, a needed tracepoint, BTF or BPF support",
    ),
    (NO_SUCH_NGINX, "--pid is not a running nginx process"),
];

/// The exit-code section of `--help`, built from [`CODES`].
pub fn help() -> String {
    let mut text = String::from("Exit codes:");
    for (code, meaning) in CODES {
        text.push_str(&format!("\n  {code}  {meaning}"));
    }
    text
}

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

/// Whether `err` is a write to a closed pipe (`ngx-trace | head`): a
/// normal end, exit 0.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|e| e.downcast_ref::<io::Error>())
        .any(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_every_code_with_its_number() {
        let help = help();
        for code in [OK, FAILURE, USAGE, PRIVILEGES, KERNEL, NO_SUCH_NGINX] {
            let (_, meaning) = CODES
                .iter()
                .find(|(c, _)| *c == code)
                .unwrap_or_else(|| panic!("exit code {code} is missing from CODES"));
            assert!(
                help.lines().any(|l| l == format!("  {code}  {meaning}")),
                "{help}"
            );
        }
        assert_eq!(help.lines().count(), CODES.len() + 1, "{help}");
    }

    #[test]
    fn codes_are_distinct_and_in_order() {
        assert!(CODES.windows(2).all(|w| w[0].0 < w[1].0), "{CODES:?}");
    }
}
