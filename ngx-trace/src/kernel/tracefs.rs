//! Tracepoint `format` files: where the fields of the classic tracepoints
//! are on this kernel.
use std::path::Path;

use anyhow::Result;
use ngx_trace_common::Offsets;

use crate::exit::{self, UserError};

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// Field name, without any array suffix.
    pub name: String,
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// Parses the text of an `events/<category>/<name>/format` file. Lines that
/// are not field descriptions are skipped; a field line that does not parse
/// is an error naming the line.
pub fn parse_format(text: &str) -> Result<Vec<Field>, String> {
    let mut fields = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let parse = || -> Option<Field> {
            let mut parts = rest.split(';').map(str::trim);
            let decl = parts.next()?;
            let offset = parts.next()?.strip_prefix("offset:")?.parse().ok()?;
            let size = parts.next()?.strip_prefix("size:")?.parse().ok()?;
            let last = decl.rsplit([' ', '*']).next()?;
            let name = last.split('[').next()?;
            if name.is_empty() {
                return None;
            }
            Some(Field {
                name: name.to_string(),
                offset,
                size,
            })
        };
        fields.push(parse().ok_or_else(|| format!("unreadable field line `{line}`"))?);
    }
    Ok(fields)
}

/// The offset of `name`, checking it has `size` bytes.
fn offset_of(fields: &[Field], tracepoint: &str, name: &str, size: u32) -> Result<u32, String> {
    let field = fields
        .iter()
        .find(|f| f.name == name)
        .ok_or_else(|| format!("tracepoint {tracepoint} has no field `{name}`"))?;
    if field.size != size {
        return Err(format!(
            "field `{name}` of {tracepoint} has {} bytes, expected {size}",
            field.size
        ));
    }
    Ok(field.offset)
}

/// Reads every field offset the classic-tracepoint programs use (BTF
/// tracepoints get their arguments typed, without offsets). `read` returns the
/// format text of `category/name`, `None` when this kernel lacks it.
pub fn offsets_from(
    read: impl Fn(&str, &str) -> Result<Option<String>, String>,
) -> Result<Offsets, String> {
    let fields = |category: &str, name: &str| -> Result<Option<(String, Vec<Field>)>, String> {
        let Some(text) = read(category, name)? else {
            return Ok(None);
        };
        let fields = parse_format(&text).map_err(|e| format!("{category}:{name}: {e}"))?;
        Ok(Some((format!("{category}:{name}"), fields)))
    };
    let need = |category: &str, name: &str| {
        fields(category, name)?
            .ok_or_else(|| format!("no tracepoint {category}:{name} on this kernel"))
    };
    let (connect, connect_f) = need("syscalls", "sys_enter_connect")?;
    let (connect_exit, connect_exit_f) = need("syscalls", "sys_exit_connect")?;
    let (reset, reset_f) = need("tcp", "tcp_receive_reset")?;
    let (retransmit, retransmit_f) = need("tcp", "tcp_retransmit_skb")?;
    let (fork, fork_f) = need("sched", "sched_process_fork")?;
    let (close, close_f) = need("syscalls", "sys_enter_close")?;
    let (victim, victim_f) = need("oom", "mark_victim")?;
    let (socket, socket_f) = need("syscalls", "sys_enter_socket")?;
    let (socket_exit, socket_exit_f) = need("syscalls", "sys_exit_socket")?;
    let (signal, signal_f) = need("signal", "signal_generate")?;
    let (getsockopt, getsockopt_f) = need("syscalls", "sys_enter_getsockopt")?;
    let (getsockopt_exit, getsockopt_exit_f) = need("syscalls", "sys_exit_getsockopt")?;
    // Missing before Linux 5.12: its fentry fallback reads the socket's
    // error itself, and the program reading these offsets is not loaded.
    let (error_report_error, error_report_dport) = match fields("sock", "inet_sk_error_report")? {
        Some((name, f)) => (
            offset_of(&f, &name, "error", 4)?,
            offset_of(&f, &name, "dport", 2)?,
        ),
        None => (0, 0),
    };
    Ok(Offsets {
        connect_fd: offset_of(&connect_f, &connect, "fd", 8)?,
        connect_uservaddr: offset_of(&connect_f, &connect, "uservaddr", 8)?,
        connect_ret: offset_of(&connect_exit_f, &connect_exit, "ret", 8)?,
        error_report_error,
        error_report_dport,
        receive_reset_skaddr: offset_of(&reset_f, &reset, "skaddr", 8)?,
        retransmit_skaddr: offset_of(&retransmit_f, &retransmit, "skaddr", 8)?,
        retransmit_state: offset_of(&retransmit_f, &retransmit, "state", 4)?,
        retransmit_sport: offset_of(&retransmit_f, &retransmit, "sport", 2)?,
        retransmit_dport: offset_of(&retransmit_f, &retransmit, "dport", 2)?,
        retransmit_saddr: offset_of(&retransmit_f, &retransmit, "saddr", 4)?,
        retransmit_saddr_v6: offset_of(&retransmit_f, &retransmit, "saddr_v6", 16)?,
        fork_child_pid: offset_of(&fork_f, &fork, "child_pid", 4)?,
        close_fd: offset_of(&close_f, &close, "fd", 8)?,
        mark_victim_pid: offset_of(&victim_f, &victim, "pid", 4)?,
        socket_family: offset_of(&socket_f, &socket, "family", 8)?,
        socket_type: offset_of(&socket_f, &socket, "type", 8)?,
        socket_ret: offset_of(&socket_exit_f, &socket_exit, "ret", 8)?,
        getsockopt_fd: offset_of(&getsockopt_f, &getsockopt, "fd", 8)?,
        getsockopt_level: offset_of(&getsockopt_f, &getsockopt, "level", 8)?,
        getsockopt_optname: offset_of(&getsockopt_f, &getsockopt, "optname", 8)?,
        getsockopt_optval: offset_of(&getsockopt_f, &getsockopt, "optval", 8)?,
        getsockopt_ret: offset_of(&getsockopt_exit_f, &getsockopt_exit, "ret", 8)?,
        signal_sig: offset_of(&signal_f, &signal, "sig", 4)?,
        signal_code: offset_of(&signal_f, &signal, "code", 4)?,
        signal_comm: offset_of(&signal_f, &signal, "comm", 16)?,
        signal_pid: offset_of(&signal_f, &signal, "pid", 4)?,
        signal_result: offset_of(&signal_f, &signal, "result", 4)?,
    })
}

