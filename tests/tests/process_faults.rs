//! Processes dying under nginx's exchanges, for real: a backend killed by a
//! signal (TCP and UNIX socket), OOM-killed in a memory cgroup, killed by
//! PHP-FPM's `request_terminate_timeout`, or told to end by gunicorn's
//! arbiter (`--timeout`) and closing its connection on its way out; a
//! backend hanging up while alive;
//! an nginx worker killed mid-exchange; a worker out of descriptors. Each
//! checks what ngx-trace says against what nginx (and the kernel, and
//! PHP-FPM) logged. Run as root through `cargo xtask test`.
use std::{
    os::unix::process::ExitStatusExt as _,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ngx_trace_tests::{
    TempDir,
    backend::{Behavior, HttpBackend},
    cgroup::MemoryCgroup,
    fault_backend::{FaultBackend, Mode},
    free_port,
    gunicorn::Gunicorn,
    http,
    nginx::Nginx,
    php_fpm::PhpFpm,
    require_root,
    tracer::{Tracer, avoiding},
};
use serde_json::Value;

/// What nginx logs when an upstream ends the connection before any response
/// byte: with a FIN, or (data left unread in its socket) a RST.
const PREMATURELY_CLOSED: &str =
    "upstream prematurely closed connection while reading response header from upstream";
const RESET: &str =
    "recv() failed (104: Connection reset by peer) while reading response header from upstream";

/// GETs `path` from `nginx` in a thread: the test faults the exchange
/// meanwhile. The status is 0 when no answer came.
fn get_in_background(nginx: &Nginx, path: &str) -> JoinHandle<u16> {
    let port = nginx.port();
    let path = path.to_string();
    std::thread::spawn(move || http::get(port, &path))
}

/// The first event matching `pred`: among those received already, else the
/// next to come within `timeout`; panics naming `what` and what came.
fn event(
    tracer: &mut Tracer,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    if let Some(e) = tracer.events.iter().find(|e| pred(e)) {
        return e.clone();
    }
    tracer
        .wait_for(timeout, &pred)
        .unwrap_or_else(|| panic!("no {what} within {timeout:?}: {:#?}", tracer.events))
}

/// The one upstream event of the one exchange with `upstream`.
fn the_exchange(tracer: &mut Tracer, upstream: &str) -> Value {
    let mut events =
        tracer.upstream_events(1, Duration::from_secs(15), |e| e["upstream"] == upstream);
    assert_eq!(events.len(), 1, "one exchange with {upstream}: {events:#?}");
    events.remove(0)
}

/// Polls until `done`, failing after `timeout` with `what`.
fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The first line of nginx's error log containing `needle`, waiting up to
/// 10 s for nginx to write it (its master logs a worker's end once it has
/// reaped it).
fn log_line(nginx: &Nginx, needle: &str) -> String {
    let mut line = None;
    wait_until(
        &format!("`{needle}` in nginx's error log"),
        Duration::from_secs(10),
        || {
            line = nginx.error_log_lines(needle).into_iter().next();
            line.is_some()
        },
    );
    line.unwrap()
}

/// The exchange ended before any response byte, as nginx saw it: a FIN
/// (`closed_early`) or a RST (`reset`), with the matching errno and error
/// text, logged once by nginx, in one of `workers`.
fn assert_ended_early(nginx: &Nginx, e: &Value, workers: &[u32]) {
    match e["outcome"].as_str() {
        Some("closed_early") => {
            assert_eq!(e["errno"], Value::Null, "{e}");
            assert_eq!(e["nginx_error"], PREMATURELY_CLOSED, "{e}");
        }
        Some("reset") => {
            assert_eq!(e["errno"], 104, "{e}");
            assert_eq!(e["nginx_error"], RESET, "{e}");
        }
        _ => panic!("not an early end: {e}"),
    }
    let text = e["nginx_error"].as_str().unwrap();
    assert_eq!(
        nginx.error_log_lines(text).len(),
        1,
        "nginx logged `{text}` once"
    );
    let worker = e["worker_pid"].as_u64().expect("worker_pid") as u32;
    assert!(
        workers.contains(&worker),
        "{worker} not in {workers:?}: {e}"
    );
}

/// Whether `e` blames a process that died (rather than one still alive).
fn peer_died(e: &Value) -> bool {
    ["killed", "crashed", "oom_killed"]
        .iter()
        .any(|fate| e["peer"]["fate"] == *fate)
}

/// The summary's counts for `upstream`.
fn summary_row<'a>(events: &'a [Value], upstream: &str) -> &'a Value {
    let summary = events
        .iter()
        .find(|e| e["event"] == "summary")
        .expect("a summary at exit");
    summary["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .find(|u| u["upstream"] == upstream)
        .unwrap_or_else(|| panic!("no {upstream} in {summary}"))
}

