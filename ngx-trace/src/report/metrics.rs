//! The Prometheus metrics (`--metrics-listen`, `--metrics-file`): what is
//! counted, with which labels and buckets. Served by `metrics_http`.
//!
//! Labels stay bounded: `upstream` is the `upstream{}` group (or the
//! address when a location passes to one directly), `server` the address;
//! no pid, no path. Past `--metrics-max-servers` distinct servers, new ones
//! are counted as `server="other"` and the folded ones are counted.
//!
//! A server's group is looked up in the configuration of the nginx instance
//! whose worker made the exchange: two instances may use one address in
//! groups of different names.
use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context as _, Result};
use fastmetrics::{
    encoder::{EncodeLabelSet, LabelSetEncoder},
    format::text::{self, TextProfile},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    raw::{LabelSetSchema, metadata::Unit},
    registry::Registry,
};

use crate::{
    diagnosis::timings::Timings,
    diagnosis::verdict::{Outcome, Verdict},
    kernel::records::Transport,
    nginx::configs::Configs,
    nginx::nginx_conf::Config,
};

/// Bucket bounds of every duration histogram, µs: 100 µs to 600 s, so that
/// nginx's 60 s default timeouts and the waits they cut fall inside.
const BUCKETS_US: [u64; 21] = [
    100,
    250,
    500,
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    30_000_000,
    60_000_000,
    120_000_000,
    300_000_000,
    600_000_000,
];

/// The label the servers past the cap share.
const OTHER: &str = "other";

/// The master pid of a configuration that applies to every nginx instance
/// (`--config FILE`, or one merged from every master), and to workers whose
/// own instance's configuration is unknown.
pub const ANY_INSTANCE: u32 = 0;

/// The configurations group labels come from, by master pid: each
/// instance's own; with `--config FILE` (no instance's), that one for all
/// ([`ANY_INSTANCE`]), as is the only instance's when there is one (for
/// its workers whose master could not be read).
pub fn instance_configs(configs: &Configs) -> Vec<(u32, &Config)> {
    let per_master = configs.per_master();
    let mut instances: Vec<(u32, &Config)> = per_master.iter().map(|(m, c)| (*m, c)).collect();
    if per_master.len() <= 1 {
        instances.push((ANY_INSTANCE, configs.config()));
    }
    instances
}

/// Workers whose master is remembered, at most (past it, only the current
/// workers' are kept): those gone stay known for their last exchanges.
const MAX_WORKERS_REMEMBERED: usize = 4096;

/// Distinct `location` label values at most: a configuration (read from a
/// traced process's files) of thousands of locations cannot grow the
/// series without bound.
pub const MAX_LOCATION_LABELS: usize = 512;

/// One exchange's route: the worker that made it (whose master says which
/// instance's groups apply) and the server it went to.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// The nginx worker's pid.
    pub worker: u32,
    /// The server, as named in events (`127.0.0.1:8081`, `unix:/run/a.sock`).
    pub server: &'a str,
    /// How it is reached.
    pub transport: Transport,
}

/// Where an exchange came from: its route and the `location` that passed
/// it (`None`: not placed in one).
#[derive(Debug, Clone, Copy)]
pub struct Placed<'a> {
    /// Its route.
    pub route: Route<'a>,
    /// The location's name, as written after `location`.
    pub location: Option<&'a str>,
}

/// The `upstream{}` group of each server address, per nginx instance.
#[derive(Default)]
struct Groups {
    /// By master pid ([`ANY_INSTANCE`]: every instance), each server
    /// address's group (the first group that lists it, in that instance).
    by_master: HashMap<u32, HashMap<String, Arc<str>>>,
    /// The master of each worker seen.
    masters: HashMap<u32, u32>,
}

impl Groups {
    /// Groups from `configs`, by master pid; the workers' masters stay.
    fn set(&mut self, configs: &[(u32, &Config)]) {
        self.by_master.clear();
        for (master, config) in configs {
            let groups = self.by_master.entry(*master).or_default();
            for group in &config.groups {
                let name: Arc<str> = group.name.as_str().into();
                for server in &group.servers {
                    for addr in &server.addrs {
                        groups
                            .entry(addr.clone())
                            .or_insert_with(|| Arc::clone(&name));
                    }
                }
            }
        }
    }

    /// The group of `server` for the exchanges of `worker`: from its own
    /// instance's configuration when known (a server in no group there is
    /// no other instance's group member), else from [`ANY_INSTANCE`]'s.
    fn of(&self, worker: u32, server: &str) -> Option<Arc<str>> {
        let own = self
            .masters
            .get(&worker)
            .and_then(|master| self.by_master.get(master));
        own.or_else(|| self.by_master.get(&ANY_INSTANCE))?
            .get(server)
            .cloned()
    }
}

