//! `ngx-trace top`: a full-screen live view, one row per upstream (or, `l`,
//! per method and location), redrawn every second (ratatui on crossterm). It watches the same events as
//! `trace` (captured, not printed), plus what the kernel has in flight.
//! The terminal is restored on every way out: `q`, a signal (the tracer
//! stops and calls [`Top::finish`]), an error (drop), a panic (ratatui's
//! hook).
//!
//! Upstream names and evidence are the traced processes' choice: every
//! piece of them is escaped by [`sanitize`] where it is put on screen
//! ([`fit`], [`shown`]). ratatui drops control characters itself, but not
//! bidi controls, and a dropped ESC would leave the rest of its sequence.
use std::{
    collections::{BTreeMap, HashMap},
    io,
    time::{Duration, Instant},
};

use hdrhistogram::Histogram;
use ratatui::{
    DefaultTerminal, Frame,
    crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style, Stylize as _},
    text::{Line, Span},
    widgets::Paragraph,
};
use serde_json::Value;

use crate::{
    capped::NameCap,
    commands::session::{Session, UnderWay},
    human::short_us,
    sanitize,
};

/// Upstreams given rows of their own; later ones share the `other` row. Six
/// histograms of up to 26 KB each a row: at most about 20 MB, whatever the
/// traced processes connect to (and more rows than a screen shows).
pub const MAX_ROWS: usize = 128;

/// How often the view is redrawn with new figures.
const REFRESH: Duration = Duration::from_secs(1);

/// The orders rows can be sorted in (`s` cycles through them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    /// Failures per second now, then since start.
    Failures,
    /// Exchanges per second now.
    Rate,
    /// First-byte p99 now.
    Latency,
    /// Upstream name.
    Name,
}

impl Sort {
    fn next(self) -> Self {
        match self {
            Sort::Failures => Sort::Rate,
            Sort::Rate => Sort::Latency,
            Sort::Latency => Sort::Name,
            Sort::Name => Sort::Failures,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Sort::Failures => "failures",
            Sort::Rate => "exchanges/s",
            Sort::Latency => "first byte p99",
            Sort::Name => "name",
        }
    }
}

/// A histogram (1 µs to one hour, 2 significant digits) made on its first
/// value and grown only as far as its largest needs: a row that never
/// connects costs nothing for connects.
#[derive(Default, Clone)]
struct Lazy(Option<Histogram<u64>>);

impl Lazy {
    fn record(&mut self, us: u64) {
        let h = self.0.get_or_insert_with(|| {
            let mut h = Histogram::new(2).expect("valid histogram precision");
            h.auto(true);
            h
        });
        // `record` resizes (`saturating_record` would clamp to the current
        // size instead); it fails only if memory runs out.
        let us = us.clamp(1, 3_600_000_000);
        if h.record(us).is_err() {
            h.saturating_record(us);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(Histogram::is_empty)
    }

    fn value_at_quantile(&self, q: f64) -> u64 {
        self.0.as_ref().map_or(0, |h| h.value_at_quantile(q))
    }

    fn reset(&mut self) {
        if let Some(h) = &mut self.0 {
            h.reset();
        }
    }
}

/// p50 / p99 of `h`, µs, or `-` when empty.
fn p50_p99(h: &Lazy) -> String {
    if h.is_empty() {
        "-".to_string()
    } else {
        format!(
            "{} / {}",
            short_us(h.value_at_quantile(0.5)),
            short_us(h.value_at_quantile(0.99))
        )
    }
}

/// What one interval (about a second) of an upstream showed.
#[derive(Default, Clone)]
struct Interval {
    exchanges: u64,
    failures: BTreeMap<String, u64>,
    verdicts: BTreeMap<String, u64>,
}

/// One upstream's figures.
#[derive(Clone)]
struct Upstream {
    now: Interval,
    /// The last complete interval, and its length.
    shown: Interval,
    shown_secs: f64,
    connect_now: Lazy,
    first_now: Lazy,
    connect_shown: Lazy,
    first_shown: Lazy,
    connect_all: Lazy,
    first_all: Lazy,
    total: u64,
    failed: u64,
    failed_by: BTreeMap<String, u64>,
    /// The latest failure: outcome (errno) and evidence.
    latest: Option<(String, String)>,
}

impl Upstream {
    fn new() -> Self {
        Self {
            now: Interval::default(),
            shown: Interval::default(),
            shown_secs: 1.0,
            connect_now: Lazy::default(),
            first_now: Lazy::default(),
            connect_shown: Lazy::default(),
            first_shown: Lazy::default(),
            connect_all: Lazy::default(),
            first_all: Lazy::default(),
            total: 0,
            failed: 0,
            failed_by: BTreeMap::new(),
            latest: None,
        }
    }

