//! Issue 21: ngx-trace runs as root beside processes that only call
//! themselves nginx. Perl scripts run as `nobody`, named and titled as
//! nginx masters, name in their `-c` a perl script (whose BEGIN block would
//! leave a marker if anything ran the "configuration" as a program) and a
//! file only root may read (whose secret would surface in the metrics, the
//! advice or a message if anything read it with root's rights). Beside
//! them, two real nginx instances, one in a mount namespace of its own as
//! in a container, must still be traced with their configuration in every
//! mode: trace with metrics, explain and tune, live. Run as root through
//! `cargo xtask test`.
use std::{
    collections::BTreeSet,
    io::Write as _,
    os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use ngx_trace_tests::{
    TempDir,
    backend::{Behavior, HttpBackend},
    fake_nginx::{FakeNginx, nobody},
    free_port, http,
    live::LiveRun,
    mount_ns_nginx::NamespacedNginx,
    nginx::Nginx,
    require_root,
    tracer::Tracer,
};
use serde_json::Value;

/// In the file only root may read: it must come out nowhere.
const SECRET: &str = "SECRET_7f3a9c";

/// The read timeouts of the real instances, each set in an included file
/// (on its line 2): values no default has.
const HOST_TIMEOUT: &str = "3s";
const NS_TIMEOUT: &str = "2s";
const TIMEOUTS_FILE: &str = "conf.d/timeouts.conf";

/// The attackers' files.
struct Bait {
    /// Owned by `nobody`, as an attacker's directory is: whoever runs the
    /// script, as root or as nobody, can leave the marker here.
    evil_dir: TempDir,
    /// Root's, world-traversable: the private file inside is root's alone.
    private_dir: TempDir,
}

impl Bait {
    fn lay() -> Self {
        let (uid, gid) = nobody();
        let bait = Self {
            evil_dir: TempDir::new("evil"),
            private_dir: TempDir::new("private"),
        };
        std::os::unix::fs::chown(bait.evil_dir.path(), Some(uid), Some(gid))
            .expect("chown the attacker's directory");
        let marker = bait.marker();
        std::fs::write(
            bait.evil(),
            format!(
                "BEGIN {{ open my $f, '>', '{}'; print $f \"uid=$< euid=$>\\n\"; }}\n1;\n",
                marker.display()
            ),
        )
        .expect("write evil.pl");
        std::os::unix::fs::chown(bait.evil(), Some(uid), Some(gid)).expect("chown evil.pl");
        std::fs::set_permissions(bait.evil(), std::fs::Permissions::from_mode(0o644))
            .expect("chmod evil.pl");
        // Valid nginx syntax: read as root, it would give an upstream group,
        // a location and a timeout, all named by the secret.
        let mut private = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(bait.private())
            .expect("create the private file");
        write!(
            private,
            "# {SECRET}: the backend only root may know\n\
             events {{ worker_connections 16; }}\n\
             http {{\n\
                 upstream {SECRET} {{ server 127.0.0.1:1; }}\n\
                 server {{\n\
                     listen 127.0.0.1:1;\n\
                     location /{SECRET} {{ proxy_pass http://{SECRET}; proxy_read_timeout 7s; }}\n\
                 }}\n\
             }}\n"
        )
        .expect("write the private file");
        // The same file through the attacker's own symlink.
        std::os::unix::fs::symlink(bait.private(), bait.alias()).expect("symlink alias.conf");
        std::os::unix::fs::lchown(bait.alias(), Some(uid), Some(gid)).expect("chown alias.conf");
        // What nobody may read is what the test says it is.
        let read = Command::new("setpriv")
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg("cat")
            .arg(bait.alias())
            .output()
            .expect("run setpriv (util-linux)");
        assert!(
            !read.status.success() && !String::from_utf8_lossy(&read.stdout).contains(SECRET),
            "nobody can read {}: the test's premise is broken",
            bait.private().display()
        );
        bait
    }

    fn evil(&self) -> PathBuf {
        self.evil_dir.path().join("evil.pl")
    }

    fn marker(&self) -> PathBuf {
        self.evil_dir.path().join("marker")
    }

    fn private(&self) -> PathBuf {
        self.private_dir.path().join("private.conf")
    }

    fn alias(&self) -> PathBuf {
        self.evil_dir.path().join("alias.conf")
    }

    /// The evil script never ran, as any user.
    fn assert_nothing_ran(&self, after: &str) {
        let marker = self.marker();
        assert!(
            !marker.exists(),
            "after {after}: a fake nginx's \"configuration\" ran as a program and left {} ({})",
            marker.display(),
            std::fs::read_to_string(&marker).unwrap_or_default().trim()
        );
    }
}

/// The real instances: one on the host, one in a mount namespace of its
/// own, each with its group (`host_app`, `ns_app`) behind `/…_app` and a
/// slow backend behind `/…_slow` (answers after 5 s: a read timeout).
struct Real {
    host: Nginx,
    ns: NamespacedNginx,
    host_app: HttpBackend,
    ns_app: HttpBackend,
    host_slow: HttpBackend,
    ns_slow: HttpBackend,
}

impl Real {
    fn start() -> Self {
        let host_app = HttpBackend::start();
        let ns_app = HttpBackend::start();
        let host_slow = HttpBackend::with(Behavior::Answer(Duration::from_secs(5)));
        let ns_slow = HttpBackend::with(Behavior::Answer(Duration::from_secs(5)));
        let host = Nginx::start(
            &format!(
                "include {{dir}}/conf.d/*.conf;\n\
                 upstream host_app {{ server 127.0.0.1:{}; }}",
                host_app.port()
            ),
            &format!(
                "location /host_app {{ proxy_pass http://host_app; }}\n\
                 location /host_slow {{ proxy_pass http://127.0.0.1:{}; }}",
                host_slow.port()
            ),
        );
        host.write_and_reload(&[(
            TIMEOUTS_FILE,
            &format!("# the host's timeouts\nproxy_read_timeout {HOST_TIMEOUT};\n"),
        )]);
        let ns = NamespacedNginx::start(
            &format!(
                "include {{conf}}/conf.d/*.conf;\n\
                 upstream ns_app {{ server 127.0.0.1:{}; }}",
                ns_app.port()
            ),
            &format!(
                "location /ns_app {{ proxy_pass http://ns_app; }}\n\
                 location /ns_slow {{ proxy_pass http://127.0.0.1:{}; }}",
                ns_slow.port()
            ),
            &[(
                TIMEOUTS_FILE,
                &format!("# the container's timeouts\nproxy_read_timeout {NS_TIMEOUT};\n"),
            )],
        );
        Self {
            host,
            ns,
            host_app,
            ns_app,
            host_slow,
            ns_slow,
        }
    }

    /// Where the host instance's timeout is set.
    fn host_timeouts(&self) -> String {
        self.host.dir().join(TIMEOUTS_FILE).display().to_string()
    }

    /// Where the namespaced instance's timeout is set, as nginx sees it.
    fn ns_timeouts(&self) -> String {
        self.ns.conf_dir().join(TIMEOUTS_FILE).display().to_string()
    }

    /// `n` answered requests through each instance.
    fn send(&self, n: usize) {
        for _ in 0..n {
            assert_eq!(self.host.get("/host_app"), 200);
            assert_eq!(self.ns.get("/ns_app"), 200);
        }
    }
}

fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.contains(SECRET),
        "{what} holds what only root may read ({SECRET}): {text}"
    );
}

