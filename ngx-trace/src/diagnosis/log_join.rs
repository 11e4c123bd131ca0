//! `ngx-trace explain`: each upstream line of nginx's error log joined to
//! the exchange the kernel saw (same worker, same upstream, the same
//! message nginx writes for it, within the second the line names), and
//! explained: the cause, how sure, the causes ruled out and why, and what to
//! do. The join works on upstream events, live or from a recording.
use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    time::{Duration, SystemTime},
};

use serde::Serialize;
use serde_json::Value;

use crate::{
    capped::NameCap,
    diagnosis::causes::{self, Cause},
    nginx::configs::describe,
    nginx::errorlog::{Kind, LogLine, Phase, server_of},
    nginx::nginx_conf::Config,
};

/// Events a live trace window holds at most (about 30 s at 3,300
/// exchanges/s; about 250 bytes each); past it the oldest go early, counted.
const LIVE_EVENTS: usize = 100_000;
/// Of them, whole events (failures nginx logs, worker deaths: about 4 KB
/// each, 40 MB in all).
const LIVE_WHOLE: usize = 10_000;
/// Upstreams tallied by name; later ones are tallied as `other`.
const TALLY_UPSTREAMS: usize = 256;
/// Requests whose retry chain is remembered: a request's lines come within
/// seconds, so only the most recent ones can still gain a line.
const OPEN_CHAINS: usize = 65_536;

/// How long before a line's second an exchange may have ended: a line is
/// written from nginx's cached clock, and the kernel's clock runs apart
/// from it by less than this.
const BEFORE: Duration = Duration::from_secs(1);
/// How long after a line's second start: the line's second, plus slack.
const AFTER: Duration = Duration::from_secs(2);
/// nginx's `fail_timeout` default: how far back failures explain `no live
/// upstreams` and `upstream server temporarily disabled`.
const FAIL_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon after a failure the same worker's next exchange is nginx trying
/// the request again on the next server (`*_next_upstream`): in the same
/// event-loop turn, well under this. (Another request's exchange may start
/// as soon: one whose own line names another `*N` is never taken for it.)
const RETRY_WITHIN: Duration = Duration::from_millis(50);

/// An upstream or worker_exit event of the trace.
struct Traced {
    /// The event; `Null` for an exchange nginx wrote no line for (about
    /// 4 KB less: only its outcome and verdict are ever read).
    event: Value,
    outcome: Box<str>,
    verdict: Box<str>,
    end: SystemTime,
    start: SystemTime,
    worker_pid: u32,
    upstream: String,
    used: bool,
    /// The request (worker, `*N`) of the line it explained.
    conn: Option<(u32, u64)>,
}

impl Traced {
    fn str(&self, key: &str) -> &str {
        match key {
            "outcome" => &self.outcome,
            "verdict" => &self.verdict,
            _ => self.event[key].as_str().unwrap_or(""),
        }
    }
}

/// What the kernel saw: exchanges and worker deaths, by their events.
#[derive(Default)]
pub struct Trace {
    exchanges: VecDeque<Traced>,
    exits: VecDeque<Traced>,
    /// Events held at most, and whole events among them (live); `None` for
    /// a recording, which is in memory whole already.
    cap: Option<(usize, usize)>,
    /// Whole events held (not `Null`).
    whole: usize,
    /// Events let go before their time because the window was full.
    dropped: u64,
}

impl Trace {
    /// The window of live tracing: at most [`LIVE_EVENTS`] events, of them
    /// [`LIVE_WHOLE`] whole, the oldest dropped first (and counted) when
    /// more come.
    pub fn live() -> Self {
        Self {
            cap: Some((LIVE_EVENTS, LIVE_WHOLE)),
            ..Self::default()
        }
    }

    /// Events dropped before their time because the window was full.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Adds an event (others than `upstream` and `worker_exit` are ignored).
    pub fn add(&mut self, event: Value) {
        let Some(end) = event["time"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339(t).ok())
        else {
            return;
        };
        let worker_pid = event["worker_pid"].as_u64().unwrap_or(0) as u32;
        let total = event["timings_us"]["total"].as_u64().unwrap_or(0);
        let upstream = event["upstream"].as_str().unwrap_or("").to_string();
        let text = |key: &str| Box::<str>::from(event[key].as_str().unwrap_or(""));
        let (outcome, verdict) = (text("outcome"), text("verdict"));
        let exit = match event["event"].as_str() {
            Some("upstream") => false,
            Some("worker_exit") => true,
            _ => return,
        };
        // An exchange nginx wrote no error line for only ever serves as a
        // retry: its outcome is enough (a day's recording holds millions).
        // A client's leaving is kept whole: nginx's `info` line about it
        // matches it.
        let keep = exit
            || event["nginx_error"].is_string()
            || event["outcome"].as_str() == Some("client_closed");
        let event = if !keep {
            Value::Null
        } else {
            self.whole += 1;
            event
        };
        let traced = Traced {
            start: end.checked_sub(Duration::from_micros(total)).unwrap_or(end),
            upstream,
            outcome,
            verdict,
            end,
            worker_pid,
            used: false,
            conn: None,
            event,
        };
        if exit {
            self.exits.push_back(traced);
        } else {
            self.exchanges.push_back(traced);
        }
        if let Some((events, whole)) = self.cap {
            while self.exchanges.len() + self.exits.len() > events || self.whole > whole {
                // Worker deaths are few: exchanges go first.
                let Some(gone) = self
                    .exchanges
                    .pop_front()
                    .or_else(|| self.exits.pop_front())
                else {
                    break;
                };
                if !gone.event.is_null() {
                    self.whole -= 1;
                }
                if self.dropped == 0 {
                    crate::notice::notice(&format!(
                        "explain: more than {events} exchanges (or {whole} failures) in the \
                         last 30 s: the oldest are let go early (counted in the summary's \
                         trace_dropped); a line written late may find no exchange"
                    ));
                }
                self.dropped += 1;
            }
        }
    }

    /// Forgets what ended before `t` (live tracing: older lines are done).
    pub fn forget_before(&mut self, t: SystemTime) {
        self.exchanges.retain(|x| x.end >= t);
        self.exits.retain(|x| x.end >= t);
        self.whole = (self.exchanges.iter().chain(&self.exits))
            .filter(|x| !x.event.is_null())
            .count();
    }
}

