//! `--metrics-listen`: serves `/metrics` over HTTP (hyper), in the format
//! the scraper asks for: OpenMetrics when its `Accept` prefers it (as
//! Prometheus does), else Prometheus text 0.0.4.
use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use fastmetrics::registry::Registry;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ACCEPT, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Semaphore, oneshot},
};

use crate::{
    notice::notice,
    report::metrics::{Format, encode},
};

/// The address `--metrics-listen` names: `PORT` alone is loopback
/// (127.0.0.1); any other address must be written out.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!("`{s}` is not PORT, IPv4:PORT or [IPv6]:PORT (a port alone listens on 127.0.0.1)")
    })
}

/// Binds `addr`, with an error that says what to do.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!(
            "failed to listen on {addr} for --metrics-listen: is another process (an earlier \
             ngx-trace?) using that port? choose another"
        )
    })
}

/// What the server allows each client. The server shares the tracer's
/// thread and descriptors: whoever can reach the port must not starve the
/// tracer of either.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections open at once.
    pub connections: usize,
    /// Longest wait for a request's headers, also between the requests of
    /// a kept-alive connection (an idle client is dropped after it).
    pub header_read: Duration,
    /// Longest life of a connection, requests and answers included (a
    /// client that reads its answer slowly, or never, is dropped after it).
    pub total: Duration,
}

impl Limits {
    /// A scraper (Prometheus: one connection, a scrape every 15 s or so,
    /// within its 10 s scrape timeout) and some curl-ing people fit.
    pub const DEFAULT: Limits = Limits {
        connections: 16,
        header_read: Duration::from_secs(5),
        total: Duration::from_secs(10),
    };
}

/// Serves `registry` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    serve_with(listener, registry, Limits::DEFAULT).await
}

/// The connections open now, by number (oldest first), each with the
/// sender whose drop closes it.
type Open = Arc<Mutex<BTreeMap<u64, oneshot::Sender<()>>>>;

/// Frees a connection's place when its task ends, however it ends.
struct Place {
    open: Open,
    number: u64,
}

impl Drop for Place {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.remove(&self.number);
    }
}

/// Serves `registry` on `listener` within `limits`, until the task is
/// dropped.
pub async fn serve_with(listener: TcpListener, registry: Arc<Registry>, limits: Limits) {
    let encoder = Encoder {
        registry,
        turn: Arc::new(Semaphore::new(1)),
    };
    let open: Open = Arc::default();
    let mut said = false;
    for number in 0u64.. {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors (EMFILE, ENFILE), most likely: say it
                // once and back off, rather than spin on a listener that
                // stays readable or give up serving.
                if !said {
                    notice(&format!(
                        "metrics: failed to accept a connection ({e}): retrying every 100 ms"
                    ));
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // Past the cap, the new connection takes the place of the oldest,
        // which is closed: the descriptors held stay bounded, and a scraper
        // is served while idle clients hold every place (unless they keep
        // connecting faster than its request is read). Closing the new
        // connection at once would refuse the scraper; leaving it
        // unaccepted would queue it behind the idle ones until they time
        // out, past its scrape timeout.
        let (close, closed) = oneshot::channel();
        let evicted = {
            let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
            let mut evicted = false;
            while open.len() >= limits.connections.max(1) {
                open.pop_first();
                evicted = true;
            }
            open.insert(number, close);
            evicted
        };
        let place = Place {
            open: Arc::clone(&open),
            number,
        };
        tokio::spawn(connection(stream, encoder.clone(), limits, closed, place));
        if evicted {
            // Let the evicted connection's task run and close its socket
            // before the next accept.
            tokio::task::yield_now().await;
        }
    }
}

/// Serves one connection until it ends, its time is up, or `closed` says
/// its place was taken.
async fn connection(
    stream: TcpStream,
    encoder: Encoder,
    limits: Limits,
    closed: oneshot::Receiver<()>,
    _place: Place,
) {
    let service = service_fn(move |req| {
        // The request is read here, not held while the answer is encoded.
        let routed = route(&req);
        let encoder = encoder.clone();
        async move {
            Ok::<_, Infallible>(match routed {
                Ok(format) => metrics(&encoder, format).await,
                Err((status, text)) => plain(status, text),
            })
        }
    });
    let served = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .serve_connection(TokioIo::new(stream), service);
    // Dropping the connection closes its socket.
    tokio::select! {
        _ = served => {}
        _ = closed => {}
        () = tokio::time::sleep(limits.total) => {}
    }
}

/// Encodes the registry away from the tracer's thread: the runtime has one
/// thread, shared with the ring-buffer reader, and a registry of thousands
/// of series takes milliseconds to encode. One encoding at a time, so that
/// clients asking at once use one more core, not one each.
#[derive(Clone)]
struct Encoder {
    registry: Arc<Registry>,
    turn: Arc<Semaphore>,
}

impl Encoder {
    async fn encode(&self, format: Format) -> Result<String> {
        // The permit goes with the encoding: a client that leaves mid-way
        // does not let another one start beside it.
        let turn = Arc::clone(&self.turn)
            .acquire_owned()
            .await
            .context("the metrics encoder stopped")?;
        let registry = Arc::clone(&self.registry);
        tokio::task::spawn_blocking(move || {
            let _turn = turn;
            encode(&registry, format)
        })
        .await
        .context("the thread encoding the metrics failed")?
    }
}

/// A short plain-text answer.
fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The format `req` asks the metrics in, or the status and text that
/// answer a request for anything else.
fn route<B>(req: &Request<B>) -> Result<Format, (StatusCode, &'static str)> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return Err((StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n"));
    }
    match req.uri().path() {
        "/metrics" => {}
        "/" => return Err((StatusCode::OK, "ngx-trace: metrics at /metrics\n")),
        _ => {
            return Err((
                StatusCode::NOT_FOUND,
                "not found: metrics are at /metrics\n",
            ));
        }
    }
    let accept = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    Ok(negotiate(&accept))
}