/// An nginx proxying `location /` to `backend`, waiting 30 s for its
/// answer: only the fault ends the exchange.
fn nginx_for(backend: &FaultBackend) -> Nginx {
    Nginx::start(
        "",
        &format!(
            "location / {{ proxy_read_timeout 30s; proxy_pass {}; }}",
            backend.proxy_pass()
        ),
    )
}

/// A backend SIGKILLed by the test while it holds a request: nginx answers
/// 502 when the connection ends, and ngx-trace names the process that held
/// the other end, its end, and who sent the signal.
fn backend_killed_while_holding_a_request(mut backend: FaultBackend, tracer_args: &[&str]) {
    let nginx = nginx_for(&backend);
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, tracer_args);
    let client = get_in_background(&nginx, "/");
    backend.wait_for_request(Duration::from_secs(10));
    backend.kill(libc::SIGKILL);
    assert_eq!(client.join().unwrap(), 502);
    let status = backend.wait_exit(Duration::from_secs(5));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    let upstream = backend.upstream();
    let e = the_exchange(&mut tracer, &upstream);
    assert_ended_early(&nginx, &e, &workers);
    assert_eq!(e["verdict"], "backend_crashed", "{e}");
    let us = std::process::id();
    let peer = &e["peer"];
    assert_eq!(peer["pid"], backend.pid(), "{e}");
    // A task's comm is its executable's name cut to 15 bytes: it fits.
    assert_eq!(peer["comm"], "fault-backend", "{e}");
    assert_eq!(peer["parent_pid"], us, "the test started it: {e}");
    assert_eq!(peer["fate"], "killed", "{e}");
    assert_eq!(peer["signal"], libc::SIGKILL, "{e}");
    assert_eq!(peer["sender_pid"], us, "the test sent the signal: {e}");
    assert_ne!(peer["core_dumped"], true, "SIGKILL never dumps core: {e}");
    let events = tracer.stop();
    let outcome = e["outcome"].as_str().unwrap();
    let row = summary_row(&events, &upstream);
    assert_eq!(row["outcomes"][outcome], 1, "{row}");
}

#[test]
fn tcp_backend_sigkilled_holding_a_request_is_backend_crashed_killed_by_the_test() {
    require_root();
    backend_killed_while_holding_a_request(FaultBackend::start_tcp(Mode::Hold), &[]);
}

/// The same where the kernel's BTF tracepoints for signals and resets are
/// unusable: the classic tracepoints stand in, and name the same sender.
#[test]
fn tcp_backend_sigkilled_is_named_through_the_classic_tracepoints_too() {
    require_root();
    let avoid = avoiding("tp_btf:signal_generate,tp_btf:tcp_receive_reset");
    backend_killed_while_holding_a_request(FaultBackend::start_tcp(Mode::Hold), &[&avoid]);
}

#[test]
fn unix_backend_sigkilled_holding_a_request_is_backend_crashed_killed_by_the_test() {
    require_root();
    let dir = TempDir::new("fault-unix");
    backend_killed_while_holding_a_request(FaultBackend::start_unix(dir.path(), Mode::Hold), &[]);
}

