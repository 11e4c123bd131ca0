//! Where events go: JSON Lines or text on stdout, notices on stderr; and,
//! when asked, every event (healthy exchanges too) as JSON Lines to a
//! recording (`--record`) or to memory (live `explain`).
//!
//! Text reaches a terminal, and holds what traced processes chose (socket
//! paths, `comm` names, error-log lines): every text line and notice is
//! escaped by [`crate::sanitize`] here, where it is written, so that no
//! formatter has to remember it. JSON is escaped by its encoder.
use std::{
    borrow::Cow,
    cell::RefCell,
    fs::File,
    io::{self, BufWriter, Write as _},
};

use serde::Serialize;
use serde_json::Value;

use crate::sanitize;

/// The text of an event or report, and where its lines break: escaping
/// keeps the program's own line breaks and turns every other newline (one
/// inside a socket path) into a visible `\n`, so it cannot start a line of
/// its own.
#[derive(Debug, Clone, PartialEq)]
pub enum Text {
    /// One line (an event; a `String` is one): a newline in it is data.
    Line(String),
    /// Several lines (a report), each escaped on its own: a newline inside
    /// one of its fields cannot be told from a line break, so [`Text::Rows`]
    /// is better for a report that shows untrusted names.
    Lines(String),
    /// Several lines given one by one: a newline in one is data.
    Rows(Vec<String>),
}

impl From<String> for Text {
    fn from(line: String) -> Self {
        Text::Line(line)
    }
}

impl Text {
    /// What it says, unescaped, its rows joined by newlines.
    pub fn raw(&self) -> Cow<'_, str> {
        match self {
            Text::Line(s) | Text::Lines(s) => Cow::Borrowed(s),
            Text::Rows(rows) => Cow::Owned(rows.join("\n")),
        }
    }

    /// As printed: each line escaped, the lines joined by newlines.
    pub fn escaped(&self) -> Cow<'_, str> {
        match self {
            Text::Line(s) => sanitize::line(s),
            Text::Lines(s) => sanitize::lines(s),
            Text::Rows(rows) => Cow::Owned(
                rows.iter()
                    .map(|r| sanitize::line(r))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        }
    }
}

/// What [`Output::text`] prints: a report (`str`, `String`), whose newlines
/// end its lines, or a [`Text`] (one event's line from folding).
pub trait Printable {
    /// As printed, escaped.
    fn escaped(&self) -> Cow<'_, str>;
}

impl Printable for str {
    fn escaped(&self) -> Cow<'_, str> {
        sanitize::lines(self)
    }
}

impl Printable for String {
    fn escaped(&self) -> Cow<'_, str> {
        sanitize::lines(self)
    }
}

impl Printable for Text {
    fn escaped(&self) -> Cow<'_, str> {
        Text::escaped(self)
    }
}

/// The bytes a text line is printed as: escaped, then ended by a newline.
fn printed(text: &(impl Printable + ?Sized)) -> String {
    let mut line = text.escaped().into_owned();
    if !line.ends_with('\n') {
        line.push('\n');
    }
    line
}

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

    /// Prints `event` as JSON, or `text` in text mode, and keeps it. The
    /// text is one line (a newline in it is escaped) unless it is a
    /// [`Text::Lines`] or [`Text::Rows`].
    pub fn event<T: Into<Text>>(
        &self,
        event: &impl Serialize,
        text: impl FnOnce() -> T,
    ) -> io::Result<()> {
        self.keep(event)?;
        if !self.print {
            return Ok(());
        }
        if self.json {
            let json = serde_json::to_string(event).map_err(io::Error::other)?;
            self.write(json + "\n")
        } else {
            self.write(printed(&text().into()))
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

    /// Prints `text`, escaped (nothing when not printing): a report's
    /// lines, or one event's line given as a [`Text`].
    pub fn text<T: Printable + ?Sized>(&self, text: &T) -> io::Result<()> {
        if !self.print {
            return Ok(());
        }
        self.write(printed(text))
    }

    fn write(&self, bytes: String) -> io::Result<()> {
        let mut out = io::stdout().lock();
        out.write_all(bytes.as_bytes())?;
        out.flush()
    }
}

/// Notices held while a full-screen view owns the terminal (`top`):
/// `None` when they are printed at once.
static HELD: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);

