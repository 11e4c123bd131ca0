//! Building blocks for `cargo xtask bench`: tiny hand-assembled BPF
//! programs (an empty one, one hash lookup, one load of
//! `sk->sk_bpf_storage`) loaded and attached with plain bpf(2) calls to the
//! hooks ngx-trace runs on every socket, so that the bench measures what
//! running a program at all costs there, under the same load and the same
//! BPF statistics as the tracer. No BPF library: the programs are a few
//! instructions, and what they cost must not depend on a loader's choices.
//! The kernel's BTF (the offset of `sk_bpf_storage`, the tracepoints' type
//! ids) is read with the tracer's own reader, `ngx_trace_common::btf`.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, anyhow, bail};
use ngx_trace_common::btf::Btf;

/// The hooks ngx-trace runs on every send, receive and data-ready event of
/// every socket on the host: what a socket that is not an upstream pays
/// for. Tracepoint names, and ngx-trace's program names on them.
pub const HOT_HOOKS: [&str; 3] = ["sock_send_length", "sock_recv_length", "sk_data_ready"];

// bpf(2) commands, program, map and attach types, from <linux/bpf.h>.
const BPF_MAP_CREATE: u32 = 0;
const BPF_PROG_LOAD: u32 = 5;
const BPF_OBJ_GET_INFO_BY_FD: u32 = 15;
const BPF_RAW_TRACEPOINT_OPEN: u32 = 17;
const BPF_PROG_TYPE_RAW_TRACEPOINT: u32 = 17;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_RAW_TP: u32 = 23;
const BPF_MAP_TYPE_LRU_HASH: u32 = 9;
/// `src_reg` of a 64-bit immediate load whose immediate is a map fd.
const BPF_PSEUDO_MAP_FD: u8 = 1;
/// Helper number of `bpf_map_lookup_elem`.
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;

/// The LRU hash of the tracer's former per-socket state (dc0559f): u64
/// socket pointer as the key, 256-byte value, 16384 entries.
const HASH_KEY_SIZE: u32 = 8;
const HASH_VALUE_SIZE: u32 = 256;
const HASH_ENTRIES: u32 = 16384;

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R6: u8 = 6;
const R10: u8 = 10;

// Opcodes (class | operation | source or size).
/// BPF_ALU64 | BPF_MOV | BPF_K: `dst = imm`.
const MOV64_IMM: u8 = 0xb7;
/// BPF_ALU64 | BPF_MOV | BPF_X: `dst = src`.
const MOV64_REG: u8 = 0xbf;
/// BPF_ALU64 | BPF_ADD | BPF_K: `dst += imm`.
const ADD64_IMM: u8 = 0x07;
/// BPF_LDX | BPF_MEM | BPF_DW: `dst = *(u64 *)(src + off)`.
const LDX_DW: u8 = 0x79;
/// BPF_STX | BPF_MEM | BPF_DW: `*(u64 *)(dst + off) = src`.
const STX_DW: u8 = 0x7b;
/// BPF_LD | BPF_IMM | BPF_DW: `dst = imm64`, two instructions.
const LD_IMM64: u8 = 0x18;
/// BPF_JMP | BPF_JEQ | BPF_K: `if dst == imm goto +off`.
const JEQ_IMM: u8 = 0x15;
/// BPF_JMP | BPF_CALL: call helper `imm`.
const CALL: u8 = 0x85;
/// BPF_JMP | BPF_EXIT.
const EXIT: u8 = 0x95;

/// One BPF instruction as the kernel reads it (`struct bpf_insn`): opcode;
/// destination register in the low nibble and source register in the high
/// nibble of one byte; 16-bit offset; 32-bit immediate. Little endian, the
/// byte order of the hosts ngx-trace runs on (x86-64, arm64).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(transparent)]
struct Insn([u8; 8]);

