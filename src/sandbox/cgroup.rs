//! A running container's memory counters, read from its cgroup on the host: the kernel's own
//! high-water mark and OOM-kill count, which Docker's once-a-second stats miss (a memory bomb
//! peaks and dies between two samples). cgroup v1 (`memory.max_usage_in_bytes`,
//! `memory.oom_control`) and v2 (`memory.peak`, `memory.events`).
//!
//! The cgroup is removed the moment the container exits, so counters are sampled while it runs;
//! the caller adds what only the exit can tell (an OOM kill means usage reached the limit).

use std::path::{Path, PathBuf};

/// What one read of the counters found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemoryCounters {
    /// Highest memory use since the cgroup was created.
    pub peak_bytes: Option<u64>,
    /// Processes the kernel killed for the cgroup's memory limit.
    pub oom_kills: Option<u64>,
}

/// Where a cgroup's memory files are, and in which layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemoryCgroup {
    V1(PathBuf),
    V2(PathBuf),
}

/// The memory cgroup of `/proc/<pid>/cgroup` text: the v1 `memory` controller's line when there
/// is one (hybrid hosts), else the v2 line `0::<path>`.
pub fn parse_proc_cgroup(text: &str, root: &Path) -> Option<MemoryCgroup> {
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let relative = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            return Some(MemoryCgroup::V1(root.join("memory").join(relative)));
        }
        if controllers.is_empty() {
            unified = Some(MemoryCgroup::V2(root.join(relative)));
        }
    }
    unified
}

/// The number after `key ` on its own line of a flat-keyed file (`memory.events`,
/// `memory.oom_control`).
pub fn keyed_value(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

impl MemoryCgroup {
    /// The cgroup of the process `pid` on this host.
    pub fn of_pid(pid: i64) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        parse_proc_cgroup(&text, Path::new("/sys/fs/cgroup"))
    }

    /// Reads the counters; `None` fields where a file is missing (the cgroup is gone, or the
    /// kernel is older than the counter).
    pub fn read(&self) -> MemoryCounters {
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
        match self {
            MemoryCgroup::V1(dir) => MemoryCounters {
                peak_bytes: read(dir, "memory.max_usage_in_bytes")
                    .and_then(|t| t.trim().parse().ok()),
                oom_kills: read(dir, "memory.oom_control")
                    .and_then(|t| keyed_value(&t, "oom_kill")),
            },
            MemoryCgroup::V2(dir) => MemoryCounters {
                peak_bytes: read(dir, "memory.peak").and_then(|t| t.trim().parse().ok()),
                oom_kills: read(dir, "memory.events").and_then(|t| keyed_value(&t, "oom_kill")),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_controller_wins_on_hybrid_hosts_and_v2_is_the_fallback() {
        let root = Path::new("/sys/fs/cgroup");
        let hybrid = "12:pids:/docker/abc\n4:memory:/docker/abc\n0::/docker/abc\n";
        assert_eq!(
            parse_proc_cgroup(hybrid, root),
            Some(MemoryCgroup::V1(PathBuf::from(
                "/sys/fs/cgroup/memory/docker/abc"
            )))
        );
        let unified = "0::/system.slice/docker-abc.scope\n";
        assert_eq!(
            parse_proc_cgroup(unified, root),
            Some(MemoryCgroup::V2(PathBuf::from(
                "/sys/fs/cgroup/system.slice/docker-abc.scope"
            )))
        );
        assert_eq!(
            parse_proc_cgroup("5:cpu,cpuacct:/x\n", root),
            None,
            "no memory controller and no unified line"
        );
    }

    #[test]
    fn keyed_counters_are_read_by_name() {
        let v1 = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";
        assert_eq!(keyed_value(v1, "oom_kill"), Some(2));
        let v2 = "low 0\nhigh 0\nmax 7\noom 3\noom_kill 1\noom_group_kill 0\n";
        assert_eq!(keyed_value(v2, "oom_kill"), Some(1));
        assert_eq!(keyed_value(v2, "absent"), None);
    }
}
