//! Recordings (`trace --record FILE`): every event as the JSON Lines output
//! has it, healthy exchanges included, after a header line that says when
//! the recording started and the local time nginx writes its log in.
use std::{
    fs::File,
    io::{self, BufRead as _, BufReader},
    os::unix::fs::OpenOptionsExt as _,
    path::Path,
    time::SystemTime,
};

use anyhow::{Context as _, Result};
use serde::Serialize;
use serde_json::Value;

use crate::exit::{self, UserError};

/// The first line of a recording.
#[derive(Debug, Serialize)]
pub struct Header {
    /// Always `"recording"`.
    pub event: &'static str,
    /// The format's version.
    pub version: u32,
    /// When tracing started, RFC 3339 UTC.
    pub started: String,
    /// How far nginx's local time (its error log's clock) is ahead of UTC,
    /// seconds.
    pub utc_offset_s: i64,
}

/// A recording read back.
pub struct Recording {
    /// When it started.
    pub started: SystemTime,
    /// nginx's local time offset then.
    pub utc_offset_s: i64,
    /// Its events, in order.
    pub events: Vec<Value>,
}

/// Creates the recording file `path`, new, readable by root alone (it
/// holds every upstream exchange: addresses, paths, error lines). ngx-trace
/// runs as root, perhaps in a directory others can write: it never follows
/// a symbolic link there, nor reuses a file (a planted link would have root
/// overwrite its target). Call it before tracing starts, so that a name
/// taken fails at once.
pub fn create(path: &Path) -> Result<File> {
    check_new(path)?;
    std::fs::OpenOptions::new()
        .write(true)
        // O_CREAT | O_EXCL, and O_EXCL also refuses a symbolic link there.
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => UserError::new(
                exit::USAGE,
                format!(
                    "the recording {} exists already: remove it, or give --record another name \
                     (ngx-trace never overwrites a file, nor writes through a symbolic link)",
                    path.display()
                ),
            )
            .into(),
            _ => anyhow::Error::new(e).context(format!(
                "failed to create the recording {}: check the directory and its permissions",
                path.display()
            )),
        })
}

/// Fails, as [`create`] would, when something is at `path` already (a
/// file, or a symbolic link, dangling or not): to say so before tracing
/// starts.
pub fn check_new(path: &Path) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(UserError::new(
            exit::USAGE,
            format!(
                "the recording {} exists already: remove it, or give --record another name \
                 (ngx-trace never overwrites a file, nor writes through a symbolic link)",
                path.display()
            ),
        )
        .into());
    }
    Ok(())
}

/// Reads the recording at `path`; its lines that are not events are
/// counted in `bad_lines`, never fatal.
pub fn load(path: &Path) -> Result<(Recording, usize)> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("failed to open the recording {}", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let not_one = || {
        UserError::new(
            exit::USAGE,
            format!(
                "{} is not an ngx-trace recording (its first line is not \
                 {{\"event\":\"recording\",...}}): make one with `ngx-trace trace --record FILE`",
                path.display()
            ),
        )
    };
    let first = lines
        .next()
        .transpose()
        .with_context(|| format!("failed to read {}", path.display()))?
        .ok_or_else(not_one)?;
    let header: Value = serde_json::from_str(&first).map_err(|_| not_one())?;
    if header["event"] != "recording" {
        return Err(not_one().into());
    }
    let started = header["started"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339(t).ok())
        .ok_or_else(not_one)?;
    let mut events = Vec::new();
    let mut bad = 0;
    for line in lines {
        let line = line.with_context(|| format!("failed to read {}", path.display()))?;
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v.get("event").is_some() => events.push(v),
            _ => bad += 1,
        }
    }
    Ok((
        Recording {
            started,
            utc_offset_s: header["utc_offset_s"].as_i64().unwrap_or(0),
            events,
        },
        bad,
    ))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A new empty directory for one test.
    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir =
            std::env::temp_dir().join(format!("ngx-trace-recording-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_new_recording_is_readable_by_root_alone() {
        let dir = temp_dir("new");
        let path = dir.join("trace.jsonl");
        create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_existing_file_is_refused_and_left_as_it_was() {
        let dir = temp_dir("exists");
        let path = dir.join("trace.jsonl");
        std::fs::write(&path, "keep me\n").unwrap();
        let err = create(&path).unwrap_err();
        let user = err.downcast_ref::<UserError>().expect("a user error");
        assert_eq!(user.code, exit::USAGE);
        assert!(user.message.contains(&path.display().to_string()), "{user}");
        assert!(user.message.contains("remove it"), "{user}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_symbolic_link_is_refused_and_its_target_left_as_it_was() {
        let dir = temp_dir("link");
        let target = dir.join("shadow");
        std::fs::write(&target, "root:x:0:\n").unwrap();
        let link = dir.join("trace.jsonl");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        assert!(create(&link).is_err());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "root:x:0:\n");
        // A dangling link is not followed to create its target either.
        let dangling = dir.join("dangling.jsonl");
        std::os::unix::fs::symlink(dir.join("created"), &dangling).unwrap();
        assert!(create(&dangling).is_err());
        assert!(!dir.join("created").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
