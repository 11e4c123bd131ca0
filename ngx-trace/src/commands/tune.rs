//! `ngx-trace tune`: for each location passing to upstreams, each timeout
//! in effect (from nginx's configuration) against the phase it governs,
//! measured: what it cut, and the value that would have cut no more than
//! the chosen share of exchanges. Rules: an exchange nginx ended at its own
//! timeout is censored (its latency is unknown above the timeout: a timeout
//! that cut more than the allowed share is never lowered); a connect
//! timeout never goes below the kernel's first SYN retransmission (1 s)
//! plus the RTT; `*_next_upstream_tries` no more than the group's servers;
//! an upstream `keepalive_timeout` below the backend's own idle close; too
//! few samples for the rate give no number.
use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use crate::{
    capped::NameCap,
    nginx::nginx_conf::{Config, Location, Setting},
    report::reservoir::{Reservoir, Weighted},
};

/// Recommended values are the measured quantile times this margin.
const MARGIN: f64 = 1.5;
/// The kernel's first SYN retransmission, ms.
const FIRST_SYN_RETRANSMIT_MS: u64 = 1000;
/// Values a person writes, seconds.
const LADDER_S: [u64; 20] = [
    1, 2, 3, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 240, 300, 600, 900, 1200, 1800, 3600,
];

/// Upstream servers measured by name; later ones are counted under `other`
/// (no location passes to it: they get no advice, and a notice says so).
pub const MAX_SERVERS: usize = 64;
/// Samples kept of the waits timeouts are set from (connect, read): p99.9
/// still rests on 65 values. 512 KB each at most.
const SAMPLES: usize = 65_536;
/// Samples kept of the rest (request writes, RTTs, idle closes): 64 KB each.
const FEW_SAMPLES: usize = 8_192;

/// Measurements of one upstream server, µs: bounded samples, exact counts.
#[derive(Debug, Clone)]
pub struct Measured {
    /// Handshake times of connects that completed.
    connect: Reservoir,
    /// Connects nginx gave up on at its connect timeout.
    connect_censored: u64,
    /// Waits the read timeout governs: the first byte, or the longest gap
    /// between reads once the answer started, whichever is longer.
    read: Reservoir,
    /// Exchanges nginx gave up on at its read timeout.
    read_censored: u64,
    /// Request writes.
    send: Reservoir,
    /// Smoothed RTTs.
    rtt: Reservoir,
    /// How long kept-alive connections the backend closed as nginx reused
    /// them had been idle: the backend's own idle close is about there.
    idle_closed: Reservoir,
}

impl Default for Measured {
    fn default() -> Self {
        Self {
            connect: Reservoir::new(SAMPLES),
            connect_censored: 0,
            read: Reservoir::new(SAMPLES),
            read_censored: 0,
            send: Reservoir::new(FEW_SAMPLES),
            rtt: Reservoir::new(FEW_SAMPLES),
            idle_closed: Reservoir::new(FEW_SAMPLES),
        }
    }
}

/// Locations measured on their own (by the `location` their exchanges
/// name); later ones are advised from their servers' exchanges.
pub const MAX_LOCATIONS: usize = 256;

/// The measurements of every upstream server, for at most [`MAX_SERVERS`]
/// names, and of every location its exchanges were placed in, for at most
/// [`MAX_LOCATIONS`].
#[derive(Debug, Clone)]
pub struct Measurements {
    by: BTreeMap<String, Measured>,
    names: NameCap,
    /// By the location's block (`file`, `line`).
    by_location: BTreeMap<(String, u32), Measured>,
}

impl Default for Measurements {
    fn default() -> Self {
        Self {
            by: BTreeMap::new(),
            names: NameCap::new(MAX_SERVERS),
            by_location: BTreeMap::new(),
        }
    }
}

impl Measurements {
    /// Says how many servers were not measured by name, if any were not.
    fn notice_folded(&self) {
        if let Some(folded) = self.names.folded_text("upstream servers") {
            crate::notice::notice(&format!("{folded}: not measured, so not advised on"));
        }
    }
}

/// Outcomes of a connect that failed on its own (not delayed: not samples).
const CONNECT_FAILURES: [&str; 8] = [
    "refused",
    "not_found",
    "permission_denied",
    "backlog_full",
    "addr_unavailable",
    "unreachable",
    "fd_limit",
    "worker_died",
];

