//! A small reader for the kernel's BTF (`/sys/kernel/btf/vmlinux`), for
//! user space: feature `btf` (part of `user`), std only.
//!
//! The BPF programs are written in Rust and carry no CO-RE relocations, so
//! they cannot ask the loader to fix up `struct tcp_sock` field offsets for
//! the running kernel. Instead user space reads the kernel's own type
//! information: ngx-trace at start, for the byte offsets its programs need
//! (handed over as globals), and `cargo xtask bench`, for the offset its
//! hand-assembled programs load from and the type ids of the tracepoints
//! they attach to. aya parses BTF but does not expose member lookup, hence
//! this self-contained reader.
//!
//! Format reference: the kernel's `include/uapi/linux/btf.h`. Everything
//! read from the blob is bounds-checked: malformed input is an `Err`, never
//! a panic, because the bytes come from outside this program.

// The crate is no_std: what the std prelude would give, named.
use std::{
    boxed::Box,
    collections::HashMap,
    format,
    string::{String, ToString as _},
    vec::Vec,
};

/// Where the running kernel exposes its BTF.
pub const VMLINUX_PATH: &str = "/sys/kernel/btf/vmlinux";

/// `BTF_MAGIC`, as read in the blob's own byte order.
const MAGIC: u16 = 0xEB9F;
/// Size of `struct btf_header` as of every kernel that has BTF; later
/// kernels may append fields, announced through a larger `hdr_len`.
const HEADER_LEN: usize = 24;
/// Size of `struct btf_type` (name_off, info, size/type).
const TYPE_LEN: usize = 12;
/// Anonymous members nest a handful of levels in practice; the cap only
/// guards against reference cycles in a malformed blob.
const MAX_DEPTH: u32 = 64;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// Pointer width of the kernels the BPF programs run on (64-bit only).
const PTR_SIZE: u32 = 8;

/// Where a struct member lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// Byte offset from the start of the outer struct, including the offsets
    /// of any anonymous structs/unions the member sits in.
    pub offset: u32,
    /// Byte size of the member's type, so callers can check that the BPF
    /// side reads the width the kernel actually has.
    pub size: u32,
}

/// Parsed kernel BTF: the raw blob plus an index of where each type starts.
pub struct Btf {
    data: Vec<u8>,
    /// The blob's byte order: BTF is written in the producer's native order.
    big_endian: bool,
    /// Absolute start of the string section; its end is `str_end`.
    str_start: usize,
    str_end: usize,
    /// Absolute offset of each `struct btf_type`; type id `n` is entry `n - 1`
    /// (id 0 is `void`).
    types: Vec<u32>,
    /// Struct name → type id, built once at parse so lookups do not rescan
    /// ~100k types. Keeps the first struct with a non-zero size (forward
    /// declarations and empty duplicates come first on some kernels).
    structs: HashMap<Box<[u8]>, u32>,
}

/// A summary only: the blob is megabytes and not worth printing.
impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("bytes", &self.data.len())
            .field("types", &self.types.len())
            .field("structs", &self.structs.len())
            .field("big_endian", &self.big_endian)
            .finish()
    }
}

/// The fixed part of one `struct btf_type`, decoded.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    vlen: u32,
    kind: u32,
    kind_flag: bool,
    /// `size` for INT/ENUM/STRUCT/UNION/FLOAT/DATASEC/ENUM64, `type` for the
    /// rest.
    size_or_type: u32,
    /// Absolute offset of the kind-specific data that follows.
    extra: usize,
}

/// A member found by name: bit offset from the outer struct, its type id,
/// and its bitfield width (0 when not a bitfield).
struct Found {
    bit_offset: u64,
    type_id: u32,
    bitfield_size: u32,
}

impl Btf {
    /// Reads the running kernel's BTF from [`VMLINUX_PATH`].
    pub fn from_sys_fs() -> Result<Btf, String> {
        let bytes = std::fs::read(VMLINUX_PATH).map_err(|e| {
            format!(
                "cannot read {VMLINUX_PATH}: {e}; ngx-trace needs the kernel's BTF \
                 (a kernel built with CONFIG_DEBUG_INFO_BTF=y)"
            )
        })?;
        Btf::parse_owned(bytes).map_err(|e| format!("{VMLINUX_PATH}: {e}"))
    }

