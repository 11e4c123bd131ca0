//! Installing what building and testing need, idempotently: each step
//! checks first and does nothing when its part is already there.
use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian packages the benchmark uses.
pub const BENCH_PACKAGES: &[&str] = &["nginx", "wrk", "bpftrace", "bpftool"];

/// Debian packages building the Debian package uses (objdump, for its
/// dependencies; dpkg-deb and gzip are essential).
pub const DEB_PACKAGES: &[&str] = &["binutils"];

/// Debian packages the tests use (with the package's: it is built first).
pub const TEST_PACKAGES: &[&str] = &[
    "nginx",
    "php-fpm",
    "gunicorn",
    "uwsgi-core",
    "uwsgi-plugin-python3",
    "iptables",
    "bpftool",
    "prometheus",
    "tmux",
    "binutils",
    "man-db",
];

/// Debian packages that booting Debian's kernels under qemu needs: virtme-ng
/// builds its initramfs with busybox and cpio, runs depmod (kmod), reads a
/// kernel image's release with `file`, and lives in a virtualenv.
pub const VM_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "file",
    "python3-venv",
];

/// The virtme-ng release the VM runs were verified with (its options and
/// the way it starts virtiofsd).
const VIRTME_NG: &str = "1.42";

/// virtme-ng starts the Rust virtiofsd, which Debian 12 does not ship;
/// qemu 7.2's C daemon does the same job with other options. This stands
/// in for it, first on virtme-ng's PATH.
const VIRTIOFSD_WRAPPER: &str = r#"#!/bin/sh
# Written by `cargo xtask`: virtme-ng's virtiofsd options for qemu's C daemon.
sock= dir= cache=auto
while [ $# -gt 0 ]; do
    case "$1" in
        --version) exec /usr/lib/qemu/virtiofsd --version ;;
        --help) echo "usage: virtiofsd --socket-path PATH --shared-dir DIR [--cache MODE]"; exit 0 ;;
        --socket-path) sock=$2; shift ;;
        --socket-path=*) sock=${1#*=} ;;
        --shared-dir) dir=$2; shift ;;
        --shared-dir=*) dir=${1#*=} ;;
        --cache) cache=$2; shift ;;
        --cache=*) cache=${1#*=} ;;
        --sandbox) shift ;;
    esac
    shift
done
if [ -z "$sock" ] || [ -z "$dir" ]; then
    echo "virtiofsd: --socket-path and --shared-dir are needed" >&2
    exit 2
fi
/usr/lib/qemu/virtiofsd --socket-path="$sock" -o source="$dir" -o cache="$cache" \
    -o sandbox=chroot -o xattr &
pid=$!
# virtme-ng starts qemu once <socket>.pid exists: write it once the daemon listens.
i=0
while [ ! -S "$sock" ] && [ $i -lt 100 ] && kill -0 $pid 2>/dev/null; do
    sleep 0.05
    i=$((i + 1))
done
echo $pid > "$sock.pid"
wait $pid
"#;

/// virtme-ng in a virtualenv under `cache`, and the `virtiofsd` stand-in;
/// returns `vng` and the folder to put first on its PATH.
pub fn virtme_ng(cache: &Path) -> Result<(PathBuf, PathBuf)> {
    let venv = cache.join("venv");
    let vng = venv.join("bin/vng");
    if !venv.join("bin/python3").exists() {
        eprintln!("xtask: creating a virtualenv in {}", venv.display());
        status(
            // Debian's python (python3-venv), whatever else is first on PATH.
            Command::new("/usr/bin/python3")
                .arg("-m")
                .arg("venv")
                .arg(&venv),
            "`python3 -m venv`",
        )?;
    }
    let vng_version = Command::new(&vng)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if vng_version != format!("virtme-ng {VIRTME_NG}") {
        eprintln!(
            "xtask: installing virtme-ng {VIRTME_NG} into {}",
            venv.display()
        );
        status(
            Command::new(venv.join("bin/pip"))
                .args(["install", "--quiet", "--disable-pip-version-check"])
                .arg(format!("virtme-ng=={VIRTME_NG}")),
            "`pip install virtme-ng`",
        )?;
    }
    let bin = cache.join("bin");
    let wrapper = bin.join("virtiofsd");
    if std::fs::read_to_string(&wrapper).ok().as_deref() != Some(VIRTIOFSD_WRAPPER) {
        std::fs::create_dir_all(&bin)
            .with_context(|| format!("failed to create {}", bin.display()))?;
        std::fs::write(&wrapper, VIRTIOFSD_WRAPPER)
            .with_context(|| format!("failed to write {}", wrapper.display()))?;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))
            .with_context(|| format!("failed to chmod {}", wrapper.display()))?;
    }
    Ok((vng, bin))
}

