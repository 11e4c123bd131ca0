//! The contract between user space and the embedded eBPF object, checked
//! without privileges. Program, map and global names are strings matched by
//! convention: without these tests only loading the object as root would
//! notice a renamed map, a program of the wrong kind or a changed type.
//!
//! The tests iterate the tables of `ngx-trace-common` (`PROGRAMS`,
//! `USER_MAPS`), so a program or map added there is checked with no change
//! here.
use std::collections::{BTreeSet, HashMap};

use aya_obj::{EbpfSectionKind, Object, ProgramSection, generated::bpf_map_type};
use ngx_trace_common::{Config, GLOBAL_CONFIG, Hook, MapKind, PROGRAMS, USER_MAPS};

use crate::{kernel::hooks, kernel::programs::EBPF_OBJECT};

/// The embedded object, parsed the way the loader parses it.
fn object() -> Object {
    Object::parse(EBPF_OBJECT)
        .unwrap_or_else(|e| panic!("the embedded eBPF object does not parse: {e}"))
}

/// The `BPF_MAP_TYPE_*` number of `kind`.
fn map_type(kind: MapKind) -> u32 {
    let t = match kind {
        MapKind::RingBuf => bpf_map_type::BPF_MAP_TYPE_RINGBUF,
        MapKind::PerCpuArray => bpf_map_type::BPF_MAP_TYPE_PERCPU_ARRAY,
        MapKind::Hash => bpf_map_type::BPF_MAP_TYPE_HASH,
        MapKind::LruHash => bpf_map_type::BPF_MAP_TYPE_LRU_HASH,
        MapKind::SkStorage => bpf_map_type::BPF_MAP_TYPE_SK_STORAGE,
    };
    t as u32
}

/// A readable name for a map type number found in the object.
fn map_type_name(number: u32) -> String {
    [
        MapKind::RingBuf,
        MapKind::PerCpuArray,
        MapKind::Hash,
        MapKind::LruHash,
        MapKind::SkStorage,
    ]
    .into_iter()
    .find(|&kind| map_type(kind) == number)
    .map_or_else(
        || format!("BPF map type {number}"),
        |kind| format!("{kind:?}"),
    )
}

/// Fails with every problem listed, one per line, so a single run shows
/// all that is out of step.
fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "the eBPF object and {what} disagree:\n  {}",
        problems.join("\n  ")
    );
}

#[test]
fn every_program_user_space_attaches_exists_with_its_kind() {
    let obj = object();
    let mut problems = Vec::new();
    for spec in PROGRAMS {
        let target = hooks::target_name(spec);
        let Some(program) = obj.programs.get(spec.program) else {
            let have: BTreeSet<&str> = obj.programs.keys().map(String::as_str).collect();
            problems.push(format!(
                "program {} (for {target}) is missing; the object has: {}",
                spec.program,
                have.into_iter().collect::<Vec<_>>().join(", ")
            ));
            continue;
        };
        // kernel/programs.rs loads each program as its `hook` says: aya refuses a
        // program of another kind.
        let (wanted, fits) = match spec.hook {
            Hook::BtfTracepoint => (
                "a BTF tracepoint (#[btf_tracepoint], section tp_btf/...)",
                matches!(program.section, ProgramSection::BtfTracePoint),
            ),
            Hook::Tracepoint => (
                "a classic tracepoint (#[tracepoint], section tracepoint/...)",
                matches!(program.section, ProgramSection::TracePoint),
            ),
            Hook::FEntry => (
                "an fentry program (#[fentry], section fentry/...)",
                matches!(program.section, ProgramSection::FEntry { .. }),
            ),
            Hook::FExit => (
                "an fexit program (#[fexit], section fexit/...)",
                matches!(program.section, ProgramSection::FExit { .. }),
            ),
            Hook::KProbe => (
                "a kprobe (#[kprobe], section kprobe/...)",
                matches!(program.section, ProgramSection::KProbe),
            ),
            Hook::KRetProbe => (
                "a kretprobe (#[kretprobe], section kretprobe/...)",
                matches!(program.section, ProgramSection::KRetProbe),
            ),
        };
        if !fits {
            problems.push(format!(
                "program {} (for {target}) is {:?} in the object, \
                 but PROGRAMS says {:?}, so user space loads it as {wanted}",
                spec.program, program.section, spec.hook
            ));
        }
    }
    assert_no_problems("ngx_trace_common::PROGRAMS", &problems);
}

