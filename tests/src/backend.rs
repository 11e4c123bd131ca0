//! Real backends on loopback.
use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

/// What an [`HttpBackend`] does with each request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behavior {
    /// Answers `200 ok` after this delay.
    Answer(Duration),
    /// Resets the connection (SO_LINGER 0) once the request is read.
    Reset,
    /// Closes the connection without answering once the request is read.
    Close,
    /// Answers a connection's first request (keep-alive), then closes the
    /// connection unanswered when its next request arrives: what nginx
    /// meets when a backend closes an idle kept-alive connection just as
    /// nginx reuses it (a stale kept-alive connection).
    CloseReused,
}

/// A TCP HTTP server on loopback, one thread per connection, HTTP/1.1
/// keep-alive when asked; stopped on drop.
pub struct HttpBackend {
    port: u16,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl HttpBackend {
    /// Starts on a free loopback port, answering at once.
    pub fn start() -> Self {
        Self::with(Behavior::Answer(Duration::ZERO))
    }

    /// Starts on a free loopback port with `behavior`.
    pub fn with(behavior: Behavior) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind backend");
        let port = listener.local_addr().expect("backend addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(conn) = conn {
                    std::thread::spawn(move || serve(conn, behavior));
                }
            }
        });
        Self {
            port,
            stop,
            thread: Some(thread),
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

fn serve(mut conn: TcpStream, behavior: Behavior) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(120)));
    let mut buf = [0u8; 4096];
    let mut seen = Vec::new();
    let mut answered = 0;
    loop {
        // One request: headers up to the blank line (nginx sends no body here).
        let end = loop {
            if let Some(pos) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            match conn.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        };
        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
        seen.drain(..end);
        let keepalive = head.starts_with("get")
            && head.contains("http/1.1")
            && !head.contains("connection: close");
        match behavior {
            Behavior::Answer(delay) => {
                std::thread::sleep(delay);
                let connection = if keepalive { "keep-alive" } else { "close" };
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: {connection}\r\n\r\nok\n"
                );
                if conn.write_all(response.as_bytes()).is_err() || !keepalive {
                    return;
                }
            }
            Behavior::Reset => {
                let _ = socket_linger_zero(&conn);
                return;
            }
            Behavior::Close => return,
            Behavior::CloseReused if answered > 0 => return,
            Behavior::CloseReused => {
                let response =
                    "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: keep-alive\r\n\r\nok\n";
                if conn.write_all(response.as_bytes()).is_err() {
                    return;
                }
            }
        }
        answered += 1;
    }
}

/// SO_LINGER with a zero timeout: closing sends a RST instead of a FIN.
fn socket_linger_zero(conn: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: valid fd and a pointer to a linger of the right size.
    let rc = unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Drop for HttpBackend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A UNIX socket file in a given state; removed on drop.
pub struct UnixSocketFile {
    path: PathBuf,
    _listener: Option<UnixListener>,
}

impl UnixSocketFile {
    /// A listening socket at `path` with file mode `mode` (owned by root).
    pub fn listening(path: &Path, mode: u32) -> Self {
        use std::os::unix::fs::PermissionsExt as _;
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path).expect("bind unix socket");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .expect("chmod unix socket");
        Self {
            path: path.to_path_buf(),
            _listener: Some(listener),
        }
    }

    /// A socket file left behind by a backend that is gone: nobody listens.
    pub fn stale(path: &Path) -> Self {
        let mut socket = Self::listening(path, 0o666);
        socket._listener = None; // closing the listener keeps the file
        socket
    }
}

impl Drop for UnixSocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
