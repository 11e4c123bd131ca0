//! A running nginx's configuration files, read as data: never by running
//! anything (the master's binary is whatever the process says it is).
//!
//! nginx finds its configuration from its command line and compiled-in
//! paths (`ngx_process_options`): the prefix is `-p`, else the
//! `--prefix` it was built with; the main file is `-c`, else the built-in
//! `--conf-path`, a relative one taken from the prefix; an `include` that
//! is relative is taken from the main file's directory, and its pattern
//! is expanded by `glob(3)` in name order. The same is done here, every
//! file read through [`crate::nginx::confined`]: inside the master's root, with
//! its credentials, sizes and counts bounded.
use std::collections::BTreeSet;

use crate::{
    nginx::confined::{Process, Reader},
    nginx::nginx_conf::{Directive, Problem, parse_file},
};

/// Bytes read of one configuration file at most.
const MAX_FILE: u64 = 4 << 20;
/// Bytes read of all of an instance's configuration files at most.
const MAX_TOTAL: u64 = 32 << 20;
/// Configuration files of one instance at most.
const MAX_FILES: usize = 1000;
/// Entries of one directory listed for a glob at most.
const MAX_ENTRIES: usize = 10_000;
/// Bytes of the master's binary searched for its compiled-in paths.
const MAX_BINARY: u64 = 256 << 20;
/// Nested `include`s followed at most (nginx has no limit; a loop would
/// never end).
const MAX_DEPTH: u32 = 16;

/// What a master's command line says of its configuration.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Invocation {
    /// `-c`.
    pub conf: Option<String>,
    /// `-p`.
    pub prefix: Option<String>,
    /// `-g`.
    pub globals: Option<String>,
}

/// The `-c`, `-p` and `-g` of a master's command line (its title,
/// `nginx: master process /usr/sbin/nginx -c x`, keeps them after the
/// binary, joined by spaces). As nginx's option parser does, a value may
/// be glued to its option (`-c/etc/x.conf`); a `-g` value runs to the next
/// option, since the title joined its words (`-g daemon off;`).
pub fn invocation(cmdline: &[u8]) -> Invocation {
    let text = String::from_utf8_lossy(cmdline);
    let words: Vec<&str> = text.split(['\0', ' ']).filter(|w| !w.is_empty()).collect();
    let option = |w: &str| -> Option<(char, String)> {
        let rest = w.strip_prefix('-')?;
        let flag = rest
            .chars()
            .next()
            .filter(|c| matches!(c, 'c' | 'p' | 'g'))?;
        Some((flag, rest[1..].to_string()))
    };
    let mut found = Invocation::default();
    let mut i = 0;
    while i < words.len() {
        let Some((flag, glued)) = option(words[i]) else {
            i += 1;
            continue;
        };
        i += 1;
        let value = if !glued.is_empty() {
            glued
        } else if flag == 'g' {
            let start = i;
            while i < words.len() && option(words[i]).is_none() {
                i += 1;
            }
            words[start..i].join(" ")
        } else {
            let Some(v) = words.get(i) else { break };
            i += 1;
            v.to_string()
        };
        let slot = match flag {
            'c' => &mut found.conf,
            'p' => &mut found.prefix,
            _ => &mut found.globals,
        };
        *slot = (!value.is_empty()).then_some(value);
    }
    found
}

/// The prefix and main configuration file built into an nginx binary, from
/// the configure arguments it keeps (what `nginx -V` prints): `--prefix`
/// (else nginx's `/usr/local/nginx/`) and `--conf-path` (else
/// `conf/nginx.conf`). The prefix ends with `/`.
pub fn compiled_paths(binary: &[u8]) -> (String, String) {
    let value = |flag: &[u8]| {
        let at = binary.windows(flag.len()).position(|w| w == flag)? + flag.len();
        let end = binary[at..]
            .iter()
            .position(|&b| b == 0 || b == b' ' || b == b'\'' || b == b'"')
            .map_or(binary.len(), |n| at + n);
        let v = String::from_utf8_lossy(&binary[at..end]).into_owned();
        (!v.is_empty()).then_some(v)
    };
    let mut prefix = value(b" --prefix=").unwrap_or_else(|| "/usr/local/nginx".into());
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let conf = value(b" --conf-path=").unwrap_or_else(|| "conf/nginx.conf".into());
    (prefix, conf)
}