/// Reads the offsets from tracefs at `root` (hooks::check_available has
/// made sure the tracepoints needed exist).
pub fn read_offsets(root: &Path) -> Result<Offsets> {
    offsets_from(|category, name| {
        let path = root.join("events").join(category).join(name).join("format");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("failed to read {}: {e}", path.display())),
        }
    })
    .map_err(|e| UserError::new(exit::KERNEL, format!("unexpected tracepoint layout: {e}")).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `events/sock/inet_sock_set_state/format` of Linux 6.18.
    const SET_STATE: &str = "name: inet_sock_set_state
ID: 1484
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:int oldstate;\toffset:16;\tsize:4;\tsigned:1;
\tfield:int newstate;\toffset:20;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:24;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:26;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 protocol;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:32;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:36;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:40;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:56;\tsize:16;\tsigned:0;

print fmt: \"family=%s protocol=%s sport=%hu dport=%hu\", REC->family
";

    #[test]
    fn parses_pointer_scalar_and_array_fields() {
        let fields = parse_format(SET_STATE).unwrap();
        let get = |n: &str| fields.iter().find(|f| f.name == n).unwrap().clone();
        assert_eq!(get("skaddr").offset, 8);
        assert_eq!(get("newstate").offset, 20);
        assert_eq!(get("protocol").offset, 30);
        assert_eq!(get("daddr_v6").offset, 56);
        assert_eq!(get("daddr_v6").size, 16);
        assert_eq!(fields.len(), 15);
    }

    #[test]
    fn data_loc_fields_are_named_by_their_last_word() {
        // sched_process_fork of Linux 6.18 (comm became __data_loc).
        let text = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                    \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        let fields = parse_format(text).unwrap();
        assert_eq!(fields[0].name, "parent_comm");
        assert_eq!(fields[1].name, "child_pid");
        assert_eq!(fields[1].offset, 20);
    }

    #[test]
    fn a_mangled_field_line_is_an_error_naming_it() {
        let err = parse_format("\tfield:int ret;\toffset:sixteen;\tsize:8;\n").unwrap_err();
        assert!(err.contains("offset:sixteen"), "{err}");
    }

    #[test]
    fn a_field_of_another_size_is_refused() {
        let fields = parse_format(SET_STATE).unwrap();
        let err = offset_of(&fields, "sock:inet_sock_set_state", "protocol", 4).unwrap_err();
        assert!(err.contains("has 2 bytes, expected 4"), "{err}");
        let err = offset_of(&fields, "sock:inet_sock_set_state", "sk_err", 4).unwrap_err();
        assert!(err.contains("no field `sk_err`"), "{err}");
    }
}
