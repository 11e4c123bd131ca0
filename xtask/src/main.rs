//! `cargo xtask`: everything from a fresh machine to a running tracer.
//!
//! - `cargo xtask run -- <ngx-trace args>`: set up, build, run as root.
//! - `cargo xtask test`: set up (with the test packages), then every test:
//!   the integration tests on the host's kernel, then on Debian's 5.10 and
//!   6.1 (with kprobes) in VMs.
//! - `cargo xtask test --kernel 6.1`: only the integration tests, on Debian's
//!   6.1 kernel booted under qemu (`--kernels all`: on every kernel).
//! - `cargo xtask demo`: a throwaway nginx with broken upstreams, traced.
//! - `cargo xtask deb`: the Debian package, for hosts without a toolchain.

mod bench;
mod deb;
mod demo;
mod kernels;
mod setup;
mod vm;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test ngx-trace")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing (rust-src, bpf-linker), build, run ngx-trace as root.
    Run {
        /// Arguments for ngx-trace (after `--`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Install what is missing (also nginx, php-fpm, iptables, qemu...),
    /// then run formatting and lint checks, unit tests and the kernel
    /// integration tests: on the host's kernel, then on Linux 5.10 and 6.1
    /// (with kprobes) in VMs.
    Test {
        /// Instead, run only the integration tests on these kernels: Debian's
        /// booted under qemu (`newest`: trixie-backports' newest), the host's
        /// (`host`), or `all` of them; comma-separated or repeated. A VM
        /// kernel with `+kprobes` (`6.1+kprobes`) runs the tracer with
        /// kprobes where it would use fentry/fexit.
        #[arg(long = "kernel", visible_alias = "kernels", value_delimiter = ',',
              value_parser = vm::parse_name)]
        kernels: Vec<String>,
        /// With --kernel: seconds one kernel's run may take before its VM is
        /// stopped (and the kernel counted as failed).
        #[arg(long, default_value_t = DEFAULT_VM_TIMEOUT)]
        vm_timeout: u64,
    },
    /// Start a throwaway nginx with broken upstreams on loopback and trace it.
    Demo {
        /// How long to run, in seconds.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
    },
    /// Measure ngx-trace's cost against no tracer and a bpftrace script;
    /// writes BENCHMARKS.md.
    Bench {
        /// ABBA pairs per mode and variant (the throughput target needs the
        /// median of at least 7); also BPF-time runs per tracer and variant.
        #[arg(long, default_value_t = 7)]
        pairs: usize,
        /// Seconds per wrk run.
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Instead, count ngx-trace's program runs per proxied request on
        /// these kernels (names as for `test --kernel`; VMs are emulated, so
        /// counts only) and write that section of BENCHMARKS.md.
        #[arg(long, value_delimiter = ',', value_parser = vm::parse_name)]
        runs_per_request: Vec<String>,
        /// Instead, the scale scenario (churn with idle sockets on the host,
        /// then exchanges in flight at once; use `--seconds 10`), written
        /// to its section of BENCHMARKS.md.
        #[arg(long)]
        scale: bool,
        /// With --scale: idle sockets on the host, one churn run each.
        #[arg(long, value_delimiter = ',', default_values_t = [1_000, 100_000])]
        sockets: Vec<usize>,
        /// With --scale: exchanges in flight at once in the last run (0: none).
        #[arg(long, default_value_t = 10_000)]
        in_flight: usize,
        /// Inside such a run: count on this kernel, JSON into this file.
        #[arg(long, hide = true, requires = "bin")]
        runs_here: Option<PathBuf>,
        /// Inside such a run: the ngx-trace binary.
        #[arg(long, hide = true)]
        bin: Option<PathBuf>,
    },
    /// Build the Debian package (target/deb/ngx-trace_<version>_<arch>.deb):
    /// the tracer, its man page and completions, and a systemd unit.
    Deb,
    /// Only install what is missing.
    Setup,
}

/// Seconds one kernel's run may take in a VM (about 8 minutes here).
const DEFAULT_VM_TIMEOUT: u64 = 1800;

fn main() {
    if let Err(err) = run(Cli::parse().command) {
        eprintln!("xtask: {err:#}");
        std::process::exit(1);
    }
}

