//! Load as a busy site makes it: clients that close every connection
//! (HTTP/1.0, a new connection per request) in a loop, as fast as nginx
//! answers, until stopped.
use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
};

/// Client threads looping `GET path` on 127.0.0.1:`port`, each request on a
/// new connection.
pub struct Saturation {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<BTreeMap<u16, u64>>>,
}

impl Saturation {
    /// Starts `threads` clients (16 saturate two cores with nginx's two
    /// workers).
    pub fn start(port: u16, path: &'static str, threads: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut statuses = BTreeMap::new();
                    while !stop.load(Ordering::Relaxed) {
                        *statuses.entry(crate::http::get(port, path)).or_insert(0) += 1;
                    }
                    statuses
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the clients; returns how many answers of each status they got
    /// (0: no answer, the connection failed).
    pub fn stop(mut self) -> BTreeMap<u16, u64> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = BTreeMap::new();
        for t in self.threads.drain(..) {
            for (status, n) in t.join().expect("a load thread panicked") {
                *all.entry(status).or_insert(0) += n;
            }
        }
        all
    }
}

impl Drop for Saturation {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
