//! A busy host in an incident: tens of thousands of idle connections in the
//! socket table, clients that close every connection driving nginx at
//! saturation (a new upstream connection per request), hundreds of
//! requests waiting on a slow backend, some cut by a 1 s read timeout,
//! some clients giving up. The tracer must lose nothing, report every
//! failure nginx logged and every waiting request, and print each failure
//! within a second. Run as root through `cargo xtask test`.
use std::{
    collections::BTreeMap,
    thread::JoinHandle,
    time::{Duration, Instant},
};

use ngx_trace_tests::{
    access_log::{self, Entry, TIMED_FORMAT, TIMED_LOG},
    backend::{Behavior, HttpBackend},
    http::{get, get_then_leave},
    idle::{IdleConnections, affordable, mem_available},
    lateness::{event_time_s, late, received_s},
    load::Saturation,
    lost_count,
    nginx::Nginx,
    require_root,
    tracer::Tracer,
};
use serde_json::Value;

/// Idle connections the issue asks for ("at least 50,000"): 100,000
/// sockets. `NGX_TRACE_SCALE_CONNECTIONS` overrides it.
const IDLE_CONNECTIONS: usize = 50_000;

/// Seconds of load (`NGX_TRACE_SCALE_SECS` overrides): with set-up and
/// the last waits, the test takes about 30 s more.
const LOAD_SECS: u64 = 15;

/// Per second of load: patient requests on the 3 s backend (about three
/// times as many waiting at once), read timeouts, clients giving up.
const WAVE: (usize, usize, usize) = (100, 10, 10);

/// How late a failure's line may reach stdout after nginx logged it.
const ALLOWANCE_S: f64 = 1.0;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The `TCP:` line of `/proc/net/sockstat`: the host's socket counts.
fn sockstat_tcp() -> String {
    std::fs::read_to_string("/proc/net/sockstat")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("TCP:"))
        .unwrap_or("TCP: ?")
        .to_string()
}

/// The outcomes nginx's access log implies for `upstream`, as the summary
/// counts them; fails on a status the test's locations cannot explain.
fn logged_outcomes(entries: &[Entry], upstream: &str) -> BTreeMap<String, u64> {
    let mut outcomes = BTreeMap::new();
    for e in entries.iter().filter(|e| e.upstream == upstream) {
        let outcome = access_log::outcome_of(e.status)
            .unwrap_or_else(|| panic!("nginx logged a status no location here gives: {e:?}"));
        *outcomes.entry(outcome.to_string()).or_insert(0) += 1;
    }
    outcomes
}

/// The summary's outcome counts for `upstream` (empty when it is absent).
fn summary_outcomes(events: &[Value], upstream: &str) -> BTreeMap<String, u64> {
    let summary = events
        .iter()
        .find(|e| e["event"] == "summary")
        .expect("a summary when the tracer stops");
    summary["upstreams"]
        .as_array()
        .expect("summary upstreams")
        .iter()
        .find(|u| u["upstream"] == upstream)
        .and_then(|u| u["outcomes"].as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Upstream events of `upstream` with `outcome`.
fn reported<'a>(events: &'a [Value], upstream: &str, outcome: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == "upstream" && e["upstream"] == upstream)
        .filter(|e| e["outcome"] == outcome)
        .collect()
}

/// Every failure of `outcome` on `upstream` was printed within
/// [`ALLOWANCE_S`] of nginx logging it (its `$msec`, status `status`) and of
/// the kernel's time in the event.
fn assert_timely(events: &[Value], entries: &[Entry], upstream: &str, outcome: &str, status: u16) {
    let lines = reported(events, upstream, outcome);
    for e in &lines {
        let delay = received_s(e) - event_time_s(e);
        assert!(
            delay <= ALLOWANCE_S,
            "a line came {delay:.3} s after the kernel's record: {e}"
        );
    }
    let logged: Vec<f64> = entries
        .iter()
        .filter(|e| e.upstream == upstream && e.status == status)
        .map(|e| e.msec)
        .collect();
    let received: Vec<f64> = lines.iter().map(|e| received_s(e)).collect();
    let late = late(&logged, &received, ALLOWANCE_S);
    assert!(
        late.is_empty(),
        "{} of {} {outcome} lines came more than {ALLOWANCE_S} s after nginx logged \
         them (logged, received): {late:?}",
        late.len(),
        logged.len()
    );
}

/// Requests started during the load, each thread returning the status it
/// got (0 for a client that left).
#[derive(Default)]
struct Waves {
    patient: Vec<JoinHandle<u16>>,
    timeouts: Vec<JoinHandle<u16>>,
    leaving: Vec<JoinHandle<u16>>,
}

