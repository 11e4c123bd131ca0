//! Debian's own kernels, fetched by package name from Debian's registry
//! into a cache outside the repository (never `/boot`), for
//! `cargo xtask test --kernel`.
//!
//! apt runs with a private configuration (its own sources list, lists and
//! cache under the cache folder): the host's apt sources are never changed.
use std::{
    cmp::Ordering,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// Debian's mirror for every suite (security updates live beside it).
const MIRROR: &str = "http://deb.debian.org";
/// Signs every Debian suite the host's keyring knows (bullseye to trixie).
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// The flavour: small, with virtio built in, and what virtme-ng needs.
const FLAVOUR: &str = "cloud-amd64";

/// A kernel to test, by the name `--kernel` takes.
pub struct Spec {
    pub name: &'static str,
    /// `(archive, suite)` pairs of Debian's registry holding its packages.
    suites: &'static [(&'static str, &'static str)],
    /// Upstream series (`major.minor`) to pick; `None`: the newest of all.
    series: Option<&'static str>,
}

/// Every kernel `--kernel` can boot, oldest first.
pub const SPECS: &[Spec] = &[
    Spec {
        name: "5.10",
        suites: &[
            ("debian", "bullseye"),
            ("debian-security", "bullseye-security"),
        ],
        series: Some("5.10"),
    },
    Spec {
        name: "6.1",
        suites: &[
            ("debian", "bookworm"),
            ("debian-security", "bookworm-security"),
        ],
        series: Some("6.1"),
    },
    Spec {
        name: "6.12",
        suites: &[("debian", "trixie")],
        series: Some("6.12"),
    },
    Spec {
        name: "6.18",
        suites: &[("debian", "trixie-backports")],
        series: Some("6.18"),
    },
    Spec {
        name: "newest",
        suites: &[("debian", "trixie-backports")],
        series: None,
    },
];

/// A kernel extracted into the cache, ready to boot.
pub struct Kernel {
    /// Its release, as `uname -r` says it (`6.18.15+deb13-cloud-amd64`).
    pub release: String,
    /// Debian's package version (`6.18.15-1~bpo13+1`).
    pub version: String,
    /// The image to boot.
    pub vmlinuz: PathBuf,
}

/// The newest kernel of `spec`'s suites, downloaded and extracted under
/// `cache` unless it is there already. When the registry cannot be reached,
/// the kernel fetched last time for this name is used, saying so.
pub fn fetch(spec: &Spec, cache: &Path) -> Result<Kernel> {
    let kernels = folder(cache);
    let apt_dir = kernels.join("apt").join(spec.suites[0].1);
    for sub in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(apt_dir.join(sub))
            .with_context(|| format!("failed to create {}", apt_dir.join(sub).display()))?;
    }
    std::fs::write(apt_dir.join("sources.list"), sources_list(spec))
        .with_context(|| format!("failed to write {}/sources.list", apt_dir.display()))?;
    let options = apt_options(&apt_dir);
    let last = kernels.join(format!("{}.last", spec.name));

    if let Err(err) = apt(&options, &["update", "-qq"], None) {
        let Some(kernel) = std::fs::read_to_string(&last)
            .ok()
            .and_then(|dir| extracted(&kernels.join(dir.trim())))
        else {
            return Err(err.context(format!(
                "failed to refresh the package lists of {}",
                spec.name
            )));
        };
        eprintln!(
            "xtask: {}: {err:#}; using {} fetched before",
            spec.name, kernel.release
        );
        return Ok(kernel);
    }

    let regex = format!("^linux-(image|binary|modules)-[0-9][^ ]*-{FLAVOUR}$");
    let found = apt(&options, &["search", "--names-only", &regex], None)?;
    let names: Vec<&str> = found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let images: Vec<&str> = names
        .iter()
        .copied()
        .filter(|n| n.starts_with("linux-image-"))
        .collect();
    if images.is_empty() {
        bail!(
            "{}: no linux-image-*-{FLAVOUR} package in {}",
            spec.name,
            suites(spec)
        );
    }
    let mut show = vec!["show"];
    show.extend(&images);
    let stanzas = apt(&options, &show, None)?;
    let (release, version) = newest(&stanzas, spec.series).with_context(|| {
        format!(
            "{}: no {} kernel among {} packages of {}",
            spec.name,
            spec.series.unwrap_or("numbered"),
            images.len(),
            suites(spec)
        )
    })?;

    let dir_name = format!("{release}_{version}");
    let dir = kernels.join(&dir_name);
    let kernel = match extracted(&dir) {
        Some(kernel) => kernel,
        None => {
            let packages = packages_for(&release, &names);
            download_and_extract(&options, &kernels, &dir, &packages, &version)?;
            extracted(&dir).with_context(|| {
                format!("{}: no vmlinuz-{release} in {}", spec.name, dir.display())
            })?
        }
    };
    std::fs::write(&last, &dir_name)
        .with_context(|| format!("failed to write {}", last.display()))?;
    Ok(kernel)
}

