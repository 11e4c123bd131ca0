//! Notices to the person running ngx-trace: one line each on stderr (so
//! JSON on stdout stays clean), escaped, held while a full-screen view owns
//! the terminal. The one channel every stage uses to say something is
//! missing or degraded.

/// Notices held while a full-screen view owns the terminal (`top`):
/// `None` when they are printed at once.
static HELD: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);

/// A notice for the person running ngx-trace (stderr, so JSON stays clean;
/// held until [`release_notices`] while a full-screen view is up): one
/// line, escaped (it may name a path a traced process chose).
pub fn notice(message: &str) {
    let line = notice_line(message);
    if let Ok(mut held) = HELD.lock()
        && let Some(lines) = held.as_mut()
    {
        if lines.len() < 1000 {
            lines.push(line);
        }
        return;
    }
    eprintln!("{line}");
}

/// A notice as printed: named, on one line, escaped.
fn notice_line(message: &str) -> String {
    format!("ngx-trace: {}", crate::sanitize::line(message))
}

/// Holds notices from now on (a full-screen view took the terminal).
pub fn hold_notices() {
    if let Ok(mut held) = HELD.lock() {
        held.get_or_insert_with(Vec::new);
    }
}

/// Prints the notices held, and prints the next ones at once.
pub fn release_notices() {
    let lines = HELD.lock().ok().and_then(|mut held| held.take());
    for line in lines.unwrap_or_default() {
        eprintln!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notice_is_one_escaped_line() {
        assert_eq!(
            notice_line("following /var/log/\x1b]0;owned\x07error.log\nngx-trace: fake"),
            r"ngx-trace: following /var/log/\x1b]0;owned\x07error.log\nngx-trace: fake"
        );
    }
}