/// Adds the measurements of `e`, if it is an upstream event, to those of
/// its server in `measured`.
pub fn measure(measured: &mut Measurements, e: &Value) {
    if e["event"] != "upstream" {
        return;
    }
    let Some(upstream) = e["upstream"].as_str() else {
        return;
    };
    let key = measured
        .names
        .key(upstream, measured.by.contains_key(upstream));
    add(measured.by.entry(key.to_string()).or_default(), e);
    // Its location's own, when the exchange named it.
    if let (Some(file), Some(line)) = (
        e["location"]["file"].as_str(),
        e["location"]["line"].as_u64(),
    ) {
        let at = (file.to_string(), line as u32);
        if measured.by_location.contains_key(&at) || measured.by_location.len() < MAX_LOCATIONS {
            add(measured.by_location.entry(at).or_default(), e);
        }
    }
}

/// Adds the measurements of upstream event `e` to `m`.
fn add(m: &mut Measured, e: &Value) {
    let t = &e["timings_us"];
    let us = |k: &str| t[k].as_u64();
    let outcome = e["outcome"].as_str().unwrap_or("");
    match outcome {
        "connect_timeout" => m.connect_censored += 1,
        o if CONNECT_FAILURES.contains(&o) => {}
        _ => {
            if let Some(c) = us("connect") {
                m.connect.push(c);
            }
        }
    }
    match outcome {
        // nginx's own read timeout (not the kernel's retransmissions
        // running out, which nginx logs as `recv() failed (110`).
        "no_response"
            if e["nginx_error"]
                .as_str()
                .is_some_and(|t| t.starts_with("upstream timed out")) =>
        {
            m.read_censored += 1
        }
        "ok" => {
            let wait = us("first_byte")
                .unwrap_or(0)
                .max(us("longest_read_gap").unwrap_or(0));
            m.read.push(wait);
        }
        _ => {}
    }
    if let Some(w) = us("request_write") {
        m.send.push(w);
    }
    if let Some(rtt) = e["tcp"]["srtt_us"].as_u64() {
        m.rtt.push(rtt);
    }
    if e["reused"] == true
        && matches!(outcome, "closed_early" | "reset")
        && t["first_byte"].is_null()
        && let Some(idle) = us("idle_before")
    {
        m.idle_closed.push(idle);
    }
}

/// `{"event":"tune",...}`: one directive of one location.
#[derive(Debug, Serialize, PartialEq)]
pub struct TuneEvent {
    /// Always `"tune"`.
    pub event: &'static str,
    /// The upstream the location passes to (its group, or its server).
    pub upstream: String,
    /// Its group, if it is one.
    pub group: Option<String>,
    /// The location (`server` for a pass at server level).
    pub location: String,
    /// The directive.
    pub directive: String,
    /// `"change"`: set at `file:line`; `"add"`: not written anywhere,
    /// nginx's default in effect, to be added in the block at `file:line`
    /// (the location's, or the upstream block's for `keepalive_timeout`).
    pub action: &'static str,
    /// The block `file:line` starts when the directive is to be added:
    /// `location /api`, `server example.com` (a value several of the
    /// server's locations need, added once), `upstream app`.
    pub block: String,
    /// Where it is set, or the block to add it to.
    pub file: String,
    /// Its line, or the block's.
    pub line: u32,
    /// Its value now (seconds; tries and counts as they are).
    pub current_s: f64,
    /// The value to set, null when the data is insufficient.
    pub recommended_s: Option<f64>,
    /// Exchanges measured.
    pub samples: u64,
    /// Exchanges the current value cut (censored ones included).
    pub cut_now: u64,
    /// Exchanges the recommended value would have cut.
    pub cut_recommended: Option<u64>,
    /// Exchanges nginx ended at this timeout: their latency is unknown.
    pub censored: u64,
    /// Why.
    pub reason: String,
}

impl TuneEvent {
    /// One text line: the directive, its value and where, and the advice
    /// as an edit (`add `proxy_read_timeout 2s;` to location /fast at
    /// conf.d/app.conf:12`).
    pub fn to_text(&self) -> String {
        let at = format!("{}:{}", self.file, self.line);
        let now = if self.action == "add" {
            format!("{} (nginx's default)", self.value_text(self.current_s))
        } else {
            format!("{} at {at}", self.value_text(self.current_s))
        };
        let advice = match self.recommended_s {
            Some(v) if v == self.current_s => "keep it".to_string(),
            Some(v) => {
                let edit = format!("`{} {};`", self.directive, self.value_text(v));
                if self.action == "add" {
                    format!("add {edit} to {} at {at}", self.block)
                } else {
                    format!("change it to {edit}")
                }
            }
            None => "no recommendation".to_string(),
        };
        format!(
            "{} (location {}) {} {now}: {advice}: {}",
            self.upstream, self.location, self.directive, self.reason
        )
    }

