//! The configuration user space writes before load (offsets, filters).
use ngx_trace_common::Config;

/// Set by user space through `EbpfLoader::set_global` before load.
#[unsafe(no_mangle)]
pub(crate) static CONFIG: Config = unsafe { core::mem::zeroed() };

/// Reads one field of [`CONFIG`]; volatile so the compiler never folds the
/// zero initial value into the code.
macro_rules! config {
    ($($field:ident).+) => {
        {
            // Expanded inside unsafe blocks too.
            #[allow(unused_unsafe)]
            let value =
                unsafe { core::ptr::read_volatile(&raw const $crate::config::CONFIG.$($field).+) };
            value
        }
    };
}
pub(crate) use config;

/// Offset of a tracepoint field, as `usize` for `TracePointContext::read_at`.
macro_rules! offset {
    ($field:ident) => {
        $crate::config::config!(offsets.$field) as usize
    };
}
pub(crate) use offset;
