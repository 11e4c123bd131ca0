//! `ngx-trace tune`: nginx's own configuration (split over included files,
//! with a per-location override) read from the running instance, and
//! backends of known latency: each timeout's advice checked against what
//! the backends were made to do. Run as root through `cargo xtask test`.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use ngx_trace_tests::{
    backend::{Behavior, HttpBackend},
    nginx::Nginx,
    require_root,
    tracer::{Tracer, binary},
};
use serde_json::Value;

/// Runs `ngx-trace tune <args>` to its end: its JSON events and stderr.
fn tune(args: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(binary())
        .arg("tune")
        .arg("--json")
        .args(args)
        .output()
        .expect("run ngx-trace tune");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{}: {stderr}", out.status);
    let events = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    (events, stderr)
}

fn row<'a>(events: &'a [Value], location: &str, directive: &str) -> &'a Value {
    events
        .iter()
        .find(|e| e["location"] == location && e["directive"] == directive)
        .unwrap_or_else(|| panic!("no {directive} for {location} in {events:#?}"))
}

/// nginx with `/fast` (20 ms backend, timeouts from an included file) and
/// `/slow` (a 1.5 s backend behind a 1 s read timeout set in the location).
fn nginx_with_includes(fast: &HttpBackend, slow: &HttpBackend) -> Nginx {
    let nginx = Nginx::start(
        "include {dir}/conf.d/*.conf;",
        &format!(
            "location /fast {{ proxy_pass http://127.0.0.1:{}; }}\n\
             location /slow {{ include {{dir}}/loc.d/*.inc; proxy_pass http://127.0.0.1:{}; }}",
            fast.port(),
            slow.port()
        ),
    );
    nginx.write_and_reload(&[
        (
            "conf.d/timeouts.conf",
            "proxy_connect_timeout 5s;\nproxy_read_timeout 60s;\n",
        ),
        ("loc.d/slow.inc", "proxy_read_timeout 1s;\n"),
    ]);
    nginx
}

fn check_advice(events: &[Value], nginx: &Nginx, fast_requests: u64) {
    let dir = nginx.dir();
    let read = row(events, "/fast", "proxy_read_timeout");
    assert_eq!(read["current_s"], 60.0, "{read:#}");
    assert_eq!(
        read["file"],
        dir.join("conf.d/timeouts.conf").display().to_string(),
        "{read:#}"
    );
    assert_eq!(read["line"], 2, "{read:#}");
    assert!(
        read["samples"].as_u64().unwrap() >= fast_requests,
        "{read:#}"
    );
    // 20 ms answers: p90 × 1.5 rounds to 1 s, cutting none of them.
    assert_eq!(read["recommended_s"], 1.0, "{read:#}");
    assert_eq!(
        (read["cut_now"].as_u64(), read["cut_recommended"].as_u64()),
        (Some(0), Some(0)),
        "{read:#}"
    );
    // Connects on loopback take microseconds: not below 1 s plus the RTT.
    let connect = row(events, "/fast", "proxy_connect_timeout");
    assert_eq!(
        (
            connect["current_s"].as_f64(),
            connect["recommended_s"].as_f64()
        ),
        (Some(5.0), Some(2.0)),
        "{connect:#}"
    );
    // One server: no more than one try.
    let tries = row(events, "/fast", "proxy_next_upstream_tries");
    assert_eq!(
        (tries["current_s"].as_f64(), tries["recommended_s"].as_f64()),
        (Some(0.0), Some(1.0)),
        "{tries:#}"
    );
    // Written nowhere: to be added where it applies. Both locations need
    // one try: once, in their server block; the send timeout only /fast
    // has the data for: in its location block.
    let conf = dir.join("nginx.conf");
    let line_of = |needle: &str| {
        std::fs::read_to_string(&conf)
            .unwrap()
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} in nginx.conf"))
            + 1
    };
    let conf_name = Value::from(conf.display().to_string());
    assert_eq!(
        (&tries["action"], &tries["file"], &tries["line"]),
        (
            &Value::from("add"),
            &conf_name,
            &Value::from(line_of("server {"))
        ),
        "nginx's default, shared by the server's locations: {tries:#}"
    );
    assert!(
        tries["block"].as_str().unwrap().starts_with("server "),
        "{tries:#}"
    );
    let send = row(events, "/fast", "proxy_send_timeout");
    assert_eq!(
        (
            &send["action"],
            &send["block"],
            &send["file"],
            &send["line"]
        ),
        (
            &Value::from("add"),
            &Value::from("location /fast"),
            &conf_name,
            &Value::from(line_of("location /fast"))
        ),
        "{send:#}"
    );
    assert_eq!(read["action"], "change", "{read:#}");
    // The slow location's override: its 504s are censored, too few to advise.
    let slow = row(events, "/slow", "proxy_read_timeout");
    assert_eq!(slow["current_s"], 1.0, "{slow:#}");
    assert_eq!(
        slow["file"],
        dir.join("loc.d/slow.inc").display().to_string()
    );
    assert_eq!(
        (slow["censored"].as_u64(), slow["cut_now"].as_u64()),
        (Some(3), Some(3)),
        "{slow:#}"
    );
    assert!(slow["recommended_s"].is_null(), "{slow:#}");
    assert!(
        slow["reason"]
            .as_str()
            .unwrap()
            .starts_with("insufficient data (n=3"),
        "{slow:#}"
    );
}

