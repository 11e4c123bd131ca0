//! Builds the eBPF object (ngx-trace-ebpf) that `src/kernel/programs.rs` embeds.
//!
//! The build runs cargo for the BPF target as aya-build does, but keeps
//! cargo's progress lines to itself: a build that succeeds says nothing
//! beyond the compiler's real warnings, and one that fails shows its whole
//! output (cargo prints a failed build script's stderr).
use anyhow::{Context as _, anyhow, bail};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let workspace = Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("ngx-trace has no parent directory"))?;
    let ebpf_dir = workspace.join("ngx-trace-ebpf");
    let common_dir = workspace.join("ngx-trace-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-changed={}", ebpf_dir.display());
    println!("cargo:rerun-if-env-changed=NGX_TRACE_BPF_TOOLCHAIN");
    let toolchain = std::env::var("NGX_TRACE_BPF_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    build_ebpf(&toolchain).context(
        "failed to build the eBPF programs (run `cargo xtask run` once: it installs rust-src and bpf-linker)",
    )
}

/// `cargo build` of ngx-trace-ebpf for the BPF target of this build's
/// architecture, its programs copied into `OUT_DIR`.
fn build_ebpf(toolchain: &str) -> anyhow::Result<()> {
    let out_dir = PathBuf::from(std::env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let endian =
        std::env::var("CARGO_CFG_TARGET_ENDIAN").context("CARGO_CFG_TARGET_ENDIAN not set")?;
    let target = match endian.as_str() {
        "little" => "bpfel-unknown-none",
        "big" => "bpfeb-unknown-none",
        other => bail!("unsupported endianness {other}"),
    };
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").context("CARGO_CFG_TARGET_ARCH not set")?;
    // Through rustup when there is one, so the toolchain named is used.
    let mut cmd = if Command::new("rustup").arg("--version").output().is_ok() {
        let mut cmd = Command::new("rustup");
        cmd.args(["run", toolchain, "cargo"]);
        cmd
    } else {
        Command::new("cargo")
    };
    let target_dir = out_dir.join("ebpf-target");
    cmd.args([
        "build",
        "--package",
        "ngx-trace-ebpf",
        "--bins",
        "--release",
        "--quiet",
    ])
    .args(["--message-format=json", "--target", target])
    // The stable toolchain builds core for BPF once unstable flags are
    // allowed, so a machine needs no nightly.
    .args(["-Z", "build-std=core"])
    .env("RUSTC_BOOTSTRAP", "1")
    .env(
        "CARGO_ENCODED_RUSTFLAGS",
        format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
    )
    // This build's own compiler settings are for the host's target.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    // A target directory of its own: cargo would wait on the lock of
    // the one building us.
    .arg("--target-dir")
    .arg(&target_dir)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    // stderr on a thread of its own: either pipe filling would stall cargo.
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    let stderr = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .context("no stdout pipe")?
        .read_to_string(&mut stdout)
        .context("failed to read cargo's output")?;
    let status = child.wait().context("failed to wait for cargo")?;
    let stderr = stderr.join().unwrap_or_default();
    let mut executables = Vec::new();
    for message in stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    {
        match message["reason"].as_str() {
            Some("compiler-artifact") => {
                if let (Some(name), Some(exe)) = (
                    message["target"]["name"].as_str(),
                    message["executable"].as_str(),
                ) {
                    executables.push((name.to_string(), PathBuf::from(exe)));
                }
            }
            // Real diagnostics stay visible on success too.
            Some("compiler-message") => {
                let rendered = message["message"]["rendered"].as_str().unwrap_or_default();
                for line in rendered.lines() {
                    println!("cargo:warning={line}");
                }
            }
            _ => {}
        }
    }
    if !status.success() {
        eprintln!("{stderr}");
        bail!("{cmd:?} failed ({status}); its output is above");
    }
    for (name, exe) in executables {
        let to = out_dir.join(&name);
        std::fs::copy(&exe, &to)
            .with_context(|| format!("failed to copy {} to {}", exe.display(), to.display()))?;
    }
    Ok(())
}