    /// [`Btf::parse_owned`] of a copy of `bytes` (tests' blobs).
    #[cfg(test)]
    pub fn parse(bytes: &[u8]) -> Result<Btf, String> {
        Self::parse_owned(bytes.to_vec())
    }

    /// Parses a BTF blob, which it keeps: validates the header and section
    /// bounds, walks the type section once to record where each type
    /// starts, and indexes the struct names. Owned, not copied: the
    /// kernel's is 5 to 6 MB, and a copy of it alive while aya loads the
    /// programs (and parses the same blob again) raised the tracer's peak
    /// memory.
    pub fn parse_owned(bytes: Vec<u8>) -> Result<Btf, String> {
        if bytes.len() < HEADER_LEN {
            return Err(format!(
                "BTF too short for a header: {} bytes, need {HEADER_LEN}",
                bytes.len()
            ));
        }
        let big_endian = match [bytes[0], bytes[1]] {
            m if u16::from_le_bytes(m) == MAGIC => false,
            m if u16::from_be_bytes(m) == MAGIC => true,
            m => {
                return Err(format!(
                    "not BTF: magic {:#06x}, expected {MAGIC:#06x}",
                    u16::from_le_bytes(m)
                ));
            }
        };
        let mut btf = Btf {
            data: Vec::new(),
            big_endian,
            str_start: 0,
            str_end: 0,
            types: Vec::new(),
            structs: HashMap::new(),
        };
        let field = |at: usize| btf.read_u32_in(&bytes, at);
        let version = bytes[2];
        if version != 1 {
            return Err(format!("unsupported BTF version {version}"));
        }
        let hdr_len = field(4)? as usize;
        let (type_off, type_len) = (field(8)? as usize, field(12)? as usize);
        let (str_off, str_len) = (field(16)? as usize, field(20)? as usize);
        if hdr_len < HEADER_LEN || hdr_len > bytes.len() {
            return Err(format!(
                "BTF header length {hdr_len} out of range ({HEADER_LEN}..={})",
                bytes.len()
            ));
        }
        let section = |what: &str, off: usize, len: usize| {
            let start = hdr_len
                .checked_add(off)
                .ok_or_else(|| format!("BTF {what} section offset overflows"))?;
            let end = start
                .checked_add(len)
                .filter(|&end| end <= bytes.len())
                .ok_or_else(|| {
                    format!(
                        "BTF {what} section ({len} bytes at {start}) runs past the end of \
                         the {}-byte blob",
                        bytes.len()
                    )
                })?;
            Ok::<_, String>((start, end))
        };
        let (type_start, type_end) = section("type", type_off, type_len)?;
        let (str_start, str_end) = section("string", str_off, str_len)?;
        // Offsets are stored as u32 to halve the index; BTF offsets are u32
        // in the format itself, so a larger blob cannot be valid anyway.
        if u32::try_from(bytes.len()).is_err() {
            return Err(format!("BTF blob too large: {} bytes", bytes.len()));
        }
        btf.data = bytes;
        btf.str_start = str_start;
        btf.str_end = str_end;

        let mut at = type_start;
        while at < type_end {
            if type_end - at < TYPE_LEN {
                return Err(format!(
                    "type {} truncated: {} bytes left in the type section",
                    btf.types.len() + 1,
                    type_end - at
                ));
            }
            let id = btf.types.len() + 1;
            let ty = btf.type_at(at)?;
            let vlen = ty.vlen as usize;
            let extra_len = match ty.kind {
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                kind => return Err(format!("type {id} has unknown BTF kind {kind}")),
            };
            let next = ty
                .extra
                .checked_add(extra_len)
                .filter(|&next| next <= type_end)
                .ok_or_else(|| {
                    format!(
                        "type {id} (kind {}, vlen {}) runs past the end of the type section",
                        ty.kind, ty.vlen
                    )
                })?;
            btf.types.push(at as u32);
            if ty.kind == KIND_STRUCT {
                let name = btf.name(ty.name_off)?;
                if !name.is_empty() {
                    let size = ty.size_or_type;
                    // Prefer the first definition with a size: an empty
                    // struct of the same name is useless for offsets.
                    let keep = match btf.structs.get(name) {
                        None => true,
                        Some(&old) => btf.type_by_id(old)?.size_or_type == 0 && size != 0,
                    };
                    if keep {
                        btf.structs.insert(name.into(), id as u32);
                    }
                }
            }
            at = next;
        }
        Ok(btf)
    }

