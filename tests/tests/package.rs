//! The Debian package (`cargo xtask deb`), as an operator meets it:
//! installed with apt-get, its man page and completions in place, the
//! installed tracer checking this kernel, its systemd unit verified and its
//! capability set enough to trace real nginx, then removed without a trace.
//! Host only (`cargo xtask test` builds the package first). Run as root.
use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use ngx_trace_tests::{free_port, http, nginx::Nginx, require_root};

const UNIT: &str = "/usr/lib/systemd/system/ngx-trace.service";

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .unwrap_or_else(|e| panic!("failed to run {program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "`{program} {}`: {}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "ngx-trace"])
        .stdout
        .starts_with(b"install ok installed")
}

/// Purges the package when dropped, also when the test fails.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("apt-get", &["purge", "-y", "ngx-trace"]);
    }
}

#[test]
fn the_package_installs_traces_and_purges_cleanly() {
    require_root();
    let deb = std::env::var("NGX_TRACE_DEB").expect(
        "NGX_TRACE_DEB names no package: run the tests through `cargo xtask test`, \
         which builds it (`cargo xtask deb`)",
    );
    assert!(
        !installed(),
        "an ngx-trace package is installed on this host already: the test would replace \
         and then remove it; remove it first (apt-get purge ngx-trace)"
    );
    // Purged also when the install itself fails half-way.
    let guard = Installed;
    ok(
        "apt-get",
        &["install", "-y", "--no-install-recommends", &deb],
    );
    assert!(installed());

    // The files an operator reaches for.
    for path in [
        "/usr/bin/ngx-trace",
        "/usr/share/bash-completion/completions/ngx-trace",
        "/usr/share/zsh/vendor-completions/_ngx-trace",
        "/usr/share/fish/vendor_completions.d/ngx-trace.fish",
        "/usr/share/doc/ngx-trace/README.md.gz",
        "/etc/default/ngx-trace",
        UNIT,
    ] {
        assert!(Path::new(path).exists(), "{path} missing");
    }
    assert_eq!(
        ok("man", &["-w", "ngx-trace"]).trim(),
        "/usr/share/man/man1/ngx-trace.1.gz"
    );
    let page = ok("man", &["-P", "cat", "ngx-trace"]);
    assert!(page.contains("--metrics-listen"), "{page}");
    // bash completes the subcommands.
    let completed = ok(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/ngx-trace; \
             f=$(complete -p ngx-trace | sed -n 's/.* -F \\([^ ]*\\) .*/\\1/p'); \
             COMP_WORDS=(ngx-trace t); COMP_CWORD=1; \"$f\" ngx-trace t ngx-trace; \
             echo \"${COMPREPLY[@]}\"",
        ],
    );
    for sub in ["tune", "top", "trace"] {
        assert!(
            completed.split_whitespace().any(|w| w == sub),
            "{completed}"
        );
    }

    // The installed tracer on this kernel.
    let version = ok("/usr/bin/ngx-trace", &["--version"]);
    assert!(
        version.contains("kernel ") && version.contains("BTF"),
        "{version}"
    );
    let check = ok("/usr/bin/ngx-trace", &["--check"]);
    assert!(check.contains("attached"), "{check}");

    // The unit: valid, installed disabled, and its capabilities enough.
    match Command::new("systemd-analyze")
        .args(["verify", UNIT])
        .output()
    {
        Ok(verify) => assert!(
            verify.status.success() && verify.stderr.is_empty(),
            "systemd-analyze verify: {}",
            String::from_utf8_lossy(&verify.stderr)
        ),
        // The issue asks for it where available; say so when it is not.
        Err(e) => eprintln!("NOTE: systemd-analyze not run ({e}): the unit is not verified"),
    }
    let enabled = run("systemctl", &["is-enabled", "ngx-trace.service"]);
    assert_eq!(String::from_utf8_lossy(&enabled.stdout).trim(), "disabled");
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("a capability bounding set")
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    traces_with_only(&caps);

    drop(guard);
    assert!(!installed());
    for path in ["/usr/bin/ngx-trace", "/etc/default/ngx-trace", UNIT] {
        assert!(!Path::new(path).exists(), "{path} left after purge");
    }
}

/// The installed tracer, with only `caps` (the unit's bounding set, as
/// `+bpf`...), traces real nginx: a refusal, and the metrics with the
/// upstream's group (nginx's configuration read).
fn traces_with_only(caps: &[String]) {
    let down = free_port();
    let nginx = Nginx::start(
        &format!("upstream app {{ server 127.0.0.1:{down}; }}"),
        "location / { proxy_pass http://app; }",
    );
    let metrics = free_port();
    let bounding = format!("--bounding-set=-all,{}", caps.join(","));
    let child = Command::new("setpriv")
        .args([
            &bounding,
            "--",
            "/usr/bin/ngx-trace",
            "--json",
            "--pid",
            &nginx.master_pid().to_string(),
            "--metrics-listen",
            &metrics.to_string(),
            "--duration",
            "8",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run setpriv");
    let start = std::time::Instant::now();
    while http::fetch("127.0.0.1", metrics, "/metrics", &[]).status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no metrics served"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(nginx.get("/"), 502);
    let series = format!("ngxtrace_exchanges_total{{upstream=\"app\",server=\"127.0.0.1:{down}\"");
    let start = std::time::Instant::now();
    let mut text = String::new();
    while !text.contains(&series) && start.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(100));
        text = http::fetch("127.0.0.1", metrics, "/metrics", &[]).body;
    }
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "with {caps:?} only: {stderr}");
    assert!(
        stdout.contains("\"outcome\":\"refused\""),
        "with {caps:?} only: {stdout}\n{stderr}"
    );
    assert!(
        text.contains(&series),
        "with {caps:?} only, the configuration's group is missing: {text}\n{stderr}"
    );
    assert!(
        !stderr.contains("cannot read the nginx configuration"),
        "{stderr}"
    );
}