    /// A value as written in nginx: a time, or a count of tries.
    fn value_text(&self, v: f64) -> String {
        if self.directive.ends_with("_tries") {
            format!("{v}")
        } else {
            human_s(v)
        }
    }
}

/// `5s`, `500ms`, `2m`: as one writes it in nginx.
fn human_s(s: f64) -> String {
    if s < 1.0 && s > 0.0 {
        format!("{}ms", (s * 1000.0).round())
    } else if s >= 60.0 && (s % 60.0) == 0.0 {
        format!("{}m", s / 60.0)
    } else {
        format!("{s}s")
    }
}

/// The value a person would write at or above `ms`, seconds.
fn round_up_s(ms: u64) -> u64 {
    let s = ms.div_ceil(1000).max(1);
    LADDER_S
        .iter()
        .copied()
        .find(|&v| v >= s)
        .unwrap_or_else(|| s.div_ceil(60) * 60)
}

/// A recommendation for a timeout from `values` (µs, not censored) and
/// `censored` exchanges cut at the `current` value (ms): the value, the
/// exchanges it and the current one cut, and why.
#[derive(Debug, PartialEq)]
struct Advice {
    recommended_ms: Option<u64>,
    cut_now: u64,
    cut_recommended: Option<u64>,
    reason: String,
}

fn recommend(
    values: &Weighted,
    censored: u64,
    current_ms: u64,
    rate: f64,
    floor_ms: u64,
) -> Advice {
    let n = values.seen() + censored;
    // Saturating: a configured time may be years (`600000y` is valid nginx).
    let over = |limit_ms: u64| values.over(limit_ms.saturating_mul(1000));
    // 0 ms: no limit (`*_next_upstream_timeout 0` style); timeouts are never 0.
    let cut_now = over(current_ms) + censored;
    let needed = (10.0 / rate).ceil() as u64;
    if n < needed {
        return Advice {
            recommended_ms: None,
            cut_now,
            cut_recommended: None,
            reason: format!(
                "insufficient data (n={n}; {needed} exchanges are needed for a rate of {rate})"
            ),
        };
    }
    let allowed = (rate * n as f64).floor() as u64;
    if censored > allowed {
        return Advice {
            recommended_ms: Some(current_ms),
            cut_now,
            cut_recommended: Some(cut_now),
            reason: format!(
                "{censored} of {n} exchanges ran into the current value: how long they would \
                 have taken is unknown, so it is not lowered (raise it to measure them)"
            ),
        };
    }
    // The longest wait that must pass: at most `allowed` exchanges cut,
    // the censored ones among them.
    let may_cut = allowed - censored;
    let q_us = values.at_rank(values.seen().saturating_sub(may_cut + 1));
    let target_ms = ((q_us as f64 * MARGIN) / 1000.0).ceil() as u64;
    let recommended_ms = round_up_s(target_ms.max(floor_ms)) * 1000;
    let cut = over(recommended_ms) + censored;
    let pct = 100.0 * (1.0 - rate);
    let mut reason = format!(
        "p{pct} of {n} is {}; × {MARGIN} margin, rounded",
        crate::human::short_us(q_us)
    );
    if floor_ms > target_ms {
        reason.push_str(&format!(
            "; not below the first SYN retransmission plus the RTT ({} ms)",
            floor_ms
        ));
    }
    if values.sampled() {
        reason.push_str("; quantile and cuts estimated from a uniform sample");
    }
    Advice {
        recommended_ms: Some(recommended_ms),
        cut_now,
        cut_recommended: Some(cut),
        reason,
    }
}

/// The measurements of the servers a location reaches, together.
struct Pooled {
    connect: Weighted,
    connect_censored: u64,
    read: Weighted,
    read_censored: u64,
    send: Weighted,
    rtt: Weighted,
    /// Idle closes seen, and the shortest.
    idle_closed: (u64, Option<u64>),
}

/// The measurements of `location`: its own exchanges when they were told
/// apart (`true`), else those of the servers it reaches, together.
fn of_location(location: &Location, measured: &Measurements) -> (Pooled, bool) {
    if let Some(own) = measured.by_location.get(&location.block_at) {
        return (pool(&[own]), true);
    }
    let ms: Vec<&Measured> = location
        .servers
        .iter()
        .filter_map(|server| measured.by.get(server))
        .collect();
    (pool(&ms), false)
}

