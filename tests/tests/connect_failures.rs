//! Failed upstream connects of real nginx workers, with faults made for real,
//! traced by the real ngx-trace. Run as root through `cargo xtask test`.
use std::time::Duration;

use ngx_trace_tests::{
    backend::{HttpBackend, UnixSocketFile},
    firewall::LoopbackRule,
    free_port,
    nginx::Nginx,
    require_root,
    tracer::Tracer,
};
use serde_json::Value;

const REQUESTS: usize = 3;

/// Checks the fields every failed-connect event must carry.
fn assert_failure(
    e: &Value,
    outcome: &str,
    verdict: &str,
    errno: u64,
    upstream: &str,
    workers: &[u32],
) {
    assert_eq!(e["outcome"], outcome, "{e}");
    assert_eq!(e["verdict"], verdict, "{e}");
    assert_eq!(e["errno"], errno, "{e}");
    assert_eq!(e["upstream"], upstream, "{e}");
    let pid = e["worker_pid"].as_u64().expect("worker_pid") as u32;
    assert!(
        workers.contains(&pid),
        "worker {pid} is not one of {workers:?}: {e}"
    );
    assert!(
        e["time"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z') && t.len() == 27),
        "{e}"
    );
    assert!(e["evidence"].as_str().is_some_and(|s| !s.is_empty()), "{e}");
    assert!(e["timings_us"]["connect"].is_u64(), "{e}");
}

/// Sends `REQUESTS` requests to `path`, each must get `status`.
fn send(nginx: &Nginx, path: &str, status: u16) {
    for _ in 0..REQUESTS {
        assert_eq!(nginx.get(path), status, "GET {path}");
    }
}

/// The nginx error-log lines of these failures must be the ones we predicted.
fn assert_nginx_logged(nginx: &Nginx, events: &[Value]) {
    for e in events {
        let text = e["nginx_error"].as_str().expect("nginx_error");
        assert_eq!(
            nginx.error_log_lines(text).len(),
            REQUESTS,
            "nginx did not log `{text}` {REQUESTS} times"
        );
    }
}

/// What every failed-connect test checks: `REQUESTS` requests through a
/// traced `nginx` each get `status`; exactly `REQUESTS` events come for
/// `upstream`, each with the `expected` (outcome, verdict, errno), from one of
/// nginx's workers, and nginx logged each one's `nginx_error`. Returns the
/// tracer, still running, and the events.
fn expect_failures(
    nginx: &Nginx,
    status: u16,
    upstream: &str,
    expected: (&str, &str, u64),
) -> (Tracer, Vec<Value>) {
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(nginx, &[]);
    send(nginx, "/", status);
    let events = tracer.upstream_events(REQUESTS, Duration::from_secs(10), |e| {
        e["upstream"] == upstream
    });
    assert_eq!(events.len(), REQUESTS, "{events:#?}");
    let (outcome, verdict, errno) = expected;
    for e in &events {
        assert_failure(e, outcome, verdict, errno, upstream, &workers);
    }
    assert_nginx_logged(nginx, &events);
    (tracer, events)
}

#[test]
fn tcp_backend_stopped_is_refused_backend_down() {
    require_root();
    let port = free_port();
    let nginx = Nginx::proxying_to(port, "");
    let upstream = format!("127.0.0.1:{port}");
    let (tracer, events) =
        expect_failures(&nginx, 502, &upstream, ("refused", "backend_down", 111));
    for e in &events {
        assert_eq!(e["transport"], "tcp");
        assert_eq!(
            e["nginx_error"],
            "connect() failed (111: Connection refused) while connecting to upstream"
        );
        assert_eq!(e["tcp"]["syn_retransmits"], 0);
    }
    let all = tracer.stop();
    let summary = all
        .iter()
        .find(|e| e["event"] == "summary")
        .expect("summary at exit");
    assert_eq!(summary["upstreams"][0]["upstream"], upstream.as_str());
    assert_eq!(
        summary["upstreams"][0]["outcomes"]["refused"],
        REQUESTS as u64
    );
}

#[test]
fn ipv6_backend_stopped_is_refused() {
    require_root();
    let port = free_port();
    let nginx = Nginx::start(
        "",
        &format!("location / {{ proxy_pass http://[::1]:{port}; }}"),
    );
    let upstream = format!("[::1]:{port}");
    let (tracer, _) = expect_failures(&nginx, 502, &upstream, ("refused", "backend_down", 111));
    tracer.stop();
}

#[test]
fn syn_dropped_is_connect_timeout_with_retransmits() {
    require_root();
    let port = free_port();
    let _rule = LoopbackRule::drop_syn(port);
    let nginx = Nginx::proxying_to(port, "proxy_connect_timeout 2s;");
    let upstream = format!("127.0.0.1:{port}");
    let (tracer, events) =
        expect_failures(&nginx, 504, &upstream, ("connect_timeout", "network", 110));
    for e in &events {
        assert_eq!(
            e["nginx_error"],
            "upstream timed out (110: Connection timed out) while connecting to upstream"
        );
        assert!(e["tcp"]["syn_retransmits"].as_u64().unwrap() >= 1, "{e}");
        let waited = e["timings_us"]["connect"].as_u64().unwrap();
        assert!(
            (1_900_000..3_000_000).contains(&waited),
            "waited {waited} us: {e}"
        );
    }
    tracer.stop();
}

#[test]
fn missing_unix_socket_is_not_found() {
    require_root();
    let nginx = Nginx::start(
        "",
        "location / { proxy_pass http://unix:{dir}/missing.sock; }",
    );
    let upstream = format!("unix:{}/missing.sock", nginx.dir().display());
    let (tracer, events) =
        expect_failures(&nginx, 502, &upstream, ("not_found", "backend_down", 2));
    for e in &events {
        assert_eq!(e["transport"], "unix");
        assert!(e.get("tcp").is_none(), "{e}");
        assert_eq!(
            e["nginx_error"].as_str().unwrap(),
            format!(
                "connect() to {upstream} failed (2: No such file or directory) while connecting to upstream"
            )
        );
    }
    tracer.stop();
}

#[test]
fn root_only_unix_socket_is_permission_denied() {
    require_root();
    let nginx = Nginx::start("", "location / { proxy_pass http://unix:{dir}/root.sock; }");
    let _socket = UnixSocketFile::listening(&nginx.dir().join("root.sock"), 0o600);
    let upstream = format!("unix:{}/root.sock", nginx.dir().display());
    let (tracer, _) = expect_failures(
        &nginx,
        502,
        &upstream,
        ("permission_denied", "permission", 13),
    );
    tracer.stop();
}

#[test]
fn unix_socket_without_listener_is_refused() {
    require_root();
    let nginx = Nginx::start(
        "",
        "location / { proxy_pass http://unix:{dir}/stale.sock; }",
    );
    let _socket = UnixSocketFile::stale(&nginx.dir().join("stale.sock"));
    let upstream = format!("unix:{}/stale.sock", nginx.dir().display());
    let (tracer, _) = expect_failures(&nginx, 502, &upstream, ("refused", "backend_down", 111));
    tracer.stop();
}

#[test]
fn failover_reports_the_dead_server_and_not_the_live_one() {
    require_root();
    let dead = free_port();
    let backend = HttpBackend::start();
    let nginx = Nginx::start(
        &format!(
            "upstream pool {{ server 127.0.0.1:{dead} max_fails=0; server 127.0.0.1:{} max_fails=0; }}",
            backend.port()
        ),
        "location / { proxy_pass http://pool; }",
    );
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, &[]);
    // Every request succeeds; those that tried the dead server first failed
    // over. Which ones did is nginx's round robin business (per worker): the
    // error log says how many, and ngx-trace must report exactly those.
    for _ in 0..4 {
        assert_eq!(nginx.get("/"), 200);
    }
    let upstream = format!("127.0.0.1:{dead}");
    let logged = nginx
        .error_log_lines("connect() failed (111: Connection refused)")
        .len();
    assert!(logged >= 1, "no request tried the dead server");
    let events = tracer.upstream_events(logged, Duration::from_secs(10), |e| e["outcome"] != "ok");
    assert_eq!(events.len(), logged, "{events:#?}");
    for e in &events {
        assert_failure(e, "refused", "backend_down", 111, &upstream, &workers);
    }
    let all = tracer.stop();
    let summary = all
        .iter()
        .find(|e| e["event"] == "summary")
        .expect("summary");
    let live = format!("127.0.0.1:{}", backend.port());
    let live_row = summary["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["upstream"] == live.as_str())
        .expect("live upstream in summary");
    assert_eq!(live_row["outcomes"]["ok"], 4, "{summary}");
}

#[test]
fn accepted_client_connections_are_never_upstreams() {
    require_root();
    let backend = HttpBackend::start();
    let nginx = Nginx::start(
        "",
        &format!(
            "location / {{ proxy_pass http://127.0.0.1:{}; }}",
            backend.port()
        ),
    );
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, &["--all"]);
    send(&nginx, "/", 200);
    let events = tracer.upstream_events(REQUESTS, Duration::from_secs(10), |_| true);
    assert_eq!(
        events.len(),
        REQUESTS,
        "one connect per request, no client socket: {events:#?}"
    );
    let upstream = format!("127.0.0.1:{}", backend.port());
    for e in &events {
        assert_eq!(e["outcome"], "ok", "{e}");
        assert_eq!(e["verdict"], "healthy", "{e}");
        assert_eq!(e["errno"], Value::Null, "{e}");
        assert_eq!(e["upstream"], upstream.as_str(), "{e}");
        assert!(workers.contains(&(e["worker_pid"].as_u64().unwrap() as u32)));
    }
    tracer.stop();
}