/// Where the kernels are extracted, each in `<release>_<version>/`.
pub fn folder(cache: &Path) -> PathBuf {
    cache.join("kernels")
}

/// The private sources list for `spec`'s suites.
pub fn sources_list(spec: &Spec) -> String {
    spec.suites
        .iter()
        .map(|(archive, suite)| {
            format!("deb [signed-by={KEYRING}] {MIRROR}/{archive} {suite} main\n")
        })
        .collect()
}

fn suites(spec: &Spec) -> String {
    let names: Vec<&str> = spec.suites.iter().map(|(_, suite)| *suite).collect();
    names.join(" + ")
}

/// apt's options for a private configuration in `dir`: its own sources
/// list and no host sources, its own lists and cache (so also its own
/// locks), no AppStream metadata.
pub fn apt_options(dir: &Path) -> Vec<String> {
    let dir = dir.display();
    vec![
        format!("-oDir::Etc::sourcelist={dir}/sources.list"),
        "-oDir::Etc::sourceparts=-".into(),
        format!("-oDir::State::Lists={dir}/lists"),
        format!("-oDir::Cache={dir}/cache"),
        "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
        // Downloads land in a root-only cache folder: no `_apt` sandbox.
        "-oAPT::Sandbox::User=root".into(),
    ]
}