/// The answer to a request for the metrics in `format`.
async fn metrics(encoder: &Encoder, format: Format) -> Response<Full<Bytes>> {
    match encoder.encode(format).await {
        Ok(body) => {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            response
        }
        Err(e) => {
            notice(&format!("metrics: {e:#}"));
            plain(
                StatusCode::INTERNAL_SERVER_ERROR,
                "failed to encode the metrics: see ngx-trace's stderr\n",
            )
        }
    }
}

/// The format an `Accept` header asks for: OpenMetrics when it weighs
/// `application/openmetrics-text` above `text/plain` (and `*/*`), else
/// Prometheus text (also with no header, as curl and promtool send).
pub fn negotiate(accept: &str) -> Format {
    let mut openmetrics = 0.0f32;
    let mut text = 0.0f32;
    for range in accept.split(',') {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("").to_ascii_lowercase();
        let q = parts
            .filter_map(|p| p.strip_prefix("q="))
            .find_map(|q| q.parse::<f32>().ok())
            .unwrap_or(1.0);
        match media.as_str() {
            "application/openmetrics-text" => openmetrics = openmetrics.max(q),
            "text/plain" | "text/*" | "*/*" => text = text.max(q),
            _ => {}
        }
    }
    if openmetrics > 0.0 && openmetrics > text {
        Format::OpenMetrics
    } else {
        Format::Prometheus
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{ErrorKind, Read as _},
        time::Instant,
    };

    use super::*;

    fn registry() -> Arc<Registry> {
        let metrics = crate::report::metrics::Metrics::new(&[], 10, None).unwrap();
        metrics.set_traced_workers(3);
        metrics.registry()
    }

    /// A server on a free loopback port, within `limits`.
    async fn start(limits: Limits) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve_with(listener, registry(), limits));
        addr
    }

    /// Writes all of `bytes` (tokio's io-util, with `write_all`, is not
    /// built).
    async fn write(stream: &TcpStream, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            stream.writable().await?;
            match stream.try_write(bytes) {
                Ok(n) => bytes = &bytes[n..],
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Reads what has come, at least a byte (0: the end).
    async fn read(stream: &TcpStream, buf: &mut [u8]) -> std::io::Result<usize> {
        loop {
            stream.readable().await?;
            match stream.try_read(buf) {
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                read => return read,
            }
        }
    }

    /// Everything until the end.
    async fn read_to_end(stream: &TcpStream) -> std::io::Result<Vec<u8>> {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match read(stream, &mut buf).await? {
                0 => return Ok(all),
                n => all.extend_from_slice(&buf[..n]),
            }
        }
    }

    /// The whole answer to `GET path` on a connection of its own.
    async fn get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
        let stream = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
        write(&stream, request.as_bytes()).await?;
        let answer = read_to_end(&stream).await?;
        Ok(String::from_utf8_lossy(&answer).into_owned())
    }

    /// Whether the server closed `stream` (non-blocking): end of file or reset.
    fn closed_by_server(mut stream: &std::net::TcpStream) -> bool {
        match stream.read(&mut [0u8; 1]) {
            Ok(n) => n == 0,
            Err(e) => e.kind() != ErrorKind::WouldBlock,
        }
    }

    #[tokio::test]
    async fn idle_connections_neither_starve_a_scrape_nor_pile_up() {
        let addr = start(Limits::DEFAULT).await;
        // The server runs between connects (its listen queue holds 128).
        let mut idle = Vec::new();
        for _ in 0..200 {
            let stream = TcpStream::connect(addr).await.unwrap();
            idle.push(stream.into_std().unwrap());
            tokio::task::yield_now().await;
        }
        let answer = tokio::time::timeout(Duration::from_secs(2), get(addr, "/metrics"))
            .await
            .expect("no answer to GET /metrics within 2 s")
            .unwrap();
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
        assert!(answer.contains("\nngxtrace_traced_workers 3\n"), "{answer}");
        // The server holds at most its cap of them.
        let mut open = idle.len();
        for _ in 0..50 {
            open = idle.iter().filter(|s| !closed_by_server(s)).count();
            if open <= Limits::DEFAULT.connections {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            open <= Limits::DEFAULT.connections,
            "{open} idle connections open"
        );
    }

    #[tokio::test]
    async fn connections_are_closed_when_their_time_is_up() {
        let limits = Limits {
            connections: 16,
            header_read: Duration::from_millis(200),
            total: Duration::from_secs(1),
        };
        let addr = start(limits).await;
        // Silent: closed once its headers are late.
        let started = Instant::now();
        let silent = TcpStream::connect(addr).await.unwrap();
        // Ended by the server, cleanly or not (a reset is an error).
        let _ended = tokio::time::timeout(Duration::from_secs(3), read_to_end(&silent))
            .await
            .expect("a silent connection still open after 3 s");
        let waited = started.elapsed();
        assert!(
            waited >= limits.header_read && waited < limits.total,
            "a silent connection closed after {waited:?}"
        );
        // Busy, a request every 100 ms: closed at its total time.
        let started = Instant::now();
        let busy = TcpStream::connect(addr).await.unwrap();
        let closed_after = loop {
            let asked = write(&busy, b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").await;
            let mut answer = Vec::new();
            let answered = async {
                while !answer.ends_with(b"metrics at /metrics\n") {
                    let mut buf = [0u8; 512];
                    match read(&busy, &mut buf).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => answer.extend_from_slice(&buf[..n]),
                    }
                }
                true
            };
            if asked.is_err() || !answered.await {
                break started.elapsed();
            }
            assert!(
                started.elapsed() < Duration::from_secs(3),
                "still served after 3 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert!(
            closed_after >= limits.total,
            "a busy connection closed after {closed_after:?}"
        );
    }

    #[test]
    fn prometheus_gets_openmetrics_and_curl_gets_text() {
        // Prometheus 2.42's scrape header.
        assert_eq!(
            negotiate(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;\
                 version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
            ),
            Format::OpenMetrics
        );
        assert_eq!(negotiate("*/*"), Format::Prometheus);
        assert_eq!(negotiate(""), Format::Prometheus);
        assert_eq!(
            negotiate("text/plain;version=0.0.4;q=1,application/openmetrics-text;q=0.5"),
            Format::Prometheus
        );
        assert_eq!(
            negotiate("application/openmetrics-text; q=0"),
            Format::Prometheus
        );
    }

    #[test]
    fn a_port_alone_listens_on_loopback() {
        assert_eq!(
            parse_listen("9438").unwrap(),
            "127.0.0.1:9438".parse().unwrap()
        );
        assert_eq!(
            parse_listen("[::1]:9438").unwrap(),
            "[::1]:9438".parse().unwrap()
        );
        assert_eq!(
            parse_listen("0.0.0.0:9438").unwrap(),
            "0.0.0.0:9438".parse().unwrap()
        );
        let err = parse_listen("localhost:x").unwrap_err();
        assert!(err.contains("127.0.0.1"), "{err}");
    }
}