fn run(command: Cmd) -> Result<()> {
    match command {
        Cmd::Setup => {
            setup::toolchain()?;
            setup::packages(setup::TEST_PACKAGES)
        }
        Cmd::Run { args } => {
            setup::toolchain()?;
            let bin = build_release()?;
            let mut cmd = as_root(&bin);
            cmd.args(&args);
            let status = cmd.status().context("failed to start ngx-trace")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Test {
            kernels,
            vm_timeout,
        } => {
            setup::toolchain()?;
            setup::packages(setup::TEST_PACKAGES)?;
            if kernels.is_empty() {
                test()
            } else {
                vm::run(&kernels, std::time::Duration::from_secs(vm_timeout))
            }
        }
        Cmd::Bench {
            pairs,
            seconds,
            runs_per_request,
            scale,
            sockets,
            in_flight,
            runs_here,
            bin,
        } => {
            if let (Some(out), Some(bin)) = (runs_here, bin) {
                // In the kernel under test, with everything set up already.
                return bench::runs_here(&bin, &workspace(), seconds, &out);
            }
            setup::toolchain()?;
            if scale {
                // No bpftrace to compare with here: nginx and wrk only.
                setup::packages(&["nginx", "wrk"])?;
                let bin = build_release()?;
                // The idle-connection helper, beside this xtask binary.
                cargo("build --package ngx-trace-tests --bin idle-conns", &[])?;
                return bench::scale::run(&bin, &workspace(), seconds, &sockets, in_flight);
            }
            setup::packages(setup::BENCH_PACKAGES)?;
            let bin = build_release()?;
            if runs_per_request.is_empty() {
                return bench::run(&bin, &workspace(), pairs, seconds);
            }
            let xtask = std::env::current_exe().context("failed to find the xtask binary")?;
            let kernels = vm::expand(&runs_per_request);
            bench::runs_per_request(&xtask, &bin, &workspace(), &kernels, seconds)
        }
        Cmd::Deb => {
            setup::toolchain()?;
            setup::packages(setup::DEB_PACKAGES)?;
            let bin = build_release()?;
            deb::build(&bin, &workspace()).map(|_| ())
        }
        Cmd::Demo { seconds } => {
            setup::toolchain()?;
            setup::packages(&["nginx"])?;
            let bin = build_release()?;
            demo::run(&bin, seconds)
        }
    }
}

/// The workspace root (parent of this crate).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

/// Runs `cargo <args>` (split on white space) in the workspace; fails
/// naming the step.
fn cargo(args: &str, envs: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let args: Vec<&str> = args.split_whitespace().collect();
    let status = Command::new(&cargo)
        .args(&args)
        .envs(envs.iter().copied())
        .current_dir(workspace())
        .status()
        .with_context(|| format!("failed to start `cargo {}`", args.join(" ")))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn build_release() -> Result<PathBuf> {
    cargo("build --release --package ngx-trace", &[])?;
    Ok(workspace().join("target/release/ngx-trace"))
}

/// `program` run as root: directly when we are root, else through sudo.
fn as_root(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        Command::new(program)
    } else {
        let mut cmd = Command::new("sudo");
        cmd.arg("--").arg(program);
        cmd
    }
}

fn test() -> Result<()> {
    cargo("fmt --all --check", &[])?;
    cargo(
        "clippy --workspace --exclude ngx-trace-ebpf --all-targets -- -D warnings",
        &[],
    )?;
    // The kernel crate only builds for the BPF target.
    cargo(
        "clippy --package ngx-trace-ebpf --release --target bpfel-unknown-none \
         -Z build-std=core -- -D warnings",
        &[("RUSTC_BOOTSTRAP", "1")],
    )?;
    let bin = build_release()?;
    // The package tests install it.
    let deb = deb::build(&bin, &workspace())?;
    let deb = deb.to_str().context("non UTF-8 target path")?;
    let bin = bin.to_str().context("non UTF-8 target path")?;
    cargo(
        "test --workspace --exclude ngx-trace-tests --exclude ngx-trace-ebpf",
        &[],
    )?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!(
            "the kernel integration tests load BPF programs and start nginx: \
             run `cargo xtask test` as root (sudo -E cargo xtask test)"
        );
    }
    // Kernel state (iptables, tracepoints) is shared: one test at a time.
    cargo(
        "test --package ngx-trace-tests -- --test-threads=1",
        &[("NGX_TRACE_BIN", bin), ("NGX_TRACE_DEB", deb)],
    )?;
    // The fallbacks, where they are used for real: Linux 5.10 (fentry and
    // fexit) and 6.1 with kprobes instead (each kernel of production
    // fleets that lacks the host's tracepoints), in VMs.
    let kernels: Vec<String> = vm::CI_KERNELS.iter().map(|k| k.to_string()).collect();
    vm::run(&kernels, std::time::Duration::from_secs(DEFAULT_VM_TIMEOUT))
}
