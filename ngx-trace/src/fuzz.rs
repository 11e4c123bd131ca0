//! Property-based fuzzing of every parser of outside input: tracepoint
//! format files, /proc status and /proc/net/tcp files, ring-buffer records. Inputs are real
//! files from a Linux 6.18 host (`fuzz-seeds/`, committed) mutated at random,
//! plus arbitrary text and bytes. Each parser must return, never panic, and
//! produce no more than its input holds.
use std::{collections::BTreeMap, path::Path};

use proptest::prelude::*;

use crate::{
    kernel::preflight::parse_cap_eff, kernel::proc_net::parse_listen_ports,
    kernel::records::decode, kernel::tracefs, nginx::errorlog, nginx::procs::parse_status,
};

fn seeds(kind: &str) -> BTreeMap<String, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz-seeds")
        .join(kind);
    std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("seed corpus {}: {e}", dir.display()))
        .map(|e| {
            let path = e.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read_to_string(&path).unwrap())
        })
        .collect()
}

/// One random edit of a text.
#[derive(Debug, Clone)]
enum Edit {
    Delete(usize, usize),
    Insert(usize, String),
    DuplicateLine(usize),
    Truncate(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 0usize..64).prop_map(|(at, len)| Edit::Delete(at, len)),
        (any::<usize>(), "[a-z0-9:; \t\n\\[\\]*_-]{0,24}").prop_map(|(at, s)| Edit::Insert(at, s)),
        any::<usize>().prop_map(Edit::DuplicateLine),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut s: Vec<char> = text.chars().collect();
    for e in edits {
        let n = s.len().max(1);
        match e {
            Edit::Delete(at, len) => {
                let at = at % n;
                let end = (at + len).min(s.len());
                if at < end {
                    s.drain(at..end);
                }
            }
            Edit::Insert(at, ins) => {
                let at = (at % n).min(s.len());
                s.splice(at..at, ins.chars());
            }
            Edit::DuplicateLine(i) => {
                let text: String = s.iter().collect();
                let lines: Vec<&str> = text.lines().collect();
                if !lines.is_empty() {
                    let line = lines[i % lines.len()];
                    s.extend(format!("\n{line}").chars());
                }
            }
            Edit::Truncate(at) => s.truncate(at % n),
        }
    }
    s.into_iter().collect()
}

fn field_lines(text: &str) -> usize {
    text.lines()
        .filter(|l| l.trim().starts_with("field:"))
        .count()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn format_parser_survives_mutated_real_formats(
        pick in any::<usize>(),
        edits in prop::collection::vec(edit(), 0..8),
    ) {
        let seeds = seeds("format");
        let (_, text) = seeds.iter().nth(pick % seeds.len()).unwrap();
        let mutated = apply(text, &edits);
        if let Ok(fields) = tracefs::parse_format(&mutated) {
            prop_assert!(fields.len() <= field_lines(&mutated));
        }
    }

    #[test]
    fn format_parser_survives_any_text(text in ".{0,400}") {
        if let Ok(fields) = tracefs::parse_format(&text) {
            prop_assert!(fields.len() <= field_lines(&text));
        }
    }

    #[test]
    fn offsets_survive_one_mutated_tracepoint(
        pick in any::<usize>(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let seeds = seeds("format");
        let victim = seeds.keys().nth(pick % seeds.len()).unwrap().clone();
        let read = |category: &str, name: &str| -> Result<Option<String>, String> {
            let key = format!("{category}_{name}");
            let text = seeds.get(&key).ok_or_else(|| format!("no seed {key}"))?;
            Ok(Some(if key == victim { apply(text, &edits) } else { text.clone() }))
        };
        // Either offsets come back, or an error names what is wrong.
        if let Err(e) = tracefs::offsets_from(read) {
            prop_assert!(!e.is_empty());
        }
    }

    #[test]
    fn proc_status_parsers_survive_mutated_real_files(
        pick in any::<usize>(),
        edits in prop::collection::vec(edit(), 0..8),
    ) {
        let seeds = seeds("proc-status");
        let (_, text) = seeds.iter().nth(pick % seeds.len()).unwrap();
        let mutated = apply(text, &edits);
        let _ = parse_status(&mutated);
        let _ = parse_cap_eff(&mutated);
    }

    #[test]
    fn listen_port_parser_survives_mutated_real_files(
        pick in any::<usize>(),
        edits in prop::collection::vec(edit(), 0..8),
    ) {
        let seeds = seeds("proc-net-tcp");
        let (_, text) = seeds.iter().nth(pick % seeds.len()).unwrap();
        let mutated = apply(text, &edits);
        prop_assert!(parse_listen_ports(&mutated).len() <= mutated.lines().count());
    }

    #[test]
    fn error_log_parser_survives_mutated_real_lines(
        pick in any::<usize>(),
        edits in prop::collection::vec(edit(), 0..8),
    ) {
        let lines = error_log_lines();
        let line = &lines[pick % lines.len()];
        let mutated = apply(line, &edits);
        for l in mutated.lines() {
            if let Some(parsed) = errorlog::parse(l) {
                // Whatever it found, it found in the line (its queries cut).
                let l = errorlog::without_queries(l);
                prop_assert!(l.contains(&parsed.text) && l.contains(&parsed.local_time));
                prop_assert!(!parsed.raw.contains('?'), "{}", parsed.raw);
                let _ = (parsed.upstream(), parsed.module(), parsed.time(3600));
            }
        }
    }

    #[test]
    fn error_log_parser_survives_any_text(text in ".{0,600}") {
        let _ = errorlog::parse(&text).map(|l| l.upstream());
    }

    #[test]
    fn record_decoder_survives_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&bytes);
    }
}

