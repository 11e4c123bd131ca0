//! `ngx-trace top` driven for real in a terminal (tmux: started, sent keys,
//! its screen captured) against real nginx with a refusing, a slow and a
//! healthy upstream. Run as root through `cargo xtask test`.
use std::{
    process::Command,
    time::{Duration, Instant},
};

use ngx_trace_tests::{
    backend::{Behavior, HttpBackend},
    free_port,
    nginx::Nginx,
    require_root,
    tracer::binary,
};

/// A tmux server of its own running one bash, killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start() -> Self {
        let socket = format!("ngx-trace-top-{}", std::process::id());
        let tmux = Self { socket };
        tmux.run(&[
            "new-session",
            "-d",
            "-x",
            "200",
            "-y",
            "50",
            "env PS1='$ ' bash --norc --noprofile",
        ]);
        tmux
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("run tmux (Debian package `tmux`: `cargo xtask test` installs it)");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `keys` (tmux key names: `Enter`, `/`, ...).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "0"];
        args.extend(keys);
        self.run(&args);
    }

    /// Runs a shell command line in the pane.
    fn line(&self, line: &str) {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
    }

    /// The screen as it shows now.
    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "0"])
    }

    /// The screen and its scrollback.
    fn history(&self) -> String {
        self.run(&["capture-pane", "-p", "-S", "-", "-t", "0"])
    }

    /// Whether the pane is on the alternate screen (a full-screen program).
    fn alternate(&self) -> bool {
        self.run(&["display", "-p", "-t", "0", "#{alternate_on}"])
            .trim()
            == "1"
    }

    /// Waits until the screen satisfies `pred`.
    fn wait(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if pred(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}; screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The rows' upstream names, top to bottom.
fn row_order(screen: &str, names: &[&String]) -> Vec<String> {
    screen
        .lines()
        .filter_map(|l| names.iter().find(|n| l.starts_with(n.as_str())))
        .map(|n| n.to_string())
        .collect()
}

/// The pid of the `ngx-trace top` running on `master`.
fn top_pid(master: u32) -> u32 {
    let start = Instant::now();
    loop {
        let found = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.contains("top\0--pid\0") && c.contains(&format!("\0{master}\0"))
                })
            });
        if let Some(pid) = found {
            return pid;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no ngx-trace top"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn top_shows_each_upstream_sorts_filters_and_restores_the_terminal() {
    require_root();
    let ok = HttpBackend::with(Behavior::Answer(Duration::from_millis(5)));
    let slow = HttpBackend::with(Behavior::Answer(Duration::from_millis(300)));
    let down_port = free_port();
    let nginx = Nginx::start(
        "",
        &format!(
            "location /ok {{ proxy_pass http://127.0.0.1:{}; }}\n\
             location /slow {{ proxy_pass http://127.0.0.1:{}; }}\n\
             location /down {{ proxy_pass http://127.0.0.1:{down_port}; }}",
            ok.port(),
            slow.port()
        ),
    );
    let (ok_name, slow_name, down_name) = (
        format!("127.0.0.1:{}", ok.port()),
        format!("127.0.0.1:{}", slow.port()),
        format!("127.0.0.1:{down_port}"),
    );
    let master = nginx.master_pid();
    let tmux = Tmux::start();
    let command = format!(
        "{} top --pid {master}; echo TOP-EXITED $?",
        binary().display()
    );
    tmux.line(&command);
    tmux.wait("the view", |s| {
        s.contains("ngx-trace top") && s.contains("workers 2")
    });
    assert!(tmux.alternate());

    for _ in 0..30 {
        assert_eq!(nginx.get("/down"), 502);
    }
    for _ in 0..10 {
        assert_eq!(nginx.get("/ok"), 200);
    }
    for _ in 0..5 {
        assert_eq!(nginx.get("/slow"), 200);
    }
    // The counts since start equal the requests sent.
    let screen = tmux.wait("every exchange counted", |s| {
        s.contains("since start: 30 exchanges, 30 failed (refused 30)")
            && s.contains("since start: 10 exchanges, 0 failed")
            && s.contains("since start: 5 exchanges, 0 failed")
    });
    assert!(screen.contains("refused(111): RST"), "{screen}");
    let names = [&ok_name, &slow_name, &down_name];
    // Sorted by failures: the refusing upstream first.
    assert_eq!(row_order(&screen, &names)[0], down_name, "{screen}");
    // The slow upstream's first byte: about 300 ms.
    let slow_row = screen
        .lines()
        .find(|l| l.starts_with(&slow_name))
        .unwrap()
        .to_string();
    let since_slow = screen
        .lines()
        .skip_while(|l| !l.starts_with(&slow_name))
        .nth(1)
        .unwrap();
    assert!(since_slow.contains(" ms / 3"), "{slow_row}\n{since_slow}");

    // `l`: a row per method and location, with the same counts; `l` again:
    // back to the upstreams.
    tmux.keys(&["l"]);
    let screen = tmux.wait("rows per location", |s| {
        s.contains("3 locations") && s.contains("METHOD LOCATION")
    });
    // A refused connect wrote no request: its method is not known.
    for (location, since) in [
        (
            "? /down",
            "since start: 30 exchanges, 30 failed (refused 30)",
        ),
        ("GET /ok", "since start: 10 exchanges, 0 failed"),
        ("GET /slow", "since start: 5 exchanges, 0 failed"),
    ] {
        let row = screen.lines().skip_while(|l| !l.starts_with(location));
        assert!(
            row.take(2).any(|l| l.contains(since)),
            "{location}: {screen}"
        );
    }
    tmux.keys(&["l"]);
    tmux.wait("rows per upstream", |s| s.contains("3 upstreams"));

    // `s` three times: by name.
    tmux.keys(&["s", "s", "s"]);
    let screen = tmux.wait("sort by name", |s| s.contains("sort: name"));
    let mut by_name: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    by_name.sort();
    assert_eq!(row_order(&screen, &names), by_name, "{screen}");
    // `/` filters by upstream name.
    let slow_port = slow.port().to_string();
    tmux.keys(&["/"]);
    tmux.keys(&["-l", &slow_port]);
    tmux.keys(&["Enter"]);
    // Applied once Enter is read (while typed, the title ends with `_`).
    let screen = tmux.wait("the filter", |s| {
        s.lines()
            .next()
            .is_some_and(|title| title.trim_end().ends_with(&format!("filter: {slow_port}")))
    });
    assert_eq!(row_order(&screen, &names), [slow_name], "{screen}");
    tmux.keys(&["p"]);
    tmux.wait("pause", |s| s.contains("[paused]"));

    // `q`: the terminal is back, with the counts in the scrollback.
    tmux.keys(&["q"]);
    tmux.wait("exit", |s| s.lines().any(|l| l == "TOP-EXITED 0"));
    assert!(!tmux.alternate());
    let history = tmux.history();
    assert!(
        history.contains(&format!(
            "{down_name}: 30 exchanges, 30 failed, latest refused(111)"
        )),
        "{history}"
    );
    // The marker is quoted apart so that the typed line does not match.
    tmux.line("stty -a | grep -o -- '-*icanon'; echo STTY\"-\"DONE");
    let screen = tmux.wait("stty", |s| s.lines().any(|l| l == "STTY-DONE"));
    assert!(
        screen.lines().any(|l| l == "icanon"),
        "the terminal is left raw:\n{screen}"
    );

    // SIGTERM: the same.
    tmux.line("clear");
    tmux.line(&command);
    tmux.wait("the view again", |s| {
        s.contains("ngx-trace top") && s.contains("workers 2")
    });
    // SAFETY: plain kill(2).
    unsafe { libc::kill(top_pid(master) as i32, libc::SIGTERM) };
    tmux.wait("exit after SIGTERM", |s| {
        s.lines().any(|l| l == "TOP-EXITED 0")
    });
    assert!(!tmux.alternate());
    tmux.line("stty -a | grep -o -- '-*icanon'; echo STTY\"-\"AGAIN");
    let screen = tmux.wait("stty", |s| s.lines().any(|l| l == "STTY-AGAIN"));
    assert!(screen.lines().any(|l| l == "icanon"), "{screen}");
}

#[test]
fn top_without_a_terminal_prints_lines() {
    use std::io::{BufRead as _, BufReader, Read as _};
    require_root();
    let down_port = free_port();
    let nginx = Nginx::proxying_to(down_port, "");
    let mut child = Command::new(binary())
        .args([
            "top",
            "--pid",
            &nginx.master_pid().to_string(),
            "--duration",
            "3",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start ngx-trace top");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut text = String::new();
    while !text.contains("tracing nginx workers") {
        assert!(stdout.read_line(&mut text).unwrap() > 0, "ended: {text}");
    }
    assert_eq!(nginx.get("/"), 502);
    stdout.read_to_string(&mut text).unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(child.wait().unwrap().success(), "{stderr}");
    assert!(
        stderr.contains("stdout is not a terminal: printing one line per failure"),
        "{stderr}"
    );
    assert!(
        text.contains(&format!("127.0.0.1:{down_port} refused(111)")),
        "{text}"
    );
}
