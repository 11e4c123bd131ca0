//! Decoding ring-buffer records, and naming upstreams as nginx does.
use std::net::{Ipv4Addr, Ipv6Addr};

use ngx_trace_common::{
    AF_INET, AF_INET6, AF_UNIX, ProcessRecord, RECORD_PROCESS, RECORD_UPSTREAM, UpstreamAddr,
    UpstreamRecord,
};

/// One record from the kernel.
#[derive(Debug, Clone, Copy)]
#[expect(
    clippy::large_enum_variant,
    reason = "records are decoded and consumed one at a time, never stored"
)]
pub enum Record {
    /// A finished connect attempt or exchange.
    Upstream(UpstreamRecord),
    /// A change to the traced processes.
    Process(ProcessRecord),
}

fn read<T: Copy>(bytes: &[u8], what: &str) -> Result<T, String> {
    if bytes.len() < size_of::<T>() {
        return Err(format!(
            "{what} record of {} bytes, expected {}",
            bytes.len(),
            size_of::<T>()
        ));
    }
    // SAFETY: length checked; the types are plain integers (any bit pattern
    // is valid) and read_unaligned has no alignment requirement.
    Ok(unsafe { bytes.as_ptr().cast::<T>().read_unaligned() })
}

/// Decodes one ring-buffer record; the first 4 bytes say its kind.
pub fn decode(bytes: &[u8]) -> Result<Record, String> {
    let kind = read::<u32>(bytes, "a")?;
    match kind {
        RECORD_UPSTREAM => read(bytes, "an upstream").map(Record::Upstream),
        RECORD_PROCESS => read(bytes, "a process").map(Record::Process),
        other => Err(format!("unknown record kind {other}")),
    }
}

/// How nginx reaches an upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Transport {
    /// TCP over IPv4 or IPv6.
    Tcp,
    /// A UNIX stream socket.
    Unix,
}

impl Transport {
    /// The name in JSON output.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Unix => "unix",
        }
    }
}

/// The upstream as nginx names it (`127.0.0.1:3999`, `[::1]:8080`,
/// `unix:/run/php.sock`), and its transport.
pub fn upstream_name(addr: &UpstreamAddr) -> (Transport, String) {
    let port = u16::from_be(addr.port_be);
    match addr.family {
        AF_INET => {
            let ip = Ipv4Addr::new(addr.data[0], addr.data[1], addr.data[2], addr.data[3]);
            (Transport::Tcp, format!("{ip}:{port}"))
        }
        AF_INET6 => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&addr.data[..16]);
            (
                Transport::Tcp,
                format!("[{}]:{port}", Ipv6Addr::from(octets)),
            )
        }
        AF_UNIX => {
            let len = addr
                .data
                .iter()
                .position(|&b| b == 0)
                .unwrap_or(addr.data.len());
            let path = String::from_utf8_lossy(&addr.data[..len]);
            (Transport::Unix, format!("unix:{path}"))
        }
        family => (Transport::Tcp, format!("family-{family}")),
    }
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::{END_CONNECT_SOCKET_ERROR, Exchange};

    use super::*;

    fn addr(family: u16, port: u16, data: &[u8]) -> UpstreamAddr {
        let mut a = UpstreamAddr::ZERO;
        a.family = family;
        a.port_be = port.to_be();
        a.data[..data.len()].copy_from_slice(data);
        a
    }

    #[test]
    fn names_upstreams_like_nginx() {
        assert_eq!(
            upstream_name(&addr(AF_INET, 3999, &[127, 0, 0, 1])),
            (Transport::Tcp, "127.0.0.1:3999".into())
        );
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        assert_eq!(upstream_name(&addr(AF_INET6, 8080, &v6)).1, "[::1]:8080");
        assert_eq!(
            upstream_name(&addr(AF_UNIX, 0, b"/run/php/php8.2-fpm.sock\0")),
            (Transport::Unix, "unix:/run/php/php8.2-fpm.sock".into())
        );
    }

    #[test]
    fn decodes_what_the_kernel_writes() {
        let mut exchange = Exchange::new(4243, 17, 1_000, addr(AF_INET, 3999, &[127, 0, 0, 1]));
        exchange.end = END_CONNECT_SOCKET_ERROR;
        exchange.errno = 111;
        exchange.end_ns = 91_000;
        let record = UpstreamRecord {
            kind: RECORD_UPSTREAM,
            _pad: 0,
            exchange,
        };
        // SAFETY: a plain repr(C) struct viewed as bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&raw const record).cast::<u8>(),
                size_of::<UpstreamRecord>(),
            )
        };
        let Ok(Record::Upstream(back)) = decode(bytes) else {
            panic!("not decoded as upstream");
        };
        let e = back.exchange;
        assert_eq!((e.tgid, e.errno, e.end_ns, e.fd), (4243, 111, 91_000, 17));
        assert_eq!(upstream_name(&e.addr).1, "127.0.0.1:3999");
    }

    #[test]
    fn short_or_unknown_records_are_errors() {
        assert!(decode(&[1, 0]).unwrap_err().contains("2 bytes"));
        assert!(
            decode(&1u32.to_ne_bytes())
                .unwrap_err()
                .contains("upstream record of 4 bytes")
        );
        assert!(
            decode(&9u32.to_ne_bytes())
                .unwrap_err()
                .contains("unknown record kind 9")
        );
    }
}
