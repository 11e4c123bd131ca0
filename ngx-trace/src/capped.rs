//! A cap on the names a per-name table holds. Upstream names are the traced
//! processes' choice (anything can name itself `nginx` and connect to a new
//! UNIX path per call), so a table keyed by them grows the root daemon
//! without end. Past the cap, new names are counted under [`OTHER`]: totals
//! stay exact, and how many distinct names were folded is counted and shown.
use std::{
    collections::HashSet,
    hash::{BuildHasher, RandomState},
};

/// The key folded names are counted under.
pub const OTHER: &str = "other";

/// Distinct folded names are counted exactly up to this many; past it the
/// count is a lower bound (8 bytes a name: about 600 KB at most).
const FOLDED_TRACKED: usize = 65_536;

/// Which names get an entry of their own: the first `cap` seen.
#[derive(Debug, Clone)]
pub struct NameCap {
    cap: usize,
    /// Names given an entry so far.
    admitted: usize,
    /// Hashes of the names folded (not the names: they may be long).
    folded: HashSet<u64>,
    /// Whether more names were folded than `folded` holds.
    more: bool,
    hasher: RandomState,
}

impl NameCap {
    /// Room for `cap` names.
    pub fn new(cap: usize) -> Self {
        Self {
            cap,
            admitted: 0,
            folded: HashSet::new(),
            more: false,
            hasher: RandomState::new(),
        }
    }

    /// The key to count `name` under: `name` itself if the table has it
    /// (`known`) or has room for it, else [`OTHER`] (and the fold counted).
    pub fn key<'a>(&mut self, name: &'a str, known: bool) -> &'a str {
        if known {
            return name;
        }
        if self.admitted < self.cap {
            self.admitted += 1;
            return name;
        }
        if self.folded.len() < FOLDED_TRACKED {
            self.folded.insert(self.hasher.hash_one(name));
        } else if !self.folded.contains(&self.hasher.hash_one(name)) {
            self.more = true;
        }
        OTHER
    }

    /// Distinct names folded into [`OTHER`] so far (a lower bound past
    /// 65,536).
    pub fn folded(&self) -> u64 {
        self.folded.len() as u64
    }

    /// `N further upstreams counted as "other"`, or `None` when none was.
    pub fn folded_text(&self, what: &str) -> Option<String> {
        match (self.folded(), self.more) {
            (0, _) => None,
            (n, false) => Some(format!(
                "{n} further {what} (past the first {}) counted as \"{OTHER}\"",
                self.cap
            )),
            (n, true) => Some(format!(
                "more than {n} further {what} (past the first {}) counted as \"{OTHER}\"",
                self.cap
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_past_the_cap_fold_and_each_is_counted_once() {
        let mut cap = NameCap::new(2);
        assert_eq!(cap.key("a", false), "a");
        assert_eq!(cap.key("b", false), "b");
        assert_eq!(cap.key("a", true), "a");
        assert_eq!(cap.key("unix:/tmp/x1", false), OTHER);
        assert_eq!(cap.key("unix:/tmp/x1", false), OTHER);
        assert_eq!(cap.key("unix:/tmp/x2", false), OTHER);
        assert_eq!(cap.folded(), 2);
        assert_eq!(
            cap.folded_text("upstreams").as_deref(),
            Some("2 further upstreams (past the first 2) counted as \"other\"")
        );
        assert_eq!(NameCap::new(2).folded_text("upstreams"), None);
    }
}
