//! The output writer thread: stdout and the recording are written here,
//! never on the session's thread, so that a slow disk or a pipe nobody
//! reads (`ngx-trace | less`, left alone) cannot stop the session from
//! draining the kernel's records.
//!
//! Lines wait in a queue bounded in bytes; when it is full they are
//! dropped and counted, never waited for. The thread flushes when the
//! queue runs dry and at least every [`FLUSH_EVERY`], so a file or a pipe
//! sees each line within a second.
use std::{
    collections::VecDeque,
    io::{self, BufWriter, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    thread,
    time::{Duration, Instant},
};

/// The bytes queued for writing at most.
pub const QUEUE_BYTES: usize = 32 << 20;
/// The longest a written line waits in a buffer before it is flushed.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);
/// Lines taken from the queue at a time (the queue's bytes are given
/// back after each take).
const TAKE: usize = 256;

/// Where a line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    /// Standard output.
    Stdout = 0,
    /// The recording (`--record`).
    Record = 1,
}

/// A destination's writer.
pub type Out = Box<dyn Write + Send>;

/// What the session and the thread share.
#[derive(Default)]
struct State {
    lines: VecDeque<(Sink, String)>,
    /// Bytes queued or being written.
    bytes: usize,
    closed: bool,
    ended: bool,
    /// Lines written so far (progress, for [`Writer::close`]).
    written: u64,
    /// Lines taken from the queue and being written.
    writing: u64,
    dropped: [u64; 2],
    failed: [Option<(io::ErrorKind, String)>; 2],
}

struct Shared {
    state: Mutex<State>,
    /// Lines queued, or closed.
    wake: Condvar,
    /// Lines written, or the thread ended.
    progress: Condvar,
    cap: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere leaves the queue consistent: go on with it.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The session's end of the writer thread, started at the first line.
pub struct Writer {
    shared: Arc<Shared>,
    sinks: Mutex<Option<[Option<Out>; 2]>>,
    thread: Mutex<Option<thread::JoinHandle<()>>>,
}

impl Writer {
    /// A writer queueing at most `cap` bytes, to no destination yet.
    pub fn new(cap: usize) -> Self {
        Self {
            shared: Arc::new(Shared {
                state: Mutex::new(State::default()),
                wake: Condvar::new(),
                progress: Condvar::new(),
                cap,
            }),
            sinks: Mutex::new(Some([None, None])),
            thread: Mutex::new(None),
        }
    }

    /// Sends `sink`'s lines to `out` (before the first line).
    pub fn set(&self, sink: Sink, out: Out) {
        if let Ok(mut sinks) = self.sinks.lock()
            && let Some(sinks) = sinks.as_mut()
        {
            sinks[sink as usize] = Some(out);
        }
    }

    /// Queues `line` for `sink`: false when the queue is full and it was
    /// dropped (counted); the error that stopped `sink` earlier, if any.
    pub fn push(&self, sink: Sink, line: String) -> io::Result<bool> {
        self.start()?;
        let mut state = self.shared.lock();
        if let Some((kind, message)) = &state.failed[sink as usize] {
            return Err(io::Error::new(*kind, message.clone()));
        }
        if state.closed || state.bytes.saturating_add(line.len()) > self.shared.cap {
            state.dropped[sink as usize] += 1;
            return Ok(false);
        }
        state.bytes += line.len();
        state.lines.push_back((sink, line));
        self.shared.wake.notify_one();
        Ok(true)
    }

    /// Lines dropped so far for `sink`.
    pub fn dropped(&self, sink: Sink) -> u64 {
        self.shared.lock().dropped[sink as usize]
    }

    /// The error that stopped `sink`, if one did.
    pub fn failure(&self, sink: Sink) -> io::Result<()> {
        match &self.shared.lock().failed[sink as usize] {
            Some((kind, message)) => Err(io::Error::new(*kind, message.clone())),
            None => Ok(()),
        }
    }