    fn rate(&self, n: u64) -> f64 {
        n as f64 / self.shown_secs
    }

    fn failures_now(&self) -> u64 {
        self.shown.failures.values().sum()
    }

    /// The verdict most exchanges of the last interval had, a failure's
    /// before `healthy`; `-` when there were none.
    fn verdict_now(&self) -> String {
        let failing = self
            .shown
            .verdicts
            .iter()
            .filter(|(v, _)| v.as_str() != "healthy")
            .max_by_key(|(_, n)| **n);
        match failing.or_else(|| self.shown.verdicts.iter().max_by_key(|(_, n)| **n)) {
            Some((v, _)) => v.clone(),
            None => "-".to_string(),
        }
    }
}

/// The figures of every upstream (the first [`MAX_ROWS`], then `other`),
/// and of every method and location (as many), fed with the tracer's
/// events.
#[derive(Clone)]
pub struct Board {
    upstreams: HashMap<String, Upstream>,
    /// In flight now, per upstream: count and longest wait (ms).
    pending: BTreeMap<String, (u64, u64)>,
    names: NameCap,
    /// By `METHOD location` (`GET /api/`; `?` for what is not known).
    locations: HashMap<String, Upstream>,
    /// In flight now, per method and location.
    pending_locations: BTreeMap<String, (u64, u64)>,
    location_names: NameCap,
}

impl Default for Board {
    fn default() -> Self {
        Self {
            upstreams: HashMap::new(),
            pending: BTreeMap::new(),
            names: NameCap::new(MAX_ROWS),
            locations: HashMap::new(),
            pending_locations: BTreeMap::new(),
            location_names: NameCap::new(MAX_ROWS),
        }
    }
}

/// The location row of upstream event `e` (see
/// [`crate::report::event::location_row`]).
fn location_row(e: &Value) -> String {
    let candidates: Vec<&str> = e["location_candidates"]
        .as_array()
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    crate::report::event::location_row(
        e["request"]["method"].as_str(),
        e["location"]["name"].as_str(),
        &candidates,
    )
}

/// `pending` (count and longest wait per row name) under the row names
/// `names` gives, each row made in `rows` if new and `makes_row` says so
/// (else left out).
fn fold_pending(
    names: &mut NameCap,
    rows: &mut HashMap<String, Upstream>,
    pending: BTreeMap<String, (u64, u64)>,
    makes_row: impl Fn(&str) -> bool,
) -> BTreeMap<String, (u64, u64)> {
    let mut shown: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for (name, (count, wait_ms)) in pending {
        if !rows.contains_key(&name) && !makes_row(&name) {
            continue;
        }
        let key = names.key(&name, rows.contains_key(&name));
        if !rows.contains_key(key) {
            rows.insert(key.to_string(), Upstream::new());
        }
        let row = shown.entry(key.to_string()).or_default();
        row.0 += count;
        row.1 = row.1.max(wait_ms);
    }
    shown
}

fn us(e: &Value, phase: &str) -> Option<u64> {
    e["timings_us"][phase].as_u64()
}

impl Board {
    /// Counts one `upstream` event.
    pub fn add(&mut self, e: &Value) {
        if e["event"] != "upstream" {
            return;
        }
        let Some(name) = e["upstream"].as_str() else {
            return;
        };
        let key = self.names.key(name, self.upstreams.contains_key(name));
        let u = self
            .upstreams
            .entry(key.to_string())
            .or_insert_with(Upstream::new);
        u.add(e);
        let row = location_row(e);
        let key = self
            .location_names
            .key(&row, self.locations.contains_key(&row));
        self.locations
            .entry(key.to_string())
            .or_insert_with(Upstream::new)
            .add(e);
    }
}

impl Upstream {
    /// Counts one `upstream` event in this row.
    fn add(&mut self, e: &Value) {
        let u = self;
        let outcome = e["outcome"].as_str().unwrap_or("");
        let verdict = e["verdict"].as_str().unwrap_or("");
        u.total += 1;
        u.now.exchanges += 1;
        *u.now.verdicts.entry(verdict.to_string()).or_default() += 1;
        if outcome != "ok" {
            u.failed += 1;
            *u.failed_by.entry(outcome.to_string()).or_default() += 1;
            *u.now.failures.entry(outcome.to_string()).or_default() += 1;
        }
        if outcome != "ok" || verdict != "healthy" {
            let errno = e["errno"]
                .as_u64()
                .map(|n| format!("({n})"))
                .unwrap_or_default();
            let evidence = e["evidence"].as_str().unwrap_or("").to_string();
            u.latest = Some((format!("{outcome}{errno}"), evidence));
        }
        for (value, now, all) in [
            (us(e, "connect"), &mut u.connect_now, &mut u.connect_all),
            (us(e, "first_byte"), &mut u.first_now, &mut u.first_all),
        ] {
            if let Some(v) = value {
                now.record(v);
                all.record(v);
            }
        }
    }
}

impl Board {
    /// Ends the current interval (`secs` long): its figures are shown
    /// until the next one ends.
    pub fn roll(&mut self, secs: f64) {
        for u in self
            .upstreams
            .values_mut()
            .chain(self.locations.values_mut())
        {
            u.shown = std::mem::take(&mut u.now);
            u.shown_secs = secs.max(0.001);
            std::mem::swap(&mut u.connect_shown, &mut u.connect_now);
            std::mem::swap(&mut u.first_shown, &mut u.first_now);
            u.connect_now.reset();
            u.first_now.reset();
        }
    }

