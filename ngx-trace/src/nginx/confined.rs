//! Files a traced process names, read as that process could read them.
//!
//! Anything can call itself nginx, so a path found through a traced
//! process (its `-c`, an `include`, its `TZ`) is chosen by whoever runs
//! it. ngx-trace runs as root: read with root's rights, such a path would
//! let any local user read `/etc/shadow` through the tracer. So every such
//! read happens on a short-lived thread that holds the process's own file
//! system credentials (`setfsuid`, `setfsgid` and its supplementary groups;
//! Linux keeps credentials per thread, and a non-zero fsuid drops the
//! file-system capabilities of that thread alone), and every path is
//! resolved inside the process's root (`/proc/<pid>/root`, so a
//! container's files are its own) by `openat2(RESOLVE_IN_ROOT)`: `..` and
//! absolute symlinks cannot leave it, magic links are refused. Only
//! regular files are read, opened non-blocking (a FIFO cannot hang the
//! tracer), and never more than a stated size.
use std::{
    ffi::{CStr, CString},
    fs::File,
    io::{self, Read as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// A process's file-system credentials, from `/proc/<pid>/status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    /// Its fsuid (the uid the kernel checks file access against).
    pub uid: u32,
    /// Its fsgid.
    pub gid: u32,
    /// Its supplementary groups.
    pub groups: Vec<u32>,
}

/// The fsuid, fsgid and groups of a `/proc/<pid>/status` text.
pub fn parse_credentials(status: &str) -> Option<Credentials> {
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.split_whitespace().collect::<Vec<_>>())
    };
    // `Uid:` and `Gid:` are real, effective, saved and file-system ids.
    // They differ after a set-user-ID exec (real: the user who ran it, the
    // others: the file's owner) or a temporary drop (real root, fs not):
    // the less privileged of real and fs is taken, so a process that only
    // borrowed root's rights from a setuid program never lends them.
    let least = |ids: Vec<&str>| -> Option<u32> {
        let real: u32 = ids.first()?.parse().ok()?;
        let fs: u32 = ids.get(3)?.parse().ok()?;
        Some(if real != 0 { real } else { fs })
    };
    let uid = least(field("Uid:")?)?;
    let gid = least(field("Gid:")?)?;
    let groups = field("Groups:")?
        .iter()
        .map(|g| g.parse().ok())
        .collect::<Option<Vec<u32>>>()?;
    Some(Credentials { uid, gid, groups })
}

/// A process's root directory and credentials, held by descriptor (a pid
/// reused later does not change what is read).
pub struct Process {
    pid: u32,
    root: OwnedFd,
    proc_dir: OwnedFd,
    creds: Credentials,
}

