//! `ngx-trace explain`: nginx's own error log, each upstream line with the
//! kernel's explanation, checked side by side with the faults made for real:
//! from a recording, from the log alone, and live. Run as root through
//! `cargo xtask test`.
use std::{
    io::{BufRead as _, BufReader, Read as _},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use ngx_trace_tests::{
    TempDir,
    backend::{Behavior, HttpBackend, UnixSocketFile},
    fault_backend::{FaultBackend, Mode},
    firewall::LoopbackRule,
    free_port,
    nginx::Nginx,
    require_root,
    tracer::{Tracer, binary},
};
use serde_json::Value;

/// Runs `ngx-trace explain <args>` to its end: exit code, stdout as JSON
/// values, stderr.
fn explain(args: &[&str]) -> (i32, Vec<Value>, String) {
    let out = Command::new(binary())
        .arg("explain")
        .args(args)
        .output()
        .expect("run ngx-trace explain");
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (
        out.status.code().unwrap_or(-1),
        events,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The one explanation of the line that contains every one of `needles`.
fn of_line<'a>(events: &'a [Value], needles: &[&str]) -> &'a Value {
    let found: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "explain")
        .filter(|e| {
            let line = e["line"].as_str().unwrap_or("");
            needles.iter().all(|n| line.contains(n))
        })
        .collect();
    assert!(
        !found.is_empty(),
        "no explained line with {needles:?} in {events:#?}"
    );
    found[0]
}

fn cause(e: &Value) -> (&str, &str, &str) {
    (
        e["cause"].as_str().unwrap_or("null"),
        e["detail"].as_str().unwrap_or("null"),
        e["confidence"].as_str().unwrap_or("null"),
    )
}

