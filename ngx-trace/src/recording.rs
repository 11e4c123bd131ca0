//! Recordings (`trace --record FILE`): every event as the JSON Lines output
//! has it, healthy exchanges included, after a header line that says when
//! the recording started and the local time nginx writes its log in.
use std::{
    io::{BufRead as _, BufReader},
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