/// µs as the seconds Prometheus wants. Bounds and observations go through
/// this one conversion: it is monotonic, so an observation equal to a
/// bound in µs lands in that bound's bucket, exactly.
fn seconds(us: u64) -> f64 {
    us as f64 / 1e6
}

/// The bucket bounds, µs: the fixed ones plus every timeout value in
/// `configured`.
pub fn bucket_bounds_us(configured: &BTreeSet<u64>) -> Vec<u64> {
    let mut bounds: BTreeSet<u64> = BUCKETS_US.into_iter().collect();
    bounds.extend(configured.iter().copied().filter(|&us| us > 0));
    bounds.into_iter().collect()
}

/// Labels of one server: `upstream` (its group), `server`, `transport`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServerLabels {
    upstream: Arc<str>,
    server: Arc<str>,
    transport: &'static str,
}

impl LabelSetSchema for ServerLabels {
    fn names() -> Option<&'static [&'static str]> {
        Some(&["upstream", "server", "transport"])
    }
}

impl EncodeLabelSet for ServerLabels {
    fn encode(&self, encoder: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
        encoder.encode(&("upstream", &*self.upstream))?;
        encoder.encode(&("server", &*self.server))?;
        encoder.encode(&("transport", self.transport))
    }
}

/// The `location` label of an exchange not placed in one location.
pub const UNKNOWN_LOCATION: &str = "unknown";

/// A server's labels plus the `location` that passed the exchange (as
/// written after `location`: bounded by the configuration, never the
/// request's path).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct PlacedLabels {
    server: ServerLabels,
    location: Arc<str>,
}

impl LabelSetSchema for PlacedLabels {
    fn names() -> Option<&'static [&'static str]> {
        Some(&["upstream", "server", "transport", "location"])
    }
}

impl EncodeLabelSet for PlacedLabels {
    fn encode(&self, encoder: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
        self.server.encode(encoder)?;
        encoder.encode(&("location", &*self.location))
    }
}

/// A placed exchange's labels plus its outcome and verdict.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExchangeLabels {
    placed: PlacedLabels,
    outcome: &'static str,
    verdict: &'static str,
}

impl LabelSetSchema for ExchangeLabels {
    fn names() -> Option<&'static [&'static str]> {
        Some(&[
            "upstream",
            "server",
            "transport",
            "location",
            "outcome",
            "verdict",
        ])
    }
}

impl EncodeLabelSet for ExchangeLabels {
    fn encode(&self, encoder: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
        self.placed.encode(encoder)?;
        encoder.encode(&("outcome", self.outcome))?;
        encoder.encode(&("verdict", self.verdict))
    }
}

/// A server's labels plus who retransmitted (`nginx` or `upstream`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct RetransmitLabels {
    server: ServerLabels,
    by: &'static str,
}

impl LabelSetSchema for RetransmitLabels {
    fn names() -> Option<&'static [&'static str]> {
        Some(&["upstream", "server", "transport", "by"])
    }
}

impl EncodeLabelSet for RetransmitLabels {
    fn encode(&self, encoder: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
        self.server.encode(encoder)?;
        encoder.encode(&("by", self.by))
    }
}

/// One configured timeout: the upstream, the location and the directive.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct TimeoutLabels {
    upstream: Arc<str>,
    location: Arc<str>,
    directive: Arc<str>,
}

impl LabelSetSchema for TimeoutLabels {
    fn names() -> Option<&'static [&'static str]> {
        Some(&["upstream", "location", "directive"])
    }
}

impl EncodeLabelSet for TimeoutLabels {
    fn encode(&self, encoder: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
        encoder.encode(&("upstream", &*self.upstream))?;
        encoder.encode(&("location", &*self.location))?;
        encoder.encode(&("directive", &*self.directive))
    }
}

/// The build's version and the kernel it runs on.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct BuildLabels {
    version: &'static str,
    kernel: String,
}

impl LabelSetSchema for BuildLabels {
    fn names() -> Option<&'static [&'static str]> {
        Some(&["version", "kernel"])
    }
}

impl EncodeLabelSet for BuildLabels {
    fn encode(&self, encoder: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
        encoder.encode(&("version", self.version))?;
        encoder.encode(&("kernel", self.kernel.as_str()))
    }
}

/// The four phase histograms.
struct Phases {
    connect: Family<PlacedLabels, Histogram>,
    first_byte: Family<PlacedLabels, Histogram>,
    request_acked: Family<PlacedLabels, Histogram>,
    total: Family<PlacedLabels, Histogram>,
}

