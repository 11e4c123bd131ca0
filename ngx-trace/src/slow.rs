//! Side work: what may take long (walking `/proc` across the host, reading
//! nginx's configuration, resolving its host names) runs on a thread of
//! its own, never on the task that drains the kernel's ring buffer.
//!
//! Jobs come over a bounded queue the session only `try_send`s to: when
//! the side thread falls behind, a new job is skipped and counted, never
//! the kernel's records. A job runs for at most a time budget at a turn;
//! one not done by then waits behind the others and resumes where it was.
//! Results come back over a channel the session polls.
use std::{
    collections::VecDeque,
    marker::PhantomData,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, Sender, SyncSender, TryRecvError, TrySendError},
    },
    time::{Duration, Instant},
};

/// How long a job runs at one turn.
pub const BUDGET: Duration = Duration::from_millis(200);
/// Jobs waiting at most (beyond those started and not done, as many).
pub const QUEUE: usize = 16;

/// One piece of side work, done in steps.
pub trait Job<R>: Send {
    /// Works until done (`Some`: its result) or until `until`, when it
    /// stops where it is (`None`: resumed at a later turn).
    fn step(&mut self, until: Instant) -> Option<R>;
}

/// A job done in one step (its cost bounded by its own deadlines).
struct Once<F>(Option<F>);

impl<R, F: FnOnce() -> R + Send> Job<R> for Once<F> {
    fn step(&mut self, _until: Instant) -> Option<R> {
        self.0.take().map(|f| f())
    }
}

/// `f` as a job done in one step.
pub fn once<R: 'static, F: FnOnce() -> R + Send + 'static>(f: F) -> Box<dyn Job<R>> {
    Box::new(Once(Some(f)))
}

/// A job whose result is turned into another type.
struct Map<J, F, A>(J, F, PhantomData<fn() -> A>);

impl<A, B, J: Job<A>, F: Fn(A) -> B + Send> Job<B> for Map<J, F, A> {
    fn step(&mut self, until: Instant) -> Option<B> {
        self.0.step(until).map(&self.1)
    }
}

/// `job`, its result passed through `f`.
pub fn map<A, B, J, F>(job: J, f: F) -> Box<dyn Job<B>>
where
    J: Job<A> + 'static,
    F: Fn(A) -> B + Send + 'static,
    A: 'static,
    B: 'static,
{
    Box::new(Map(job, f, PhantomData))
}

/// What the tracing session's side work gives back.
pub enum Done {
    /// The traced masters' configurations, read again (a reload).
    Configs(crate::nginx::configs::ConfigRead),
    /// Who serves some upstreams.
    Backends(crate::nginx::backends::Found),
}

/// The session's end of a side thread whose jobs give `R`.
pub struct Side<R> {
    jobs: SyncSender<Box<dyn Job<R>>>,
    results: Receiver<R>,
    skipped: u64,
    resumed: Arc<AtomicU64>,
}

impl<R: Send + 'static> Side<R> {
    /// A side thread named `name`, with [`QUEUE`] and [`BUDGET`].
    pub fn start(name: &str) -> std::io::Result<Self> {
        Self::with(name, QUEUE, BUDGET)
    }

    /// A side thread named `name` queueing at most `queue` jobs, each
    /// running `budget` at a turn.
    pub fn with(name: &str, queue: usize, budget: Duration) -> std::io::Result<Self> {
        let (jobs, inbox) = mpsc::sync_channel(queue);
        let (outbox, results) = mpsc::channel();
        let resumed = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&resumed);
        std::thread::Builder::new()
            .name(name.into())
            .spawn(move || work(&inbox, &outbox, queue, budget, &counted))?;
        Ok(Self {
            jobs,
            results,
            skipped: 0,
            resumed,
        })
    }

    /// Queues `job`; skipped (and counted) when the queue is full or the
    /// thread is gone. Never waits.
    pub fn submit(&mut self, job: Box<dyn Job<R>>) -> bool {
        match self.jobs.try_send(job) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.skipped += 1;
                false
            }
        }
    }

    /// The results ready now.
    pub fn results(&self) -> impl Iterator<Item = R> + '_ {
        self.results.try_iter()
    }

    /// Jobs skipped because the side thread was behind.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Times a job ran out of its budget and was resumed later.
    pub fn resumed(&self) -> u64 {
        self.resumed.load(Ordering::Relaxed)
    }
}

