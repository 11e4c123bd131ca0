//! nginx's configuration as nginx itself sees it: the files of a running
//! instance, read as data (`nginx_files`), or a saved `nginx -T` dump.
//! Parsed into directives with file and line, `include`s spliced in from
//! the files read, then resolved into what
//! ngx-trace needs: for each upstream server, its group and every location
//! passing to it, with the timeouts and retry settings in effect there
//! (nginx's defaults where none is set). A problem names its file and line
//! and never stops tracing.
use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr},
};

use crate::nginx::nginx_files::glob_match;

/// The modules that pass requests to upstreams, as directive prefixes.
pub const MODULES: [&str; 5] = ["proxy", "fastcgi", "uwsgi", "scgi", "grpc"];

/// One directive, with its block if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Directive {
    /// Its name.
    pub name: String,
    /// Its arguments, quotes removed.
    pub args: Vec<String>,
    /// The file it is in.
    pub file: String,
    /// Its line there.
    pub line: u32,
    /// The directives of its `{ }` block.
    pub block: Option<Vec<Directive>>,
}

/// A problem met reading the configuration: where, and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `file:line`.
    pub at: String,
    /// What.
    pub what: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.what)
    }
}

/// The files of an `nginx -T` dump, in order: path and text.
pub fn split_dump(dump: &str) -> Vec<(String, String)> {
    let mut files: Vec<(String, String)> = Vec::new();
    for line in dump.lines() {
        if let Some(path) = line
            .strip_prefix("# configuration file ")
            .and_then(|rest| rest.strip_suffix(':'))
        {
            files.push((path.to_string(), String::new()));
        } else if let Some((_, text)) = files.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    files
}

/// One token of the configuration language.
#[derive(Debug, PartialEq)]
enum Token {
    Word(String),
    Open,
    Close,
    End,
}

/// Splits `text` into tokens with their lines: words (quotes removed,
/// escapes kept as nginx does), `{`, `}`, `;`; `#` comments dropped.
fn tokens(text: &str) -> Result<Vec<(Token, u32)>, (u32, String)> {
    let mut out = Vec::new();
    let mut chars = text.chars().peekable();
    let mut line = 1;
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            c if c.is_whitespace() => {}
            '#' => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
            }
            '{' => out.push((Token::Open, line)),
            '}' => out.push((Token::Close, line)),
            ';' => out.push((Token::End, line)),
            '"' | '\'' => {
                let start = line;
                let mut word = String::new();
                loop {
                    match chars.next() {
                        None => return Err((start, "unterminated quoted string".into())),
                        Some('\\') => {
                            if let Some(next) = chars.next() {
                                if next != c {
                                    word.push('\\');
                                }
                                word.push(next);
                            }
                        }
                        Some(q) if q == c => break,
                        Some(other) => {
                            if other == '\n' {
                                line += 1;
                            }
                            word.push(other);
                        }
                    }
                }
                out.push((Token::Word(word), start));
            }
            _ => {
                let mut word = String::from(c);
                while let Some(&next) = chars.peek() {
                    if next.is_whitespace() || matches!(next, ';' | '{' | '}') {
                        break;
                    }
                    // `${var}` keeps its braces inside a word.
                    if next == '{' && word.ends_with('$') {
                        break;
                    }
                    word.push(next);
                    chars.next();
                }
                out.push((Token::Word(word), line));
            }
        }
    }
    Ok(out)
}

