//! Builds the eBPF object (ngx-trace-ebpf) that `src/kernel.rs` embeds.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("ngx-trace has no parent directory"))?;
    let ebpf_dir = workspace.join("ngx-trace-ebpf");
    let common_dir = workspace.join("ngx-trace-common");
    println!("cargo:rerun-if-changed={}", common_dir.display());
    println!("cargo:rerun-if-env-changed=NGX_TRACE_BPF_TOOLCHAIN");
    // The stable toolchain builds eBPF too once `-Z build-std` is allowed, so
    // a machine needs no nightly; aya-build passes build-std when this is set.
    if std::env::var_os("RUSTC_BOOTSTRAP").is_none() {
        // SAFETY: build scripts are single-threaded at this point.
        unsafe { std::env::set_var("RUSTC_BOOTSTRAP", "1") };
    }
    let toolchain = std::env::var("NGX_TRACE_BPF_TOOLCHAIN").unwrap_or_else(|_| "stable".into());
    let ebpf_dir = ebpf_dir
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", ebpf_dir.display()))?;
    aya_build::build_ebpf(
        [Package {
            name: "ngx-trace-ebpf",
            root_dir: ebpf_dir,
            ..Default::default()
        }],
        Toolchain::Custom(&toolchain),
    )
    .context("failed to build the eBPF programs (run `cargo xtask run` once: it installs rust-src and bpf-linker)")
}