fn output(program: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(program)
        .args(args)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("failed to run `{program} {}`", args.join(" ")))?;
    if !out.status.success() {
        bail!("`{program} {}` failed ({})", args.join(" "), out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn status(cmd: &mut Command, what: &str) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("failed to start {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// rust-src for the active toolchain (eBPF builds `core` from source) and a
/// bpf-linker linked against the toolchain's own LLVM.
pub fn toolchain() -> Result<()> {
    let installed = output("rustup", &["component", "list", "--installed"])?;
    if !installed.lines().any(|l| l.starts_with("rust-src")) {
        eprintln!("xtask: installing rust-src");
        status(
            Command::new("rustup").args(["component", "add", "rust-src"]),
            "`rustup component add rust-src`",
        )?;
    }
    let linker_ok = Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !linker_ok {
        install_bpf_linker()?;
    }
    Ok(())
}

/// Builds bpf-linker against the LLVM shipped inside the rustup toolchain:
/// no system LLVM of the right major version is needed.
fn install_bpf_linker() -> Result<()> {
    let version = output("rustc", &["-vV"])?;
    let major = version
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next())
        .context("`rustc -vV` does not say its LLVM version")?
        .to_string();
    let sysroot = output("rustc", &["--print", "sysroot"])?.trim().to_string();
    let libdir = format!("{sysroot}/lib");
    let prefix = format!("libLLVM-{major}-");
    let lib = std::fs::read_dir(&libdir)
        .with_context(|| format!("failed to list {libdir}"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .find(|name| name.starts_with(&prefix) && name.ends_with(".so"))
        .with_context(|| {
            format!("no {prefix}*.so in {libdir}: the toolchain ships no LLVM library")
        })?;
    let lib = lib.trim_start_matches("lib").trim_end_matches(".so");
    eprintln!("xtask: building bpf-linker against {libdir}/lib{lib}.so (about a minute)");
    let rustflags = format!("-L native={libdir} -l dylib={lib} -C link-arg=-Wl,-rpath,{libdir}");
    status(
        Command::new("cargo")
            // The release verified with this toolchain line (aya 0.14, LLVM 22):
            // a newer one may need a newer rustc than the machine's.
            .args([
                "install",
                "bpf-linker@0.13.0",
                "--locked",
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{major},no-llvm-linking"))
            .env("RUSTFLAGS", rustflags),
        "`cargo install bpf-linker`",
    )
}

fn is_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

/// Installs the Debian packages of `wanted` that are missing.
pub fn packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| !is_installed(p))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing {}", missing.join(" "));
    let sudo = unsafe { libc::geteuid() } != 0;
    let apt = |args: &[&str]| {
        let mut cmd = if sudo {
            let mut c = Command::new("sudo");
            c.arg("apt-get");
            c
        } else {
            Command::new("apt-get")
        };
        cmd.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    };
    status(&mut apt(&["update", "-qq"]), "`apt-get update`")?;
    let mut install = apt(&["install", "-y", "-qq", "--no-install-recommends"]);
    install.args(&missing);
    status(&mut install, "`apt-get install`")
}