/// Parses one file's text into its directives.
pub fn parse_file(file: &str, text: &str) -> Result<Vec<Directive>, Problem> {
    let problem = |line: u32, what: String| Problem {
        at: format!("{file}:{line}"),
        what,
    };
    let tokens = tokens(text).map_err(|(line, what)| problem(line, what))?;
    let mut stack: Vec<(Directive, Vec<Directive>)> = Vec::new();
    let mut top: Vec<Directive> = Vec::new();
    let mut words: Vec<(String, u32)> = Vec::new();
    for (token, line) in tokens {
        match token {
            Token::Word(w) => words.push((w, line)),
            Token::End | Token::Open => {
                let Some(((name, at), rest)) = words.split_first() else {
                    return Err(problem(line, "a `;` or `{` without a directive".into()));
                };
                let directive = Directive {
                    name: name.clone(),
                    args: rest.iter().map(|(w, _)| w.clone()).collect(),
                    file: file.to_string(),
                    line: *at,
                    block: None,
                };
                words.clear();
                if token == Token::Open {
                    stack.push((directive, Vec::new()));
                } else {
                    match stack.last_mut() {
                        Some((_, children)) => children.push(directive),
                        None => top.push(directive),
                    }
                }
            }
            Token::Close => {
                if !words.is_empty() {
                    return Err(problem(line, "a directive without its `;`".into()));
                }
                let Some((mut directive, children)) = stack.pop() else {
                    return Err(problem(line, "a `}` without its `{`".into()));
                };
                directive.block = Some(children);
                match stack.last_mut() {
                    Some((_, siblings)) => siblings.push(directive),
                    None => top.push(directive),
                }
            }
        }
    }
    if let Some((open, _)) = stack.last() {
        return Err(problem(
            open.line,
            format!("`{}` block never closed", open.name),
        ));
    }
    if !words.is_empty() {
        return Err(problem(words[0].1, "a directive without its `;`".into()));
    }
    Ok(top)
}

/// The whole configuration from a dump: see [`load_files`].
pub fn load(dump: &str) -> (Vec<Directive>, Vec<Problem>) {
    load_files(&split_dump(dump), None)
}

/// The whole configuration from its files (the main one first) and the
/// `-g` directives: those first (nginx parses them before the file), then
/// the main file's, with every `include` replaced by the directives of the
/// files it matches (relative patterns from the main file's directory).
/// Problems are collected, never fatal: what parsed is kept.
pub fn load_files(
    files: &[(String, String)],
    globals: Option<&str>,
) -> (Vec<Directive>, Vec<Problem>) {
    let mut problems = Vec::new();
    let Some((main, _)) = files.first() else {
        problems.push(Problem {
            at: "nginx -T".into(),
            what: "no `# configuration file` in the dump".into(),
        });
        return (Vec::new(), problems);
    };
    let base = main.rsplit_once('/').map_or("", |(dir, _)| dir).to_string();
    let mut parsed: BTreeMap<&str, Vec<Directive>> = BTreeMap::new();
    for (path, text) in files {
        match parse_file(path, text) {
            Ok(directives) => {
                parsed.insert(path, directives);
            }
            Err(p) => problems.push(p),
        }
    }
    let order: Vec<&str> = files.iter().map(|(p, _)| p.as_str()).collect();
    let mut root = Vec::new();
    if let Some(g) = globals {
        match parse_file("-g", g) {
            Ok(directives) => root.extend(directives),
            Err(p) => problems.push(p),
        }
    }
    root.extend(parsed.get(main.as_str()).cloned().unwrap_or_default());
    let root = Splice {
        parsed: &parsed,
        order: &order,
        base: &base,
        stack: vec![main.as_str()],
        left: MAX_SPLICED,
        problems: &mut problems,
    }
    .run(root);
    (root, problems)
}

/// Directives a whole configuration may hold once its includes are
/// spliced in (real ones have thousands): a file that includes itself many
/// times over would otherwise grow without bound.
const MAX_SPLICED: usize = 500_000;

/// One splice of a configuration's includes: the files being included (a
/// file never includes itself, as nginx refuses a loop), and the
/// directives still allowed.
struct Splice<'a> {
    parsed: &'a BTreeMap<&'a str, Vec<Directive>>,
    order: &'a [&'a str],
    base: &'a str,
    stack: Vec<&'a str>,
    left: usize,
    problems: &'a mut Vec<Problem>,
}