#[test]
fn new_workers_after_reload_are_traced() {
    require_root();
    let port = free_port();
    let nginx = Nginx::proxying_to(port, "");
    let mut tracer = Tracer::attach_to(&nginx, &[]);
    let old = nginx.workers();
    let new = nginx.reload();
    let mut shown = new.clone();
    shown.sort_unstable();
    let workers_event = tracer.wait_for(Duration::from_secs(5), |e| {
        e["event"] == "workers" && e["pids"] == serde_json::json!(shown)
    });
    assert!(
        workers_event.is_some(),
        "no workers event with {new:?}: {:#?}",
        tracer.events
    );
    send(&nginx, "/", 502);
    let upstream = format!("127.0.0.1:{port}");
    let events = tracer.upstream_events(REQUESTS, Duration::from_secs(10), |_| true);
    assert_eq!(events.len(), REQUESTS, "{events:#?}");
    for e in &events {
        assert_failure(e, "refused", "backend_down", 111, &upstream, &new);
        assert!(!old.contains(&(e["worker_pid"].as_u64().unwrap() as u32)));
    }
    tracer.stop();
}

#[test]
fn without_pid_it_waits_for_nginx_and_traces_it_when_it_starts() {
    require_root();
    let port = free_port();
    let mut tracer = Tracer::start(&[]);
    let nginx = Nginx::proxying_to(port, "");
    let workers = nginx.workers();
    send(&nginx, "/", 502);
    let upstream = format!("127.0.0.1:{port}");
    let events = tracer.upstream_events(REQUESTS, Duration::from_secs(10), |e| {
        e["upstream"] == upstream.as_str()
    });
    assert_eq!(events.len(), REQUESTS, "{events:#?}");
    for e in &events {
        assert_failure(e, "refused", "backend_down", 111, &upstream, &workers);
    }
    tracer.stop();
}