    /// Takes no more lines, and waits until those queued are written and
    /// flushed, or until the thread made no progress for `stall`; returns
    /// how many lines were left unwritten.
    pub fn close(&self, stall: Duration) -> u64 {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.wake.notify_all();
        let started = self.thread.lock().map(|t| t.is_some()).unwrap_or(false);
        if !started {
            return 0;
        }
        let mut seen = state.written;
        let mut since = Instant::now();
        while !state.ended {
            let (next, _) = self
                .shared
                .progress
                .wait_timeout(state, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner());
            state = next;
            if state.written != seen {
                seen = state.written;
                since = Instant::now();
            } else if since.elapsed() >= stall {
                // Stuck on a write nobody will take: leave it behind.
                return state.lines.len() as u64 + state.writing;
            }
        }
        drop(state);
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
        0
    }

    /// Starts the thread, at the first line.
    fn start(&self) -> io::Result<()> {
        let Some(sinks) = self.sinks.lock().ok().and_then(|mut s| s.take()) else {
            return Ok(());
        };
        let shared = Arc::clone(&self.shared);
        let thread = thread::Builder::new()
            .name("ngx-trace-output".into())
            .spawn(move || run(&shared, sinks))
            .map_err(|e| io::Error::other(format!("failed to start the output thread: {e}")))?;
        if let Ok(mut t) = self.thread.lock() {
            *t = Some(thread);
        }
        Ok(())
    }
}

/// The thread: writes the queued lines in order, flushes when the queue
/// runs dry and every [`FLUSH_EVERY`]; a destination that fails is
/// stopped and its error kept for the session.
fn run(shared: &Shared, sinks: [Option<Out>; 2]) {
    let mut outs = sinks.map(|s| s.map(|out| BufWriter::with_capacity(64 << 10, out)));
    let mut flushed = Instant::now();
    loop {
        let chunk: Vec<(Sink, String)> = {
            let mut state = shared.lock();
            while state.lines.is_empty() && !state.closed {
                state = shared.wake.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.lines.is_empty() {
                break;
            }
            let n = state.lines.len().min(TAKE);
            state.writing = n as u64;
            state.lines.drain(..n).collect()
        };
        let (n, mut bytes) = (chunk.len() as u64, 0);
        for (sink, line) in chunk {
            bytes += line.len();
            if let Some(out) = &mut outs[sink as usize]
                && let Err(e) = out.write_all(line.as_bytes())
            {
                fail(shared, &mut outs, sink, &e);
            }
            if flushed.elapsed() >= FLUSH_EVERY {
                flush(shared, &mut outs);
                flushed = Instant::now();
            }
        }
        let dry = {
            let mut state = shared.lock();
            state.bytes -= bytes;
            state.written += n;
            state.writing = 0;
            shared.progress.notify_all();
            state.lines.is_empty()
        };
        if dry {
            flush(shared, &mut outs);
            flushed = Instant::now();
        }
    }
    flush(shared, &mut outs);
    shared.lock().ended = true;
    shared.progress.notify_all();
}

type Outs = [Option<BufWriter<Out>>; 2];

fn flush(shared: &Shared, outs: &mut Outs) {
    for sink in [Sink::Stdout, Sink::Record] {
        if let Some(out) = &mut outs[sink as usize]
            && let Err(e) = out.flush()
        {
            fail(shared, outs, sink, &e);
        }
    }
}

/// Stops `sink` after `e`, kept for the session to see at its next line.
fn fail(shared: &Shared, outs: &mut Outs, sink: Sink, e: &io::Error) {
    // What it held is lost with it; dropping must not write again.
    if let Some(out) = outs[sink as usize].take() {
        let _ = out.into_parts();
    }
    let what = match sink {
        Sink::Stdout => "stdout",
        Sink::Record => "the recording",
    };
    shared.lock().failed[sink as usize] = Some((e.kind(), format!("failed to write {what}: {e}")));
}

#[cfg(test)]
mod tests {
    use std::{fs::File, os::fd::OwnedFd};

    use super::*;

    fn pipe() -> (File, File) {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both are new descriptors, ours alone.
        unsafe {
            use std::os::fd::FromRawFd as _;
            (
                File::from(OwnedFd::from_raw_fd(fds[0])),
                File::from(OwnedFd::from_raw_fd(fds[1])),
            )
        }
    }

    #[test]
    fn a_pipe_nobody_reads_never_blocks_the_session_and_drops_are_counted() {
        let (_unread, write_end) = pipe();
        let writer = Writer::new(1 << 20);
        writer.set(Sink::Stdout, Box::new(write_end));
        let line = format!("{}\n", "x".repeat(1023));
        let started = Instant::now();
        let mut queued = 0u64;
        // 4 MiB: the pipe (64 KiB) and the queue (1 MiB) fill; the rest
        // is dropped at once.
        for _ in 0..4096 {
            if writer.push(Sink::Stdout, line.clone()).unwrap() {
                queued += 1;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "pushing took {:?}",
            started.elapsed()
        );
        let dropped = writer.dropped(Sink::Stdout);
        assert_eq!(queued + dropped, 4096);
        assert!(dropped >= 4096 - 1024 - 256, "dropped {dropped}");
        assert!(queued >= 1024, "queued {queued}");
        // Closing gives up on a pipe that takes nothing.
        let started = Instant::now();
        assert!(writer.close(Duration::from_millis(300)) > 0);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn lines_reach_a_file_within_a_second_while_the_session_goes_on() {
        let path = std::env::temp_dir().join(format!("ngx-trace-writer-{}", std::process::id()));
        let writer = Writer::new(QUEUE_BYTES);
        writer.set(Sink::Record, Box::new(File::create(&path).unwrap()));
        writer
            .push(Sink::Record, "{\"event\":\"upstream\"}\n".into())
            .unwrap();
        let started = Instant::now();
        let mut text = String::new();
        while started.elapsed() < Duration::from_secs(1) && text.is_empty() {
            thread::sleep(Duration::from_millis(20));
            text = std::fs::read_to_string(&path).unwrap();
        }
        assert_eq!(text, "{\"event\":\"upstream\"}\n");
        // A steady stream (the queue never runs dry for long) is flushed
        // at least every FLUSH_EVERY too.
        let stream = thread::scope(|s| {
            let pusher = s.spawn(|| {
                let until = Instant::now() + Duration::from_millis(700);
                let mut n = 0;
                while Instant::now() < until {
                    writer.push(Sink::Record, format!("{n}\n")).unwrap();
                    n += 1;
                }
                n
            });
            thread::sleep(Duration::from_millis(500));
            let len = std::fs::metadata(&path).unwrap().len();
            (pusher.join().unwrap(), len)
        });
        assert!(
            stream.1 > 100,
            "only {} bytes written after 500 ms",
            stream.1
        );
        assert_eq!(writer.close(Duration::from_secs(5)), 0);
        assert_eq!(writer.dropped(Sink::Record), 0);
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 1 + stream.0);
        assert_eq!(text.lines().last(), Some(&*format!("{}", stream.0 - 1)));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_closed_reader_is_told_as_a_broken_pipe() {
        let (read_end, write_end) = pipe();
        drop(read_end);
        let writer = Writer::new(QUEUE_BYTES);
        writer.set(Sink::Stdout, Box::new(write_end));
        writer.push(Sink::Stdout, "a\n".into()).unwrap();
        let started = Instant::now();
        while writer.failure(Sink::Stdout).is_ok() && started.elapsed() < Duration::from_secs(2) {
            thread::sleep(Duration::from_millis(10));
        }
        let err = writer.push(Sink::Stdout, "b\n".into()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe, "{err}");
        assert_eq!(writer.close(Duration::from_secs(1)), 0);
    }
}