/// Measurements together.
fn pool(ms: &[&Measured]) -> Pooled {
    Pooled {
        connect: Weighted::pool(ms.iter().map(|m| &m.connect)),
        connect_censored: ms.iter().map(|m| m.connect_censored).sum(),
        read: Weighted::pool(ms.iter().map(|m| &m.read)),
        read_censored: ms.iter().map(|m| m.read_censored).sum(),
        send: Weighted::pool(ms.iter().map(|m| &m.send)),
        rtt: Weighted::pool(ms.iter().map(|m| &m.rtt)),
        idle_closed: (
            ms.iter().map(|m| m.idle_closed.seen()).sum(),
            ms.iter().filter_map(|m| m.idle_closed.min()).min(),
        ),
    }
}

fn median(values: &Weighted) -> u64 {
    values.at_rank(values.seen() / 2)
}

/// The tune events for `config` given `measured`, at `rate`.
pub fn tune(config: &Config, measured: &Measurements, rate: f64) -> Vec<TuneEvent> {
    let mut out = Vec::new();
    // The location of each event in `out`, by index.
    let mut owners = Vec::new();
    for (index, loc) in config.locations.iter().enumerate() {
        let (m, own) = of_location(loc, measured);
        // Other locations reach its servers: their exchanges are in the
        // pool when its own were not told apart.
        let shared = !own
            && config.locations.iter().any(|other| {
                other.block_at != loc.block_at
                    && other.servers.iter().any(|s| loc.servers.contains(s))
            });
        let upstream = loc
            .group
            .clone()
            .unwrap_or_else(|| loc.servers.first().cloned().unwrap_or_default());
        // One row: the directive, where it is set (or the block it is to
        // be added to, `block_at`), its value now, and the advice with its
        // counts.
        let row = |directive: &str,
                   (setting, block_at): (&Setting, &(String, u32)),
                   current_s: f64,
                   recommended_s: Option<f64>,
                   (samples, censored): (u64, u64),
                   (cut_now, cut_recommended): (u64, Option<u64>),
                   reason: String| TuneEvent {
            event: "tune",
            upstream: upstream.clone(),
            group: loc.group.clone(),
            location: loc.name.clone(),
            directive: directive.to_string(),
            block: if directive == "keepalive_timeout" {
                format!("upstream {upstream}")
            } else if loc.name == "server" {
                format!("server {}", loc.server)
            } else {
                format!("location {}", loc.name)
            },
            action: if setting.at.is_some() {
                "change"
            } else {
                "add"
            },
            file: setting.at.as_ref().unwrap_or(block_at).0.clone(),
            line: setting.at.as_ref().unwrap_or(block_at).1,
            current_s,
            recommended_s,
            samples,
            cut_now,
            cut_recommended,
            censored,
            reason,
        };
        let phases: [(&str, &Weighted, u64, u64); 3] = [
            (
                "connect_timeout",
                &m.connect,
                m.connect_censored,
                FIRST_SYN_RETRANSMIT_MS + median(&m.rtt).div_ceil(1000),
            ),
            ("read_timeout", &m.read, m.read_censored, 0),
            ("send_timeout", &m.send, 0, 0),
        ];
        for (suffix, values, censored, floor_ms) in phases {
            let directive = format!("{}_{suffix}", loc.module);
            let Some(setting) = loc.settings.get(&directive) else {
                continue;
            };
            let Some(current_ms) = setting.ms() else {
                continue;
            };
            let advice = recommend(values, censored, current_ms, rate, floor_ms);
            let reason = if shared && values.seen() + censored > 0 {
                format!(
                    "{} (from the exchanges of every location reaching its servers: \
                     this location's own were not told apart)",
                    advice.reason
                )
            } else {
                advice.reason
            };
            out.push(row(
                &directive,
                (setting, &loc.block_at),
                current_ms as f64 / 1000.0,
                advice.recommended_ms.map(|ms| ms as f64 / 1000.0),
                (values.seen() + censored, censored),
                (advice.cut_now, advice.cut_recommended),
                reason,
            ));
        }
        // Retries: no more tries than servers to try.
        let directive = format!("{}_next_upstream_tries", loc.module);
        if let Some(setting) = loc.settings.get(&directive) {
            let current: u64 = setting.value.parse().unwrap_or(0);
            let servers = loc.servers.len().max(1) as u64;
            let (recommended, reason) = if current == 0 || current > servers {
                (
                    servers,
                    format!(
                        "{} tries{}: more than the {servers} servers there are to try",
                        if current == 0 {
                            "unlimited".to_string()
                        } else {
                            current.to_string()
                        },
                        if current == 0 { " (0)" } else { "" }
                    ),
                )
            } else {
                (
                    current,
                    format!("within the {servers} servers of the group"),
                )
            };
            out.push(row(
                &directive,
                (setting, &loc.block_at),
                current as f64,
                Some(recommended as f64),
                (0, 0),
                (0, None),
                reason,
            ));
        }
        // Kept-alive connections: closed by nginx before the backend does.
        if let Some(group) = config
            .groups
            .iter()
            .find(|g| Some(&g.name) == loc.group.as_ref() && g.keepalive.is_some())
            && let Some(current_ms) = group.keepalive_timeout.ms()
        {
            let (recommended, reason) = match m.idle_closed.1 {
                Some(idle_us) => {
                    let below_s = (idle_us / 1_000_000).saturating_sub(1).max(1);
                    let value = LADDER_S
                        .iter()
                        .rev()
                        .copied()
                        .find(|&v| v <= below_s)
                        .unwrap_or(1);
                    (
                        Some(value.min(current_ms / 1000) as f64),
                        format!(
                            "the backend closed kept-alive connections idle for {}: close them first",
                            crate::human::human_us(idle_us)
                        ),
                    )
                }
                None => (
                    Some(current_ms as f64 / 1000.0),
                    "no kept-alive connection closed by the backend was seen".to_string(),
                ),
            };
            out.push(row(
                "keepalive_timeout",
                (&group.keepalive_timeout, &group.at),
                current_ms as f64 / 1000.0,
                recommended,
                (m.idle_closed.0, 0),
                (0, None),
                reason,
            ));
        }
        owners.resize(out.len(), index);
    }
    to_server_blocks(config, &mut out, &owners);
    out
}