/// Runs `apt-get` (for `update`, `download`) or `apt-cache` (otherwise)
/// with `options`, in `cwd`; returns its standard output.
fn apt(options: &[String], args: &[&str], cwd: Option<&Path>) -> Result<String> {
    let program = if matches!(args[0], "update" | "download") {
        "apt-get"
    } else {
        "apt-cache"
    };
    let mut cmd = Command::new(program);
    cmd.args(options)
        .args(args)
        .stderr(Stdio::inherit())
        .env("DEBIAN_FRONTEND", "noninteractive");
    if let Some(cwd) = cwd {
        cmd.current_dir(cwd);
    }
    let what = format!("`{program} {}`", args.join(" "));
    let out = cmd
        .output()
        .with_context(|| format!("failed to start {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// From `apt-cache show` stanzas of `linux-image-*` packages, the newest
/// numbered kernel of `series` (any series when `None`): its release
/// (`uname -r`) and its package version. Meta packages
/// (`linux-image-6.1-cloud-amd64`) and other flavours are left out.
pub fn newest(stanzas: &str, series: Option<&str>) -> Option<(String, String)> {
    let mut best: Option<(String, String)> = None;
    let mut package = None;
    for line in stanzas.lines() {
        if let Some(name) = line.strip_prefix("Package: ") {
            package = Some(name.trim());
        } else if let Some(version) = line.strip_prefix("Version: ") {
            let version = version.trim();
            let Some(release) = package.take().and_then(|p| numbered_release(p, series)) else {
                continue;
            };
            let newer = best
                .as_ref()
                .is_none_or(|(_, v)| compare_versions(version, v) == Ordering::Greater);
            if newer {
                best = Some((release, version.to_string()));
            }
        }
    }
    best
}

/// `linux-image-<abi>-cloud-amd64` → `<abi>-cloud-amd64` when `<abi>` is a
/// numbered kernel (`6.1.0-56`, `6.18.15+deb13`) of `series`.
fn numbered_release(package: &str, series: Option<&str>) -> Option<String> {
    let abi = package
        .strip_prefix("linux-image-")?
        .strip_suffix(&format!("-{FLAVOUR}"))?;
    let mut parts = abi.splitn(3, '.');
    let (major, minor, rest) = (parts.next()?, parts.next()?, parts.next()?);
    let numeric = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !numeric(major) || !numeric(minor) || !rest.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    if series.is_some_and(|s| s != format!("{major}.{minor}")) {
        return None;
    }
    Some(format!("{abi}-{FLAVOUR}"))
}

/// The packages holding `release`: `linux-image-*` alone up to 6.18; from
/// 6.19 on it is an empty package depending on `linux-binary-*` (vmlinuz)
/// and `linux-modules-*`, which are taken too when `names` lists them.
fn packages_for(release: &str, names: &[&str]) -> Vec<String> {
    ["image", "binary", "modules"]
        .iter()
        .map(|kind| format!("linux-{kind}-{release}"))
        .filter(|p| p.starts_with("linux-image-") || names.contains(&p.as_str()))
        .collect()
}

/// Downloads `packages` (all at `version`) and extracts them into `dir`
/// through a temporary folder, so that `dir` exists only when complete.
fn download_and_extract(
    options: &[String],
    kernels: &Path,
    dir: &Path,
    packages: &[String],
    version: &str,
) -> Result<()> {
    let partial = kernels.join(".partial");
    let _ = std::fs::remove_dir_all(&partial);
    let debs = partial.join("debs");
    let root = partial.join("root");
    std::fs::create_dir_all(&debs)
        .with_context(|| format!("failed to create {}", debs.display()))?;
    eprintln!("xtask: downloading {}", packages.join(" "));
    let wanted: Vec<String> = packages.iter().map(|p| format!("{p}={version}")).collect();
    let mut args = vec!["download", "-qq"];
    args.extend(wanted.iter().map(String::as_str));
    apt(options, &args, Some(&debs))?;
    for deb in
        std::fs::read_dir(&debs).with_context(|| format!("failed to list {}", debs.display()))?
    {
        let deb = deb?.path();
        let status = Command::new("dpkg-deb")
            .arg("-x")
            .arg(&deb)
            .arg(&root)
            .status()
            .context("failed to start dpkg-deb")?;
        if !status.success() {
            bail!("`dpkg-deb -x {}` failed ({status})", deb.display());
        }
    }
    // Packages from trixie on keep modules under usr/lib: tools (depmod,
    // virtme-ng) look in lib/modules.
    if !root.join("lib").exists() && root.join("usr/lib").is_dir() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))
            .context("failed to link lib to usr/lib")?;
    }
    // Debian's packages leave modules.dep to their postinst: make it here
    // (virtme-ng would otherwise run depmod on every boot).
    let release = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.split_once('_'))
        .map(|(release, _)| release)
        .context("kernel folder not named <release>_<version>")?;
    if root.join("lib/modules").join(release).is_dir() {
        let status = Command::new("depmod")
            .arg("-b")
            .arg(&root)
            .arg(release)
            .status()
            .context("failed to start depmod (package kmod)")?;
        if !status.success() {
            bail!("`depmod -b {} {release}` failed ({status})", root.display());
        }
    }
    std::fs::rename(&root, dir)
        .with_context(|| format!("failed to move the kernel into {}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&partial);
    Ok(())
}

/// The kernel extracted in `dir` (`<release>_<version>`), if it is there.
fn extracted(dir: &Path) -> Option<Kernel> {
    let name = dir.file_name()?.to_str()?;
    let (release, version) = name.split_once('_')?;
    let vmlinuz = [
        dir.join(format!("boot/vmlinuz-{release}")),
        dir.join(format!("usr/lib/modules/{release}/vmlinuz")),
    ]
    .into_iter()
    .find(|p| p.is_file())?;
    Some(Kernel {
        release: release.to_string(),
        version: version.to_string(),
        vmlinuz,
    })
}

/// Debian's version order (`dpkg --compare-versions`): epoch, then upstream
/// version, then revision, each compared as runs of non-digits (where `~`
/// sorts before everything, even the end) and runs of digits.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    fn split(v: &str) -> (u64, &str, &str) {
        let (epoch, rest) = match v.split_once(':') {
            Some((e, rest)) => (e.parse().unwrap_or(0), rest),
            None => (0, v),
        };
        let (upstream, revision) = rest.rsplit_once('-').unwrap_or((rest, ""));
        (epoch, upstream, revision)
    }
    let (ea, ua, ra) = split(a);
    let (eb, ub, rb) = split(b);
    ea.cmp(&eb)
        .then_with(|| compare_part(ua, ub))
        .then_with(|| compare_part(ra, rb))
}

