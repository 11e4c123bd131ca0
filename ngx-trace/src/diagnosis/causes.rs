//! What an upstream line of nginx's error log can mean, and what to do
//! about each cause: the candidate causes a line allows (all of them when no
//! trace covers it), and the next step in nginx or backend terms.
use crate::nginx::errorlog::{Kind, LogLine, Phase};

/// One possible cause of a line: a verdict of the tracer's vocabulary, and
/// the finer cause the kernel can tell apart within it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cause {
    /// The verdict (`backend_down`, `network`...), or `consequence` for a
    /// line that follows from earlier failures.
    pub verdict: &'static str,
    /// The finer cause (`rst`, `icmp_reject`, `accept_queue_full`...).
    pub detail: &'static str,
    /// What it looks like, in a few words.
    pub what: &'static str,
}

const fn cause(verdict: &'static str, detail: &'static str, what: &'static str) -> Cause {
    Cause {
        verdict,
        detail,
        what,
    }
}

const RST: Cause = cause(
    "backend_down",
    "rst",
    "nothing listens on the port: the host answered the SYN with a TCP RST",
);
const ICMP_REJECT: Cause = cause(
    "network",
    "icmp_reject",
    "a firewall REJECT answered the SYN with ICMP port unreachable",
);
const NO_LISTENER: Cause = cause(
    "backend_down",
    "no_listener",
    "the UNIX socket file exists but no process listens on it",
);
const NO_SOCKET_FILE: Cause = cause(
    "backend_down",
    "no_socket_file",
    "the UNIX socket file does not exist: the backend is stopped or the path is wrong",
);
const SYN_LOST: Cause = cause(
    "network",
    "syn_lost",
    "SYNs or their answers were lost, or a firewall drops them",
);
const ACCEPT_QUEUE_FULL: Cause = cause(
    "backend_overloaded",
    "accept_queue_full",
    "the backend's accept queue is full: its kernel drops new SYNs",
);
const HOST_DOWN: Cause = cause(
    "backend_down",
    "host_down",
    "the upstream host is down or gone",
);
const UNREACHABLE: Cause = cause(
    "network",
    "unreachable",
    "no route to the upstream (ICMP unreachable)",
);
const PERMISSION: Cause = cause(
    "permission",
    "permission",
    "the socket file's mode or owner, an LSM (SELinux, AppArmor), or a local firewall",
);
const BACKLOG_FULL: Cause = cause(
    "backend_overloaded",
    "backlog_full",
    "the UNIX socket's listen backlog is full (every backend worker busy)",
);
const NO_LOCAL_PORT: Cause = cause(
    "proxy_resources",
    "ephemeral_ports",
    "no free local port or address for a new connection",
);
const FD_LIMIT: Cause = cause(
    "proxy_resources",
    "fd_limit",
    "the nginx worker (or the host) ran out of file descriptors",
);
const SLOW: Cause = cause(
    "backend_slow",
    "slow",
    "the backend took longer than the read timeout",
);
const LOSS: Cause = cause(
    "network",
    "loss",
    "segments were lost and retransmitted (or the RTT is large)",
);
const NOT_READING: Cause = cause(
    "backend_slow",
    "not_reading",
    "the backend stopped reading the request",
);
const CRASH: Cause = cause(
    "backend_crashed",
    "crash",
    "the backend process crashed (a fault, abort())",
);
const OOM_KILL: Cause = cause(
    "backend_crashed",
    "oom_kill",
    "the backend process was OOM-killed",
);
const OWN_TIMEOUT: Cause = cause(
    "backend_crashed",
    "own_timeout",
    "the backend's own request timeout killed its worker (request_terminate_timeout, gunicorn --timeout, uWSGI harakiri)",
);
const KILLED: Cause = cause(
    "backend_crashed",
    "killed",
    "the backend process was killed by a signal",
);
const STALE_KEEPALIVE: Cause = cause(
    "backend_aborted",
    "stale_keepalive",
    "a kept-alive connection the backend closed as nginx reused it",
);
const CLOSED: Cause = cause(
    "backend_aborted",
    "closed",
    "the backend closed or reset the connection while alive",
);
const MIDDLEBOX: Cause = cause(
    "network",
    "middlebox",
    "a firewall, NAT or load balancer in between dropped the connection",
);
const TIMED_OUT_CONN: Cause = cause(
    "network",
    "connection_timed_out",
    "the kernel's retransmissions ran out on an established connection",
);
const CONSEQUENCE: Cause = cause(
    "consequence",
    "max_fails",
    "earlier failures reached max_fails within fail_timeout: see them",
);
const BIG_HEADER: Cause = cause(
    "backend_response",
    "big_header",
    "the response header is larger than the module's buffer_size",
);
const INVALID: Cause = cause(
    "backend_response",
    "invalid",
    "the answer is not what the protocol expects (wrong port or protocol?)",
);
const STDERR: Cause = cause(
    "backend_message",
    "stderr",
    "the application wrote to stderr: its own message, not a transport failure",
);
const GRPC: Cause = cause(
    "backend_response",
    "grpc",
    "the gRPC backend answered with an error",
);
const RESOLVER: Cause = cause(
    "resolver",
    "dns",
    "the upstream's name could not be resolved",
);
const TLS: Cause = cause(
    "tls",
    "handshake",
    "the TLS handshake with the upstream failed",
);
const WORKER_DIED: Cause = cause(
    "proxy_crashed",
    "worker_died",
    "an nginx worker died, taking its requests with it",
);
const CLIENT_LEFT: Cause = cause(
    "client_aborted",
    "client_closed",
    "the client closed its connection first: nginx dropped the upstream request (499)",
);
const CLIENT_GONE_MID_RESPONSE: Cause = cause(
    "client_aborted",
    "client_gone_mid_response",
    "the client went away while nginx sent it the response (cut short)",
);
const CLIENT_SLOW: Cause = cause(
    "client_aborted",
    "client_not_reading",
    "the client did not read the response within send_timeout",
);
const TEMP_PERMISSION: Cause = cause(
    "permission",
    "temp_path",
    "nginx's workers may not write in the module's temporary directory",
);
const TEMP_NO_DIR: Cause = cause(
    "proxy_resources",
    "temp_path_missing",
    "the module's temporary directory does not exist",
);
const DISK_FULL: Cause = cause(
    "proxy_resources",
    "disk_full",
    "the filesystem of the temporary directory is full",
);
const TEMP_FILE: Cause = cause(
    "proxy_resources",
    "temp_file",
    "nginx could not use the temporary file of a response larger than its buffers",
);
const BUFFERED: Cause = cause(
    "buffering",
    "temp_file_used",
    "a response larger than the module's buffers went to a temporary file: a warning, not a failure",
);
const NO_CONNECTIONS: Cause = cause(
    "proxy_resources",
    "worker_connections",
    "the worker had no connection left for the upstream (worker_connections)",
);
const NOT_IN_MEMCACHED: Cause = cause(
    "backend_response",
    "not_found",
    "memcached holds no value for the key: nginx answers 404 (a miss, not a failure)",
);
const CACHE_BAD_FILE: Cause = cause(
    "cache",
    "bad_file",
    "a cache file nginx could not use (cut short, written by another nginx version, a key's md5 collision): it asks the upstream again",
);
const CACHE_LOCK: Cause = cause(
    "cache",
    "lock_timeout",
    "the request waited the cache lock's timeout for another request to fill the cache, then went to the upstream itself (a slow upstream behind the cache)",
);
const CACHE_ZONE_FULL: Cause = cause(
    "cache",
    "keys_zone_full",
    "the cache's keys_zone is full: nginx evicts entries early, or does not cache the response",
);
const CACHE_STALLED: Cause = cause(
    "cache",
    "stalled",
    "a cache entry stayed locked: the request filling it never finished (a worker that died, a stalled upstream)",
);
const CACHE_KEY_BUFFER: Cause = cause(
    "cache",
    "key_buffer",
    "the cache key and its header do not fit the module's buffer_size",
);
const TRANSPARENT: Cause = cause(
    "permission",
    "transparent_proxy",
    "proxy_bind ... transparent needs privileges the worker lacks (CAP_NET_ADMIN or CAP_NET_RAW)",
);
const SOCKET_OPTION: Cause = cause(
    "proxy_config",
    "socket_option",
    "the kernel refused a socket option nginx sets on upstream connections (buffers, keepalive, bind options)",
);
const UPSTREAM_URL: Cause = cause(
    "proxy_config",
    "upstream_address",
    "the upstream address nginx made from variables at run time is not valid (no host, no port, a bad prefix)",
);
const BIND_ADDRESS: Cause = cause(
    "proxy_config",
    "bind_address",
    "proxy_bind's address, made from a variable, is not an address",
);
const REQUEST_CONFIG: Cause = cause(
    "proxy_config",
    "request",
    "the configuration gives nginx no way to build this upstream request (a memcached key not set, an upgrade in a subrequest, no upstream)",
);
const REQUEST_TOO_BIG: Cause = cause(
    "client_request",
    "too_big_for_protocol",
    "the client's request (its URI or headers) is too long for the upstream protocol's limits",
);
const SLOW_DISK: Cause = cause(
    "proxy_resources",
    "slow_disk",
    "a file operation of nginx's thread pool or aio took too long (a slow or overloaded disk)",
);
const NGINX_BUG: Cause = cause(
    "proxy_internal",
    "inconsistency",
    "nginx found its own state inconsistent (a bug, often in a third-party module)",
);
const UNKNOWN: Cause = cause("unknown", "unknown", "a message ngx-trace has no rule for");

