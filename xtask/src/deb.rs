//! `cargo xtask deb`: a Debian package of the release build, for hosts
//! without a toolchain: the tracer (its BPF object is inside it), a man
//! page and bash, zsh and fish completions generated from its command-line
//! definition, the README, and a systemd unit (installed disabled) that runs
//! it as a Prometheus exporter, with its options in `/etc/default/ngx-trace`.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// The package's name.
const NAME: &str = "ngx-trace";

/// The systemd unit. The capabilities are what the tracer uses and no
/// more: BPF programs and maps (CAP_BPF), tracepoints, kprobes and reading
/// kernel memory from them (CAP_PERFMON), mounting tracefs (CAP_SYS_ADMIN),
/// taking an nginx master's own uid and groups on the thread that reads
/// its configuration files, so that nothing is read with more rights than
/// the master has (CAP_SETUID, CAP_SETGID: `setfsuid`, `setfsgid`,
/// `setgroups`), nginx workers' `/proc` files and copies of their
/// kept-alive sockets (CAP_SYS_PTRACE), nginx's log files, which its
/// master opened as root (CAP_DAC_OVERRIDE), and the locked-memory limit
/// BPF maps count against before Linux 5.11 (CAP_SYS_RESOURCE). It enters
/// no namespace and runs no program.
pub const UNIT: &str = "\
[Unit]
Description=ngx-trace: nginx upstream failures explained from the kernel, for Prometheus
Documentation=man:ngx-trace(1)
After=network.target

[Service]
Type=exec
EnvironmentFile=-/etc/default/ngx-trace
ExecStart=/usr/bin/ngx-trace trace --interval 0 $NGX_TRACE_OPTIONS
Restart=on-failure
RestartSec=5
CapabilityBoundingSet=CAP_BPF CAP_PERFMON CAP_SYS_ADMIN CAP_SETUID CAP_SETGID CAP_SYS_PTRACE CAP_DAC_OVERRIDE CAP_SYS_RESOURCE
NoNewPrivileges=yes
ProtectSystem=full
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
";

/// `/etc/default/ngx-trace`, a conffile.
const DEFAULTS: &str = "\
# Options of the ngx-trace service (systemctl enable --now ngx-trace).
# See man ngx-trace. Metrics listen on loopback unless another address is
# written out (0.0.0.0:9438 lets another host's Prometheus scrape them).
NGX_TRACE_OPTIONS=\"--metrics-listen 127.0.0.1:9438\"
";

