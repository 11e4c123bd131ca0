//! Prometheus export: a real Prometheus (Debian's package) scrapes the
//! tracer while real nginx answers, times out and fails; PromQL's answers
//! must equal the counts of nginx's own access log, and `promtool check
//! metrics` must find nothing to say. Run as root through `cargo xtask test`.
use std::{
    collections::BTreeMap,
    io::Write as _,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use ngx_trace_tests::{
    backend::{Behavior, HttpBackend, UnixSocketFile},
    free_port, http,
    nginx::Nginx,
    prometheus::Prometheus,
    require_root,
    tracer::{Tracer, binary},
};

/// `promtool check metrics` on `text`: its verdict and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool (Debian package `prometheus`: `cargo xtask test` installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

/// Status codes of nginx's access log and how many times each was logged.
fn access_log_statuses(nginx: &Nginx) -> BTreeMap<String, u64> {
    let log = std::fs::read_to_string(nginx.dir().join("access.log")).unwrap_or_default();
    let mut counts = BTreeMap::new();
    for status in log.lines() {
        *counts.entry(status.trim().to_string()).or_default() += 1;
    }
    counts
}

/// The sum of the samples of `metric` in `text` whose labels contain
/// every one of `labels` (`outcome="ok"`).
fn sum_of(text: &str, metric: &str, labels: &[&str]) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[test]
fn prometheus_counts_what_nginx_logged() {
    require_root();
    let fast = HttpBackend::with(Behavior::Answer(Duration::from_millis(20)));
    // Behind a 1.2 s read timeout, a value no fixed bucket has.
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_millis(1600)));
    let down = free_port();
    let log = "access_log {dir}/access.log status;";
    let nginx = Nginx::start(
        &format!(
            "log_format status '$status';\n\
             upstream app {{ server 127.0.0.1:{}; }}",
            fast.port()
        ),
        &format!(
            "location /fast {{ {log} proxy_pass http://app; }}\n\
             location /slow {{ {log} proxy_read_timeout 1200ms; proxy_pass http://127.0.0.1:{}; }}\n\
             location /down {{ {log} proxy_pass http://127.0.0.1:{down}; }}\n\
             location /php {{ {log} fastcgi_pass unix:{{dir}}/gone.sock; }}",
            slow.port()
        ),
    );
    let _gone = UnixSocketFile::stale(&nginx.dir().join("gone.sock"));
    let metrics_port = free_port();
    let file = nginx.dir().join("ngx-trace.prom");
    let tracer = Tracer::attach_to(
        &nginx,
        &[
            "--metrics-listen",
            &metrics_port.to_string(),
            "--metrics-file",
            file.to_str().unwrap(),
        ],
    );
    // Said on stderr, which its reader may pass on a moment later.
    let serving = format!("serving metrics at http://127.0.0.1:{metrics_port}/metrics");
    let start = Instant::now();
    while !tracer.stderr().contains(&serving) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a port alone listens on loopback: {}",
            tracer.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let prometheus = Prometheus::scraping(&[format!("127.0.0.1:{metrics_port}")]);
    let slow_server = format!("127.0.0.1:{}", slow.port());

    // An exchange under way shows in the pending gauge while it waits.
    let port = nginx.port();
    let waiting = std::thread::spawn(move || http::get(port, "/slow"));
    let pending = format!(
        "ngxtrace_pending_exchanges{{upstream=\"{slow_server}\",server=\"{slow_server}\",\
         transport=\"tcp\"}} 1"
    );
    let mut seen = false;
    while !seen && !waiting.is_finished() {
        seen = http::fetch("127.0.0.1", metrics_port, "/metrics", &[])
            .body
            .contains(&pending);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen, "no `{pending}` while the request waited");
    assert_eq!(waiting.join().unwrap(), 504);

    for _ in 0..40 {
        assert_eq!(nginx.get("/fast"), 200);
    }
    for _ in 0..2 {
        assert_eq!(nginx.get("/slow"), 504);
    }
    for path in ["/down", "/php"] {
        for _ in 0..4 {
            assert_eq!(nginx.get(path), 502);
        }
    }
    let logged = access_log_statuses(&nginx);
    let logged_total: u64 = logged.values().sum();
    assert_eq!(logged_total, 51, "{logged:?}");

    // Prometheus has them all once a scrape after the last exchange landed.
    let start = Instant::now();
    while prometheus.value("sum(ngxtrace_exchanges_total)") < logged_total as f64 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "Prometheus has {} exchanges, nginx logged {logged_total}; targets {:?}; tracer: {}",
            prometheus.value("sum(ngxtrace_exchanges_total)"),
            prometheus.targets(),
            tracer.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // Scraped in OpenMetrics (Prometheus asks for it), without an error
    // (the last scrape; one that timed out on a slow machine is retried).
    let start = Instant::now();
    while prometheus.targets() != vec![("up".to_string(), String::new())] {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{:?}: {}",
            prometheus.targets(),
            prometheus.log()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let by_outcome: BTreeMap<String, u64> = prometheus
        .query("sum by (outcome) (ngxtrace_exchanges_total)")
        .into_iter()
        .map(|(labels, v)| (labels["outcome"].as_str().unwrap().to_string(), v as u64))
        .collect();
    let logged_as = |status: &str| logged.get(status).copied().unwrap_or(0);
    assert_eq!(
        by_outcome,
        BTreeMap::from([
            ("ok".to_string(), logged_as("200")),
            ("no_response".to_string(), logged_as("504")),
            ("refused".to_string(), logged_as("502")),
        ]),
        "access log: {logged:?}"
    );
    // Labels: the group, the transport, the location (each location here
    // reaches a server of its own).
    assert_eq!(
        prometheus.value("sum(ngxtrace_exchanges_total{upstream=\"app\",outcome=\"ok\"})"),
        logged_as("200") as f64
    );
    assert_eq!(
        prometheus.value("sum(ngxtrace_exchanges_total{location=\"/fast\",outcome=\"ok\"})"),
        logged_as("200") as f64
    );
    assert_eq!(
        prometheus.value("sum(ngxtrace_exchanges_total{location=\"unknown\"})"),
        0.0,
        "every exchange placed"
    );
    assert_eq!(
        prometheus.value(
            "sum(ngxtrace_exchanges_total{transport=\"unix\",outcome=\"refused\",\
             verdict=\"backend_down\"})"
        ),
        4.0
    );
    // The README's "which upstream's 504s are backend slowness", over the
    // counters rather than their rates (each series' rate extrapolates its
    // own way: counts are exact).
    let slowness = prometheus.query(
        "sum by (upstream) (ngxtrace_exchanges_total{outcome=\"no_response\",\
         verdict=\"backend_slow\"})\n  / sum by (upstream) \
         (ngxtrace_exchanges_total{outcome=\"no_response\"})",
    );
    assert_eq!(slowness.len(), 1, "{slowness:?}");
    assert_eq!(slowness[0].0["upstream"], slow_server.as_str());
    assert_eq!(slowness[0].1, 1.0, "{slowness:?}");

    // Histograms: the 20 ms answers all between 10 ms and 1 s.
    let fast_bucket = |le: &str| {
        prometheus.value(&format!(
            "sum(ngxtrace_first_byte_duration_seconds_bucket{{upstream=\"app\",le=\"{le}\"}})"
        ))
    };
    assert_eq!(fast_bucket("0.01"), 0.0);
    assert_eq!(fast_bucket("1.0"), logged_as("200") as f64);
    // The configured 1.2 s is a bucket, and counts exactly: every exchange
    // nginx cut at 1.2 s lasted longer.
    let slow_bucket = |le: &str| {
        prometheus.value(&format!(
            "sum(ngxtrace_exchange_duration_seconds_bucket{{server=\"{slow_server}\",le=\"{le}\"}})"
        ))
    };
    assert_eq!(slow_bucket("1.2"), 0.0);
    assert_eq!(slow_bucket("2.5"), logged_as("504") as f64);
    assert_eq!(
        prometheus.value(
            "ngxtrace_configured_timeout_seconds{location=\"/slow\",\
             directive=\"proxy_read_timeout\"}"
        ),
        1.2
    );
    // The README's "what share of requests would a timeout cut" (there
    // with 5 s and rates; here 1 s and counts): the 504s, which waited
    // longer, over every request sent.
    let share = prometheus.value(
        "(\n  sum(ngxtrace_first_byte_duration_seconds_count)\n  \
         - sum(ngxtrace_first_byte_duration_seconds_bucket{le=\"1.0\"})\n  \
         + sum(ngxtrace_exchanges_total{outcome=\"no_response\"})\n) / (\n  \
         sum(ngxtrace_first_byte_duration_seconds_count)\n  \
         + sum(ngxtrace_exchanges_total{outcome=\"no_response\"})\n)",
    );
    let expected = logged_as("504") as f64 / (logged_as("200") + logged_as("504")) as f64;
    assert!((share - expected).abs() < 1e-9, "{share} != {expected}");
    // The README's alert: p99 of the first byte over the read timeout in
    // effect (20 ms answers against nginx's 60 s default).
    let p99_of_timeout = prometheus.query(
        "histogram_quantile(0.99, sum by (upstream, le) \
         (ngxtrace_first_byte_duration_seconds_bucket))\n  / on (upstream) group_left \
         max by (upstream) (ngxtrace_configured_timeout_seconds{directive=~\".*_read_timeout\"})",
    );
    assert_eq!(p99_of_timeout.len(), 1, "{p99_of_timeout:?}");
    assert_eq!(p99_of_timeout[0].0["upstream"], "app");
    assert!(
        p99_of_timeout[0].1 > 0.0 && p99_of_timeout[0].1 <= 1.0 / 60.0,
        "{p99_of_timeout:?}"
    );
    assert_eq!(
        prometheus.value("ngxtrace_traced_workers"),
        nginx.workers().len() as f64
    );
    assert_eq!(prometheus.value("ngxtrace_build_info"), 1.0);

    // The text format for everything else, and promtool finds it clean.
    let text = http::fetch("127.0.0.1", metrics_port, "/metrics", &[]);
    assert_eq!(
        text.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let (clean, said) = promtool(&text.body);
    assert!(clean && said.trim().is_empty(), "promtool: {said}");
    let openmetrics = http::fetch(
        "127.0.0.1",
        metrics_port,
        "/metrics",
        &["Accept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5"],
    );
    assert!(
        openmetrics
            .header("content-type")
            .is_some_and(|t| t.starts_with("application/openmetrics-text")),
        "{:?}",
        openmetrics.headers
    );
    assert!(openmetrics.body.ends_with("# EOF\n"));
    assert_eq!(
        http::fetch("127.0.0.1", metrics_port, "/nothing", &[]).status,
        404
    );

    // The file, written at stop for the last time, counts the same.
    tracer.stop();
    let written = std::fs::read_to_string(&file).expect("the metrics file");
    let (clean, said) = promtool(&written);
    assert!(clean && said.trim().is_empty(), "promtool: {said}");
    assert_eq!(
        sum_of(&written, "ngxtrace_exchanges_total", &["outcome=\"ok\""]),
        logged_as("200")
    );
    assert_eq!(
        sum_of(&written, "ngxtrace_exchanges_total", &[]),
        logged_total
    );
}

#[test]
fn a_metrics_port_in_use_is_refused_before_tracing() {
    require_root();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(binary())
        .args(["--metrics-listen", &port.to_string(), "--duration", "1"])
        .output()
        .expect("run ngx-trace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("failed to listen on 127.0.0.1:{port}"))
            && !stderr.contains("attached"),
        "{stderr}"
    );
}