fn compare_part(a: &str, b: &str) -> Ordering {
    fn weight(c: Option<&u8>) -> i32 {
        match c {
            None => 0,
            Some(b'~') => -1,
            Some(c) if c.is_ascii_digit() => 0,
            Some(c) if c.is_ascii_alphabetic() => i32::from(*c),
            Some(c) => i32::from(*c) + 256,
        }
    }
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    while !a.is_empty() || !b.is_empty() {
        while a.first().is_some_and(|c| !c.is_ascii_digit())
            || b.first().is_some_and(|c| !c.is_ascii_digit())
        {
            let (wa, wb) = (weight(a.first()), weight(b.first()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            a = a.get(1..).unwrap_or_default();
            b = b.get(1..).unwrap_or_default();
        }
        let digits = |s: &[u8]| s.iter().take_while(|c| c.is_ascii_digit()).count();
        let (na, nb) = (digits(a), digits(b));
        let trim = |s: &[u8]| {
            let zeros = s.iter().take_while(|&&c| c == b'0').count();
            s[zeros..].to_vec()
        };
        let (da, db) = (trim(&a[..na]), trim(&b[..nb]));
        let order = da.len().cmp(&db.len()).then_with(|| da.cmp(&db));
        if order != Ordering::Equal {
            return order;
        }
        a = &a[na..];
        b = &b[nb..];
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache show` of bookworm + bookworm-security, trimmed (2026-11-26).
    const BOOKWORM: &str = "\
Package: linux-image-6.1.0-55-cloud-amd64
Source: linux-signed-amd64 (6.1.192+1)
Version: 6.1.192-1
Installed-Size: 99999

Package: linux-image-6.1.0-56-cloud-amd64
Source: linux-signed-amd64 (6.1.192+2)
Version: 6.1.192-2

Package: linux-image-6.12-cloud-amd64
Version: 6.12.117-1~deb12u1

Package: linux-image-6.12.117+deb12-cloud-amd64
Source: linux-signed-6.12-amd64 (6.12.117+1~deb12u1)
Version: 6.12.117-1~deb12u1
Depends: kmod, initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool

Package: linux-image-6.1.0-50-cloud-amd64
Version: 6.1.187-1
";

    /// trixie-backports, trimmed (2026-11-26).
    const BACKPORTS: &str = "\
Package: linux-image-6.18.15+deb13-cloud-amd64
Source: linux-signed-amd64 (6.18.15+1~bpo13+1)
Version: 6.18.15-1~bpo13+1

Package: linux-image-6.18.9+deb13-cloud-amd64
Version: 6.18.9-1~bpo13+1

Package: linux-image-7.3.4+deb13-cloud-amd64
Source: linux-signed-amd64 (7.3.4+1~bpo13+1)
Version: 7.3.4-1~bpo13+1
Depends: dracut | initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool, linux-base-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-binary-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1), linux-modules-7.3.4+deb13-cloud-amd64 (= 7.3.4-1~bpo13+1)

Package: linux-image-7.2.12+deb13-cloud-amd64
Version: 7.2.12-1~bpo13+1

Package: linux-image-6.19.14+deb13-cloud-amd64
Version: 6.19.14-1~bpo13+1
";

    #[test]
    fn newest_of_a_series_skips_meta_packages_and_other_series() {
        assert_eq!(
            newest(BOOKWORM, Some("6.1")),
            Some(("6.1.0-56-cloud-amd64".into(), "6.1.192-2".into()))
        );
        assert_eq!(
            newest(BOOKWORM, Some("6.12")),
            Some((
                "6.12.117+deb12-cloud-amd64".into(),
                "6.12.117-1~deb12u1".into()
            ))
        );
        assert_eq!(newest(BOOKWORM, Some("5.10")), None);
    }

    #[test]
    fn newest_compares_versions_not_names() {
        // By name, 6.18.9 sorts after 6.18.15.
        assert_eq!(
            newest(BACKPORTS, Some("6.18")),
            Some((
                "6.18.15+deb13-cloud-amd64".into(),
                "6.18.15-1~bpo13+1".into()
            ))
        );
        assert_eq!(
            newest(BACKPORTS, None),
            Some(("7.3.4+deb13-cloud-amd64".into(), "7.3.4-1~bpo13+1".into()))
        );
    }

    #[test]
    fn bullseye_backports_of_6_1_are_not_5_10() {
        let bullseye = "\
Package: linux-image-5.10.0-46-cloud-amd64
Version: 5.10.262-1

Package: linux-image-6.1-cloud-amd64
Version: 6.1.180-1~deb11u1

Package: linux-image-6.1.0-0.deb11.52-cloud-amd64
Version: 6.1.180-1~deb11u1

Package: linux-image-5.10.0-45-cloud-amd64
Version: 5.10.259-1
";
        assert_eq!(
            newest(bullseye, Some("5.10")),
            Some(("5.10.0-46-cloud-amd64".into(), "5.10.262-1".into()))
        );
    }

    #[test]
    fn split_packages_from_6_19_on() {
        let names = [
            "linux-binary-7.3.4+deb13-cloud-amd64",
            "linux-image-7.3.4+deb13-cloud-amd64",
            "linux-modules-7.3.4+deb13-cloud-amd64",
            "linux-image-6.18.15+deb13-cloud-amd64",
        ];
        assert_eq!(
            packages_for("7.3.4+deb13-cloud-amd64", &names),
            [
                "linux-image-7.3.4+deb13-cloud-amd64",
                "linux-binary-7.3.4+deb13-cloud-amd64",
                "linux-modules-7.3.4+deb13-cloud-amd64",
            ]
        );
        assert_eq!(
            packages_for("6.18.15+deb13-cloud-amd64", &names),
            ["linux-image-6.18.15+deb13-cloud-amd64"]
        );
    }

    #[test]
    fn debian_version_order() {
        use Ordering::*;
        let cases = [
            ("6.1.192-2", "6.1.192-1", Greater),
            ("6.18.15-1~bpo13+1", "6.18.9-1~bpo13+1", Greater),
            ("6.12.117-1~deb12u1", "6.12.117-1", Less),
            ("1.0~rc1", "1.0", Less),
            ("1:1.0", "2.0", Greater),
            ("1.0a", "1.0", Greater),
            ("1.0+b1", "1.0a", Greater),
            ("1.01", "1.1", Equal),
            ("7.3.4-1~bpo13+1", "6.19.14-1~bpo13+1", Greater),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn private_apt_configuration() {
        let options = apt_options(Path::new("/var/cache/ngx-trace/kernels/apt/bookworm"));
        assert_eq!(
            options[..4],
            [
                "-oDir::Etc::sourcelist=/var/cache/ngx-trace/kernels/apt/bookworm/sources.list",
                "-oDir::Etc::sourceparts=-",
                "-oDir::State::Lists=/var/cache/ngx-trace/kernels/apt/bookworm/lists",
                "-oDir::Cache=/var/cache/ngx-trace/kernels/apt/bookworm/cache",
            ]
        );
        let spec = SPECS.iter().find(|s| s.name == "6.1").unwrap();
        assert_eq!(
            sources_list(spec),
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian bookworm main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
             http://deb.debian.org/debian-security bookworm-security main\n"
        );
    }
}