/// `name` made absolute from `prefix` (which ends with `/`), as
/// `ngx_get_full_name` does.
fn full_name(prefix: &str, name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        format!("{prefix}{name}")
    }
}

/// The directory part of `path`, with its `/`.
fn dir_of(path: &str) -> String {
    path.rfind('/')
        .map_or_else(|| "./".to_string(), |i| path[..=i].to_string())
}

/// Whether a pattern component has `glob(3)` wildcards.
fn has_wildcard(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// Whether the bracket expression at the start of `pattern` (after `[`)
/// matches `c`; the length of the expression through its `]`, or `None`
/// when it is not closed (then `[` is a plain character).
fn class_match(pattern: &[u8], c: u8) -> Option<(bool, usize)> {
    let mut i = 0;
    let negate = matches!(pattern.first(), Some(b'!' | b'^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < pattern.len() {
        let p = pattern[i];
        if p == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if i + 2 < pattern.len() && pattern[i + 1] == b'-' && pattern[i + 2] != b']' {
            matched |= (p..=pattern[i + 2]).contains(&c);
            i += 3;
        } else {
            matched |= p == c;
            i += 1;
        }
    }
    None
}

/// Whether the file name `name` matches the one-component pattern
/// `pattern` (`*`, `?`, `[...]`), as `glob(3)` does: a leading `.` only by
/// a leading `.`. Linear in practice: on a mismatch only the last `*`
/// is retried, never every earlier one.
pub fn component_match(pattern: &[u8], name: &[u8]) -> bool {
    if name.first() == Some(&b'.') && pattern.first() != Some(&b'.') {
        return false;
    }
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        let step = match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, n));
                p += 1;
                continue;
            }
            Some(b'?') => Some(1),
            Some(b'[') => match class_match(&pattern[p + 1..], name[n]) {
                Some((true, len)) => Some(len + 1),
                Some((false, _)) => None,
                None => (name[n] == b'[').then_some(1),
            },
            Some(&c) => (c == name[n]).then_some(1),
            None => None,
        };
        match (step, star) {
            (Some(len), _) => {
                p += len;
                n += 1;
            }
            (None, Some((sp, sn))) => {
                p = sp + 1;
                n = sn + 1;
                star = Some((sp, sn + 1));
            }
            (None, None) => return false,
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// Whether `path` matches the glob `pattern` component by component (a
/// wildcard never matches `/`).
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('/').collect();
    let path: Vec<&str> = path.split('/').collect();
    pattern.len() == path.len()
        && pattern
            .iter()
            .zip(&path)
            .all(|(p, n)| component_match(p.as_bytes(), n.as_bytes()))
}

/// The files an absolute `pattern` names under the reader's root, in the
/// order nginx includes them.
fn expand(reader: &Reader<'_>, pattern: &str) -> Result<Vec<String>, String> {
    if !has_wildcard(pattern) {
        return Ok(vec![pattern.to_string()]);
    }
    let mut found = vec![String::new()];
    for component in pattern.split('/').skip(1) {
        let mut next = Vec::new();
        for dir in &found {
            if !has_wildcard(component) {
                next.push(format!("{dir}/{component}"));
                continue;
            }
            let listed = if dir.is_empty() { "/" } else { dir };
            let Ok(mut names) = reader.list(listed, MAX_ENTRIES) else {
                continue;
            };
            names.retain(|n| component_match(component.as_bytes(), n.as_bytes()));
            names.sort_unstable();
            next.extend(names.into_iter().map(|n| format!("{dir}/{n}")));
            if next.len() > MAX_FILES {
                return Err(format!("matches more than {MAX_FILES} files"));
            }
        }
        found = next;
    }
    Ok(found)
}

/// A running instance's configuration: its files in the order read (the
/// main file first), its `-g` directives, and problems met.
#[derive(Debug, Default)]
pub struct Files {
    /// Path (as nginx sees it) and text.
    pub files: Vec<(String, String)>,
    /// The `-g` directives, if any.
    pub globals: Option<String>,
    /// Files that could not be read or expanded.
    pub problems: Vec<Problem>,
}

/// Reads the configuration of the nginx whose master is `master` (see the
/// module's comment).
pub fn read(master: u32) -> Result<Files, String> {
    let process = Process::open(master)?;
    process.with_reader(|reader| {
        let cmdline = reader
            .cmdline()
            .map_err(|e| format!("cannot read nginx {master}'s command line: {e}"))?;
        read_with(reader, &invocation(&cmdline))
    })?
}

