//! The drain thread: empties the kernel's ring buffer at a fixed cadence,
//! whatever the session does, and hands the records over in batches.
//!
//! The ring is small (1 MiB, about 4,000 exchanges): a session busy for a
//! few hundred milliseconds (a slow `/proc` read, a slow disk, a stuck
//! stdout) would otherwise leave it full, and the kernel would drop the
//! records of exactly the failures an incident is about. Here the records
//! are copied out at once and pile up in user space instead, up to
//! [`BACKLOG_CAP`]; past it the thread stops draining, so the kernel drops
//! and counts (`ring_buffer_full`) and the accounting stays exact.
use std::{
    collections::VecDeque,
    io,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::sync::mpsc::{self, error::TrySendError};

use crate::notice::notice;

/// The longest the thread sleeps between two drains: answered exchanges
/// are written without waking user space (see the kernel's record.rs).
pub const CADENCE: Duration = Duration::from_millis(50);
/// Batches in the channel to the session at most.
const CHANNEL_BATCHES: usize = 64;
/// The bytes of records drained and not yet handled by the session, at
/// most (about 250,000 exchanges, seconds of a busy host).
pub const BACKLOG_CAP: usize = 64 << 20;
/// The bytes of one batch, at most.
const BATCH_BYTES: usize = 1 << 20;
/// How long the thread waits, at the cap, before it looks again.
const AT_CAP_WAIT: Duration = Duration::from_millis(10);

/// Records copied out of the ring, in order: one arena and where each
/// record ends in it.
#[derive(Debug, Default)]
pub struct Batch {
    arena: Vec<u8>,
    ends: Vec<usize>,
}

impl Batch {
    /// Appends a copy of `record`.
    pub fn push(&mut self, record: &[u8]) {
        self.arena.extend_from_slice(record);
        self.ends.push(self.arena.len());
    }

    /// How many records it holds.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    /// Whether it holds no record.
    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The bytes of its records.
    pub fn bytes(&self) -> usize {
        self.arena.len()
    }

    /// Record `i`, as the kernel wrote it.
    pub fn get(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.arena[start..self.ends[i]]
    }
}

/// Where records come from: the ring buffer, or a list in tests.
pub trait Source {
    /// Copies the next record into `batch`; false when there is none now.
    fn next_into(&mut self, batch: &mut Batch) -> bool;
}

impl Source for RingBuf<MapData> {
    fn next_into(&mut self, batch: &mut Batch) -> bool {
        match self.next() {
            // The item gives its space back to the kernel when dropped.
            Some(item) => {
                batch.push(&item);
                true
            }
            None => false,
        }
    }
}

/// Takes records from `source` until it is empty or the batch holds at
/// least `room` bytes (a record may end past it).
pub fn fill(source: &mut impl Source, room: usize) -> Batch {
    let mut batch = Batch::default();
    while batch.bytes() < room && source.next_into(&mut batch) {}
    batch
}

/// How far the session is behind the kernel: bytes and records drained
/// and not yet handled, and the most ever.
#[derive(Debug, Default)]
pub struct Behind {
    bytes: AtomicUsize,
    records: AtomicUsize,
    peak_bytes: AtomicUsize,
    peak_records: AtomicUsize,
}

impl Behind {
    /// `batch` was drained.
    pub fn add(&self, batch: &Batch) {
        let bytes = self.bytes.fetch_add(batch.bytes(), Ordering::AcqRel) + batch.bytes();
        let records = self.records.fetch_add(batch.len(), Ordering::AcqRel) + batch.len();
        self.peak_bytes.fetch_max(bytes, Ordering::AcqRel);
        self.peak_records.fetch_max(records, Ordering::AcqRel);
    }

    /// `batch` was handled by the session.
    pub fn handled(&self, batch: &Batch) {
        self.bytes.fetch_sub(batch.bytes(), Ordering::AcqRel);
        self.records.fetch_sub(batch.len(), Ordering::AcqRel);
    }

    /// The bytes that may still be drained under `cap`.
    pub fn room(&self, cap: usize) -> usize {
        cap.saturating_sub(self.bytes.load(Ordering::Acquire))
    }

    /// The most bytes and records the session was ever behind.
    pub fn peak(&self) -> (usize, usize) {
        (
            self.peak_bytes.load(Ordering::Acquire),
            self.peak_records.load(Ordering::Acquire),
        )
    }
}

/// Batches drained and not yet in the channel (the session is behind),
/// oldest first.
#[derive(Debug, Default)]
pub struct Backlog {
    batches: VecDeque<Batch>,
}

impl Backlog {
    /// Keeps `batch` (unless empty) after those already kept.
    pub fn push(&mut self, batch: Batch) {
        if !batch.is_empty() {
            self.batches.push_back(batch);
        }
    }

    /// Hands batches, oldest first, to `send` until it gives one back
    /// (full); false when `send` says nobody receives any more.
    pub fn forward(&mut self, mut send: impl FnMut(Batch) -> Result<(), Option<Batch>>) -> bool {
        while let Some(batch) = self.batches.pop_front() {
            match send(batch) {
                Ok(()) => {}
                Err(Some(batch)) => {
                    self.batches.push_front(batch);
                    return true;
                }
                Err(None) => return false,
            }
        }
        true
    }

    /// Takes every batch, oldest first.
    pub fn take(&mut self) -> VecDeque<Batch> {
        std::mem::take(&mut self.batches)
    }
}

/// The batch the session is handling, and its next record.
#[derive(Debug, Default)]
pub struct Inbox {
    batch: Batch,
    next: usize,
}

impl Inbox {
    /// Whether records wait to be handled.
    pub fn has_work(&self) -> bool {
        self.next < self.batch.len()
    }

    /// Takes `batch` in place of the one handled.
    pub fn take(&mut self, batch: Batch) {
        self.batch = batch;
        self.next = 0;
    }

    /// Hands at most `max` records to `handle`, in order; once every one
    /// was handled, the batch no longer counts as `behind`.
    pub fn handle(
        &mut self,
        max: usize,
        behind: &Behind,
        mut handle: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        let end = self.batch.len().min(self.next.saturating_add(max));
        while self.next < end {
            let i = self.next;
            self.next += 1;
            handle(self.batch.get(i))?;
        }
        if !self.batch.is_empty() && self.next == self.batch.len() {
            behind.handled(&self.batch);
            self.take(Batch::default());
        }
        Ok(())
    }
}

/// The session's end of the drain: the batch it is handling and the
/// channel the next ones come from.
pub struct Drain {
    rx: mpsc::Receiver<Batch>,
    inbox: Inbox,
    open: bool,
    behind: Arc<Behind>,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Drain {
    /// Starts the thread that drains `ring`.
    pub fn start(ring: RingBuf<MapData>) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        let behind = Arc::new(Behind::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = thread::Builder::new()
            .name("ngx-trace-drain".into())
            .spawn({
                let behind = Arc::clone(&behind);
                let stop = Arc::clone(&stop);
                move || run(ring, &tx, &behind, &stop)
            })?;
        Ok(Self {
            rx,
            inbox: Inbox::default(),
            open: true,
            behind,
            stop,
            thread: Some(thread),
        })
    }

    /// Whether records of the current batch wait to be handled.
    pub fn has_work(&self) -> bool {
        self.inbox.has_work()
    }

    /// Whether the session should wait for the next batch.
    pub fn wants_batch(&self) -> bool {
        self.open && !self.has_work()
    }

    /// The next batch, `None` once the thread has ended.
    pub async fn recv(&mut self) -> Option<Batch> {
        self.rx.recv().await
    }

    /// Takes `batch` (from [`Drain::recv`]) as the one to handle; fails if
    /// the thread ended before it was asked to.
    pub fn take(&mut self, batch: Option<Batch>) -> io::Result<()> {
        match batch {
            Some(batch) => {
                self.inbox.take(batch);
                Ok(())
            }
            None => {
                self.open = false;
                Err(io::Error::other(
                    "the thread draining the ring buffer ended unexpectedly; \
                     restart ngx-trace",
                ))
            }
        }
    }

    /// Hands at most `max` records of the current batch to `handle`, in
    /// order (so that a long batch leaves room for the session's timers).
    pub fn handle(
        &mut self,
        max: usize,
        handle: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.inbox.handle(max, &self.behind, handle)
    }

    /// Stops the thread after a last drain, handles every record left,
    /// in order, and says how far behind the session fell if that was
    /// more than the kernel's ring holds.
    pub async fn finish(
        mut self,
        mut handle: impl FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        self.stop.store(true, Ordering::Release);
        self.handle(usize::MAX, &mut handle)?;
        while let Some(batch) = self.rx.recv().await {
            self.inbox.take(batch);
            self.handle(usize::MAX, &mut handle)?;
        }
        self.open = false;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(io::Error::other(
                "the thread draining the ring buffer failed; records may be missing",
            ));
        }
        let (bytes, records) = self.behind.peak();
        if let Some(said) = peak_notice(bytes, records) {
            notice(&said);
        }
        Ok(())
    }
}

impl Drop for Drain {
    fn drop(&mut self) {
        // On an error: the thread ends at its next look (within CADENCE).
        self.stop.store(true, Ordering::Release);
    }
}

/// What to say of the session's peak backlog: nothing unless it was more
/// than the kernel's ring holds (records that would have been lost).
pub fn peak_notice(bytes: usize, records: usize) -> Option<String> {
    (bytes > ngx_trace_common::EVENTS_BYTES as usize).then(|| {
        format!(
            "the session fell behind the kernel by up to {records} records ({:.1} MiB, more \
             than the kernel's ring buffer holds): they were kept in memory, none lost",
            bytes as f64 / f64::from(1u32 << 20)
        )
    })
}

/// The drain loop: drains, forwards, waits for the ring or the cadence;
/// on `stop`, drains what is left, hands every batch over and ends (which
/// closes the channel).
fn run(mut ring: RingBuf<MapData>, tx: &mpsc::Sender<Batch>, behind: &Behind, stop: &AtomicBool) {
    let mut backlog = Backlog::default();
    let mut cap_said = false;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        let cap = if stopping { usize::MAX } else { BACKLOG_CAP };
        loop {
            let room = behind.room(cap);
            if room == 0 {
                if !cap_said {
                    cap_said = true;
                    notice(&format!(
                        "the session is {} MiB of records behind the kernel: no more are \
                         drained until it catches up, the kernel counts what it drops \
                         (ring_buffer_full)",
                        BACKLOG_CAP >> 20
                    ));
                }
                break;
            }
            let batch = fill(&mut ring, room.min(BATCH_BYTES));
            let more = batch.bytes() >= BATCH_BYTES;
            behind.add(&batch);
            backlog.push(batch);
            if !more {
                break;
            }
        }
        let open = backlog.forward(|batch| match tx.try_send(batch) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(batch)) => Err(Some(batch)),
            Err(TrySendError::Closed(_)) => Err(None),
        });
        if !open {
            return;
        }
        if stopping {
            for batch in backlog.take() {
                if tx.blocking_send(batch).is_err() {
                    return;
                }
            }
            return;
        }
        if behind.room(BACKLOG_CAP) == 0 {
            thread::sleep(AT_CAP_WAIT);
        } else {
            wait_readable(&ring, CADENCE);
        }
    }
}