/// Every cause `line` allows, most common first.
pub fn candidates(line: &LogLine) -> Vec<Cause> {
    let unix = line.upstream().is_some_and(|u| u.starts_with("unix:"));
    match &line.kind {
        Kind::ConnectFailed | Kind::SocketFailed => connect_errno(line.errno, unix),
        Kind::TimedOut => match line.phase() {
            Phase::Connecting if unix => vec![BACKLOG_FULL],
            Phase::Connecting => vec![SYN_LOST, ACCEPT_QUEUE_FULL, HOST_DOWN],
            Phase::Sending => vec![NOT_READING, LOSS],
            _ => vec![SLOW, LOSS],
        },
        Kind::PrematurelyClosed => early_end(),
        Kind::IoFailed(_) => match line.errno {
            Some(110) => vec![TIMED_OUT_CONN, MIDDLEBOX],
            _ => early_end(),
        },
        Kind::NoLiveUpstreams | Kind::ServerDisabled => vec![CONSEQUENCE],
        Kind::TooBigHeader => vec![BIG_HEADER],
        Kind::InvalidResponse if line.text.ends_with(" was not found by memcached") => {
            vec![NOT_IN_MEMCACHED]
        }
        Kind::InvalidResponse => vec![INVALID],
        Kind::FastcgiStderr => vec![STDERR],
        Kind::Grpc => vec![GRPC],
        Kind::Resolver => vec![RESOLVER],
        Kind::Ssl => vec![TLS],
        Kind::WorkerExited => vec![WORKER_DIED],
        Kind::ClientSide => client_side(line),
        Kind::TempFile => match line.errno {
            Some(13 | 1) => vec![TEMP_PERMISSION],
            Some(2) => vec![TEMP_NO_DIR],
            Some(28 | 122) => vec![DISK_FULL],
            // `has written only N of M`: a short write, a full disk.
            None if line.text.contains(" has written only ") => vec![DISK_FULL],
            // A cache file shorter than its header said: cut short.
            None if line.text.contains(" read only ") => vec![CACHE_BAD_FILE],
            _ => vec![TEMP_FILE],
        },
        Kind::BufferedToDisk => vec![BUFFERED],
        Kind::WorkerConnections => vec![NO_CONNECTIONS],
        Kind::Cache => vec![cache(&line.text)],
        Kind::SocketOption => {
            if line.text.contains("TRANSPARENT") || line.text.contains("BINDANY") {
                vec![TRANSPARENT]
            } else {
                vec![SOCKET_OPTION]
            }
        }
        Kind::RequestBuild => vec![request_build(&line.text)],
        Kind::NginxInternal => {
            if line.text.ends_with("operation took too long") {
                vec![SLOW_DISK]
            } else if line.text.starts_with("thread pool \"") {
                vec![REQUEST_CONFIG]
            } else {
                vec![NGINX_BUG]
            }
        }
        Kind::OtherUpstream | Kind::Debug | Kind::Unrelated => vec![UNKNOWN],
    }
}

