//! The command line a user meets: errors (one clear sentence on stderr and a
//! documented exit code), `--duration` and `--check`.
use std::{
    os::unix::process::CommandExt as _,
    process::{Command, Output},
    time::Duration,
};

use ngx_trace_tests::{nginx::Nginx, require_root, tracer::binary};

fn run(args: &[&str]) -> Output {
    Command::new(binary())
        .args(args)
        .output()
        .expect("run ngx-trace")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unprivileged_user_is_told_to_use_root_and_nothing_is_attached() {
    require_root();
    let out = Command::new(binary())
        .arg("--json")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run ngx-trace as nobody");
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("CAP_BPF") && err.contains("CAP_PERFMON") && err.contains("sudo"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "one sentence: {err}");
    assert!(
        out.stdout.is_empty(),
        "nothing traced: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn a_pid_that_does_not_exist_is_exit_5() {
    require_root();
    let out = run(&["--pid", "4000000"]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("no process has pid 4000000"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_pid_that_is_not_nginx_is_exit_5() {
    require_root();
    let me = std::process::id().to_string();
    let out = run(&["trace", "--pid", &me]);
    assert_eq!(out.status.code(), Some(5), "{}", stderr(&out));
    assert!(stderr(&out).contains("not nginx"), "{}", stderr(&out));
}

#[test]
fn a_bad_option_is_exit_2() {
    let out = run(&["--duration", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
}

#[test]
fn out_of_range_times_are_exit_2_with_one_sentence_not_a_panic() {
    let cases: [(&[&str], &str); 4] = [
        (&["--duration", "1e20"], "31536000 seconds"),
        (&["--interval", "18446744073709551615"], "31536000 seconds"),
        (&["trace", "--interval", "31536001"], "31536000 seconds"),
        (&["--slow", "18446744073709551615"], "31536000000 ms"),
    ];
    for (args, limit) in cases {
        let out = run(args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        // clap's one `error:` sentence; besides it only its hint to try --help.
        let said: Vec<&str> = err
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
            .collect();
        assert_eq!(said.len(), 1, "one sentence for {args:?}: {err}");
        assert!(
            said[0].starts_with("error: invalid value") && said[0].contains(limit),
            "{args:?}: {err}"
        );
        assert!(out.stdout.is_empty(), "{args:?}: nothing traced");
    }
}

#[test]
fn duration_stops_by_itself_with_a_summary() {
    require_root();
    let nginx = Nginx::start("", "location / { return 200; }");
    let started = std::time::Instant::now();
    let out = run(&[
        "--json",
        "--duration",
        "1.5",
        "--pid",
        &nginx.workers()[0].to_string(),
    ]);
    let took = started.elapsed();
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(10),
        "{took:?}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let workers = events
        .iter()
        .find(|e| e["event"] == "workers")
        .expect("workers event");
    assert_eq!(
        workers["pids"],
        serde_json::json!(nginx.workers()),
        "a worker's pid selects its whole instance"
    );
    assert_eq!(events.last().unwrap()["event"], "summary");
}

#[test]
fn check_attaches_every_hook_and_exits_0() {
    require_root();
    let out = run(&["--check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // Every capability, with the mechanism this kernel offers for it.
    for capability in ngx_trace_tests::capability_names() {
        assert!(
            stdout.contains(&format!("\n  {capability:<20} ")),
            "{capability}: {stdout}"
        );
    }
    assert!(stdout.contains(" loaded and attached in "), "{stdout}");
    assert!(
        stdout.contains("TCP state changes    tp_btf sock:inet_sock_set_state"),
        "{stdout}"
    );
    assert!(stdout.trim_end().ends_with("check: ok"), "{stdout}");
}

#[test]
fn avoid_hooks_falls_back_or_says_what_is_left() {
    require_root();
    // An unknown kind is a usage error naming the known ones.
    let out = run(&["--check", "--avoid-hooks", "kprobes"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("unknown hook kind `kprobes`; known: tp_btf,"),
        "{}",
        stderr(&out)
    );
    // TCP state changes have no mechanism but the BTF tracepoint: avoiding
    // it leaves nothing, said before anything is loaded.
    let out = run(&["--check", "--avoid-hooks", "tp_btf"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("offers no way to see ")
            && err.contains("TCP state changes (to follow TCP upstream handshakes")
            && err.contains("--avoid-hooks rules out the rest"),
        "{err}"
    );
    // Avoiding fentry and fexit: every capability still has a mechanism
    // (a tracepoint, or kprobes where a kernel function was the fallback),
    // and --check says which, and why not the avoided ones.
    let out = run(&["--check", "--avoid-hooks", "fentry,fexit"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}{stdout}", stderr(&out));
    assert!(
        !stdout.contains("  fentry ") && !stdout.contains("  fexit "),
        "{stdout}"
    );
    if stdout.contains("kprobe") {
        assert!(
            stdout.contains(
                "not fexit inet_sendmsg(), inet6_sendmsg(), unix_stream_sendmsg(): avoided"
            ),
            "{stdout}"
        );
    }
}