/// The parts of a log line the explanation repeats.
#[derive(Debug, Serialize, PartialEq)]
pub struct LogFields {
    /// As written (nginx's local time).
    pub time: String,
    /// `error`, `warn`...
    pub level: String,
    /// The process that wrote it.
    pub pid: u32,
    /// `*N`: the request's connection, shared by its retries.
    pub conn: Option<u64>,
    /// The errno nginx printed.
    pub errno: Option<u32>,
    /// The `while ...` action.
    pub action: Option<String>,
    /// The `upstream:` field.
    pub upstream: Option<String>,
}

/// A cause ruled out, and why.
#[derive(Debug, Serialize, PartialEq)]
pub struct RuledOut {
    /// `verdict/detail`.
    pub cause: String,
    /// What the kernel saw that rules it out.
    pub why: String,
}

/// A cause the line allows (when no trace decides).
#[derive(Debug, Serialize, PartialEq)]
pub struct Candidate {
    /// `verdict/detail`.
    pub cause: String,
    /// What it looks like.
    pub what: &'static str,
    /// What to do if it is this one.
    pub advice: String,
}

/// nginx trying the request again right after the failure.
#[derive(Debug, Serialize, PartialEq)]
pub struct Retry {
    /// The server it tried next.
    pub upstream: String,
    /// How that went.
    pub outcome: String,
    /// Its verdict.
    pub verdict: String,
}

/// `{"event":"explain",...}`: one upstream line of the error log explained.
#[derive(Debug, Serialize, PartialEq)]
pub struct ExplainEvent {
    /// Always `"explain"`.
    pub event: &'static str,
    /// The line as nginx wrote it.
    pub line: String,
    /// Its parts.
    pub log: LogFields,
    /// What the line says (`connect_failed`, `timed_out`...).
    pub kind: String,
    /// The upstream event of the exchange it is about, or null.
    #[serde(rename = "match")]
    pub matched: Option<Value>,
    /// The cause (the verdict vocabulary; for `no live upstreams` and
    /// `server temporarily disabled`, the cause of the failures they follow
    /// from, with detail `max_fails`), null when nothing decides.
    pub cause: Option<String>,
    /// The finer cause the kernel tells apart (`rst`, `icmp_reject`...).
    pub detail: Option<String>,
    /// `exact`, `likely`, `ambiguous` or `none`.
    pub confidence: &'static str,
    /// What the kernel saw.
    pub evidence: String,
    /// Causes the line allows that the kernel's facts rule out.
    pub ruled_out: Vec<RuledOut>,
    /// Every cause the line allows, when nothing decides between them.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub candidates: Vec<Candidate>,
    /// The next step, in nginx or backend terms (null when undecided).
    pub advice: Option<String>,
    /// nginx tried the request again right after (`*_next_upstream`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retried: Option<Retry>,
    /// The line is older than the recording: nothing could cover it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub before_recording: bool,
    /// The exchange matched, in the trace (for [`add_retries`]).
    #[serde(skip)]
    matched_at: Option<usize>,
}

impl ExplainEvent {
    /// The line, then the explanation indented under it.
    pub fn to_text(&self) -> String {
        // Each field on its own line(s): a newline inside one (a socket
        // path a process chose) must not start a line of its own.
        use crate::sanitize::line as one;
        let mut out = format!("{}\n", one(&self.line));
        match (&self.cause, &self.detail) {
            (Some(cause), detail) => {
                let detail = detail
                    .as_deref()
                    .map(|d| format!(" ({})", one(d)))
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  => {cause}{detail} [{}]: {}\n",
                    self.confidence,
                    one(&self.evidence)
                ));
            }
            (None, _) => out.push_str(&format!("  => undecided [none]: {}\n", one(&self.evidence))),
        }
        if let Some(r) = &self.retried {
            out.push_str(&format!(
                "     retried on {}: {} ({})\n",
                one(&r.upstream),
                r.outcome,
                r.verdict
            ));
        }
        for r in &self.ruled_out {
            out.push_str(&format!("     not {}: {}\n", r.cause, one(&r.why)));
        }
        for c in &self.candidates {
            out.push_str(&format!("     maybe {}: {}\n", c.cause, one(c.what)));
        }
        if let Some(advice) = &self.advice {
            out.push_str(&format!("     next: {}\n", one(advice)));
        }
        out
    }
}

/// How lines are put on the trace's clock, and what the trace covers.
pub struct Join {
    /// Seconds nginx's local time is ahead of UTC.
    pub utc_offset_s: i64,
    /// When the trace started (lines before it cannot be covered); `None`
    /// for a log read without any trace.
    pub since: Option<SystemTime>,
    /// pids as the log writes them (nginx's pid namespace) → the host's.
    pub pid_map: BTreeMap<u32, u32>,
    /// nginx's configuration, for the settings in effect (empty: unknown).
    pub config: Config,
}