#[test]
fn backend_over_its_memory_cgroup_limit_is_backend_crashed_oom_killed() {
    require_root();
    const LIMIT: u64 = 64 << 20;
    // Declared first, dropped last: the backend is reaped before the cgroup
    // goes.
    let cgroup = MemoryCgroup::new("oom", LIMIT);
    // Four times the limit, every page touched: no way to stay under it.
    let mut backend = FaultBackend::start_tcp_in(&cgroup, Mode::AllocMib(256));
    let nginx = nginx_for(&backend);
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, &[]);
    assert_eq!(nginx.get("/"), 502);
    let status = backend.wait_exit(Duration::from_secs(10));
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    // The kernel's own word that its OOM killer did it (not a failed
    // allocation the backend died of otherwise).
    let kills = cgroup.oom_kills();
    assert!(
        kills >= 1,
        "{} ({:?}) counts {kills} OOM kills",
        cgroup.path().display(),
        cgroup.version()
    );
    let e = the_exchange(&mut tracer, &backend.upstream());
    assert_ended_early(&nginx, &e, &workers);
    assert_eq!(e["verdict"], "backend_crashed", "{e}");
    let peer = &e["peer"];
    assert_eq!(peer["pid"], backend.pid(), "{e}");
    assert_eq!(peer["comm"], "fault-backend", "{e}");
    assert_eq!(peer["fate"], "oom_killed", "{e}");
    assert_eq!(peer["memory_limit_bytes"], LIMIT, "the cgroup's limit: {e}");
    if let Some(signal) = peer.get("signal") {
        assert_eq!(*signal, libc::SIGKILL, "{e}");
    }
    assert!(
        e["evidence"]
            .as_str()
            .is_some_and(|s| s.contains("OOM-killed")),
        "{e}"
    );
    tracer.stop();
}

/// The pid in a php-fpm.log line `... child 1234, script '...' ...` or
/// `... child 1234 exited ...`.
fn fpm_child(line: &str) -> u32 {
    let after = &line[line.find("child ").expect("a child in the line") + "child ".len()..];
    let digits: String = after.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no child pid in `{line}`"))
}

#[test]
fn php_fpm_child_killed_by_request_terminate_timeout_is_backend_crashed_killed_by_its_master() {
    require_root();
    // The script would sleep far beyond the 2 s PHP-FPM allows it.
    let fpm = PhpFpm::start_with(
        1,
        511,
        &[("sleep.php", "<?php sleep(10); echo \"done\\n\";")],
        "request_terminate_timeout = 2s",
    );
    let nginx = Nginx::start(
        "",
        &format!(
            "location ~ \\.php$ {{ include /etc/nginx/fastcgi_params; \
             fastcgi_param SCRIPT_FILENAME {}$fastcgi_script_name; fastcgi_pass unix:{}; }}",
            fpm.www().display(),
            fpm.socket().display()
        ),
    );
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, &[]);
    let start = Instant::now();
    assert_eq!(nginx.get("/sleep.php"), 502);
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "ended by the timeout, not by the script: {:?}",
        start.elapsed()
    );
    // PHP-FPM's side: which child it terminated, and that SIGTERM ended it.
    let log = fpm.dir().join("php-fpm.log");
    let fpm_lines = |needle: &str| -> Vec<String> {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            .map(String::from)
            .collect()
    };
    wait_until(
        "php-fpm.log to log the child's end",
        Duration::from_secs(10),
        || !fpm_lines("exited on signal 15").is_empty(),
    );
    let timed_out = fpm_lines("execution timed out");
    assert_eq!(timed_out.len(), 1, "{timed_out:?}");
    let child = fpm_child(&timed_out[0]);
    let exited = fpm_lines(&format!("child {child} exited on signal 15"));
    assert_eq!(exited.len(), 1, "{:?}", fpm_lines("child"));

    let upstream = format!("unix:{}", fpm.socket().display());
    let e = the_exchange(&mut tracer, &upstream);
    assert_eq!(e["transport"], "unix", "{e}");
    // Usually a reset: the child dies with nginx's last FastCGI records
    // unread in its socket.
    assert_ended_early(&nginx, &e, &workers);
    assert_eq!(e["verdict"], "backend_crashed", "{e}");
    let peer = &e["peer"];
    assert_eq!(peer["pid"], child, "the child php-fpm.log names: {e}");
    assert_eq!(peer["parent_pid"], fpm.pid(), "{e}");
    assert_eq!(peer["fate"], "killed", "{e}");
    assert_eq!(peer["signal"], libc::SIGTERM, "{e}");
    assert_eq!(peer["sender_pid"], fpm.pid(), "its master sent it: {e}");
    assert!(
        e["evidence"]
            .as_str()
            .is_some_and(|s| s.contains("request_terminate_timeout")),
        "{e}"
    );
    // For the record: PHP-FPM's child re-raises SIGTERM, so it is dead
    // before its socket closes (negative) or just after.
    let after = peer["exit_after_close_us"]
        .as_i64()
        .expect("the exit's time");
    eprintln!("php-fpm child {child} exited {after} µs after nginx saw its close");
    tracer.stop();
}