    /// Sets what is in flight now, per upstream and per method and
    /// location (rows past the cap under `other`).
    pub fn set_pending(&mut self, pending: UnderWay) {
        self.pending = fold_pending(
            &mut self.names,
            &mut self.upstreams,
            pending.by_upstream,
            |_| true,
        );
        // An exchange whose request is not known (still connecting, or its
        // copy not read yet) counts in a row that exchanges made, and makes
        // none: that would leave a `?` row behind for every location.
        self.pending_locations = fold_pending(
            &mut self.location_names,
            &mut self.locations,
            pending.by_location,
            |name| !name.starts_with("? "),
        );
    }

    /// `N further upstreams ... counted as "other"`, if any were.
    fn folded_text(&self) -> Option<String> {
        self.names.folded_text("upstreams")
    }

    /// The upstreams (or locations, `by_location`) whose name contains
    /// `filter`, in `sort` order.
    fn rows(&self, sort: Sort, filter: &str, by_location: bool) -> Vec<(&String, &Upstream)> {
        let table = if by_location {
            &self.locations
        } else {
            &self.upstreams
        };
        let mut rows: Vec<(&String, &Upstream)> = table
            .iter()
            .filter(|(name, _)| name.contains(filter))
            .collect();
        let p99 = |u: &Upstream| {
            if u.first_shown.is_empty() {
                0
            } else {
                u.first_shown.value_at_quantile(0.99)
            }
        };
        rows.sort_by(|(an, a), (bn, b)| {
            let order = match sort {
                Sort::Failures => (b.failures_now(), b.failed).cmp(&(a.failures_now(), a.failed)),
                Sort::Rate => b.shown.exchanges.cmp(&a.shown.exchanges),
                Sort::Latency => p99(b).cmp(&p99(a)),
                Sort::Name => std::cmp::Ordering::Equal,
            };
            order.then_with(|| an.cmp(bn))
        });
        rows
    }
}

/// `s` escaped for the screen (one line).
fn shown(s: &str) -> std::borrow::Cow<'_, str> {
    sanitize::line(s)
}

