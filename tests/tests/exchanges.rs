//! Exchanges on established upstream connections, timed in the kernel and
//! judged: slow backends, resets, early closes, keepalive, packet loss,
//! PHP-FPM on a UNIX socket, and latency histograms. Run as root through
//! `cargo xtask test`.
use std::{collections::BTreeMap, time::Duration};

use ngx_trace_tests::{
    backend::{Behavior, HttpBackend},
    firewall::LoopbackRule,
    nginx::Nginx,
    php_fpm::PhpFpm,
    require_root,
    tracer::{Tracer, avoiding},
};
use serde_json::Value;

fn us(e: &Value, field: &str) -> u64 {
    e["timings_us"][field]
        .as_u64()
        .unwrap_or_else(|| panic!("no timings_us.{field}: {e}"))
}

/// Traces `nginx` with `args`, GETs `path` once (answered `status`), and
/// returns the tracer, still running, and the one upstream event it saw.
fn one_exchange(nginx: &Nginx, args: &[&str], path: &str, status: u16) -> (Tracer, Value) {
    let mut tracer = Tracer::attach_to(nginx, args);
    assert_eq!(nginx.get(path), status);
    let mut events = tracer.upstream_events(1, Duration::from_secs(10), |_| true);
    assert_eq!(events.len(), 1, "{events:#?}");
    let event = events.remove(0);
    (tracer, event)
}

#[test]
fn backend_slower_than_read_timeout_is_no_response_backend_slow_after_a_pending_event() {
    require_root();
    let backend = HttpBackend::with(Behavior::Answer(Duration::from_secs(3)));
    let nginx = Nginx::proxying_to(backend.port(), "proxy_read_timeout 1s;");
    let (tracer, e) = one_exchange(&nginx, &["--slow", "500"], "/", 504);
    let e = &e;
    assert_eq!(e["outcome"], "no_response", "{e}");
    assert_eq!(e["verdict"], "backend_slow", "{e}");
    assert_eq!(e["errno"], 110, "{e}");
    assert_eq!(
        e["nginx_error"],
        "upstream timed out (110: Connection timed out) while reading response header from upstream"
    );
    assert_eq!(
        nginx
            .error_log_lines(
                "upstream timed out (110: Connection timed out) while reading response header"
            )
            .len(),
        1
    );
    assert!(
        us(e, "request_acked") < 50_000,
        "request acknowledged within ms: {e}"
    );
    assert_eq!(e["tcp"]["retransmits"], 0, "{e}");
    assert!(
        e["timings_us"].get("first_byte").is_none(),
        "no response byte: {e}"
    );
    let total = us(e, "total");
    assert!(
        // nginx's timer starts from its cached clock, read before the write.
        (950_000..1_500_000).contains(&total),
        "nginx gave up after 1 s: {e}"
    );
    // The pending event came first, while nginx was still waiting.
    let pending = tracer
        .events
        .iter()
        .position(|e| e["event"] == "pending")
        .expect("a pending event");
    let done = tracer
        .events
        .iter()
        .position(|e| e["event"] == "upstream")
        .unwrap();
    assert!(pending < done);
    let p = &tracer.events[pending];
    assert_eq!(
        p["upstream"],
        format!("127.0.0.1:{}", backend.port()).as_str()
    );
    assert_eq!(p["request_acked"], true, "{p}");
    assert_eq!(p["retransmits"], 0, "{p}");
    assert_eq!(p["verdict"], "backend_slow", "{p}");
    assert!(p["waiting_ms"].as_u64().unwrap() >= 500, "{p}");
    let pendings = tracer
        .events
        .iter()
        .filter(|e| e["event"] == "pending")
        .count();
    assert_eq!(pendings, 1, "reported once while it waits");
    tracer.stop();
}