/// A backend killed (by a `kill` process, not its parent) while it holds
/// the request of `path`; returns once nginx answered.
fn kill_backend_holding(nginx: &Nginx, backend: &mut FaultBackend, path: &str) {
    let port = nginx.port();
    let path = path.to_string();
    let client = std::thread::spawn(move || ngx_trace_tests::http::get(port, &path));
    backend.wait_for_request(Duration::from_secs(10));
    let status = Command::new("kill")
        .args(["-KILL", &backend.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    assert_eq!(client.join().unwrap(), 502);
    backend.wait_exit(Duration::from_secs(5));
}

#[test]
fn every_upstream_line_of_the_error_log_is_explained_from_a_recording() {
    require_root();
    let ok = HttpBackend::start();
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_secs(3)));
    let mut crashing = FaultBackend::start_tcp(Mode::Hold);
    let (dead, dead2, rejected) = (free_port(), free_port(), free_port());
    let _reject = LoopbackRule::reject_syn(rejected);
    let okp = ok.port();
    // UNIX faults: a socket file missing, one nginx's user may not open.
    let sockets = TempDir::new("explain-unix");
    let missing = sockets.path().join("missing.sock");
    let private = sockets.path().join("private.sock");
    let _private = UnixSocketFile::listening(&private, 0o600);
    let nginx = Nginx::start(
        &format!(
            "upstream pair {{ server 127.0.0.1:{dead}; server 127.0.0.1:{okp}; }}\n\
             upstream gone {{ server 127.0.0.1:{dead}; server 127.0.0.1:{dead2}; }}"
        ),
        &format!(
            "location /down {{ proxy_pass http://127.0.0.1:{dead}; }}\n\
             location /reject {{ proxy_pass http://127.0.0.1:{rejected}; }}\n\
             location /slow {{ proxy_read_timeout 1s; proxy_pass http://127.0.0.1:{}; }}\n\
             location /pair {{ proxy_pass http://pair; }}\n\
             location /gone {{ proxy_pass http://gone; }}\n\
             location /crash {{ proxy_pass {}; }}\n\
             location /missing {{ proxy_pass http://unix:{}:; }}\n\
             location /private {{ proxy_pass http://unix:{}:; }}",
            slow.port(),
            crashing.proxy_pass(),
            missing.display(),
            private.display()
        ),
    );
    let recording = nginx.dir().join("trace.jsonl");
    let mut tracer = Tracer::attach_to(&nginx, &["--record", recording.to_str().unwrap()]);
    assert_eq!(nginx.get("/down"), 502);
    assert_eq!(nginx.get("/reject"), 502);
    // A query string (nginx writes it whole in its log, and passes it to
    // the upstream): no output of ngx-trace holds it.
    assert_eq!(nginx.get("/slow?token=s3cret"), 504);
    // The first request tries the dead server first, then the live one.
    assert_eq!(nginx.get("/pair"), 200);
    // Both servers fail; once a worker marked both down, `no live upstreams`
    // (two workers: of four requests, one worker gets two).
    for _ in 0..4 {
        assert_eq!(nginx.get("/gone"), 502);
    }
    kill_backend_holding(&nginx, &mut crashing, "/crash");
    assert_eq!(nginx.get("/missing"), 502);
    assert_eq!(nginx.get("/private"), 502);
    // A worker crashing: its master writes the line.
    let worker = nginx.workers()[0];
    assert!(
        Command::new("kill")
            .args(["-SEGV", &worker.to_string()])
            .status()
            .unwrap()
            .success()
    );
    let start = Instant::now();
    while nginx.error_log_lines("exited on signal 11").is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no worker exit line"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The tracer's word of the worker's death (it waits for the worker's
    // sockets to be collected first; longer on a busy host).
    assert!(
        tracer
            .wait_for(Duration::from_secs(10), |e| e["event"] == "worker_exit")
            .is_some(),
        "no worker_exit event: {}",
        tracer.stderr()
    );
    let traced = tracer.stop();
    let log = nginx.dir().join("error.log");
    let log = log.to_str().unwrap();

    let (code, events, stderr) = explain(&[log, "--from", recording.to_str().unwrap(), "--json"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        !nginx.error_log_lines("s3cret").is_empty(),
        "nginx's own log holds the query"
    );
    for (what, text) in [
        ("the traced events", format!("{traced:?}")),
        (
            "the recording",
            std::fs::read_to_string(&recording).unwrap(),
        ),
        ("explain's output", format!("{events:?}{stderr}")),
    ] {
        assert!(!text.contains("s3cret"), "{what} hold the query string");
    }
    let down = of_line(&events, &["connect() failed (111", "GET /down"]);
    // Refused before any request was written, /down's, /pair's and
    // /gone's connects to the dead server carry no path to tell them
    // apart within the line's second: the cause is sure, the join likely
    // (exact when a slow host put the others in another second, leaving
    // one candidate: never ambiguous, never another cause).
    let (kind, detail, confidence) = cause(down);
    assert_eq!((kind, detail), ("backend_down", "rst"), "{down:#}");
    assert!(["likely", "exact"].contains(&confidence), "{down:#}");
    assert_eq!(down["match"]["upstream"], format!("127.0.0.1:{dead}"));
    assert_eq!(
        down["ruled_out"][0]["cause"], "network/icmp_reject",
        "{down:#}"
    );
    assert!(
        down["advice"]
            .as_str()
            .unwrap()
            .contains("proxy_next_upstream")
    );

    let reject = of_line(&events, &["connect() failed (111", "GET /reject"]);
    assert_eq!(
        cause(reject),
        ("network", "icmp_reject", "exact"),
        "{reject:#}"
    );
    assert_eq!(
        reject["ruled_out"][0]["cause"], "backend_down/rst",
        "{reject:#}"
    );

    let timeout = of_line(&events, &["upstream timed out (110", "GET /slow"]);
    assert_eq!(
        cause(timeout),
        ("backend_slow", "slow", "exact"),
        "{timeout:#}"
    );
    assert!(
        timeout["advice"]
            .as_str()
            .unwrap()
            .contains("proxy_read_timeout")
    );

    // The retry chain: refused on the dead server, answered by the other.
    let pair = of_line(&events, &["connect() failed (111", "GET /pair"]);
    assert_eq!(cause(pair).0, "backend_down", "{pair:#}");
    assert_eq!(
        pair["retried"]["upstream"],
        format!("127.0.0.1:{okp}"),
        "{pair:#}"
    );
    assert_eq!(pair["retried"]["outcome"], "ok", "{pair:#}");

    // Without the configuration the group's servers are unknown: every
    // server's failures, so marked.
    let no_live = of_line(&events, &["no live upstreams"]);
    assert_eq!(
        cause(no_live),
        ("backend_down", "max_fails", "ambiguous"),
        "{no_live:#}"
    );
    let evidence = no_live["evidence"].as_str().unwrap();
    assert!(
        evidence.contains("servers are unknown (no configuration)")
            && evidence.contains(&format!("127.0.0.1:{rejected} network")),
        "{no_live:#}"
    );
    // With it (`nginx -T` saved, as an operator would): nginx's consequence
    // of the group's own failures, their shared cause, the group's two
    // servers as evidence and none of the other failing upstreams (the
    // rejected port, the UNIX sockets, the slow backend).
    let dump = nginx.save_dump();
    let (code, with_config, stderr) = explain(&[
        log,
        "--from",
        recording.to_str().unwrap(),
        "--config",
        dump.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let no_live = of_line(&with_config, &["no live upstreams"]);
    assert_eq!(
        cause(no_live),
        ("backend_down", "max_fails", "likely"),
        "{no_live:#}"
    );
    let evidence = no_live["evidence"].as_str().unwrap();
    for server in [dead, dead2] {
        assert!(
            evidence.contains(&format!("127.0.0.1:{server} backend_down x")),
            "{no_live:#}"
        );
    }
    assert!(evidence.contains("upstream gone"), "{no_live:#}");
    for other in [
        format!("127.0.0.1:{rejected}"),
        format!("127.0.0.1:{}", slow.port()),
        "unix:".to_string(),
    ] {
        assert!(!evidence.contains(&other), "{other} in {no_live:#}");
    }

    // A FIN or a reset, as the kill found the socket: either way the crash.
    let crash = of_line(&events, &["GET /crash"]);
    assert_eq!(
        cause(crash),
        ("backend_crashed", "killed", "exact"),
        "{crash:#}"
    );
    assert_eq!(crash["match"]["peer"]["pid"], crashing.pid());

    let missing_line = of_line(&events, &["(2: No such file or directory)", "GET /missing"]);
    assert_eq!(
        cause(missing_line),
        ("backend_down", "no_socket_file", "exact"),
        "{missing_line:#}"
    );
    let private_line = of_line(&events, &["(13: Permission denied)", "GET /private"]);
    assert_eq!(
        cause(private_line),
        ("permission", "permission", "exact"),
        "{private_line:#}"
    );
    assert!(
        private_line["advice"]
            .as_str()
            .unwrap()
            .contains("listen.mode")
    );
    let crashed = of_line(
        &events,
        &[&format!("worker process {worker} exited on signal 11")],
    );
    assert_eq!(
        cause(crashed),
        ("proxy_crashed", "worker_died", "exact"),
        "{crashed:#}"
    );
    assert_eq!(crashed["match"]["signal"], 11, "{crashed:#}");

    // Every upstream line nginx wrote is explained, none left undecided.
    let undecided: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "explain" && e["confidence"] == "none")
        .collect();
    assert!(undecided.is_empty(), "{undecided:#?}");
    let error_lines = nginx.error_log_lines("upstream: \"").len();
    let explained = events.iter().filter(|e| e["event"] == "explain").count();
    assert!(
        explained >= error_lines,
        "{explained} explained, {error_lines} lines"
    );
    let summary = events.last().unwrap();
    assert_eq!(summary["event"], "explain_summary", "{summary:#}");
    let dead_row = summary["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["upstream"] == format!("127.0.0.1:{dead}"))
        .unwrap_or_else(|| panic!("{summary:#}"));
    assert!(dead_row["retried_ok"].as_u64().unwrap() >= 1, "{summary:#}");

    // The log alone: every line gets the causes it allows, none decided.
    let (code, alone, stderr) = explain(&[log, "--json"]);
    assert_eq!(code, 0, "{stderr}");
    let down = of_line(&alone, &["connect() failed (111", "GET /down"]);
    assert_eq!(cause(down), ("null", "null", "none"));
    let candidates: Vec<&str> = down["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["cause"].as_str().unwrap())
        .collect();
    assert_eq!(candidates, ["backend_down/rst", "network/icmp_reject"]);

    // Not an error log: one sentence, exit 2.
    let access = nginx.dir().join("access.log");
    let lines: String = (0..60)
        .map(|i| {
            format!(
                "127.0.0.1 - - [27/Nov/2026:01:02:{:02} +0000] \"GET / HTTP/1.1\" 200 2\n",
                i % 60
            )
        })
        .collect();
    std::fs::write(&access, lines).unwrap();
    let (code, _, stderr) = explain(&[access.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("is not an nginx error log"), "{stderr}");
}

/// `ngx-trace explain --json <args>` running live, its stdout lines
/// collected; returns once it follows an error log.
struct LiveExplain {
    child: std::process::Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl LiveExplain {
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(binary())
            .arg("explain")
            .arg("--json")
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start ngx-trace explain");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let sink = stdout.clone();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let mut err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let live = Self {
            child,
            stdout,
            stderr,
        };
        let start = Instant::now();
        while !live.stderr.lock().unwrap().contains("following ") {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "explain did not start following a log: {}",
                live.stderr.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        live
    }

    /// Stops it (SIGINT, as Ctrl-C) and returns its events.
    fn stop(mut self) -> (Vec<Value>, String) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let status = self.child.wait().expect("wait for ngx-trace explain");
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "{status}: {stderr}");
        std::thread::sleep(Duration::from_millis(100));
        let events = self
            .stdout
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect();
        (events, stderr)
    }
}

#[test]
fn explain_live_finds_the_error_log_and_explains_lines_as_nginx_writes_them() {
    require_root();
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_secs(3)));
    let dead = free_port();
    let nginx = Nginx::start(
        "",
        &format!(
            "location /down {{ proxy_pass http://127.0.0.1:{dead}; }}\n\
             location /slow {{ proxy_read_timeout 1s; proxy_pass http://127.0.0.1:{}; }}",
            slow.port()
        ),
    );
    let master = nginx.master_pid().to_string();
    let live = LiveExplain::start(&["--pid", &master]);
    assert_eq!(nginx.get("/down"), 502);
    assert_eq!(nginx.get("/slow"), 504);
    // Give the last line its wait for the kernel's events.
    std::thread::sleep(Duration::from_secs(3));
    let (events, stderr) = live.stop();
    let log = nginx.dir().join("error.log");
    assert!(
        stderr.contains(&format!("following {}", log.display())),
        "{stderr}"
    );
    let down = of_line(&events, &["connect() failed (111", "GET /down"]);
    assert_eq!(cause(down), ("backend_down", "rst", "exact"), "{down:#}");
    let slow_line = of_line(&events, &["upstream timed out (110", "GET /slow"]);
    assert_eq!(
        cause(slow_line),
        ("backend_slow", "slow", "exact"),
        "{slow_line:#}"
    );
    // The lines are nginx's own, as its log holds them.
    let written = nginx.error_log_lines("GET /down");
    assert!(written.contains(&down["line"].as_str().unwrap().to_string()));
    assert_eq!(events.last().unwrap()["event"], "explain_summary");
}

#[test]
fn a_local_backend_with_a_full_accept_queue_is_backend_overloaded_not_the_network() {
    require_root();
    // A backend that listens with backlog 0 and never accepts: one
    // connection fills its queue, and its kernel drops the next SYNs.
    // SAFETY: plain socket calls on a descriptor this test owns.
    let (fd, port) = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        let len = size_of::<libc::sockaddr_in>() as u32;
        assert_eq!(libc::bind(fd, (&raw const addr).cast(), len), 0);
        assert_eq!(libc::listen(fd, 0), 0);
        let mut bound: libc::sockaddr_in = std::mem::zeroed();
        let mut blen = len;
        libc::getsockname(fd, (&raw mut bound).cast(), &mut blen);
        (fd, u16::from_be(bound.sin_port))
    };
    let _queued = std::net::TcpStream::connect(("127.0.0.1", port)).expect("fill the queue");
    let nginx = Nginx::proxying_to(port, "proxy_connect_timeout 2s;");
    let mut tracer = Tracer::attach_to(&nginx, &[]);
    assert_eq!(nginx.get("/"), 504);
    let events = tracer.upstream_events(1, Duration::from_secs(10), |_| true);
    // SAFETY: closing the listener made above.
    unsafe { libc::close(fd) };
    let e = &events[0];
    assert_eq!(e["outcome"], "connect_timeout", "{e:#}");
    assert_eq!(e["verdict"], "backend_overloaded", "{e:#}");
    let evidence = e["evidence"].as_str().unwrap();
    assert!(evidence.contains("accept queue is full"), "{e:#}");
    assert_eq!(
        nginx
            .error_log_lines(
                "upstream timed out (110: Connection timed out) while connecting to upstream"
            )
            .len(),
        1
    );
}

