//! What a failed program load means: a verifier rejection is a bug in
//! ngx-trace (exit 1, its log saved for the report), anything else a kernel
//! that lacks something (exit 4).
use std::{
    io::{self, Write as _},
    path::PathBuf,
};

use aya::programs::ProgramError;

use crate::exit::{self, UserError};

/// The error for a failed load of `program`. A load the verifier rejected
/// (it left a log) is a bug in ngx-trace, not a kernel that lacks something:
/// exit 1, with the log saved by `save_log` for the bug report. Any other
/// failure (no privileges, a kernel without the program type) is exit 4.
pub fn load_error(
    program: &str,
    err: &ProgramError,
    save_log: impl FnOnce(&str, &str) -> Result<PathBuf, String>,
) -> UserError {
    let rejected = match err {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => Some((io_error, verifier_log.to_string())),
        _ => None,
    };
    classify_load_error(
        program,
        err,
        rejected.as_ref().map(|(io, log)| (*io, log.as_str())),
        save_log,
    )
}

/// [`load_error`] once the verifier's part is taken out of aya's error
/// (`rejected`: the syscall's error and the verifier log), so that it can be
/// tested without a kernel.
fn classify_load_error(
    program: &str,
    err: &dyn std::fmt::Display,
    rejected: Option<(&io::Error, &str)>,
    save_log: impl FnOnce(&str, &str) -> Result<PathBuf, String>,
) -> UserError {
    match rejected {
        Some((io_error, log)) if !log.trim().is_empty() => {
            let report = match save_log(program, log) {
                Ok(path) => format!("the verifier log saved in {}", path.display()),
                // The log is too long for one sentence: say why it is missing.
                Err(why) => format!(
                    "your kernel version and this message (the verifier log could not be saved: {why})"
                ),
            };
            UserError::new(
                exit::FAILURE,
                format!(
                    "the kernel's BPF verifier rejected program {program} ({io_error}): \
                     this is a bug in ngx-trace, please report it with {report}"
                ),
            )
        }
        _ => UserError::new(
            exit::KERNEL,
            format!(
                "the kernel refused program {program}: {err} (this kernel lacks a feature it \
                 needs: run `ngx-trace --check` and see the README's requirements)"
            ),
        ),
    }
}

