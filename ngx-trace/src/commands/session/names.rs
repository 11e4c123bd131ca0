//! Upstream names by address, formatted once per address rather than once
//! per exchange.
use std::{collections::HashMap, rc::Rc};

use ngx_trace_common::UpstreamAddr;

use crate::kernel::records::{Transport, upstream_name};

/// The most names held before the cache starts again: a neighbour
/// connecting to a new UNIX path per call would fill it; formatting a name
/// again is cheap, holding 65,536 was 16 MB.
const NAMES_CACHED: usize = 4_096;

/// The transport and name of each upstream address seen lately.
#[derive(Debug, Default)]
pub(super) struct Names(HashMap<UpstreamAddr, (Transport, Rc<str>)>);

impl Names {
    /// The transport and name of `addr`, from the cache or formatted now.
    pub(super) fn get(&mut self, addr: &UpstreamAddr) -> (Transport, Rc<str>) {
        if self.0.len() >= NAMES_CACHED {
            self.0.clear();
        }
        self.0
            .entry(*addr)
            .or_insert_with(|| {
                let (transport, name) = upstream_name(addr);
                (transport, name.into())
            })
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use ngx_trace_common::AF_INET;

    use super::*;

    #[test]
    fn the_name_cache_stays_bounded_and_names_stay_right() {
        let mut names = Names::default();
        for port in 1..=20_000u16 {
            let mut addr = UpstreamAddr::ZERO;
            addr.family = AF_INET;
            addr.port_be = port.to_be();
            addr.data[..4].copy_from_slice(&[127, 0, 0, 1]);
            let (transport, name) = names.get(&addr);
            assert_eq!(transport, Transport::Tcp);
            assert_eq!(&*name, format!("127.0.0.1:{port}"));
            assert!(
                names.0.len() <= NAMES_CACHED,
                "{} names cached",
                names.0.len()
            );
        }
    }
}