/// A notice for the person running ngx-trace (stderr, so JSON stays clean;
/// held until [`release_notices`] while a full-screen view is up): one
/// line, escaped (it may name a path a traced process chose).
pub fn notice(message: &str) {
    let line = notice_line(message);
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

/// A notice as printed: named, on one line, escaped.
fn notice_line(message: &str) -> String {
    format!("ngx-trace: {}", sanitize::line(message))
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

#[cfg(test)]
mod tests {
    use ngx_trace_common::{End, Exchange, UpstreamAddr};

    use super::*;
    use crate::{event::UpstreamEvent, records::Transport};

    /// A refused connect to `upstream`, as the tracer makes its event.
    fn refused(upstream: &str) -> UpstreamEvent {
        let mut ex = Exchange::new(4243, 17, 1_000_000_000, UpstreamAddr::ZERO);
        ex.end = End::ConnectSocketError.code();
        ex.errno = 111;
        ex.end_ns = ex.start_ns + 92_000;
        let x = crate::records::finished(&ex).expect("a valid record");
        let e = crate::verdict::explain(&x, Transport::Unix, upstream, 1_000_000);
        UpstreamEvent::new(
            "2026-11-26T07:12:33.123456Z".into(),
            &x.facts,
            Transport::Unix,
            upstream,
            e,
        )
    }

    #[test]
    fn an_event_with_a_hostile_unix_path_prints_one_escaped_line() {
        // Short: the line keeps the end of a long upstream name only.
        let event = refused("unix:/a\x1b[A\u{202e}\nok");
        let raw = event.to_text();
        assert!(raw.contains('\x1b') && raw.contains('\n'), "{raw}");
        let shown = printed(&Text::from(raw));
        assert!(!shown.contains(['\x1b', '\u{202e}']), "{shown}");
        assert_eq!(shown.matches('\n').count(), 1, "one line: {shown}");
        assert!(shown.ends_with('\n'));
        assert!(
            shown.contains(r"a\x1b[A\u{202e}\nok refused(111)"),
            "{shown}"
        );
        // JSON keeps the path as it is, escaped by its encoder.
        let json = serde_json::to_string(&event).unwrap();
        assert!(
            !json.contains('\x1b') && json.contains(r"\u001b[A"),
            "{json}"
        );
    }

    #[test]
    fn a_pending_event_with_an_osc_52_path_prints_no_escape() {
        let event = crate::event::PendingEvent {
            event: "pending",
            time: "2026-11-26T07:12:33.123456Z".into(),
            worker_pid: 4243,
            upstream: "unix:/run/\x1b]52;c;cm0gLXJmIC8=\x07\x1b[1A\u{9b}2K.sock".into(),
            transport: "unix",
            waiting_ms: 1500,
            request_acked: None,
            retransmits: None,
            verdict: "backend_slow",
            evidence: "php-fpm\u{9b}2J pool busy".into(),
            cut_by_stop: false,
        };
        let shown = printed(&Text::from(event.to_text()));
        assert!(!shown.contains(['\x1b', '\x07', '\u{9b}']), "{shown}");
        assert!(
            shown.contains(r"unix:/run/\x1b]52;c;cm0gLXJmIC8=\x07\x1b[1A\u{9b}2K.sock pending"),
            "{shown}"
        );
    }

    #[test]
    fn a_plain_event_prints_as_it_was() {
        let event = refused("unix:/run/php/café.sock");
        assert_eq!(
            printed(&Text::from(event.to_text())),
            format!("{}\n", event.to_text())
        );
    }

    #[test]
    fn a_report_keeps_its_lines_and_escapes_within_them() {
        let report = "latency per upstream and phase:\n  unix:/run/\x1b[31mx.sock connect";
        assert_eq!(
            printed(report),
            "latency per upstream and phase:\n  unix:/run/\\x1b[31mx.sock connect\n"
        );
        let rows = Text::Rows(vec!["head".into(), "  a\nb".into()]);
        assert_eq!(printed(&rows), "head\n  a\\nb\n");
    }

    #[test]
    fn a_notice_is_one_escaped_line() {
        assert_eq!(
            notice_line("following /var/log/\x1b]0;owned\x07error.log\nngx-trace: fake"),
            r"ngx-trace: following /var/log/\x1b]0;owned\x07error.log\nngx-trace: fake"
        );
    }
}
