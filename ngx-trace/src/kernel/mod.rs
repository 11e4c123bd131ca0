//! The kernel side, as user space drives it: checks before loading, the
//! offsets read from the kernel's BTF (with `ngx_trace_common::btf`, the
//! reader the bench shares) and tracefs, the choice of hook per
//! capability, loading and attaching the programs, draining and decoding
//! their records (a request's method and path taken from the bytes copied,
//! the rest dropped there), and the kernel's own answers about sockets
//! (sock_diag, `/proc/net`). Uses `ngx-trace-common` and the shared ground
//! at the root; knows nothing of nginx's files, of causes or of what is
//! printed.
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
pub mod request_head;
pub mod sock_diag;
pub mod syscall_regs;
pub mod tracefs;