#[test]
fn slow_answer_within_the_timeout_is_ok_backend_slow_with_its_first_byte_time() {
    require_root();
    let backend = HttpBackend::with(Behavior::Answer(Duration::from_millis(1500)));
    let nginx = Nginx::proxying_to(backend.port(), "proxy_read_timeout 5s;");
    let (tracer, e) = one_exchange(&nginx, &[], "/", 200);
    let e = &e;
    assert_eq!(
        (e["outcome"].as_str(), e["verdict"].as_str()),
        (Some("ok"), Some("backend_slow")),
        "{e}"
    );
    let first_byte = us(e, "first_byte");
    assert!(
        (1_200_000..=1_800_000).contains(&first_byte),
        "first byte within 20% of 1.5 s: {e}"
    );
    assert!(us(e, "request_acked") < 50_000, "{e}");
    assert_eq!(e["reused"], false);
    tracer.stop();
}

#[test]
fn backend_reset_after_the_request_is_reset_104() {
    require_root();
    let backend = HttpBackend::with(Behavior::Reset);
    let nginx = Nginx::proxying_to(backend.port(), "");
    let workers = nginx.workers();
    let (tracer, e) = one_exchange(&nginx, &[], "/", 502);
    let e = &e;
    assert_eq!(e["outcome"], "reset", "{e}");
    assert_eq!(e["verdict"], "backend_aborted", "{e}");
    assert_eq!(e["errno"], 104, "{e}");
    assert!(workers.contains(&(e["worker_pid"].as_u64().unwrap() as u32)));
    assert_eq!(
        nginx
            .error_log_lines("(104: Connection reset by peer)")
            .len(),
        1
    );
    tracer.stop();
}

#[test]
fn backend_closing_without_answer_is_closed_early() {
    require_root();
    let backend = HttpBackend::with(Behavior::Close);
    let nginx = Nginx::proxying_to(backend.port(), "");
    let (tracer, e) = one_exchange(&nginx, &[], "/", 502);
    let e = &e;
    assert_eq!(e["outcome"], "closed_early", "{e}");
    assert_eq!(e["verdict"], "backend_aborted", "{e}");
    assert_eq!(e["errno"], Value::Null, "{e}");
    assert_eq!(
        e["nginx_error"],
        "upstream prematurely closed connection while reading response header from upstream"
    );
    assert_eq!(
        nginx
            .error_log_lines("upstream prematurely closed connection")
            .len(),
        1
    );
    tracer.stop();
}

/// An nginx keeping up to 4 idle HTTP/1.1 connections per worker to `backend`.
fn keepalive_nginx(backend: &HttpBackend) -> Nginx {
    Nginx::start(
        &format!(
            "upstream pool {{ server 127.0.0.1:{}; keepalive 4; }}",
            backend.port()
        ),
        "location / { proxy_pass http://pool; proxy_http_version 1.1; \
         proxy_set_header Connection \"\"; }",
    )
}