/// Every metric, and the registry that exposes them.
pub struct Metrics {
    registry: Arc<Registry>,
    exchanges: Family<ExchangeLabels, Counter>,
    phases: Phases,
    retransmits: Family<RetransmitLabels, Counter>,
    pending: Family<ServerLabels, Gauge>,
    pending_shown: HashSet<ServerLabels>,
    timeouts: Family<TimeoutLabels, Gauge<f64>>,
    timeouts_shown: HashSet<TimeoutLabels>,
    lost: Counter,
    traced_workers: Gauge,
    folded: Gauge,
    /// The servers labelled by name (at most `max_servers`), each name
    /// allocated once.
    servers: HashSet<Arc<str>>,
    /// Servers counted as `other`.
    folded_servers: HashSet<String>,
    /// The `location` label values used.
    locations: HashSet<Arc<str>>,
    max_servers: usize,
    /// The group of each server, per instance.
    groups: Groups,
    file: Option<PathBuf>,
}

/// The histogram families' help texts, by metric name (seconds).
const PHASE_HELP: [(&str, &str); 4] = [
    (
        "connect_duration",
        "Upstream connect() to handshake done (or to the connect's failure)",
    ),
    (
        "first_byte_duration",
        "Last request byte written to the first response byte (answered exchanges)",
    ),
    (
        "request_acked_duration",
        "Last request byte written to its TCP acknowledgement",
    ),
    (
        "exchange_duration",
        "Whole upstream exchange, connect (or first request byte on a kept-alive connection) to end",
    ),
];

