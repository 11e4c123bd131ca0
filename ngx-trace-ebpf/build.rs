use which::which;

/// Building this crate needs bpf-linker; rebuild when it appears or changes,
/// so installing it (cargo xtask does) is enough to recover from a failed build.
fn main() {
    let bpf_linker = which("bpf-linker").unwrap_or_default();
    println!("cargo:rerun-if-changed={}", bpf_linker.to_string_lossy());
}
