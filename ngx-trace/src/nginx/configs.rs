//! The configuration of the traced nginx instances (see `nginx_conf`):
//! read from each master's files at start and again when its workers
//! change (a reload), as data and with the master's own rights
//! (`nginx_files`), or taken from `--config FILE` (a saved `nginx -T`
//! dump). A problem is said once, with its file and line, and never stops
//! tracing.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use crate::{
    nginx::nginx_conf::{Config, Setting},
    notice::notice,
};

/// The configurations in effect.
#[derive(Default)]
pub struct Configs {
    file: Option<PathBuf>,
    config: Config,
    per_master: BTreeMap<u32, Config>,
    said: SaidOnce,
}

/// Most distinct notices remembered as said: a configuration (or a
/// process posing as nginx) cannot grow memory by its number of problems.
const SAID_MAX: usize = 256;

/// Notices said once each, up to [`SAID_MAX`] distinct ones; further ones
/// are counted, and the count said when it is dropped.
#[derive(Debug, Default)]
pub struct SaidOnce {
    said: BTreeSet<String>,
    not_shown: u64,
}

impl SaidOnce {
    /// Whether `message` is to be said now: the first time, while fewer
    /// than [`SAID_MAX`] were; a further one is counted.
    pub fn first(&mut self, message: &str) -> bool {
        if self.said.contains(message) {
            return false;
        }
        if self.said.len() >= SAID_MAX {
            self.not_shown += 1;
            return false;
        }
        self.said.insert(message.to_string())
    }
}

impl Drop for SaidOnce {
    fn drop(&mut self) {
        if self.not_shown > 0 {
            notice(&format!(
                "{} further notices not shown (after {SAID_MAX} distinct ones)",
                self.not_shown
            ));
        }
    }
}

/// The configurations read from their source, not yet in effect: what
/// [`Configs::read`] finds, possibly on another thread.
pub struct ConfigRead(Vec<(Option<u32>, String, Result<Config, String>)>);

/// The masters among `traced` (their title says so).
fn masters(traced: &BTreeSet<u32>) -> Vec<u32> {
    traced
        .iter()
        .copied()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("master process"))
        })
        .collect()
}

impl Configs {
    /// From `file` if given, else from the masters among `traced`.
    pub fn load(file: Option<&Path>, traced: &BTreeSet<u32>) -> Self {
        let mut configs = Self {
            file: file.map(Path::to_path_buf),
            ..Self::default()
        };
        configs.refresh(traced);
        configs
    }

    /// Reads the configuration(s) again (after a reload).
    pub fn refresh(&mut self, traced: &BTreeSet<u32>) {
        let read = Self::read(self.file.as_deref(), traced);
        self.apply(read);
    }

    /// The file given with `--config`, if any.
    pub fn file(&self) -> Option<&Path> {
        self.file.as_deref()
    }

    /// Reads the configuration(s) from `file`, else of the masters among
    /// `traced`: what may take long (files, host names to resolve), kept
    /// apart from [`Configs::apply`] to run off the reader's thread.
    pub fn read(file: Option<&Path>, traced: &BTreeSet<u32>) -> ConfigRead {
        ConfigRead(match file {
            Some(file) => vec![(
                None,
                file.display().to_string(),
                std::fs::read_to_string(file)
                    .map(|dump| Config::from_dump(&dump))
                    .map_err(|e| e.to_string()),
            )],
            None => masters(traced)
                .into_iter()
                .map(|m| {
                    let config = crate::nginx::nginx_files::read(m).map(|files| {
                        let mut config = Config::from_files(&files.files, files.globals.as_deref());
                        config.problems.splice(0..0, files.problems);
                        config
                    });
                    (Some(m), format!("nginx {m}"), config)
                })
                .collect(),
        })
    }

    /// Puts configurations read by [`Configs::read`] in effect, saying
    /// their problems.
    pub fn apply(&mut self, read: ConfigRead) {
        let ConfigRead(read) = read;
        let mut merged = Config::default();
        let mut per_master = BTreeMap::new();
        let mut any = false;
        for (master, source, config) in read {
            match config {
                Ok(config) => {
                    any = true;
                    for p in &config.problems {
                        self.say(&format!("nginx configuration: {p}"));
                    }
                    merged.groups.extend(config.groups.iter().cloned());
                    merged.locations.extend(config.locations.iter().cloned());
                    merged.servers.extend(config.servers.iter().cloned());
                    if let Some(m) = master {
                        per_master.insert(m, config);
                    }
                }
                Err(e) => self.say(&format!(
                    "cannot read the nginx configuration of {source} ({e}): advice names no \
                     current values (give a saved `nginx -T` with --config FILE)"
                )),
            }
        }
        // nginx stopped, or its files could not be read (a configuration
        // being edited): the last one read stays in effect.
        if any {
            self.config = merged;
            self.per_master = per_master;
        }
    }

    /// Says `message` once (a problem that repeats is said the first time).
    pub fn say(&mut self, message: &str) {
        if self.said.first(message) {
            notice(message);
        }
    }

    /// The configuration in effect (empty when unknown): every traced
    /// instance's together.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Each traced instance's configuration, by master pid (empty with
    /// `--config FILE`, which belongs to no instance).
    pub fn per_master(&self) -> &BTreeMap<u32, Config> {
        &self.per_master
    }
}

/// `name value at file:line (location L)`, or `(nginx's default)`.
pub fn describe(name: &str, setting: &Setting, location: Option<&str>) -> String {
    let at = match &setting.at {
        Some((file, line)) => format!("{file}:{line}"),
        None => "nginx's default".to_string(),
    };
    match location {
        Some(l) => format!("{name} {} ({at}, location {l})", setting.value),
        None => format!("{name} {} ({at})", setting.value),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_are_said_once_and_their_set_is_capped() {
        let mut said = SaidOnce::default();
        assert!(said.first("a"));
        assert!(!said.first("a"));
        for i in 1..SAID_MAX {
            assert!(said.first(&format!("n{i}")));
        }
        assert!(!said.first("one too many"));
        assert!(!said.first("another"));
        assert!(!said.first("a"), "said already: not counted");
        assert_eq!((said.said.len(), said.not_shown), (SAID_MAX, 2));
    }
}