impl Metrics {
    /// Registers every metric, with histogram buckets from 100 µs to 600 s
    /// plus every timeout the `configs` (by master pid, see
    /// [`Metrics::set_configs`]) set; `file`, if given, is written by
    /// [`Metrics::write_file`].
    pub fn new(
        configs: &[(u32, &Config)],
        max_servers: usize,
        file: Option<PathBuf>,
    ) -> Result<Self> {
        let configured: BTreeSet<u64> = configs
            .iter()
            .flat_map(|(_, config)| timeout_values_us(config))
            .collect();
        let bounds: Vec<f64> = bucket_bounds_us(&configured)
            .into_iter()
            .map(seconds)
            .collect();
        let mut registry = Registry::builder()
            .with_namespace("ngxtrace")
            .build()
            .context("failed to set up the metrics registry")?;
        let histogram = || {
            let bounds = bounds.clone();
            Family::<PlacedLabels, Histogram>::new(move || Histogram::new(bounds.iter().copied()))
        };
        let phases = Phases {
            connect: histogram(),
            first_byte: histogram(),
            request_acked: histogram(),
            total: histogram(),
        };
        let metrics = Self {
            registry: Arc::new(Registry::default()),
            exchanges: Family::default(),
            phases,
            retransmits: Family::default(),
            pending: Family::default(),
            pending_shown: HashSet::new(),
            timeouts: Family::default(),
            timeouts_shown: HashSet::new(),
            lost: Counter::default(),
            traced_workers: Gauge::default(),
            folded: Gauge::default(),
            servers: HashSet::new(),
            folded_servers: HashSet::new(),
            locations: HashSet::new(),
            max_servers,
            groups: Groups::default(),
            file,
        };
        let build = Family::<BuildLabels, Gauge>::default();
        build.with_or_new(
            &BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                kernel: crate::kernel::config::kernel_release(),
            },
            |g| g.set(1),
        );
        let fail = |what: &str| format!("failed to register the metric {what}");
        registry
            .register(
                "exchanges_total",
                "Upstream connect attempts and exchanges, by how they ended and whose fault it was",
                metrics.exchanges.clone(),
            )
            .with_context(|| fail("exchanges"))?;
        for ((name, help), family) in PHASE_HELP.iter().zip([
            &metrics.phases.connect,
            &metrics.phases.first_byte,
            &metrics.phases.request_acked,
            &metrics.phases.total,
        ]) {
            registry
                .register_with_unit(*name, *help, Unit::Seconds, family.clone())
                .with_context(|| fail(name))?;
        }
        registry
            .register(
                "retransmits_total",
                "TCP retransmissions on upstream connections, by nginx's side or the upstream's",
                metrics.retransmits.clone(),
            )
            .with_context(|| fail("retransmits"))?;
        registry
            .register(
                "pending_exchanges",
                "Upstream exchanges under way now: connecting, or request sent and no answer yet",
                metrics.pending.clone(),
            )
            .with_context(|| fail("pending_exchanges"))?;
        registry
            .register_with_unit(
                "configured_timeout",
                "Timeouts in nginx's configuration, per upstream, location and directive",
                Unit::Seconds,
                metrics.timeouts.clone(),
            )
            .with_context(|| fail("configured_timeout"))?;
        registry
            .register(
                "lost_records_total",
                "Kernel records lost (ring buffer or map full) or undecodable",
                metrics.lost.clone(),
            )
            .with_context(|| fail("lost_records"))?;
        registry
            .register(
                "traced_workers",
                "nginx worker processes traced now",
                metrics.traced_workers.clone(),
            )
            .with_context(|| fail("traced_workers"))?;
        registry
            .register(
                "folded_servers",
                "Servers counted as the server other, past --metrics-max-servers",
                metrics.folded.clone(),
            )
            .with_context(|| fail("folded_servers"))?;
        registry
            .register("build_info", "ngx-trace's version and the kernel", build)
            .with_context(|| fail("build_info"))?;
        let mut metrics = metrics;
        metrics.registry = Arc::new(registry);
        metrics.set_configs(configs);
        Ok(metrics)
    }

    /// The registry, for the HTTP server.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Takes the configurations (again, after a reload), each with the pid
    /// of the master whose instance it configures ([`ANY_INSTANCE`] for
    /// one that applies to all): groups and timeouts. Histogram buckets
    /// stay as they were at start; the servers labelled stay too, so the
    /// cap holds across reloads.
    pub fn set_configs(&mut self, configs: &[(u32, &Config)]) {
        self.groups.set(configs);
        let mut shown = HashSet::new();
        for location in configs.iter().flat_map(|(_, c)| &c.locations) {
            let upstreams: Vec<&str> = match &location.group {
                Some(group) => vec![group.as_str()],
                None => location.servers.iter().map(String::as_str).collect(),
            };
            for (directive, setting) in &location.settings {
                if !is_timeout(directive) {
                    continue;
                }
                let Some(ms) = setting.ms() else { continue };
                for upstream in &upstreams {
                    let labels = TimeoutLabels {
                        upstream: (*upstream).into(),
                        location: location.name.as_str().into(),
                        directive: directive.as_str().into(),
                    };
                    // ms as seconds without going through µs: a valid
                    // `600000y` overflows u64 µs.
                    self.timeouts
                        .with_or_new(&labels, |g| g.set(ms as f64 / 1e3));
                    shown.insert(labels);
                }
            }
        }
        // Settings gone with the reload read 0 rather than their old value.
        for gone in self.timeouts_shown.difference(&shown) {
            self.timeouts.with(gone, |g| g.set(0.0));
        }
        self.timeouts_shown = shown;
    }

    /// Remembers the master of each worker in `workers` (worker pid →
    /// master pid), whose configuration names its servers' groups.
    pub fn set_masters(&mut self, workers: &BTreeMap<u32, u32>) {
        let masters = &mut self.groups.masters;
        if masters.len() + workers.len() > MAX_WORKERS_REMEMBERED {
            masters.clear();
        }
        masters.extend(workers);
    }

    /// The labels of `route`'s server, folded into `other` past the cap.
    fn labels(&mut self, route: Route<'_>) -> ServerLabels {
        let group = self.groups.of(route.worker, route.server);
        let name = match self.servers.get(route.server) {
            Some(name) => Arc::clone(name),
            None if self.servers.len() < self.max_servers => {
                let name: Arc<str> = route.server.into();
                self.servers.insert(Arc::clone(&name));
                name
            }
            None => {
                // Bounded too: past 65,536 the count stops growing.
                if self.folded_servers.len() < 65_536 && !self.folded_servers.contains(route.server)
                {
                    self.folded_servers.insert(route.server.to_string());
                    self.folded.set(self.folded_servers.len() as i64);
                }
                return ServerLabels {
                    upstream: group.unwrap_or_else(|| OTHER.into()),
                    server: OTHER.into(),
                    transport: route.transport.as_str(),
                };
            }
        };
        ServerLabels {
            upstream: group.unwrap_or_else(|| Arc::clone(&name)),
            server: name,
            transport: route.transport.as_str(),
        }
    }

    /// Counts one finished exchange on `route` and its phase durations.
    pub fn exchange(
        &mut self,
        placed: Placed<'_>,
        outcome: Outcome,
        verdict: Verdict,
        timings: &Timings,
        retransmits: (u32, u32),
    ) {
        let labels = self.labels(placed.route);
        let placed = PlacedLabels {
            server: labels.clone(),
            location: self.location(placed.location),
        };
        for (family, value) in [
            (&self.phases.connect, timings.connect),
            (&self.phases.first_byte, timings.first_byte),
            (&self.phases.request_acked, timings.request_acked),
            (&self.phases.total, timings.total),
        ] {
            if let Some(us) = value {
                family.with_or_new(&placed, |h| h.observe(seconds(us)));
            }
        }
        for (by, n) in [("nginx", retransmits.0), ("upstream", retransmits.1)] {
            if n > 0 {
                let labels = RetransmitLabels {
                    server: labels.clone(),
                    by,
                };
                self.retransmits
                    .with_or_new(&labels, |c| c.inc_by(u64::from(n)));
            }
        }
        let labels = ExchangeLabels {
            placed,
            outcome: outcome.as_str(),
            verdict: verdict.as_str(),
        };
        self.exchanges.with_or_new(&labels, |c| c.inc());
    }

    /// The `location` label: the name (from the configuration, so the
    /// values are bounded by it), each allocated once; `unknown` when not
    /// placed, or past [`MAX_LOCATION_LABELS`] names.
    fn location(&mut self, name: Option<&str>) -> Arc<str> {
        let Some(name) = name else {
            return UNKNOWN_LOCATION.into();
        };
        if let Some(known) = self.locations.get(name) {
            return Arc::clone(known);
        }
        if self.locations.len() >= MAX_LOCATION_LABELS {
            return UNKNOWN_LOCATION.into();
        }
        let label: Arc<str> = name.into();
        self.locations.insert(Arc::clone(&label));
        label
    }

    /// Sets the exchanges under way now, one route each.
    pub fn set_pending<'a>(&mut self, routes: impl Iterator<Item = Route<'a>>) {
        let mut counts: HashMap<ServerLabels, i64> = HashMap::new();
        for route in routes {
            *counts.entry(self.labels(route)).or_default() += 1;
        }
        for gone in self
            .pending_shown
            .iter()
            .filter(|l| !counts.contains_key(l))
        {
            self.pending.with(gone, |g| g.set(0));
        }
        for (labels, n) in &counts {
            self.pending.with_or_new(labels, |g| g.set(*n));
        }
        self.pending_shown.extend(counts.into_keys());
    }

    /// Sets the running total of lost records.
    pub fn set_lost(&self, total: u64) {
        let counted = self.lost.total();
        if total > counted {
            self.lost.inc_by(total - counted);
        }
    }

    /// Sets the number of traced workers.
    pub fn set_traced_workers(&self, n: usize) {
        self.traced_workers.set(n as i64);
    }

    /// The `--metrics-file`, if given (written by [`crate::report::metrics_file`]).
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Writes the metrics to `--metrics-file`, if given (see
    /// [`write_registry`]).
    #[cfg(test)]
    pub fn write_file(&self) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        write_registry(&self.registry, path)
    }
}

