//! The request each exchange served, copied in the kernel from what nginx
//! wrote upstream: real nginx in front of a real HTTP backend (two
//! locations sharing it), Debian's PHP-FPM (FastCGI on a UNIX socket) and
//! uWSGI (the uwsgi protocol on TCP), each request with a secret in its
//! query string. Run as root through `cargo xtask test`.
use std::{collections::BTreeMap, process::Command, time::Duration};

use ngx_trace_tests::{
    access_log::{TIMED_FORMAT, TIMED_LOG, entries},
    backend::HttpBackend,
    http,
    nginx::Nginx,
    php_fpm::PhpFpm,
    require_root,
    tracer::{Tracer, binary},
    uwsgi::Uwsgi,
};
use serde_json::Value;

/// In every query string sent: no output of ngx-trace may hold it.
const SECRET: &str = "s3cret";

/// The paths asked, and how many times each.
const ASKED: [(&str, usize); 4] = [
    ("/api/items", 3),
    ("/api/reports/q1", 2),
    ("/index.php", 2),
    ("/py/hello", 2),
];

const WSGI_APP: &str = "def application(environ, start_response):\n    \
     start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
     return [b'hello']\n";

/// nginx with two locations on one HTTP backend, PHP-FPM and uWSGI.
fn nginx_in_front(http: &HttpBackend, fpm: &PhpFpm, uwsgi: &Uwsgi) -> Nginx {
    Nginx::start(
        TIMED_FORMAT,
        &format!(
            "{TIMED_LOG}\n\
             location /api/ {{ proxy_pass http://127.0.0.1:{http}; }}\n\
             location /api/reports/ {{ proxy_read_timeout 5s; proxy_pass http://127.0.0.1:{http}; }}\n\
             location ~ \\.php$ {{ root {www}; include /etc/nginx/fastcgi.conf; \
                fastcgi_pass unix:{sock}; }}\n\
             location /py/ {{ include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:{py}; }}",
            http = http.port(),
            www = fpm.www().display(),
            sock = fpm.socket().display(),
            py = uwsgi.port(),
        ),
    )
}

/// GETs every path of [`ASKED`] with the secret in its query.
fn ask_all(nginx: &Nginx) {
    for (path, times) in ASKED {
        for i in 0..times {
            assert_eq!(
                nginx.get(&format!("{path}?token={SECRET}&i={i}")),
                200,
                "{path}"
            );
        }
    }
}

/// The `upstream` events among `events`.
fn exchanges(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["event"] == "upstream").collect()
}

#[test]
fn each_exchange_names_its_method_and_path_and_never_the_query() {
    require_root();
    let http = HttpBackend::start();
    let fpm = PhpFpm::start(2, 16, &[("index.php", "<?php echo 'hi';")]);
    let uwsgi = Uwsgi::start(WSGI_APP, 2);
    let nginx = nginx_in_front(&http, &fpm, &uwsgi);
    let recording = nginx.dir().join("trace.jsonl");
    let metrics = nginx.dir().join("ngx-trace.prom");
    let mut tracer = Tracer::attach_to(
        &nginx,
        &[
            "--all",
            "--record",
            recording.to_str().unwrap(),
            "--metrics-file",
            metrics.to_str().unwrap(),
        ],
    );
    ask_all(&nginx);
    let total: usize = ASKED.iter().map(|(_, n)| n).sum();
    tracer.upstream_events(total, Duration::from_secs(10), |_| true);
    let stderr = tracer.stderr();
    let events = tracer.stop();

    // Per path, as many exchanges as nginx's access log has requests, each
    // saying the method and path the upstream received.
    let mut logged: BTreeMap<String, usize> = BTreeMap::new();
    for entry in entries(nginx.dir()) {
        *logged.entry(entry.uri).or_default() += 1;
    }
    let mut traced: BTreeMap<String, usize> = BTreeMap::new();
    for e in exchanges(&events) {
        let request = &e["request"];
        assert_eq!(request["method"], "GET", "{e}");
        let path = request["path"]
            .as_str()
            .unwrap_or_else(|| panic!("no path: {e}"));
        *traced.entry(path.to_string()).or_default() += 1;
        let expected = if path.ends_with(".php") {
            format!("unix:{}", fpm.socket().display())
        } else if path.starts_with("/py/") {
            format!("127.0.0.1:{}", uwsgi.port())
        } else {
            format!("127.0.0.1:{}", http.port())
        };
        assert_eq!(e["upstream"], expected, "{e}");
        // The location nginx chose, told from the path where two share
        // the backend.
        let location = if path.starts_with("/api/reports/") {
            "/api/reports/"
        } else if path.starts_with("/api/") {
            "/api/"
        } else if path.ends_with(".php") {
            "~ \\.php$"
        } else {
            "/py/"
        };
        assert_eq!(e["location"]["name"], location, "{e}");
        assert!(e["location"]["line"].as_u64().unwrap() > 0, "{e}");
    }
    let asked: BTreeMap<String, usize> = ASKED.iter().map(|(p, n)| (p.to_string(), *n)).collect();
    assert_eq!(logged, asked, "nginx's access log");
    assert_eq!(traced, asked, "the exchanges' requests");

    // Each location counted under its own label.
    let exposition = std::fs::read_to_string(&metrics).unwrap();
    for location in [
        "location=\"/api/\"",
        "location=\"/api/reports/\"",
        "location=\"/py/\"",
    ] {
        assert!(exposition.contains(location), "{location}: {exposition}");
    }
    // The secret was sent upstream every time, and is in no output.
    for (what, text) in [
        ("the events", format!("{events:?}")),
        ("the tracer's stderr", stderr),
        (
            "the recording",
            std::fs::read_to_string(&recording).unwrap(),
        ),
        ("the metrics", std::fs::read_to_string(&metrics).unwrap()),
    ] {
        assert!(!text.contains(SECRET), "{what} hold the query string");
    }
}