/// A WSGI application whose every request outlasts gunicorn's timeout.
const SLEEPING_WSGI_APP: &str = concat!(
    "import time\n",
    "def application(environ, start_response):\n",
    "    time.sleep(30)\n",
    "    start_response('200 OK', [('Content-Type', 'text/plain')])\n",
    "    return [b'too late\\n']\n",
);

#[test]
fn gunicorn_worker_ended_by_its_arbiter_closing_first_is_backend_crashed_killed_by_its_master() {
    require_root();
    // The arbiter sends SIGABRT to a worker silent for 1 s; the sync
    // worker's handler raises SystemExit, which closes the client
    // connection (a FIN to nginx) before the process exits.
    let g = Gunicorn::start(SLEEPING_WSGI_APP, 1, 1);
    let worker = g.worker_pids()[0];
    let nginx = Nginx::start(
        "",
        &format!("location / {{ proxy_pass http://127.0.0.1:{}; }}", g.port()),
    );
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, &[]);
    let start = Instant::now();
    assert_eq!(nginx.get("/"), 502);
    assert!(
        start.elapsed() < Duration::from_secs(15),
        "ended by gunicorn's timeout, not by the application: {:?}",
        start.elapsed()
    );
    // gunicorn's side: which worker it ended.
    wait_until(
        "gunicorn to log the worker's timeout",
        Duration::from_secs(10),
        || g.log().contains(&format!("WORKER TIMEOUT (pid:{worker})")),
    );
    let e = the_exchange(&mut tracer, &format!("127.0.0.1:{}", g.port()));
    assert_ended_early(&nginx, &e, &workers);
    assert_eq!(
        e["verdict"], "backend_crashed",
        "dead a moment after its close: {e}"
    );
    let peer = &e["peer"];
    assert_eq!(peer["pid"], worker, "the worker gunicorn's log names: {e}");
    assert_eq!(peer["parent_pid"], g.pid(), "{e}");
    assert_eq!(peer["fate"], "killed", "told to end, and it did: {e}");
    assert_eq!(peer["signal"], libc::SIGABRT, "{e}");
    assert_eq!(peer["sender_pid"], g.pid(), "its arbiter sent it: {e}");
    assert!(
        e["evidence"]
            .as_str()
            .is_some_and(|s| s.contains("gunicorn --timeout")),
        "{e}"
    );
    // The measurement the wait is chosen from: how long after its close
    // the worker exited (printed for the record).
    let after = peer["exit_after_close_us"]
        .as_i64()
        .expect("the exit's time");
    eprintln!("gunicorn worker {worker} exited {after} µs after nginx saw its close");
    assert!(
        (0..2_000_000).contains(&after),
        "closed first, then died within the wait (2 s for a process told to end): {e}"
    );
    tracer.stop();
}

#[test]
fn backend_hanging_up_while_alive_is_closed_early_backend_aborted() {
    require_root();
    let mut backend = FaultBackend::start_tcp(Mode::Close);
    let nginx = nginx_for(&backend);
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, &[]);
    assert_eq!(nginx.get("/"), 502);
    let e = the_exchange(&mut tracer, &backend.upstream());
    assert_eq!(e["outcome"], "closed_early", "{e}");
    assert_ended_early(&nginx, &e, &workers);
    assert_eq!(e["verdict"], "backend_aborted", "{e}");
    assert!(!peer_died(&e), "the backend lives on: {e}");
    assert!(backend.is_alive(), "the backend lives on");
    tracer.stop();
}

