//! Where the kernel keeps the memory controller: the kernel reads an OOM
//! kill's memory cgroup limit itself (the victim is gone before user space
//! could), at an index user space finds.

/// The index of controller `name` among the kernel's cgroup subsystems,
/// from the text of `/proc/cgroups` (one row per subsystem, in id order,
/// after a header).
pub fn subsys_index(proc_cgroups: &str, name: &str) -> Option<u32> {
    proc_cgroups
        .lines()
        .filter(|l| !l.starts_with('#'))
        .position(|l| l.split_whitespace().next() == Some(name))
        .and_then(|i| u32::try_from(i).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_controller_index_is_its_row() {
        // This host's /proc/cgroups (Linux 6.18).
        let text = "#subsys_name\thierarchy\tnum_cgroups\tenabled\n\
                    cpuset\t3\t1\t1\ncpu\t1\t1\t1\ncpuacct\t1\t1\t1\nblkio\t7\t1\t1\n\
                    memory\t4\t31\t1\ndevices\t5\t31\t1\n";
        assert_eq!(subsys_index(text, "memory"), Some(4));
        assert_eq!(subsys_index(text, "cpuset"), Some(0));
        assert_eq!(subsys_index(text, "hugetlb"), None);
    }
}
