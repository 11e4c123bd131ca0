//! From facts to causes: the phases of an exchange, the verdict rules, the
//! fates of processes, what an error-log line can mean, and the join of a
//! log line to what the kernel saw; with what waits for late facts (a
//! client's close, a backend's exit) and what is asked of the kernel about
//! a waiting socket. Uses the kernel's records and nginx's facts, never
//! the report stage.
pub mod accept_queue;
pub mod causes;
pub mod fates;
pub mod held;
pub mod log_join;
pub mod peer_wait;
pub mod timings;
pub mod unacked;
pub mod verdict;