/// An nginx worker killed by the test with `signal` while an exchange of
/// its waits: nginx's master logs the worker's end and starts another;
/// ngx-trace reports the end (with the exchange it cut) and traces the new
/// worker.
fn worker_killed_mid_exchange(signal: i32) {
    let mut backend = FaultBackend::start_tcp(Mode::Hold);
    let refused = free_port();
    // A second listener with reuseport: the kernel spreads its connections
    // over both workers by the client's port. On the shared socket, nginx's
    // EPOLLEXCLUSIVE wakes the same idle worker every time, and that may
    // never be the new one.
    let spread = free_port();
    let nginx = Nginx::start(
        "",
        &format!(
            "listen 127.0.0.1:{spread} reuseport; \
             location / {{ proxy_read_timeout 30s; proxy_pass {}; }} \
             location /refused {{ proxy_pass http://127.0.0.1:{refused}; }}",
            backend.proxy_pass()
        ),
    );
    let before = nginx.workers();
    // --slow 200: a `pending` event names the worker waiting on the backend.
    let mut tracer = Tracer::attach_to(&nginx, &["--slow", "200"]);
    let client = get_in_background(&nginx, "/");
    backend.wait_for_request(Duration::from_secs(10));
    let upstream = backend.upstream();
    let pending = event(&mut tracer, "pending event", Duration::from_secs(10), |e| {
        e["event"] == "pending" && e["upstream"] == upstream.as_str()
    });
    let victim = pending["worker_pid"].as_u64().expect("worker_pid") as u32;
    assert!(before.contains(&victim), "{victim} not in {before:?}");
    // SAFETY: plain kill(2) on a worker of our nginx.
    let rc = unsafe { libc::kill(victim as i32, signal) };
    assert_eq!(rc, 0, "kill {victim}: {}", std::io::Error::last_os_error());
    assert_eq!(client.join().unwrap(), 0, "the worker died: no answer");

    // nginx's master: `worker process N exited on signal S[ (core dumped)]`.
    let line = log_line(
        &nginx,
        &format!("worker process {victim} exited on signal {signal}"),
    );
    let exit = event(
        &mut tracer,
        "worker_exit event",
        Duration::from_secs(10),
        |e| e["event"] == "worker_exit" && e["worker_pid"] == victim,
    );
    assert_eq!(exit["signal"], signal, "{exit}");
    assert_eq!(exit["fate"], "killed", "the test sent the signal: {exit}");
    assert_eq!(exit["sender_pid"], std::process::id(), "{exit}");
    assert_eq!(
        exit["core_dumped"],
        line.contains("(core dumped)"),
        "as nginx says: {line}; {exit}"
    );
    assert!(exit["in_flight"].as_u64().unwrap_or(0) >= 1, "{exit}");
    let said = exit["nginx_error"].as_str().expect("nginx_error");
    assert!(
        said.starts_with(&format!(
            "worker process {victim} exited on signal {signal}"
        )) && line.ends_with(&format!(": {said}")),
        "ngx-trace: `{said}`; nginx: `{line}`"
    );

    let cut = the_exchange(&mut tracer, &upstream);
    assert_eq!(cut["worker_pid"], victim, "{cut}");
    assert_eq!(cut["outcome"], "worker_died", "{cut}");
    assert_eq!(cut["verdict"], "proxy_crashed", "{cut}");

    // The master starts a worker in its place, and ngx-trace follows it.
    let mut now = Vec::new();
    wait_until("a new worker", Duration::from_secs(10), || {
        now = nginx.workers();
        now.len() == 2 && !now.contains(&victim)
    });
    let new: Vec<u32> = now
        .iter()
        .copied()
        .filter(|p| !before.contains(p))
        .collect();
    assert_eq!(new.len(), 1, "before {before:?}, now {now:?}");
    let new = new[0];
    event(
        &mut tracer,
        "workers event with the new worker",
        Duration::from_secs(10),
        |e| e["event"] == "workers" && e["pids"] == serde_json::json!(now),
    );
    let refused_upstream = format!("127.0.0.1:{refused}");
    let mut requests = 0;
    loop {
        assert!(
            requests < 40,
            "{requests} requests, none reported from the new worker {new}: {:#?}",
            tracer.events
        );
        assert_eq!(http::get(spread, "/refused"), 502);
        requests += 1;
        let e = tracer
            .wait_for(Duration::from_secs(10), |e| {
                e["event"] == "upstream" && e["upstream"] == refused_upstream.as_str()
            })
            .unwrap_or_else(|| panic!("request {requests} not reported"));
        assert_eq!(e["outcome"], "refused", "{e}");
        assert_eq!(e["verdict"], "backend_down", "{e}");
        let worker = e["worker_pid"].as_u64().unwrap() as u32;
        assert!(now.contains(&worker), "from a live worker {now:?}: {e}");
        if worker == new {
            break;
        }
    }

    let events = tracer.stop();
    let from_victim: Vec<&Value> = events
        .iter()
        .filter(|e| e["event"] == "upstream" && e["worker_pid"] == victim)
        .collect();
    assert_eq!(
        from_victim.len(),
        1,
        "only the cut exchange, never as no_response: {from_victim:#?}"
    );
    assert_eq!(
        summary_row(&events, &upstream)["outcomes"]["worker_died"],
        1
    );
    assert_eq!(
        summary_row(&events, &refused_upstream)["outcomes"]["refused"],
        requests
    );
    assert!(backend.is_alive(), "the backend only lost a connection");
}