#[test]
fn tune_advises_each_location_from_its_config_and_a_recording() {
    require_root();
    let fast = HttpBackend::with(Behavior::Answer(Duration::from_millis(20)));
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_millis(1500)));
    let nginx = nginx_with_includes(&fast, &slow);
    let recording = nginx.dir().join("trace.jsonl");
    let tracer = Tracer::attach_to(&nginx, &["--record", recording.to_str().unwrap()]);
    for _ in 0..120 {
        assert_eq!(nginx.get("/fast"), 200);
    }
    for _ in 0..3 {
        assert_eq!(nginx.get("/slow"), 504);
    }
    std::thread::sleep(Duration::from_millis(500));
    tracer.stop();
    // The configuration comes from the running instance itself.
    let (events, stderr) = tune(&[
        "--from",
        recording.to_str().unwrap(),
        "--false-timeout-rate",
        "0.1",
    ]);
    assert!(!stderr.contains("nginx configuration:"), "{stderr}");
    check_advice(&events, &nginx, 120);
    // The text says the edit to make, and where.
    let out = Command::new(binary())
        .args(["tune", "--from", recording.to_str().unwrap()])
        .args(["--false-timeout-rate", "0.1"])
        .output()
        .expect("run ngx-trace tune");
    let text = String::from_utf8_lossy(&out.stdout);
    let tries = row(&events, "/fast", "proxy_next_upstream_tries");
    let add = format!(
        "add `proxy_next_upstream_tries 1;` to {} at {}:{}",
        tries["block"].as_str().unwrap(),
        tries["file"].as_str().unwrap(),
        tries["line"]
    );
    assert!(text.contains(&add), "no {add:?} in:\n{text}");
    assert!(
        text.contains("proxy_read_timeout 1m at ")
            && text.contains("change it to `proxy_read_timeout 1s;`"),
        "{text}"
    );
}

#[test]
fn tune_live_traces_for_its_duration_then_advises() {
    require_root();
    let fast = HttpBackend::with(Behavior::Answer(Duration::from_millis(20)));
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_millis(1500)));
    let nginx = nginx_with_includes(&fast, &slow);
    let master = nginx.master_pid().to_string();
    let mut child = Command::new(binary())
        .args([
            "tune",
            "--json",
            "--pid",
            &master,
            "--false-timeout-rate",
            "0.1",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ngx-trace tune");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut said = String::new();
    while !said.contains("measuring") {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "tune ended: {said}"
        );
        said.push_str(&line);
    }
    for _ in 0..110 {
        assert_eq!(nginx.get("/fast"), 200);
    }
    for _ in 0..3 {
        assert_eq!(nginx.get("/slow"), 504);
    }
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: plain kill(2) on our child: Ctrl-C.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().expect("wait for ngx-trace tune");
    assert!(out.status.success(), "{}: {said}", out.status);
    let events: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    check_advice(&events, &nginx, 110);
}