/// Explains `line` with `trace`, marking the exchange it matched as used.
pub fn explain(line: &LogLine, trace: &mut Trace, join: &Join) -> ExplainEvent {
    let mut out = ExplainEvent {
        event: "explain",
        line: line.raw.clone(),
        log: LogFields {
            time: line.local_time.clone(),
            level: line.level.clone(),
            pid: line.pid,
            conn: line.conn,
            errno: line.errno,
            action: line.action.clone(),
            upstream: line.upstream_field.clone(),
        },
        kind: line.kind.as_str().to_string(),
        matched: None,
        cause: None,
        detail: None,
        confidence: "none",
        evidence: String::new(),
        ruled_out: Vec::new(),
        candidates: Vec::new(),
        advice: None,
        retried: None,
        before_recording: false,
        matched_at: None,
    };
    let allowed = causes::candidates(line);
    let time = line.time(join.utc_offset_s);
    let covered = match (join.since, time) {
        (Some(since), Some(t)) if t + Duration::from_secs(1) < since => {
            out.before_recording = true;
            false
        }
        (Some(_), Some(_)) => true,
        _ => false,
    };
    if covered {
        let t = time.unwrap_or(SystemTime::UNIX_EPOCH);
        let pid = join.pid_map.get(&line.pid).copied().unwrap_or(line.pid);
        match &line.kind {
            Kind::NoLiveUpstreams | Kind::ServerDisabled => {
                consequence(line, trace, t, &join.config, &mut out);
            }
            Kind::WorkerExited => worker_exit(line, trace, t, &mut out),
            _ if line_decides(&line.kind) => {}
            _ => exchange(line, &allowed, trace, t, pid, &mut out),
        }
    }
    // nginx's own files and limits: the kernel has nothing to add, the
    // message says which cause it is.
    if line_decides(&line.kind)
        && let [cause] = allowed.as_slice()
    {
        out.cause = Some(cause.verdict.to_string());
        out.detail = Some(cause.detail.to_string());
        out.confidence = "likely";
        out.evidence = format!("from nginx's message alone: {}", cause.what);
        out.advice = Some(causes::advice(cause, line));
    }
    if let (Some(advice), Some(detail)) = (out.advice.as_mut(), out.detail.as_deref()) {
        let settings = in_effect(detail, line, &join.config);
        if !settings.is_empty() {
            advice.push_str(&format!("; in effect: {}", settings.join(", ")));
        }
    }
    if out.cause.is_none() {
        out.evidence = if out.before_recording {
            "the line is older than the recording: nothing was traced then".into()
        } else if join.since.is_none() {
            "no trace covers this line: the causes it allows are listed".into()
        } else {
            "no exchange the kernel saw matches this line".into()
        };
        out.confidence = "none";
        out.candidates = allowed
            .iter()
            .map(|c| Candidate {
                cause: format!("{}/{}", c.verdict, c.detail),
                what: c.what,
                advice: causes::advice(c, line),
            })
            .collect();
    }
    out
}

/// Whether the message alone tells its cause, the kernel's records of the
/// exchange bearing on none of it: nginx's temporary files, its connection
/// limit, a response buffered to disk; what the answer held (a header too
/// big, a malformed answer, the application's stderr, a gRPC error, a TLS
/// failure: the kernel saw bytes arrive, nginx judged them); a name that
/// did not resolve (no connection was made).
fn line_decides(kind: &Kind) -> bool {
    matches!(
        kind,
        Kind::TempFile
            | Kind::BufferedToDisk
            | Kind::WorkerConnections
            | Kind::TooBigHeader
            | Kind::InvalidResponse
            | Kind::FastcgiStderr
            | Kind::Grpc
            | Kind::Ssl
            | Kind::Resolver
            | Kind::Cache
            | Kind::SocketOption
            | Kind::RequestBuild
            | Kind::NginxInternal
    )
}

/// The settings in effect that the advice for `detail` is about, for the
/// line's upstream server (or group), with where they are set.
fn in_effect(detail: &str, line: &LogLine, config: &Config) -> Vec<String> {
    let m = line.module().unwrap_or("proxy");
    let directive = match detail {
        "slow" | "loss" | "connection_timed_out" => format!("{m}_read_timeout"),
        "not_reading" => format!("{m}_send_timeout"),
        "syn_lost" | "accept_queue_full" | "host_down" => format!("{m}_connect_timeout"),
        "rst" | "icmp_reject" | "no_listener" | "no_socket_file" | "unreachable" => {
            format!("{m}_next_upstream")
        }
        "stale_keepalive" | "max_fails" => return group_settings(detail, line, config),
        _ => return Vec::new(),
    };
    let Some(server) = line.upstream() else {
        return Vec::new();
    };
    let mut found: Vec<String> = config
        .locations_of(&server)
        .filter(|l| l.module == m)
        .filter_map(|l| {
            let setting = l.settings.get(&directive)?;
            Some(describe(&directive, setting, Some(&l.name)))
        })
        .collect();
    found.dedup();
    found
}

/// The upstream group settings behind a stale kept-alive connection or a
/// server marked down.
fn group_settings(detail: &str, line: &LogLine, config: &Config) -> Vec<String> {
    let server = line.upstream();
    let group_name = line
        .upstream_field
        .as_deref()
        .and_then(crate::nginx::errorlog::server_of);
    config
        .groups
        .iter()
        .filter(|g| {
            Some(&g.name) == group_name.as_ref()
                || g.servers
                    .iter()
                    .any(|s| server.as_ref().is_some_and(|srv| s.addrs.contains(srv)))
        })
        .flat_map(|g| {
            if detail == "stale_keepalive" {
                vec![describe(
                    &format!("keepalive_timeout (upstream {})", g.name),
                    &g.keepalive_timeout,
                    None,
                )]
            } else {
                g.servers
                    .iter()
                    .map(|s| {
                        format!(
                            "server {} max_fails={} fail_timeout={}s ({}:{})",
                            s.addrs.join(" "),
                            s.max_fails,
                            s.fail_timeout_ms / 1000,
                            s.at.0,
                            s.at.1
                        )
                    })
                    .collect()
            }
        })
        .collect()
}