/// Waits until the ring has records to read or `timeout` passes.
fn wait_readable(ring: &RingBuf<MapData>, timeout: Duration) {
    let mut fds = libc::pollfd {
        fd: ring.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd, the ring's fd, open while `ring` lives. An
    // error (EINTR) only ends the wait early.
    unsafe { libc::poll(&mut fds, 1, ms) };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records of `sizes` bytes, each filled with its index.
    struct List(VecDeque<Vec<u8>>);

    impl List {
        fn of(sizes: &[usize]) -> Self {
            Self(
                sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &n)| vec![i as u8; n])
                    .collect(),
            )
        }
    }

    impl Source for List {
        fn next_into(&mut self, batch: &mut Batch) -> bool {
            match self.0.pop_front() {
                Some(r) => {
                    batch.push(&r);
                    true
                }
                None => false,
            }
        }
    }

    #[test]
    fn a_batch_gives_back_each_record_as_written_in_order() {
        let mut source = List::of(&[264, 16, 264]);
        let batch = fill(&mut source, usize::MAX);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.bytes(), 544);
        assert_eq!(batch.get(0), &[0u8; 264][..]);
        assert_eq!(batch.get(1), &[1u8; 16][..]);
        assert_eq!(batch.get(2), &[2u8; 264][..]);
    }

    #[test]
    fn a_fill_stops_at_its_room_and_leaves_the_rest_in_the_ring() {
        let mut source = List::of(&[264; 10]);
        let batch = fill(&mut source, 600);
        // Three records: the third starts below the room and ends past it.
        assert_eq!(batch.len(), 3);
        assert_eq!(source.0.len(), 7);
        assert_eq!(fill(&mut source, 0).len(), 0);
        assert_eq!(source.0.len(), 7);
    }

    #[test]
    fn the_backlog_is_bounded_and_its_peak_kept() {
        let behind = Behind::default();
        let cap = 1000;
        let mut source = List::of(&[264; 10]);
        let mut batches = Vec::new();
        // The session handles nothing: draining stops at the cap, the
        // rest stays in the ring (for the kernel to count as dropped).
        while behind.room(cap) > 0 {
            let batch = fill(&mut source, behind.room(cap));
            behind.add(&batch);
            batches.push(batch);
        }
        assert_eq!(batches.iter().map(Batch::len).sum::<usize>(), 4);
        assert_eq!(source.0.len(), 6);
        assert_eq!(behind.peak(), (1056, 4));
        for b in &batches {
            behind.handled(b);
        }
        assert_eq!(behind.room(cap), cap);
        // The peak stays after the session caught up.
        assert_eq!(behind.peak(), (1056, 4));
    }

    #[test]
    fn the_backlog_forwards_in_order_until_the_channel_is_full() {
        let mut backlog = Backlog::default();
        for n in 1..=3 {
            backlog.push(fill(&mut List::of(&vec![8; n]), usize::MAX));
        }
        backlog.push(Batch::default());
        let mut sent = Vec::new();
        let open = backlog.forward(|b| {
            if sent.len() == 2 {
                return Err(Some(b));
            }
            sent.push(b.len());
            Ok(())
        });
        assert!(open);
        assert_eq!(sent, [1, 2]);
        let rest: Vec<usize> = backlog.take().iter().map(Batch::len).collect();
        assert_eq!(rest, [3], "the empty batch is never kept");
        backlog.push(fill(&mut List::of(&[8]), usize::MAX));
        assert!(!backlog.forward(|_| Err(None)), "nobody receives");
    }

    #[test]
    fn the_session_handles_a_batch_a_few_records_a_turn_in_order() {
        let behind = Behind::default();
        let batch = fill(&mut List::of(&[4; 5]), usize::MAX);
        behind.add(&batch);
        let mut inbox = Inbox::default();
        inbox.take(batch);
        let mut seen = Vec::new();
        let mut turns = 0;
        while inbox.has_work() {
            turns += 1;
            inbox
                .handle(2, &behind, |r| {
                    seen.push(r[0]);
                    Ok(())
                })
                .unwrap();
        }
        assert_eq!(turns, 3);
        assert_eq!(seen, [0, 1, 2, 3, 4]);
        assert_eq!(behind.room(100), 100, "handled: no longer behind");
        // A failing record stops the turn; the next turn goes on after it.
        let batch = fill(&mut List::of(&[4; 3]), usize::MAX);
        behind.add(&batch);
        inbox.take(batch);
        let mut seen = Vec::new();
        let failed = inbox.handle(10, &behind, |r| {
            seen.push(r[0]);
            if r[0] == 1 {
                Err(io::Error::other("bad"))
            } else {
                Ok(())
            }
        });
        assert!(failed.is_err());
        assert!(inbox.has_work());
        assert_eq!(seen, [0, 1]);
    }

    #[test]
    fn a_backlog_beyond_the_ring_is_said_with_its_size() {
        assert_eq!(peak_notice(1 << 20, 4000), None);
        assert_eq!(
            peak_notice(3 << 20, 11_915).as_deref(),
            Some(
                "the session fell behind the kernel by up to 11915 records (3.0 MiB, more \
                 than the kernel's ring buffer holds): they were kept in memory, none lost"
            )
        );
    }
}