#[test]
fn no_request_path_copies_nothing() {
    require_root();
    let http = HttpBackend::start();
    let fpm = PhpFpm::start(1, 16, &[("index.php", "<?php echo 'hi';")]);
    let uwsgi = Uwsgi::start(WSGI_APP, 1);
    let nginx = nginx_in_front(&http, &fpm, &uwsgi);
    let mut tracer = Tracer::attach_to(&nginx, &["--all", "--no-request-path"]);
    ask_all(&nginx);
    let total: usize = ASKED.iter().map(|(_, n)| n).sum();
    tracer.upstream_events(total, Duration::from_secs(10), |_| true);
    let events = tracer.stop();
    let exchanges = exchanges(&events);
    assert_eq!(exchanges.len(), total, "{exchanges:#?}");
    for e in exchanges {
        assert!(e.get("request").is_none(), "{e}");
        // Without a path, a location is told only where an upstream is
        // reached from one location; else the candidates are listed.
        if e["upstream"] == format!("127.0.0.1:{}", http.port()) {
            assert!(e.get("location").is_none(), "{e}");
            assert_eq!(
                e["location_candidates"],
                serde_json::json!(["/api/", "/api/reports/"]),
                "{e}"
            );
        } else {
            assert!(e["location"]["name"].is_string(), "{e}");
        }
    }
}

/// A WSGI application answering `/slow/...` after 2 s and anything else
/// after 15 ms.
const TIMED_APP: &str = "import time\n\
def application(environ, start_response):\n    \
     slow = environ.get('PATH_INFO', '').startswith('/slow/')\n    \
     time.sleep(2 if slow else 0.015)\n    \
     start_response('200 OK', [('Content-Type', 'text/plain')])\n    \
     return [b'ok']\n";

