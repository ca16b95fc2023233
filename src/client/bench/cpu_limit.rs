//! A cap on the CPU a process may use, from a Linux control group of its own (cgroup v2
//! `cpu.max`, or v1 `cpu.cfs_quota_us`): how benchmarks and tests make one executor a
//! slow machine. Needs root; removed again when dropped.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The scheduling period the quota is a share of.
const PERIOD_MICROS: u64 = 100_000;

/// A process held to a share of one core.
#[derive(Debug)]
pub struct CpuLimit {
    group: PathBuf,
    /// The cgroup the process goes back to, v1 or v2.
    parent: PathBuf,
    pid: u32,
}

impl CpuLimit {
    /// Holds process `pid` to `cores` of CPU (0.25: a quarter of one core).
    pub fn apply(pid: u32, cores: f64) -> Result<Self, String> {
        let quota = ((cores * PERIOD_MICROS as f64) as u64).max(1_000);
        let name = format!("baton-slow-{pid}");
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers");
        let v2_unified = Path::new("/sys/fs/cgroup/unified/cgroup.controllers");
        let v1 = Path::new("/sys/fs/cgroup/cpu/cpu.cfs_quota_us");
        let limit = if v1.exists() {
            let parent = PathBuf::from("/sys/fs/cgroup/cpu");
            let group = parent.join(&name);
            make_group(&group)?;
            write(&group.join("cpu.cfs_period_us"), &PERIOD_MICROS.to_string())?;
            write(&group.join("cpu.cfs_quota_us"), &quota.to_string())?;
            Self { group, parent, pid }
        } else if v2.exists() || v2_unified.exists() {
            let parent = v2
                .parent()
                .filter(|_| v2.exists())
                .unwrap_or(Path::new("/sys/fs/cgroup/unified"));
            let parent = parent.to_path_buf();
            // The cpu controller must be on for the children of the root.
            let _ = write(&parent.join("cgroup.subtree_control"), "+cpu");
            let group = parent.join(&name);
            make_group(&group)?;
            write(&group.join("cpu.max"), &format!("{quota} {PERIOD_MICROS}"))?;
            Self { group, parent, pid }
        } else {
            return Err("no cgroup cpu controller at /sys/fs/cgroup".into());
        };
        write(&limit.group.join("cgroup.procs"), &pid.to_string())?;
        Ok(limit)
    }
}

impl Drop for CpuLimit {
    fn drop(&mut self) {
        // A live process goes back to the parent group; an empty group can be removed.
        let _ = std::fs::write(self.parent.join("cgroup.procs"), self.pid.to_string());
        for _ in 0..50 {
            if std::fs::remove_dir(&self.group).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        tracing::warn!(group = %self.group.display(), "could not remove the cgroup");
    }
}

fn make_group(group: &Path) -> Result<(), String> {
    match std::fs::create_dir(group) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(format!(
            "creating cgroup {} (needs root): {e}",
            group.display()
        )),
    }
}

fn write(path: &Path, value: &str) -> Result<(), String> {
    std::fs::write(path, value).map_err(|e| format!("writing {value} to {}: {e}", path.display()))
}
