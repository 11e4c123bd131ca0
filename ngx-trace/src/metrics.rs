//! The Prometheus metrics (`--metrics-listen`, `--metrics-file`): what is
//! counted, with which labels and buckets. Served by `metrics_http`.
//!
//! Labels stay bounded: `upstream` is the `upstream{}` group (or the
//! address when a location passes to one directly), `server` the address;
//! no pid, no path. Past `--metrics-max-servers` distinct servers, new ones
//! are counted as `server="other"` and the folded ones are counted.
use std::{
    collections::{BTreeSet, HashMap, HashSet},
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
    nginx_conf::Config,
    records::Transport,
    timings::Timings,
    verdict::{Outcome, Verdict},
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

/// A server's labels plus the outcome and verdict of an exchange.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct ExchangeLabels {
    server: ServerLabels,
    outcome: &'static str,
    verdict: &'static str,
}

impl LabelSetSchema for ExchangeLabels {
    fn names() -> Option<&'static [&'static str]> {
        Some(&["upstream", "server", "transport", "outcome", "verdict"])
    }
}

impl EncodeLabelSet for ExchangeLabels {
    fn encode(&self, encoder: &mut dyn LabelSetEncoder) -> fastmetrics::error::Result<()> {
        self.server.encode(encoder)?;
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
    connect: Family<ServerLabels, Histogram>,
    first_byte: Family<ServerLabels, Histogram>,
    request_acked: Family<ServerLabels, Histogram>,
    total: Family<ServerLabels, Histogram>,
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
    /// Labels by server name, formatted once.
    servers: HashMap<Arc<str>, ServerLabels>,
    /// Servers counted as `other`.
    folded_servers: HashSet<String>,
    max_servers: usize,
    /// The group of each server, from the configuration.
    groups: HashMap<String, Arc<str>>,
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
    /// plus every timeout `config` sets; `file`, if given, is written by
    /// [`Metrics::write_file`].
    pub fn new(config: &Config, max_servers: usize, file: Option<PathBuf>) -> Result<Self> {
        let bounds: Vec<f64> = bucket_bounds_us(&timeout_values_us(config))
            .into_iter()
            .map(seconds)
            .collect();
        let mut registry = Registry::builder()
            .with_namespace("ngxtrace")
            .build()
            .context("failed to set up the metrics registry")?;
        let histogram = || {
            let bounds = bounds.clone();
            Family::<ServerLabels, Histogram>::new(move || Histogram::new(bounds.iter().copied()))
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
            servers: HashMap::new(),
            folded_servers: HashSet::new(),
            max_servers,
            groups: HashMap::new(),
            file,
        };
        let build = Family::<BuildLabels, Gauge>::default();
        build.with_or_new(
            &BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
                kernel: crate::kernel_release(),
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
        metrics.set_config(config);
        Ok(metrics)
    }

    /// The registry, for the HTTP server.
    pub fn registry(&self) -> Arc<Registry> {
        Arc::clone(&self.registry)
    }

    /// Takes the configuration (again, after a reload): groups and timeouts.
    /// Histogram buckets stay as they were at start.
    pub fn set_config(&mut self, config: &Config) {
        self.groups.clear();
        for group in &config.groups {
            let name: Arc<str> = group.name.as_str().into();
            for server in &group.servers {
                for addr in &server.addrs {
                    self.groups
                        .entry(addr.clone())
                        .or_insert_with(|| Arc::clone(&name));
                }
            }
        }
        // A server's group may have changed: label it again (the servers
        // labelled stay, so the cap holds across reloads).
        for (name, labels) in self.servers.iter_mut() {
            labels.upstream = self
                .groups
                .get(&**name)
                .cloned()
                .unwrap_or_else(|| Arc::clone(name));
        }
        let mut shown = HashSet::new();
        for location in &config.locations {
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
                    self.timeouts
                        .with_or_new(&labels, |g| g.set(seconds(ms * 1000)));
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

    /// The labels of `server`, folded into `other` past the cap.
    fn labels(&mut self, server: &str, transport: Transport) -> ServerLabels {
        if let Some(labels) = self.servers.get(server) {
            return labels.clone();
        }
        let group = self.groups.get(server).cloned();
        let known = self.servers.len();
        let labels = if known < self.max_servers {
            let name: Arc<str> = server.into();
            ServerLabels {
                upstream: group.unwrap_or_else(|| Arc::clone(&name)),
                server: name,
                transport: transport.as_str(),
            }
        } else {
            // Bounded too: past 65,536 the count stops growing.
            if self.folded_servers.len() < 65_536 && !self.folded_servers.contains(server) {
                self.folded_servers.insert(server.to_string());
                self.folded.set(self.folded_servers.len() as i64);
            }
            return ServerLabels {
                upstream: group.unwrap_or_else(|| OTHER.into()),
                server: OTHER.into(),
                transport: transport.as_str(),
            };
        };
        self.servers.insert(server.into(), labels.clone());
        labels
    }

    /// Counts one finished exchange of `server` and its phase durations.
    pub fn exchange(
        &mut self,
        server: &str,
        transport: Transport,
        outcome: Outcome,
        verdict: Verdict,
        timings: &Timings,
        retransmits: (u32, u32),
    ) {
        let labels = self.labels(server, transport);
        for (family, value) in [
            (&self.phases.connect, timings.connect),
            (&self.phases.first_byte, timings.first_byte),
            (&self.phases.request_acked, timings.request_acked),
            (&self.phases.total, timings.total),
        ] {
            if let Some(us) = value {
                family.with_or_new(&labels, |h| h.observe(seconds(us)));
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
            server: labels,
            outcome: outcome.as_str(),
            verdict: verdict.as_str(),
        };
        self.exchanges.with_or_new(&labels, |c| c.inc());
    }

    /// Sets the exchanges under way now, per server.
    pub fn set_pending<'a>(&mut self, servers: impl Iterator<Item = (&'a str, Transport)>) {
        let mut counts: HashMap<ServerLabels, i64> = HashMap::new();
        for (server, transport) in servers {
            *counts.entry(self.labels(server, transport)).or_default() += 1;
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

    /// Writes the metrics to `--metrics-file`, if given, atomically: a
    /// temporary file in the same directory, renamed over it (what
    /// node_exporter's textfile collector asks for).
    pub fn write_file(&self) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let body = encode(&self.registry, Format::Prometheus)?;
        write_atomically(path, body.as_bytes())
    }
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

/// Every timeout value `config` sets (defaults included), µs.
pub fn timeout_values_us(config: &Config) -> BTreeSet<u64> {
    config
        .locations
        .iter()
        .flat_map(|l| &l.settings)
        .filter(|(name, _)| is_timeout(name))
        .filter_map(|(_, s)| s.ms())
        .map(|ms| ms * 1000)
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

/// Writes `bytes` to `path` through a temporary file renamed over it.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("--metrics-file {} names no file", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| {
            let _ = std::fs::remove_file(&tmp);
            format!(
                "failed to write the metrics file {}: check that its directory exists and is \
                 writable",
                path.display()
            )
        })
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
        let mut m = Metrics::new(&config(DUMP), 10, None).unwrap();
        let t = |us| Timings {
            first_byte: Some(us),
            ..Timings::default()
        };
        for us in [1_500_000, 1_500_001, 99] {
            m.exchange(
                "127.0.0.1:8081",
                Transport::Tcp,
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
                 server=\"127.0.0.1:8081\",transport=\"tcp\",le=\"{le}\"}} "
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
    fn exchanges_are_labelled_by_group_server_outcome_and_verdict() {
        let mut m = Metrics::new(&config(DUMP), 10, None).unwrap();
        let t = Timings::default();
        m.exchange(
            "127.0.0.1:8082",
            Transport::Tcp,
            Outcome::Refused,
            Verdict::BackendDown,
            &t,
            (2, 1),
        );
        m.exchange(
            "127.0.0.1:9000",
            Transport::Tcp,
            Outcome::Ok,
            Verdict::Healthy,
            &t,
            (0, 0),
        );
        let text = scrape(&m, Format::Prometheus);
        for line in [
            "ngxtrace_exchanges_total{upstream=\"app\",server=\"127.0.0.1:8082\",transport=\"tcp\",\
             outcome=\"refused\",verdict=\"backend_down\"} 1",
            "ngxtrace_exchanges_total{upstream=\"127.0.0.1:9000\",server=\"127.0.0.1:9000\",\
             transport=\"tcp\",outcome=\"ok\",verdict=\"healthy\"} 1",
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
        let mut m = Metrics::new(&Config::default(), 2, None).unwrap();
        for port in 1..=5 {
            let server = format!("10.0.0.1:{port}");
            m.exchange(
                &server,
                Transport::Tcp,
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
                 outcome=\"ok\",verdict=\"healthy\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains("ngxtrace_folded_servers 3"), "{text}");
    }

    #[test]
    fn pending_servers_that_finish_read_zero() {
        let mut m = Metrics::new(&Config::default(), 10, None).unwrap();
        m.set_pending([("unix:/run/php.sock", Transport::Unix); 2].into_iter());
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
        let m = Metrics::new(&Config::default(), 10, Some(path.clone())).unwrap();
        m.set_traced_workers(4);
        m.write_file().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("ngxtrace_traced_workers 4"), "{text}");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "temporary files left: {left:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
