//! Untrusted text made safe for a terminal.
//!
//! ngx-trace runs as root and prints what other processes chose: the UNIX
//! socket paths they connect to, their `comm` names, the lines of nginx's
//! error log. Printed raw, an ESC sequence in them would reach root's
//! terminal (an OSC 52 clipboard write, a cursor move that forges a line),
//! as would the other C0 and C1 controls, a newline that starts a fake
//! event line, or a bidi override that shows text in another order than it
//! is. [`line`] writes each of those as a visible escape (`\x1b`, `\n`,
//! `\u{202e}`); everything else (ordinary UTF-8, the U+FFFD of invalid
//! UTF-8 decoded lossily upstream, and backslashes, which terminals print
//! as they are and nginx's regex locations are full of) is kept as it is.
//!
//! The text sinks (`output`, `top`) call it where they write, so that no
//! caller can forget; JSON and Prometheus output are escaped by their own
//! encoders and do not use it.
use std::{borrow::Cow, fmt::Write as _};

/// Whether `c` is written as an escape: a C0 control (newline and tab too:
/// one event is one line), DEL, a C1 control, a bidi control, a Unicode
/// line or paragraph separator.
fn needs_escape(c: char) -> bool {
    matches!(
        c,
        '\0'..='\x1f'
            | '\x7f'
            | '\u{80}'..='\u{9f}'
            | '\u{061c}'
            | '\u{200e}'
            | '\u{200f}'
            | '\u{2028}'
            | '\u{2029}'
            | '\u{202a}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
    )
}

/// `s` as one line safe to print: every control character (newline and
/// tab included), DEL, C1 control and bidi control written as a visible
/// escape. Borrowed when nothing needed escaping.
pub fn line(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0'..='\x1f' | '\x7f' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// `s` as several lines safe to print: each line (split at `\n`) escaped by
/// [`line`], the lines joined by `\n`. For text whose line breaks are the
/// program's own (a report); a newline inside an untrusted field of it
/// cannot be told from them, so such text is better given as its lines.
pub fn lines(s: &str) -> Cow<'_, str> {
    if !s.chars().any(|c| c != '\n' && needs_escape(c)) {
        return Cow::Borrowed(s);
    }
    let escaped: Vec<Cow<'_, str>> = s.split('\n').map(line).collect();
    Cow::Owned(escaped.join("\n"))
}

/// `s` itself if it has at most `max` characters, else `…` and its end.
pub fn shorten_left(s: &str, max: usize) -> String {
    let count = s.chars().count();
    if count <= max {
        return s.to_string();
    }
    let keep: String = s.chars().skip(count - (max - 1)).collect();
    format!("…{keep}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_osc_52_clipboard_write_is_shown_not_run() {
        let path = "/run/a\x1b]52;c;cm0gLXJmIC8K\x07.sock";
        assert_eq!(line(path), "/run/a\\x1b]52;c;cm0gLXJmIC8K\\x07.sock");
    }

    #[test]
    fn a_cursor_move_and_a_c1_csi_are_escaped() {
        assert_eq!(line("x\x1b[2A\x1b[2Kforged"), "x\\x1b[2A\\x1b[2Kforged");
        // U+009B is CSI on its own for terminals that read C1 controls.
        assert_eq!(line("x\u{9b}2Ay"), "x\\u{9b}2Ay");
        assert_eq!(line("del\x7f nul\0"), "del\\x7f nul\\x00");
    }

    #[test]
    fn a_bidi_override_is_escaped() {
        assert_eq!(
            line("/run/\u{202e}kcos.php"),
            "/run/\\u{202e}kcos.php",
            "shown reversed otherwise"
        );
        assert_eq!(
            line("a\u{2066}b\u{2069}\u{200f}\u{61c}"),
            "a\\u{2066}b\\u{2069}\\u{200f}\\u{61c}"
        );
    }

    #[test]
    fn a_newline_inside_a_path_stays_on_its_line() {
        let path = "/run/x.sock\n12:00:00.000 w1 127.0.0.1:80 ok\tfake";
        let shown = line(path);
        assert!(!shown.contains('\n') && !shown.contains('\t'), "{shown}");
        assert_eq!(
            shown,
            "/run/x.sock\\n12:00:00.000 w1 127.0.0.1:80 ok\\tfake"
        );
        assert_eq!(line("a\r\nb"), "a\\r\\nb");
    }

    #[test]
    fn plain_ascii_and_utf8_are_untouched() {
        for s in [
            "127.0.0.1:3999",
            "unix:/run/php/café.sock",
            "connect() failed (111: Connection refused) while connecting to upstream",
            "2 ms · 3 µs …",
            "lossy \u{fffd} byte",
            r"location ~ \.php$",
            "",
        ] {
            assert!(matches!(line(s), Cow::Borrowed(_)), "{s}");
            assert_eq!(line(s), s);
        }
    }

    #[test]
    fn lines_keep_their_breaks_and_escape_within_each() {
        let report = "summary:\n  unix:/run/\x1b[31mred.sock ok 1\n  b:1 ok 2";
        assert_eq!(
            lines(report),
            "summary:\n  unix:/run/\\x1b[31mred.sock ok 1\n  b:1 ok 2"
        );
        assert!(matches!(lines("a\nb\n"), Cow::Borrowed(_)));
        assert_eq!(lines("a\r\nb"), "a\\r\nb");
    }
}