impl<'a> Splice<'a> {
    fn run(&mut self, directives: Vec<Directive>) -> Vec<Directive> {
        let mut out = Vec::new();
        for mut d in directives {
            if self.left == 0 {
                break;
            }
            if d.name == "include" && d.block.is_none() {
                self.include(&d, &mut out);
                continue;
            }
            if let Some(block) = d.block.take() {
                d.block = Some(self.run(block));
            }
            self.left -= 1;
            if self.left == 0 {
                self.problems.push(Problem {
                    at: format!("{}:{}", d.file, d.line),
                    what: format!("more than {MAX_SPLICED} directives: the rest is left out"),
                });
            }
            out.push(d);
        }
        out
    }

    fn include(&mut self, d: &Directive, out: &mut Vec<Directive>) {
        let Some(pattern) = d.args.first() else {
            return;
        };
        if self.left == 0 {
            return;
        }
        let problem = |what: &str| Problem {
            at: format!("{}:{}", d.file, d.line),
            what: what.into(),
        };
        if self.stack.len() > 16 {
            self.problems
                .push(problem("includes nest too deeply (a loop?)"));
            return;
        }
        let pattern = if pattern.starts_with('/') {
            pattern.clone()
        } else {
            format!("{}/{pattern}", self.base)
        };
        let mut matched: Vec<&'a str> = self
            .order
            .iter()
            .copied()
            .filter(|p| glob_match(&pattern, p))
            .collect();
        // nginx includes a pattern's files in name order.
        matched.sort_unstable();
        for file in matched {
            if self.stack.contains(&file) {
                self.problems
                    .push(problem("a file includes itself (a loop)"));
                continue;
            }
            if let Some(inner) = self.parsed.get(file) {
                self.stack.push(file);
                let spliced = self.run(inner.clone());
                self.stack.pop();
                out.extend(spliced);
            }
        }
    }
}

/// A time as nginx reads it (`ngx_parse_time`): `500ms`, `30s`, `1m30s`,
/// `2h`, a bare number of seconds; in ms.
pub fn parse_time_ms(value: &str) -> Option<u64> {
    let mut total: u64 = 0;
    let mut number = String::new();
    let mut chars = value.chars().peekable();
    if value.is_empty() {
        return None;
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().ok()?;
        number.clear();
        let unit = match c {
            'm' if chars.peek() == Some(&'s') => {
                chars.next();
                1
            }
            'y' => 365 * 86_400_000,
            'M' => 30 * 86_400_000,
            'w' => 7 * 86_400_000,
            'd' => 86_400_000,
            'h' => 3_600_000,
            'm' => 60_000,
            's' => 1000,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !number.is_empty() {
        total = total.checked_add(number.parse::<u64>().ok()?.checked_mul(1000)?)?;
    }
    Some(total)
}

/// A setting in effect, and where it was set (`None`: nginx's default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The value as written (or nginx's default).
    pub value: String,
    /// `file:line` of the directive, `None` for the default.
    pub at: Option<(String, u32)>,
}

impl Setting {
    fn default(value: &str) -> Self {
        Self {
            value: value.to_string(),
            at: None,
        }
    }

    /// The value as a time, ms.
    pub fn ms(&self) -> Option<u64> {
        parse_time_ms(&self.value)
    }
}

/// A location that passes requests to upstreams, with its settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// `location` argument(s) (`/api`, `~ \.php$`); `server` for a pass at
    /// server level.
    pub name: String,
    /// The first `server_name` of its server, or its first `listen`.
    pub server: String,
    /// Where its pass directive is.
    pub file: String,
    /// Its line.
    pub line: u32,
    /// `file:line` of its `location` block (of its `server` block for a
    /// pass at server level): where a directive left at nginx's default
    /// is to be added.
    pub block_at: (String, u32),
    /// `file:line` of its `server` block: where a value several of the
    /// server's locations need goes once.
    pub server_at: (String, u32),
    /// `file:line` of its `http` block: where a value every server's
    /// locations need goes once.
    pub http_at: (String, u32),
    /// `proxy`, `fastcgi`, `uwsgi`, `scgi` or `grpc`.
    pub module: &'static str,
    /// The pass directive's argument.
    pub target: String,
    /// The upstream group it passes to, if it names one.
    pub group: Option<String>,
    /// The servers it reaches, as ngx-trace names them (`127.0.0.1:8080`,
    /// `[::1]:80`, `unix:/path`): a group's, or its own address.
    pub servers: Vec<String>,
    /// `<module>_connect_timeout`, `_send_timeout`, `_read_timeout`,
    /// `_next_upstream`, `_next_upstream_tries`, `_next_upstream_timeout`,
    /// by directive name.
    pub settings: BTreeMap<String, Setting>,
}