/// Cuts `s`, escaped, to `width` characters, marking the cut.
fn fit(s: &str, width: usize) -> String {
    let s = shown(s);
    if s.chars().count() <= width {
        format!("{s:<width$}")
    } else {
        let kept: String = s.chars().take(width.saturating_sub(1)).collect();
        format!("{kept}…")
    }
}

/// What the footer says.
pub struct Footer {
    /// Traced workers.
    pub workers: usize,
    /// Lost records so far.
    pub lost: u64,
}

/// The whole screen.
fn draw(
    frame: &mut Frame,
    board: &Board,
    view: &View,
    footer: &Footer,
    now: std::time::SystemTime,
) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(1),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let rows = board.rows(view.sort, &view.filter, view.by_location);
    let (what, first_column) = if view.by_location {
        ("locations", "METHOD LOCATION")
    } else {
        ("upstreams", "UPSTREAM")
    };
    let mut title = vec![
        Span::from("ngx-trace top").bold(),
        Span::from(format!(
            "  {} {what}  sort: {}",
            rows.len(),
            view.sort.label()
        )),
    ];
    match &view.editing {
        Some(text) => title.push(Span::from(format!("  filter: {}_", shown(text))).yellow()),
        None if !view.filter.is_empty() => {
            title.push(Span::from(format!("  filter: {}", shown(&view.filter))))
        }
        None => {}
    }
    if view.paused {
        title.push(Span::from("  [paused]").reversed());
    }
    let header = Line::from(format!(
        "{} {:>7} {:>7} {} {} {} {}",
        fit(first_column, 26),
        "EX/S",
        "FAIL/S",
        fit("VERDICT NOW", 18),
        fit("CONNECT p50/p99", 20),
        fit("FIRST BYTE p50/p99", 20),
        "PENDING"
    ))
    .add_modifier(Modifier::BOLD | Modifier::REVERSED);
    frame.render_widget(Paragraph::new(vec![Line::from(title), header]), head);

    let mut lines = Vec::new();
    for (name, u) in rows {
        let (pending, wait_ms) = if view.by_location {
            &board.pending_locations
        } else {
            &board.pending
        }
        .get(name)
        .copied()
        .unwrap_or((0, 0));
        let failing = u.failures_now() > 0;
        let style = if failing {
            Style::new().red()
        } else {
            Style::new()
        };
        lines.push(
            Line::from(format!(
                "{} {:>7.0} {:>7.0} {} {} {} {}",
                fit(name, 26),
                u.rate(u.shown.exchanges),
                u.rate(u.failures_now()),
                fit(&u.verdict_now(), 18),
                fit(&p50_p99(&u.connect_shown), 20),
                fit(&p50_p99(&u.first_shown), 20),
                pending
            ))
            .style(style),
        );
        let by: Vec<String> = u
            .failed_by
            .iter()
            .map(|(o, n)| format!("{} {n}", shown(o)))
            .collect();
        let since = if by.is_empty() {
            format!("{} exchanges, 0 failed", u.total)
        } else {
            format!(
                "{} exchanges, {} failed ({})",
                u.total,
                u.failed,
                by.join(", ")
            )
        };
        let wait = if pending > 0 {
            format!("longest {}", short_us(wait_ms * 1000))
        } else {
            String::new()
        };
        lines.push(Line::from(format!(
            "  since start: {} {} {} {wait}",
            fit(&since, 46),
            fit(&p50_p99(&u.connect_all), 20),
            fit(&p50_p99(&u.first_all), 20),
        )));
        // Failing now: the rate of each outcome, then the latest evidence.
        let now: Vec<String> = u
            .shown
            .failures
            .iter()
            .map(|(o, n)| format!("{} {:.0}/s", shown(o), u.rate(*n)))
            .collect();
        let latest = u
            .latest
            .as_ref()
            .map(|(what, evidence)| format!("{}: {}", shown(what), shown(evidence)));
        match (now.is_empty(), latest) {
            (false, Some(latest)) => {
                lines.push(Line::from(format!("  now {} · {latest}", now.join(", "))).dim())
            }
            (_, Some(latest)) => lines.push(Line::from(format!("  {latest}")).dim()),
            (_, None) => {}
        }
    }
    if lines.is_empty() {
        lines.push(Line::from("no upstream exchange seen yet").dim());
    }
    frame.render_widget(Paragraph::new(lines), body);
    let clock = crate::kernel::clock::rfc3339_micros(now);
    let folded = match board.names.folded() {
        0 => String::new(),
        n => format!("  {n} upstreams in \"other\""),
    };
    frame.render_widget(
        Paragraph::new(Line::from(format!(
            "workers {}  lost {}{folded}  {} UTC   q quit  s sort  l {}  / filter  p pause",
            footer.workers,
            footer.lost,
            clock.get(11..19).unwrap_or(&clock),
            if view.by_location {
                "upstreams"
            } else {
                "locations"
            }
        )))
        .reversed(),
        foot,
    );
}