fn open_at(dir: Option<&OwnedFd>, path: &str, flags: i32) -> io::Result<OwnedFd> {
    let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let dirfd = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
    // SAFETY: a valid C string and directory descriptor; the result is
    // checked before it is owned.
    let fd = unsafe { libc::openat(dirfd, c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Process {
    /// Opens `pid`'s `/proc` directory and root, and reads its credentials.
    pub fn open(pid: u32) -> Result<Self, String> {
        let proc_dir = open_at(
            None,
            &format!("/proc/{pid}"),
            libc::O_PATH | libc::O_DIRECTORY,
        )
        .map_err(|e| format!("cannot open /proc/{pid}: {e}"))?;
        let root = open_at(Some(&proc_dir), "root", libc::O_PATH | libc::O_DIRECTORY)
            .map_err(|e| format!("cannot open process {pid}'s root directory: {e}"))?;
        let mut status = String::new();
        File::from(
            open_at(Some(&proc_dir), "status", libc::O_RDONLY)
                .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?,
        )
        .read_to_string(&mut status)
        .map_err(|e| format!("cannot read /proc/{pid}/status: {e}"))?;
        let creds = parse_credentials(&status)
            .ok_or_else(|| format!("no credentials in /proc/{pid}/status"))?;
        Ok(Self {
            pid,
            root,
            proc_dir,
            creds,
        })
    }

    /// Runs `f` on a thread of its own that holds this process's
    /// credentials, with a reader of the files under its root. The thread
    /// ends with `f`, and its credentials with it.
    pub fn with_reader<T: Send>(
        &self,
        f: impl FnOnce(&Reader<'_>) -> T + Send,
    ) -> Result<T, String> {
        std::thread::scope(|scope| {
            scope
                .spawn(|| {
                    take_credentials(&self.creds).map_err(|e| {
                        format!(
                            "cannot take the credentials of process {} (uid {}, gid {}): {e}",
                            self.pid, self.creds.uid, self.creds.gid
                        )
                    })?;
                    Ok(f(&Reader { process: self }))
                })
                .join()
                .unwrap_or_else(|_| Err("the confined reader panicked".to_string()))
        })
    }
}

/// Gives the calling thread `creds` for file access. The raw system calls
/// change this thread only (the C library's `setgroups` would change every
/// thread of the tracer).
fn take_credentials(creds: &Credentials) -> io::Result<()> {
    // SAFETY: plain system calls on this thread's credentials with a valid
    // group array.
    unsafe {
        if libc::syscall(
            libc::SYS_setgroups,
            creds.groups.len(),
            creds.groups.as_ptr(),
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        libc::syscall(libc::SYS_setfsgid, creds.gid);
        libc::syscall(libc::SYS_setfsuid, creds.uid);
        // Both calls return the previous id whatever happens: an invalid
        // id asks for the current one, to check they took.
        let gid = libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32;
        let uid = libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32;
        if uid != creds.uid || gid != creds.gid {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!("the thread has fsuid {uid} and fsgid {gid}"),
            ));
        }
    }
    drop_capabilities(creds.uid == 0)
}

/// Drops this thread's capabilities (the tracer's other threads keep
/// theirs): a non-zero fsuid already drops the file-system ones, but
/// CAP_SYS_PTRACE would still open `/proc/<pid>/` files of other users'
/// processes. For a root process only the rights to read any file stay,
/// which that process has too.
fn drop_capabilities(root: bool) -> io::Result<()> {
    /// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
    const VERSION_3: u32 = 0x2008_0522;
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    /// `CAP_DAC_OVERRIDE`, `CAP_DAC_READ_SEARCH` (linux/capability.h).
    const CAP_DAC_OVERRIDE: u32 = 1;
    const CAP_DAC_READ_SEARCH: u32 = 2;
    let keep: u32 = if root {
        (1 << CAP_DAC_OVERRIDE) | (1 << CAP_DAC_READ_SEARCH)
    } else {
        0
    };
    let header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut now = [Data {
        effective: 0,
        permitted: 0,
        inheritable: 0,
    }; 2];
    // SAFETY: capget with a valid header and room for two data words.
    if unsafe { libc::syscall(libc::SYS_capget, &header, now.as_mut_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Only what the thread has may be kept (a unit's bounding set may lack
    // one of them).
    let keep = keep & now[0].permitted;
    let data = [
        Data {
            effective: keep,
            permitted: keep,
            inheritable: 0,
        },
        Data {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        },
    ];
    // SAFETY: capset with a valid header and two data words, on the
    // calling thread (pid 0).
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Reads files under a process's root with its credentials (see
/// [`Process::with_reader`]).
pub struct Reader<'a> {
    process: &'a Process,
}

impl Reader<'_> {
    /// Opens `path` as the process would, resolved inside its root.
    fn open(&self, path: &str, flags: u64) -> io::Result<OwnedFd> {
        let c = CString::new(path).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: open_how is plain data; zero is valid for every field.
        let mut how: libc::open_how = unsafe { std::mem::zeroed() };
        // openat2 refuses O_PATH with any flag but a few (O_NOCTTY among
        // those it refuses).
        let noctty = if flags & libc::O_PATH as u64 == 0 {
            libc::O_NOCTTY as u64
        } else {
            0
        };
        how.flags = flags | libc::O_CLOEXEC as u64 | noctty;
        how.resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
        // SAFETY: a valid directory descriptor, C string and open_how of
        // the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                self.process.root.as_raw_fd(),
                c.as_ptr(),
                &how as *const libc::open_how,
                std::mem::size_of::<libc::open_how>(),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a descriptor just returned by the kernel.
        Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    /// The bytes of the regular file `path` (resolved in the process's
    /// root), at most `limit` of them: a larger file is an error.
    pub fn read(&self, path: &str, limit: u64) -> io::Result<Vec<u8>> {
        // Opened as a path first: opening a device acts (a watchdog arms,
        // a tty changes state), so only a regular file is opened to read.
        let handle = File::from(self.open(path, libc::O_PATH as u64)?);
        if !handle.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let fd = open_at(
            None,
            &format!("/proc/self/fd/{}", handle.as_raw_fd()),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_NOCTTY,
        )?;
        read_regular(File::from(fd), limit)
    }

    /// The process's command line (through its `/proc` directory, so a
    /// reused pid cannot pair another process's arguments with these
    /// credentials).
    pub fn cmdline(&self) -> io::Result<Vec<u8>> {
        let fd = open_at(Some(&self.process.proc_dir), "cmdline", libc::O_RDONLY)?;
        let mut bytes = Vec::new();
        File::from(fd).take(1 << 20).read_to_end(&mut bytes)?;
        Ok(bytes)
    }

    /// The names in directory `dir` (resolved in the process's root),
    /// `.` and `..` left out, at most `limit` of them.
    pub fn list(&self, dir: &str, limit: usize) -> io::Result<Vec<String>> {
        let fd = self.open(dir, (libc::O_RDONLY | libc::O_DIRECTORY) as u64)?;
        list_dir(fd, limit)
    }

    /// The bytes of the process's executable (`/proc/<pid>/exe`, which the
    /// kernel lets a process with its own credentials open), at most
    /// `limit`.
    pub fn executable(&self, limit: u64) -> io::Result<Vec<u8>> {
        let fd = open_at(
            Some(&self.process.proc_dir),
            "exe",
            libc::O_RDONLY | libc::O_NONBLOCK,
        )?;
        read_regular(File::from(fd), limit)
    }
}

/// Reads `file` whole if it is a regular file of at most `limit` bytes.
fn read_regular(mut file: File, limit: u64) -> io::Result<Vec<u8>> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut bytes = Vec::new();
    (&mut file).take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// The names in the open directory `fd`.
fn list_dir(fd: OwnedFd, limit: usize) -> io::Result<Vec<String>> {
    use std::os::fd::IntoRawFd as _;
    let raw = fd.into_raw_fd();
    // SAFETY: `raw` is an open directory descriptor whose ownership passes
    // to the DIR stream (closedir closes it).
    let dir = unsafe { libc::fdopendir(raw) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so the descriptor is still ours.
        unsafe { libc::close(raw) };
        return Err(e);
    }
    let mut names = Vec::new();
    loop {
        // SAFETY: a valid DIR stream used by this thread alone.
        let entry = unsafe { libc::readdir(dir) };
        if entry.is_null() {
            break;
        }
        // SAFETY: readdir returned a valid entry whose name is a C string.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        let name = name.to_string_lossy();
        if name == "." || name == ".." {
            continue;
        }
        if names.len() == limit {
            // SAFETY: the stream opened above, closed once.
            unsafe { libc::closedir(dir) };
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("more than {limit} entries"),
            ));
        }
        names.push(name.into_owned());
    }
    // SAFETY: the stream opened above, closed once.
    unsafe { libc::closedir(dir) };
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_the_file_system_ids_and_groups() {
        let status =
            "Name:\tnginx\nUid:\t0\t33\t33\t33\nGid:\t0\t33\t33\t34\nFDSize:\t64\nGroups:\t4 27 \n";
        assert_eq!(
            parse_credentials(status),
            Some(Credentials {
                uid: 33,
                gid: 34,
                groups: vec![4, 27],
            })
        );
        let none =
            "Uid:\t65534\t65534\t65534\t65534\nGid:\t65534\t65534\t65534\t65534\nGroups:\t\n";
        assert_eq!(parse_credentials(none).unwrap().groups, Vec::<u32>::new());
        assert_eq!(parse_credentials("Uid:\t1\n"), None);
        // After exec of a setuid-root program by user 1000: that user's.
        let setuid = "Uid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\nGroups:\t\n";
        assert_eq!(parse_credentials(setuid).unwrap().uid, 1000);
        // Root that dropped its file-system id for a while: the dropped one.
        let dropped = "Uid:\t0\t33\t0\t33\nGid:\t0\t0\t0\t0\nGroups:\t\n";
        assert_eq!(parse_credentials(dropped).unwrap().uid, 33);
    }

    #[test]
    fn a_reader_of_this_process_sees_its_files_and_stays_in_its_root() {
        let dir = std::env::temp_dir().join(format!("ngx-trace-confined-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("a.conf"), "user nobody;\n").unwrap();
        std::os::unix::fs::symlink("/dev/zero", dir.join("zero")).unwrap();
        let me = Process::open(std::process::id()).unwrap();
        let d = dir.display().to_string();
        let (text, names, zero, big, up) = me
            .with_reader(|r| {
                (
                    r.read(&format!("{d}/a.conf"), 1024),
                    r.list(&d, 10),
                    r.read(&format!("{d}/zero"), 1024),
                    r.read(&format!("{d}/a.conf"), 4),
                    // `..` above the root stays at the root.
                    r.read(&format!("/../../..{d}/a.conf"), 1024),
                )
            })
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(text.unwrap(), b"user nobody;\n");
        let mut names = names.unwrap();
        names.sort();
        assert_eq!(names, ["a.conf", "zero"]);
        assert!(zero.unwrap_err().to_string().contains("not a regular file"));
        assert!(big.unwrap_err().to_string().contains("larger than 4"));
        assert_eq!(up.unwrap(), b"user nobody;\n");
    }

    /// As root (as `cargo xtask test` runs): a reader of a process running
    /// as nobody reads what nobody may, and not a root-only file, though
    /// the tracer is root.
    #[test]
    fn a_reader_has_the_process_rights_not_the_tracer() {
        use std::os::unix::fs::PermissionsExt as _;
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("NOTE: not root: the credential switch is tested by `cargo xtask test`");
            return;
        }
        let dir = std::env::temp_dir().join(format!("ngx-trace-creds-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(dir.join("secret"), "root only\n").unwrap();
        std::fs::set_permissions(dir.join("secret"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        std::fs::write(dir.join("public"), "anyone\n").unwrap();
        let mut child = std::process::Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "sleep",
                "10",
            ])
            .spawn()
            .unwrap();
        // Its credentials are those of the child once it has exec'd.
        let process = loop {
            let p = Process::open(child.id()).unwrap();
            if p.creds.uid == 65534 {
                break p;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let d = dir.display().to_string();
        let (secret, public) = process
            .with_reader(|r| {
                (
                    r.read(&format!("{d}/secret"), 1024),
                    r.read(&format!("{d}/public"), 1024),
                )
            })
            .unwrap();
        // The tracer's own thread is still root.
        let ours = std::fs::read(dir.join("secret"));
        let _ = child.kill();
        let _ = child.wait();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(secret.unwrap_err().kind(), io::ErrorKind::PermissionDenied);
        assert_eq!(public.unwrap(), b"anyone\n");
        assert_eq!(ours.unwrap(), b"root only\n");
    }
}
