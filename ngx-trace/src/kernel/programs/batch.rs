//! Reading a BPF hash map in batches (`BPF_MAP_LOOKUP_BATCH`, Linux 5.6+):
//! one syscall per [`CHUNK`] entries, where aya's iterator makes two per
//! entry (next key, then lookup). Each syscall also holds off the kernel's
//! kprobes and classic tracepoints on its CPU while it runs: fewer of them
//! means fewer windows in which the tracer's own hooks are skipped.
//!
//! The walk's logic is apart from the syscall ([`Batches::read`] takes the
//! call as a function) so it is tested with a map model as well as a real
//! map.
use std::os::fd::{AsRawFd as _, BorrowedFd};

/// Entries asked for per call.
pub const CHUNK: usize = 256;
/// Most entries per call: the buffers double (from [`CHUNK`]) while one
/// hash bucket holds more entries than they do, up to this.
const MAX_CHUNK: usize = 1 << 16;

/// One `BPF_MAP_LOOKUP_BATCH` call: where to resume and room for entries.
pub struct Call<'a, K, V> {
    /// The position the previous call returned (`None`: from the start).
    pub in_batch: Option<u64>,
    /// Set by the call: where the next one resumes.
    pub out_batch: u64,
    /// Room for keys.
    pub keys: &'a mut [K],
    /// Room for values, one per key.
    pub values: &'a mut [V],
    /// Set by the call: how many entries it copied.
    pub count: u32,
}

/// Why a batch read did not finish: the kernel's errno. The caller reads
/// the map another way (entry by entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failed(pub i32);

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", std::io::Error::from_raw_os_error(self.0))
    }
}

/// Buffers for batch reads of a map with keys `K` and values `V`, reused
/// from one read to the next.
pub struct Batches<K, V> {
    keys: Vec<K>,
    values: Vec<V>,
}

impl<K: Copy, V: Copy> Batches<K, V> {
    /// Buffers for [`CHUNK`] entries, filled with `key` and `value` (any
    /// valid values: every read overwrites what it returns).
    pub fn new(key: K, value: V) -> Self {
        Self {
            keys: vec![key; CHUNK],
            values: vec![value; CHUNK],
        }
    }

    /// Reads every entry into `out` (cleared first) with `lookup`, one
    /// `BPF_MAP_LOOKUP_BATCH` each time: the kernel answers `ENOENT` with
    /// the last entries, and `ENOSPC` when one bucket holds more entries
    /// than there is room for (the buffers grow, the call is made again).
    /// Any other errno ends the read (`out` then holds part of the map).
    pub fn read(
        &mut self,
        out: &mut Vec<(K, V)>,
        mut lookup: impl FnMut(&mut Call<'_, K, V>) -> Result<(), i32>,
    ) -> Result<(), Failed> {
        out.clear();
        let mut position = None;
        loop {
            let mut call = Call {
                in_batch: position,
                out_batch: 0,
                keys: &mut self.keys,
                values: &mut self.values,
                count: 0,
            };
            let result = lookup(&mut call);
            let (count, next) = (call.count as usize, call.out_batch);
            let copied = count.min(self.keys.len());
            out.extend(
                self.keys[..copied]
                    .iter()
                    .copied()
                    .zip(self.values[..copied].iter().copied()),
            );
            match result {
                // The kernel walks on to the next non-empty bucket before
                // answering: nothing copied and no error is the end too.
                Ok(()) if copied == 0 => return Ok(()),
                Ok(()) => position = Some(next),
                Err(libc::ENOENT) => return Ok(()),
                Err(libc::ENOSPC) if self.keys.len() < MAX_CHUNK => {
                    let room = self.keys.len() * 2;
                    let (key, value) = (self.keys[0], self.values[0]);
                    self.keys.resize(room, key);
                    self.values.resize(room, value);
                }
                Err(errno) => return Err(Failed(errno)),
            }
        }
    }
}

/// `BPF_MAP_LOOKUP_BATCH` on the map `fd`, whose keys are `K` and values
/// `V` exactly (a hash map: not per-CPU, whose values are per CPU).
pub fn lookup_batch<K, V>(fd: BorrowedFd<'_>, call: &mut Call<'_, K, V>) -> Result<(), i32> {
    use aya_obj::generated::{bpf_attr, bpf_cmd};
    let mut in_batch = call.in_batch.unwrap_or(0);
    // SAFETY: all-zero is a valid bpf_attr (and what the kernel wants in
    // the bytes it does not read).
    let mut attr: bpf_attr = unsafe { std::mem::zeroed() };
    attr.batch.in_batch = if call.in_batch.is_some() {
        (&raw mut in_batch) as u64
    } else {
        0
    };
    attr.batch.out_batch = (&raw mut call.out_batch) as u64;
    attr.batch.keys = call.keys.as_mut_ptr() as u64;
    attr.batch.values = call.values.as_mut_ptr() as u64;
    attr.batch.count = call.keys.len().min(call.values.len()) as u32;
    attr.batch.map_fd = fd.as_raw_fd() as u32;
    // SAFETY: `attr` is a valid bpf_attr of its size. The kernel writes at
    // most `count` keys of the map's key size and values of its value
    // size (`K` and `V`, the caller's contract) into buffers of that many,
    // the position (a u32 for hash maps) into `out_batch`, and the number
    // copied into `attr.batch.count`.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_MAP_LOOKUP_BATCH as libc::c_long,
            &raw mut attr,
            size_of::<bpf_attr>() as libc::c_long,
        )
    };
    let errno = std::io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY: the union member written above; the kernel updates `count`
    // (on ENOENT too, with the last entries).
    call.count = unsafe { attr.batch.count };
    if ret == 0 { Ok(()) } else { Err(errno) }
}