/// One `server` of an upstream group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupServer {
    /// As ngx-trace names it (each address a name resolves to).
    pub addrs: Vec<String>,
    /// `max_fails` (1 by default).
    pub max_fails: u32,
    /// `fail_timeout`, ms (10 s by default).
    pub fail_timeout_ms: u64,
    /// Where.
    pub at: (String, u32),
}

/// An `upstream` block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Its name.
    pub name: String,
    /// Its servers.
    pub servers: Vec<GroupServer>,
    /// `keepalive` (connections cached per worker), if set.
    pub keepalive: Option<Setting>,
    /// `keepalive_timeout` (60 s by default).
    pub keepalive_timeout: Setting,
    /// Where the block starts.
    pub at: (String, u32),
}

/// What ngx-trace needs of a configuration.
#[derive(Debug, Default, Clone)]
pub struct Config {
    /// The upstream groups.
    pub groups: Vec<Group>,
    /// The locations that pass to upstreams.
    pub locations: Vec<Location>,
    /// Problems met (parse errors, passes that name no resolvable server).
    pub problems: Vec<Problem>,
    /// Every `server` block's locations, to match request paths on.
    pub servers: Vec<crate::nginx::location_match::ServerLocations>,
}

/// The location an exchange served, as far as the configuration and its
/// request's path tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed<'a> {
    /// This one.
    One(&'a Location),
    /// One of these (a path nginx rewrote, a server several locations
    /// reach without a path to tell them apart).
    Several(Vec<&'a Location>),
    /// No location passes to this upstream (a configuration not read, an
    /// upstream named by a variable).
    Unknown,
}

/// The directives inherited from `http` to `server` to `location`.
fn inherited_names() -> Vec<String> {
    let mut names = Vec::new();
    for m in MODULES {
        for suffix in [
            "connect_timeout",
            "send_timeout",
            "read_timeout",
            "next_upstream",
            "next_upstream_tries",
            "next_upstream_timeout",
        ] {
            names.push(format!("{m}_{suffix}"));
        }
    }
    names
}

/// nginx's default for an inherited directive.
fn default_of(name: &str) -> &'static str {
    if name.ends_with("_next_upstream") {
        "error timeout"
    } else if name.ends_with("_tries") || name.ends_with("_next_upstream_timeout") {
        "0"
    } else {
        "60s"
    }
}

/// ngx-trace's name of the address `host[:port]` (`default_port` when none);
/// a name is resolved (every address it gives; none when DNS does not
/// answer within `dns::DEADLINE`).
fn addresses(host_port: &str, default_port: u16) -> Vec<String> {
    if let Some(path) = host_port.strip_prefix("unix:") {
        return vec![format!("unix:{path}")];
    }
    let with_port = if host_port.starts_with('[') {
        if host_port.contains("]:") {
            host_port.to_string()
        } else {
            format!("{host_port}:{default_port}")
        }
    } else if host_port.contains(':') {
        host_port.to_string()
    } else {
        format!("{host_port}:{default_port}")
    };
    if let Ok(addr) = with_port.parse::<SocketAddr>() {
        return vec![name_of(addr)];
    }
    // Under a deadline: a DNS outage must not hold up the tracer.
    let mut found: Vec<String> = crate::nginx::dns::resolve(&with_port)
        .into_iter()
        .map(name_of)
        .collect();
    found.sort();
    found.dedup();
    found
}

fn name_of(addr: SocketAddr) -> String {
    match addr.ip() {
        IpAddr::V4(ip) => format!("{ip}:{}", addr.port()),
        IpAddr::V6(ip) => format!("[{ip}]:{}", addr.port()),
    }
}

