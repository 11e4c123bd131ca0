//! nginx error-log lines: parsed into their parts and classified by what
//! they say about an upstream. The reference is nginx's source:
//! `ngx_log_error_core` (`src/core/ngx_log.c`) writes
//! `YYYY/MM/DD HH:MM:SS [level] PID#TID: *CONN message`, the message ending
//! in ` (errno: text)` when there is an error, then the request's context
//! (`ngx_http_log_error` in `src/http/ngx_http_request.c`): ` while ACTION`,
//! `, client: ...`, `, server: ...`, `, request: "..."`, `, upstream:
//! "..."`, `, host: "..."`, `, referrer: "..."`. A line may be cut at
//! nginx's 2048-byte limit, and may carry a syslog or container-log prefix
//! (or be a Docker JSON log record): the nginx part is found inside it.
use std::time::{Duration, SystemTime};

/// The levels nginx writes, in its order.
const LEVELS: [&str; 8] = [
    "emerg", "alert", "crit", "error", "warn", "notice", "info", "debug",
];

/// One parsed error-log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// The line as read (without its line ending).
    pub raw: String,
    /// nginx's local time, to the second, as written (`2026/11/27 01:02:03`).
    pub local_time: String,
    /// `error`, `warn`...
    pub level: String,
    /// The process that wrote it (in its own pid namespace).
    pub pid: u32,
    /// The connection number (`*N`), shared by every line of a request and
    /// its retries.
    pub conn: Option<u64>,
    /// The message as nginx built it: text, errno and action, without the
    /// request's context (what ngx-trace's `nginx_error` predicts).
    pub message: String,
    /// The message's text alone, without errno or action.
    pub text: String,
    /// The errno nginx appended.
    pub errno: Option<u32>,
    /// The `while ...` action, without `while `.
    pub action: Option<String>,
    /// The `upstream: "..."` field, as written.
    pub upstream_field: Option<String>,
    /// `client: ...`.
    pub client: Option<String>,
    /// `server: ...`.
    pub server: Option<String>,
    /// `request: "..."`.
    pub request: Option<String>,
    /// `host: "..."`.
    pub host: Option<String>,
    /// What it says.
    pub kind: Kind,
}

/// Where in an exchange nginx was, from its `while ...` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// `connecting to upstream`.
    Connecting,
    /// `sending request to upstream`.
    Sending,
    /// `reading response header from upstream`.
    ReadingHeader,
    /// `reading upstream` (the body).
    ReadingBody,
    /// `SSL handshaking to upstream`.
    SslHandshake,
    /// Another action, or none.
    Other,
}

impl Phase {
    /// The phase an action names.
    pub fn of(action: Option<&str>) -> Self {
        match action {
            Some("connecting to upstream") => Self::Connecting,
            Some("sending request to upstream") => Self::Sending,
            Some("reading response header from upstream") => Self::ReadingHeader,
            Some("reading upstream") => Self::ReadingBody,
            Some("SSL handshaking to upstream") => Self::SslHandshake,
            _ => Self::Other,
        }
    }
}