/// The cause of a line about the response cache.
fn cache(text: &str) -> Cause {
    if text.starts_with("cache lock timeout") {
        CACHE_LOCK
    } else if text.contains(" in cache keys zone \"") {
        CACHE_ZONE_FULL
    } else if text.contains("is not enough for cache key") {
        CACHE_KEY_BUFFER
    } else if text.starts_with("stalled cache updating") || text.starts_with("ignore long locked") {
        CACHE_STALLED
    } else if text.starts_with("cache \"") {
        REQUEST_CONFIG
    } else {
        CACHE_BAD_FILE
    }
}

/// The cause of a request nginx could not build.
fn request_build(text: &str) -> Cause {
    if text.starts_with("too long http2 ")
        || text.contains(" request is too ")
        || text.contains("record is too big")
    {
        REQUEST_TOO_BIG
    } else if text.starts_with("invalid local address") {
        BIND_ADDRESS
    } else if text.contains(" in upstream \"")
        || text.starts_with("invalid URL prefix")
        || text.starts_with("zero length URI")
    {
        UPSTREAM_URL
    } else {
        REQUEST_CONFIG
    }
}

/// The causes of a line about the client during an upstream exchange.
fn client_side(line: &LogLine) -> Vec<Cause> {
    if line.text.starts_with("client timed out") {
        vec![CLIENT_SLOW]
    } else if line.action.as_deref() == Some("sending to client") {
        vec![CLIENT_GONE_MID_RESPONSE]
    } else {
        vec![CLIENT_LEFT]
    }
}