/// The group name or address a pass directive's argument names: scheme
/// and URI dropped (`http://unix:/p.sock:/x` → `unix:/p.sock`).
fn pass_target(module: &str, arg: &str) -> (String, u16) {
    let (scheme, rest) = arg.split_once("://").unwrap_or(("", arg));
    let port = match scheme {
        "https" | "grpcs" => 443,
        _ if module == "grpc" => 80,
        _ => 80,
    };
    if let Some(path) = rest.strip_prefix("unix:") {
        let path = if module == "proxy" || module == "grpc" {
            path.split(':').next().unwrap_or(path)
        } else {
            path
        };
        return (format!("unix:{path}"), port);
    }
    (rest.split('/').next().unwrap_or(rest).to_string(), port)
}

/// The URI part of a `proxy_pass` or `grpc_pass` (`/v2/` of
/// `http://app/v2/`), which replaces the location's prefix in the path sent
/// upstream; `None` without one (the path goes as the client sent it).
fn pass_uri(location: &Location) -> Option<&str> {
    if !matches!(location.module, "proxy" | "grpc") {
        return None;
    }
    let (_, rest) = location.target.split_once("://")?;
    let uri = match rest.strip_prefix("unix:") {
        Some(unix) => unix.split_once(':')?.1,
        None => &rest[rest.find('/')?..],
    };
    (!uri.is_empty()).then_some(uri)
}

/// Resolves a whole configuration (`root`: the spliced directives).
pub fn resolve(root: &[Directive], mut problems: Vec<Problem>) -> Config {
    let mut config = Config::default();
    let names = inherited_names();
    for http in root.iter().filter(|d| d.name == "http") {
        let Some(block) = &http.block else { continue };
        for d in block.iter().filter(|d| d.name == "upstream") {
            config.groups.push(group_of(d));
        }
        let mut settings: BTreeMap<String, Setting> = names
            .iter()
            .map(|n| (n.clone(), Setting::default(default_of(n))))
            .collect();
        apply(&mut settings, block, &names);
        let first = config.locations.len();
        for server in block.iter().filter(|d| d.name == "server") {
            let Some(sblock) = &server.block else {
                continue;
            };
            let label = sblock
                .iter()
                .find(|d| d.name == "server_name")
                .or_else(|| sblock.iter().find(|d| d.name == "listen"))
                .and_then(|d| d.args.first().cloned())
                .unwrap_or_else(|| "_".into());
            let mut inner = settings.clone();
            apply(&mut inner, sblock, &names);
            let at = (server.file.clone(), server.line);
            config
                .servers
                .push(crate::nginx::location_match::ServerLocations::of(server));
            walk(
                sblock,
                ("server", &at),
                (&label, &at),
                &inner,
                &names,
                &mut config,
            );
        }
        for loc in &mut config.locations[first..] {
            loc.http_at = (http.file.clone(), http.line);
        }
    }
    for loc in &mut config.locations {
        let (target, port) = pass_target(loc.module, &loc.target);
        if target.contains('$') {
            problems.push(Problem {
                at: format!("{}:{}", loc.file, loc.line),
                what: format!(
                    "{}_pass {} names its upstream with a variable: not mapped",
                    loc.module, loc.target
                ),
            });
            continue;
        }
        if let Some(group) = config.groups.iter().find(|g| g.name == target) {
            loc.group = Some(group.name.clone());
            loc.servers = group.servers.iter().flat_map(|s| s.addrs.clone()).collect();
        } else {
            loc.servers = addresses(&target, port);
            if loc.servers.is_empty() {
                problems.push(Problem {
                    at: format!("{}:{}", loc.file, loc.line),
                    what: format!("`{target}` does not resolve here"),
                });
            }
        }
    }
    config.problems = problems;
    config
}

/// Overrides `settings` with the inherited directives set in `block`.
fn apply(settings: &mut BTreeMap<String, Setting>, block: &[Directive], names: &[String]) {
    for d in block
        .iter()
        .filter(|d| d.block.is_none() && names.contains(&d.name))
    {
        settings.insert(
            d.name.clone(),
            Setting {
                value: d.args.join(" "),
                at: Some((d.file.clone(), d.line)),
            },
        );
    }
}