#[test]
fn worker_sigsegv_mid_exchange_is_worker_exit_and_worker_died_proxy_crashed() {
    require_root();
    worker_killed_mid_exchange(libc::SIGSEGV);
}

#[test]
fn worker_sigkill_mid_exchange_is_worker_exit_and_worker_died_proxy_crashed() {
    require_root();
    worker_killed_mid_exchange(libc::SIGKILL);
}

#[test]
fn worker_out_of_descriptors_is_fd_limit_proxy_resources_on_an_unknown_upstream() {
    require_root();
    // Each exchange holds two descriptors (client, upstream) for 2 s.
    let backend = HttpBackend::with(Behavior::Answer(Duration::from_secs(2)));
    // 16 descriptors per worker, about 10 taken at start (standard streams,
    // logs, listener, epoll, channels): a handful of exchanges fill it.
    let nginx = Nginx::start_with_nofile(
        16,
        64,
        "",
        &format!(
            "location / {{ proxy_pass http://127.0.0.1:{}; }}",
            backend.port()
        ),
    );
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, &[]);
    let port = nginx.port();
    let clients: Vec<_> = (0..20)
        .map(|_| std::thread::spawn(move || http::get(port, "/")))
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    const TEXT: &str = "socket() failed (24: Too many open files) while connecting to upstream";
    let logged = nginx.error_log_lines(TEXT).len();
    assert!(
        logged >= 1,
        "no worker ran out of descriptors for its upstream socket: {statuses:?}"
    );
    // nginx gives up on the request at once: 500, not 502.
    let failed = statuses.iter().filter(|&&s| s == 500).count();
    assert_eq!(failed, logged, "{statuses:?}");
    let events = tracer.upstream_events(logged, Duration::from_secs(10), |e| {
        e["outcome"] == "fd_limit"
    });
    assert_eq!(events.len(), logged, "as many as nginx logged: {events:#?}");
    for e in &events {
        assert_eq!(e["verdict"], "proxy_resources", "{e}");
        assert_eq!(e["errno"], 24, "{e}");
        assert_eq!(e["nginx_error"], TEXT, "{e}");
        // No socket, no address: the kernel never learns where it went.
        assert_eq!(e["upstream"], "unknown", "{e}");
        assert!(
            e["evidence"]
                .as_str()
                .is_some_and(|s| s.contains("descriptors")),
            "{e}"
        );
        let worker = e["worker_pid"].as_u64().unwrap() as u32;
        assert!(
            workers.contains(&worker),
            "{worker} not in {workers:?}: {e}"
        );
    }
    let events = tracer.stop();
    assert_eq!(
        summary_row(&events, "unknown")["outcomes"]["fd_limit"],
        logged
    );
}