/// Joins a line about an exchange to it.
fn exchange(
    line: &LogLine,
    allowed: &[Cause],
    trace: &mut Trace,
    t: SystemTime,
    pid: u32,
    out: &mut ExplainEvent,
) {
    // `socket()` failed before nginx chose a server: ngx-trace names none.
    // A line cut at nginx's 2048 bytes may have lost its `upstream:` field:
    // then any server (the join is then at most likely).
    let server = match line.kind {
        Kind::SocketFailed => Some("unknown".to_string()),
        _ => line.upstream(),
    };
    let lo = t.checked_sub(BEFORE).unwrap_or(t);
    let hi = t + AFTER;
    let paths = line.paths();
    // Whether exchange `x` served the line's request, as far as the paths
    // tell (`None`: one of them is not known).
    let same_path = |x: &Traced| -> Option<bool> {
        let path = x.event["request"]["path"].as_str()?;
        (!paths.is_empty()).then(|| paths.iter().any(|p| p == path))
    };
    // Candidates: unused exchanges of that upstream in the window whose
    // nginx line is this message (same call, same errno), and whose
    // request, when both paths are known, is the line's.
    let mut found: Vec<(usize, bool, bool, SystemTime)> = trace
        .exchanges
        .iter()
        .enumerate()
        .filter(|(_, x)| {
            !x.used
                && server.as_ref().is_none_or(|s| *s == x.upstream)
                && x.end >= lo
                && x.end <= hi
                && same_path(x) != Some(false)
        })
        .filter_map(|(i, x)| {
            // A client that left: nginx's line is about the client, the
            // exchange it cut is the kernel's `client_closed` one.
            if line.kind == Kind::ClientSide {
                let left = x.str("outcome") == "client_closed";
                return left.then_some((i, x.worker_pid == pid, true, x.end));
            }
            let nginx_error = x.event["nginx_error"].as_str()?;
            let same_errno = x.event["errno"].as_u64().map(|e| e as u32) == line.errno;
            let compatible = same_errno && family(nginx_error) == family(&line.message);
            compatible.then_some((i, x.worker_pid == pid, nginx_error == line.message, x.end))
        })
        .collect();
    // The same worker first, then the same text, then the earliest: lines
    // come in the order nginx wrote them, each taking the first exchange
    // left (several requests may fail alike within one second).
    found.sort_by_key(|&(_, same_pid, same_text, end)| (!same_pid, !same_text, end));
    let Some(&(best, same_pid, same_text, _)) = found.first() else {
        return;
    };
    let (cause, evidence) = cause_of(line, allowed, &trace.exchanges[best]);
    let rivals = found[1..]
        .iter()
        .filter(|&&(i, p, _, _)| {
            p == same_pid && cause_of(line, allowed, &trace.exchanges[i]).0 != cause
        })
        .count();
    // Another exchange as good as this one (same worker, text and second,
    // a path not telling them apart): the join is then likely, not exact.
    let alike = found[1..]
        .iter()
        .any(|&(_, p, text, _)| p == same_pid && text == same_text);
    out.confidence = if rivals > 0 {
        "ambiguous"
    } else if same_pid && same_text && server.is_some() && !alike {
        "exact"
    } else {
        "likely"
    };
    let x = &trace.exchanges[best];
    out.ruled_out = ruled_out(allowed, &cause, x);
    let x = &mut trace.exchanges[best];
    x.used = true;
    x.conn = line.conn.map(|c| (line.pid, c));
    out.matched_at = Some(best);
    out.matched = Some(x.event.clone());
    out.evidence = evidence;
    out.advice = Some(causes::advice(&cause, line));
    out.cause = Some(cause.verdict.to_string());
    out.detail = Some(cause.detail.to_string());
}

/// The message's call or subject, for telling nginx's messages apart:
/// `connect() to X failed` and `connect() failed` are one message.
fn family(message: &str) -> String {
    let head = message
        .split(" (")
        .next()
        .unwrap_or(message)
        .split(" while ")
        .next()
        .unwrap_or(message);
    match head.split(' ').next() {
        Some(call) if call.ends_with("()") => call.to_string(),
        _ => head.to_string(),
    }
}

/// Whether `upstream` is on this host for sure (loopback or UNIX), where
/// the kernel sees the backend's process too.
fn is_local(upstream: &str) -> bool {
    upstream.starts_with("unix:") || upstream.starts_with("127.") || upstream.starts_with("[::1]")
}

/// The cause the exchange shows, and its evidence.
fn cause_of(line: &LogLine, allowed: &[Cause], x: &Traced) -> (Cause, String) {
    let evidence = x.str("evidence").to_string();
    let verdict = x.str("verdict");
    let peer = &x.event["peer"];
    let detail = match x.str("outcome") {
        "refused" if x.upstream.starts_with("unix:") => "no_listener",
        "refused" if evidence.starts_with("RST") => "rst",
        "refused" => "icmp_reject",
        "not_found" => "no_socket_file",
        "permission_denied" => "permission",
        "backlog_full" => "backlog_full",
        "addr_unavailable" => "ephemeral_ports",
        "fd_limit" => "fd_limit",
        "unreachable" => "unreachable",
        "connect_timeout" if verdict == "backend_overloaded" => "accept_queue_full",
        "connect_timeout" => "syn_lost",
        "no_response" if line.errno == Some(110) && line.kind != Kind::TimedOut => {
            "connection_timed_out"
        }
        "no_response" if verdict == "network" => "loss",
        "no_response" if line.phase() == Phase::Sending => "not_reading",
        "no_response" => "slow",
        "closed_early" | "reset" => match peer["fate"].as_str() {
            Some("oom_killed") => "oom_kill",
            Some("crashed") => "crash",
            Some("killed")
                if !peer["sender_pid"].is_null() && peer["sender_pid"] == peer["parent_pid"] =>
            {
                "own_timeout"
            }
            Some("killed") => "killed",
            _ if x.event["reused"] == true && x.event["timings_us"]["first_byte"].is_null() => {
                "stale_keepalive"
            }
            _ => "closed",
        },
        "worker_died" => "worker_died",
        "client_closed" => "client_closed",
        _ => "",
    };
    let cause = causes::find(verdict, detail)
        .or_else(|| allowed.iter().find(|c| c.detail == detail).copied())
        // The kernel has no finer word (a header too big, a TLS error): the
        // line's own first cause, the exchange's facts as evidence.
        .unwrap_or(allowed[0]);
    (cause, evidence)
}

