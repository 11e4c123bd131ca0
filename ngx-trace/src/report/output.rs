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
    cell::{Cell, RefCell},
    fs::File,
    io::{self, Write as _},
};

use serde::Serialize;
use serde_json::Value;

use crate::{
    notice::notice,
    report::writer::{self, Sink, Writer},
    sanitize,
};

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
    #[cfg(test)]
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

/// Events captured for a live view at most between two looks: past it,
/// events are dropped and counted.
const MAX_CAPTURED: usize = 65_536;
/// How often a rising count of dropped lines is said, at most.
const DROPS_SAID_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
/// How long closing waits for a destination that takes nothing.
const CLOSE_STALL: std::time::Duration = std::time::Duration::from_secs(5);

/// Prints events as JSON Lines or text through the writer thread (see
/// [`crate::report::writer`]): a line reaches stdout within a second, and a
/// reader that does not keep up loses lines (counted), never the session's
/// time.
pub struct Output {
    json: bool,
    /// Whether events go to stdout at all (live `explain` prints its own).
    print: bool,
    record: bool,
    writer: Writer,
    capture: Option<RefCell<Captured>>,
    /// Lines dropped as last said, and when.
    drops_said: Cell<(u64, Option<std::time::Instant>)>,
}

/// Events kept for a live view, and how many did not fit.
#[derive(Default)]
struct Captured {
    events: Vec<Value>,
    dropped: u64,
}

impl Output {
    /// JSON Lines if `json`, else text.
    pub fn new(json: bool) -> Self {
        let writer = Writer::new(writer::QUEUE_BYTES);
        writer.set(Sink::Stdout, Box::new(io::stdout()));
        Self {
            json,
            print: true,
            record: false,
            writer,
            capture: None,
            drops_said: Cell::new((0, None)),
        }
    }

    /// Nothing on stdout; every event kept for [`Output::take_captured`].
    pub fn capturing() -> Self {
        Self {
            json: true,
            print: false,
            record: false,
            writer: Writer::new(writer::QUEUE_BYTES),
            capture: Some(RefCell::new(Captured::default())),
            drops_said: Cell::new((0, None)),
        }
    }

    /// Also writes every event to `file`, after `header`.
    pub fn recording_to(mut self, mut file: File, header: &impl Serialize) -> io::Result<Self> {
        let mut line = serde_json::to_vec(header)?;
        line.push(b'\n');
        file.write_all(&line)?;
        self.writer.set(Sink::Record, Box::new(file));
        self.record = true;
        Ok(self)
    }