#[test]
fn a_stale_kept_alive_connection_is_told_from_a_crash_and_its_retry_shown() {
    require_root();
    let backend = HttpBackend::with(Behavior::CloseReused);
    let nginx = Nginx::start(
        &format!(
            "upstream pool {{ server 127.0.0.1:{}; keepalive 4; }}",
            backend.port()
        ),
        "location / { proxy_pass http://pool; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }",
    );
    let recording = nginx.dir().join("trace.jsonl");
    let tracer = Tracer::attach_to(&nginx, &["--record", recording.to_str().unwrap()]);
    // Each worker's second request reuses the connection its first opened.
    let needle = "upstream prematurely closed connection";
    let start = Instant::now();
    while nginx.error_log_lines(needle).is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no stale connection met"
        );
        nginx.get("/");
    }
    std::thread::sleep(Duration::from_millis(500));
    tracer.stop();
    let log = nginx.dir().join("error.log");
    let (code, events, stderr) = explain(&[
        log.to_str().unwrap(),
        "--from",
        recording.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let stale = of_line(&events, &[needle]);
    assert_eq!(
        cause(stale),
        ("backend_aborted", "stale_keepalive", "exact"),
        "{stale:#}"
    );
    assert_eq!(stale["match"]["reused"], true, "{stale:#}");
    assert!(
        stale["match"]["timings_us"]["idle_before"]
            .as_u64()
            .is_some(),
        "{stale:#}"
    );
    let ruled_out: Vec<&str> = stale["ruled_out"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["cause"].as_str().unwrap())
        .collect();
    assert!(ruled_out.contains(&"backend_crashed/crash"), "{stale:#}");
    assert!(
        stale["advice"]
            .as_str()
            .unwrap()
            .contains("keepalive_timeout"),
        "{stale:#}"
    );
    // nginx tried again on a new connection, which was answered.
    assert_eq!(stale["retried"]["outcome"], "ok", "{stale:#}");
}

#[test]
fn advice_names_the_timeout_in_effect_with_its_file_and_line() {
    require_root();
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_secs(3)));
    // One setting at http level in an included file, overridden for one
    // location in another.
    let nginx = Nginx::start(
        "include {dir}/conf.d/*.conf;",
        &format!(
            "location /slow {{ include {{dir}}/loc.d/*.inc; proxy_pass http://127.0.0.1:{}; }}",
            slow.port()
        ),
    );
    nginx.write_and_reload(&[
        ("conf.d/timeouts.conf", "proxy_read_timeout 30s;\n"),
        ("loc.d/slow.inc", "# the slow API\nproxy_read_timeout 1s;\n"),
    ]);
    let dir = nginx.dir().to_path_buf();
    let master = nginx.master_pid().to_string();
    let live = LiveExplain::start(&["--pid", &master]);
    assert_eq!(nginx.get("/slow"), 504);
    std::thread::sleep(Duration::from_secs(3));
    let (events, stderr) = live.stop();
    assert!(!stderr.contains("nginx configuration"), "{stderr}");
    let line = of_line(&events, &["upstream timed out (110", "GET /slow"]);
    assert_eq!(cause(line), ("backend_slow", "slow", "exact"), "{line:#}");
    let advice = line["advice"].as_str().unwrap();
    let expected = format!(
        "proxy_read_timeout 1s ({}:2, location /slow)",
        dir.join("loc.d/slow.inc").display()
    );
    assert!(advice.contains(&expected), "{advice}");
}