/// What a line says about an upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// `connect() failed (N: ...)` or `connect() to ADDR failed (N: ...)`,
    /// or `bind(ADDR) failed (N: ...)` (`proxy_bind`) before it.
    ConnectFailed,
    /// `socket() failed (N: ...)` (the worker out of descriptors).
    SocketFailed,
    /// `upstream timed out (110: ...)`: nginx's own timer.
    TimedOut,
    /// `upstream prematurely closed connection` (also `... FastCGI
    /// stdout`, `... FastCGI request`).
    PrematurelyClosed,
    /// `recv()`, `readv()`, `writev()`, `send()`, `sendfile()`... failed
    /// with an errno: the name of the call.
    IoFailed(String),
    /// `no live upstreams`: every server of the group is marked down.
    NoLiveUpstreams,
    /// `upstream server temporarily disabled`: a server reached `max_fails`.
    ServerDisabled,
    /// `upstream sent too big header`.
    TooBigHeader,
    /// `upstream sent invalid header` and other malformed answers.
    InvalidResponse,
    /// `FastCGI sent in stderr: "..."`: the application's own message.
    FastcgiStderr,
    /// gRPC: `upstream rejected request with error N`, and the like.
    Grpc,
    /// A resolver failure (`... could not be resolved`, `no resolver
    /// defined to resolve`...).
    Resolver,
    /// `SSL_do_handshake() failed` and other SSL errors talking upstream.
    Ssl,
    /// `worker process N exited on signal S` / `exited with code C` (the
    /// master).
    WorkerExited,
    /// The client left, or would not read, while nginx talked to its
    /// upstream: `client prematurely closed connection[, so upstream
    /// connection is closed too]` (also as `epoll_wait()`/`kevent()
    /// reported that ...`), HTTP/2 `client canceled stream`, `client timed
    /// out`, and a write failing `while sending to client` (a 499, or a
    /// response cut short).
    ClientSide,
    /// nginx could not use its temporary file for a response larger than
    /// its buffers (or the cache or `proxy_store` file it is renamed to):
    /// `open() "<proxy_temp>/..." failed (13: ...)`, a `mkdir()`,
    /// `write()`, `pwritev()`, `rename()`... of such a file failed or wrote
    /// short (a permission, a missing directory, a full disk).
    TempFile,
    /// `an upstream response is buffered to a temporary file`: a warning,
    /// not a failure (the response went to disk).
    BufferedToDisk,
    /// `N worker_connections are not enough`: the worker had no connection
    /// left for the upstream.
    WorkerConnections,
    /// The response cache: a cache file nginx could not use (`cache file
    /// "..." has too long header`...), the keys zone full (`could not
    /// allocate node in cache keys zone`), `cache lock timeout`, a stalled
    /// update, a cache key larger than the buffer.
    Cache,
    /// The kernel refused a socket option nginx sets on an upstream
    /// connection: `setsockopt(IP_TRANSPARENT) failed` (`proxy_bind ...
    /// transparent`), `setsockopt(SO_KEEPALIVE) failed, ignored`...
    SocketOption,
    /// nginx could not build the request to the upstream: an address made
    /// from variables at run time (`invalid host in upstream "..."`, `no
    /// port in upstream`), a `proxy_bind` address, a memcached key, or a
    /// client's request too long for the protocol (`too long http2 header`,
    /// `uwsgi request is too big`).
    RequestBuild,
    /// nginx's own alert about itself: a length mismatch, a recycled
    /// buffer, a thread-pool or aio operation that took too long.
    NginxInternal,
    /// Another line about an upstream (its action or context names one).
    OtherUpstream,
    /// A `[debug]` line: nginx's trace of its own steps, never an
    /// upstream failure, whatever it names.
    Debug,
    /// Not about upstreams.
    Unrelated,
}

impl Kind {
    /// The JSON spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::ConnectFailed => "connect_failed",
            Self::SocketFailed => "socket_failed",
            Self::TimedOut => "timed_out",
            Self::PrematurelyClosed => "prematurely_closed",
            Self::IoFailed(_) => "io_failed",
            Self::NoLiveUpstreams => "no_live_upstreams",
            Self::ServerDisabled => "server_disabled",
            Self::TooBigHeader => "too_big_header",
            Self::InvalidResponse => "invalid_response",
            Self::FastcgiStderr => "fastcgi_stderr",
            Self::Grpc => "grpc",
            Self::Resolver => "resolver",
            Self::Ssl => "ssl",
            Self::WorkerExited => "worker_exited",
            Self::ClientSide => "client_side",
            Self::TempFile => "temp_file",
            Self::BufferedToDisk => "buffered_to_disk",
            Self::WorkerConnections => "worker_connections",
            Self::Cache => "cache",
            Self::SocketOption => "socket_option",
            Self::RequestBuild => "request_build",
            Self::NginxInternal => "nginx_internal",
            Self::OtherUpstream => "other_upstream",
            Self::Debug => "debug",
            Self::Unrelated => "unrelated",
        }
    }
}

impl LogLine {
    /// Whether the line is about an upstream (or a worker's death, which
    /// takes exchanges with it).
    pub fn is_upstream(&self) -> bool {
        !matches!(self.kind, Kind::Unrelated | Kind::Debug)
    }

    /// The paths the line names for its request: the URI nginx sent
    /// upstream (the `upstream:` field's, for `proxy_pass`) and the
    /// client's (`request:`), without queries; an exchange whose request's
    /// path is none of them served another request.
    pub fn paths(&self) -> Vec<String> {
        let mut paths = Vec::new();
        if let Some(field) = &self.upstream_field
            && let Some((_, rest)) = field.split_once("://")
        {
            let uri = match rest.strip_prefix("unix:") {
                Some(unix) => unix.split_once(':').map(|(_, uri)| uri),
                None => rest.find('/').map(|at| &rest[at..]),
            };
            if let Some(uri) = uri.filter(|u| u.starts_with('/')) {
                paths.push(uri.split('?').next().unwrap_or(uri).to_string());
            }
        }
        if let Some(request) = &self.request
            && let Some(uri) = request.split(' ').nth(1)
            && uri.starts_with('/')
        {
            paths.push(uri.split('?').next().unwrap_or(uri).to_string());
        }
        paths
    }