impl Insn {
    fn new(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Self {
        let [o0, o1] = off.to_le_bytes();
        let [i0, i1, i2, i3] = imm.to_le_bytes();
        Self([code, dst | (src << 4), o0, o1, i0, i1, i2, i3])
    }
}

fn mov64_imm(dst: u8, imm: i32) -> Insn {
    Insn::new(MOV64_IMM, dst, 0, 0, imm)
}

fn mov64_reg(dst: u8, src: u8) -> Insn {
    Insn::new(MOV64_REG, dst, src, 0, 0)
}

fn add64_imm(dst: u8, imm: i32) -> Insn {
    Insn::new(ADD64_IMM, dst, 0, 0, imm)
}

fn ldx_dw(dst: u8, src: u8, off: i16) -> Insn {
    Insn::new(LDX_DW, dst, src, off, 0)
}

fn stx_dw(dst: u8, off: i16, src: u8) -> Insn {
    Insn::new(STX_DW, dst, src, off, 0)
}

/// `dst = map`: a 64-bit immediate load of the map fd, which the verifier
/// replaces with the map's address.
fn ld_map_fd(dst: u8, fd: i32) -> [Insn; 2] {
    [
        Insn::new(LD_IMM64, dst, BPF_PSEUDO_MAP_FD, 0, fd),
        Insn::new(0, 0, 0, 0, 0),
    ]
}

fn jeq_imm(dst: u8, imm: i32, off: i16) -> Insn {
    Insn::new(JEQ_IMM, dst, 0, off, imm)
}

fn call(helper: i32) -> Insn {
    Insn::new(CALL, 0, 0, 0, helper)
}

fn exit() -> Insn {
    Insn::new(EXIT, 0, 0, 0, 0)
}

/// `r0 = 0; exit`.
fn empty_program() -> Vec<Insn> {
    vec![mov64_imm(R0, 0), exit()]
}

/// One lookup of the socket pointer (args[0] of the three hot tracepoints)
/// in the map `map_fd`, result unused.
fn hash_lookup_program(map_fd: i32) -> Vec<Insn> {
    let [ld, ld_high] = ld_map_fd(R1, map_fd);
    vec![
        ldx_dw(R6, R1, 0),
        stx_dw(R10, -8, R6),
        mov64_reg(R2, R10),
        add64_imm(R2, -8),
        ld,
        ld_high,
        call(HELPER_MAP_LOOKUP_ELEM),
        mov64_imm(R0, 0),
        exit(),
    ]
}

/// ngx-trace's filter on a socket that is not an upstream: one load of
/// `sk->sk_bpf_storage` (at `offset` in `struct sock`) and a comparison
/// with 0 (a jump to the next instruction either way: the comparison is
/// what counts, not where it leads).
fn sk_storage_load_program(offset: i16) -> Vec<Insn> {
    vec![
        ldx_dw(R1, R1, 0),
        ldx_dw(R1, R1, offset),
        jeq_imm(R1, 0, 0),
        mov64_imm(R0, 0),
        exit(),
    ]
}

/// What runs on the hot hooks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Block {
    /// `r0 = 0; exit`, raw tracepoint.
    Empty,
    /// One LRU hash lookup of the socket pointer, raw tracepoint.
    HashLookup,
    /// One load of `sk->sk_bpf_storage` and a comparison, BTF tracepoint
    /// (`tp_btf`, as ngx-trace's programs).
    SkStorageLoad,
}

impl Block {
    /// Every block, in the order of the report.
    pub const ALL: [Block; 3] = [Block::Empty, Block::HashLookup, Block::SkStorageLoad];

    /// Short name, for progress lines and errors.
    pub fn name(self) -> &'static str {
        match self {
            Block::Empty => "empty",
            Block::HashLookup => "hash lookup",
            Block::SkStorageLoad => "sk_bpf_storage load",
        }
    }

    /// What runs, for the report.
    pub fn label(self) -> String {
        match self {
            Block::Empty => "empty program (`r0 = 0; exit`), raw tracepoint".to_string(),
            Block::HashLookup => format!(
                "one `bpf_map_lookup_elem` of the socket in an LRU hash (u64 key, \
                 {HASH_VALUE_SIZE}-byte value, {HASH_ENTRIES} entries, as the tracer's former \
                 per-socket state; it finds nothing), raw tracepoint"
            ),
            Block::SkStorageLoad => "one load of `sk->sk_bpf_storage` and a comparison with 0 \
                 (ngx-trace's filter), BTF tracepoint"
                .to_string(),
        }
    }
}