fn read_with(reader: &Reader<'_>, args: &Invocation) -> Result<Files, String> {
    // The built-in paths matter only without an absolute -c (an include is
    // taken from the main file's directory, never from the prefix).
    let needs_compiled = match &args.conf {
        None => true,
        Some(conf) => !conf.starts_with('/') && args.prefix.is_none(),
    };
    let compiled = if needs_compiled {
        match reader.executable(MAX_BINARY) {
            Ok(binary) => compiled_paths(&binary),
            Err(e) => {
                return Err(format!(
                    "cannot read its binary for the built-in configuration path ({e}): \
                     give the path with -c when starting nginx, or --config FILE here"
                ));
            }
        }
    } else {
        (String::new(), String::new())
    };
    let mut prefix = args.prefix.clone().unwrap_or(compiled.0);
    if !prefix.ends_with('/') {
        prefix.push('/');
    }
    let main = full_name(&prefix, args.conf.as_deref().unwrap_or(&compiled.1));
    let conf_prefix = dir_of(&main);
    let text = reader
        .read(&main, MAX_FILE)
        .map_err(|e| format!("cannot read {main}: {e}"))?;
    let mut out = Files {
        globals: args.globals.clone(),
        ..Files::default()
    };
    let mut total = text.len() as u64;
    let mut seen = BTreeSet::from([main.clone()]);
    // Depth-first, as nginx reads: (file, text, depth).
    let mut queue = vec![(main, String::from_utf8_lossy(&text).into_owned(), 0u32)];
    let mut global_includes = Vec::new();
    if let Some(g) = &args.globals
        && let Ok(directives) = parse_file("-g", g)
    {
        includes(&directives, &mut global_includes);
    }
    let mut first = true;
    let mut full = false;
    while let Some((path, text, depth)) = queue.pop() {
        let mut found = Vec::new();
        if first {
            found.append(&mut global_includes);
            first = false;
        }
        if let Ok(directives) = parse_file(&path, &text) {
            includes(&directives, &mut found);
        }
        out.files.push((path.clone(), text));
        let mut children = Vec::new();
        for (pattern, line) in found {
            let problem = |what: String| Problem {
                at: format!("{path}:{line}"),
                what,
            };
            if full {
                break;
            }
            if depth >= MAX_DEPTH {
                out.problems
                    .push(problem("includes nest too deeply (a loop?)".into()));
                continue;
            }
            let files = match expand(reader, &full_name(&conf_prefix, &pattern)) {
                Ok(files) => files,
                Err(e) => {
                    out.problems
                        .push(problem(format!("include {pattern}: {e}")));
                    continue;
                }
            };
            for file in files {
                if !seen.insert(file.clone()) {
                    continue;
                }
                if seen.len() > MAX_FILES || total >= MAX_TOTAL {
                    // What was read is kept; no further file is read.
                    out.problems.push(problem(format!(
                        "more than {MAX_FILES} files or {MAX_TOTAL} bytes of configuration: \
                         the rest is not read"
                    )));
                    full = true;
                    break;
                }
                match reader.read(&file, MAX_FILE.min(MAX_TOTAL - total)) {
                    Ok(bytes) => {
                        total += bytes.len() as u64;
                        children.push((
                            file,
                            String::from_utf8_lossy(&bytes).into_owned(),
                            depth + 1,
                        ));
                    }
                    Err(e) => out
                        .problems
                        .push(problem(format!("cannot read {file}: {e}"))),
                }
            }
        }
        // Popped from the end: the first include is read next.
        queue.extend(children.into_iter().rev());
    }
    Ok(out)
}

