//! Which `location` of a `server` block nginx chose for a path, matched as
//! nginx matches (`ngx_http_core_find_location`): the exact `=` match ends
//! the search; else the longest prefix, then its nested locations; then,
//! unless that prefix is `^~`, the regular expressions of the level in
//! their order, the first that matches winning (and its nested locations
//! searched in turn). Named locations (`@name`) are never matched.
//!
//! Regular expressions are nginx's PCRE; the few a Rust `regex` cannot
//! compile (look-arounds, back references) make a search that reaches them
//! undecided, never a guess.
use crate::nginx::nginx_conf::Directive;

/// How a location matches.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    /// `= /path`.
    Exact,
    /// `/path`.
    Prefix,
    /// `^~ /path`: a prefix that stops the regular expressions.
    PrefixNoRegex,
    /// `~` / `~*`.
    Regex,
    /// `@name`.
    Named,
}

/// One `location` block and its nested ones.
#[derive(Debug, Clone)]
pub struct Node {
    /// As written after `location`, modifier included (`= /api/export`).
    pub name: String,
    /// Where its block starts.
    pub at: (String, u32),
    kind: Kind,
    /// The prefix (or exact path) to compare.
    prefix: String,
    /// The compiled expression (`None` for prefixes, and for an expression
    /// Rust cannot compile).
    regex: Option<regex::Regex>,
    children: Vec<Node>,
}

/// The locations of one `server` block.
#[derive(Debug, Clone, Default)]
pub struct ServerLocations {
    /// Where the `server` block starts.
    pub at: (String, u32),
    top: Vec<Node>,
}

/// What the search found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found<'a> {
    /// This location (its name and place).
    Location(&'a str, &'a (String, u32)),
    /// No location matches (nginx would answer from the server level).
    None,
    /// A regular expression Rust cannot compile was to be tried.
    Undecided,
}

/// The largest compiled expression accepted: a configuration is read from a
/// traced process's files, never trusted to be small.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

impl Node {
    fn of(d: &Directive) -> Option<Self> {
        let (kind, pattern) = match d.args.as_slice() {
            [m, p] if m == "=" => (Kind::Exact, p.clone()),
            [m, p] if m == "^~" => (Kind::PrefixNoRegex, p.clone()),
            [m, p] if m == "~" || m == "~*" => {
                let pattern = if m == "~*" {
                    format!("(?i){p}")
                } else {
                    p.clone()
                };
                (Kind::Regex, pattern)
            }
            [p] if p.starts_with('@') => (Kind::Named, p.clone()),
            // nginx also takes `=/path` and `~regex` written without a space.
            [p] if p.starts_with('=') => (Kind::Exact, p[1..].to_string()),
            [p] => (Kind::Prefix, p.clone()),
            _ => return None,
        };
        let regex = (kind == Kind::Regex)
            .then(|| {
                regex::RegexBuilder::new(&pattern)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .ok()
            })
            .flatten();
        Some(Self {
            name: d.args.join(" "),
            at: (d.file.clone(), d.line),
            kind,
            prefix: pattern,
            regex,
            children: nodes(d.block.as_deref().unwrap_or_default()),
        })
    }
}

/// The locations written directly in `block`.
fn nodes(block: &[Directive]) -> Vec<Node> {
    block
        .iter()
        .filter(|d| d.name == "location")
        .filter_map(Node::of)
        .collect()
}

impl ServerLocations {
    /// The locations of the `server` block `server`.
    pub fn of(server: &Directive) -> Self {
        Self {
            at: (server.file.clone(), server.line),
            top: nodes(server.block.as_deref().unwrap_or_default()),
        }
    }

    /// The location nginx chooses for `path` (the request's normalized
    /// URI).
    pub fn find(&self, path: &str) -> Found<'_> {
        match search(&self.top, path) {
            Search::Final(n) | Search::Tentative(n) => Found::Location(&n.name, &n.at),
            Search::None => Found::None,
            Search::Undecided => Found::Undecided,
        }
    }
}

/// A level's search result, as `ngx_http_core_find_location` returns it.
enum Search<'a> {
    /// Decided (`NGX_OK`): an exact match, or a regular expression's.
    Final(&'a Node),
    /// A prefix matched (`NGX_AGAIN`): the outer levels' expressions may
    /// still take the request.
    Tentative(&'a Node),
    /// Nothing matched (`NGX_DECLINED`).
    None,
    /// An expression that could not be compiled was to be tried.
    Undecided,
}

/// `ngx_http_core_find_location` over one level.
fn search<'a>(level: &'a [Node], path: &str) -> Search<'a> {
    if let Some(exact) = level
        .iter()
        .find(|n| n.kind == Kind::Exact && n.prefix == path)
    {
        return Search::Final(exact);
    }
    let mut found = Search::None;
    let mut no_regex = false;
    let prefix = level
        .iter()
        .filter(|n| matches!(n.kind, Kind::Prefix | Kind::PrefixNoRegex))
        .filter(|n| path.starts_with(n.prefix.as_str()))
        .max_by_key(|n| n.prefix.len());
    if let Some(p) = prefix {
        no_regex = p.kind == Kind::PrefixNoRegex;
        found = match search(&p.children, path) {
            Search::None => Search::Tentative(p),
            nested @ Search::Tentative(_) => nested,
            decided => return decided,
        };
    }
    if no_regex {
        return found;
    }
    for n in level.iter().filter(|n| n.kind == Kind::Regex) {
        let Some(regex) = &n.regex else {
            return Search::Undecided;
        };
        if regex.is_match(path) {
            return match search(&n.children, path) {
                Search::Final(m) | Search::Tentative(m) => Search::Final(m),
                Search::None => Search::Final(n),
                Search::Undecided => Search::Undecided,
            };
        }
    }
    found
}

