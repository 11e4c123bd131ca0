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