#[test]
fn keepalive_exchanges_are_each_timed_and_reused_after_the_first() {
    require_root();
    let backend = HttpBackend::start();
    let nginx = keepalive_nginx(&backend);
    let tracer = Tracer::attach_to(&nginx, &["--all"]);
    for _ in 0..6 {
        assert_eq!(nginx.get("/"), 200);
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let events: Vec<Value> = tracer
        .stop()
        .into_iter()
        .filter(|e| e["event"] == "upstream")
        .collect();
    assert_eq!(events.len(), 6, "one event per exchange: {events:#?}");
    let mut per_worker: BTreeMap<u64, Vec<&Value>> = BTreeMap::new();
    for e in &events {
        assert_eq!(e["outcome"], "ok", "{e}");
        assert_eq!(e["verdict"], "healthy", "{e}");
        assert!(us(e, "first_byte") < 100_000, "{e}");
        assert!(us(e, "total") < 200_000, "{e}");
        per_worker
            .entry(e["worker_pid"].as_u64().unwrap())
            .or_default()
            .push(e);
    }
    for (worker, mut exchanges) in per_worker {
        exchanges.sort_by_key(|e| e["time"].as_str().unwrap().to_string());
        assert_eq!(
            exchanges[0]["reused"], false,
            "worker {worker} opened a connection first"
        );
        assert!(exchanges[0]["timings_us"].get("connect").is_some());
        for e in &exchanges[1..] {
            assert_eq!(e["reused"], true, "worker {worker} reused it: {e}");
            assert!(e["timings_us"].get("connect").is_none(), "{e}");
        }
    }
}

#[test]
fn first_byte_histogram_matches_a_known_backend_delay() {
    require_root();
    let backend = HttpBackend::with(Behavior::Answer(Duration::from_millis(100)));
    let nginx = Nginx::proxying_to(backend.port(), "");
    let tracer = Tracer::attach_to(&nginx, &["--interval", "0"]);
    for _ in 0..10 {
        assert_eq!(nginx.get("/"), 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    let events = tracer.stop();
    let upstream = format!("127.0.0.1:{}", backend.port());
    let histogram = |phase: &str| {
        events
            .iter()
            .find(|e| {
                e["event"] == "histogram"
                    && e["phase"] == phase
                    && e["upstream"] == upstream.as_str()
            })
            .unwrap_or_else(|| panic!("no {phase} histogram: {events:#?}"))
    };
    let fb = histogram("first_byte");
    assert_eq!(fb["count"], 10, "{fb}");
    let p50 = fb["p50_us"].as_u64().unwrap();
    assert!((100_000..=130_000).contains(&p50), "{fb}");
    assert!(fb["max_us"].as_u64().unwrap() >= p50);
    assert_eq!(histogram("connect")["count"], 10);
    assert_eq!(histogram("total")["count"], 10);
}

/// `requests` through nginx to a backend whose port `lose` makes lossy
/// (30%), traced with `--all` and `tracer_args`: the upstream events, none
/// of them blaming the backend for the loss.
fn through_loss(
    lose: fn(u16, f64) -> LoopbackRule,
    tracer_args: &[&str],
    requests: usize,
) -> Vec<Value> {
    let backend = HttpBackend::start();
    let _loss = lose(backend.port(), 0.3);
    let nginx = Nginx::proxying_to(backend.port(), "");
    let mut args = vec!["--all"];
    args.extend(tracer_args);
    let tracer = Tracer::attach_to(&nginx, &args);
    for _ in 0..requests {
        nginx.get("/");
    }
    std::thread::sleep(Duration::from_millis(500));
    let events: Vec<Value> = tracer
        .stop()
        .into_iter()
        .filter(|e| e["event"] == "upstream")
        .collect();
    assert!(events.len() >= requests, "{} events", events.len());
    let slow: Vec<&Value> = events
        .iter()
        .filter(|e| e["verdict"] == "backend_slow")
        .collect();
    assert!(slow.is_empty(), "loss blamed on the backend: {slow:#?}");
    events
}

#[test]
fn packet_loss_is_network_never_backend_slow() {
    require_root();
    let events = through_loss(LoopbackRule::lose, &[], 50);
    let lossy: Vec<&Value> = events
        .iter()
        .filter(|e| {
            e["tcp"]["retransmits"].as_u64().unwrap_or(0)
                + e["tcp"]["syn_retransmits"].as_u64().unwrap_or(0)
                > 0
        })
        .collect();
    assert!(!lossy.is_empty(), "30% loss and no retransmission seen");
    for e in &lossy {
        // A client that gave up first (five SYNs lost in a row take 31 s)
        // is nginx's 499: the client left, as nginx logs it.
        if e["outcome"] == "client_closed" {
            assert_eq!(e["verdict"], "client_aborted", "{e}");
            continue;
        }
        assert_eq!(e["verdict"], "network", "slowed by retransmissions: {e}");
    }
}

#[test]
fn response_loss_from_a_local_backend_is_network_with_the_backends_retransmits() {
    require_root();
    response_loss_is_network(&[], 50);
    // The classic tracepoint, where the BTF one cannot be used, sees the
    // backend's retransmissions as well.
    response_loss_is_network(&[&avoiding("tp_btf:tcp_retransmit_skb")], 30);
}

/// `requests` through nginx to a backend whose packets are lost at 30% on
/// their way back: every late answer is the network's, with the
/// retransmissions of the backend's own socket as the evidence.
fn response_loss_is_network(tracer_args: &[&str], requests: usize) {
    // Loss on the way back: nginx's socket resends nothing, the backend's does.
    let events = through_loss(LoopbackRule::lose_from, tracer_args, requests);
    let resent: Vec<&Value> = events
        .iter()
        .filter(|e| e["tcp"]["peer_retransmits"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert!(
        !resent.is_empty(),
        "30% of the backend's segments lost and none resent by it seen: {events:#?}"
    );
    for e in &resent {
        if e["outcome"] == "client_closed" {
            assert_eq!(e["verdict"], "client_aborted", "{e}");
            continue;
        }
        assert_eq!(e["verdict"], "network", "{e}");
        let evidence = e["evidence"].as_str().unwrap();
        assert!(evidence.contains("by the upstream"), "{e}");
    }
}

fn php_location(fpm: &PhpFpm) -> String {
    format!(
        "location ~ \\.php$ {{ include /etc/nginx/fastcgi_params; \
         fastcgi_param SCRIPT_FILENAME {}$fastcgi_script_name; fastcgi_pass unix:{}; }}",
        fpm.www().display(),
        fpm.socket().display()
    )
}

#[test]
fn slow_php_fpm_script_is_backend_slow_on_the_unix_upstream() {
    require_root();
    let fpm = PhpFpm::start(
        2,
        511,
        &[("sleep.php", "<?php usleep(1500000); echo \"done\\n\";")],
    );
    let nginx = Nginx::start("", &php_location(&fpm));
    let (tracer, e) = one_exchange(&nginx, &[], "/sleep.php", 200);
    let e = &e;
    assert_eq!(
        e["upstream"],
        format!("unix:{}", fpm.socket().display()).as_str()
    );
    assert_eq!(e["transport"], "unix");
    assert_eq!(
        (e["outcome"].as_str(), e["verdict"].as_str()),
        (Some("ok"), Some("backend_slow")),
        "{e}"
    );
    let first_byte = us(e, "first_byte");
    assert!((1_400_000..=2_000_000).contains(&first_byte), "{e}");
    assert!(e.get("tcp").is_none(), "{e}");
    tracer.stop();
}

#[test]
fn php_fpm_with_a_full_backlog_refuses_connects_with_eagain() {
    require_root();
    let fpm = PhpFpm::start(
        1,
        1,
        &[("sleep.php", "<?php usleep(2000000); echo \"done\\n\";")],
    );
    let nginx = Nginx::start("", &php_location(&fpm));
    let workers = nginx.workers();
    let mut tracer = Tracer::attach_to(&nginx, &[]);
    let port = nginx.port();
    let clients: Vec<_> = (0..10)
        .map(|_| std::thread::spawn(move || ngx_trace_tests::http::get(port, "/sleep.php")))
        .collect();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap()).collect();
    let refused = statuses.iter().filter(|&&s| s == 502).count();
    assert!(
        refused >= 1,
        "no request hit the full backlog: {statuses:?}"
    );
    let logged = nginx
        .error_log_lines("(11: Resource temporarily unavailable)")
        .len();
    assert_eq!(logged, refused, "{statuses:?}");
    let events = tracer.upstream_events(logged, Duration::from_secs(10), |e| {
        e["outcome"] == "backlog_full"
    });
    assert_eq!(events.len(), logged, "{events:#?}");
    for e in &events {
        assert_eq!(e["verdict"], "backend_overloaded", "{e}");
        assert_eq!(e["errno"], 11, "{e}");
        assert_eq!(
            e["upstream"],
            format!("unix:{}", fpm.socket().display()).as_str()
        );
        assert!(workers.contains(&(e["worker_pid"].as_u64().unwrap() as u32)));
    }
    tracer.stop();
}

#[test]
fn keepalive_connections_opened_before_tracing_are_adopted() {
    require_root();
    let backend = HttpBackend::start();
    let nginx = keepalive_nginx(&backend);
    // Warm the pools: each worker keeps its upstream connection open.
    for _ in 0..20 {
        assert_eq!(nginx.get("/"), 200);
    }
    let tracer = Tracer::attach_to(&nginx, &["--all"]);
    for _ in 0..20 {
        assert_eq!(nginx.get("/"), 200);
    }
    std::thread::sleep(Duration::from_millis(300));
    if let Some(why) = ngx_trace_tests::tracer_without_marks() {
        // Needs socket-local storage in tracing programs (Linux 5.11+, not
        // in kprobes). Without it ngx-trace says it cannot adopt, and why,
        // and the old connections are not reported (new ones are).
        let notice = tracer.stderr();
        let events = tracer.stop();
        assert!(
            notice.contains("could not adopt") && notice.contains(&why),
            "{why}: {notice}"
        );
        for e in events.iter().filter(|e| e["event"] == "upstream") {
            assert_eq!(e["reused"], false, "only new connections are followed: {e}");
        }
        return;
    }
    let events: Vec<Value> = tracer
        .stop()
        .into_iter()
        .filter(|e| e["event"] == "upstream")
        .collect();
    // The old connections were marked at start, between two exchanges:
    // every exchange after is reported, the first on each included.
    assert_eq!(events.len(), 20, "{events:#?}");
    for e in &events {
        assert_eq!(e["outcome"], "ok", "{e}");
        assert_eq!(
            e["upstream"],
            format!("127.0.0.1:{}", backend.port()).as_str()
        );
        assert!(us(e, "first_byte") < 100_000, "{e}");
        if e["reused"] == false {
            assert!(
                e["timings_us"].get("connect").is_some(),
                "a new connection is timed: {e}"
            );
        }
    }
    let reused = events.iter().filter(|e| e["reused"] == true).count();
    assert!(reused >= 18, "old connections adopted: {events:#?}");
    assert!(
        events.iter().all(|e| e["tcp"]["srtt_us"].is_u64()),
        "the RTT of adopted connections is read too: {events:#?}"
    );
}

#[test]
fn an_exchange_still_waiting_when_tracing_stops_is_reported_and_counted() {
    require_root();
    let backend = HttpBackend::with(Behavior::Answer(Duration::from_secs(4)));
    let nginx = Nginx::proxying_to(backend.port(), "");
    // --slow above the wait: only the stop can report it.
    let tracer = Tracer::attach_to(&nginx, &["--slow", "60000"]);
    let port = nginx.port();
    let client = std::thread::spawn(move || ngx_trace_tests::http::get(port, "/"));
    std::thread::sleep(Duration::from_millis(1500));
    let events = tracer.stop();
    let upstream = format!("127.0.0.1:{}", backend.port());
    let pending: Vec<&Value> = events.iter().filter(|e| e["event"] == "pending").collect();
    assert_eq!(pending.len(), 1, "{events:#?}");
    let p = pending[0];
    assert_eq!(p["cut_by_stop"], true, "{p}");
    assert_eq!(p["upstream"], upstream.as_str(), "{p}");
    assert_eq!(p["request_acked"], true, "{p}");
    let waited = p["waiting_ms"].as_u64().unwrap();
    assert!((1_300..3_000).contains(&waited), "waited about 1.5 s: {p}");
    assert!(
        !events.iter().any(|e| e["event"] == "upstream"),
        "it never ended while traced: {events:#?}"
    );
    let summary = events.iter().find(|e| e["event"] == "summary").unwrap();
    let counts = &summary["upstreams"][0];
    assert_eq!(counts["upstream"], upstream.as_str(), "{summary}");
    assert_eq!(counts["cut_by_stop"], 1, "{summary}");
    assert_eq!(counts["total"], 1, "{summary}");
    assert_eq!(
        client.join().unwrap(),
        200,
        "nginx itself was not disturbed"
    );
}