    /// The phase nginx was in.
    pub fn phase(&self) -> Phase {
        Phase::of(self.action.as_deref())
    }

    /// The upstream server as ngx-trace names it (`127.0.0.1:8080`,
    /// `[::1]:8080`, `unix:/run/php/php8.2-fpm.sock`), from the `upstream:`
    /// field; `None` without one, or when it names a group (`no live
    /// upstreams`).
    pub fn upstream(&self) -> Option<String> {
        let field = self.upstream_field.as_deref()?;
        if self.kind == Kind::NoLiveUpstreams {
            return None;
        }
        server_of(field)
    }

    /// The module that talked to the upstream, from the field's scheme:
    /// `proxy`, `fastcgi`, `uwsgi`, `scgi`, `grpc` (directive prefixes).
    pub fn module(&self) -> Option<&'static str> {
        let field = self.upstream_field.as_deref()?;
        let scheme = field.split("://").next()?;
        Some(match scheme {
            "http" | "https" => "proxy",
            "fastcgi" => "fastcgi",
            "uwsgi" | "suwsgi" => "uwsgi",
            "scgi" => "scgi",
            "grpc" | "grpcs" => "grpc",
            _ => return None,
        })
    }

    /// The line's time as UTC, for a process whose local time is
    /// `utc_offset_s` seconds ahead of UTC.
    pub fn time(&self, utc_offset_s: i64) -> Option<SystemTime> {
        let rfc = format!(
            "{}T{}Z",
            self.local_time.get(..10)?.replace('/', "-"),
            self.local_time.get(11..19)?
        );
        let local = humantime::parse_rfc3339(&rfc).ok()?;
        let shift = Duration::from_secs(utc_offset_s.unsigned_abs());
        if utc_offset_s >= 0 {
            local.checked_sub(shift)
        } else {
            local.checked_add(shift)
        }
    }
}

/// The server in an `upstream:` field: the scheme and the URI dropped.
/// `http://127.0.0.1:8080/a` → `127.0.0.1:8080`; `fastcgi://unix:/run/x.sock:`
/// → `unix:/run/x.sock`; `http://[::1]:8080/` → `[::1]:8080`.
pub fn server_of(field: &str) -> Option<String> {
    let rest = field.split_once("://").map_or(field, |(_, rest)| rest);
    if let Some(path) = rest.strip_prefix("unix:") {
        // nginx writes `unix:PATH:` then the URI.
        let path = path.split(':').next().unwrap_or(path);
        return (!path.is_empty()).then(|| format!("unix:{path}"));
    }
    let server = rest.split('/').next().unwrap_or(rest);
    (!server.is_empty()).then(|| server.to_string())
}

/// Parses one line; `None` when it holds no nginx error-log record.
pub fn parse(line: &str) -> Option<LogLine> {
    let line = line.trim_end_matches(['\n', '\r']);
    let line = &*without_queries(line);
    let unwrapped = docker_json_log(line);
    let text = unwrapped.as_deref().unwrap_or(line);
    let start = find_record(text)?;
    let record = &text[start..];
    let local_time = record.get(..19)?.to_string();
    // `[level] `
    let after_time = record.get(20..)?;
    let level_end = after_time.find("] ")?;
    let level = after_time.get(1..level_end)?.to_string();
    let rest = &after_time[level_end + 2..];
    // `PID#TID: `
    let (ids, rest) = rest.split_once(": ")?;
    let (pid, tid) = ids.split_once('#')?;
    let pid: u32 = pid.parse().ok()?;
    tid.parse::<u64>().ok()?;
    let (conn, message) = match rest.strip_prefix('*') {
        Some(after) => {
            let (n, message) = after.split_once(' ').unwrap_or((after, ""));
            (Some(n.parse().ok()?), message)
        }
        None => (None, rest),
    };
    let (message, context) = split_context(message);
    let full_message = message.to_string();
    let (message, action) = match message.rfind(" while ") {
        // An action never holds a quote: one after it is the message's own.
        Some(at) if !message[at..].contains('"') => (
            &message[..at],
            Some(message[at + " while ".len()..].to_string()),
        ),
        _ => (message, None),
    };
    let (text_part, errno) = split_errno(message);
    let field = |name: &str| context_field(context, name);
    let mut parsed = LogLine {
        raw: line.to_string(),
        local_time,
        level,
        pid,
        conn,
        message: full_message,
        text: text_part.to_string(),
        errno,
        action,
        upstream_field: field("upstream"),
        client: field("client"),
        server: field("server"),
        request: field("request"),
        host: field("host"),
        kind: Kind::Unrelated,
    };
    parsed.kind = classify(&parsed);
    Some(parsed)
}