/// The causes of a connection that ended before its answer.
fn early_end() -> Vec<Cause> {
    vec![
        CRASH,
        OOM_KILL,
        OWN_TIMEOUT,
        KILLED,
        STALE_KEEPALIVE,
        CLOSED,
        MIDDLEBOX,
    ]
}

/// The causes of a `connect()` or `socket()` failing with `errno`.
fn connect_errno(errno: Option<u32>, unix: bool) -> Vec<Cause> {
    match errno {
        Some(111) if unix => vec![NO_LISTENER],
        Some(111) => vec![RST, ICMP_REJECT],
        Some(110) => vec![SYN_LOST, ACCEPT_QUEUE_FULL, HOST_DOWN],
        Some(113 | 101 | 112) => vec![UNREACHABLE],
        Some(13 | 1) => vec![PERMISSION],
        Some(11) => vec![BACKLOG_FULL],
        Some(2) => vec![NO_SOCKET_FILE],
        Some(99 | 98) => vec![NO_LOCAL_PORT],
        Some(24 | 23) => vec![FD_LIMIT],
        _ => vec![UNKNOWN],
    }
}

/// Every cause a kernel fact can name (`find`).
const KNOWN: &[Cause] = &[
    RST,
    ICMP_REJECT,
    NO_LISTENER,
    NO_SOCKET_FILE,
    SYN_LOST,
    ACCEPT_QUEUE_FULL,
    HOST_DOWN,
    UNREACHABLE,
    PERMISSION,
    BACKLOG_FULL,
    NO_LOCAL_PORT,
    FD_LIMIT,
    SLOW,
    LOSS,
    NOT_READING,
    CRASH,
    OOM_KILL,
    OWN_TIMEOUT,
    KILLED,
    STALE_KEEPALIVE,
    CLOSED,
    MIDDLEBOX,
    TIMED_OUT_CONN,
    CONSEQUENCE,
    WORKER_DIED,
    CLIENT_LEFT,
];

/// The cause named by `verdict` and `detail`, if it is one of the table's.
pub fn find(verdict: &str, detail: &str) -> Option<Cause> {
    KNOWN
        .iter()
        .find(|c| c.verdict == verdict && c.detail == detail)
        .copied()
}

