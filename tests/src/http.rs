//! A minimal HTTP/1.0 client for loopback requests.
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    time::Duration,
};

/// GETs `path` from 127.0.0.1:`port` and returns the status code, or 0 when
/// no status line came back.
pub fn get(port: u16, path: &str) -> u16 {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return 0;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

/// Sends `GET path` to 127.0.0.1:`port`, then leaves after `after` without
/// reading the answer, closing the connection (FIN), as a client that gives
/// up does.
pub fn get_then_leave(port: u16, path: &str, after: Duration) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to nginx");
    let request = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .expect("send the request");
    std::thread::sleep(after);
    drop(stream);
}

/// A response: status code, headers (`name: value` lines, names in lower
/// case) and body.
pub struct Response {
    /// The status code (0 when no status line came back).
    pub status: u16,
    /// The header lines, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, as text.
    pub body: String,
}

impl Response {
    /// The value of header `name` (lower case), if sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// GETs `path` (already URL-encoded) from `host`:`port` with the extra
/// `headers` lines, and returns the whole response.
pub fn fetch(host: &str, port: u16, path: &str, headers: &[&str]) -> Response {
    let empty = Response {
        status: 0,
        headers: Vec::new(),
        body: String::new(),
    };
    let Ok(mut stream) = TcpStream::connect((host, port)) else {
        return empty;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str("\r\n");
    if stream.write_all(request.as_bytes()).is_err() {
        return empty;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return empty;
    };
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_string(),
    }
}

/// `s` percent-encoded for a URL query value.
pub fn encode_query(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}
