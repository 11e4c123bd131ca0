//! A throwaway Prometheus server (Debian's `prometheus` package) scraping
//! given loopback targets every second, with its own storage; stopped and
//! removed on drop.
use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{TempDir, free_port, http};

/// A running Prometheus.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (`127.0.0.1:PORT`) every second
    /// (each scrape may take 2 s, for emulated VMs) as job `ngx-trace`;
    /// waits until it is ready.
    pub fn scraping(targets: &[String]) -> Self {
        let dir = TempDir::new("prometheus");
        let port = free_port();
        let list = targets
            .iter()
            .map(|t| format!("'{t}'"))
            .collect::<Vec<_>>()
            .join(", ");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s}}\n\
                 scrape_configs:\n  - job_name: ngx-trace\n    \
                 static_configs: [{{targets: [{list}]}}]\n"
            ),
        )
        .expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("create log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect(
                "start prometheus (Debian package `prometheus`: `cargo xtask test` installs it)",
            );
        let mut prometheus = Self { child, port, dir };
        let start = Instant::now();
        while http::fetch("127.0.0.1", port, "/-/ready", &[]).status != 200 {
            if let Ok(Some(status)) = prometheus.child.try_wait() {
                panic!("prometheus exited with {status}: {}", prometheus.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "prometheus not ready after 60 s: {}",
                prometheus.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        prometheus
    }

    /// Its log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The result of an instant PromQL query: each series' labels and value.
    pub fn query(&self, promql: &str) -> Vec<(Value, f64)> {
        let path = format!("/api/v1/query?query={}", http::encode_query(promql));
        let response = http::fetch("127.0.0.1", self.port, &path, &[]);
        let body: Value = serde_json::from_str(&response.body)
            .unwrap_or_else(|e| panic!("{promql}: not JSON ({e}): {}", response.body));
        assert_eq!(body["status"], "success", "{promql}: {body}");
        body["data"]["result"]
            .as_array()
            .unwrap_or_else(|| panic!("{promql}: no result: {body}"))
            .iter()
            .map(|r| {
                let value = r["value"][1]
                    .as_str()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("{promql}: no value in {r}"));
                (r["metric"].clone(), value)
            })
            .collect()
    }

    /// The value of a query that gives one series (0 when it gives none).
    pub fn value(&self, promql: &str) -> f64 {
        let result = self.query(promql);
        assert!(
            result.len() <= 1,
            "{promql}: more than one series: {result:?}"
        );
        result.first().map_or(0.0, |(_, v)| *v)
    }

    /// The scrape targets' health as Prometheus sees it: (health, last error).
    pub fn targets(&self) -> Vec<(String, String)> {
        let response = http::fetch("127.0.0.1", self.port, "/api/v1/targets", &[]);
        let body: Value = serde_json::from_str(&response.body).expect("targets JSON");
        body["data"]["activeTargets"]
            .as_array()
            .map(|targets| {
                targets
                    .iter()
                    .map(|t| {
                        (
                            t["health"].as_str().unwrap_or("").to_string(),
                            t["lastError"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