    /// Whether events are JSON.
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Whether events nobody sees printed are wanted (recorded or captured).
    pub fn keeps_everything(&self) -> bool {
        self.record || self.capture.is_some()
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
            self.write(Sink::Stdout, json + "\n")
        } else {
            self.write(Sink::Stdout, printed(&text().into()))
        }
    }

    /// Keeps `event` in the recording or the capture, without printing it
    /// (a healthy exchange without `--all`).
    pub fn keep(&self, event: &impl Serialize) -> io::Result<()> {
        if self.record {
            let json = serde_json::to_string(event).map_err(io::Error::other)?;
            self.write(Sink::Record, json + "\n")?;
        }
        if let Some(capture) = &self.capture {
            let mut capture = capture.borrow_mut();
            if capture.events.len() < MAX_CAPTURED {
                let value = serde_json::to_value(event).map_err(io::Error::other)?;
                capture.events.push(value);
            } else {
                capture.dropped += 1;
                if capture.dropped == 1 {
                    notice(&format!(
                        "the live view fell behind: more than {MAX_CAPTURED} events waited; \
                         the next ones are dropped and counted"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The error that stopped the recording, if one did (the writer
    /// thread flushes it at least every 200 ms).
    pub fn flush_record(&self) -> io::Result<()> {
        self.writer.failure(Sink::Record)
    }

    /// The events captured since the last call.
    pub fn take_captured(&self) -> Vec<Value> {
        self.capture
            .as_ref()
            .map(|c| std::mem::take(&mut c.borrow_mut().events))
            .unwrap_or_default()
    }

    /// Prints `text`, escaped (nothing when not printing): a report's
    /// lines, or one event's line given as a [`Text`].
    pub fn text<T: Printable + ?Sized>(&self, text: &T) -> io::Result<()> {
        if !self.print {
            return Ok(());
        }
        self.write(Sink::Stdout, printed(text))
    }

    /// Writes what is queued and says what was dropped; waits while the
    /// destinations take lines, and at most [`CLOSE_STALL`] for one that
    /// takes nothing. Nothing is printed after.
    pub fn close(&self) {
        let left = self.writer.close(CLOSE_STALL);
        let stdout = self.writer.dropped(Sink::Stdout);
        let record = self.writer.dropped(Sink::Record);
        if let Some(said) = dropped_notice(stdout, record, left) {
            notice(&said);
        }
        if let Some(capture) = &self.capture {
            let dropped = capture.borrow().dropped;
            if dropped > 0 {
                notice(&format!(
                    "{dropped} events were dropped because the live view fell behind"
                ));
            }
        }
    }

    /// Queues `line` for `sink`; a dropped line is counted, and the count
    /// said at the first drop and then at most every [`DROPS_SAID_EVERY`].
    fn write(&self, sink: Sink, line: String) -> io::Result<()> {
        if self.writer.push(sink, line)? {
            return Ok(());
        }
        let dropped = self.writer.dropped(Sink::Stdout) + self.writer.dropped(Sink::Record);
        let (said, at) = self.drops_said.get();
        if at.is_none_or(|at| at.elapsed() >= DROPS_SAID_EVERY) && dropped > said {
            self.drops_said
                .set((dropped, Some(std::time::Instant::now())));
            notice(&format!(
                "output does not keep up (stdout not read, or a slow disk): {dropped} lines \
                 dropped so far rather than wait; tracing goes on"
            ));
        }
        Ok(())
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.close();
    }
}

/// What to say at the end of lines dropped for `stdout` and for the
/// recording, and of `left` unwritten: nothing if none.
fn dropped_notice(stdout: u64, record: u64, left: u64) -> Option<String> {
    let mut parts = Vec::new();
    if stdout > 0 {
        parts.push(format!(
            "{stdout} lines dropped because stdout was not read fast enough"
        ));
    }
    if record > 0 {
        parts.push(format!(
            "{record} events not recorded because the recording's disk was too slow"
        ));
    }
    if left > 0 {
        parts.push(format!(
            "{left} lines left unwritten at exit (the output took nothing)"
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::{End, Exchange, UpstreamAddr};

    use super::*;
    use crate::{kernel::records::Transport, report::event::UpstreamEvent};

    /// A refused connect to `upstream`, as the tracer makes its event.
    fn refused(upstream: &str) -> UpstreamEvent {
        let mut ex = Exchange::new(4243, 17, 1_000_000_000, UpstreamAddr::ZERO);
        ex.end = End::ConnectSocketError.code();
        ex.errno = 111;
        ex.end_ns = ex.start_ns + 92_000;
        let x = crate::kernel::records::finished(&ex).expect("a valid record");
        let e = crate::diagnosis::verdict::explain(&x, Transport::Unix, upstream, 1_000_000);
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
        let event = crate::report::event::PendingEvent {
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
            request: None,
            location: None,
            location_candidates: Vec::new(),
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
    fn drops_are_said_with_their_counts() {
        assert_eq!(dropped_notice(0, 0, 0), None);
        assert_eq!(
            dropped_notice(1200, 0, 3).as_deref(),
            Some(
                "1200 lines dropped because stdout was not read fast enough; \
                 3 lines left unwritten at exit (the output took nothing)"
            )
        );
        assert_eq!(
            dropped_notice(0, 7, 0).as_deref(),
            Some("7 events not recorded because the recording's disk was too slow")
        );
    }

    #[test]
    fn a_live_view_that_falls_behind_keeps_a_bounded_number_of_events() {
        let out = Output::capturing();
        for n in 0..MAX_CAPTURED + 10 {
            out.keep(&serde_json::json!({ "n": n })).unwrap();
        }
        assert_eq!(out.capture.as_ref().unwrap().borrow().dropped, 10);
        let events = out.take_captured();
        assert_eq!(events.len(), MAX_CAPTURED);
        assert_eq!(events[0]["n"], 0);
        out.keep(&serde_json::json!({ "n": "next" })).unwrap();
        assert_eq!(out.take_captured()[0]["n"], "next");
    }
}
