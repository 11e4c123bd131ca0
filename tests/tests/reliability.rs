//! What nginx and the host may do to a running tracer: reload storms,
//! restarts, SIGKILL and SIGTERM of the tracer, connection bursts, and a
//! ring buffer overfilled on purpose. Run as root through `cargo xtask test`.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::TcpStream,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ngx_trace_tests::{
    free_port,
    nginx::Nginx,
    require_root,
    tracer::{Tracer, binary},
};
use serde_json::Value;

const REFUSED_LINE: &str = "connect() failed (111: Connection refused)";

/// Sum of `lost` counts and number of refused upstream events.
fn tally(events: &[Value]) -> (u64, u64) {
    let lost = ngx_trace_tests::lost_count(events);
    let refused = events
        .iter()
        .filter(|e| e["event"] == "upstream" && e["outcome"] == "refused")
        .count() as u64;
    (lost, refused)
}

#[test]
fn reload_storm_under_load_loses_no_failure() {
    require_root();
    let port = free_port();
    let nginx = Nginx::proxying_to(port, "");
    let tracer = Tracer::attach_to(&nginx, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let nginx_port = nginx.port();
    let load = std::thread::spawn(move || {
        let mut sent = 0;
        while !flag.load(Ordering::SeqCst) {
            ngx_trace_tests::http::get(nginx_port, "/");
            sent += 1;
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    // 20 reloads in 10 s.
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(500));
        let status = Command::new("nginx")
            .arg("-c")
            .arg(nginx.dir().join("nginx.conf"))
            .arg("-p")
            .arg(nginx.dir())
            .args(["-s", "reload"])
            .stderr(Stdio::null())
            .status()
            .expect("nginx -s reload");
        assert!(status.success());
    }
    stop.store(true, Ordering::SeqCst);
    let sent = load.join().unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let logged = nginx.error_log_lines(REFUSED_LINE).len() as u64;
    assert!(
        logged >= 100,
        "load too light: {logged} failures for {sent} requests"
    );
    let events = tracer.stop();
    let (lost, refused) = tally(&events);
    let dropped: u64 = events
        .iter()
        .filter(|e| e["event"] == "lost")
        .filter_map(|e| e["count"].as_u64())
        .sum();
    assert_eq!(dropped, 0, "records dropped during a reload storm");
    // Every refusal reported, or (a hook the kernel skipped) said missing.
    assert!(
        ngx_trace_tests::accounted(refused, lost, logged),
        "ngx-trace saw {refused} refused connects (and {lost} possibly missed), nginx logged {logged}"
    );
}

#[test]
fn nginx_restarted_while_tracing_is_picked_up() {
    require_root();
    let port = free_port();
    let location = format!("location / {{ proxy_pass http://127.0.0.1:{port}; }}");
    let mut tracer = Tracer::start(&[]);
    let upstream = format!("127.0.0.1:{port}");
    for round in 0..2 {
        let nginx = Nginx::start("", &location);
        let workers = nginx.workers();
        assert_eq!(nginx.get("/"), 502);
        let found = tracer.wait_for(Duration::from_secs(10), |e| {
            e["event"] == "upstream"
                && e["upstream"] == upstream.as_str()
                && workers.contains(&(e["worker_pid"].as_u64().unwrap_or(0) as u32))
        });
        assert!(
            found.is_some(),
            "instance {round} (workers {workers:?}) not traced: {:#?}",
            tracer.events
        );
        // Dropping stops this nginx; the next round starts a new master.
    }
    tracer.stop();
}

/// Ids and names of the BPF programs loaded on the host, from Debian's bpftool.
fn bpf_programs() -> Vec<(u64, String)> {
    let out = Command::new("bpftool")
        .args(["prog", "show", "--json"])
        .output()
        .expect("run bpftool (installed by cargo xtask test)");
    assert!(
        out.status.success(),
        "bpftool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let progs: Vec<Value> = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    progs
        .iter()
        .map(|p| {
            (
                p["id"].as_u64().unwrap(),
                p["name"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

#[test]
fn sigkill_of_the_tracer_leaves_no_program_attached() {
    require_root();
    let before: Vec<u64> = bpf_programs().into_iter().map(|(id, _)| id).collect();
    let tracer = Tracer::start(&[]);
    let pid = tracer.pid();
    let ours: Vec<u64> = bpf_programs()
        .into_iter()
        .filter(|(id, name)| {
            !before.contains(id)
                && [
                    "sched_", "sys_", "sock_", "sk_", "tcp_", "inet", "unix_", "signal_", "mark_",
                ]
                .iter()
                .any(|p| name.starts_with(p))
        })
        .map(|(id, _)| id)
        .collect();
    // At least one program per capability (a fallback may need several).
    assert!(
        ours.len() >= ngx_trace_tests::capability_names().len(),
        "programs ngx-trace loaded: {ours:?}"
    );
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    drop(tracer); // reaps it
    let start = Instant::now();
    loop {
        let left: Vec<u64> = bpf_programs()
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| ours.contains(id))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "programs still loaded: {left:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigterm_prints_the_final_summary() {
    require_root();
    let port = free_port();
    let nginx = Nginx::proxying_to(port, "");
    let mut child = Command::new(binary())
        .args(["--pid", &nginx.master_pid().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start ngx-trace");
    // Attached once it names the workers it traces (in a VM this takes
    // seconds).
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut stdout = String::new();
    while !stdout.contains("tracing nginx workers") {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            panic!("ngx-trace ended before attaching: {stdout}");
        }
        stdout.push_str(&line);
    }
    assert_eq!(nginx.get("/"), 502);
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    reader.read_to_string(&mut stdout).unwrap();
    assert!(child.wait().unwrap().success());
    assert!(
        stdout.contains("summary (outcomes per upstream):"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("127.0.0.1:{port}")) && stdout.contains("refused 1"),
        "{stdout}"
    );
}

/// Raises this process's descriptor limit to `n`.
fn raise_nofile(n: u64) {
    let limit = libc::rlimit {
        rlim_cur: n,
        rlim_max: n,
    };
    // SAFETY: valid pointer to an rlimit.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    assert_eq!(
        rc,
        0,
        "raise RLIMIT_NOFILE to {n}: {}",
        std::io::Error::last_os_error()
    );
}

fn vm_hwm_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn burst_of_10000_concurrent_connections_is_fully_accounted_with_bounded_memory() {
    require_root();
    const CLIENTS: usize = 10_000;
    raise_nofile(CLIENTS as u64 + 1024);
    let port = free_port();
    let nginx = Nginx::start_with_connections(
        CLIENTS as u32 + 1024,
        "",
        &format!("location / {{ proxy_pass http://127.0.0.1:{port}; }}"),
    );
    let tracer = Tracer::attach_to(&nginx, &[]);
    let mut clients: Vec<TcpStream> = (0..CLIENTS)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", nginx.port()))
                .unwrap_or_else(|e| panic!("client {i}: {e}"))
        })
        .collect();
    for c in &mut clients {
        c.write_all(b"GET / HTTP/1.0\r\n\r\n")
            .expect("send request");
    }
    let mut answered = 0;
    let mut first_other = None;
    for mut c in clients {
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut buf = Vec::new();
        let read = c.read_to_end(&mut buf);
        if read.is_ok() && buf.starts_with(b"HTTP/1.1 502") {
            answered += 1;
        } else if first_other.is_none() {
            let head = String::from_utf8_lossy(&buf[..buf.len().min(80)]).into_owned();
            first_other = Some(format!("{read:?}, {head:?}"));
        }
    }
    // A burst this size overflows the kernel's accept queue (capped by
    // net.core.somaxconn) now and then: a few clients are reset by the
    // kernel before nginx ever sees them. That is loopback, not the tracer;
    // what matters is that every request nginx did serve is accounted for.
    assert!(
        answered >= CLIENTS * 95 / 100,
        "only {answered} of {CLIENTS} clients got their 502; the first that did not: \
         {first_other:?}"
    );
    std::thread::sleep(Duration::from_secs(1));
    let hwm = vm_hwm_kb(tracer.pid());
    let logged = nginx.error_log_lines(REFUSED_LINE).len() as u64;
    assert_eq!(
        logged, answered as u64,
        "one refused connect in nginx's log per 502 served"
    );
    let events = tracer.stop();
    let (lost, refused) = tally(&events);
    let losses: Vec<&Value> = events.iter().filter(|e| e["event"] == "lost").collect();
    assert!(
        ngx_trace_tests::accounted(refused, lost, logged),
        "{refused} reported + {lost} lost do not account for {logged} failures: {losses:?}"
    );
    assert!(hwm < 50 * 1024, "tracer peak RSS {hwm} kB");
}

#[test]
fn an_overfilled_ring_buffer_is_counted_exactly() {
    require_root();
    // Twice what the ring holds.
    const REQUESTS: u64 = 2 * ngx_trace_common::EVENTS_BYTES as u64
        / (size_of::<ngx_trace_common::UpstreamRecord>() as u64 + 8);
    let port = free_port();
    let nginx = Nginx::proxying_to(port, "");
    let tracer = Tracer::attach_to(&nginx, &[]);
    // Freeze the reader: the kernel keeps writing until the ring is full.
    // SAFETY: plain kill(2) on our child.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGSTOP) };
    for _ in 0..REQUESTS {
        assert_eq!(nginx.get("/"), 502);
    }
    // SAFETY: as above.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGCONT) };
    std::thread::sleep(Duration::from_secs(2));
    let events = tracer.stop();
    let (lost, refused) = tally(&events);
    assert!(
        lost > 0,
        "{REQUESTS} records fit the ring? {refused} reported"
    );
    // The ring's drops are counted exactly, apart from any hook the kernel
    // skipped.
    let last = events.iter().rfind(|e| e["event"] == "lost").unwrap();
    let dropped = last["ring_buffer_full"].as_u64().unwrap() + last["map_full"].as_u64().unwrap();
    assert_eq!(refused + dropped, REQUESTS, "{refused} reported, {last}");
}
