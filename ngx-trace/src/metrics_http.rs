//! `--metrics-listen`: serves `/metrics` over HTTP (hyper), in the format
//! the scraper asks for: OpenMetrics when its `Accept` prefers it (as
//! Prometheus does), else Prometheus text 0.0.4.
use std::{
    convert::Infallible,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
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
use tokio::net::TcpListener;

use crate::{
    metrics::{Format, encode},
    output::notice,
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

/// Serves `registry` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, registry: Arc<Registry>) {
    let mut said = false;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of descriptors, most likely: say it once, retry.
                if !said {
                    notice(&format!("metrics: failed to accept a connection: {e}"));
                    said = true;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = Arc::clone(&registry);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let registry = Arc::clone(&registry);
                async move { Ok::<_, Infallible>(respond(&req, &registry)) }
            });
            // A client that never sends its request is dropped.
            let _ = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn respond<B>(req: &Request<B>, registry: &Registry) -> Response<Full<Bytes>> {
    let plain = |status: StatusCode, text: &'static str| {
        let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        response
    };
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/metrics" => {}
        "/" => return plain(StatusCode::OK, "ngx-trace: metrics at /metrics\n"),
        _ => {
            return plain(
                StatusCode::NOT_FOUND,
                "not found: metrics are at /metrics\n",
            );
        }
    }
    let accept = req
        .headers()
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect::<Vec<_>>()
        .join(",");
    let format = negotiate(&accept);
    match encode(registry, format) {
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
    use super::*;

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