/// `struct bpf_attr` for BPF_MAP_CREATE, up to `map_name` (the kernel
/// takes the fields after it as 0). Every field explicit: no padding bytes
/// of undefined value reach the kernel.
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `struct bpf_attr` for BPF_PROG_LOAD, up to `core_relo_cnt`; every field
/// explicit, so the struct has no padding.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_btf_obj_fd: u32,
    core_relo_cnt: u32,
}

/// `struct bpf_attr` for BPF_RAW_TRACEPOINT_OPEN (without the cookie).
#[repr(C)]
#[derive(Default)]
struct RawTracepointOpenAttr {
    name: u64,
    prog_fd: u32,
    pad: u32,
}

/// `struct bpf_attr` for BPF_OBJ_GET_INFO_BY_FD.
#[repr(C)]
#[derive(Default)]
struct ObjInfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_prog_info`: the kernel fills as much of it as
/// `info_len` says, and the id is all the bench needs.
#[repr(C)]
#[derive(Default)]
struct ProgInfoHead {
    prog_type: u32,
    id: u32,
}

/// A NUL-terminated object name of at most 15 characters.
fn obj_name(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    let len = name.len().min(15);
    out[..len].copy_from_slice(&name.as_bytes()[..len]);
    out
}

/// bpf(2) with `attr`, which must be a `bpf_attr` prefix with no padding;
/// its size is what the kernel reads (it takes the rest as 0).
fn sys_bpf<T>(cmd: u32, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is live and initialised for size_of::<T>() bytes (no
    // padding), and every pointer in it points to a buffer the caller
    // keeps alive across the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T,
            std::mem::size_of::<T>() as libc::c_long,
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// bpf(2) for a command that returns a new fd: the fd, owned.
fn sys_bpf_fd<T>(cmd: u32, attr: &mut T) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    // SAFETY: a new fd the kernel just returned, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The LRU hash of the hash-lookup block (see [`HASH_ENTRIES`]).
fn create_lru_hash() -> Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type: BPF_MAP_TYPE_LRU_HASH,
        key_size: HASH_KEY_SIZE,
        value_size: HASH_VALUE_SIZE,
        max_entries: HASH_ENTRIES,
        map_name: obj_name("bb_sockets"),
        ..MapCreateAttr::default()
    };
    sys_bpf_fd(BPF_MAP_CREATE, &mut attr).context(
        "failed to create the building blocks' LRU hash (bpf BPF_MAP_CREATE): \
         run as root (CAP_BPF)",
    )
}

/// How to load one program.
struct ProgSpec<'a> {
    name: &'a str,
    prog_type: u32,
    expected_attach_type: u32,
    /// BTF type id of the tracepoint's `btf_trace_*` typedef (tracing
    /// programs only).
    attach_btf_id: u32,
    insns: &'a [Insn],
}

/// Loads `spec`; if the kernel refuses it, loads it again with the
/// verifier's log to say why.
fn load_prog(spec: &ProgSpec) -> Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: spec.prog_type,
        insn_cnt: spec.insns.len() as u32,
        insns: spec.insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: obj_name(spec.name),
        expected_attach_type: spec.expected_attach_type,
        attach_btf_id: spec.attach_btf_id,
        ..ProgLoadAttr::default()
    };
    let err = match sys_bpf_fd(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => return Ok(fd),
        Err(err) => err,
    };
    // The log is asked for only now: with a log the kernel verifies the
    // same, but failing without one keeps the normal path simple.
    let mut log = vec![0u8; 64 * 1024];
    attr.log_level = 1;
    attr.log_size = log.len() as u32;
    attr.log_buf = log.as_mut_ptr() as u64;
    if let Ok(fd) = sys_bpf_fd(BPF_PROG_LOAD, &mut attr) {
        return Ok(fd);
    }
    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
    bail!(
        "the kernel refused BPF program {} ({err}); verifier log:\n{}\n\
         (needs root, and for BTF tracepoints a kernel with /sys/kernel/btf/vmlinux)",
        spec.name,
        String::from_utf8_lossy(&log[..end]).trim_end()
    )
}

/// The kernel's id of the program `prog`, as `bpftool prog show` lists it.
fn prog_id(prog: &OwnedFd) -> Result<u64> {
    let mut info = ProgInfoHead::default();
    let mut attr = ObjInfoAttr {
        bpf_fd: prog.as_raw_fd() as u32,
        info_len: std::mem::size_of::<ProgInfoHead>() as u32,
        info: &mut info as *mut ProgInfoHead as u64,
    };
    sys_bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .context("failed to read a building block's program id (BPF_OBJ_GET_INFO_BY_FD)")?;
    Ok(info.id.into())
}

/// Attaches `prog` to a tracepoint: the raw tracepoint `name`, or, with
/// `None`, the BTF tracepoint the program was loaded for. The link fd
/// holds the attachment: closing it detaches.
fn attach_raw_tracepoint(prog: &OwnedFd, name: Option<&str>) -> Result<OwnedFd> {
    let name = name
        .map(std::ffi::CString::new)
        .transpose()
        .context("tracepoint name with a NUL")?;
    let mut attr = RawTracepointOpenAttr {
        name: name.as_ref().map_or(0, |n| n.as_ptr() as u64),
        prog_fd: prog.as_raw_fd() as u32,
        pad: 0,
    };
    sys_bpf_fd(BPF_RAW_TRACEPOINT_OPEN, &mut attr)
        .context("failed to attach a building block (BPF_RAW_TRACEPOINT_OPEN)")
}

/// A block loaded and attached to every hot hook. Dropping it closes every
/// fd: the links (which detaches the programs), then the programs, then the
/// map, also when loading stopped half-way.
#[derive(Default)]
pub struct Attached {
    /// Per hook, in the order of [`HOT_HOOKS`]: its name and the id of the
    /// program on it.
    pub progs: Vec<(&'static str, u64)>,
    // Fields drop in declaration order.
    links: Vec<OwnedFd>,
    prog_fds: Vec<OwnedFd>,
    map: Option<OwnedFd>,
}

/// Loads `block`, one program per hot hook (a BTF tracepoint program is
/// bound to one tracepoint; the others follow suit, so that each hook has
/// its own figure), and attaches each to its hook.
pub fn attach(block: Block) -> Result<Attached> {
    let mut attached = Attached::default();
    // The kernel's BTF, for BTF tracepoint programs only.
    let mut btf = None;
    let insns = match block {
        Block::Empty => empty_program(),
        Block::HashLookup => {
            let map = create_lru_hash()?;
            let insns = hash_lookup_program(map.as_raw_fd());
            attached.map = Some(map);
            insns
        }
        Block::SkStorageLoad => {
            let btf = btf.insert(Btf::from_sys_fs().map_err(anyhow::Error::msg)?);
            let storage = btf
                .member("sock", "sk_bpf_storage")
                .map_err(|e| anyhow!("{e}: the kernel needs CONFIG_BPF_SYSCALL"))?;
            if storage.size != 8 {
                bail!(
                    "sk_bpf_storage in struct sock is {} bytes, not a pointer's 8",
                    storage.size
                );
            }
            let offset = i16::try_from(storage.offset).with_context(|| {
                format!("sk_bpf_storage at offset {}, past an i16", storage.offset)
            })?;
            sk_storage_load_program(offset)
        }
    };
    for hook in HOT_HOOKS {
        let name = format!(
            "bb_{}",
            hook.trim_start_matches("sock_").trim_start_matches("sk_")
        );
        let spec = match &btf {
            None => ProgSpec {
                name: &name,
                prog_type: BPF_PROG_TYPE_RAW_TRACEPOINT,
                expected_attach_type: 0,
                attach_btf_id: 0,
                insns: &insns,
            },
            Some(btf) => ProgSpec {
                name: &name,
                prog_type: BPF_PROG_TYPE_TRACING,
                expected_attach_type: BPF_TRACE_RAW_TP,
                attach_btf_id: btf
                    .typedef_id(&format!("btf_trace_{hook}"))
                    .map_err(|e| anyhow!("{e}: no such tracepoint"))?,
                insns: &insns,
            },
        };
        let prog = load_prog(&spec)
            .with_context(|| format!("failed to load the {} block on {hook}", block.name()))?;
        let id = prog_id(&prog)?;
        attached.prog_fds.push(prog);
        let prog = attached.prog_fds.last().expect("just pushed");
        // Raw tracepoints are attached by name; a BTF tracepoint program
        // knows its tracepoint already, and the kernel wants no name.
        let link = attach_raw_tracepoint(prog, btf.is_none().then_some(hook))
            .with_context(|| format!("on {hook}"))?;
        attached.links.push(link);
        attached.progs.push((hook, id));
    }
    Ok(attached)
}

#[cfg(test)]
mod tests {
    use std::mem::{offset_of, size_of};

    use super::*;

    fn bytes(insns: &[Insn]) -> Vec<u8> {
        insns.iter().flat_map(|i| i.0).collect()
    }

    #[test]
    fn empty_program_encoding() {
        assert_eq!(
            bytes(&empty_program()),
            [
                0xb7, 0, 0, 0, 0, 0, 0, 0, //
                0x95, 0, 0, 0, 0, 0, 0, 0
            ]
        );
    }

    #[test]
    fn registers_offsets_and_immediates_encoding() {
        // r6 = *(u64 *)(r1 + 0): dst in the low nibble, src in the high.
        assert_eq!(ldx_dw(R6, R1, 0).0, [0x79, 0x16, 0, 0, 0, 0, 0, 0]);
        // *(u64 *)(r10 - 8) = r6
        assert_eq!(stx_dw(R10, -8, R6).0, [0x7b, 0x6a, 0xf8, 0xff, 0, 0, 0, 0]);
        assert_eq!(mov64_reg(R2, R10).0, [0xbf, 0xa2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            add64_imm(R2, -8).0,
            [0x07, 0x02, 0, 0, 0xf8, 0xff, 0xff, 0xff]
        );
        assert_eq!(call(1).0, [0x85, 0, 0, 0, 1, 0, 0, 0]);
        assert_eq!(jeq_imm(R1, 0, 0).0, [0x15, 0x01, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            ld_map_fd(R1, 0x1234).map(|i| i.0),
            [[0x18, 0x11, 0, 0, 0x34, 0x12, 0, 0], [0; 8]]
        );
        assert_eq!(ldx_dw(R1, R1, 736).0, [0x79, 0x11, 0xe0, 0x02, 0, 0, 0, 0]);
    }

    #[test]
    fn programs_end_with_r0_zero_and_exit() {
        for insns in [
            empty_program(),
            hash_lookup_program(7),
            sk_storage_load_program(736),
        ] {
            assert_eq!(insns[insns.len() - 2..], [mov64_imm(R0, 0), exit()]);
        }
        assert_eq!(hash_lookup_program(7).len(), 9);
        assert_eq!(sk_storage_load_program(736).len(), 5);
    }

    #[test]
    fn attrs_match_the_kernel_layout() {
        assert_eq!(size_of::<MapCreateAttr>(), 44);
        assert_eq!(offset_of!(MapCreateAttr, map_name), 28);
        assert_eq!(size_of::<ProgLoadAttr>(), 120);
        assert_eq!(offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(offset_of!(ProgLoadAttr, attach_btf_id), 108);
        assert_eq!(size_of::<RawTracepointOpenAttr>(), 16);
        assert_eq!(size_of::<ObjInfoAttr>(), 16);
        assert_eq!(offset_of!(ProgInfoHead, id), 4);
    }

    #[test]
    fn names_are_cut_to_fifteen_characters() {
        assert_eq!(&obj_name("bb_send_length")[..15], b"bb_send_length\0");
        assert_eq!(&obj_name("sock_send_length"), b"sock_send_lengt\0");
    }
}