/// Writes the metrics of `registry` to `path` atomically: a temporary file
/// in the same directory, renamed over it (what node_exporter's textfile
/// collector asks for).
pub fn write_registry(registry: &Registry, path: &Path) -> Result<()> {
    let body = encode(registry, Format::Prometheus)?;
    write_atomically(path, body.as_bytes())
}

/// Fails, saying what to do, when `--metrics-file` cannot be written: its
/// directory must exist (checked before tracing starts).
pub fn check_file(path: &Path) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    if path.file_name().is_none() || !dir.is_dir() {
        anyhow::bail!(
            "--metrics-file {}: {} is not a directory; give a file in an existing directory",
            path.display(),
            dir.display()
        );
    }
    Ok(())
}

/// Whether `directive` is a timeout (a time, exported as a gauge).
fn is_timeout(directive: &str) -> bool {
    directive.ends_with("_connect_timeout")
        || directive.ends_with("_send_timeout")
        || directive.ends_with("_read_timeout")
        || directive.ends_with("_next_upstream_timeout")
}

/// Every timeout value `config` sets (defaults included), µs; one too long
/// for u64 µs (`600000y` is valid nginx) reads `u64::MAX`.
pub fn timeout_values_us(config: &Config) -> BTreeSet<u64> {
    config
        .locations
        .iter()
        .flat_map(|l| &l.settings)
        .filter(|(name, _)| is_timeout(name))
        .filter_map(|(_, s)| s.ms())
        .map(|ms| ms.saturating_mul(1000))
        .collect()
}

/// The exposition formats served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Prometheus text 0.0.4 (what `promtool check metrics` reads).
    Prometheus,
    /// OpenMetrics text 1.0.0.
    OpenMetrics,
}

impl Format {
    /// The HTTP `Content-Type` of this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
        }
    }
}