/// A value written nowhere that every location passing with the module
/// needs alike: added once, to the `http` block when the locations of
/// several servers share it, else to each server block whose locations
/// all do, rather than to each location (`owners`: each event's location).
fn to_server_blocks(config: &Config, out: &mut [TuneEvent], owners: &[usize]) {
    let to_http = shared_by_a_whole_block(config, out, owners, |l| &l.http_at);
    // Advice for one server's locations alone belongs to that server.
    let to_http: Vec<_> = to_http
        .into_iter()
        .filter(|(i, _)| {
            let at = &config.locations[owners[*i]].http_at;
            let mut servers = config.locations.iter().filter(|l| &l.http_at == at);
            let first = servers.next().map(|l| &l.server_at);
            servers.any(|l| Some(&l.server_at) != first)
        })
        .collect();
    for (i, (file, line)) in &to_http {
        let e = &mut out[*i];
        e.block = "http".to_string();
        e.file = file.clone();
        e.line = *line;
    }
    let in_http: Vec<usize> = to_http.iter().map(|(i, _)| *i).collect();
    for (i, (file, line)) in shared_by_a_whole_block(config, out, owners, |l| &l.server_at) {
        if in_http.contains(&i) {
            continue;
        }
        let e = &mut out[i];
        e.block = format!("server {}", config.locations[owners[i]].server);
        e.file = file;
        e.line = line;
    }
}

/// The events (by index, with the block's place) whose value, added where
/// nginx's default is in effect, is the same for every location of the
/// module in the block `block_of` names, two locations at least.
fn shared_by_a_whole_block<'c>(
    config: &'c Config,
    out: &[TuneEvent],
    owners: &[usize],
    block_of: impl Fn(&'c Location) -> &'c (String, u32),
) -> Vec<(usize, (String, u32))> {
    /// A block, a directive, and the value advised (its bits).
    type Shared<'a> = (&'a (String, u32), &'a str, u64);
    let mut shared: BTreeMap<Shared, Vec<usize>> = BTreeMap::new();
    for (i, e) in out.iter().enumerate() {
        let loc = &config.locations[owners[i]];
        let Some(value) = e.recommended_s.filter(|v| *v != e.current_s) else {
            continue;
        };
        if e.action != "add" || e.directive == "keepalive_timeout" || loc.name == "server" {
            continue;
        }
        shared
            .entry((block_of(loc), e.directive.as_str(), value.to_bits()))
            .or_default()
            .push(i);
    }
    let mut moved = Vec::new();
    for ((at, directive, _), events) in shared {
        let in_block = config
            .locations
            .iter()
            .filter(|l| block_of(l) == at && directive.starts_with(&format!("{}_", l.module)))
            .count();
        if events.len() >= 2 && events.len() == in_block {
            moved.extend(events.into_iter().map(|i| (i, at.clone())));
        }
    }
    moved
}