/// Records the passes in `block` (a server's or a location's, `name`d and
/// starting at `block_at`), then its nested locations.
fn walk(
    block: &[Directive],
    (name, block_at): (&str, &(String, u32)),
    (server, server_at): (&str, &(String, u32)),
    settings: &BTreeMap<String, Setting>,
    names: &[String],
    config: &mut Config,
) {
    for d in block {
        if let Some(module) = MODULES.iter().find(|m| d.name == format!("{m}_pass"))
            && let Some(target) = d.args.first()
        {
            let prefix = format!("{module}_");
            config.locations.push(Location {
                name: name.to_string(),
                server: server.to_string(),
                file: d.file.clone(),
                line: d.line,
                block_at: block_at.clone(),
                server_at: server_at.clone(),
                // Set by `resolve` once the http block is walked.
                http_at: server_at.clone(),
                module,
                target: target.clone(),
                group: None,
                servers: Vec::new(),
                settings: settings
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            });
        }
        if d.name == "location"
            && let Some(inner_block) = &d.block
        {
            let mut inner = settings.clone();
            apply(&mut inner, inner_block, names);
            walk(
                inner_block,
                (&d.args.join(" "), &(d.file.clone(), d.line)),
                (server, server_at),
                &inner,
                names,
                config,
            );
        }
    }
}

fn group_of(d: &Directive) -> Group {
    let mut group = Group {
        name: d.args.first().cloned().unwrap_or_default(),
        servers: Vec::new(),
        keepalive: None,
        keepalive_timeout: Setting::default("60s"),
        at: (d.file.clone(), d.line),
    };
    for inner in d.block.iter().flatten() {
        match inner.name.as_str() {
            "server" => {
                let Some(addr) = inner.args.first() else {
                    continue;
                };
                let mut server = GroupServer {
                    addrs: addresses(addr, 80),
                    max_fails: 1,
                    fail_timeout_ms: 10_000,
                    at: (inner.file.clone(), inner.line),
                };
                for arg in &inner.args[1..] {
                    if let Some(n) = arg.strip_prefix("max_fails=") {
                        server.max_fails = n.parse().unwrap_or(1);
                    } else if let Some(t) = arg.strip_prefix("fail_timeout=") {
                        server.fail_timeout_ms = parse_time_ms(t).unwrap_or(10_000);
                    }
                }
                group.servers.push(server);
            }
            "keepalive" | "keepalive_timeout" => {
                let setting = Setting {
                    value: inner.args.join(" "),
                    at: Some((inner.file.clone(), inner.line)),
                };
                if inner.name == "keepalive" {
                    group.keepalive = Some(setting);
                } else {
                    group.keepalive_timeout = setting;
                }
            }
            _ => {}
        }
    }
    group
}