/// Runs `ngx-trace <args> --json`; its JSON lines.
fn run(args: &[&str]) -> Vec<Value> {
    let out = Command::new(binary())
        .args(args)
        .arg("--json")
        .output()
        .expect("run ngx-trace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{args:?}: {}: {stderr}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// GETs `paths` all at once; their statuses, in order.
fn get_at_once(nginx: &Nginx, paths: &[String]) -> Vec<u16> {
    let port = nginx.port();
    let threads: Vec<_> = paths
        .iter()
        .cloned()
        .map(|p| std::thread::spawn(move || http::get(port, &p)))
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

#[test]
fn tune_advises_each_location_on_one_server_from_its_own_latencies() {
    require_root();
    let uwsgi = Uwsgi::start(TIMED_APP, 8);
    let nginx = Nginx::start(
        "",
        &format!(
            "location /fast/ {{ include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:{py}; }}\n\
             location /slow/ {{ include /etc/nginx/uwsgi_params; uwsgi_pass 127.0.0.1:{py}; }}",
            py = uwsgi.port()
        ),
    );
    let recording = nginx.dir().join("trace.jsonl");
    let mut tracer = Tracer::attach_to(&nginx, &["--record", recording.to_str().unwrap()]);
    // 20 of each (enough at a rate of 0.5), 8 at a time.
    for round in 0..3 {
        let paths: Vec<String> = (0..8)
            .flat_map(|i| [format!("/fast/{round}-{i}"), format!("/slow/{round}-{i}")])
            .take(if round == 2 { 8 } else { 16 })
            .collect();
        assert!(get_at_once(&nginx, &paths).iter().all(|&s| s == 200));
    }
    tracer.wait_for(Duration::from_millis(500), |_| false);
    let live = tracer.stop();
    // Those that waited past `--slow` (1 s: the slow ones, and fast ones
    // queued behind them for uWSGI's 8 processes) were reported while they
    // waited, each with its own request and location.
    let pending: Vec<&Value> = live.iter().filter(|e| e["event"] == "pending").collect();
    for e in &pending {
        let path = e["request"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("{e}"));
        let location = e["location"]["name"]
            .as_str()
            .unwrap_or_else(|| panic!("{e}"));
        assert!(
            ["/fast/", "/slow/"].contains(&location) && path.starts_with(location),
            "{e}"
        );
    }
    assert!(
        pending.iter().any(|e| e["location"]["name"] == "/slow/"),
        "{live:#?}"
    );
    let events = run(&[
        "tune",
        "--from",
        recording.to_str().unwrap(),
        "--false-timeout-rate",
        "0.5",
    ]);
    let read = |location: &str| {
        events
            .iter()
            .find(|e| e["location"] == location && e["directive"] == "uwsgi_read_timeout")
            .unwrap_or_else(|| panic!("no uwsgi_read_timeout for {location}: {events:#?}"))
    };
    let (fast, slow) = (read("/fast/"), read("/slow/"));
    // Each from its own exchanges: the fast one is not raised to the slow
    // one's latency.
    let fast_s = fast["recommended_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{fast}"));
    assert!(fast_s <= 1.0, "15 ms answers: {fast}");
    assert!(
        !fast["reason"].as_str().unwrap().contains("not told apart"),
        "{fast}"
    );
    let slow_s = slow["recommended_s"]
        .as_f64()
        .unwrap_or_else(|| panic!("{slow}"));
    assert!((3.0..=5.0).contains(&slow_s), "2 s answers: {slow}");
}

#[test]
fn explain_joins_each_timeout_to_its_own_request_when_two_locations_time_out_together() {
    require_root();
    let uwsgi = Uwsgi::start(TIMED_APP, 8);
    let nginx = Nginx::start(
        "",
        &format!(
            "location /slow/a/ {{ uwsgi_read_timeout 1s; include /etc/nginx/uwsgi_params; \
                uwsgi_pass 127.0.0.1:{py}; }}\n\
             location /slow/b/ {{ uwsgi_read_timeout 1s; include /etc/nginx/uwsgi_params; \
                uwsgi_pass 127.0.0.1:{py}; }}",
            py = uwsgi.port()
        ),
    );
    let recording = nginx.dir().join("trace.jsonl");
    let mut tracer = Tracer::attach_to(&nginx, &["--record", recording.to_str().unwrap()]);
    let paths: Vec<String> = (0..4)
        .flat_map(|i| [format!("/slow/a/{i}"), format!("/slow/b/{i}")])
        .collect();
    assert!(get_at_once(&nginx, &paths).iter().all(|&s| s == 504));
    // Each timeout is reported once the kernel has said its client stayed.
    let reported = tracer.upstream_events(paths.len(), Duration::from_secs(10), |e| {
        e["outcome"] == "no_response"
    });
    assert_eq!(reported.len(), paths.len(), "{reported:#?}");
    tracer.stop();
    let log = nginx.dir().join("error.log");
    let events = run(&[
        "explain",
        log.to_str().unwrap(),
        "--from",
        recording.to_str().unwrap(),
    ]);
    let timeouts: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "explain" && e["kind"] == "timed_out")
        .collect();
    assert_eq!(timeouts.len(), paths.len(), "{events:#?}");
    for e in timeouts {
        assert_eq!(e["cause"], "backend_slow", "{e:#}");
        assert_eq!(e["confidence"], "exact", "{e:#}");
        // The exchange joined is the line's own request.
        let path = e["match"]["request"]["path"].as_str().unwrap();
        let line = e["line"].as_str().unwrap();
        assert!(line.contains(&format!("GET {path} ")), "{path}: {line}");
    }
}