/// The causes `line` allows other than `chosen` that the facts of `x` rule
/// out, with the fact.
fn ruled_out(allowed: &[Cause], chosen: &Cause, x: &Traced) -> Vec<RuledOut> {
    let peer_died = matches!(
        x.event["peer"]["fate"].as_str(),
        Some("oom_killed" | "crashed" | "killed")
    );
    let fate = x.event["peer"]["fate"].as_str().unwrap_or("");
    let reused = x.event["reused"] == true;
    let retransmits = x.event["tcp"]["retransmits"].as_u64().unwrap_or(0)
        + x.event["tcp"]["peer_retransmits"].as_u64().unwrap_or(0);
    let local = is_local(&x.upstream);
    allowed
        .iter()
        .filter(|c| *c != chosen)
        .filter_map(|c| {
            let why = match (c.detail, chosen.detail) {
                ("rst", "icmp_reject") => {
                    "no TCP RST came back: the refusal was an ICMP error".to_string()
                }
                ("icmp_reject", "rst") => {
                    "the refusal was a TCP RST, not an ICMP error".to_string()
                }
                ("accept_queue_full", "syn_lost") if local => {
                    "the local listener's accept queue was not full".to_string()
                }
                ("syn_lost", "accept_queue_full") => {
                    "the local listener's accept queue was full: its kernel dropped the SYNs"
                        .to_string()
                }
                ("loss", "slow") => {
                    format!("{retransmits} retransmissions, request acknowledged: no loss")
                }
                ("slow", "loss") => "retransmissions account for the wait".to_string(),
                ("stale_keepalive", _) if !reused => {
                    "a new connection, not a kept-alive one".to_string()
                }
                ("closed" | "stale_keepalive" | "middlebox", _) if peer_died => {
                    format!("the backend process died ({fate})")
                }
                ("crash" | "oom_kill" | "own_timeout" | "killed", _) if peer_died => {
                    format!("the backend process was {fate}, not that")
                }
                ("crash" | "oom_kill" | "own_timeout" | "killed", _) if local => {
                    "no backend process on this host died or was killed during the exchange"
                        .to_string()
                }
                ("middlebox", _) if local => {
                    "the upstream is on this host: nothing in between".to_string()
                }
                _ => return None,
            };
            Some(RuledOut {
                cause: format!("{}/{}", c.verdict, c.detail),
                why,
            })
        })
        .collect()
}

/// Fills `retried` in `explained` (lines with their explanations), once
/// the lines near them are explained too: an exchange that explains a line
/// of another request is never this one's retry.
pub fn add_retries(trace: &Trace, explained: &mut [(LogLine, ExplainEvent)]) {
    for (line, e) in explained {
        if let Some(i) = e.matched_at {
            e.retried = retry_after(trace, i, line.conn.map(|c| (line.pid, c)));
        }
    }
}

/// The same worker's next exchange right after exchange `i` (of request
/// `conn`) failed: nginx retrying the request on the next server.
fn retry_after(trace: &Trace, i: usize, conn: Option<(u32, u64)>) -> Option<Retry> {
    let failed = &trace.exchanges[i];
    let until = failed.end + RETRY_WITHIN;
    trace
        .exchanges
        .iter()
        .enumerate()
        .filter(|&(j, x)| {
            j != i
                && x.worker_pid == failed.worker_pid
                && x.start
                    >= failed
                        .end
                        .checked_sub(Duration::from_millis(1))
                        .unwrap_or(failed.end)
                && x.start <= until
                && (x.conn.is_none() || x.conn == conn)
        })
        .min_by_key(|(_, x)| x.start)
        .map(|(_, x)| Retry {
            upstream: x.upstream.clone(),
            outcome: x.str("outcome").to_string(),
            verdict: x.str("verdict").to_string(),
        })
}

/// `no live upstreams`, `upstream server temporarily disabled`: nginx's
/// consequence of earlier failures. The evidence is the failures of the
/// servers the line is about (the named group's, from the configuration;
/// the disabled server's), each within its `fail_timeout`; the cause is
/// the one they share, or the most frequent with the others listed.
/// Without the configuration the group's servers are unknown: every
/// server's failures are listed, marked as such.
fn consequence(
    line: &LogLine,
    trace: &Trace,
    t: SystemTime,
    config: &Config,
    out: &mut ExplainEvent,
) {
    let named = line.upstream_field.as_deref().and_then(server_of);
    let disabled = line.upstream();
    let group = config
        .groups
        .iter()
        .find(|g| line.kind == Kind::NoLiveUpstreams && Some(&g.name) == named.as_ref())
        .or_else(|| {
            let server = disabled.as_ref()?;
            config
                .groups
                .iter()
                .find(|g| g.servers.iter().any(|s| s.addrs.contains(server)))
        });
    // The servers looked at, each with how far back its failures count.
    let window = |ms: u64| Duration::from_millis(ms);
    let servers: Option<Vec<(String, Duration)>> = match (&disabled, group) {
        (Some(server), g) => {
            let ms = g
                .and_then(|g| g.servers.iter().find(|s| s.addrs.contains(server)))
                .map_or(FAIL_TIMEOUT, |s| window(s.fail_timeout_ms));
            Some(vec![(server.clone(), ms)])
        }
        (None, Some(g)) => Some(
            g.servers
                .iter()
                .flat_map(|s| {
                    s.addrs
                        .iter()
                        .map(|a| (a.clone(), window(s.fail_timeout_ms)))
                })
                .collect(),
        ),
        (None, None) => None,
    };
    let hi = t + AFTER;
    let mut counts: BTreeMap<(String, String), u32> = BTreeMap::new();
    for x in &trace.exchanges {
        if !x.event["nginx_error"].is_string() || x.end > hi {
            continue;
        }
        let since = match &servers {
            Some(list) => match list.iter().find(|(s, _)| *s == x.upstream) {
                Some((_, w)) => *w,
                None => continue,
            },
            None => FAIL_TIMEOUT,
        };
        if x.end >= t.checked_sub(since).unwrap_or(t) {
            *counts
                .entry((x.upstream.clone(), x.str("verdict").to_string()))
                .or_default() += 1;
        }
    }
    if counts.is_empty() {
        return;
    }
    // The cause the failures share, else the most frequent.
    let mut by_verdict: BTreeMap<&str, u32> = BTreeMap::new();
    for ((_, verdict), n) in &counts {
        *by_verdict.entry(verdict.as_str()).or_default() += n;
    }
    let (verdict, _) = by_verdict
        .iter()
        .max_by_key(|(v, n)| (**n, std::cmp::Reverse(**v)))
        .map(|(v, n)| (v.to_string(), *n))
        .unwrap_or_default();
    let list: Vec<String> = counts
        .iter()
        .map(|((upstream, verdict), n)| format!("{upstream} {verdict} x{n}"))
        .collect();
    let what = match (group, &disabled) {
        (_, Some(server)) => format!("server {server} reached max_fails"),
        (Some(g), None) => format!("every server of upstream {} reached max_fails", g.name),
        (None, None) => "its servers reached max_fails".to_string(),
    };
    let seen = match (&servers, group) {
        (Some(_), Some(g)) => format!(
            "{what}; failures of upstream {}'s servers within fail_timeout: {}",
            g.name,
            list.join(", ")
        ),
        (Some(_), None) => format!(
            "{what}; its failures within fail_timeout: {}",
            list.join(", ")
        ),
        (None, _) => format!(
            "{what}; the group's servers are unknown (no configuration): the failures \
             of every server in the {} s before: {}",
            FAIL_TIMEOUT.as_secs(),
            list.join(", ")
        ),
    };
    out.evidence = if by_verdict.len() > 1 {
        let others: Vec<String> = by_verdict
            .iter()
            .filter(|(v, _)| **v != verdict)
            .map(|(v, n)| format!("{v} x{n}"))
            .collect();
        format!("{seen} (mostly {verdict}; also {})", others.join(", "))
    } else {
        seen
    };
    let cause = causes::candidates(line)[0];
    out.confidence = if servers.is_some() {
        "likely"
    } else {
        "ambiguous"
    };
    out.advice = Some(causes::advice(&cause, line));
    out.cause = Some(verdict);
    out.detail = Some(cause.detail.to_string());
}