/// Whether `pid` (a child not yet waited for) is still running.
fn running(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z")
    })
}

/// The values of the samples of `metric` whose labels contain every one
/// of `labels` (`outcome="ok"`).
fn samples(text: &str, metric: &str, labels: &[&str]) -> Vec<f64> {
    text.lines()
        .filter(|l| l.starts_with(&format!("{metric}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

/// The one explanation of the line that contains every one of `needles`.
fn of_line<'a>(events: &'a [Value], needles: &[&str]) -> &'a Value {
    events
        .iter()
        .filter(|e| e["event"] == "explain")
        .find(|e| {
            let line = e["line"].as_str().unwrap_or("");
            needles.iter().all(|n| line.contains(n))
        })
        .unwrap_or_else(|| panic!("no explained line with {needles:?} in {events:#?}"))
}

fn row<'a>(events: &'a [Value], location: &str, directive: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["location"] == location && e["directive"] == directive)
        .unwrap_or_else(|| panic!("no {directive} for {location} in {events:#?}"))
}

/// Tracing every nginx with metrics served: the fakes are traced (they are
/// named nginx), the real instances' exchanges counted under their groups,
/// their timeouts exported from their own files.
fn trace_with_metrics(real: &Real, fakes: &[FakeNginx]) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut tracer = Tracer::start(&["--all", "--metrics-listen", &listen]);
    let serving = format!("serving metrics at http://{listen}/metrics");
    let start = Instant::now();
    while !tracer.stderr().contains(&serving) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no metrics served: {}",
            tracer.stderr()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every process named nginx is traced: the fakes were among them, or
    // this test would prove nothing.
    let workers: BTreeSet<u64> = tracer
        .events
        .iter()
        .find(|e| e["event"] == "workers")
        .and_then(|e| e["pids"].as_array())
        .map(|pids| pids.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default();
    let expected = real
        .host
        .workers()
        .into_iter()
        .chain(real.ns.workers())
        .chain(fakes.iter().map(FakeNginx::worker_pid));
    for pid in expected {
        assert!(
            workers.contains(&u64::from(pid)),
            "worker {pid} not traced: {workers:?}"
        );
    }

    real.send(5);
    let host_server = format!("127.0.0.1:{}", real.host_app.port());
    let ns_server = format!("127.0.0.1:{}", real.ns_app.port());
    let events = tracer.upstream_events(10, Duration::from_secs(15), |e| {
        e["upstream"] == host_server.as_str() || e["upstream"] == ns_server.as_str()
    });
    let ns_workers = real.ns.workers();
    for server in [&host_server, &ns_server] {
        let of: Vec<&Value> = events
            .iter()
            .filter(|e| e["upstream"] == **server)
            .collect();
        assert_eq!(of.len(), 5, "{server}: {of:#?}");
        assert!(of.iter().all(|e| e["outcome"] == "ok"), "{of:#?}");
    }
    assert!(
        events
            .iter()
            .filter(|e| e["upstream"] == ns_server.as_str())
            .all(|e| e["worker_pid"]
                .as_u64()
                .is_some_and(|p| ns_workers.contains(&(p as u32)))),
        "the namespaced instance's exchanges come from its workers: {events:#?}"
    );

    // The metrics name each group from its instance's configuration once
    // the exchanges are counted.
    let (host_ok, ns_ok) = (
        ["upstream=\"host_app\"", "outcome=\"ok\""],
        ["upstream=\"ns_app\"", "outcome=\"ok\""],
    );
    let start = Instant::now();
    let text = loop {
        let text = http::fetch("127.0.0.1", port, "/metrics", &[]).body;
        let counted = |labels: &[&str]| {
            samples(&text, "ngxtrace_exchanges_total", labels)
                .iter()
                .sum::<f64>()
        };
        if counted(&host_ok) >= 5.0 && counted(&ns_ok) >= 5.0 {
            assert_eq!((counted(&host_ok), counted(&ns_ok)), (5.0, 5.0), "{text}");
            break text;
        }
        assert!(
            start.elapsed() < Duration::from_secs(15),
            "exchanges not counted under host_app and ns_app: {text}\nstderr: {}",
            tracer.stderr()
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    let timeout = |upstream: &str, location: &str| {
        samples(
            &text,
            "ngxtrace_configured_timeout_seconds",
            &[
                &format!("upstream=\"{upstream}\""),
                &format!("location=\"{location}\""),
                "directive=\"proxy_read_timeout\"",
            ],
        )
    };
    let host_slow = format!("127.0.0.1:{}", real.host_slow.port());
    let ns_slow = format!("127.0.0.1:{}", real.ns_slow.port());
    assert_eq!(timeout("host_app", "/host_app"), [3.0], "{text}");
    assert_eq!(timeout(&host_slow, "/host_slow"), [3.0], "{text}");
    assert_eq!(timeout("ns_app", "/ns_app"), [2.0], "{text}");
    assert_eq!(timeout(&ns_slow, "/ns_slow"), [2.0], "{text}");
    assert_no_secret("the metrics", &text);

    assert!(
        running(tracer.pid()),
        "ngx-trace died while tracing: {}",
        tracer.stderr()
    );
    // Its stderr now: `stop` keeps it to itself (only the summary, on
    // stdout, comes at stop).
    let stderr = tracer.stderr();
    let events = tracer.stop();
    let stdout: String = events.iter().map(|e| format!("{e}\n")).collect();
    assert_no_secret("the traced events", &stdout);
    assert_no_secret("the tracer's stderr", &stderr);
}

/// Live explain, following both real instances' error logs: a read timeout
/// on each, explained with the timeout in effect where nginx read it.
fn explain_live(real: &Real) {
    let host_log = real.host.dir().join("error.log");
    let ns_log = real.ns.dir().join("error.log");
    let mut run = LiveRun::start(&["explain", "--json", "--duration", "12"]);
    run.wait_for_stderr(
        &[
            &format!("following {}", host_log.display()),
            &format!("following {}", ns_log.display()),
        ],
        Duration::from_secs(60),
    );
    // Both at once: each instance has its own slow backend.
    let (host_port, ns_port) = (real.host.port(), real.ns.port());
    let host_504 = std::thread::spawn(move || http::get(host_port, "/host_slow"));
    let ns_504 = std::thread::spawn(move || http::get(ns_port, "/ns_slow"));
    assert_eq!(host_504.join().unwrap(), 504);
    assert_eq!(ns_504.join().unwrap(), 504);
    let done = run.finish(Duration::from_secs(60));
    assert!(done.status.success(), "{}: {}", done.status, done.stderr);
    assert_no_secret("explain's stdout", &done.stdout);
    assert_no_secret("explain's stderr", &done.stderr);
    let events = done.json();
    for (path, timeout, file) in [
        ("/host_slow", HOST_TIMEOUT, real.host_timeouts()),
        ("/ns_slow", NS_TIMEOUT, real.ns_timeouts()),
    ] {
        let line = of_line(
            &events,
            &["upstream timed out (110", &format!("GET {path} ")],
        );
        assert_eq!(line["cause"], "backend_slow", "{line:#}");
        let advice = line["advice"].as_str().unwrap_or("");
        let expected = format!("proxy_read_timeout {timeout} ({file}:2, location {path})");
        assert!(advice.contains(&expected), "{expected} not in {line:#}");
    }
}

/// Live tune: a row for each real location, with the file and line where
/// its instance set the read timeout (the namespaced one's as nginx sees
/// it); none from the fakes.
fn tune_live(real: &Real) {
    let mut run = LiveRun::start(&["tune", "--json", "--duration", "6"]);
    run.wait_for_stderr(&["measuring"], Duration::from_secs(60));
    real.send(20);
    let done = run.finish(Duration::from_secs(60));
    assert!(done.status.success(), "{}: {}", done.status, done.stderr);
    assert_no_secret("tune's stdout", &done.stdout);
    assert_no_secret("tune's stderr", &done.stderr);
    let events = done.json();
    for (location, current, file) in [
        ("/host_app", 3.0, real.host_timeouts()),
        ("/ns_app", 2.0, real.ns_timeouts()),
    ] {
        let read = row(&events, location, "proxy_read_timeout");
        assert_eq!(read["current_s"], current, "{read:#}");
        assert_eq!(read["file"], file.as_str(), "{read:#}");
        assert_eq!(read["line"], 2, "{read:#}");
        assert!(
            read["samples"].as_u64().is_some_and(|n| n >= 20),
            "{read:#}"
        );
    }
    let locations: BTreeSet<&str> = events
        .iter()
        .filter(|e| e["event"] == "tune")
        .filter_map(|e| e["location"].as_str())
        .collect();
    assert_eq!(
        locations,
        BTreeSet::from(["/host_app", "/host_slow", "/ns_app", "/ns_slow"]),
        "only the real instances' locations"
    );
}

#[test]
fn processes_posing_as_nginx_get_nothing_run_or_read_as_root_and_real_instances_stay_traced() {
    require_root();
    let bait = Bait::lay();
    let real = Real::start();
    let fakes = [
        // `-c` a perl script: run as `perl -T -c` it would leave the marker.
        FakeNginx::claiming(&bait.evil()),
        // `-c` a file only root may read.
        FakeNginx::claiming(&bait.private()),
        // The same file through a symlink of the attacker's.
        FakeNginx::claiming(&bait.alias()),
    ];

    trace_with_metrics(&real, &fakes);
    bait.assert_nothing_ran("trace");
    explain_live(&real);
    bait.assert_nothing_ran("explain");
    tune_live(&real);
    bait.assert_nothing_ran("tune");
    // The fakes stayed for all three (a fake gone early would prove nothing).
    for fake in &fakes {
        assert!(
            running(fake.master_pid()),
            "fake nginx {} ended early",
            fake.master_pid()
        );
    }
}