/// The `log` string of a Docker `json-file` record, if `line` is one.
fn docker_json_log(line: &str) -> Option<String> {
    if !line.starts_with('{') {
        return None;
    }
    let value: serde_json::Value = serde_json::from_str(line).ok()?;
    value.get("log")?.as_str().map(str::to_string)
}

/// Where the nginx record starts in `text`: the first
/// `YYYY/MM/DD HH:MM:SS [level] ` (anything before is a prefix).
fn find_record(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text.get(from..)?.find('/') {
        let slash = from + at;
        from = slash + 1;
        let Some(start) = slash.checked_sub(4) else {
            continue;
        };
        if is_timestamp(&bytes[start..]) && level_follows(&text[start + 19..]) {
            return Some(start);
        }
    }
    None
}

/// Whether `b` starts with `DDDD/DD/DD DD:DD:DD`.
fn is_timestamp(b: &[u8]) -> bool {
    const SHAPE: &[u8; 19] = b"0000/00/00 00:00:00";
    b.len() >= 19
        && SHAPE.iter().zip(b).all(|(&s, &c)| match s {
            b'0' => c.is_ascii_digit(),
            s => s == c,
        })
}

/// Whether `rest` starts with ` [level] `.
fn level_follows(rest: &str) -> bool {
    LEVELS.iter().any(|level| {
        rest.strip_prefix(" [")
            .and_then(|r| r.strip_prefix(level))
            .is_some_and(|r| r.starts_with("] "))
    })
}

/// Splits the message from the request context (`, client: ...`). A
/// FastCGI stderr message quotes the application's text, which may hold
/// anything: the context is searched after its closing `" while `.
fn split_context(message: &str) -> (&str, &str) {
    let search_from = message.rfind("\" while ").unwrap_or(0);
    match message[search_from..].find(", client: ") {
        Some(at) => message.split_at(search_from + at),
        None => (message, ""),
    }
}

/// Splits ` (N: text)` off the end of `message`.
fn split_errno(message: &str) -> (&str, Option<u32>) {
    if !message.ends_with(')') {
        return (message, None);
    }
    let Some(open) = message.rfind(" (") else {
        return (message, None);
    };
    let inside = &message[open + 2..message.len() - 1];
    match inside.split_once(": ").map(|(n, _)| n.parse::<u32>()) {
        Some(Ok(errno)) => (&message[..open], Some(errno)),
        _ => (message, None),
    }
}

