//! Kernel programs of ngx-trace: one module per subject, maps in `maps`.
#![no_std]
#![no_main]

mod config;
mod connect;
mod exchange;
mod maps;
mod peer;
mod process;
mod record;
mod request;
mod sock_mark;
mod task;
mod tcp_sock;
mod tcp_state;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
