//! The kernel side, as user space drives it: checks before loading, the
//! kernel's BTF and tracefs, the choice of hook per capability, loading and
//! attaching the programs, draining and decoding their records, and the
//! kernel's own answers about sockets (sock_diag, `/proc/net`). Uses
//! `ngx-trace-common`; knows nothing of nginx's files or of what is printed.
pub mod btf;
pub mod clock;
pub mod config;
#[cfg(test)]
pub mod contract;
pub mod drain;
pub mod hooks;
pub mod kretprobe;
pub mod load_error;
pub mod preflight;
pub mod proc_net;
pub mod programs;
pub mod records;
pub mod sock_diag;
pub mod syscall_regs;
pub mod tracefs;