/// Tuning beside live tracing: measures the exchanges as they come, then
/// advises when tracing stops.
pub struct TuneLive {
    measured: Measurements,
    rate: f64,
    config_file: Option<std::path::PathBuf>,
    json: bool,
}

impl TuneLive {
    /// At `rate`, with the configuration in `config_file` (else the traced
    /// instances'), printing JSON if `json`.
    pub fn new(rate: f64, config_file: Option<std::path::PathBuf>, json: bool) -> Self {
        Self {
            measured: Measurements::default(),
            rate,
            config_file,
            json,
        }
    }
}

impl crate::commands::trace::Watcher for TuneLive {
    fn start(&mut self, _session: &crate::commands::session::Session) -> anyhow::Result<()> {
        crate::notice::notice("measuring upstream exchanges until the duration ends or Ctrl-C");
        Ok(())
    }

    fn tick(
        &mut self,
        session: &crate::commands::session::Session,
        _all: bool,
    ) -> std::io::Result<()> {
        for e in session.output().take_captured() {
            measure(&mut self.measured, &e);
        }
        Ok(())
    }

    fn finish(&mut self, session: &crate::commands::session::Session) -> std::io::Result<()> {
        self.tick(session, true)?;
        let configs =
            crate::nginx::configs::Configs::load(self.config_file.as_deref(), session.traced());
        self.measured.notice_folded();
        print(
            &tune(configs.config(), &self.measured, self.rate),
            configs.config(),
            self.json,
        )
    }
}

/// Prints the tune events (JSON) or their lines.
pub fn print(events: &[TuneEvent], config: &Config, json: bool) -> std::io::Result<()> {
    let out = crate::report::output::Output::new(json);
    if config.locations.is_empty() {
        crate::notice::notice(
            "no location passing to an upstream in nginx's configuration: nothing to tune \
             (give a saved `nginx -T` with --config FILE)",
        );
    }
    for e in events {
        out.event(e, || e.to_text())?;
    }
    Ok(())
}

