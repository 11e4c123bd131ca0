//! What `/proc` says of a process's TCP connections: its socket fds and,
//! from its network namespace's `/proc/<pid>/net/tcp{,6}` (read once, at
//! start-up adoption), each established connection's peer.
use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
};

use ngx_trace_common::{AF_INET, AF_INET6, UpstreamAddr};

/// An established TCP connection as `/proc/net/tcp{,6}` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Established {
    /// Local port.
    pub local_port: u16,
    /// The peer.
    pub remote: UpstreamAddr,
    /// The socket's inode (the `socket:[N]` a process's fd links to).
    pub inode: u64,
}

const TCP_ESTABLISHED: &str = "01";

/// An address column (`0100007F:1F90`) of `/proc/net/tcp` (`family`
/// AF_INET) or `/proc/net/tcp6` (AF_INET6): the kernel prints each 32-bit
/// word of the address as a number in host order.
fn parse_addr(column: &str, family: u16) -> Option<UpstreamAddr> {
    let (hex, port) = column.split_once(':')?;
    let mut addr = UpstreamAddr::ZERO;
    addr.family = family;
    addr.port_be = u16::from_str_radix(port, 16).ok()?.to_be();
    let words = match family {
        AF_INET => 1,
        AF_INET6 => 4,
        _ => return None,
    };
    if hex.len() != words * 8 {
        return None;
    }
    for w in 0..words {
        let word = u32::from_str_radix(hex.get(w * 8..w * 8 + 8)?, 16).ok()?;
        addr.data[w * 4..w * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some(addr)
}

/// The established connection a row of `/proc/net/tcp` (`family`
/// AF_INET) or `/proc/net/tcp6` (AF_INET6) lists, if it is one.
fn established_row(line: &str, family: u16) -> Option<Established> {
    let cols: Vec<&str> = line.split_whitespace().collect();
    if cols.get(3) != Some(&TCP_ESTABLISHED) {
        return None;
    }
    let local = parse_addr(cols.get(1)?, family)?;
    Some(Established {
        local_port: u16::from_be(local.port_be),
        remote: parse_addr(cols.get(2)?, family)?,
        inode: cols.get(9)?.parse().ok()?,
    })
}

/// The established connections in the text of `/proc/net/tcp` (`family`
/// AF_INET) or `/proc/net/tcp6` (AF_INET6); lines that do not parse are
/// skipped.
#[cfg(test)]
pub fn parse_established(text: &str, family: u16) -> Vec<Established> {
    text.lines()
        .skip(1)
        .filter_map(|line| established_row(line, family))
        .collect()
}

/// The socket inodes `pid` holds, by fd.
pub fn socket_fds(pid: u32) -> BTreeMap<u64, i32> {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return BTreeMap::new();
    };
    dir.filter_map(|e| {
        let e = e.ok()?;
        let fd: i32 = e.file_name().to_str()?.parse().ok()?;
        let link = fs::read_link(e.path()).ok()?;
        Some((parse_socket_link(link.to_str()?)?, fd))
    })
    .collect()
}

/// The TCP socket table `pid` sees (its own network namespace, which may
/// not be ours): the ports in LISTEN state and the established connections.
#[derive(Debug, Default)]
pub struct SocketTable {
    /// Local ports something listens on.
    pub listening: BTreeSet<u16>,
    /// Established connections.
    pub established: Vec<Established>,
}

/// Reads `/proc/<pid>/net/tcp` and `tcp6` once each, a line at a time,
/// keeping the established connections whose inode is in `wanted` (the
/// worker's own sockets): on a host with 100,000 sockets the tables are
/// megabytes of text, and neither they nor their other rows are held.
pub fn socket_table(pid: u32, wanted: &BTreeMap<u64, i32>) -> SocketTable {
    use std::io::BufRead as _;
    let mut table = SocketTable::default();
    for (file, family) in [("tcp", AF_INET), ("tcp6", AF_INET6)] {
        let Ok(f) = fs::File::open(format!("/proc/{pid}/net/{file}")) else {
            continue;
        };
        let mut reader = std::io::BufReader::with_capacity(64 << 10, f);
        let mut line = String::new();
        // The header line first.
        let _ = reader.read_line(&mut line);
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            table.listening.extend(listen_port(&line));
            if let Some(conn) = established_row(&line, family)
                && wanted.contains_key(&conn.inode)
            {
                table.established.push(conn);
            }
        }
    }
    table
}

