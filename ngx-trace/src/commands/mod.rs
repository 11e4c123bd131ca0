//! The commands: tracing (the default, and the run that `top`, `tune` and
//! live `explain` watch), its session (records in, events out), the side
//! thread for slow work, and each command's own logic. The top of the
//! tree: uses every stage, and nothing uses it but `main`.
pub mod check;
pub mod explain;
pub mod session;
pub mod top;
pub mod trace;
pub mod tune;
pub mod version;