/// The side thread: runs the jobs in turn until the session's end is gone.
fn work<R>(
    inbox: &Receiver<Box<dyn Job<R>>>,
    outbox: &Sender<R>,
    most: usize,
    budget: Duration,
    resumed: &AtomicU64,
) {
    let mut turns: VecDeque<Box<dyn Job<R>>> = VecDeque::new();
    loop {
        // Take a new job while there is room among those begun; wait for
        // one only when nothing is left to resume.
        if turns.is_empty() {
            match inbox.recv() {
                Ok(job) => turns.push_back(job),
                Err(_) => return,
            }
        } else if turns.len() < most {
            match inbox.try_recv() {
                Ok(job) => turns.push_back(job),
                Err(TryRecvError::Empty) => {}
                Err(TryRecvError::Disconnected) => return,
            }
        }
        let Some(mut job) = turns.pop_front() else {
            continue;
        };
        match job.step(Instant::now() + budget) {
            Some(result) => {
                if outbox.send(result).is_err() {
                    return;
                }
            }
            None => {
                resumed.fetch_add(1, Ordering::Relaxed);
                turns.push_back(job);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Waits for `n` results, at most 5 s.
    fn wait_for<R: Send + 'static>(side: &Side<R>, n: usize) -> Vec<R> {
        let mut got = Vec::new();
        let until = Instant::now() + Duration::from_secs(5);
        while got.len() < n && Instant::now() < until {
            got.extend(side.results());
            std::thread::sleep(Duration::from_millis(5));
        }
        got
    }

    #[test]
    fn a_full_queue_skips_and_counts_the_job_and_never_waits() {
        let mut side = Side::with("test-side", 2, Duration::from_millis(50)).unwrap();
        // The thread is held by the first job until `go` is dropped.
        let (go, held) = mpsc::channel::<()>();
        assert!(side.submit(once(move || {
            let _ = held.recv();
            "first"
        })));
        std::thread::sleep(Duration::from_millis(50));
        assert!(side.submit(once(|| "second")));
        assert!(side.submit(once(|| "third")));
        let at = Instant::now();
        assert!(!side.submit(once(|| "fourth")), "the queue holds 2");
        assert!(at.elapsed() < Duration::from_millis(20));
        assert_eq!(side.skipped(), 1);
        drop(go);
        assert_eq!(wait_for(&side, 3), ["first", "second", "third"]);
    }

    /// Work of `total` done in slices, stopping at each turn's deadline.
    struct Walk {
        left: Duration,
    }

    impl Job<&'static str> for Walk {
        fn step(&mut self, until: Instant) -> Option<&'static str> {
            while !self.left.is_zero() {
                if Instant::now() >= until {
                    return None;
                }
                let slice = self.left.min(Duration::from_millis(2));
                std::thread::sleep(slice);
                self.left -= slice;
            }
            Some("walked")
        }
    }

    #[test]
    fn a_job_over_its_budget_lets_others_pass_then_resumes() {
        let mut side = Side::with("test-side", 4, Duration::from_millis(20)).unwrap();
        assert!(side.submit(Box::new(Walk {
            left: Duration::from_millis(100),
        })));
        std::thread::sleep(Duration::from_millis(5));
        assert!(side.submit(once(|| "quick")));
        assert_eq!(wait_for(&side, 2), ["quick", "walked"]);
        assert!(side.resumed() >= 3, "resumed {} times", side.resumed());
        assert_eq!(side.skipped(), 0);
    }
}