/// The metrics in `registry`, in `format`.
pub fn encode(registry: &Registry, format: Format) -> Result<String> {
    let profile = match format {
        Format::Prometheus => TextProfile::PrometheusV0_0_4,
        Format::OpenMetrics => TextProfile::default(),
    };
    let mut body = String::new();
    text::encode(&mut body, registry, profile).context("failed to encode the metrics")?;
    Ok(body)
}

/// A value nobody else can guess: the kernel's random bytes (`getrandom`),
/// else std's hasher keys, also seeded from the OS.
fn unguessable() -> u64 {
    let mut bytes = [0u8; 8];
    // SAFETY: the kernel writes at most `bytes.len()` bytes into `bytes`.
    let n = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if usize::try_from(n) == Ok(bytes.len()) {
        return u64::from_ne_bytes(bytes);
    }
    use std::hash::BuildHasher as _;
    std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now())
}

/// The temporary file beside `path` for the write numbered `random`:
/// `.NAME.PID.RANDOM.tmp`, hidden from textfile collectors (they read
/// `*.prom`).
fn temporary_path(path: &Path, random: u64) -> Option<PathBuf> {
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(path.file_name()?);
    tmp_name.push(format!(".{}.{random:016x}.tmp", std::process::id()));
    Some(path.with_file_name(tmp_name))
}

/// Writes `bytes` to `tmp`, a file it creates (never one that exists, nor
/// through a symbolic link: the directory may be writable by others), then
/// renames it over `path` (which replaces a link at `path` itself, never
/// its target).
fn write_through(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .mode(0o644)
        .open(tmp)?;
    // 0644 whatever the umask: textfile collectors (node_exporter) run as
    // another user and must read it; it holds nothing nginx -T does not.
    let written = file
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .and_then(|()| file.write_all(bytes))
        .and_then(|()| std::fs::rename(tmp, path));
    if written.is_err() {
        // Ours: created above, with a name nobody else knows.
        let _ = std::fs::remove_file(tmp);
    }
    written
}