/// nginx's datagram sockets (syslog on a UNIX socket, connected per worker,
/// and a syslog socket that does not exist, whose `connect()` fails) are
/// never taken for upstreams: only the proxied exchanges are reported.
#[test]
fn syslog_datagram_sockets_are_not_upstreams_even_when_their_connect_fails() {
    use std::os::unix::{fs::PermissionsExt as _, net::UnixDatagram};
    require_root();
    let backend = HttpBackend::start();
    let syslog_dir = ngx_trace_tests::TempDir::new("syslog");
    let syslog_path = syslog_dir.path().join("log.sock");
    let syslog = UnixDatagram::bind(&syslog_path).expect("bind the syslog socket");
    std::fs::set_permissions(&syslog_path, std::fs::Permissions::from_mode(0o666))
        .expect("chmod the syslog socket");
    syslog.set_nonblocking(true).unwrap();
    let missing = syslog_dir.path().join("missing.sock");
    let port = backend.port();
    let nginx = Nginx::start(
        "",
        &format!(
            "location / {{ access_log syslog:server=unix:{} combined; \
                          proxy_pass http://127.0.0.1:{port}; }}\n\
             location /missing {{ access_log syslog:server=unix:{} combined; \
                          proxy_pass http://127.0.0.1:{port}; }}",
            syslog_path.display(),
            missing.display()
        ),
    );
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, &["--all"]);
    send(&nginx, "/", 200);
    send(&nginx, "/missing", 200);
    let upstream = format!("127.0.0.1:{port}");
    tracer.upstream_events(2 * REQUESTS, Duration::from_secs(10), |_| true);
    let all = tracer.stop();
    // Not even an exchange left open at the stop (`pending`) names them.
    let log_socket = |e: &&Value| e["upstream"].as_str().is_some_and(|u| u.ends_with(".sock"));
    assert_eq!(all.iter().filter(log_socket).count(), 0, "{all:#?}");
    let events: Vec<_> = all
        .into_iter()
        .filter(|e| e["event"] == "upstream")
        .collect();
    // One upstream event per proxied exchange, answered; nothing else.
    assert_eq!(events.len(), 2 * REQUESTS, "{events:#?}");
    for e in &events {
        assert_eq!(e["upstream"], upstream.as_str(), "{e}");
        assert_eq!(e["outcome"], "ok", "{e}");
        let pid = e["worker_pid"].as_u64().expect("worker_pid") as u32;
        assert!(workers.contains(&pid), "{e}");
    }
    // The datagram paths were really taken: log lines arrived on the one
    // socket, and nginx logged its failed connect to the other.
    let mut buf = [0u8; 4096];
    let received = std::iter::from_fn(|| syslog.recv(&mut buf).ok()).count();
    assert_eq!(received, REQUESTS, "access log lines over syslog");
    assert!(
        !nginx
            .error_log_lines("connect() failed (2: No such file or directory)")
            .is_empty(),
        "nginx's connect to the missing syslog socket failed"
    );
}

