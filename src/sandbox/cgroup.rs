//! A running container's memory counters, read from its cgroup on the host: the kernel's own
//! high-water mark and OOM-kill count, which Docker's once-a-second stats miss (a memory bomb
//! peaks and dies between two samples). cgroup v1 (`memory.max_usage_in_bytes`,
//! `memory.oom_control`) and v2 (`memory.peak`, `memory.events`). Also its CPU counters: time
//! used and CFS periods throttled (v1 `cpuacct.usage` and `cpu.stat`, v2 `cpu.stat`).
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
    match controller_dir(text, root, "memory")? {
        (dir, true) => Some(MemoryCgroup::V1(dir)),
        (dir, false) => Some(MemoryCgroup::V2(dir)),
    }
}

/// The directory of `controller` for a `/proc/<pid>/cgroup` text, and whether it is a v1
/// hierarchy (mounted under the controllers' joined names, `cpu,cpuacct`).
fn controller_dir(text: &str, root: &Path, controller: &str) -> Option<(PathBuf, bool)> {
    let mut unified = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let relative = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == controller) {
            let mount = if controller == "memory" {
                "memory".to_owned()
            } else {
                controllers.to_owned()
            };
            return Some((root.join(mount).join(relative), true));
        }
        if controllers.is_empty() {
            unified = Some((root.join(relative), false));
        }
    }
    unified
}

/// What one read of the CPU counters found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuCounters {
    /// CPU time used since the cgroup was created, in nanoseconds.
    pub usage_ns: Option<u64>,
    /// CFS enforcement periods elapsed, and those in which the cgroup was throttled.
    pub periods: Option<u64>,
    pub throttled_periods: Option<u64>,
}

/// Where a cgroup's CPU files are, and in which layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CpuCgroup {
    /// cgroup v1: CPU time is the `cpuacct` controller's, throttling the `cpu` controller's.
    /// They share a hierarchy on most hosts (`cpu,cpuacct`) and have one each on others.
    V1 {
        cpu: PathBuf,
        cpuacct: PathBuf,
    },
    V2(PathBuf),
}

impl CpuCgroup {
    /// The CPU cgroup of the process `pid` on this host.
    pub fn of_pid(pid: i64) -> Option<Self> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        Self::parse(&text, Path::new("/sys/fs/cgroup"))
    }

    fn parse(text: &str, root: &Path) -> Option<Self> {
        match controller_dir(text, root, "cpu")? {
            (cpu, true) => {
                let cpuacct = match controller_dir(text, root, "cpuacct") {
                    Some((dir, true)) => dir,
                    _ => cpu.clone(),
                };
                Some(CpuCgroup::V1 { cpu, cpuacct })
            }
            (dir, false) => Some(CpuCgroup::V2(dir)),
        }
    }

    /// Reads the counters; `None` fields where a file is missing.
    pub fn read(&self) -> CpuCounters {
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
        match self {
            CpuCgroup::V1 { cpu, cpuacct } => {
                let stat = read(cpu, "cpu.stat");
                CpuCounters {
                    usage_ns: read(cpuacct, "cpuacct.usage").and_then(|t| t.trim().parse().ok()),
                    periods: stat.as_deref().and_then(|t| keyed_value(t, "nr_periods")),
                    throttled_periods: stat.as_deref().and_then(|t| keyed_value(t, "nr_throttled")),
                }
            }
            CpuCgroup::V2(dir) => {
                let stat = read(dir, "cpu.stat");
                let stat = stat.as_deref();
                CpuCounters {
                    usage_ns: stat
                        .and_then(|t| keyed_value(t, "usage_usec"))
                        .map(|us| us.saturating_mul(1000)),
                    periods: stat.and_then(|t| keyed_value(t, "nr_periods")),
                    throttled_periods: stat.and_then(|t| keyed_value(t, "nr_throttled")),
                }
            }
        }
    }
}

/// The kernel's count of OOM kills on the whole host (`oom_kill` in `/proc/vmstat`, Linux
/// 4.13+). Unlike a container's own counter it outlives the container's cgroup, which the
/// runtime removes right after the exit, often before a 50 ms sample could see the kill and
/// sometimes before the runtime itself reported it (containerd drops the OOM event of a
/// cgroup already deleted). `None` where it cannot be read.
pub fn host_oom_kills() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/vmstat").ok()?;
    keyed_value(&text, "oom_kill")
}

/// The number after `key ` on its own line of a flat-keyed file (`memory.events`,
/// `memory.oom_control`, `/proc/vmstat`).
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
    fn the_cpu_controller_is_found_in_its_joined_v1_hierarchy_or_in_v2() {
        let root = Path::new("/sys/fs/cgroup");
        let hybrid = "4:memory:/docker/abc\n3:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";
        let joined = PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/docker/abc");
        assert_eq!(
            CpuCgroup::parse(hybrid, root),
            Some(CpuCgroup::V1 {
                cpu: joined.clone(),
                cpuacct: joined
            })
        );
        // Hosts that mount each controller on its own hierarchy (as this CI machine does).
        let separate = "4:memory:/docker/abc\n2:cpuacct:/docker/abc\n1:cpu:/docker/abc\n0::/\n";
        assert_eq!(
            CpuCgroup::parse(separate, root),
            Some(CpuCgroup::V1 {
                cpu: PathBuf::from("/sys/fs/cgroup/cpu/docker/abc"),
                cpuacct: PathBuf::from("/sys/fs/cgroup/cpuacct/docker/abc"),
            })
        );
        assert_eq!(
            CpuCgroup::parse("0::/system.slice/docker-abc.scope\n", root),
            Some(CpuCgroup::V2(PathBuf::from(
                "/sys/fs/cgroup/system.slice/docker-abc.scope"
            )))
        );
    }

    #[test]
    fn cpu_counters_are_read_from_either_layout() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpuacct.usage"), "1500000000\n").unwrap();
        std::fs::write(
            dir.path().join("cpu.stat"),
            "nr_periods 40\nnr_throttled 30\nthrottled_time 123\n",
        )
        .unwrap();
        let v1 = CpuCgroup::V1 {
            cpu: dir.path().to_path_buf(),
            cpuacct: dir.path().to_path_buf(),
        }
        .read();
        assert_eq!(
            v1,
            CpuCounters {
                usage_ns: Some(1_500_000_000),
                periods: Some(40),
                throttled_periods: Some(30)
            }
        );
        std::fs::write(
            dir.path().join("cpu.stat"),
            "usage_usec 2000\nuser_usec 1500\nnr_periods 10\nnr_throttled 1\n",
        )
        .unwrap();
        let v2 = CpuCgroup::V2(dir.path().to_path_buf()).read();
        assert_eq!(v2.usage_ns, Some(2_000_000));
        assert_eq!((v2.periods, v2.throttled_periods), (Some(10), Some(1)));
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
