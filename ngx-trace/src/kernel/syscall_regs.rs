//! Where the kernel programs find the system call a worker is in when its
//! socket hook runs: the registers it saved on entering the kernel, at the
//! top of its kernel stack (see [`SyscallRegs`]). Laid out per
//! architecture; the offsets come from this kernel's BTF.
use ngx_trace_common::{SyscallRegs, btf::Btf};

/// An architecture's registers of a system call: `struct pt_regs` members
/// (name, index into an array member) of its number and first three
/// arguments, its call numbers, and the bytes a build may leave above
/// `pt_regs`.
struct Layout {
    nr: &'static str,
    args: [(&'static str, u32); 3],
    /// `write`, `writev`, `sendto`, `sendmsg` (see
    /// [`ngx_trace_common::CALL_WRITE`] and the rest).
    calls: [u32; 4],
    /// The padding above `pt_regs` that some builds have (the other
    /// candidate is none).
    padding: u32,
}

/// x86_64: `orig_ax` holds the call number for the whole call (`ax` gets
/// the result); the arguments are `di`, `si`, `dx`. With FRED
/// (`CONFIG_X86_FRED`, Linux 6.9+) 16 bytes pad the stack's top.
#[cfg(target_arch = "x86_64")]
const LAYOUT: Option<Layout> = Some(Layout {
    nr: "orig_ax",
    args: [("di", 0), ("si", 0), ("dx", 0)],
    calls: [1, 20, 44, 46],
    padding: 16,
});

/// arm64: `syscallno`; `regs[0..]` hold the arguments until the call
/// returns (its result is written to `regs[0]` on the way out).
#[cfg(target_arch = "aarch64")]
const LAYOUT: Option<Layout> = Some(Layout {
    nr: "syscallno",
    args: [("regs", 0), ("regs", 1), ("regs", 2)],
    calls: [64, 66, 206, 211],
    padding: 0,
});

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const LAYOUT: Option<Layout> = None;

/// `THREAD_SIZE`: 16 KiB on x86_64 and arm64 (arm64 with pages larger than
/// that: one page). Kernels built with KASAN double it; then no place
/// matches and no request is copied, which `--check` cannot tell.
fn thread_size() -> u32 {
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u32::try_from(page).unwrap_or(4096);
    if cfg!(target_arch = "aarch64") {
        page.max(16384)
    } else {
        16384
    }
}

/// The layout for this kernel; `Err` says why requests cannot be copied.
pub fn syscall_regs(btf: &Btf) -> Result<SyscallRegs, String> {
    let layout = LAYOUT.ok_or_else(|| {
        format!(
            "the system call registers of {} are not known to ngx-trace",
            std::env::consts::ARCH
        )
    })?;
    let size = btf.struct_size("pt_regs")?;
    let member = |name: &str, index: u32| -> Result<u32, String> {
        let m = btf.member("pt_regs", name)?;
        // An array member's size is the whole array's.
        if (index + 1) * 8 > m.size {
            return Err(format!("pt_regs.{name}[{index}] is outside the member"));
        }
        Ok(m.offset + index * 8)
    };
    let nr = btf.member("pt_regs", layout.nr)?;
    if nr.size < 4 {
        return Err(format!("pt_regs.{} has {} bytes", layout.nr, nr.size));
    }
    let top = thread_size()
        .checked_sub(size)
        .ok_or_else(|| format!("struct pt_regs of {size} bytes is larger than the stack"))?;
    Ok(SyscallRegs {
        copy: 1,
        task_stack: btf.member("task_struct", "stack")?.offset,
        regs_at: [top, top - layout.padding],
        nr: nr.offset,
        args: [
            member(layout.args[0].0, layout.args[0].1)?,
            member(layout.args[1].0, layout.args[1].1)?,
            member(layout.args[2].0, layout.args[2].1)?,
        ],
        calls: layout.calls,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn the_running_kernels_registers_are_where_x86_64_keeps_them() {
        let btf = Btf::from_sys_fs().expect("kernel BTF is required for this test");
        let regs = syscall_regs(&btf).unwrap();
        // arch/x86/include/asm/ptrace.h: 21 eight-byte registers, `dx`
        // 13th, `si` 14th, `di` 15th, `orig_ax` 16th.
        assert_eq!(regs.args, [112, 104, 96]);
        assert_eq!(regs.nr, 120);
        assert_eq!(regs.regs_at, [16384 - 168, 16384 - 168 - 16]);
        assert_eq!(regs.copy, 1);
        assert_eq!(regs.calls[ngx_trace_common::CALL_WRITEV], 20);
    }
}