const POSTINST: &str = "\
#!/bin/sh
set -e
# Installed disabled: `systemctl enable --now ngx-trace` starts the exporter.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
    # An upgrade: a running exporter moves to the new binary.
    if [ \"$1\" = configure ] && [ -n \"$2\" ]; then
        systemctl try-restart ngx-trace.service >/dev/null || true
    fi
fi
";

const PRERM: &str = "\
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ \"$1\" = remove ]; then
    systemctl stop ngx-trace.service >/dev/null 2>&1 || true
fi
";

const POSTRM: &str = "\
#!/bin/sh
set -e
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null || true
fi
# Purge: forget that it was enabled.
if [ \"$1\" = purge ] && command -v deb-systemd-helper >/dev/null; then
    deb-systemd-helper purge ngx-trace.service >/dev/null || true
fi
";

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: ngx-trace

Files: *
Copyright: the ngx-trace authors
License: MIT or Apache-2.0
 On Debian systems, the Apache License 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
";

/// Runs `program args`, failing with what it said.
fn output(program: &str, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("failed to run {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// Writes `bytes` to `root`/`path` with `mode`.
fn put(root: &Path, path: &str, bytes: &[u8], mode: u32) -> Result<()> {
    let target = root.join(path);
    fs::create_dir_all(target.parent().expect("a file path"))?;
    fs::write(&target, bytes).with_context(|| format!("failed to write {}", target.display()))?;
    fs::set_permissions(&target, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// `bytes` compressed as Debian ships documentation (gzip -9n).
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .args(["-9n"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("failed to run gzip")?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = bytes.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))??;
    if !out.status.success() {
        bail!("gzip failed ({})", out.status);
    }
    Ok(out.stdout)
}

/// The packages the binary's shared libraries come from, with the newest
/// glibc symbol version it uses (`libc6 (>= 2.34)`).
pub fn depends(dynamic_symbols: &str, needed: &str) -> String {
    let glibc = dynamic_symbols
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '.'))
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let mut parts = v.split('.').map(|p| p.parse::<u32>().ok());
            Some((parts.next()??, parts.next().flatten().unwrap_or(0)))
        })
        .max();
    let mut deps = vec![match glibc {
        Some((major, minor)) => format!("libc6 (>= {major}.{minor})"),
        None => "libc6".to_string(),
    }];
    if needed.contains("libgcc_s.so") {
        deps.push("libgcc-s1".to_string());
    }
    deps.join(", ")
}

/// Builds the package from the release binary `bin`; returns its path.
pub fn build(bin: &Path, workspace: &Path) -> Result<PathBuf> {
    let bin_str = bin.to_str().context("non UTF-8 binary path")?;
    let version_line = String::from_utf8(output(bin_str, &["-V"])?)?;
    let version = version_line
        .split_whitespace()
        .nth(1)
        .context("ngx-trace -V printed no version")?
        .to_string();
    let arch = String::from_utf8(output("dpkg", &["--print-architecture"])?)?
        .trim()
        .to_string();
    let out_dir = workspace.join("target/deb");
    let root = out_dir.join(format!("{NAME}_{version}_{arch}"));
    if root.exists() {
        fs::remove_dir_all(&root)?;
    }
    fs::create_dir_all(&root)?;

    put(&root, "usr/bin/ngx-trace", &fs::read(bin)?, 0o755)?;
    let generated = |what: &str| output(bin_str, &["generate", what]);
    put(
        &root,
        "usr/share/man/man1/ngx-trace.1.gz",
        &gzip(&generated("man")?)?,
        0o644,
    )?;
    put(
        &root,
        "usr/share/bash-completion/completions/ngx-trace",
        &generated("bash")?,
        0o644,
    )?;
    put(
        &root,
        "usr/share/zsh/vendor-completions/_ngx-trace",
        &generated("zsh")?,
        0o644,
    )?;
    put(
        &root,
        "usr/share/fish/vendor_completions.d/ngx-trace.fish",
        &generated("fish")?,
        0o644,
    )?;
    let readme = fs::read(workspace.join("README.md")).context("failed to read README.md")?;
    put(
        &root,
        "usr/share/doc/ngx-trace/README.md.gz",
        &gzip(&readme)?,
        0o644,
    )?;
    put(
        &root,
        "usr/share/doc/ngx-trace/copyright",
        COPYRIGHT.as_bytes(),
        0o644,
    )?;
    put(
        &root,
        "usr/lib/systemd/system/ngx-trace.service",
        UNIT.as_bytes(),
        0o644,
    )?;
    put(&root, "etc/default/ngx-trace", DEFAULTS.as_bytes(), 0o644)?;

    let installed_kb = installed_size_kb(&root)?;
    let symbols = String::from_utf8_lossy(&output("objdump", &["-T", bin_str])?).into_owned();
    let headers = String::from_utf8_lossy(&output("objdump", &["-p", bin_str])?).into_owned();
    let control = format!(
        "Package: {NAME}\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: ngx-trace developers <ngx-trace@localhost>\n\
         Installed-Size: {installed_kb}\n\
         Depends: {depends}\n\
         Suggests: nginx, prometheus\n\
         Section: admin\n\
         Priority: optional\n\
         Description: explains nginx's 502 and 504 from inside the Linux kernel\n \
         ngx-trace watches nginx workers with eBPF and reports every failed\n \
         upstream connection and exchange (TCP and UNIX sockets) with its cause:\n \
         backend down, slow, overloaded, network loss, permissions, local\n \
         resource exhaustion. It explains nginx's error log line by line,\n \
         advises timeouts from the configuration and measured latencies, and\n \
         exports the same figures to Prometheus (systemd unit, installed\n \
         disabled).\n",
        depends = depends(&symbols, &headers),
    );
    put(&root, "DEBIAN/control", control.as_bytes(), 0o644)?;
    put(
        &root,
        "DEBIAN/conffiles",
        b"/etc/default/ngx-trace\n",
        0o644,
    )?;
    put(&root, "DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    put(&root, "DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    put(&root, "DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;

    let deb = out_dir.join(format!("{NAME}_{version}_{arch}.deb"));
    let root_str = root.to_str().context("non UTF-8 path")?;
    let deb_str = deb.to_str().context("non UTF-8 path")?;
    output(
        "dpkg-deb",
        &["--root-owner-group", "-Zxz", "--build", root_str, deb_str],
    )?;
    eprintln!("xtask: built {}", deb.display());
    Ok(deb)
}

/// The size of the files under `root`, KiB (before `DEBIAN` is written).
fn installed_size_kb(root: &Path) -> Result<u64> {
    fn walk(dir: &Path, total: &mut u64) -> Result<()> {
        for entry in fs::read_dir(dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                walk(&entry.path(), total)?;
            } else {
                *total += meta.len().div_ceil(1024);
            }
        }
        Ok(())
    }
    let mut total = 0;
    walk(root, &mut total)?;
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depends_on_the_newest_glibc_version_used() {
        let symbols = "0000 DF *UND* 0000 (GLIBC_2.2.5) malloc\n\
                       0000 DF *UND* 0000 (GLIBC_2.34) __libc_start_main\n\
                       0000 DF *UND* 0000 (GLIBC_2.28) statx\n";
        assert_eq!(
            depends(symbols, "  NEEDED               libgcc_s.so.1\n"),
            "libc6 (>= 2.34), libgcc-s1"
        );
        assert_eq!(depends("", ""), "libc6");
    }

    #[test]
    fn the_unit_bounds_capabilities_and_reads_its_options() {
        assert!(UNIT.contains("CapabilityBoundingSet=CAP_BPF CAP_PERFMON"));
        assert!(UNIT.contains("EnvironmentFile=-/etc/default/ngx-trace"));
        assert!(DEFAULTS.contains("--metrics-listen 127.0.0.1:"));
    }
}