impl Config {
    /// The location of an exchange with `upstream` (as ngx-trace names it)
    /// whose request's path was `path`: nginx's own choice for the path,
    /// among the locations passing to that upstream; the only such
    /// location whatever the path; else the candidates, never a guess.
    pub fn place(&self, upstream: &str, path: Option<&str>) -> Placed<'_> {
        use crate::nginx::location_match::{Found, normalize};
        let passing: Vec<&Location> = self
            .locations
            .iter()
            .filter(|l| l.servers.iter().any(|s| s == upstream))
            .collect();
        // A pass named by a variable could reach this upstream too.
        let unmapped = self.locations.iter().any(|l| l.servers.is_empty());
        match passing.as_slice() {
            [] => return Placed::Unknown,
            [one] if !unmapped => return Placed::One(one),
            _ => {}
        }
        let Some(path) = path else {
            return Placed::Several(passing);
        };
        let path = normalize(path);
        let mut hits: Vec<&Location> = Vec::new();
        for server in &self.servers {
            let chosen = |l: &&&Location| {
                l.server_at == server.at
                    && pass_uri(l).is_none()
                    && match server.find(&path) {
                        Found::Location(_, at) => l.block_at == *at && l.name != "server",
                        Found::None => l.name == "server",
                        Found::Undecided => false,
                    }
            };
            hits.extend(passing.iter().filter(chosen).copied());
        }
        // A pass with a URI part replaced the location's prefix with it.
        hits.extend(
            passing
                .iter()
                .filter(|l| pass_uri(l).is_some_and(|uri| path.starts_with(uri)))
                .copied(),
        );
        hits.dedup();
        match hits.len() {
            1 => Placed::One(hits[0]),
            0 => Placed::Several(passing),
            _ => Placed::Several(hits),
        }
    }

    /// From an `nginx -T` dump.
    pub fn from_dump(dump: &str) -> Self {
        let (root, problems) = load(dump);
        resolve(&root, problems)
    }

    /// From a running instance's files (see [`load_files`]).
    pub fn from_files(files: &[(String, String)], globals: Option<&str>) -> Self {
        let (root, problems) = load_files(files, globals);
        resolve(&root, problems)
    }

    /// The locations that reach upstream server `server`.
    pub fn locations_of<'a>(&'a self, server: &'a str) -> impl Iterator<Item = &'a Location> {
        self.locations
            .iter()
            .filter(move |l| l.servers.iter().any(|s| s == server))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "# configuration file /etc/nginx/nginx.conf:
user www-data;
events { worker_connections 768; }
http {
    proxy_read_timeout 30s;
    include /etc/nginx/conf.d/*.conf;
    include sites-enabled/*;
}

# configuration file /etc/nginx/conf.d/upstreams.conf:
upstream app {
    server 127.0.0.1:8001 max_fails=3 fail_timeout=30s;
    server [::1]:8002;
    keepalive 16;
    keepalive_timeout 5s;
}

# configuration file /etc/nginx/sites-enabled/default:
server {
    listen 80;
    server_name example.com;
    proxy_connect_timeout 2s; # a comment { ; }
    location / {
        proxy_pass http://app/;
    }
    location /slow {
        proxy_read_timeout 2m;
        proxy_pass http://127.0.0.1:9000;
        location /slow/inner { proxy_read_timeout \"500ms\"; proxy_pass http://unix:/run/app.sock:/x; }
    }
    location ~ \\.php$ {
        fastcgi_pass unix:/run/php/php8.2-fpm.sock;
    }
}
";

    fn loc<'a>(c: &'a Config, name: &str) -> &'a Location {
        c.locations.iter().find(|l| l.name == name).unwrap()
    }

    #[test]
    fn includes_and_inheritance_give_each_location_its_settings() {
        let c = Config::from_dump(DUMP);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
        let root = loc(&c, "/");
        assert_eq!(root.group.as_deref(), Some("app"));
        assert_eq!(root.servers, ["127.0.0.1:8001", "[::1]:8002"]);
        let read = &root.settings["proxy_read_timeout"];
        assert_eq!(
            (read.value.as_str(), read.at.clone()),
            ("30s", Some(("/etc/nginx/nginx.conf".to_string(), 4)))
        );
        assert_eq!(root.settings["proxy_connect_timeout"].ms(), Some(2000));
        assert_eq!(root.settings["proxy_send_timeout"], Setting::default("60s"));
        // Where a directive left at its default goes: the location's block.
        let sites = "/etc/nginx/sites-enabled/default".to_string();
        assert_eq!(root.block_at, (sites.clone(), 5));
        assert_eq!(loc(&c, "/slow/inner").block_at, (sites.clone(), 11));
        assert_eq!(loc(&c, "/slow/inner").server_at, (sites, 1));
        assert_eq!(
            loc(&c, "/slow/inner").http_at,
            ("/etc/nginx/nginx.conf".to_string(), 3)
        );
        assert_eq!(
            loc(&c, "/slow").settings["proxy_read_timeout"].ms(),
            Some(120_000)
        );
        let inner = loc(&c, "/slow/inner");
        assert_eq!(inner.servers, ["unix:/run/app.sock"]);
        assert_eq!(inner.settings["proxy_read_timeout"].ms(), Some(500));
        assert_eq!(
            inner.settings["proxy_read_timeout"].at,
            Some(("/etc/nginx/sites-enabled/default".to_string(), 11))
        );
        let php = loc(&c, "~ \\.php$");
        assert_eq!(
            (php.module, php.servers.clone()),
            ("fastcgi", vec!["unix:/run/php/php8.2-fpm.sock".to_string()])
        );
        assert_eq!(php.settings["fastcgi_read_timeout"].ms(), Some(60_000));
        assert_eq!(php.server, "example.com");
        let app = &c.groups[0];
        assert_eq!(
            (app.servers[0].max_fails, app.servers[0].fail_timeout_ms),
            (3, 30_000)
        );
        assert_eq!(app.keepalive_timeout.ms(), Some(5000));
        assert_eq!(c.locations_of("127.0.0.1:8001").count(), 1);
    }

    #[test]
    fn a_file_including_itself_many_times_ends_at_once() {
        let mut dump =
            String::from("# configuration file /etc/nginx/nginx.conf:\ninclude a.conf;\n");
        dump.push_str("# configuration file /etc/nginx/a.conf:\nuser nobody;\n");
        for _ in 0..50 {
            dump.push_str("include a.conf;\n");
        }
        let start = std::time::Instant::now();
        let (root, problems) = load(&dump);
        assert!(start.elapsed() < std::time::Duration::from_secs(2));
        assert_eq!(root.len(), 1, "{root:?}");
        assert_eq!(problems.len(), 50);
        assert!(problems[0].what.contains("includes itself"), "{problems:?}");
    }

    #[test]
    fn times_parse_as_nginx_reads_them() {
        for (text, ms) in [
            ("60s", 60_000),
            ("500ms", 500),
            ("1m30s", 90_000),
            ("2h", 7_200_000),
            ("5", 5000),
        ] {
            assert_eq!(parse_time_ms(text), Some(ms), "{text}");
        }
        for bad in ["", "s", "5x", "1.5s"] {
            assert_eq!(parse_time_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_broken_file_is_named_with_its_line_and_the_rest_still_read() {
        let dump = "# configuration file /etc/nginx/nginx.conf:
http {
    include conf.d/*.conf;
    server { location / { proxy_pass http://127.0.0.1:81; } }
}
# configuration file /etc/nginx/conf.d/bad.conf:
upstream x {
    server 127.0.0.1:1
";
        let c = Config::from_dump(dump);
        assert_eq!(c.locations.len(), 1);
        assert_eq!(c.problems.len(), 1);
        assert_eq!(c.problems[0].at, "/etc/nginx/conf.d/bad.conf:1");
        let c = Config::from_dump("user nobody;");
        assert!(c.problems[0].what.contains("no `# configuration file`"));
    }
}

#[cfg(test)]
mod place_tests {
    use super::*;

    #[test]
    fn two_locations_on_one_server_are_told_apart_by_the_path() {
        let c = Config::from_dump(
            "# configuration file /etc/nginx/nginx.conf:
http {
    server {
        listen 127.0.0.1:8080;
        location /api/ { proxy_pass http://127.0.0.1:9000; }
        location /api/reports/ { proxy_read_timeout 5s; proxy_pass http://127.0.0.1:9000; }
        location /v2/ { proxy_pass http://127.0.0.1:9000/backend/; }
    }
}
",
        );
        let name = |path: &str| match c.place("127.0.0.1:9000", Some(path)) {
            Placed::One(l) => l.name.clone(),
            other => panic!("{path}: {other:?}"),
        };
        assert_eq!(name("/api/items"), "/api/");
        assert_eq!(name("/api/reports/q1"), "/api/reports/");
        // Sent as /backend/x by the location with a URI in its proxy_pass.
        assert_eq!(name("/backend/x"), "/v2/");
        let Placed::Several(all) = c.place("127.0.0.1:9000", None) else {
            panic!("without a path, several")
        };
        assert_eq!(all.len(), 3);
    }
}
