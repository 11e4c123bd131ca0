//! Finding nginx processes in /proc.
use std::{collections::BTreeSet, fs, io};

use anyhow::Result;

use crate::exit::{self, UserError};

/// What ngx-trace reads from `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Task name (comm).
    pub name: String,
    /// Thread group id: equal to the pid for a process, not for a thread.
    pub tgid: u32,
    /// Parent process id.
    pub ppid: u32,
}

/// Parses the text of `/proc/<pid>/status`.
pub fn parse_status(text: &str) -> Option<Status> {
    let mut name = None;
    let mut tgid = None;
    let mut ppid = None;
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match key {
            "Name" => name = Some(value.to_string()),
            "Tgid" => tgid = value.parse().ok(),
            "PPid" => ppid = value.parse().ok(),
            _ => {}
        }
    }
    Some(Status {
        name: name?,
        tgid: tgid?,
        ppid: ppid?,
    })
}

/// The status of `pid`, or `None` when it is gone.
pub fn status(pid: u32) -> Option<Status> {
    parse_status(&fs::read_to_string(format!("/proc/{pid}/status")).ok()?)
}

/// Whether reading `/proc` failed with `e` because this process (or the
/// host) is out of descriptors (EMFILE, ENFILE): it says nothing about the
/// process read, which may well be alive.
pub fn out_of_descriptors(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
}

/// Reads `/proc/<pid>/<file>`: `None` when the process is gone (or hides
/// it), an error only when this process is out of descriptors.
fn read_proc(pid: u32, file: &str) -> io::Result<Option<Vec<u8>>> {
    match fs::read(format!("/proc/{pid}/{file}")) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if out_of_descriptors(&e) => Err(e),
        Err(_) => Ok(None),
    }
}

/// Whether `pid` is a process (not a thread) that still exists; an error
/// when `/proc` cannot tell for want of descriptors (see
/// [`out_of_descriptors`]): not a sign it is gone.
pub fn process_exists(pid: u32) -> io::Result<bool> {
    Ok(read_proc(pid, "status")?
        .and_then(|bytes| parse_status(&String::from_utf8_lossy(&bytes)))
        .is_some_and(|s| s.tgid == pid))
}

/// Whether the process title says nginx worker ("nginx: worker process");
/// an error when `/proc` cannot tell for want of descriptors.
pub fn has_worker_title(pid: u32) -> io::Result<bool> {
    Ok(read_proc(pid, "cmdline")?
        .is_some_and(|cmdline| String::from_utf8_lossy(&cmdline).contains("worker process")))
}

/// Whether the process title says nginx worker (`false` when `/proc`
/// cannot tell).
pub fn is_worker(pid: u32) -> bool {
    has_worker_title(pid).unwrap_or(false)
}

fn all_processes() -> Vec<(u32, Status)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, status(pid)?)))
        .collect()
}

/// Every process named `comm` on the host.
pub fn all_instances(comm: &str) -> BTreeSet<u32> {
    all_processes()
        .into_iter()
        .filter(|(_, s)| s.name == comm)
        .map(|(pid, _)| pid)
        .collect()
}

/// The processes of the nginx instance `pid` belongs to: its master (the
/// topmost ancestor named `comm`) and every descendant named `comm`.
pub fn instance_of(pid: u32, comm: &str) -> Result<BTreeSet<u32>> {
    let Some(start) = status(pid) else {
        return Err(UserError::new(
            exit::NO_SUCH_NGINX,
            format!("no process has pid {pid}: give the pid of an nginx master or worker (see `pgrep -a nginx`)"),
        )
        .into());
    };
    if start.name != comm {
        return Err(UserError::new(
            exit::NO_SUCH_NGINX,
            format!(
                "pid {pid} is `{}`, not {comm}: give the pid of an nginx master or worker \
                 (see `pgrep -a {comm}`)",
                start.name
            ),
        )
        .into());
    }
    let mut master = start.tgid;
    let mut parent = start.ppid;
    while let Some(s) = status(parent).filter(|s| s.name == comm) {
        master = parent;
        parent = s.ppid;
    }
    let processes = all_processes();
    let mut instance = BTreeSet::from([master]);
    // Descendants: repeat until no process joins (the tree is shallow).
    loop {
        let before = instance.len();
        for (p, s) in &processes {
            if s.name == comm && instance.contains(&s.ppid) {
                instance.insert(*p);
            }
        }
        if instance.len() == before {
            return Ok(instance);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_worker_status() {
        // Head of /proc/<worker>/status of Debian's nginx 1.22.
        let text = "Name:\tnginx\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4243\n\
                    Ngid:\t0\nPid:\t4243\nPPid:\t4242\nTracerPid:\t0\nUid:\t65534\t65534\t65534\t65534\n";
        assert_eq!(
            parse_status(text),
            Some(Status {
                name: "nginx".into(),
                tgid: 4243,
                ppid: 4242
            })
        );
    }

    #[test]
    fn a_truncated_status_is_none() {
        assert_eq!(parse_status("Name:\tnginx\nTgid:\t12\n"), None);
        assert_eq!(parse_status(""), None);
    }

    #[test]
    fn only_running_out_of_descriptors_is_not_a_process_gone() {
        for errno in [libc::EMFILE, libc::ENFILE] {
            assert!(out_of_descriptors(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ENOENT, libc::ESRCH, libc::EACCES] {
            assert!(!out_of_descriptors(&io::Error::from_raw_os_error(errno)));
        }
        // pid_max is at most 2^22: no such process.
        assert!(!process_exists(u32::MAX - 1).unwrap());
        assert!(!has_worker_title(u32::MAX - 1).unwrap());
    }

    #[test]
    fn this_process_is_found_and_is_not_nginx() {
        let me = std::process::id();
        assert!(process_exists(me).unwrap());
        let err = instance_of(me, "nginx").unwrap_err();
        assert_eq!(crate::exit::code_of(&err), crate::exit::NO_SUCH_NGINX);
        assert!(err.to_string().contains("not nginx"), "{err}");
    }
}
