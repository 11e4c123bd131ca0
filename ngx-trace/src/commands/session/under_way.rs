//! The exchanges under way at the last look, counted as `top` shows them:
//! per upstream, and per method and location.
use std::{collections::BTreeMap, rc::Rc};

use crate::{
    kernel::{records::Transport, request_head::Waiting},
    report::event::{LocationRef, location_row},
};

/// An exchange under way at the last look.
#[derive(Debug)]
pub(super) struct InFlight {
    pub transport: Transport,
    pub upstream: Rc<str>,
    /// How long it has waited (ms): to connect, or for its response.
    pub wait_ms: u64,
    pub worker: u32,
    /// Its request's first byte (0 while connecting): the request's key.
    pub req_first_ns: u64,
}

/// What is under way at the last look: how many exchanges, and the longest
/// wait (ms), per upstream and per method and location (as `top` names
/// its rows).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct UnderWay {
    /// By upstream name.
    pub by_upstream: BTreeMap<String, (u64, u64)>,
    /// By `METHOD location` (see [`crate::report::event::location_row`]).
    pub by_location: BTreeMap<String, (u64, u64)>,
}

impl UnderWay {
    /// Counts `in_flight`, each placed by its request (from `requests`,
    /// when the kernel's copy of it is read) with `place`.
    pub(super) fn count(
        in_flight: &[InFlight],
        requests: &Waiting,
        place: impl Fn(&str, Option<&str>) -> (Option<LocationRef>, Vec<String>),
    ) -> Self {
        let mut per = UnderWay::default();
        let count = |rows: &mut BTreeMap<String, (u64, u64)>, name: String, wait_ms: u64| {
            let e = rows.entry(name).or_default();
            e.0 += 1;
            e.1 = e.1.max(wait_ms);
        };
        for x in in_flight {
            count(&mut per.by_upstream, x.upstream.to_string(), x.wait_ms);
            let request = requests.get(x.worker, x.req_first_ns);
            let (location, candidates) = place(&x.upstream, request.map(|r| r.path.as_str()));
            let candidates: Vec<&str> = candidates.iter().map(String::as_str).collect();
            let row = location_row(
                request.map(|r| r.method.as_str()),
                location.as_ref().map(|l| l.name.as_str()),
                &candidates,
            );
            count(&mut per.by_location, row, x.wait_ms);
        }
        per
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::request_head::Request;

    fn in_flight(upstream: &str, wait_ms: u64, worker: u32, req_first_ns: u64) -> InFlight {
        InFlight {
            transport: Transport::Tcp,
            upstream: upstream.into(),
            wait_ms,
            worker,
            req_first_ns,
        }
    }

    #[test]
    fn exchanges_are_counted_per_upstream_and_per_method_and_location() {
        let mut requests = Waiting::default();
        let get = |path: &str| Request {
            method: "GET".into(),
            path: path.into(),
            truncated: false,
        };
        requests.insert(7, 100, get("/api/export"));
        requests.insert(7, 200, get("/static/a.css"));
        let rows = [
            in_flight("127.0.0.1:8080", 30, 7, 100),
            in_flight("127.0.0.1:8080", 900, 7, 200),
            // Still connecting: no request yet.
            in_flight("127.0.0.1:9000", 5, 8, 0),
        ];
        // A configuration with `/api/` for the first path, candidates
        // for the rest of 8080, nothing known of 9000.
        let place = |upstream: &str, path: Option<&str>| match (upstream, path) {
            (_, Some(p)) if p.starts_with("/api/") => (
                Some(LocationRef {
                    name: "/api/".into(),
                    file: "/etc/nginx/nginx.conf".into(),
                    line: 12,
                }),
                Vec::new(),
            ),
            ("127.0.0.1:8080", _) => (None, vec!["/api/".into(), "/".into()]),
            _ => (None, Vec::new()),
        };
        let per = UnderWay::count(&rows, &requests, place);
        assert_eq!(
            per.by_upstream,
            BTreeMap::from([
                ("127.0.0.1:8080".to_string(), (2, 900)),
                ("127.0.0.1:9000".to_string(), (1, 5)),
            ])
        );
        assert_eq!(
            per.by_location,
            BTreeMap::from([
                ("GET /api/".to_string(), (1, 30)),
                ("GET /api/|/".to_string(), (1, 900)),
                ("? ?".to_string(), (1, 5)),
            ])
        );
    }
}