#[test]
fn every_program_in_the_object_is_attached_by_user_space() {
    // A program missing from PROGRAMS is built but never loaded: its hook
    // silently does nothing.
    let obj = object();
    let listed: BTreeSet<&str> = PROGRAMS.iter().map(|spec| spec.program).collect();
    let problems: Vec<String> = obj
        .programs
        .keys()
        .filter(|name| !listed.contains(name.as_str()))
        .map(|name| format!("program {name} is in the object but not in PROGRAMS: never attached"))
        .collect();
    assert_no_problems("ngx_trace_common::PROGRAMS", &problems);
}

#[test]
fn every_map_user_space_opens_exists_with_its_type_and_layout() {
    let obj = object();
    let mut problems = Vec::new();
    for spec in USER_MAPS {
        let Some(map) = obj.maps.get(spec.name) else {
            let have: BTreeSet<&str> = obj.maps.keys().map(String::as_str).collect();
            problems.push(format!(
                "map {} is missing; the object has: {}",
                spec.name,
                have.into_iter().collect::<Vec<_>>().join(", ")
            ));
            continue;
        };
        if map.map_type() != map_type(spec.kind) {
            problems.push(format!(
                "map {} is a {} in the object, USER_MAPS says {:?}",
                spec.name,
                map_type_name(map.map_type()),
                spec.kind
            ));
        }
        // aya refuses to open a map whose sizes differ from the Rust types.
        if (map.key_size(), map.value_size()) != (spec.key_size, spec.value_size) {
            problems.push(format!(
                "map {} has key/value sizes {}/{} bytes in the object, \
                 USER_MAPS (the types user space uses) says {}/{}",
                spec.name,
                map.key_size(),
                map.value_size(),
                spec.key_size,
                spec.value_size
            ));
        }
    }
    assert_no_problems("ngx_trace_common::USER_MAPS", &problems);
}

#[test]
fn the_config_global_is_a_data_symbol_the_size_of_config() {
    let mut obj = object();
    // What `EbpfLoader::override_global(GLOBAL_CONFIG, .., true)` does at
    // load: it fails when the symbol is missing, has another size, or lies
    // outside the global data maps. A marker shows where the bytes landed.
    let marker = vec![0xA5u8; size_of::<Config>()];
    let globals = HashMap::from([(GLOBAL_CONFIG, (marker.as_slice(), true))]);
    if let Err(e) = obj.patch_map_data(globals) {
        panic!(
            "the global {GLOBAL_CONFIG} cannot take a Config of {} bytes: {e}",
            size_of::<Config>()
        );
    }
    let patched = obj.maps.values().any(|map| {
        matches!(
            map.section_kind(),
            EbpfSectionKind::Data | EbpfSectionKind::Rodata | EbpfSectionKind::Bss
        ) && map.data().windows(marker.len()).any(|w| w == marker)
    });
    assert!(
        patched,
        "the global {GLOBAL_CONFIG} is not in a .data, .rodata or .bss section"
    );
}

#[test]
fn table_names_are_unique() {
    // Two entries with one name would check one item twice and hide another.
    let mut seen = BTreeSet::new();
    let twice: Vec<&str> = USER_MAPS
        .iter()
        .map(|spec| spec.name)
        .filter(|name| !seen.insert(*name))
        .collect();
    assert!(twice.is_empty(), "USER_MAPS lists twice: {twice:?}");
    let mut seen = BTreeSet::new();
    let twice: Vec<&str> = PROGRAMS
        .iter()
        .map(|spec| spec.program)
        .filter(|name| !seen.insert(*name))
        .collect();
    assert!(twice.is_empty(), "PROGRAMS lists twice: {twice:?}");
}