#[test]
fn client_aborts_logged_at_info_are_the_kernels_client_closed_and_debug_lines_stay_apart() {
    require_root();
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_secs(3)));
    // nginx's info lines (a client leaving) and its debug trace (Debian
    // builds nginx `--with-debug`) in the log `explain` reads.
    let nginx = Nginx::start(
        "error_log {dir}/error.log debug;",
        &format!(
            "location /slow {{ proxy_pass http://127.0.0.1:{}; }}",
            slow.port()
        ),
    );
    let recording = nginx.dir().join("trace.jsonl");
    let tracer = Tracer::attach_to(&nginx, &["--record", recording.to_str().unwrap()]);
    // Two clients give up while nginx waits for the answer.
    for _ in 0..2 {
        ngx_trace_tests::http::get_then_leave(nginx.port(), "/slow", Duration::from_millis(300));
    }
    let start = Instant::now();
    while nginx
        .error_log_lines("client prematurely closed connection")
        .len()
        < 2
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "nginx logged no client abort"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(800));
    tracer.stop();
    let log = nginx.dir().join("error.log");
    let (code, events, stderr) = explain(&[
        log.to_str().unwrap(),
        "--from",
        recording.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let aborts: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["event"] == "explain"
                && e["line"]
                    .as_str()
                    .is_some_and(|l| l.contains("client prematurely closed connection"))
        })
        .collect();
    assert_eq!(aborts.len(), 2, "{events:#?}");
    for e in aborts {
        assert_eq!(e["log"]["level"], "info", "{e:#}");
        assert_eq!(e["kind"], "client_side", "{e:#}");
        assert_eq!(
            (e["cause"].as_str(), e["detail"].as_str()),
            (Some("client_aborted"), Some("client_closed")),
            "{e:#}"
        );
        assert_eq!(e["match"]["outcome"], "client_closed", "{e:#}");
    }
    // The debug trace names the upstream on many lines: none of them is
    // an upstream line, all are counted apart.
    let summary = events
        .iter()
        .find(|e| e["event"] == "explain_summary")
        .expect("a summary");
    let debug = summary["debug_lines"].as_u64().unwrap();
    let written = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .filter(|l| l.contains(" [debug] "))
        .count() as u64;
    assert!(
        written > 0 && debug == written,
        "{debug} of {written}: {summary:#}"
    );
    assert!(
        events
            .iter()
            .filter(|e| e["event"] == "explain")
            .all(|e| e["log"]["level"] != "debug"),
        "a debug line explained"
    );
}