/// The master's `worker process N exited on signal S`.
fn worker_exit(line: &LogLine, trace: &mut Trace, t: SystemTime, out: &mut ExplainEvent) {
    let Some(pid) = line
        .text
        .strip_prefix("worker process ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    let lo = t.checked_sub(BEFORE).unwrap_or(t);
    let Some(x) = trace
        .exits
        .iter_mut()
        .find(|x| !x.used && x.worker_pid == pid && x.end >= lo && x.end <= t + AFTER)
    else {
        return;
    };
    x.used = true;
    let cause = causes::candidates(line)[0];
    out.evidence = x.str("evidence").to_string();
    out.matched = Some(x.event.clone());
    out.confidence = "exact";
    out.advice = Some(causes::advice(&cause, line));
    out.cause = Some(cause.verdict.to_string());
    out.detail = Some(cause.detail.to_string());
}

/// Causes per upstream over the lines explained.
pub struct Tally {
    lines: u64,
    upstream_lines: u64,
    /// `[debug]` lines: never upstream lines.
    debug_lines: u64,
    unparsed: u64,
    explained: u64,
    per_upstream: BTreeMap<String, UpstreamTally>,
    /// Retry chains: the lines of one request (same worker, same `*N`),
    /// and whether another server answered it in the end.
    chains: Chains,
    /// Upstreams tallied by name, the first [`TALLY_UPSTREAMS`].
    names: NameCap,
    /// Events the live trace window let go early (see [`Trace::dropped`]).
    trace_dropped: u64,
}

impl Default for Tally {
    fn default() -> Self {
        Self {
            lines: 0,
            upstream_lines: 0,
            debug_lines: 0,
            unparsed: 0,
            explained: 0,
            per_upstream: BTreeMap::new(),
            chains: Chains::default(),
            names: NameCap::new(TALLY_UPSTREAMS),
            trace_dropped: 0,
        }
    }
}

/// Retry chains counted exactly, while only the most recent
/// [`OPEN_CHAINS`] are remembered (oldest first out) to join later lines.
#[derive(Default)]
struct Chains {
    /// Requests seen.
    count: u64,
    /// Of them, those another server answered in the end.
    answered: u64,
    /// Open chains: request (worker, `*N`) → answered yet.
    open: HashMap<(u32, u64), bool>,
    order: VecDeque<(u32, u64)>,
}

impl Chains {
    /// Counts a line of request `key`; `answered` when its retry was.
    fn add(&mut self, key: (u32, u64), answered: bool) {
        if let Some(was) = self.open.get_mut(&key) {
            if answered && !*was {
                *was = true;
                self.answered += 1;
            }
            return;
        }
        self.count += 1;
        self.answered += u64::from(answered);
        self.open.insert(key, answered);
        self.order.push_back(key);
        if self.order.len() > OPEN_CHAINS
            && let Some(old) = self.order.pop_front()
        {
            self.open.remove(&old);
        }
    }
}

#[derive(Default, Serialize)]
struct UpstreamTally {
    lines: u64,
    causes: BTreeMap<String, u64>,
    retried_ok: u64,
}

/// `{"event":"explain_summary",...}`.
#[derive(Serialize)]
pub struct SummaryEvent {
    event: &'static str,
    lines: u64,
    upstream_lines: u64,
    /// `[debug]` lines: never upstream lines.
    debug_lines: u64,
    unparsed: u64,
    explained: u64,
    chains: u64,
    chains_answered: u64,
    upstreams: Vec<Value>,
    /// Distinct upstreams tallied as `other`.
    folded_upstreams: u64,
    /// Exchanges the live trace window let go early (it was full).
    trace_dropped: u64,
}

impl Tally {
    /// Counts a line that is not an nginx record.
    pub fn unparsed(&mut self) {
        self.lines += 1;
        self.unparsed += 1;
    }

    /// Counts a parsed line that is not about upstreams (a `[debug]` one
    /// apart: it may name an upstream, it is no failure).
    pub fn other(&mut self, line: &LogLine) {
        self.lines += 1;
        if line.kind == Kind::Debug {
            self.debug_lines += 1;
        }
    }

    /// Counts an explained line.
    pub fn add(&mut self, line: &LogLine, e: &ExplainEvent) {
        self.lines += 1;
        self.upstream_lines += 1;
        // By address (or group) alone: the field's URI is the client's choice.
        let name = line
            .upstream()
            .or_else(|| line.upstream_field.as_deref().and_then(server_of))
            .unwrap_or_else(|| "unknown".into());
        let key = self.names.key(&name, self.per_upstream.contains_key(&name));
        if !self.per_upstream.contains_key(key) {
            self.per_upstream
                .insert(key.to_string(), UpstreamTally::default());
        }
        let Some(t) = self.per_upstream.get_mut(key) else {
            return;
        };
        t.lines += 1;
        let cause = match (&e.cause, &e.detail) {
            (Some(c), Some(d)) => format!("{c}/{d}"),
            (Some(c), None) => c.clone(),
            (None, _) => "undecided".into(),
        };
        *t.causes.entry(cause).or_default() += 1;
        if e.cause.is_some() {
            self.explained += 1;
        }
        let answered = e.retried.as_ref().is_some_and(|r| r.outcome == "ok");
        if answered {
            t.retried_ok += 1;
        }
        if let Some(conn) = line.conn {
            self.chains.add((line.pid, conn), answered);
        }
    }

    /// Notes how many events the live trace window let go early.
    pub fn trace_dropped(&mut self, dropped: u64) {
        self.trace_dropped = dropped;
    }

    /// The summary event.
    pub fn to_event(&self) -> SummaryEvent {
        SummaryEvent {
            event: "explain_summary",
            lines: self.lines,
            upstream_lines: self.upstream_lines,
            debug_lines: self.debug_lines,
            unparsed: self.unparsed,
            explained: self.explained,
            chains: self.chains.count,
            chains_answered: self.chains.answered,
            upstreams: self
                .per_upstream
                .iter()
                .map(|(u, t)| {
                    let mut v = serde_json::to_value(t).unwrap_or_default();
                    v["upstream"] = Value::String(u.clone());
                    v
                })
                .collect(),
            folded_upstreams: self.names.folded(),
            trace_dropped: self.trace_dropped,
        }
    }

    /// The summary as text.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "explained {} of {} upstream lines ({} lines read, {} not nginx records, {} \
             debug lines); {} requests ({} answered by another server in the end)\n",
            self.explained,
            self.upstream_lines,
            self.lines,
            self.unparsed,
            self.debug_lines,
            self.chains.count,
            self.chains.answered
        );
        for (upstream, t) in &self.per_upstream {
            let causes: Vec<String> = t.causes.iter().map(|(c, n)| format!("{c} x{n}")).collect();
            out.push_str(&format!(
                "  {}: {}",
                crate::sanitize::line(upstream),
                crate::sanitize::line(&causes.join(", "))
            ));
            if t.retried_ok > 0 {
                out.push_str(&format!(
                    "; {} retried and answered elsewhere",
                    t.retried_ok
                ));
            }
            out.push('\n');
        }
        if let Some(folded) = self.names.folded_text("upstreams") {
            out.push_str(&format!("  ({folded})\n"));
        }
        if self.trace_dropped > 0 {
            out.push_str(&format!(
                "  ({} exchanges let go early: more than {LIVE_EVENTS} (or {LIVE_WHOLE} \
                 failures) in the last 30 s)\n",
                self.trace_dropped
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::nginx::errorlog::parse;

    const LINE: &str = "2026/11/27 01:02:03 [error] 4243#4243: *17 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: localhost, request: \"GET / HTTP/1.1\", upstream: \"http://127.0.0.1:3999/\", host: \"127.0.0.1:8080\"";

    fn refused(time: &str, worker: u32, evidence: &str) -> Value {
        json!({"event":"upstream","time":time,"worker_pid":worker,"upstream":"127.0.0.1:3999",
            "transport":"tcp","outcome":"refused","errno":111,
            "nginx_error":"connect() failed (111: Connection refused) while connecting to upstream",
            "verdict": if evidence.starts_with("RST") {"backend_down"} else {"network"},
            "evidence":evidence,"timings_us":{"connect":200,"total":200},"tcp":{"syn_retransmits":0}})
    }

    fn join() -> Join {
        Join {
            utc_offset_s: 3600,
            since: humantime::parse_rfc3339("2026-11-27T00:00:00Z").ok(),
            pid_map: BTreeMap::new(),
            config: Config::default(),
        }
    }

    #[test]
    fn a_refusal_joins_its_exchange_exactly_and_rules_out_the_firewall() {
        let mut trace = Trace::default();
        trace.add(refused(
            "2026-11-27T00:02:03.400000Z",
            4243,
            "RST in reply to SYN after 0.2 ms",
        ));
        let line = parse(LINE).unwrap();
        let e = explain(&line, &mut trace, &join());
        assert_eq!(
            (e.cause.as_deref(), e.detail.as_deref()),
            (Some("backend_down"), Some("rst"))
        );
        assert_eq!(e.confidence, "exact");
        assert_eq!(e.ruled_out[0].cause, "network/icmp_reject");
        assert!(e.matched.is_some());
        // Used once: the same line again finds nothing.
        let again = explain(&line, &mut trace, &join());
        assert_eq!((again.confidence, again.cause), ("none", None));
        assert!(!again.candidates.is_empty());
    }

    #[test]
    fn an_icmp_refusal_is_the_firewall_and_outside_the_window_nothing_matches() {
        let mut trace = Trace::default();
        trace.add(refused(
            "2026-11-27T00:02:03.900000Z",
            4243,
            "socket error 111 (Connection refused) after 0.3 ms and 0 SYN retransmits",
        ));
        trace.add(refused(
            "2026-11-27T00:02:09.000000Z",
            4243,
            "RST in reply to SYN after 0.2 ms",
        ));
        let line = parse(LINE).unwrap();
        let e = explain(&line, &mut trace, &join());
        assert_eq!(e.detail.as_deref(), Some("icmp_reject"));
        assert!(e.advice.unwrap().contains("REJECT"));
        let again = explain(&line, &mut trace, &join());
        assert_eq!(again.confidence, "none", "the other one is 6 s later");
    }

    #[test]
    fn both_forms_of_a_connect_failure_are_one_message() {
        assert_eq!(
            family("connect() failed (111: Connection refused) while connecting to upstream"),
            "connect()"
        );
        assert_eq!(
            family("connect() to unix:/run/x.sock failed (2: No such file or directory)"),
            "connect()"
        );
        assert_eq!(
            family(
                "upstream timed out (110: Connection timed out) while sending request to upstream"
            ),
            "upstream timed out"
        );
        assert_ne!(
            family("upstream prematurely closed connection while reading upstream"),
            family("upstream timed out")
        );
    }

    #[test]
    fn a_line_before_the_recording_is_marked() {
        let mut j = join();
        j.since = humantime::parse_rfc3339("2026-11-27T01:00:00Z").ok();
        let e = explain(&parse(LINE).unwrap(), &mut Trace::default(), &j);
        assert!(e.before_recording);
        assert_eq!(e.confidence, "none");
    }

    #[test]
    fn a_failure_followed_by_another_server_answering_is_a_retry() {
        let mut trace = Trace::default();
        trace.add(refused(
            "2026-11-27T00:02:03.400000Z",
            4243,
            "RST in reply to SYN after 0.2 ms",
        ));
        trace.add(
            json!({"event":"upstream","time":"2026-11-27T00:02:03.402000Z","worker_pid":4243,
            "upstream":"127.0.0.1:4000","outcome":"ok","verdict":"healthy","evidence":"",
            "timings_us":{"total":1500}}),
        );
        let line = parse(LINE).unwrap();
        let e = explain(&line, &mut trace, &join());
        let mut batch = vec![(line, e)];
        add_retries(&trace, &mut batch);
        let (line, e) = &batch[0];
        let r = e.retried.as_ref().unwrap();
        assert_eq!(
            (r.upstream.as_str(), r.outcome.as_str()),
            ("127.0.0.1:4000", "ok")
        );
        let mut tally = Tally::default();
        tally.add(line, e);
        assert!(tally.to_text().contains("1 retried and answered elsewhere"));
    }

    #[test]
    fn the_next_request_failing_right_after_is_not_a_retry() {
        // Two requests back to back on one worker, both refused: the second
        // exchange explains its own line (*18), so it is no retry of *17.
        let mut trace = Trace::default();
        trace.add(refused(
            "2026-11-27T00:02:03.400000Z",
            4243,
            "RST in reply to SYN after 0.2 ms",
        ));
        trace.add(refused(
            "2026-11-27T00:02:03.401000Z",
            4243,
            "RST in reply to SYN after 0.2 ms",
        ));
        let first = parse(LINE).unwrap();
        let second = parse(&LINE.replace("*17", "*18")).unwrap();
        let mut batch = Vec::new();
        for line in [first, second] {
            let e = explain(&line, &mut trace, &join());
            batch.push((line, e));
        }
        add_retries(&trace, &mut batch);
        assert!(batch.iter().all(|(_, e)| e.retried.is_none()), "{batch:?}");
    }

    /// LINE for worker `pid`, request `*conn`, to `upstream` (a URL).
    fn line_to(pid: u32, conn: u64, upstream: &str) -> LogLine {
        let text = LINE
            .replace("4243#4243: *17", &format!("{pid}#{pid}: *{conn}"))
            .replace("http://127.0.0.1:3999/", upstream);
        parse(&text).unwrap()
    }

    #[test]
    fn tallies_key_by_address_not_uri_and_fold_past_the_cap() {
        let mut trace = Trace::default();
        let mut tally = Tally::default();
        // One upstream, a new URI per request: one row.
        for conn in 0..1_000 {
            let line = line_to(
                4243,
                conn,
                &format!("http://127.0.0.1:3999/item/{conn}?q=x"),
            );
            let e = explain(&line, &mut trace, &join());
            tally.add(&line, &e);
        }
        // A group named in `no live upstreams`-style fields: by its name.
        let group = line_to(4243, 5_000, "http://backend/search?q=1");
        let e = explain(&group, &mut trace, &join());
        tally.add(&group, &e);
        assert_eq!(
            tally.per_upstream.keys().collect::<Vec<_>>(),
            ["127.0.0.1:3999", "backend"]
        );
        assert_eq!(tally.per_upstream["127.0.0.1:3999"].lines, 1_000);
        // A thousand UNIX paths: the first 256 rows, then `other`.
        for i in 0..1_000 {
            let line = line_to(4243, 10_000 + i, &format!("http://unix:/tmp/n{i}.sock:/x"));
            let e = explain(&line, &mut trace, &join());
            tally.add(&line, &e);
        }
        assert_eq!(tally.per_upstream.len(), TALLY_UPSTREAMS + 1);
        let event = tally.to_event();
        assert_eq!(event.folded_upstreams, 746);
        assert_eq!(
            tally.per_upstream.values().map(|t| t.lines).sum::<u64>(),
            2_001
        );
        assert_eq!((event.upstream_lines, event.chains), (2_001, 2_001));
        assert!(
            tally
                .to_text()
                .contains("(746 further upstreams (past the first 256) counted as \"other\")"),
            "{}",
            tally.to_text()
        );
    }

    #[test]
    fn chains_are_counted_exactly_while_only_recent_ones_are_kept() {
        let mut chains = Chains::default();
        for conn in 0..200_000 {
            chains.add((1, conn), false);
            // Its retry answered, a line later.
            chains.add((1, conn), conn % 2 == 0);
        }
        assert_eq!((chains.count, chains.answered), (200_000, 100_000));
        assert_eq!(chains.open.len(), OPEN_CHAINS);
        assert_eq!(chains.order.len(), OPEN_CHAINS);
        // A recent chain still joins its later line.
        chains.add((1, 199_999), true);
        assert_eq!((chains.count, chains.answered), (200_000, 100_001));
    }

    #[test]
    fn a_live_window_holds_at_most_its_cap_and_counts_the_rest() {
        let mut trace = Trace::live();
        for i in 0..(LIVE_EVENTS as u64 + 500) {
            trace.add(
                json!({"event":"upstream","time":"2026-11-27T00:02:03.400000Z",
                "worker_pid":4243,"upstream":format!("127.0.0.1:{}", i % 60_000),
                "outcome":"ok","verdict":"healthy","timings_us":{"total":1500}}),
            );
        }
        assert_eq!(trace.exchanges.len(), LIVE_EVENTS);
        assert_eq!(trace.dropped(), 500);
        // Failures are whole events (about 4 KB): fewer are held.
        let mut failures = Trace::live();
        for _ in 0..(LIVE_WHOLE + 300) {
            failures.add(refused("2026-11-27T00:02:03.400000Z", 1, "RST"));
        }
        assert_eq!(failures.exchanges.len(), LIVE_WHOLE);
        assert_eq!((failures.whole, failures.dropped()), (LIVE_WHOLE, 300));
        // The oldest go first: the newest failure still explains its line.
        let e = explain(&parse(LINE).unwrap(), &mut failures, &join());
        assert_eq!(e.confidence, "likely", "{e:?}");
        // A recording is whole: nothing dropped.
        let mut whole = Trace::default();
        for _ in 0..1_000 {
            whole.add(refused("2026-11-27T00:02:03.400000Z", 1, "RST"));
        }
        assert_eq!((whole.exchanges.len(), whole.dropped()), (1_000, 0));
    }
}