/// The patterns of every `include` in `directives` (blocks too), with
/// their lines.
fn includes(directives: &[Directive], out: &mut Vec<(String, u32)>) {
    for d in directives {
        if d.name == "include"
            && d.block.is_none()
            && let Some(pattern) = d.args.first()
        {
            out.push((pattern.clone(), d.line));
        }
        if let Some(block) = &d.block {
            includes(block, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_gives_c_p_and_g() {
        let title =
            b"nginx: master process /usr/sbin/nginx -c /etc/nginx/x.conf -p /srv/ -g daemon\0";
        let args = invocation(title);
        assert_eq!(args.conf.as_deref(), Some("/etc/nginx/x.conf"));
        assert_eq!(args.prefix.as_deref(), Some("/srv/"));
        assert_eq!(args.globals.as_deref(), Some("daemon"));
        let plain = invocation(b"/usr/sbin/nginx\0-c\0rel.conf\0");
        assert_eq!(plain.conf.as_deref(), Some("rel.conf"));
        assert_eq!(
            invocation(b"nginx: master process nginx"),
            Invocation::default()
        );
    }

    #[test]
    fn compiled_paths_come_from_the_configure_arguments() {
        let nginx = std::fs::read("/usr/sbin/nginx");
        // Debian's nginx (installed for the integration tests) when present.
        if let Ok(bytes) = nginx {
            assert_eq!(
                compiled_paths(&bytes),
                ("/usr/share/nginx/".into(), "/etc/nginx/nginx.conf".into())
            );
        }
        let custom = b"\0configure arguments: --with-cc-opt='-O2' --prefix=/opt/ngx --with-debug\0";
        assert_eq!(
            compiled_paths(custom),
            ("/opt/ngx/".into(), "conf/nginx.conf".into())
        );
        assert_eq!(
            compiled_paths(b"\x7fELF perl"),
            ("/usr/local/nginx/".into(), "conf/nginx.conf".into())
        );
    }

    #[test]
    fn wildcards_match_as_glob_does() {
        for (pattern, name, expect) in [
            ("*.conf", "a.conf", true),
            ("*.conf", ".hidden.conf", false),
            (".*", ".hidden", true),
            ("*", "default", true),
            ("x?.conf", "x.conf", false),
            ("x?.conf", "x1.conf", true),
            ("[a-c]*", "b.conf", true),
            ("[!a-c]*", "b.conf", false),
            ("[x", "[x", true),
            ("a*b*c", "aXbYc", true),
            ("a*b*c", "aXbY", false),
        ] {
            assert_eq!(
                component_match(pattern.as_bytes(), name.as_bytes()),
                expect,
                "{pattern} {name}"
            );
        }
        assert!(glob_match(
            "/etc/nginx/conf.d/*.conf",
            "/etc/nginx/conf.d/a.conf"
        ));
        assert!(!glob_match(
            "/etc/nginx/conf.d/*.conf",
            "/etc/nginx/conf.d/sub/a.conf"
        ));
        assert!(glob_match("/etc/*/sites/*", "/etc/nginx/sites/default"));
    }

    #[test]
    fn a_hostile_pattern_is_matched_in_linear_time() {
        // Exponential for a matcher that retries every earlier `*`.
        let pattern = "*a".repeat(30) + "b";
        let name = "a".repeat(5000);
        let start = std::time::Instant::now();
        assert!(!component_match(pattern.as_bytes(), name.as_bytes()));
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn includes_are_read_from_this_process_root_in_nginx_order() {
        let dir = std::env::temp_dir().join(format!("ngx-trace-files-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("conf.d")).unwrap();
        let d = dir.display().to_string();
        std::fs::write(
            dir.join("nginx.conf"),
            "http {\n include conf.d/*.conf;\n include extra.inc;\n}\n",
        )
        .unwrap();
        std::fs::write(dir.join("conf.d/b.conf"), "# b\n").unwrap();
        // Relative to the main file's directory, not to this file's.
        std::fs::write(
            dir.join("conf.d/a.conf"),
            "include extra.inc;\ninclude missing.conf;\n",
        )
        .unwrap();
        std::fs::write(dir.join("conf.d/.swap.conf"), "# editor's\n").unwrap();
        std::fs::write(dir.join("extra.inc"), "# extra\n").unwrap();
        let me = Process::open(std::process::id()).unwrap();
        let args = Invocation {
            conf: Some("nginx.conf".into()),
            prefix: Some(d.clone()),
            globals: None,
        };
        let files = me.with_reader(|r| read_with(r, &args)).unwrap().unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let names: Vec<&str> = files.files.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                format!("{d}/nginx.conf"),
                format!("{d}/conf.d/a.conf"),
                format!("{d}/conf.d/b.conf"),
                format!("{d}/extra.inc"),
            ]
        );
        // A file's includes are read together, in its order, before those
        // of the files they name; extra.inc is read once though included
        // twice (splicing puts it in both places); a missing file is
        // a problem named with the line that includes it.
        assert_eq!(files.problems.len(), 1, "{:?}", files.problems);
        assert_eq!(files.problems[0].at, format!("{d}/conf.d/a.conf:2"));
        assert!(files.problems[0].what.contains("missing.conf"));
    }
}
