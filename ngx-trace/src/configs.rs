//! The configuration of the traced nginx instances (see `nginx_conf`):
//! read from each master at start and again when its workers change (a
//! reload), or taken from `--config FILE` (a saved `nginx -T` dump). A
//! problem is said once, with its file and line, and never stops tracing.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use crate::{
    nginx_conf::{Config, Setting},
    output::notice,
};

/// The configurations in effect.
#[derive(Default)]
pub struct Configs {
    file: Option<PathBuf>,
    config: Config,
    said: BTreeSet<String>,
}

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
        let mut merged = Config::default();
        let mut read = 0;
        let dumps: Vec<(String, Result<String, String>)> = match &self.file {
            Some(file) => vec![(
                file.display().to_string(),
                std::fs::read_to_string(file).map_err(|e| e.to_string()),
            )],
            None => masters(traced)
                .into_iter()
                .map(|m| (format!("nginx {m}"), crate::nginx_conf::dump_of(m)))
                .collect(),
        };
        for (source, dump) in dumps {
            match dump {
                Ok(text) => {
                    read += 1;
                    let config = Config::from_dump(&text);
                    for p in &config.problems {
                        self.say(&format!("nginx configuration: {p}"));
                    }
                    merged.groups.extend(config.groups);
                    merged.locations.extend(config.locations);
                }
                Err(e) => self.say(&format!(
                    "cannot read the nginx configuration of {source} ({e}): advice names no \
                     current values (give a saved `nginx -T` with --config FILE)"
                )),
            }
        }
        // nginx stopped, or its dump failed (a configuration being
        // edited): the last one read stays in effect.
        if read > 0 {
            self.config = merged;
        }
    }

    /// Says `message` once (a problem that repeats is said the first time).
    pub fn say(&mut self, message: &str) {
        if self.said.insert(message.to_string()) {
            notice(message);
        }
    }

    /// The configuration in effect (empty when unknown).
    pub fn config(&self) -> &Config {
        &self.config
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