    /// The value of enumerator `name` (of any enum: the kernel's
    /// enumerator names are unique), e.g. `memory_cgrp_id`.
    pub fn enum_value(&self, name: &str) -> Result<i64, String> {
        for &at in &self.types {
            let ty = self.type_at(at as usize)?;
            let (entry, is64) = match ty.kind {
                KIND_ENUM => (8, false),
                KIND_ENUM64 => (12, true),
                _ => continue,
            };
            for i in 0..ty.vlen as usize {
                let e = ty.extra + i * entry;
                if self.name(self.read_u32(e)?)? != name.as_bytes() {
                    continue;
                }
                let lo = self.read_u32(e + 4)?;
                return Ok(if is64 {
                    (i64::from(self.read_u32(e + 8)?) << 32) | i64::from(lo)
                } else {
                    i64::from(lo as i32)
                });
            }
        }
        Err(format!("no enumerator `{name}` in this kernel's BTF"))
    }

    /// Finds `member` in `struct struct_name`, looking through anonymous
    /// nested structs and unions (the kernel wraps many fields in them, e.g.
    /// cache-line groups and `union { ... }` aliases), and returns its byte
    /// offset from the start of the outer struct and its byte size.
    ///
    /// Bitfields and members not on a byte boundary are errors: the BPF
    /// programs read whole bytes at an offset and could not extract them.
    pub fn member(&self, struct_name: &str, member: &str) -> Result<Member, String> {
        let &id = self
            .structs
            .get(struct_name.as_bytes())
            .ok_or_else(|| format!("no struct {struct_name} in this kernel's BTF"))?;
        let found = self
            .find_member(id, member.as_bytes(), 0)
            .map_err(|e| format!("struct {struct_name}: {e}"))?
            .ok_or_else(|| {
                format!("struct {struct_name} has no member `{member}` on this kernel")
            })?;
        if found.bitfield_size != 0 {
            return Err(format!(
                "member `{member}` of struct {struct_name} is a {}-bit bitfield",
                found.bitfield_size
            ));
        }
        if found.bit_offset % 8 != 0 {
            return Err(format!(
                "member `{member}` of struct {struct_name} is not byte aligned (bit offset {})",
                found.bit_offset
            ));
        }
        let offset = u32::try_from(found.bit_offset / 8).map_err(|_| {
            format!("member `{member}` of struct {struct_name} has an out-of-range offset")
        })?;
        let (size, int_bitfield) = self
            .type_size(found.type_id, 0)
            .map_err(|e| format!("member `{member}` of struct {struct_name}: {e}"))?;
        // Without kind_flag, a bitfield is encoded as an INT narrower than
        // its storage or starting at a bit offset inside it.
        if int_bitfield {
            return Err(format!(
                "member `{member}` of struct {struct_name} is a bitfield"
            ));
        }
        Ok(Member { offset, size })
    }

    /// The type id of the typedef `name`, e.g. `btf_trace_sock_send_length`
    /// (a BTF tracepoint program is loaded for the id of its tracepoint's
    /// `btf_trace_*` typedef).
    pub fn typedef_id(&self, name: &str) -> Result<u32, String> {
        for (i, &at) in self.types.iter().enumerate() {
            let ty = self.type_at(at as usize)?;
            if ty.kind == KIND_TYPEDEF && self.name(ty.name_off)? == name.as_bytes() {
                // Ids count from 1 (0 is void); the index fits, as parsed.
                return Ok(i as u32 + 1);
            }
        }
        Err(format!("no typedef {name} in this kernel's BTF"))
    }

    /// The byte size of struct `struct_name`.
    pub fn struct_size(&self, struct_name: &str) -> Result<u32, String> {
        let &id = self
            .structs
            .get(struct_name.as_bytes())
            .ok_or_else(|| format!("no struct {struct_name} in this kernel's BTF"))?;
        Ok(self.type_by_id(id)?.size_or_type)
    }