/// `line` without the query strings it quotes: nginx writes the client's
/// request line, the upstream URL and the referrer whole, and ngx-trace
/// keeps of a request its method and path only. A query runs from `?` to
/// the next space, quote or backslash (a Docker JSON log's escaped quote).
pub fn without_queries(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains('?') {
        return std::borrow::Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len());
    let mut in_query = false;
    for c in line.chars() {
        if c == '?' {
            in_query = true;
        } else if in_query && matches!(c, ' ' | '"' | '\\') {
            in_query = false;
        }
        if !in_query {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// The value of `, name: value` in `context` (quotes removed). Values are
/// cut at the next field, so a line cut short keeps the fields before.
fn context_field(context: &str, name: &str) -> Option<String> {
    let key = format!(", {name}: ");
    let at = context.find(&key)? + key.len();
    let value = &context[at..];
    let value = if let Some(quoted) = value.strip_prefix('"') {
        match quoted.find("\", ") {
            Some(end) => &quoted[..end],
            None => quoted.strip_suffix('"').unwrap_or(quoted),
        }
    } else {
        value.split(", ").next().unwrap_or(value)
    };
    Some(value.to_string())
}

/// What a parsed line says.
fn classify(line: &LogLine) -> Kind {
    let text = line.text.as_str();
    // nginx's own trace (`http upstream request`, `test location`, resolver
    // steps): never a failure, and written without the `while ...` context.
    if line.level == "debug" {
        return Kind::Debug;
    }
    let upstream_related = line.upstream_field.is_some()
        || line
            .action
            .as_deref()
            .is_some_and(|a| a.contains("upstream"));
    // A worker that ended by a signal or failed; `exited with code 0` is a
    // graceful exit (reload, shutdown).
    if text.starts_with("worker process ")
        && (text.contains(" exited on signal ")
            || text.contains(" exited with code ") && !text.ends_with(" exited with code 0"))
    {
        return Kind::WorkerExited;
    }
    if text.starts_with("no live upstreams") {
        return Kind::NoLiveUpstreams;
    }
    if text.starts_with("upstream server temporarily disabled") {
        return Kind::ServerDisabled;
    }
    if text.contains("could not be resolved")
        || text.starts_with("no resolver defined")
        || text.contains("resolver")
        || line
            .action
            .as_deref()
            .is_some_and(|a| a.starts_with("resolving"))
    {
        return Kind::Resolver;
    }
    // Always from an upstream, even when its text spans several physical
    // lines and the context is on the last one.
    if text.starts_with("FastCGI sent in stderr") {
        return Kind::FastcgiStderr;
    }
    if text.contains("worker_connections are not enough") {
        return Kind::WorkerConnections;
    }
    if text.starts_with("an upstream response is buffered to a temporary file") {
        return Kind::BufferedToDisk;
    }
    // Written before the upstream is chosen, or with the cycle's log: no
    // `upstream:` field nor `while ...` to go by, but the text is nginx's
    // upstream and cache code's alone.
    if is_cache(text) {
        return Kind::Cache;
    }
    if is_request_build(text) {
        return Kind::RequestBuild;
    }
    if !upstream_related {
        return Kind::Unrelated;
    }
    if text.starts_with("setsockopt(")
        || text.starts_with("ioctl(FIONBIO) failed")
        || text.starts_with("could not enable transparent proxying")
    {
        return Kind::SocketOption;
    }
    if is_nginx_internal(text) {
        return Kind::NginxInternal;
    }
    if is_client_side(text, line.action.as_deref()) {
        return Kind::ClientSide;
    }
    if is_temp_file(text) {
        return Kind::TempFile;
    }
    // `bind(ADDR) failed`: `proxy_bind`'s address before the connect (no
    // free local port, an address not on the host): a connect that failed.
    if (text.starts_with("connect() ") || text.starts_with("bind(")) && text.contains("failed") {
        return Kind::ConnectFailed;
    }
    if text.starts_with("socket() failed") {
        return Kind::SocketFailed;
    }
    if text.starts_with("upstream timed out") {
        return Kind::TimedOut;
    }
    if text.starts_with("upstream prematurely closed")
        || text.starts_with("kevent() reported that upstream closed")
    {
        return Kind::PrematurelyClosed;
    }
    if text.starts_with("upstream sent too big header") {
        return Kind::TooBigHeader;
    }
    if text.starts_with("SSL_")
        || text.starts_with("upstream SSL certificate")
        || text.contains("SSL") && line.phase() == Phase::SslHandshake
    {
        return Kind::Ssl;
    }
    if text.contains("grpc")
        || text.contains("gRPC")
        || text.starts_with("upstream rejected request")
    {
        return Kind::Grpc;
    }
    // Answers that break the protocol: a malformed header or body, HTTP/2
    // flow control, data before the TLS handshake, a memcached reply.
    if text.starts_with("upstream sent")
        || text.starts_with("upstream response")
        || text.starts_with("upstream violated")
        || text.starts_with("upstream prematurely sent response")
        || text.starts_with("invalid header after joining FastCGI records")
        || text.starts_with("memcached sent")
        || text.ends_with(" was not found by memcached")
    {
        return Kind::InvalidResponse;
    }
    if let Some((call, _)) = text.split_once("() failed")
        && line.errno.is_some()
        && !call.contains(' ')
    {
        return Kind::IoFailed(format!("{call}()"));
    }
    Kind::OtherUpstream
}

/// Whether `text` (said `while action`) is about the client, not the
/// upstream: it left, cancelled its stream, or would not read in time.
fn is_client_side(text: &str, action: Option<&str>) -> bool {
    let about_client = [
        "client prematurely closed",
        "epoll_wait() reported that client prematurely closed",
        "kevent() reported that client prematurely closed",
        "client canceled stream",
        "client terminated stream",
        "client timed out",
    ];
    about_client.iter().any(|p| text.starts_with(p))
        || action.is_some_and(|a| a == "sending to client") && text.contains("() failed")
}

/// Whether `text` is about the response cache (`ngx_http_file_cache.c`,
/// the cache parts of `ngx_http_upstream.c`).
fn is_cache(text: &str) -> bool {
    text.starts_with("cache file \"")
        || text.starts_with("cache lock timeout")
        || text.starts_with("stalled cache updating")
        || text.starts_with("ignore long locked inactive cache entry")
        || text.contains(" in cache keys zone \"")
        || text.contains("is not enough for cache key")
        || text.starts_with("cache \"") && text.ends_with("\" not found")
}

/// Whether `text` says nginx could not build the request to the upstream
/// (its address, bind address or key from variables; a request too long
/// for the upstream's protocol).
fn is_request_build(text: &str) -> bool {
    const PREFIXES: &[&str] = &[
        "invalid URL prefix in \"",
        "zero length URI to proxy",
        "no port in upstream \"",
        "invalid local address \"",
        "the \"$memcached_key\" variable is not set",
        "no upstream configuration",
        "connection upgrade in subrequest",
        "suwsgi protocol requires SSL support",
        "too long http2 ",
        "uwsgi request is too ",
        "fastcgi request record is too big",
        // `fastcgi_split_path_info`'s regular expression failed to run.
        "pcre2_match() failed",
        "pcre_exec() failed",
    ];
    PREFIXES.iter().any(|p| text.starts_with(p))
        // `ngx_parse_url`'s reasons: `invalid host in upstream "..."`...
        || text.contains(" in upstream \"") && !text.starts_with("upstream ")
}

/// Whether `text` is an alert nginx raises about its own state or its
/// thread pool, not about the upstream's answer.
fn is_nginx_internal(text: &str) -> bool {
    text.ends_with("request length mismatch")
        || text.starts_with("recycled buffer in pipe out chain")
        || text.starts_with("no buffer space in HTTP/2 create request")
        || text.starts_with("no connection data found for keepalive http2 connection")
        || text.ends_with("operation took too long")
        || text.starts_with("thread pool \"")
}

/// Whether `text` is a failed call on one of nginx's own files (a quoted
/// path after the call): the temporary file of a buffered response, the
/// cache file or `proxy_store` file it becomes.
fn is_temp_file(text: &str) -> bool {
    const FILE_CALLS: &[&str] = &[
        "open() \"",
        "mkdir() \"",
        "write() \"",
        "writev() \"",
        "pwrite() \"",
        "pwritev() \"",
        "lseek() \"",
        "read() \"",
        "pread() \"",
        "rename() \"",
        "unlink() \"",
        "fstat() \"",
        "close() \"",
    ];
    FILE_CALLS.iter().any(|c| text.starts_with(c))
        && (text.contains(" failed") || text.contains(" has written only "))
        // A short read of a cache file: `pread() read only N of M from "..."`.
        || (text.starts_with("pread() read only ") || text.starts_with("read() read only "))
}

#[cfg(test)]
mod tests {
    use super::*;

    const REFUSED: &str = "2026/11/27 01:02:03 [error] 4243#4243: *17 connect() failed (111: Connection refused) while connecting to upstream, client: 127.0.0.1, server: localhost, request: \"GET /api?x=1 HTTP/1.1\", upstream: \"http://127.0.0.1:3999/api?x=1\", host: \"127.0.0.1:8080\"";

    #[test]
    fn a_refused_connect_gives_every_part() {
        let l = parse(REFUSED).unwrap();
        assert_eq!(l.local_time, "2026/11/27 01:02:03");
        assert_eq!((l.level.as_str(), l.pid, l.conn), ("error", 4243, Some(17)));
        assert_eq!(l.text, "connect() failed");
        assert_eq!(l.errno, Some(111));
        assert_eq!(l.action.as_deref(), Some("connecting to upstream"));
        assert_eq!(l.phase(), Phase::Connecting);
        assert_eq!(l.client.as_deref(), Some("127.0.0.1"));
        assert_eq!(l.server.as_deref(), Some("localhost"));
        // The query strings are gone from every part, the line included.
        assert_eq!(l.request.as_deref(), Some("GET /api HTTP/1.1"));
        assert_eq!(
            l.upstream_field.as_deref(),
            Some("http://127.0.0.1:3999/api")
        );
        assert!(!l.raw.contains("x=1"), "{}", l.raw);
        assert_eq!(l.host.as_deref(), Some("127.0.0.1:8080"));
        assert_eq!(l.upstream().as_deref(), Some("127.0.0.1:3999"));
        assert_eq!(l.module(), Some("proxy"));
        assert_eq!(l.kind, Kind::ConnectFailed);
    }

    #[test]
    fn upstream_fields_name_the_server_for_every_module() {
        for (field, server, module) in [
            (
                "fastcgi://unix:/run/php/php8.2-fpm.sock:",
                "unix:/run/php/php8.2-fpm.sock",
                "fastcgi",
            ),
            (
                "http://unix:/tmp/app.sock:/x",
                "unix:/tmp/app.sock",
                "proxy",
            ),
            ("http://[::1]:8080/", "[::1]:8080", "proxy"),
            ("uwsgi://10.0.0.5:3031", "10.0.0.5:3031", "uwsgi"),
            ("scgi://127.0.0.1:4000", "127.0.0.1:4000", "scgi"),
            ("grpc://127.0.0.1:50051", "127.0.0.1:50051", "grpc"),
        ] {
            let line = format!(
                "2026/11/27 01:02:03 [error] 1#1: *2 upstream timed out (110: Connection timed out) while reading response header from upstream, client: 1.2.3.4, server: _, request: \"GET / HTTP/1.1\", upstream: \"{field}\", host: \"h\""
            );
            let l = parse(&line).unwrap();
            assert_eq!(l.upstream().as_deref(), Some(server), "{field}");
            assert_eq!(l.module(), Some(module), "{field}");
            assert_eq!(
                (l.kind.clone(), l.phase()),
                (Kind::TimedOut, Phase::ReadingHeader)
            );
        }
    }

    #[test]
    fn prefixes_of_syslog_and_container_logs_are_skipped() {
        let syslog = format!("<11>Nov 27 01:02:03 web1 nginx: {REFUSED}");
        let cri = format!("2026-11-27T01:02:03.123456789Z stderr F {REFUSED}");
        let docker =
            serde_json::json!({"log": format!("{REFUSED}\n"), "stream": "stderr"}).to_string();
        for line in [syslog, cri, docker] {
            let l = parse(&line).unwrap_or_else(|| panic!("{line}"));
            assert_eq!(
                (l.pid, l.errno, l.kind.clone()),
                (4243, Some(111), Kind::ConnectFailed)
            );
            assert_eq!(l.upstream().as_deref(), Some("127.0.0.1:3999"));
        }
    }

    #[test]
    fn a_line_cut_short_keeps_what_it_has() {
        let cut = &REFUSED[..REFUSED.find(", host").unwrap() - 10];
        let l = parse(cut).unwrap();
        assert_eq!((l.errno, l.kind.clone()), (Some(111), Kind::ConnectFailed));
        // The query strings are gone from every part, the line included.
        assert_eq!(l.request.as_deref(), Some("GET /api HTTP/1.1"));
        assert!(l.host.is_none());
    }

    #[test]
    fn fastcgi_stderr_quotes_are_not_taken_for_context() {
        let line = "2026/11/27 01:02:03 [error] 9#9: *3 FastCGI sent in stderr: \"PHP message: boom, client: x while y\" while reading response header from upstream, client: 127.0.0.1, server: _, request: \"GET /a.php HTTP/1.1\", upstream: \"fastcgi://unix:/run/php/php8.2-fpm.sock:\", host: \"h\"";
        let l = parse(line).unwrap();
        assert_eq!(l.kind, Kind::FastcgiStderr);
        assert_eq!(l.client.as_deref(), Some("127.0.0.1"));
        assert_eq!(l.phase(), Phase::ReadingHeader);
    }

    #[test]
    fn other_messages_are_classified() {
        let cases = [
            (
                "upstream prematurely closed connection while reading response header from upstream, client: a, server: b, request: \"GET / HTTP/1.1\", upstream: \"http://127.0.0.1:1/\"",
                Kind::PrematurelyClosed,
            ),
            (
                "recv() failed (104: Connection reset by peer) while reading response header from upstream, client: a, upstream: \"http://127.0.0.1:1/\"",
                Kind::IoFailed("recv()".into()),
            ),
            (
                "writev() failed (32: Broken pipe) while sending request to upstream, client: a, upstream: \"http://127.0.0.1:1/\"",
                Kind::IoFailed("writev()".into()),
            ),
            (
                "no live upstreams while connecting to upstream, client: a, server: b, request: \"GET / HTTP/1.1\", upstream: \"http://backend/\"",
                Kind::NoLiveUpstreams,
            ),
            (
                "upstream server temporarily disabled while connecting to upstream, client: a, upstream: \"http://127.0.0.1:1/\"",
                Kind::ServerDisabled,
            ),
            (
                "upstream sent too big header while reading response header from upstream, client: a, upstream: \"http://127.0.0.1:1/\"",
                Kind::TooBigHeader,
            ),
            (
                "upstream sent invalid header: \"x\\x00\" while reading response header from upstream, client: a, upstream: \"http://127.0.0.1:1/\"",
                Kind::InvalidResponse,
            ),
            (
                "socket() failed (24: Too many open files) while connecting to upstream, client: a, server: b",
                Kind::SocketFailed,
            ),
            (
                "backend could not be resolved (3: Host not found), client: a, server: b",
                Kind::Resolver,
            ),
            (
                "SSL_do_handshake() failed (SSL: error:0A000086) while SSL handshaking to upstream, client: a, upstream: \"https://10.0.0.1:443/\"",
                Kind::Ssl,
            ),
            (
                "open() \"/usr/share/nginx/html/x\" failed (2: No such file or directory), client: a, server: b",
                Kind::Unrelated,
            ),
        ];
        for (message, kind) in cases.clone() {
            let line = format!("2026/11/27 01:02:03 [error] 7#7: *1 {message}");
            assert_eq!(parse(&line).unwrap().kind, kind, "{message}");
        }
        let exit =
            parse("2026/11/27 01:02:03 [alert] 100#100: worker process 101 exited on signal 9")
                .unwrap();
        assert_eq!((exit.kind, exit.conn), (Kind::WorkerExited, None));
        let no_live = parse(&format!(
            "2026/11/27 01:02:03 [error] 7#7: *1 {}",
            cases[3].0
        ))
        .unwrap();
        assert_eq!(no_live.upstream(), None, "a group, not a server");
    }

    #[test]
    fn other_text_is_not_a_record() {
        for line in [
            "",
            "hello",
            "2026/11/27 01:02:03 nothing",
            "GET / HTTP/1.1 200",
            "2026/11/27 01:02:03 [bogus] 1#1: x",
        ] {
            assert!(parse(line).is_none(), "{line}");
        }
    }

    #[test]
    fn queries_are_cut_from_every_quoted_url_and_docker_records() {
        let referred = format!("{REFUSED}, referrer: \"https://site/?token=abc&b=1\"");
        let cut = without_queries(&referred);
        assert!(!cut.contains("token") && !cut.contains("x=1"), "{cut}");
        assert!(cut.ends_with(", referrer: \"https://site/\""), "{cut}");
        let docker = serde_json::json!({"log": format!("{REFUSED}\n"), "stream": "stderr"});
        let l = parse(&docker.to_string()).unwrap();
        assert!(!l.raw.contains("x=1"), "{}", l.raw);
        assert_eq!(l.upstream().as_deref(), Some("127.0.0.1:3999"));
        assert_eq!(l.kind, Kind::ConnectFailed);
    }

    #[test]
    fn a_line_names_the_upstream_uri_and_the_clients_path() {
        let l = parse(REFUSED).unwrap();
        assert_eq!(l.paths(), ["/api", "/api"]);
        let unix = parse(
            "2026/11/27 01:02:03 [error] 7#7: *1 upstream timed out (110: Connection timed out) \
             while reading response header from upstream, client: a, server: b, request: \
             \"POST /x.php HTTP/1.1\", upstream: \"fastcgi://unix:/run/php.sock:\", host: \"h\"",
        )
        .unwrap();
        assert_eq!(unix.paths(), ["/x.php"]);
    }

    #[test]
    fn local_time_converts_with_the_offset() {
        let l = parse(REFUSED).unwrap();
        let utc = l.time(3600).unwrap();
        assert_eq!(
            humantime::format_rfc3339(utc).to_string(),
            "2026-11-27T00:02:03Z"
        );
        let west = l.time(-5 * 3600).unwrap();
        assert_eq!(
            humantime::format_rfc3339(west).to_string(),
            "2026-11-27T06:02:03Z"
        );
    }

    /// The README's catalogue of nginx's upstream messages: each row's
    /// example, written as nginx writes it at the row's level (with the
    /// request's context, except the master's lines), is parsed to the
    /// row's kind, and its first cause is the row's.
    #[test]
    fn the_readme_catalogue_holds_line_by_line() {
        const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));
        let table = README
            .split("<!-- catalogue: start -->")
            .nth(1)
            .and_then(|rest| rest.split("<!-- catalogue: end -->").next())
            .expect("the catalogue's markers in README.md");
        let mut rows = 0;
        for row in table
            .lines()
            .filter(|l| l.starts_with("| ") && l.contains('`'))
        {
            let cells: Vec<&str> = row
                .split(" | ")
                .map(|c| c.trim_matches(['|', ' ']))
                .collect();
            let [level, example, kind, first, _from] = cells[..] else {
                panic!("a row of 5 cells: {row}");
            };
            let message = example.trim_matches('`');
            let context = if kind == "worker_exited" || level == "debug" {
                String::new()
            } else {
                ", client: 127.0.0.1, server: _, request: \"GET /api HTTP/1.1\", \
                 upstream: \"http://127.0.0.1:3999/api\", host: \"h\""
                    .to_string()
            };
            let raw = format!("2026/12/07 01:02:03 [{level}] 7#7: *1 {message}{context}");
            let line = parse(&raw).unwrap_or_else(|| panic!("does not parse: {raw}"));
            assert_eq!(line.kind.as_str(), kind, "{raw}");
            let upstream = !matches!(line.kind, Kind::Debug);
            assert_eq!(line.is_upstream(), upstream, "{raw}");
            if upstream {
                let cause = crate::diagnosis::causes::candidates(&line)[0];
                assert_eq!(
                    format!("{}/{}", cause.verdict, cause.detail),
                    first,
                    "{raw}"
                );
            } else {
                assert_eq!(first, "-", "{raw}");
            }
            rows += 1;
        }
        assert!(rows >= 40, "{rows} rows read");
    }
}