/// Writes `bytes` to `path` through a temporary file, with an unguessable
/// name in the same directory, renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let failed = || {
        format!(
            "failed to write the metrics file {}: check that its directory exists and is \
             writable",
            path.display()
        )
    };
    let mut tries = 0;
    loop {
        let tmp = temporary_path(path, unguessable())
            .with_context(|| format!("--metrics-file {} names no file", path.display()))?;
        match write_through(&tmp, path, bytes) {
            // A name taken (by chance, or planted): draw another.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && tries < 3 => tries += 1,
            written => return written.with_context(failed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dump: &str) -> Config {
        Config::from_dump(dump)
    }

    const DUMP: &str = "# configuration file /etc/nginx/nginx.conf:\n\
        http {\n\
          proxy_read_timeout 1500ms;\n\
          upstream app { server 127.0.0.1:8081; server 127.0.0.1:8082; }\n\
          server { listen 80;\n\
            location /api { proxy_pass http://app; proxy_connect_timeout 3s; }\n\
            location /direct { proxy_pass http://127.0.0.1:9000; }\n\
          }\n\
        }\n";

    /// A worker of the instance configured by `DUMP` (under
    /// [`ANY_INSTANCE`] in most tests).
    const WORKER: u32 = 4243;

    fn unplaced(route: Route<'_>) -> Placed<'_> {
        Placed {
            route,
            location: None,
        }
    }

    fn tcp(worker: u32, server: &str) -> Route<'_> {
        Route {
            worker,
            server,
            transport: Transport::Tcp,
        }
    }

    fn scrape(m: &Metrics, format: Format) -> String {
        encode(&m.registry, format).unwrap()
    }

    #[test]
    fn buckets_hold_every_configured_timeout() {
        let values = timeout_values_us(&config(DUMP));
        assert!(values.contains(&1_500_000), "{values:?}");
        assert!(values.contains(&3_000_000), "{values:?}");
        let bounds = bucket_bounds_us(&values);
        assert_eq!(bounds.first(), Some(&100));
        assert_eq!(bounds.last(), Some(&600_000_000));
        assert!(bounds.windows(2).all(|w| w[0] < w[1]));
        assert!(bounds.contains(&1_500_000) && bounds.contains(&3_000_000));
    }

    #[test]
    fn a_value_on_a_bound_is_counted_in_that_bucket() {
        let mut m = Metrics::new(&[(ANY_INSTANCE, &config(DUMP))], 10, None).unwrap();
        let t = |us| Timings {
            first_byte: Some(us),
            ..Timings::default()
        };
        for us in [1_500_000, 1_500_001, 99] {
            m.exchange(
                unplaced(tcp(WORKER, "127.0.0.1:8081")),
                Outcome::Ok,
                Verdict::Healthy,
                &t(us),
                (0, 0),
            );
        }
        let text = scrape(&m, Format::Prometheus);
        let bucket = |le: &str| {
            let prefix = format!(
                "ngxtrace_first_byte_duration_seconds_bucket{{upstream=\"app\",\
                 server=\"127.0.0.1:8081\",transport=\"tcp\",location=\"unknown\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
                .to_string()
        };
        assert_eq!(bucket("0.0001"), "1");
        assert_eq!(bucket("1.5"), "2");
        assert_eq!(bucket("2.5"), "3");
        assert_eq!(bucket("+Inf"), "3");
    }

    #[test]
    fn exchanges_are_labelled_by_group_server_location_outcome_and_verdict() {
        let mut m = Metrics::new(&[(ANY_INSTANCE, &config(DUMP))], 10, None).unwrap();
        let t = Timings::default();
        m.exchange(
            Placed {
                route: tcp(WORKER, "127.0.0.1:8082"),
                location: Some("/api"),
            },
            Outcome::Refused,
            Verdict::BackendDown,
            &t,
            (2, 1),
        );
        m.exchange(
            unplaced(tcp(WORKER, "127.0.0.1:9000")),
            Outcome::Ok,
            Verdict::Healthy,
            &t,
            (0, 0),
        );
        let text = scrape(&m, Format::Prometheus);
        for line in [
            "ngxtrace_exchanges_total{upstream=\"app\",server=\"127.0.0.1:8082\",transport=\"tcp\",\
             location=\"/api\",outcome=\"refused\",verdict=\"backend_down\"} 1",
            "ngxtrace_exchanges_total{upstream=\"127.0.0.1:9000\",server=\"127.0.0.1:9000\",\
             transport=\"tcp\",location=\"unknown\",outcome=\"ok\",verdict=\"healthy\"} 1",
            "ngxtrace_retransmits_total{upstream=\"app\",server=\"127.0.0.1:8082\",\
             transport=\"tcp\",by=\"nginx\"} 2",
            "ngxtrace_configured_timeout_seconds{upstream=\"app\",location=\"/api\",\
             directive=\"proxy_connect_timeout\"} 3",
            "ngxtrace_configured_timeout_seconds{upstream=\"127.0.0.1:9000\",\
             location=\"/direct\",directive=\"proxy_read_timeout\"} 1.5",
        ] {
            assert!(text.contains(line), "no {line} in\n{text}");
        }
    }

    #[test]
    fn servers_past_the_cap_fold_into_other_and_are_counted() {
        let mut m = Metrics::new(&[], 2, None).unwrap();
        for port in 1..=5 {
            let server = format!("10.0.0.1:{port}");
            m.exchange(
                unplaced(tcp(WORKER, &server)),
                Outcome::Ok,
                Verdict::Healthy,
                &Timings::default(),
                (0, 0),
            );
        }
        let text = scrape(&m, Format::Prometheus);
        assert!(
            text.contains(
                "ngxtrace_exchanges_total{upstream=\"other\",server=\"other\",transport=\"tcp\",\
                 location=\"unknown\",outcome=\"ok\",verdict=\"healthy\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("ngxtrace_folded_servers 3"), "{text}");
    }

    #[test]
    fn pending_servers_that_finish_read_zero() {
        let mut m = Metrics::new(&[], 10, None).unwrap();
        m.set_pending(
            [Route {
                worker: WORKER,
                server: "unix:/run/php.sock",
                transport: Transport::Unix,
            }; 2]
                .into_iter(),
        );
        let text = scrape(&m, Format::OpenMetrics);
        assert!(
            text.contains(
                "ngxtrace_pending_exchanges{upstream=\"unix:/run/php.sock\",\
                 server=\"unix:/run/php.sock\",transport=\"unix\"} 2"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        m.set_pending(std::iter::empty());
        assert!(scrape(&m, Format::Prometheus).contains(
            "ngxtrace_pending_exchanges{upstream=\"unix:/run/php.sock\",\
                 server=\"unix:/run/php.sock\",transport=\"unix\"} 0"
        ));
    }

    #[test]
    fn the_metrics_file_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("ngx-trace-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ngx-trace.prom");
        let m = Metrics::new(&[], 10, Some(path.clone())).unwrap();
        m.set_traced_workers(4);
        m.write_file().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ngxtrace_traced_workers 4"), "{text}");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_planted_symbolic_link_is_never_followed() {
        let dir = std::env::temp_dir().join(format!("ngx-trace-symlink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let victim = dir.join("victim");
        std::fs::write(&victim, "untouched\n").unwrap();
        let path = dir.join("ngx-trace.prom");
        // The name the temporary file had before (pid only), a guess of
        // the new one, and the target itself, all links to the victim.
        let old = dir.join(format!(".ngx-trace.prom.{}.tmp", std::process::id()));
        let guessed = temporary_path(&path, 42).unwrap();
        for link in [&old, &guessed, &path] {
            std::os::unix::fs::symlink(&victim, link).unwrap();
        }
        let err = write_through(&guessed, &path, b"metrics\n").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists, "{err}");
        let m = Metrics::new(&[], 10, Some(path.clone())).unwrap();
        m.set_traced_workers(7);
        m.write_file().unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched\n");
        // The link at the target was replaced by the file itself, whole.
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_file(), "{meta:?}");
        assert_eq!(meta.permissions().mode() & 0o777, 0o644);
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ngxtrace_traced_workers 7"), "{text}");
        assert_eq!(text, encode(&m.registry, Format::Prometheus).unwrap());
        // Nothing else was created beside the planted links.
        let names = |paths: &[&Path]| -> BTreeSet<String> {
            paths
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect()
        };
        let left: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        let left: Vec<&Path> = left.iter().map(PathBuf::as_path).collect();
        assert_eq!(names(&left), names(&[&old, &guessed, &path, &victim]));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// One instance's configuration: `server` in group `group`.
    fn instance(group: &str, server: &str) -> Config {
        config(&format!(
            "# configuration file /etc/nginx/nginx.conf:\n\
             http {{\n\
               upstream {group} {{ server {server}; }}\n\
               server {{ listen 80; location / {{ proxy_pass http://{group}; }} }}\n\
             }}\n"
        ))
    }

    #[test]
    fn each_instance_names_its_own_groups() {
        // Two nginx instances (masters 100 and 200) send to one address
        // under groups of different names.
        let shop = instance("shop", "10.0.0.5:80");
        let blog = instance("blog", "10.0.0.5:80");
        let mut m = Metrics::new(&[(100, &shop), (200, &blog)], 10, None).unwrap();
        m.set_masters(&BTreeMap::from([(101, 100), (201, 200)]));
        let count = |m: &mut Metrics, worker| {
            m.exchange(
                unplaced(tcp(worker, "10.0.0.5:80")),
                Outcome::Ok,
                Verdict::Healthy,
                &Timings::default(),
                (0, 0),
            );
        };
        count(&mut m, 101);
        count(&mut m, 201);
        count(&mut m, 201);
        // A worker whose instance is unknown: no instance's group is its.
        count(&mut m, 301);
        let line = |upstream: &str, n: u32| {
            format!(
                "ngxtrace_exchanges_total{{upstream=\"{upstream}\",server=\"10.0.0.5:80\",\
                 transport=\"tcp\",location=\"unknown\",outcome=\"ok\",verdict=\"healthy\"}} {n}"
            )
        };
        let text = scrape(&m, Format::Prometheus);
        for expected in [line("shop", 1), line("blog", 2), line("10.0.0.5:80", 1)] {
            assert!(text.contains(&expected), "no {expected} in\n{text}");
        }
        // A configuration for every instance applies to the unknown one.
        let any = instance("any", "10.0.0.5:80");
        m.set_configs(&[(100, &shop), (200, &blog), (ANY_INSTANCE, &any)]);
        count(&mut m, 301);
        count(&mut m, 101);
        let text = scrape(&m, Format::Prometheus);
        for expected in [line("any", 1), line("shop", 2)] {
            assert!(text.contains(&expected), "no {expected} in\n{text}");
        }
    }

    #[test]
    fn a_timeout_of_600000_years_neither_overflows_nor_is_cut() {
        let huge = config(
            "# configuration file /etc/nginx/nginx.conf:\n\
             http {\n\
               proxy_read_timeout 600000y;\n\
               server { listen 80; location / { proxy_pass http://127.0.0.1:9000; } }\n\
             }\n",
        );
        assert_eq!(timeout_values_us(&huge).last(), Some(&u64::MAX));
        let m = Metrics::new(&[(ANY_INSTANCE, &huge)], 10, None).unwrap();
        let text = scrape(&m, Format::Prometheus);
        let prefix = "ngxtrace_configured_timeout_seconds{upstream=\"127.0.0.1:9000\",\
                      location=\"/\",directive=\"proxy_read_timeout\"} ";
        let seconds: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse()
            .unwrap();
        assert_eq!(seconds, 600_000.0 * 365.0 * 86_400.0);
    }
}