    /// Searches the members of composite type `id`, descending into
    /// anonymous members. `Ok(None)` means not found.
    fn find_member(&self, id: u32, member: &[u8], depth: u32) -> Result<Option<Found>, String> {
        if depth > MAX_DEPTH {
            return Err("anonymous members nest too deeply (a cycle?)".to_string());
        }
        let ty = self.type_by_id(id)?;
        if ty.kind != KIND_STRUCT && ty.kind != KIND_UNION {
            return Ok(None);
        }
        for i in 0..ty.vlen as usize {
            let at = ty.extra + i * 12;
            let name_off = self.read_u32(at)?;
            let type_id = self.read_u32(at + 4)?;
            let raw_offset = self.read_u32(at + 8)?;
            // With kind_flag the offset word packs the bitfield width into
            // the top byte; otherwise it is a plain bit offset.
            let (bit_offset, bitfield_size) = if ty.kind_flag {
                (raw_offset & 0x00ff_ffff, raw_offset >> 24)
            } else {
                (raw_offset, 0)
            };
            if name_off != 0 {
                if self.name(name_off)? == member {
                    return Ok(Some(Found {
                        bit_offset: u64::from(bit_offset),
                        type_id,
                        bitfield_size,
                    }));
                }
                continue;
            }
            let inner = self.skip_qualifiers(type_id, depth)?;
            if let Some(mut found) = self.find_member(inner, member, depth + 1)? {
                found.bit_offset += u64::from(bit_offset);
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Follows typedef/const/volatile/restrict/type_tag to the underlying
    /// type id.
    fn skip_qualifiers(&self, mut id: u32, depth: u32) -> Result<u32, String> {
        for _ in depth..=MAX_DEPTH {
            if id == 0 {
                return Ok(0);
            }
            let ty = self.type_by_id(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_CONST | KIND_VOLATILE | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type;
                }
                _ => return Ok(id),
            }
        }
        Err(format!("type {id}: qualifier chain too long (a cycle?)"))
    }

    /// Byte size of type `id`, and whether it is an INT bitfield encoding.
    fn type_size(&self, id: u32, depth: u32) -> Result<(u32, bool), String> {
        let id = self.skip_qualifiers(id, depth)?;
        if id == 0 {
            return Err("type is void".to_string());
        }
        let ty = self.type_by_id(id)?;
        match ty.kind {
            KIND_INT => {
                let encoding = self.read_u32(ty.extra)?;
                let bits = encoding & 0xff;
                let bit_offset = (encoding >> 16) & 0xff;
                let bitfield = bit_offset != 0 || u64::from(bits) != u64::from(ty.size_or_type) * 8;
                Ok((ty.size_or_type, bitfield))
            }
            KIND_PTR => Ok((PTR_SIZE, false)),
            KIND_ENUM | KIND_ENUM64 | KIND_STRUCT | KIND_UNION | KIND_FLOAT => {
                Ok((ty.size_or_type, false))
            }
            KIND_ARRAY => {
                if depth > MAX_DEPTH {
                    return Err("array nesting too deep (a cycle?)".to_string());
                }
                let elem = self.read_u32(ty.extra)?;
                let nelems = self.read_u32(ty.extra + 8)?;
                let (elem_size, _) = self.type_size(elem, depth + 1)?;
                let size = elem_size
                    .checked_mul(nelems)
                    .ok_or_else(|| format!("array type {id} size overflows"))?;
                Ok((size, false))
            }
            kind => Err(format!("type {id} of kind {kind} has no size")),
        }
    }

    /// Decodes the type with id `id` (1-based).
    fn type_by_id(&self, id: u32) -> Result<Type, String> {
        let at = id
            .checked_sub(1)
            .and_then(|i| self.types.get(i as usize))
            .ok_or_else(|| format!("type id {id} out of range (1..={})", self.types.len()))?;
        self.type_at(*at as usize)
    }

    /// Decodes the fixed part of the `struct btf_type` at absolute offset `at`.
    fn type_at(&self, at: usize) -> Result<Type, String> {
        let info = self.read_u32(at + 4)?;
        Ok(Type {
            name_off: self.read_u32(at)?,
            vlen: info & 0xffff,
            kind: (info >> 24) & 0x1f,
            kind_flag: info >> 31 != 0,
            size_or_type: self.read_u32(at + 8)?,
            extra: at + TYPE_LEN,
        })
    }

    /// The NUL-terminated name at `off` in the string section.
    fn name(&self, off: u32) -> Result<&[u8], String> {
        // Offset 0 is the empty name by definition (anonymous types).
        if off == 0 {
            return Ok(b"");
        }
        let start = self
            .str_start
            .checked_add(off as usize)
            .filter(|&s| s < self.str_end)
            .ok_or_else(|| format!("name offset {off} outside the string section"))?;
        let tail = &self.data[start..self.str_end];
        let len = tail
            .iter()
            .position(|&b| b == 0)
            .ok_or_else(|| format!("name at offset {off} is not NUL-terminated"))?;
        Ok(&tail[..len])
    }

    fn read_u32(&self, at: usize) -> Result<u32, String> {
        self.read_u32_in(&self.data, at)
    }

    fn read_u32_in(&self, bytes: &[u8], at: usize) -> Result<u32, String> {
        let word: [u8; 4] = at
            .checked_add(4)
            .and_then(|end| bytes.get(at..end))
            .and_then(|s| s.try_into().ok())
            .ok_or_else(|| format!("read past the end of BTF at offset {at}"))?;
        Ok(if self.big_endian {
            u32::from_be_bytes(word)
        } else {
            u32::from_le_bytes(word)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses the running kernel's BTF; fails (never skips) when it is
    /// missing, since every machine this runs on must have it.
    fn kernel_btf() -> Btf {
        match Btf::from_sys_fs() {
            Ok(btf) => btf,
            Err(e) => panic!("kernel BTF is required for these tests: {e}"),
        }
    }

    #[test]
    fn the_memory_controller_id_is_an_enumerator_of_the_kernel() {
        let btf = kernel_btf();
        // `enum cgroup_subsys_id` starts with cpuset (when built in).
        let memory = btf
            .enum_value("memory_cgrp_id")
            .expect("memcg in the kernel");
        let count = btf.enum_value("CGROUP_SUBSYS_COUNT").unwrap();
        assert!((0..count).contains(&memory), "{memory} of {count}");
        assert!(btf.enum_value("no_such_enumerator_xyz").is_err());
    }

    #[test]
    fn kernel_tcp_sock_offsets() {
        let bytes = std::fs::read(VMLINUX_PATH)
            .unwrap_or_else(|e| panic!("{VMLINUX_PATH} must exist (CONFIG_DEBUG_INFO_BTF): {e}"));
        let start = std::time::Instant::now();
        let btf = Btf::parse(&bytes).expect("kernel BTF parses");
        println!(
            "parsed {} bytes, {} types, {} struct names in {:?}",
            bytes.len(),
            btf.types.len(),
            btf.structs.len(),
            start.elapsed()
        );

        let tcp_sock = btf.structs[b"tcp_sock".as_slice()];
        let tcp_sock_size = btf.type_by_id(tcp_sock).unwrap().size_or_type;
        let mut offsets = Vec::new();
        for (name, size) in [
            ("snd_una", 4),
            ("snd_nxt", 4),
            ("srtt_us", 4),
            ("write_seq", 4),
            ("delivered_mstamp", 8),
        ] {
            let m = btf.member("tcp_sock", name).unwrap();
            println!("tcp_sock.{name}: offset {} size {}", m.offset, m.size);
            assert_eq!(m.size, size, "tcp_sock.{name} size");
            assert!(m.offset + m.size <= tcp_sock_size, "tcp_sock.{name} inside");
            assert_eq!(btf.member("tcp_sock", name).unwrap().offset, m.offset);
            assert_eq!(btf.member("tcp_sock", name).unwrap().size, m.size);
            offsets.push(m.offset);
        }
        let mut distinct = offsets.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(
            distinct.len(),
            offsets.len(),
            "offsets distinct: {offsets:?}"
        );

        let family = btf.member("sock_common", "skc_family").unwrap();
        println!(
            "sock_common.skc_family: offset {} size {}",
            family.offset, family.size
        );
        assert_eq!(family.size, 2);
        assert_eq!(btf.member("sock", "__sk_common").unwrap().offset, 0);
        // The upstream filter's first load: a pointer inside struct sock.
        let storage = btf.member("sock", "sk_bpf_storage").unwrap();
        assert_eq!(storage.size, 8);
        assert!(
            storage.offset > 0 && storage.offset.is_multiple_of(8),
            "{storage:?}"
        );

        let err = btf.member("tcp_sock", "foo").unwrap_err();
        assert_eq!(err, "struct tcp_sock has no member `foo` on this kernel");
        assert!(btf.member("no_such_struct_xyz", "x").is_err());
    }

    /// `bpftool btf dump` of the running kernel's BTF (raw format: one line
    /// per type, members indented below their struct), from bpftool, an
    /// independent BTF reader to cross-check against.
    fn bpftool_raw_dump() -> String {
        let bpftool = ["/usr/sbin/bpftool", "bpftool"]
            .into_iter()
            .find(|p| {
                std::process::Command::new(p)
                    .arg("version")
                    .output()
                    .is_ok()
            })
            .expect("bpftool is needed for this cross-check: install bpftool");
        let out = std::process::Command::new(bpftool)
            .args(["btf", "dump", "file", VMLINUX_PATH, "format", "raw"])
            .output()
            .expect("run bpftool");
        assert!(out.status.success(), "bpftool failed: {:?}", out);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Cross-checks against bpftool, an independent BTF reader.
    #[test]
    fn kernel_offsets_match_bpftool() {
        let btf = kernel_btf();
        let text = bpftool_raw_dump();
        // The first `STRUCT 'tcp_sock'` line with a non-zero size, then its
        // member lines (tab-indented) until the next type.
        let mut lines = text.lines();
        lines
            .find(|l| l.contains("] STRUCT 'tcp_sock' ") && !l.contains(" size=0 "))
            .expect("bpftool lists struct tcp_sock");
        let mut checked = 0;
        for line in lines.take_while(|l| l.starts_with('\t')) {
            let Some(rest) = line.trim().strip_prefix('\'') else {
                continue;
            };
            let Some((name, rest)) = rest.split_once('\'') else {
                continue;
            };
            if ![
                "snd_una",
                "snd_nxt",
                "srtt_us",
                "write_seq",
                "delivered_mstamp",
            ]
            .contains(&name)
            {
                continue;
            }
            let bits: u32 = rest
                .split_whitespace()
                .find_map(|w| w.strip_prefix("bits_offset="))
                .expect("bits_offset")
                .parse()
                .expect("numeric bits_offset");
            assert_eq!(
                btf.member("tcp_sock", name).unwrap().offset,
                bits / 8,
                "tcp_sock.{name} vs bpftool"
            );
            checked += 1;
        }
        // All five are direct members of tcp_sock on current kernels.
        assert_eq!(checked, 5, "members of tcp_sock found in bpftool output");
    }

    /// The typedefs of the tracepoints the bench's building blocks attach
    /// to (xtask's `HOT_HOOKS`), cross-checked against bpftool's
    /// `[38167] TYPEDEF 'btf_trace_sock_send_length' type_id=38168`.
    #[test]
    fn kernel_typedef_ids_match_bpftool() {
        let btf = kernel_btf();
        let text = bpftool_raw_dump();
        for hook in ["sock_send_length", "sock_recv_length", "sk_data_ready"] {
            let name = format!("btf_trace_{hook}");
            let line = format!("] TYPEDEF '{name}' ");
            let id: u32 = text
                .lines()
                .find(|l| l.starts_with('[') && l.contains(&line))
                .and_then(|l| l[1..].split_once(']'))
                .unwrap_or_else(|| panic!("bpftool lists no typedef {name}"))
                .0
                .parse()
                .expect("numeric type id");
            assert_eq!(btf.typedef_id(&name), Ok(id), "{name} vs bpftool");
        }
        assert!(btf.typedef_id("btf_trace_no_such_tracepoint_xyz").is_err());
        // A struct's name is not a typedef's.
        assert!(btf.typedef_id("tcp_sock").is_err());
    }

    /// Builds small little-endian BTF blobs for tests.
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Builder {
            Builder {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
            }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn push(&mut self, words: &[u32]) -> u32 {
            for w in words {
                self.types.extend_from_slice(&w.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn info(kind: u32, vlen: u32, kind_flag: bool) -> u32 {
            (u32::from(kind_flag) << 31) | (kind << 24) | vlen
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let n = self.str(name);
            self.push(&[n, Self::info(KIND_INT, 0, false), size, size * 8])
        }

        fn typedef(&mut self, name: &str, ty: u32) -> u32 {
            let n = self.str(name);
            self.push(&[n, Self::info(KIND_TYPEDEF, 0, false), ty])
        }

        /// `members` are (name, type, raw offset word).
        fn composite(
            &mut self,
            kind: u32,
            name: &str,
            size: u32,
            kind_flag: bool,
            members: &[(&str, u32, u32)],
        ) -> u32 {
            let n = self.str(name);
            let mut words = vec![n, Self::info(kind, members.len() as u32, kind_flag), size];
            for &(name, ty, off) in members {
                words.extend([self.str(name), ty, off]);
            }
            self.push(&words)
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            for w in [
                HEADER_LEN as u32,
                0,
                self.types.len() as u32,
                self.types.len() as u32,
                self.strings.len() as u32,
            ] {
                out.extend_from_slice(&w.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// struct outer {               // 32 bytes
    ///     u32 first;               // 0
    ///     union {                  // 8 (anonymous)
    ///         u64 wide;            // 8
    ///         struct {             // 8 (anonymous, through a typedef)
    ///             u16 pad;         // 8
    ///             u16 deep;        // 10
    ///         };
    ///     };
    ///     u32 flags:3;             // bitfield
    ///     u8 odd;                  // bit offset 196: not byte aligned
    ///     u32 *ptr;                // 24
    /// };
    /// plus an earlier empty `struct outer` that must be skipped.
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let empty = b.composite(KIND_STRUCT, "outer", 0, false, &[]);
        let u8_ = b.int("u8", 1);
        let u16_ = b.int("u16", 2);
        let u32_ = b.int("u32", 4);
        let u64_ = b.int("u64", 8);
        let u32_t = b.typedef("u32_t", u32_);
        let inner = b.composite(
            KIND_STRUCT,
            "",
            4,
            false,
            &[("pad", u16_, 0), ("deep", u16_, 16)],
        );
        let inner_t = b.typedef("inner_t", inner);
        let union = b.composite(
            KIND_UNION,
            "",
            8,
            false,
            &[("wide", u64_, 0), ("", inner_t, 0)],
        );
        let ptr = b.push(&[0, Builder::info(KIND_PTR, 0, false), u32_]);
        let outer = b.composite(
            KIND_STRUCT,
            "outer",
            32,
            true,
            &[
                ("first", u32_t, 0),
                ("", union, 64),
                ("flags", u32_, (3 << 24) | 128),
                ("odd", u8_, 196),
                ("ptr", ptr, 192),
            ],
        );
        assert!(empty < outer);
        b.build()
    }

    #[test]
    fn handmade_nested_lookup() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.member("outer", "first").unwrap(),
            Member { offset: 0, size: 4 }
        );
        assert_eq!(
            btf.member("outer", "wide").unwrap(),
            Member { offset: 8, size: 8 }
        );
        assert_eq!(
            btf.member("outer", "deep").unwrap(),
            Member {
                offset: 10,
                size: 2
            }
        );
        assert_eq!(
            btf.member("outer", "ptr").unwrap(),
            Member {
                offset: 24,
                size: 8
            }
        );
        assert_eq!(btf.member("outer", "pad").unwrap().offset, 8);
        assert_eq!(btf.member("outer", "deep").unwrap().size, 2);
    }

    #[test]
    fn handmade_typedef_ids() {
        let mut b = Builder::new();
        let u32_ = b.int("u32", 4);
        let first = b.typedef("u32_t", u32_);
        let longer = b.typedef("u32_t_x", u32_);
        let s = b.composite(KIND_STRUCT, "u32_s", 4, false, &[("f", first, 0)]);
        // A second typedef of the same name: the first is found.
        let again = b.typedef("u32_t", s);
        let btf = Btf::parse(&b.build()).unwrap();
        assert_eq!(btf.typedef_id("u32_t"), Ok(first));
        assert_ne!(first, again);
        assert_eq!(btf.typedef_id("u32_t_x"), Ok(longer));
        // Another kind of the name, a prefix, nothing.
        assert!(btf.typedef_id("u32").is_err());
        assert!(btf.typedef_id("u32_s").is_err());
        assert!(btf.typedef_id("u32_").is_err());
        assert_eq!(
            btf.typedef_id("nope").unwrap_err(),
            "no typedef nope in this kernel's BTF"
        );
        // The sample's typedefs too.
        let btf = Btf::parse(&sample()).unwrap();
        assert!(btf.typedef_id("inner_t").is_ok());
        assert!(btf.typedef_id("outer").is_err());
    }

    #[test]
    fn handmade_errors() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(
            btf.member("outer", "missing").unwrap_err(),
            "struct outer has no member `missing` on this kernel"
        );
        let err = btf.member("outer", "flags").unwrap_err();
        assert!(err.contains("bitfield") && err.contains("outer"), "{err}");
        let err = btf.member("outer", "odd").unwrap_err();
        assert!(
            err.contains("not byte aligned") && err.contains("`odd`"),
            "{err}"
        );
        let err = btf.member("nope", "first").unwrap_err();
        assert!(err.contains("nope"), "{err}");
        // Members are looked up by name, not type names.
        assert!(btf.member("outer", "u32").is_err());
    }

    #[test]
    fn int_encoded_bitfield_is_rejected() {
        let mut b = Builder::new();
        let n = b.str("u32");
        // A 4-byte INT carrying only 5 bits: the pre-kind_flag bitfield form.
        let narrow = b.push(&[n, Builder::info(KIND_INT, 0, false), 4, 5]);
        b.composite(KIND_STRUCT, "s", 4, false, &[("f", narrow, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        let err = btf.member("s", "f").unwrap_err();
        assert!(err.contains("bitfield"), "{err}");
    }

    #[test]
    fn cyclic_typedef_is_an_error() {
        let mut b = Builder::new();
        // Type 1: typedef pointing at itself, used as an anonymous member.
        let t = b.str("loop");
        b.push(&[t, Builder::info(KIND_TYPEDEF, 0, false), 1]);
        b.composite(KIND_STRUCT, "s", 4, false, &[("", 1, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert!(btf.member("s", "x").is_err());
        // A struct containing itself anonymously.
        let mut b = Builder::new();
        b.composite(KIND_STRUCT, "r", 4, false, &[("", 1, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert!(btf.member("r", "x").is_err());
    }

    #[test]
    fn malformed_blobs_are_errors() {
        let good = sample();
        assert!(Btf::parse(&good).is_ok());
        // Empty and truncated headers.
        assert!(Btf::parse(&[]).is_err());
        assert!(Btf::parse(&good[..HEADER_LEN - 1]).is_err());
        // Wrong magic.
        let mut bad = good.clone();
        bad[0] = 0;
        assert!(Btf::parse(&bad).unwrap_err().contains("magic"));
        // Type section past the end (type_len enlarged).
        let mut bad = good.clone();
        bad[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&bad).unwrap_err().contains("type section"));
        // String section offset overflowing.
        let mut bad = good.clone();
        bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&bad).is_err());
        // Header length beyond the blob.
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Btf::parse(&bad).is_err());
        // Whole blob truncated: sections now run past the end.
        assert!(Btf::parse(&good[..good.len() - 1]).is_err());
        // vlen overflowing: the last struct claims 0xffff members.
        let mut b = Builder::new();
        let n = b.str("s");
        b.push(&[n, Builder::info(KIND_STRUCT, 0xffff, false), 4]);
        let err = Btf::parse(&b.build()).unwrap_err();
        assert!(err.contains("runs past"), "{err}");
        // Unknown kind is named.
        let mut b = Builder::new();
        b.push(&[0, Builder::info(30, 0, false), 0]);
        let err = Btf::parse(&b.build()).unwrap_err();
        assert!(err.contains("unknown BTF kind 30"), "{err}");
        // Partial btf_type at the end of the type section.
        let mut b = Builder::new();
        b.types.extend_from_slice(&[0; 8]);
        assert!(Btf::parse(&b.build()).unwrap_err().contains("truncated"));
        // Struct name outside the string section.
        let mut b = Builder::new();
        b.push(&[9999, Builder::info(KIND_STRUCT, 0, false), 0]);
        assert!(Btf::parse(&b.build()).is_err());
        // Member type id out of range is an error at lookup, not a panic.
        let mut b = Builder::new();
        b.composite(KIND_STRUCT, "s", 4, false, &[("f", 77, 0), ("", 88, 0)]);
        let btf = Btf::parse(&b.build()).unwrap();
        assert!(btf.member("s", "f").is_err());
        assert!(btf.member("s", "g").is_err());
    }

    /// Every truncation and every single-byte corruption of the sample must
    /// parse or fail cleanly, and lookups on what parses must not panic.
    #[test]
    fn corruption_never_panics() {
        let good = sample();
        for len in 0..good.len() {
            let _ = Btf::parse(&good[..len]);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 0x7f, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] = v;
                if let Ok(btf) = Btf::parse(&bad) {
                    for m in ["first", "wide", "deep", "pad", "flags", "odd", "ptr", "x"] {
                        let _ = btf.member("outer", m);
                    }
                    let _ = btf.typedef_id("inner_t");
                }
            }
        }
    }
}