/// `tune --from RECORDING`: the recording's exchanges against the
/// configuration in `config_file`, else the running instances'.
pub fn from_recording(
    path: &std::path::Path,
    config_file: Option<&std::path::Path>,
    comm: &str,
    rate: f64,
    json: bool,
) -> anyhow::Result<()> {
    let (rec, _) = crate::report::recording::load(path)?;
    let mut measured = Measurements::default();
    for e in &rec.events {
        measure(&mut measured, e);
    }
    measured.notice_folded();
    let traced = crate::nginx::procs::all_instances(comm);
    let configs = crate::nginx::configs::Configs::load(config_file, &traced);
    print(
        &tune(configs.config(), &measured, rate),
        configs.config(),
        json,
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_is_set_above_the_quantile_with_a_margin_and_rounded() {
        // 1,000 waits: 990 of 50 ms, 10 of 2 s; at 1%, the p99 is 50 ms.
        let mut values = vec![50_000; 990];
        values.extend([2_000_000; 10]);
        let values = Weighted::exact(&values);
        let a = recommend(&values, 0, 60_000, 0.01, 0);
        assert_eq!(a.recommended_ms, Some(1000), "{a:?}");
        assert_eq!((a.cut_now, a.cut_recommended), (0, Some(10)));
        // At 0.1% the 2 s waits must pass: 3 s.
        let a = recommend(&values, 0, 60_000, 0.001, 0);
        assert!(a.reason.starts_with("insufficient data (n=1000"), "{a:?}");
        // 10,000 waits with 20 of 2 s: at 0.1% (10 may be cut) they must
        // pass: 2 s × 1.5 is 3 s.
        let mut more = vec![50_000; 9980];
        more.extend([2_000_000; 20]);
        let a = recommend(&Weighted::exact(&more), 0, 60_000, 0.001, 0);
        assert_eq!(
            (a.recommended_ms, a.cut_recommended),
            (Some(3000), Some(0)),
            "{a:?}"
        );
    }

    #[test]
    fn censored_exchanges_keep_a_timeout_that_cut_too_many() {
        let values = Weighted::exact(&[50_000; 950]);
        let a = recommend(&values, 50, 1000, 0.01, 0);
        assert_eq!(a.recommended_ms, Some(1000));
        assert_eq!(a.cut_now, 50);
        assert!(a.reason.contains("not lowered"), "{a:?}");
    }

    #[test]
    fn a_connect_timeout_stays_above_the_first_syn_retransmission() {
        let values = Weighted::exact(&[100; 1000]);
        let a = recommend(&values, 0, 60_000, 0.01, 1001);
        assert_eq!(a.recommended_ms, Some(2000), "{a:?}");
        assert!(a.reason.contains("first SYN retransmission"));
    }

    #[test]
    fn a_timeout_of_years_counts_no_cut() {
        let ms = crate::nginx::nginx_conf::parse_time_ms("600000y").unwrap();
        let values = Weighted::exact(&[2_000_000; 1000]);
        let a = recommend(&values, 0, ms, 0.01, 0);
        assert_eq!(a.cut_now, 0, "{a:?}");
        assert_eq!(a.recommended_ms, Some(3000), "{a:?}");
    }

    #[test]
    fn values_round_to_what_a_person_writes() {
        assert_eq!(round_up_s(1), 1);
        assert_eq!(round_up_s(2400), 3);
        assert_eq!(round_up_s(46_000), 60);
        assert_eq!(round_up_s(4_000_000), 4020);
        assert_eq!(human_s(120.0), "2m");
        assert_eq!(human_s(0.5), "500ms");
    }

    fn answered(upstream: &str, first_byte_us: u64) -> Value {
        serde_json::json!({"event": "upstream", "upstream": upstream, "outcome": "ok",
            "timings_us": {"connect": 100, "first_byte": first_byte_us, "request_write": 5},
            "tcp": {"srtt_us": 40}})
    }

    #[test]
    fn each_location_is_advised_from_its_own_exchanges_when_they_are_told_apart() {
        let config = Config::from_dump(
            "# configuration file /etc/nginx/nginx.conf:
http {
    server {
        location /api/ { proxy_pass http://127.0.0.1:8001; }
        location /api/reports/ { proxy_read_timeout 5s; proxy_pass http://127.0.0.1:8001; }
    }
}
",
        );
        let at = |location: &str| {
            let l = config
                .locations
                .iter()
                .find(|l| l.name == location)
                .unwrap();
            serde_json::json!({"name": location, "file": l.block_at.0, "line": l.block_at.1})
        };
        let (fast, slow) = (at("/api/"), at("/api/reports/"));
        let mut placed = Measurements::default();
        let mut pooled = Measurements::default();
        for i in 0..2_000 {
            // 15 ms answers from /api/, 2 s ones from /api/reports/.
            let mut e = answered("127.0.0.1:8001", 15_000);
            let mut r = answered("127.0.0.1:8001", 2_000_000);
            if i % 2 == 0 {
                measure(&mut pooled, &e);
                measure(&mut pooled, &r);
            }
            e["location"] = fast.clone();
            r["location"] = slow.clone();
            measure(&mut placed, &e);
            measure(&mut placed, &r);
        }
        let read = |events: &[TuneEvent], location: &str| {
            let e = events
                .iter()
                .find(|e| e.location == location && e.directive == "proxy_read_timeout")
                .unwrap();
            (e.recommended_s.unwrap(), e.reason.clone())
        };
        let events = tune(&config, &placed, 0.01);
        let (api, reason) = read(&events, "/api/");
        assert!(api <= 1.0, "15 ms answers: {api} s ({reason})");
        assert!(!reason.contains("not told apart"), "{reason}");
        let (reports, _) = read(&events, "/api/reports/");
        assert!(reports >= 3.0, "2 s answers: {reports} s");
        // Not told apart: both from the server's mixed exchanges, and said.
        let events = tune(&config, &pooled, 0.01);
        let (api, reason) = read(&events, "/api/");
        assert!(api >= 3.0, "{api}");
        assert!(reason.contains("not told apart"), "{reason}");
    }

    #[test]
    fn a_value_every_location_of_a_server_needs_is_added_once_to_the_server() {
        let config = Config::from_dump(
            "# configuration file /etc/nginx/nginx.conf:
http {
    server {
        server_name app.example;
        location /a { proxy_pass http://127.0.0.1:8001; }
        location /b { proxy_pass http://127.0.0.1:8001; }
    }
    server {
        server_name other.example;
        location /c { proxy_read_timeout 30s; proxy_pass http://127.0.0.1:8002; }
        location /d { proxy_pass http://127.0.0.1:8002; }
    }
}
",
        );
        let mut m = Measurements::default();
        for _ in 0..2_000 {
            measure(&mut m, &answered("127.0.0.1:8001", 20_000));
            measure(&mut m, &answered("127.0.0.1:8002", 20_000));
        }
        let events = tune(&config, &m, 0.01);
        let read = |location: &str| {
            events
                .iter()
                .find(|e| e.location == location && e.directive == "proxy_read_timeout")
                .unwrap()
        };
        // /a and /b share the server's default and the advice: the server.
        for location in ["/a", "/b"] {
            let e = read(location);
            assert_eq!(
                (e.action, e.block.as_str(), e.line),
                ("add", "server app.example", 2),
                "{e:?}"
            );
            assert!(
                e.to_text()
                    .contains("to server app.example at /etc/nginx/nginx.conf:2")
            );
        }
        // /c sets its own; /d alone is at the default: its location.
        assert_eq!((read("/c").action, read("/c").line), ("change", 9));
        let d = read("/d");
        assert_eq!(
            (d.action, d.block.as_str(), d.line),
            ("add", "location /d", 10)
        );
    }

    #[test]
    fn a_value_the_locations_of_every_server_need_is_added_once_to_http() {
        let config = Config::from_dump(
            "# configuration file /etc/nginx/nginx.conf:
http {
    server {
        server_name app.example;
        location /a { proxy_pass http://127.0.0.1:8001; }
        location /b { proxy_pass http://127.0.0.1:8001; }
    }
    server {
        server_name other.example;
        location /c { proxy_pass http://127.0.0.1:8002; }
        location /php { fastcgi_pass unix:/run/php.sock; }
    }
}
",
        );
        let mut m = Measurements::default();
        for _ in 0..2_000 {
            measure(&mut m, &answered("127.0.0.1:8001", 20_000));
            measure(&mut m, &answered("127.0.0.1:8002", 20_000));
        }
        let events = tune(&config, &m, 0.01);
        for location in ["/a", "/b", "/c"] {
            let e = events
                .iter()
                .find(|e| e.location == location && e.directive == "proxy_read_timeout")
                .unwrap();
            assert_eq!(
                (e.action, e.block.as_str(), e.line),
                ("add", "http", 1),
                "{e:?}"
            );
            assert!(e.to_text().contains("to http at /etc/nginx/nginx.conf:1"));
        }
    }

    #[test]
    fn servers_past_the_cap_fold_and_samples_stay_bounded_with_exact_counts() {
        let mut m = Measurements::default();
        for i in 0..1_000u64 {
            measure(&mut m, &answered(&format!("unix:/tmp/n{i}.sock"), 1000));
        }
        assert_eq!(m.by.len(), MAX_SERVERS + 1);
        assert_eq!(m.names.folded(), 1_000 - MAX_SERVERS as u64);
        assert_eq!(m.by["other"].read.seen(), 1_000 - MAX_SERVERS as u64);
        // One busy server: 200,000 exchanges, 1 in 1,000 waiting 4 s.
        for i in 0..200_000u64 {
            let wait = if i % 1000 == 7 {
                4_000_000
            } else {
                20_000 + i % 30_000
            };
            measure(&mut m, &answered("10.0.0.1:80", wait));
        }
        // Folded: "10.0.0.1:80" came after the cap.
        let other = &m.by["other"];
        assert_eq!(other.read.seen(), 200_000 + 1_000 - MAX_SERVERS as u64);
        assert_eq!(other.read.weighted().count(), SAMPLES);
        assert_eq!(other.send.weighted().count(), FEW_SAMPLES);
        // The quantile from the sample: at 0.5%, the 4 s waits (0.1%) are
        // cut and the recommendation rests on the p99.5 (about 50 ms).
        let pooled = Weighted::pool([&other.read]);
        assert_eq!(pooled.seen(), 200_936);
        let a = recommend(&pooled, 0, 60_000, 0.005, 0);
        assert_eq!(a.recommended_ms, Some(1000), "{a:?}");
        let cut = a.cut_recommended.unwrap();
        // An estimate: 200 ± 25 (one standard deviation).
        assert!((100..=300).contains(&cut), "about 200 cut: {a:?}");
        assert!(a.reason.contains("uniform sample"), "{a:?}");
    }
}
