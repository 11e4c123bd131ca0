//! Where events go: JSON Lines or text on stdout, notices on stderr.
use std::io::{self, Write as _};

use serde::Serialize;

/// Prints events as JSON Lines or text; every line is flushed at once so a
/// reader sees events as they happen.
pub struct Output {
    json: bool,
}

impl Output {
    /// JSON Lines if `json`, else text.
    pub fn new(json: bool) -> Self {
        Self { json }
    }

    /// Whether events are JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints `event` as JSON, or `text` in text mode.
    pub fn event(&self, event: &impl Serialize, text: impl FnOnce() -> String) -> io::Result<()> {
        if self.json {
            self.text(&serde_json::to_string(event).map_err(io::Error::other)?)
        } else {
            self.text(&text())
        }
    }

    /// Prints `line` as it is.
    pub fn text(&self, line: &str) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(line.as_bytes())?;
        if !line.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

/// A notice for the person running ngx-trace (stderr, so JSON stays clean).
pub fn notice(message: &str) {
    eprintln!("ngx-trace: {message}");
}