/// `socket:[12345]` → 12345.
fn parse_socket_link(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Local ports of the sockets in LISTEN state in a `/proc/net/tcp` or
/// `/proc/net/tcp6` text. Lines that do not parse are skipped.
#[cfg(test)]
pub fn parse_listen_ports(text: &str) -> BTreeSet<u16> {
    text.lines().skip(1).filter_map(listen_port).collect()
}

/// The local port of a `/proc/net/tcp{,6}` row in LISTEN state.
pub fn listen_port(line: &str) -> Option<u16> {
    const TCP_LISTEN: &str = "0A";
    let mut cols = line.split_whitespace();
    let local = cols.nth(1)?;
    let state = cols.nth(1)?;
    if state != TCP_LISTEN {
        return None;
    }
    let port = local.rsplit_once(':')?.1;
    u16::from_str_radix(port, 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::records::upstream_name;

    /// `/proc/net/tcp` of a host running nginx (port 8080) with a kept-alive
    /// upstream connection to 127.0.0.1:3999 and a client connection.
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D2B4 0100007F:0F9F 01 00000000:00000000 00:00000000 00000000 65534        0 40001 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:1F90 0100007F:E1A2 01 00000000:00000000 00:00000000 00000000 65534        0 40002 1 0000000000000000 20 4 30 10 -1
   3: 0100007F:C000 0100007F:0F9F 06 00000000:00000000 03:00000D43 00000000     0        0 0 3 0000000000000000
";

    #[test]
    fn established_connections_with_their_peers_and_inodes() {
        let conns = parse_established(TCP, AF_INET);
        assert_eq!(conns.len(), 2, "only ESTABLISHED: {conns:?}");
        assert_eq!(conns[0].local_port, 53940);
        assert_eq!(upstream_name(&conns[0].remote).1, "127.0.0.1:3999");
        assert_eq!(conns[0].inode, 40001);
        assert_eq!(conns[1].local_port, 8080, "a client connection");
        assert!(parse_listen_ports(TCP).contains(&8080));
    }

    #[test]
    fn ipv6_peers_read_word_by_word() {
        let tcp6 = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:D2B6 00000000000000000000000001000000:1F90 01 00000000:00000000 00:00000000 00000000 65534        0 50001 1 0000000000000000 20 4 0 10 -1
";
        let conns = parse_established(tcp6, AF_INET6);
        assert_eq!(conns.len(), 1);
        assert_eq!(upstream_name(&conns[0].remote).1, "[::1]:8080");
    }

    #[test]
    fn mangled_lines_are_skipped() {
        let text = "header\n 0: 0100007F:1F90 0100007F:0F9F 01 x x x x x inode\n\
                    1: zz 0100007F:0F9F 01 x x x x x 12\n 2: 0100007F 0100007F:0F9F 01\n";
        assert!(parse_established(text, AF_INET).is_empty());
    }

    #[test]
    fn this_process_sees_its_own_established_loopback_connection() {
        // A real connection, read back from the real /proc.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let _server = listener.accept().unwrap();
        let local = client.local_addr().unwrap().port();
        let text = fs::read_to_string("/proc/self/net/tcp").unwrap();
        let fds = socket_fds(std::process::id());
        let mine = parse_established(&text, AF_INET)
            .into_iter()
            .find(|c| c.local_port == local)
            .expect("our connection in /proc/self/net/tcp");
        assert_eq!(upstream_name(&mine.remote).1, format!("127.0.0.1:{port}"));
        assert!(fds.contains_key(&mine.inode), "its inode is one of our fds");
    }

    #[test]
    fn listening_ports_from_proc_net_tcp() {
        // /proc/net/tcp of a host with nginx on 127.0.0.1:18080 and a client
        // connection to it (state 01, not listening).
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 528 1 0000000064b3f6b3 100 0 0 10 0\n\
   1: 0100007F:46A0 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 2087454 1 00000000543dc31d 100 0 0 10 0\n\
   2: 0100007F:46A0 0100007F:E7FE 01 00000000:00000000 00:00000000 00000000 65534        0 2087999 1 0000000011111111 20 4 30 10 -1\n\
   3: garbage\n";
        assert_eq!(parse_listen_ports(text), BTreeSet::from([2024, 18080]));
        // tcp6 addresses are longer; the port is still after the last colon.
        let v6 = "header\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 0 0 0 0 0 1\n";
        assert_eq!(parse_listen_ports(v6), BTreeSet::from([8080]));
    }
}
