//! Clients that leave while the backend works: nginx closes the upstream
//! connection and logs 499, and ngx-trace must say `client_closed` /
//! `client_aborted`, never a 504 nginx did not write. Next to them, real
//! read timeouts of 1 s stay `no_response`. Backends on TCP and on a UNIX
//! socket (PHP-FPM). Run as root through `cargo xtask test`.
use std::time::Duration;

use ngx_trace_tests::{
    backend::{Behavior, HttpBackend},
    http::{get, get_then_leave},
    nginx::Nginx,
    php_fpm::PhpFpm,
    require_root,
    tracer::Tracer,
};
use serde_json::Value;

/// Client patience, in the order the clients start: 0.3 s, 2 s, and
/// leaving right after sending the request.
const LEAVE_AFTER: [Duration; 3] = [
    Duration::from_millis(300),
    Duration::from_secs(2),
    Duration::ZERO,
];

/// Lines of `nginx`'s access log (`{dir}/access.log`) with status `status`.
fn access_log_count(nginx: &Nginx, status: u16) -> usize {
    std::fs::read_to_string(nginx.dir().join("access.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(8) == Some(status.to_string().as_str()))
        .count()
}

/// Sends two requests to `timeout_path` that wait for their 504 (a read
/// timeout of 1 s), and the three leaving clients to `patient_path` (read
/// timeout 10 s), all at once against backends that take 5 s; returns every
/// upstream event of `timeout_upstream` and `patient_upstream`.
fn run(
    nginx: &Nginx,
    timeout_path: &'static str,
    patient_path: &'static str,
    timeout_upstream: &str,
    patient_upstream: &str,
) -> (Vec<Value>, Vec<Value>, Vec<Value>) {
    let mut tracer = Tracer::attach_to(nginx, &["--all", "--interval", "0"]);
    let port = nginx.port();
    let waiting: Vec<_> = (0..2)
        .map(|_| std::thread::spawn(move || get(port, timeout_path)))
        .collect();
    let leaving: Vec<_> = LEAVE_AFTER
        .iter()
        .map(|&after| std::thread::spawn(move || get_then_leave(port, patient_path, after)))
        .collect();
    for w in waiting {
        assert_eq!(w.join().unwrap(), 504, "read timeout of 1 s");
    }
    for l in leaving {
        l.join().unwrap();
    }
    // Let nginx notice the last client and the tracer judge it.
    let _ = tracer.upstream_events(4, Duration::from_secs(5), |e| {
        e["upstream"] == patient_upstream || e["upstream"] == timeout_upstream
    });
    std::thread::sleep(Duration::from_millis(500));
    let events = tracer.stop();
    let of = |upstream: &str| -> Vec<Value> {
        events
            .iter()
            .filter(|e| e["event"] == "upstream" && e["upstream"] == upstream)
            .cloned()
            .collect()
    };
    if std::env::var_os("SHOW_EVENTS").is_some() {
        for e in &events {
            eprintln!("{e}");
        }
    }
    (of(timeout_upstream), of(patient_upstream), events)
}

/// What every test checks: the timeouts are `no_response` with nginx's own
/// line, each client that left is `client_closed` with no error line, one
/// per 499 in nginx's access log, after about as long as it waited; and
/// none of their waits is in a first-byte or total histogram.
fn check(
    nginx: &Nginx,
    timeouts: &[Value],
    aborted: &[Value],
    events: &[Value],
    patient: &str,
    transport: &str,
) {
    assert_eq!(timeouts.len(), 2, "{timeouts:#?}");
    for e in timeouts {
        assert_eq!(e["outcome"], "no_response", "{e}");
        assert_eq!(e["verdict"], "backend_slow", "{e}");
        assert_eq!(e["errno"], 110, "{e}");
        let line = e["nginx_error"].as_str().unwrap();
        assert!(line.starts_with("upstream timed out (110"), "{e}");
        let total = e["timings_us"]["total"].as_u64().unwrap();
        // nginx arms its timer from its cached clock, read before it wrote
        // the request: the wait the kernel sees may be a few ms short of 1 s
        // (more in a slow VM).
        assert!((950_000..1_600_000).contains(&total), "1 s timeout: {e}");
    }
    assert_eq!(
        nginx.error_log_lines("upstream timed out").len(),
        2,
        "only the two real timeouts are in nginx's log"
    );
    let left = access_log_count(nginx, 499);
    assert!(
        left >= 2,
        "the 0.3 s and 2 s clients are 499s in nginx's access log"
    );
    // The client that left right after sending may be noticed before nginx
    // sends anything upstream: then there is no exchange to report.
    assert!(
        (left - 1..=left).contains(&aborted.len()),
        "one client_closed per 499 that reached the upstream ({left} in the access log): {aborted:#?}"
    );
    for e in aborted {
        assert_eq!(e["outcome"], "client_closed", "{e}");
        assert_eq!(e["verdict"], "client_aborted", "{e}");
        assert_eq!(e["errno"], Value::Null, "{e}");
        assert!(e.get("nginx_error").is_none(), "nginx writes no error: {e}");
        assert_eq!(e["transport"], transport, "{e}");
        assert!(e["timings_us"].get("first_byte").is_none(), "{e}");
    }
    let waited: Vec<u64> = aborted
        .iter()
        .filter_map(|e| e["timings_us"]["total"].as_u64())
        .collect();
    // From nginx's upstream connect to the client's close: the client's
    // patience less the time nginx took to connect (up to a few hundred ms
    // when the host, or an emulated VM, keeps the worker waiting).
    for (patience, range) in [("0.3 s", 50_000..1_000_000), ("2 s", 1_500_000..2_700_000)] {
        assert!(
            waited.iter().any(|w| range.contains(w)),
            "the client that left after {patience}: {aborted:#?}"
        );
    }
    // Only exchanges nginx waited out count as response times.
    let waited_out = events
        .iter()
        .filter(|e| e["event"] == "upstream" && e["upstream"] == patient)
        .filter(|e| e["outcome"] != "client_closed")
        .count() as u64;
    for e in events {
        if e["event"] == "histogram" && e["upstream"] == patient {
            assert_ne!(e["phase"], "first_byte", "no response came: {e}");
            if e["phase"] == "total" {
                assert_eq!(
                    e["count"].as_u64(),
                    Some(waited_out),
                    "a client's patience is no response time: {e}"
                );
            }
        }
    }
    let summary = events
        .iter()
        .find(|e| e["event"] == "summary")
        .expect("a summary");
    let counts = summary["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["upstream"] == patient)
        .expect("the patient upstream in the summary");
    assert_eq!(
        counts["outcomes"]["client_closed"].as_u64(),
        Some(aborted.len() as u64),
        "{summary}"
    );
}

#[test]
fn clients_leaving_a_tcp_backend_are_client_aborted_and_read_timeouts_stay_no_response() {
    require_root();
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_secs(5)));
    let patient = HttpBackend::with(Behavior::Answer(Duration::from_secs(5)));
    let nginx = Nginx::start(
        "",
        &format!(
            "access_log {{dir}}/access.log;\n\
             location /timeout {{ proxy_read_timeout 1s; proxy_pass http://127.0.0.1:{}; }}\n\
             location /patient {{ proxy_read_timeout 10s; proxy_pass http://127.0.0.1:{}; }}",
            slow.port(),
            patient.port()
        ),
    );
    let (slow_name, patient_name) = (
        format!("127.0.0.1:{}", slow.port()),
        format!("127.0.0.1:{}", patient.port()),
    );
    let (timeouts, aborted, events) =
        run(&nginx, "/timeout", "/patient", &slow_name, &patient_name);
    check(&nginx, &timeouts, &aborted, &events, &patient_name, "tcp");
    for e in &aborted {
        assert!(
            e["evidence"]
                .as_str()
                .unwrap()
                .starts_with("request acked after"),
            "{e}"
        );
    }
}

#[test]
fn clients_leaving_php_fpm_on_a_unix_socket_are_client_aborted() {
    require_root();
    let script = "<?php usleep(5000000); echo \"done\\n\";";
    let fpm = PhpFpm::start(6, 511, &[("timeout.php", script), ("patient.php", script)]);
    let fastcgi = |timeout: &str| {
        format!(
            "include /etc/nginx/fastcgi_params; \
             fastcgi_param SCRIPT_FILENAME {}$fastcgi_script_name; \
             fastcgi_read_timeout {timeout}; fastcgi_pass unix:{};",
            fpm.www().display(),
            fpm.socket().display()
        )
    };
    // One PHP-FPM pool behind both locations, so one upstream: the timeouts
    // and the aborts are told apart by outcome and counted against nginx's
    // own logs.
    let nginx = Nginx::start(
        "",
        &format!(
            "access_log {{dir}}/access.log;\n\
             location = /timeout.php {{ {} }}\n\
             location = /patient.php {{ {} }}",
            fastcgi("1s"),
            fastcgi("10s")
        ),
    );
    let upstream = format!("unix:{}", fpm.socket().display());
    let (all, _, events) = run(&nginx, "/timeout.php", "/patient.php", &upstream, "");
    let timeouts: Vec<Value> = all
        .iter()
        .filter(|e| e["outcome"] != "client_closed")
        .cloned()
        .collect();
    let aborted: Vec<Value> = all
        .iter()
        .filter(|e| e["outcome"] == "client_closed")
        .cloned()
        .collect();
    check(&nginx, &timeouts, &aborted, &events, &upstream, "unix");
}

#[test]
fn under_load_every_499_and_every_504_is_told_apart_exactly() {
    require_root();
    let healthy = HttpBackend::start();
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_secs(5)));
    let (ok_port, slow_port) = (healthy.port(), slow.port());
    let nginx = Nginx::start(
        "",
        &format!(
            "access_log {{dir}}/access.log;\n\
             location /ok {{ proxy_pass http://127.0.0.1:{ok_port}; }}\n\
             location /timeout {{ proxy_read_timeout 1s; proxy_pass http://127.0.0.1:{slow_port}; }}\n\
             location /patient {{ proxy_read_timeout 10s; proxy_pass http://127.0.0.1:{slow_port}; }}"
        ),
    );
    let tracer = Tracer::attach_to(&nginx, &["--interval", "0"]);
    let port = nginx.port();
    // Healthy traffic keeps both workers busy while clients leave and
    // timeouts fire on the same workers.
    let busy: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let deadline = std::time::Instant::now() + Duration::from_secs(3);
                let mut served = 0;
                while std::time::Instant::now() < deadline {
                    assert_eq!(get(port, "/ok"), 200);
                    served += 1;
                }
                served
            })
        })
        .collect();
    let waiting: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || get(port, "/timeout")))
        .collect();
    let leaving: Vec<_> = (0..12)
        .map(|i| {
            let after = Duration::from_millis(200 + 50 * i);
            std::thread::spawn(move || get_then_leave(port, "/patient", after))
        })
        .collect();
    let served: u32 = busy.into_iter().map(|b| b.join().unwrap()).sum();
    for w in waiting {
        assert_eq!(w.join().unwrap(), 504);
    }
    for l in leaving {
        l.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(800));
    let events = tracer.stop();
    let count = |outcome: &str| {
        events
            .iter()
            .filter(|e| e["event"] == "upstream" && e["outcome"] == outcome)
            .count()
    };
    assert!(served > 100, "the load ran: {served} requests");
    assert_eq!(
        count("no_response"),
        nginx.error_log_lines("upstream timed out").len(),
        "one no_response per timeout nginx logged"
    );
    assert_eq!(count("no_response"), 6);
    assert_eq!(
        count("client_closed"),
        access_log_count(&nginx, 499),
        "one client_closed per 499 nginx logged"
    );
    assert_eq!(count("client_closed"), 12);
    let summary = events.iter().find(|e| e["event"] == "summary").unwrap();
    let ok: u64 = summary["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|u| u["outcomes"]["ok"].as_u64())
        .sum();
    // Every answered request is an `ok` exchange, or said lost.
    let lost = ngx_trace_tests::lost_count(&events);
    let losses: Vec<&Value> = events.iter().filter(|e| e["event"] == "lost").collect();
    assert!(
        ngx_trace_tests::accounted(ok, lost, u64::from(served)),
        "{ok} ok + {lost} lost for {served} served: {summary} {losses:?}"
    );
}