/// Real error-log lines (nginx 1.31 and Debian's 1.22, every upstream
/// failure the tests make, container and syslog forms among them).
fn error_log_lines() -> Vec<String> {
    seeds("error-log")
        .values()
        .flat_map(|text| text.lines().map(str::to_string).collect::<Vec<_>>())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn every_real_error_log_line_parses_and_upstream_ones_are_recognised() {
    for line in error_log_lines() {
        // Continuation lines of a multi-line FastCGI stderr message are not
        // records of their own.
        if !line.starts_with("20") {
            continue;
        }
        let parsed = errorlog::parse(&line).unwrap_or_else(|| panic!("{line}"));
        let about_upstream = line.contains("upstream")
            || line.contains("exited on signal")
            || line.contains("FastCGI sent in stderr");
        assert_eq!(
            parsed.is_upstream(),
            about_upstream || line.contains("resolv"),
            "{line}"
        );
    }
}

#[test]
fn every_seed_parses_as_is() {
    for (name, text) in seeds("format") {
        let fields = tracefs::parse_format(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(fields.len(), field_lines(&text), "{name}");
    }
    let read = |category: &str, name: &str| -> Result<Option<String>, String> {
        seeds("format")
            .remove(&format!("{category}_{name}"))
            .map(Some)
            .ok_or_else(|| format!("no seed {category}_{name}"))
    };
    let offsets = tracefs::offsets_from(read).expect("offsets of Linux 6.18");
    // Linux 5.10 has no inet_sk_error_report: the other offsets still come.
    let without = |category: &str, name: &str| -> Result<Option<String>, String> {
        if name == "inet_sk_error_report" {
            return Ok(None);
        }
        read(category, name)
    };
    let older = tracefs::offsets_from(without).expect("offsets without inet_sk_error_report");
    assert_eq!((older.error_report_error, older.error_report_dport), (0, 0));
    assert_eq!(older.connect_uservaddr, offsets.connect_uservaddr);
    assert_eq!(offsets.connect_uservaddr, 24);
    assert_eq!(offsets.retransmit_skaddr, 16);
    assert_eq!(offsets.retransmit_saddr_v6, 42);
    assert_eq!((offsets.signal_sig, offsets.signal_pid), (8, 36));
    for (name, text) in seeds("proc-status") {
        assert!(parse_status(&text).is_some(), "{name}");
    }
    let tcp = &seeds("proc-net-tcp")["tcp"];
    let listening = tcp
        .lines()
        .filter(|l| l.split_whitespace().nth(3) == Some("0A"))
        .count();
    assert_eq!(parse_listen_ports(tcp).len(), listening);
}