impl Waves {
    /// Starts one second's worth of waiting requests.
    fn start_one(&mut self, port: u16) {
        let (patient, timeouts, leaving) = WAVE;
        for _ in 0..patient {
            self.patient
                .push(std::thread::spawn(move || get(port, "/pending")));
        }
        for _ in 0..timeouts {
            self.timeouts
                .push(std::thread::spawn(move || get(port, "/timeout")));
        }
        for i in 0..leaving {
            // At least 0.3 s: the request reaches the upstream first.
            let after = Duration::from_millis(300 + 60 * i as u64);
            self.leaving.push(std::thread::spawn(move || {
                get_then_leave(port, "/patient", after);
                0
            }));
        }
    }

    /// Waits for every request; returns how many of each kind, having
    /// checked the statuses the clients saw.
    fn join(self) -> (usize, usize, usize) {
        let counts = (self.patient.len(), self.timeouts.len(), self.leaving.len());
        for t in self.patient {
            assert_eq!(t.join().unwrap(), 200, "a patient request is answered");
        }
        for t in self.timeouts {
            assert_eq!(t.join().unwrap(), 504, "a read timeout of 1 s");
        }
        for t in self.leaving {
            t.join().unwrap();
        }
        counts
    }
}

#[test]
fn a_full_socket_table_under_churn_loses_nothing_and_reports_every_failure_in_time() {
    require_root();
    let started = Instant::now();
    let wanted = env_or("NGX_TRACE_SCALE_CONNECTIONS", IDLE_CONNECTIONS);
    let (connections, why) = affordable(wanted, mem_available());
    // Said in the test's output: a small VM runs a smaller table, never
    // silently.
    eprintln!("scale: {why}");
    let idle = IdleConnections::spread(connections);
    eprintln!(
        "scale: {} idle connections over {} processes in {:.1} s; {}",
        idle.total(),
        idle.pids().len(),
        started.elapsed().as_secs_f64(),
        sockstat_tcp()
    );

    let healthy = HttpBackend::start();
    let pending = HttpBackend::with(Behavior::Answer(Duration::from_secs(3)));
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_secs(5)));
    let patient = HttpBackend::with(Behavior::Answer(Duration::from_secs(5)));
    let name = |b: &HttpBackend| format!("127.0.0.1:{}", b.port());
    let (healthy_name, pending_name, slow_name, patient_name) =
        (name(&healthy), name(&pending), name(&slow), name(&patient));
    // No upstream keepalive: a new upstream connection per request.
    // worker_rlimit_nofile stays under the hard limit of 20,000.
    let nginx = Nginx::start_with_nofile(
        12_000,
        4_000,
        TIMED_FORMAT,
        &format!(
            "{TIMED_LOG}\n\
             location /ok {{ proxy_pass http://{healthy_name}; }}\n\
             location /pending {{ proxy_read_timeout 10s; proxy_pass http://{pending_name}; }}\n\
             location /timeout {{ proxy_read_timeout 1s; proxy_pass http://{slow_name}; }}\n\
             location /patient {{ proxy_read_timeout 10s; proxy_pass http://{patient_name}; }}"
        ),
    );
    let tracer = Tracer::attach_to(&nginx, &["--interval", "0"]);
    let tracer_pid = tracer.pid();
    let port = nginx.port();

    let load_secs = env_or("NGX_TRACE_SCALE_SECS", LOAD_SECS);
    let load = Saturation::start(port, "/ok", 16);
    let mut waves = Waves::default();
    let load_start = Instant::now();
    for second in 0..load_secs {
        waves.start_one(port);
        let next = Duration::from_secs(second + 1);
        std::thread::sleep(next.saturating_sub(load_start.elapsed()));
    }
    let statuses = load.stop();
    let load_time = load_start.elapsed().as_secs_f64();
    let (patients, timeouts, leavers) = waves.join();
    // Let nginx notice the last clients and the tracer judge them.
    std::thread::sleep(Duration::from_millis(1500));
    let peak_kib = ngx_trace_tests::proc_stats::status_kib(tracer_pid, "VmHWM");
    let cpu_s = ngx_trace_tests::proc_stats::cpu_seconds(tracer_pid);
    let events = tracer.stop();
    let entries = access_log::entries(nginx.dir());
    let served = statuses.get(&200).copied().unwrap_or(0);
    eprintln!(
        "scale: {served} requests answered in {load_time:.1} s ({:.0}/s, statuses {statuses:?}); \
         {patients} patient, {timeouts} timed out, {leavers} left; tracer {cpu_s:.1} s CPU, \
         peak RSS {} MiB; {} events; {:.1} s in all",
        served as f64 / load_time,
        peak_kib / 1024,
        events.len(),
        started.elapsed().as_secs_f64()
    );
    drop(idle);

    assert!(
        served > 1_000,
        "the load ran: {served} answers ({statuses:?})"
    );

    // Every failure nginx logged is reported, and nothing else.
    let count = |upstream: &str, status: u16| {
        entries
            .iter()
            .filter(|e| e.upstream == upstream && e.status == status)
            .count()
    };
    assert_eq!(
        count(&slow_name, 504),
        timeouts,
        "nginx logged each timeout"
    );
    assert_eq!(
        reported(&events, &slow_name, "no_response").len(),
        timeouts,
        "one no_response per 504 nginx logged"
    );
    assert_eq!(
        reported(&events, &patient_name, "client_closed").len(),
        count(&patient_name, 499),
        "one client_closed per 499 nginx logged"
    );
    // A client leaving before nginx reached the upstream has no exchange:
    // the patience of 0.3 s and more is there to prevent it.
    let no_upstream = entries
        .iter()
        .filter(|e| e.status == 499 && e.upstream.is_empty())
        .count();
    assert_eq!(
        count(&patient_name, 499) + no_upstream,
        leavers,
        "nginx logged a 499 per client that left"
    );
    assert_eq!(
        no_upstream, 0,
        "every client that left reached the upstream"
    );

    // Every waiting request was reported while it waited, once.
    let pendings = events
        .iter()
        .filter(|e| e["event"] == "pending" && e["upstream"] == pending_name.as_str())
        .filter(|e| e["cut_by_stop"] == false)
        .count();
    let waited = entries
        .iter()
        .filter(|e| e.upstream == pending_name && e.request_time >= 1.0)
        .count();
    assert_eq!(waited, patients, "each patient request waited 3 s");
    assert_eq!(
        pendings, waited,
        "one pending event per request that waited past --slow (1 s)"
    );

    // The summary counts what nginx logged, upstream by upstream.
    for upstream in [&healthy_name, &pending_name, &slow_name, &patient_name] {
        assert_eq!(
            summary_outcomes(&events, upstream),
            logged_outcomes(&entries, upstream),
            "the summary's outcomes of {upstream} are nginx's access log's"
        );
    }

    // Each failure was on stdout within a second.
    assert_timely(&events, &entries, &slow_name, "no_response", 504);
    assert_timely(&events, &entries, &patient_name, "client_closed", 499);
    // Last, so that a failure above shows first. A record the kernel
    // dropped (ring buffer or map full, undecodable) is a loss; a hook
    // run the kernel skipped (its per-CPU recursion guard held, mostly on
    // other processes' sockets) is counted and said, and every failure
    // above was reported all the same.
    let losses: Vec<&Value> = events.iter().filter(|e| e["event"] == "lost").collect();
    let dropped: u64 = losses.iter().filter_map(|e| e["count"].as_u64()).sum();
    assert_eq!(dropped, 0, "no record lost: {losses:?}");
    let skipped = lost_count(&events) - dropped;
    if skipped > 0 {
        eprintln!(
            "scale: the kernel skipped {skipped} hook runs (reported as hooks_skipped); \
             every failure nginx logged was reported"
        );
    }
    eprintln!("scale: passed in {:.1} s", started.elapsed().as_secs_f64());
}

