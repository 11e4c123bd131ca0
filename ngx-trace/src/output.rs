//! Where events go: JSON Lines or text on stdout, notices on stderr; and,
//! when asked, every event (healthy exchanges too) as JSON Lines to a
//! recording (`--record`) or to memory (live `explain`).
use std::{
    cell::RefCell,
    fs::File,
    io::{self, BufWriter, Write as _},
};

use serde::Serialize;
use serde_json::Value;

/// Prints events as JSON Lines or text; every line is flushed at once so a
/// reader sees events as they happen.
pub struct Output {
    json: bool,
    /// Whether events go to stdout at all (live `explain` prints its own).
    print: bool,
    record: Option<RefCell<BufWriter<File>>>,
    capture: Option<RefCell<Vec<Value>>>,
}

impl Output {
    /// JSON Lines if `json`, else text.
    pub fn new(json: bool) -> Self {
        Self {
            json,
            print: true,
            record: None,
            capture: None,
        }
    }

    /// Nothing on stdout; every event kept for [`Output::take_captured`].
    pub fn capturing() -> Self {
        Self {
            json: true,
            print: false,
            record: None,
            capture: Some(RefCell::new(Vec::new())),
        }
    }

    /// Also writes every event to `file`, after `header`.
    pub fn recording_to(mut self, file: File, header: &impl Serialize) -> io::Result<Self> {
        let mut writer = BufWriter::new(file);
        serde_json::to_writer(&mut writer, header)?;
        writer.write_all(b"\n")?;
        writer.flush()?;
        self.record = Some(RefCell::new(writer));
        Ok(self)
    }

    /// Whether events are JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Whether events nobody sees printed are wanted (recorded or captured).
    pub fn keeps_everything(&self) -> bool {
        self.record.is_some() || self.capture.is_some()
    }

    /// Prints `event` as JSON, or `text` in text mode, and keeps it.
    pub fn event(&self, event: &impl Serialize, text: impl FnOnce() -> String) -> io::Result<()> {
        self.keep(event)?;
        if !self.print {
            return Ok(());
        }
        if self.json {
            self.text(&serde_json::to_string(event).map_err(io::Error::other)?)
        } else {
            self.text(&text())
        }
    }

    /// Keeps `event` in the recording or the capture, without printing it
    /// (a healthy exchange without `--all`).
    pub fn keep(&self, event: &impl Serialize) -> io::Result<()> {
        if let Some(record) = &self.record {
            let mut writer = record.borrow_mut();
            serde_json::to_writer(&mut *writer, event)?;
            writer.write_all(b"\n")?;
        }
        if let Some(capture) = &self.capture {
            capture
                .borrow_mut()
                .push(serde_json::to_value(event).map_err(io::Error::other)?);
        }
        Ok(())
    }

    /// Writes out what the recording holds in memory.
    pub fn flush_record(&self) -> io::Result<()> {
        match &self.record {
            Some(record) => record.borrow_mut().flush(),
            None => Ok(()),
        }
    }

    /// The events captured since the last call.
    pub fn take_captured(&self) -> Vec<Value> {
        self.capture
            .as_ref()
            .map(|c| std::mem::take(&mut *c.borrow_mut()))
            .unwrap_or_default()
    }

    /// Prints `line` as it is (nothing when not printing).
    pub fn text(&self, line: &str) -> io::Result<()> {
        if !self.print {
            return Ok(());
        }
        let mut out = io::stdout().lock();
        out.write_all(line.as_bytes())?;
        if !line.ends_with('\n') {
            out.write_all(b"\n")?;
        }
        out.flush()
    }
}

/// Notices held while a full-screen view owns the terminal (`top`):
/// `None` when they are printed at once.
static HELD: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);

/// A notice for the person running ngx-trace (stderr, so JSON stays clean;
/// held until [`release_notices`] while a full-screen view is up).
pub fn notice(message: &str) {
    let line = format!("ngx-trace: {message}");
    if let Ok(mut held) = HELD.lock()
        && let Some(lines) = held.as_mut()
    {
        if lines.len() < 1000 {
            lines.push(line);
        }
        return;
    }
    eprintln!("{line}");
}

/// Holds notices from now on (a full-screen view took the terminal).
pub fn hold_notices() {
    if let Ok(mut held) = HELD.lock() {
        held.get_or_insert_with(Vec::new);
    }
}

/// Prints the notices held, and prints the next ones at once.
pub fn release_notices() {
    let lines = HELD.lock().ok().and_then(|mut held| held.take());
    for line in lines.unwrap_or_default() {
        eprintln!("{line}");
    }
}