#[test]
fn a_burst_of_refusals_prints_a_few_folded_lines_and_counts_every_one() {
    use std::io::{BufRead as _, BufReader};
    require_root();
    let port = free_port();
    let nginx = Nginx::start_with_connections(
        1024,
        "",
        &format!("location / {{ proxy_pass http://127.0.0.1:{port}; }}"),
    );
    // Text output, as a person at a terminal reads it.
    // Killed when dropped (a failed assertion); stops by itself at worst.
    struct Child(std::process::Child);
    impl Drop for Child {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Child(
        std::process::Command::new(ngx_trace_tests::tracer::binary())
            .args(["--pid", &nginx.master_pid().to_string(), "--interval", "0"])
            .args(["--duration", "300"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start ngx-trace"),
    );
    let mut stdout = BufReader::new(child.0.stdout.take().unwrap());
    let mut line = String::new();
    while !line.starts_with("tracing nginx workers") {
        line.clear();
        assert!(stdout.read_line(&mut line).unwrap() > 0, "ngx-trace ended");
    }
    const THREADS: usize = 8;
    const EACH: usize = 400;
    let started = std::time::Instant::now();
    let senders: Vec<_> = (0..THREADS)
        .map(|_| {
            let port = nginx.port();
            std::thread::spawn(move || {
                (0..EACH)
                    .filter(|_| ngx_trace_tests::http::get(port, "/") == 502)
                    .count()
            })
        })
        .collect();
    let answered: usize = senders.into_iter().map(|t| t.join().unwrap()).sum();
    let burst = started.elapsed();
    assert_eq!(answered, THREADS * EACH);
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.0.id() as i32, libc::SIGTERM) };
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stdout, &mut rest).unwrap();
    assert!(child.0.wait().unwrap().success());
    let refusals: Vec<&str> = rest
        .lines()
        .filter(|l| l.contains(" refused(111) "))
        .collect();
    // The first at once, then at most one line a second (plus the last).
    let bound = burst.as_secs() as usize + 5;
    assert!(
        !refusals.is_empty() && refusals.len() <= bound,
        "{} lines for a burst of {burst:?}:\n{rest}",
        refusals.len()
    );
    let shown: u64 = refusals
        .iter()
        .map(|l| match l.split_once(" ×") {
            Some((_, n)) => n.split(' ').next().unwrap().parse::<u64>().unwrap(),
            None => 1,
        })
        .sum();
    assert_eq!(shown, (THREADS * EACH) as u64, "{rest}");
    // The summary counts every one.
    let summary = rest
        .lines()
        .find(|l| l.contains(&format!("127.0.0.1:{port}")) && l.contains("refused "))
        .unwrap_or_else(|| panic!("no summary row:\n{rest}"));
    assert!(
        summary.ends_with(&format!("refused {}", THREADS * EACH)),
        "{summary}"
    );
}