/// The path nginx matches locations on, from the one an upstream
/// received: `%XX` decoded, `//` merged (nginx's `merge_slashes on`), `.`
/// and `..` segments resolved.
pub fn normalize(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = path.get(i + 1..i + 3)
            && let Ok(b) = u8::from_str_radix(hex, 16)
        {
            decoded.push(b);
            i += 3;
            continue;
        }
        decoded.push(bytes[i]);
        i += 1;
    }
    let text = String::from_utf8_lossy(&decoded);
    let mut segments: Vec<&str> = Vec::new();
    for segment in text.split('/') {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let trailing = text.ends_with('/') && !segments.is_empty();
    let mut out = format!("/{}", segments.join("/"));
    if trailing {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `server` of a small configuration, as nginx's parser reads it.
    fn server(locations: &str) -> ServerLocations {
        let dump = format!(
            "# configuration file /etc/nginx/nginx.conf:\nhttp {{ server {{ {locations} }} }}\n"
        );
        let (root, problems) = crate::nginx::nginx_conf::load(&dump);
        assert!(problems.is_empty(), "{problems:?}");
        let http = root.iter().find(|d| d.name == "http").unwrap();
        let server = http
            .block
            .as_ref()
            .unwrap()
            .iter()
            .find(|d| d.name == "server");
        ServerLocations::of(server.unwrap())
    }

    fn name<'a>(s: &'a ServerLocations, path: &str) -> &'a str {
        match s.find(path) {
            Found::Location(name, _) => name,
            other => panic!("{path}: {other:?}"),
        }
    }

    /// The examples of nginx's documentation of `location`.
    #[test]
    fn nginx_documentations_examples_match_as_it_says() {
        let s = server(
            "location = / { } \
             location / { } \
             location /documents/ { } \
             location ^~ /images/ { } \
             location ~* \\.(gif|jpg|jpeg)$ { }",
        );
        assert_eq!(name(&s, "/"), "= /");
        assert_eq!(name(&s, "/index.html"), "/");
        assert_eq!(name(&s, "/documents/document.html"), "/documents/");
        assert_eq!(name(&s, "/images/1.gif"), "^~ /images/");
        assert_eq!(name(&s, "/documents/1.jpg"), "~* \\.(gif|jpg|jpeg)$");
    }

    #[test]
    fn longest_prefix_then_its_nested_then_the_regexes_in_order() {
        let s = server(
            "location /api/ { location /api/reports/ { } location ~ /export$ { } } \
             location /api/reports/old/ { } \
             location ~ \\.php$ { } \
             location ~ ^/api/.*\\.php$ { } \
             location @fallback { }",
        );
        assert_eq!(name(&s, "/api/items"), "/api/");
        assert_eq!(name(&s, "/api/reports/q1"), "/api/reports/");
        // The longest prefix of the level is not nested in /api/.
        assert_eq!(name(&s, "/api/reports/old/x"), "/api/reports/old/");
        // A nested regex wins over the outer level's.
        assert_eq!(name(&s, "/api/a/export"), "~ /export$");
        // The first regex in order, not the longest.
        assert_eq!(name(&s, "/api/x.php"), "~ \\.php$");
        assert_eq!(s.find("/other"), Found::None);
        assert_eq!(s.find("@fallback"), Found::None);
    }

    #[test]
    fn an_expression_rust_cannot_compile_leaves_the_search_undecided() {
        // A look-ahead: PCRE's, not Rust's.
        let s = server("location /a/ { } location ~ ^/(?!static) { }");
        assert_eq!(s.find("/a/x"), Found::Undecided);
        let s = server("location ^~ /a/ { } location ~ ^/(?!static) { }");
        assert_eq!(name(&s, "/a/x"), "^~ /a/");
    }

    #[test]
    fn paths_are_normalized_as_nginx_does_before_matching() {
        assert_eq!(
            normalize("/api//v1/./x/../items%2Ejson"),
            "/api/v1/items.json"
        );
        assert_eq!(normalize("/a/b/"), "/a/b/");
        assert_eq!(normalize("/"), "/");
        assert_eq!(normalize("/%zz"), "/%zz");
    }
}