/// Writes the verifier's `log` for `program` to a new file in the temporary
/// directory and returns its path; an error names the file and the cause.
pub fn save_verifier_log(program: &str, log: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::OpenOptionsExt as _;

    let name: String = program
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let path = std::env::temp_dir().join(format!(
        "ngx-trace-verifier-{name}-{}.log",
        std::process::id()
    ));
    // We run as root in a world-writable directory: never follow or reuse
    // what is there (a planted symlink), create the file anew.
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
    };
    let mut file = match create() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            // A leftover of an earlier run with the same pid.
            std::fs::remove_file(&path).and_then(|()| create())
        }
        other => other,
    }
    .map_err(|e| format!("failed to create {}: {e}", path.display()))?;
    file.write_all(log.as_bytes())
        .map_err(|e| format!("failed to write {}: {e}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the 6.x verifier prints when a program reads past a bounds check.
    const VERIFIER_LOG: &str = "\
func#0 @0
0: R1=ctx() R10=fp0
; let sk = unsafe { (*ctx).skaddr }; @ exchange.rs:212
0: (79) r6 = *(u64 *)(r1 +8)          ; R1=ctx() R6_w=scalar()
1: (bf) r2 = r10                      ; R2_w=fp0 R10=fp0
2: (07) r2 += -8                      ; R2_w=fp-8
3: (b7) r3 = 64                       ; R3_w=64
4: (85) call bpf_probe_read_kernel#113
invalid indirect access to stack R2 off=-8 size=64
processed 5 insns (limit 1000000) max_states_per_insn 0 total_states 0 peak_states 0 mark_read 0
";

    #[test]
    fn a_verifier_rejection_is_a_bug_report_with_the_log_saved() {
        let io_error = io::Error::from_raw_os_error(libc::EACCES);
        let mut saved = None;
        let err = classify_load_error(
            "tp_exchange",
            &"the BPF_PROG_LOAD syscall returned Permission denied",
            Some((&io_error, VERIFIER_LOG)),
            |program, log| {
                saved = Some((program.to_string(), log.to_string()));
                Ok(PathBuf::from("/tmp/ngx-trace-verifier-tp_exchange-42.log"))
            },
        );
        assert_eq!(err.code, exit::FAILURE);
        assert_eq!(
            saved,
            Some(("tp_exchange".to_string(), VERIFIER_LOG.to_string())),
            "the whole log is saved"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("the kernel's BPF verifier rejected program tp_exchange (")
                && message.contains("Permission denied")
                && message.contains("this is a bug in ngx-trace, please report it")
                && message.ends_with("/tmp/ngx-trace-verifier-tp_exchange-42.log"),
            "{message}"
        );
        assert_eq!(message.lines().count(), 1, "{message}");
    }

    /// aya's own error, as a failed `BPF_PROG_LOAD` returns it.
    fn aya_load_error(errno: i32, log: &str) -> ProgramError {
        ProgramError::LoadError {
            io_error: io::Error::from_raw_os_error(errno),
            verifier_log: aya_obj::VerifierLog::new(log.to_string()),
        }
    }

    #[test]
    fn aya_load_errors_are_told_apart_by_their_verifier_log() {
        let mut saved = None;
        let err = load_error(
            "tp_exchange",
            &aya_load_error(libc::EACCES, VERIFIER_LOG),
            |_, log| {
                saved = Some(log.to_string());
                Ok(PathBuf::from("/tmp/ngx-trace-verifier-tp_exchange-42.log"))
            },
        );
        assert_eq!(err.code, exit::FAILURE, "{}", err.message);
        assert_eq!(saved.as_deref(), Some(VERIFIER_LOG));
        assert_eq!(
            err.message,
            format!(
                "the kernel's BPF verifier rejected program tp_exchange ({}): this is a bug in \
                 ngx-trace, please report it with the verifier log saved in \
                 /tmp/ngx-trace-verifier-tp_exchange-42.log",
                io::Error::from_raw_os_error(libc::EACCES)
            )
        );

        let err = load_error("tp_connect", &aya_load_error(libc::EPERM, ""), |_, _| {
            panic!("nothing to save")
        });
        assert_eq!(err.code, exit::KERNEL, "{}", err.message);
        assert!(
            err.message
                .starts_with("the kernel refused program tp_connect: "),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_unsaved_verifier_log_is_said_so() {
        let io_error = io::Error::from_raw_os_error(libc::EINVAL);
        let err = classify_load_error(
            "tp_exchange",
            &"load failed",
            Some((&io_error, VERIFIER_LOG)),
            |_, _| Err("failed to create /tmp/x.log: No space left on device".into()),
        );
        assert_eq!(err.code, exit::FAILURE);
        assert!(
            err.message.contains("could not be saved")
                && err.message.contains("No space left on device"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_load_error_without_verifier_log_stays_a_kernel_error() {
        let io_error = io::Error::from_raw_os_error(libc::EPERM);
        for log in ["", "\n"] {
            let err = classify_load_error(
                "tp_connect",
                &"the BPF_PROG_LOAD syscall returned Operation not permitted",
                Some((&io_error, log)),
                |_, _| panic!("nothing to save"),
            );
            assert_eq!(err.code, exit::KERNEL);
            assert!(
                err.message
                    .starts_with("the kernel refused program tp_connect: the BPF_PROG_LOAD"),
                "{}",
                err.message
            );
        }
        // Errors before the syscall (the BTF target missing, say) too.
        let err = load_error("tp_connect", &ProgramError::NotLoaded, |_, _| {
            panic!("nothing to save")
        });
        assert_eq!(err.code, exit::KERNEL);
    }

    #[test]
    fn the_verifier_log_is_saved_in_a_new_file() {
        let program = format!("test_{}", std::process::id());
        let path = save_verifier_log(&program, VERIFIER_LOG).expect("saved");
        let again = save_verifier_log(&program, "second run").expect("replaced");
        assert_eq!(path, again);
        let text = std::fs::read_to_string(&path).expect("readable");
        let _ = std::fs::remove_file(&path);
        assert_eq!(text, "second run");
        assert!(
            path.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ngx-trace-verifier-test_"),
            "{path:?}"
        );
    }
}