/// What the person at the keyboard chose.
struct View {
    sort: Sort,
    filter: String,
    /// The filter being typed (after `/`).
    editing: Option<String>,
    paused: bool,
    quit: bool,
    /// Rows per method and location rather than per upstream (`l`).
    by_location: bool,
}

impl View {
    /// Applies one key press; returns whether the screen changed.
    fn key(&mut self, key: KeyEvent) -> bool {
        if key.kind != KeyEventKind::Press {
            return false;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL) && key.code == KeyCode::Char('c') {
            self.quit = true;
            return true;
        }
        if let Some(text) = &mut self.editing {
            match key.code {
                KeyCode::Enter => {
                    self.filter = std::mem::take(text);
                    self.editing = None;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) => text.push(c),
                _ => return false,
            }
            return true;
        }
        match key.code {
            KeyCode::Char('q') | KeyCode::Esc => self.quit = true,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('p') => self.paused = !self.paused,
            KeyCode::Char('l') => self.by_location = !self.by_location,
            KeyCode::Char('/') => self.editing = Some(self.filter.clone()),
            _ => return false,
        }
        true
    }
}

/// The live view (a [`crate::commands::trace::Watcher`]).
pub struct Top {
    terminal: Option<DefaultTerminal>,
    board: Board,
    view: View,
    rolled: Instant,
    /// While paused: the figures on screen, and their time.
    frozen: Option<(Board, std::time::SystemTime)>,
}

impl Top {
    /// A view not yet on screen ([`crate::commands::trace::Watcher::start`] takes the
    /// terminal).
    pub fn new() -> Self {
        Self {
            terminal: None,
            board: Board::default(),
            view: View {
                sort: Sort::Failures,
                filter: String::new(),
                editing: None,
                paused: false,
                quit: false,
                by_location: false,
            },
            rolled: Instant::now(),
            frozen: None,
        }
    }

    fn redraw(&mut self, session: &Session) -> io::Result<()> {
        let footer = Footer {
            workers: session.workers(),
            lost: session.lost(),
        };
        let (board, now) = match &self.frozen {
            Some((board, at)) => (board, *at),
            None => (&self.board, std::time::SystemTime::now()),
        };
        if let Some(terminal) = self.terminal.as_mut() {
            terminal.draw(|frame| draw(frame, board, &self.view, &footer, now))?;
        }
        Ok(())
    }

    fn restore(&mut self) {
        if self.terminal.take().is_some() {
            ratatui::restore();
            crate::notice::release_notices();
        }
    }
}