#[test]
fn late_lines_are_paired_earliest_with_earliest() {
    // nginx logged three failures; their lines came 0.2 s, 0.9 s and 1.4 s
    // after: only the last is late.
    let logged = [100.0, 101.0, 102.0];
    let received = [100.2, 103.4, 101.9];
    assert_eq!(late(&logged, &received, 1.0), vec![(102.0, 103.4)]);
    // A missing line is not "late": counts are compared apart.
    assert!(late(&logged, &received[..1], 1.0).is_empty());
}

#[test]
fn a_timed_access_log_line_is_read_field_by_field() {
    let line = "1765100000.123 499 \"127.0.0.1:41877\" - 0.612 /patient";
    let entry = access_log::parse(line).expect("a timed line");
    assert_eq!(entry.msec, 1_765_100_000.123);
    assert_eq!(entry.status, 499);
    assert_eq!(entry.upstream, "127.0.0.1:41877");
    assert_eq!(entry.request_time, 0.612);
    assert_eq!(entry.uri, "/patient");
    let no_upstream = access_log::parse("1765100000.5 499 \"-\" - 0.000 /patient").unwrap();
    assert_eq!(no_upstream.upstream, "");
}

#[test]
fn a_small_vm_gets_fewer_idle_connections_and_says_so() {
    // 24 GiB available: the 50,000 asked for.
    let (n, why) = affordable(50_000, 24 << 30);
    assert_eq!(n, 50_000);
    assert!(why.starts_with("50000 idle connections"), "{why}");
    // A 1 GiB VM with 700 MiB available: a quarter of it, said.
    let (n, why) = affordable(50_000, 700 << 20);
    assert_eq!(n, 17_920);
    assert!(why.starts_with("only 17920 of 50000"), "{why}");
}