/// `BPF_MAP_DELETE_ELEM` of `key` (the map's key type) in the map `fd`.
pub fn delete<K>(fd: BorrowedFd<'_>, key: &K) -> Result<(), i32> {
    /// The map element member of `union bpf_attr`.
    #[repr(C)]
    struct ElemAttr {
        map_fd: u32,
        _pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }
    let attr = ElemAttr {
        map_fd: fd.as_raw_fd() as u32,
        _pad: 0,
        key: std::ptr::from_ref(key) as u64,
        value: 0,
        flags: 0,
    };
    // SAFETY: a valid attr of its size; the kernel reads the map's key
    // size from `key` (a `K`, the caller's contract).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_MAP_DELETE_ELEM as libc::c_long,
            &raw const attr,
            size_of::<ElemAttr>() as libc::c_long,
        )
    };
    if ret == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeMap,
        os::fd::{AsFd as _, FromRawFd as _, OwnedFd},
    };

    use super::*;

    /// A hash map as the kernel walks it in a batch read: buckets in
    /// order, a bucket always whole; the position is a bucket index.
    struct Model {
        buckets: Vec<Vec<(u64, u64)>>,
        calls: usize,
    }

    impl Model {
        fn new(buckets: Vec<Vec<(u64, u64)>>) -> Self {
            Self { buckets, calls: 0 }
        }

        /// Entries made `0..n` spread over `n / 2` buckets.
        fn of(n: u64) -> Self {
            let mut buckets = vec![Vec::new(); (n / 2).max(1) as usize];
            for k in 0..n {
                let b = (k * 7 % buckets.len() as u64) as usize;
                buckets[b].push((k, k * 10));
            }
            Self::new(buckets)
        }

        fn lookup(&mut self, call: &mut Call<'_, u64, u64>) -> Result<(), i32> {
            self.calls += 1;
            let room = call.keys.len();
            let mut bucket = call.in_batch.unwrap_or(0) as usize;
            let mut total = 0;
            while bucket < self.buckets.len() {
                let entries = &self.buckets[bucket];
                if entries.len() > room - total {
                    if total == 0 {
                        call.count = 0;
                        return Err(libc::ENOSPC);
                    }
                    break;
                }
                for &(k, v) in entries {
                    call.keys[total] = k;
                    call.values[total] = v;
                    total += 1;
                }
                bucket += 1;
            }
            call.count = total as u32;
            call.out_batch = bucket as u64;
            if bucket == self.buckets.len() {
                return Err(libc::ENOENT);
            }
            Ok(())
        }

        fn entries(&self) -> BTreeMap<u64, u64> {
            self.buckets.iter().flatten().copied().collect()
        }
    }

    fn read(
        model: &mut Model,
        batches: &mut Batches<u64, u64>,
    ) -> Result<BTreeMap<u64, u64>, Failed> {
        let mut out = Vec::new();
        batches.read(&mut out, |call| model.lookup(call))?;
        let read: BTreeMap<u64, u64> = out.iter().copied().collect();
        assert_eq!(read.len(), out.len(), "an entry read twice");
        Ok(read)
    }

    #[test]
    fn a_full_map_is_read_in_chunks_with_the_last_entries_on_enoent() {
        // 16,384 in-flight connections: 64 calls or so, not 32,768.
        let mut model = Model::of(16_384);
        let mut batches = Batches::new(0, 0);
        assert_eq!(read(&mut model, &mut batches), Ok(model.entries()));
        assert!(
            (64..=70).contains(&model.calls),
            "{} calls for 16,384 entries",
            model.calls
        );
        // Reused: the same again, and an empty map is one call.
        assert_eq!(read(&mut model, &mut batches), Ok(model.entries()));
        let mut empty = Model::new(vec![Vec::new(); 8]);
        assert_eq!(read(&mut empty, &mut batches), Ok(BTreeMap::new()));
        assert_eq!(empty.calls, 1);
    }

    #[test]
    fn a_bucket_larger_than_the_buffers_grows_them() {
        let big: Vec<(u64, u64)> = (0..700).map(|k| (k, k + 1)).collect();
        let mut model = Model::new(vec![vec![(1000, 1)], big, vec![(2000, 2)]]);
        let mut batches = Batches::new(0, 0);
        assert_eq!(read(&mut model, &mut batches), Ok(model.entries()));
        assert_eq!(batches.keys.len(), 1024, "grown to fit 700");
    }

    #[test]
    fn a_kernel_without_batches_says_so_with_its_errno() {
        let mut batches = Batches::new(0u64, 0u64);
        let mut out = vec![(9, 9)];
        let einval = batches.read(&mut out, |_| Err(libc::EINVAL));
        assert_eq!(einval, Err(Failed(libc::EINVAL)));
        assert!(out.is_empty(), "what was read before is not kept");
        assert!(
            Failed(libc::EINVAL)
                .to_string()
                .contains("Invalid argument")
        );
    }

    /// A BPF hash map made for the test (root only).
    fn hash_map(max_entries: u32) -> Option<OwnedFd> {
        /// The `BPF_MAP_CREATE` member of `union bpf_attr`.
        #[repr(C)]
        struct CreateAttr {
            map_type: u32,
            key_size: u32,
            value_size: u32,
            max_entries: u32,
            map_flags: u32,
        }
        let attr = CreateAttr {
            map_type: aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_HASH as u32,
            key_size: 8,
            value_size: 8,
            max_entries,
            map_flags: 0,
        };
        // SAFETY: a valid attr of its size; the kernel returns a new fd.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                aya_obj::generated::bpf_cmd::BPF_MAP_CREATE as libc::c_long,
                &raw const attr,
                size_of::<CreateAttr>() as libc::c_long,
            )
        };
        // SAFETY: a fresh fd this test owns.
        (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
    }

    #[test]
    fn a_real_hash_map_reads_the_same_in_batches_as_entry_by_entry() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "NOTE: not root: the batch read of a real map is tested by `cargo xtask test`"
            );
            return;
        }
        let fd = hash_map(4096).expect("BPF_MAP_CREATE of a hash map as root");
        let data = aya::maps::MapData::from_fd(fd).expect("the new map's info");
        let mut map: aya::maps::HashMap<_, u64, u64> = aya::maps::Map::from_map_data(data)
            .unwrap()
            .try_into()
            .unwrap();
        for k in 0..3000u64 {
            map.insert((k << 12) | 0xffff_8880_0000_0000, k * 3, 0)
                .unwrap();
        }
        let by_entry: BTreeMap<u64, u64> = map.iter().map(Result::unwrap).collect();
        assert_eq!(by_entry.len(), 3000);
        let mut batches = Batches::new(0u64, 0u64);
        let mut out = Vec::new();
        let fd = aya::maps::IterableMap::map(&map).fd().as_fd();
        let mut calls = 0;
        batches
            .read(&mut out, |call| {
                calls += 1;
                lookup_batch(fd, call)
            })
            .expect("batch lookup on this kernel (5.6+)");
        let by_batch: BTreeMap<u64, u64> = out.iter().copied().collect();
        assert_eq!(out.len(), 3000, "each entry once");
        assert_eq!(by_batch, by_entry);
        assert!(calls <= 3000 / CHUNK + 3, "{calls} calls for 3,000 entries");
        let gone = 0xffff_8880_0000_0000u64;
        assert_eq!(delete(fd, &gone), Ok(()));
        assert_eq!(delete(fd, &gone), Err(libc::ENOENT));
        batches
            .read(&mut out, |call| lookup_batch(fd, call))
            .unwrap();
        assert_eq!(out.len(), 2999);
        assert!(out.iter().all(|&(k, _)| k != gone));
    }
}