impl Drop for Top {
    fn drop(&mut self) {
        self.restore();
    }
}

impl crate::commands::trace::Watcher for Top {
    fn start(&mut self, session: &Session) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let terminal = ratatui::try_init().inspect_err(|_| {
            // Raw mode may be on already: undo what was done.
            ratatui::restore();
        });
        self.terminal = Some(
            terminal
                .context("failed to take over the terminal: run `ngx-trace` for line output")?,
        );
        // Notices would scribble over the view: they wait for its end.
        crate::notice::hold_notices();
        self.rolled = Instant::now();
        self.redraw(session)?;
        Ok(())
    }

    fn tick(&mut self, session: &Session, _all: bool) -> io::Result<()> {
        let mut changed = false;
        while event::poll(Duration::ZERO)? {
            if let Event::Key(key) = event::read()? {
                changed |= self.view.key(key);
            } else {
                changed = true; // a resize
            }
        }
        if self.view.quit {
            return Ok(());
        }
        for e in session.output().take_captured() {
            self.board.add(&e);
        }
        self.board.set_pending(session.under_way());
        let elapsed = self.rolled.elapsed();
        if elapsed >= REFRESH {
            self.board.roll(elapsed.as_secs_f64());
            self.rolled = Instant::now();
            changed |= !self.view.paused;
        }
        if self.view.paused {
            if self.frozen.is_none() {
                self.frozen = Some((self.board.clone(), std::time::SystemTime::now()));
            }
            if changed {
                // Keys still redraw (the title shows the pause, the sort).
                self.redraw(session)?;
            }
            return Ok(());
        }
        self.frozen = None;
        if changed {
            self.redraw(session)?;
        }
        Ok(())
    }

    fn finish(&mut self, session: &Session) -> io::Result<()> {
        self.restore();
        for e in session.output().take_captured() {
            self.board.add(&e);
        }
        // Something to keep in the scrollback: the counts since start.
        let mut names: Vec<&String> = self.board.upstreams.keys().collect();
        names.sort();
        for name in names {
            let u = &self.board.upstreams[name];
            println!(
                "{}: {} exchanges, {} failed{}",
                shown(name),
                u.total,
                u.failed,
                u.latest
                    .as_ref()
                    .map(|(what, _)| format!(", latest {}", shown(what)))
                    .unwrap_or_default()
            );
        }
        if let Some(folded) = self.board.folded_text() {
            println!("({folded})");
        }
        Ok(())
    }

    fn wants_stop(&self) -> bool {
        self.view.quit
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn exchange(upstream: &str, outcome: &str, verdict: &str, first_us: Option<u64>) -> Value {
        let mut timings = json!({"connect": 50});
        if let Some(f) = first_us {
            timings["first_byte"] = json!(f);
        }
        json!({"event": "upstream", "upstream": upstream, "outcome": outcome,
               "verdict": verdict, "errno": 111, "evidence": "RST in answer to the SYN",
               "timings_us": timings})
    }

    /// Board `b` drawn on a 160 x 12 screen (rows per location or per
    /// upstream, by failures): its rows.
    fn screen_rows(b: &Board, by_location: bool) -> Vec<String> {
        let view = View {
            sort: Sort::Failures,
            filter: String::new(),
            editing: None,
            paused: false,
            quit: false,
            by_location,
        };
        let footer = Footer {
            workers: 1,
            lost: 0,
        };
        let mut terminal =
            ratatui::Terminal::new(ratatui::backend::TestBackend::new(160, 12)).unwrap();
        terminal
            .draw(|f| draw(f, b, &view, &footer, std::time::SystemTime::UNIX_EPOCH))
            .unwrap();
        terminal
            .backend()
            .buffer()
            .content()
            .chunks(160)
            .map(|row| row.iter().map(|c| c.symbol()).collect())
            .collect()
    }

    #[test]
    fn location_rows_count_each_method_and_location_with_the_same_figures() {
        let mut b = Board::default();
        let placed = |path: &str, location: &str, outcome: &str, verdict: &str| {
            let mut e = exchange("127.0.0.1:8080", outcome, verdict, Some(100));
            e["request"] = json!({"method": "GET", "path": path});
            e["location"] = json!({"name": location, "file": "/etc/nginx/nginx.conf", "line": 9});
            e
        };
        for i in 0..4 {
            b.add(&placed(&format!("/api/{i}"), "/api/", "ok", "healthy"));
        }
        b.add(&placed(
            "/api/reports/1",
            "/api/reports/",
            "no_response",
            "backend_slow",
        ));
        // Not placed: the candidates; no request copied: `?`.
        let mut unplaced = exchange("127.0.0.1:8080", "ok", "healthy", Some(100));
        unplaced["location_candidates"] = json!(["/api/", "/api/reports/"]);
        b.add(&unplaced);
        b.roll(1.0);
        let rows: Vec<String> = b
            .rows(Sort::Failures, "", true)
            .iter()
            .map(|(n, _)| (*n).clone())
            .collect();
        // Failing first, then by name.
        assert_eq!(
            rows,
            ["GET /api/reports/", "? /api/|/api/reports/", "GET /api/"]
        );
        let api = &b.locations["GET /api/"];
        assert_eq!((api.total, api.failed), (4, 0));
        assert_eq!(
            b.locations["GET /api/reports/"].verdict_now(),
            "backend_slow"
        );
        // The upstream's row counts them all.
        assert_eq!(b.upstreams["127.0.0.1:8080"].total, 6);
        // In flight, per location too: shown in the location rows.
        b.set_pending(UnderWay {
            by_upstream: BTreeMap::from([("127.0.0.1:8080".to_string(), (3, 2_500))]),
            by_location: BTreeMap::from([
                ("GET /api/reports/".to_string(), (2, 2_500)),
                ("POST /upload/".to_string(), (1, 40)),
            ]),
        });
        assert_eq!(b.pending_locations["GET /api/reports/"], (2, 2_500));
        assert!(
            b.locations.contains_key("POST /upload/"),
            "a row of its own"
        );
        let lines = screen_rows(&b, true);
        let row = |name: &str| {
            let at = lines
                .iter()
                .position(|l| l.starts_with(name))
                .unwrap_or_else(|| panic!("no row {name}: {lines:#?}"));
            (lines[at].trim_end(), lines[at + 1].trim_end())
        };
        let (reports, since) = row("GET /api/reports/");
        assert!(reports.ends_with(" 2"), "{lines:#?}");
        assert!(since.ends_with("longest 2.50 s"), "{lines:#?}");
        assert!(row("POST /upload/").0.ends_with(" 1"), "{lines:#?}");
    }

    #[test]
    fn rows_sort_by_failures_now_then_by_name() {
        let mut b = Board::default();
        for _ in 0..5 {
            b.add(&exchange("b:1", "ok", "healthy", Some(100)));
        }
        for _ in 0..3 {
            b.add(&exchange("c:1", "refused", "backend_down", None));
        }
        b.add(&exchange("a:1", "no_response", "backend_slow", None));
        b.roll(1.0);
        let order = |b: &Board, s| -> Vec<String> {
            b.rows(s, "", false)
                .iter()
                .map(|(n, _)| (*n).clone())
                .collect()
        };
        assert_eq!(order(&b, Sort::Failures), ["c:1", "a:1", "b:1"]);
        assert_eq!(order(&b, Sort::Rate), ["b:1", "c:1", "a:1"]);
        assert_eq!(order(&b, Sort::Name), ["a:1", "b:1", "c:1"]);
        assert_eq!(b.rows(Sort::Name, "c:", false).len(), 1);
        let c = &b.upstreams["c:1"];
        assert_eq!((c.total, c.failed, c.rate(c.failures_now())), (3, 3, 3.0));
        assert_eq!(c.verdict_now(), "backend_down");
        assert_eq!(b.upstreams["b:1"].verdict_now(), "healthy");
    }

    #[test]
    fn an_interval_shows_until_the_next_one_ends() {
        let mut b = Board::default();
        b.add(&exchange("a:1", "ok", "healthy", Some(2000)));
        b.roll(0.5);
        let a = &b.upstreams["a:1"];
        assert_eq!(a.rate(a.shown.exchanges), 2.0);
        assert_eq!(p50_p99(&a.first_shown), p50_p99(&a.first_all));
        b.roll(1.0);
        let a = &b.upstreams["a:1"];
        assert_eq!((a.shown.exchanges, a.total), (0, 1));
        assert_eq!(p50_p99(&a.first_shown), "-");
        assert_ne!(p50_p99(&a.first_all), "-");
    }

    #[test]
    fn hostile_names_and_evidence_reach_the_screen_escaped() {
        let mut b = Board::default();
        let name = "unix:/run/\u{202e}kcos\x1b]52;c;aGk=\x07\u{9b}2A.sock";
        let mut e = exchange(name, "refused", "backend_down", None);
        e["evidence"] = json!("RST\x1b[2K\nforged\u{2066}");
        b.add(&e);
        b.roll(1.0);
        let screen = screen_rows(&b, false).concat();
        for bad in ['\x1b', '\x07', '\u{9b}', '\u{202e}', '\u{2066}', '\n'] {
            assert!(!screen.contains(bad), "{bad:?} on screen: {screen}");
        }
        assert!(screen.contains("unix:/run/\\u{202e}kcos"), "{screen}");
        assert!(screen.contains("RST\\x1b[2K\\nforged"), "{screen}");
    }

    #[test]
    fn keys_sort_filter_pause_and_quit() {
        let press = |c| KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE);
        let mut v = View {
            sort: Sort::Failures,
            filter: String::new(),
            editing: None,
            paused: false,
            quit: false,
            by_location: false,
        };
        v.key(press('l'));
        assert!(v.by_location);
        v.key(press('s'));
        assert_eq!(v.sort, Sort::Rate);
        v.key(press('/'));
        v.key(press('8'));
        v.key(press('1'));
        v.key(KeyEvent::new(KeyCode::Enter, KeyModifiers::NONE));
        assert_eq!(v.filter, "81");
        v.key(press('p'));
        assert!(v.paused);
        v.key(press('q'));
        assert!(v.quit);
    }

    #[test]
    fn upstreams_past_the_cap_share_the_other_row_counted_in_the_footer() {
        let mut b = Board::default();
        for i in 0..1_000 {
            b.add(&exchange(
                &format!("unix:/tmp/n{i}.sock"),
                "refused",
                "backend_down",
                None,
            ));
        }
        let pending: BTreeMap<String, (u64, u64)> = (0..1_000)
            .map(|i| (format!("unix:/tmp/p{i}.sock"), (2, i)))
            .collect();
        b.set_pending(UnderWay {
            by_upstream: pending,
            by_location: BTreeMap::new(),
        });
        b.roll(1.0);
        assert_eq!(b.upstreams.len(), MAX_ROWS + 1);
        let other = &b.upstreams["other"];
        assert_eq!(
            (other.total, other.failed),
            (1_000 - MAX_ROWS as u64, 1_000 - MAX_ROWS as u64)
        );
        assert_eq!(b.upstreams.values().map(|u| u.total).sum::<u64>(), 1_000);
        assert_eq!(b.pending["other"], (2_000, 999));
        assert_eq!(b.pending.values().map(|p| p.0).sum::<u64>(), 2_000);
        assert_eq!(b.names.folded(), 2_000 - MAX_ROWS as u64);
        // Histograms are made on the first value: none for these.
        assert!(b.upstreams.values().all(|u| u.first_all.0.is_none()));
        let screen = screen_rows(&b, false).concat();
        assert!(screen.contains("1872 upstreams in \"other\""), "{screen}");
    }
}