/// The next step for `cause` on `line`, in nginx or backend terms.
pub fn advice(cause: &Cause, line: &LogLine) -> String {
    // The directive prefix of the module that talked to the upstream.
    let m = line.module().unwrap_or("proxy");
    match cause.detail {
        "rst" | "no_listener" | "no_socket_file" | "host_down" => format!(
            "start the backend (or fix the address in {m}_pass / the upstream block); \
             with several servers, nginx retries the next one ({m}_next_upstream error) \
             and skips this one for fail_timeout (10s) after max_fails (1) failures"
        ),
        "icmp_reject" => "a firewall rejects the connection: check iptables/nftables \
             REJECT rules on the path to the upstream's port"
            .to_string(),
        "syn_lost" => format!(
            "SYNs go unanswered: check firewalls (DROP rules), routes and the upstream \
             host; keep {m}_connect_timeout above 1s plus the RTT (the kernel's first \
             SYN retransmission)"
        ),
        "accept_queue_full" => "the backend does not accept() fast enough: add backend \
             workers, or raise its listen backlog (and net.core.somaxconn)"
            .to_string(),
        "backlog_full" => "every backend worker is busy: raise pm.max_children (PHP-FPM) or \
             the backend's workers, and listen.backlog with net.core.somaxconn"
            .to_string(),
        "unreachable" => "no route to the upstream: check its address, the routes and \
             the host"
            .to_string(),
        "permission" => "let nginx's user reach the socket: listen.owner, listen.group and \
             listen.mode (PHP-FPM), the socket directory's mode, or the LSM policy"
            .to_string(),
        "ephemeral_ports" => format!(
            "reuse connections: keepalive in the upstream block with {m}_http_version 1.1; \
             or widen net.ipv4.ip_local_port_range"
        ),
        "fd_limit" => "raise worker_rlimit_nofile (and the service's LimitNOFILE) above \
             2 × worker_connections"
            .to_string(),
        "slow" => format!(
            "the backend is slow: find the slow request in its logs; or, if such waits are \
             expected, raise {m}_read_timeout (default 60s) for this location"
        ),
        "loss" | "connection_timed_out" => "packets are lost between nginx and the upstream: \
             check the interfaces' drops, the links and middleboxes on the path"
            .to_string(),
        "not_reading" => format!(
            "the backend stopped reading the request body: check its upload limits and \
             workers; {m}_send_timeout (default 60s) bounds the wait"
        ),
        "crash" => "the backend crashed: see its log and core dump for the request".to_string(),
        "oom_kill" => "the backend ran out of memory: raise its memory limit, or lower its \
             workers' memory use (pm.max_children × memory_limit for PHP-FPM)"
            .to_string(),
        "own_timeout" => format!(
            "the backend's own timeout killed the request: raise it \
             (request_terminate_timeout, gunicorn --timeout, uWSGI harakiri) together with \
             {m}_read_timeout, or make the request faster"
        ),
        "killed" => {
            "something killed the backend process: see who (the sender) and why".to_string()
        }
        "stale_keepalive" => "set keepalive_timeout in the upstream block below the \
             backend's own idle timeout, so nginx closes idle connections first"
            .to_string(),
        "closed" => "the backend closed the connection without answering: see its log \
             for the request"
            .to_string(),
        "middlebox" => "something between nginx and the upstream drops connections: check \
             firewalls' and load balancers' idle timeouts"
            .to_string(),
        "max_fails" => format!(
            "fix the failures that marked the servers down (shown before this line); \
             max_fails and fail_timeout in the upstream block set how many and how long; \
             {m}_next_upstream sets which failures count"
        ),
        "big_header" => format!(
            "raise {m}_buffer_size (and {m}_buffers) above the backend's response header size"
        ),
        "invalid" => format!(
            "the upstream does not speak what {m}_pass expects: check the port and the \
             protocol (http vs https, fastcgi vs http)"
        ),
        "stderr" => "read the application's message: it is the backend's own log line".to_string(),
        "dns" => "make the name resolvable (resolver directive, /etc/hosts, DNS)".to_string(),
        "handshake" => format!(
            "check the upstream's TLS: {m}_ssl_protocols, {m}_ssl_server_name and the \
             certificate"
        ),
        "worker_died" => "an nginx worker died: see the core dump, and memory limits for \
             nginx itself"
            .to_string(),
        "client_closed" => format!(
            "not the upstream's failure: the client gave up first (its own timeout, or a \
             slow upstream); if the upstream was slow, its exchange shows it; \
             {m}_ignore_client_abort on lets the upstream request finish"
        ),
        "client_gone_mid_response" => "not the upstream's failure: the client went away \
             while the response was sent to it"
            .to_string(),
        "client_not_reading" => "not the upstream's failure: the client read the response \
             too slowly for send_timeout (a slow or stalled client)"
            .to_string(),
        "temp_path" => format!(
            "give {m}_temp_path to nginx's worker user (the `user` directive; Debian: \
             www-data): `chown -R www-data {m}_temp_path` and mode 700; or raise {m}_buffers \
             so responses stay in memory"
        ),
        "temp_path_missing" => format!(
            "create {m}_temp_path (owned by nginx's worker user, mode 700), or point \
             {m}_temp_path at an existing directory"
        ),
        "disk_full" => format!(
            "free space on the filesystem of {m}_temp_path, or cap {m}_max_temp_file_size \
             (0: never buffer to disk)"
        ),
        "temp_file" => format!(
            "check {m}_temp_path: it must exist, be writable by nginx's worker user, and \
             have free space"
        ),
        "temp_file_used" => format!(
            "not a failure; to keep such responses in memory raise {m}_buffers (or \
             {m}_max_temp_file_size 0 to stream them)"
        ),
        "worker_connections" => "raise worker_connections in the events block (each proxied \
             request takes two: the client's and the upstream's), and worker_rlimit_nofile \
             with it"
            .to_string(),
        "not_found" => "a miss, not a failure: fill memcached for this key, or send \
             misses to the application (error_page 404 = @fallback)"
            .to_string(),
        "bad_file" => "nginx replaces the file itself; if it recurs, make sure one nginx \
             instance alone writes each proxy_cache_path, and check the disk"
            .to_string(),
        "lock_timeout" => format!(
            "the upstream is slow to fill the cache: see why (its exchanges show it); \
             {m}_cache_lock_timeout (default 5s) bounds the wait of the other requests"
        ),
        "keys_zone_full" => format!(
            "raise the keys_zone size in {m}_cache_path (1 MB holds about 8,000 keys), or \
             lower inactive / max_size"
        ),
        "stalled" => format!(
            "a request filling the cache never ended: look for an nginx worker that died or \
             an upstream that stalled; {m}_cache_lock_age bounds how long others wait"
        ),
        "key_buffer" => format!("raise {m}_buffer_size above the cache key's length"),
        "transparent_proxy" => "proxy_bind transparent: start nginx's master as root (it \
             keeps CAP_NET_RAW for its workers, Linux), and route the answers back to nginx"
            .to_string(),
        "socket_option" => format!(
            "the option comes from {m}_bind, {m}_socket_keepalive or the buffers nginx \
             sets: check it against the kernel's limits (net.core.rmem_max, wmem_max)"
        ),
        "upstream_address" => format!(
            "{m}_pass made from variables gave an invalid address: check the variables' \
             values for this request (and give a port where the scheme has none)"
        ),
        "bind_address" => format!(
            "{m}_bind made from a variable gave no address: check the variable's value \
             for this request"
        ),
        "request" => format!(
            "the configuration cannot serve this request through {m}_pass: check the \
             directives the message names"
        ),
        "too_big_for_protocol" => "not the upstream's failure: the client's request is \
             too long for the upstream protocol; shorten it, or refuse such requests earlier \
             (large_client_header_buffers)"
            .to_string(),
        "slow_disk" => "nginx's disk is too slow for its thread pool or aio: check the \
             disk holding the cache or temporary files (iostat), and the pool's size"
            .to_string(),
        "inconsistency" => "an nginx alert about itself: note the version and third-party \
             modules, and report it upstream if it recurs"
            .to_string(),
        _ => "see the backend's and nginx's logs around this time".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nginx::errorlog::parse;

    fn line(message: &str) -> LogLine {
        parse(&format!(
            "2026/11/27 01:02:03 [error] 7#7: *1 {message}, client: a, server: b, request: \"GET / HTTP/1.1\", upstream: \"http://127.0.0.1:3999/\", host: \"h\""
        ))
        .unwrap()
    }

    #[test]
    fn a_refusal_is_an_rst_or_a_firewall_reject() {
        let l = line("connect() failed (111: Connection refused) while connecting to upstream");
        let c: Vec<&str> = candidates(&l).iter().map(|c| c.detail).collect();
        assert_eq!(c, ["rst", "icmp_reject"]);
        assert!(advice(&RST, &l).contains("proxy_next_upstream"));
    }

    #[test]
    fn eleven_is_a_full_backlog_on_unix_sockets_only() {
        let l = parse("2026/11/27 01:02:03 [error] 7#7: *1 connect() to unix:/run/php/php8.2-fpm.sock failed (11: Resource temporarily unavailable) while connecting to upstream, client: a, upstream: \"fastcgi://unix:/run/php/php8.2-fpm.sock:\"").unwrap();
        assert_eq!(candidates(&l), [BACKLOG_FULL]);
        assert!(advice(&BACKLOG_FULL, &l).contains("pm.max_children"));
    }

    #[test]
    fn timeouts_differ_by_phase_and_advice_names_the_module() {
        let connect =
            line("upstream timed out (110: Connection timed out) while connecting to upstream");
        assert_eq!(candidates(&connect)[..2], [SYN_LOST, ACCEPT_QUEUE_FULL]);
        let read = line(
            "upstream timed out (110: Connection timed out) while reading response header from upstream",
        );
        assert_eq!(candidates(&read), [SLOW, LOSS]);
        assert!(advice(&SLOW, &read).contains("proxy_read_timeout"));
        let closed = line(
            "upstream prematurely closed connection while reading response header from upstream",
        );
        assert!(candidates(&closed).contains(&STALE_KEEPALIVE));
        assert_eq!(find("backend_crashed", "oom_kill"), Some(OOM_KILL));
    }
}
