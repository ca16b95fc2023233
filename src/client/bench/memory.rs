//! Peak resident memory of benchmark processes, from Linux's `/proc`: reset before a
//! run, read after it, so each run's figure is its own.

use serde::Serialize;

/// The peak resident memory of one process during a run.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessPeak {
    /// What the process was ("scheduler", "executor 1", "datafusion" …).
    pub process: String,
    /// Its peak resident set, in bytes.
    pub bytes: u64,
}

fn proc_dir(pid: Option<u32>) -> String {
    pid.map_or_else(|| "/proc/self".to_string(), |pid| format!("/proc/{pid}"))
}

/// The peak resident set (VmHWM) of process `pid` (None: this process) since it started
/// or since its last [`reset_peak_rss`]; None where `/proc` does not say.
pub fn peak_rss(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("{}/status", proc_dir(pid))).ok()?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Sets the peak resident set of process `pid` (None: this process) back to what it
/// holds now (Linux `clear_refs` 5); false where that is not allowed.
pub fn reset_peak_rss(pid: Option<u32>) -> bool {
    std::fs::write(format!("{}/clear_refs", proc_dir(pid)), "5").is_ok()
}

/// Bytes as MiB with one decimal.
pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_grows_with_memory_touched_and_resets_to_what_is_held() {
        let before = peak_rss(None).expect("VmHWM of this process");
        let block = vec![1u8; 64 << 20];
        std::hint::black_box(&block);
        let during = peak_rss(None).unwrap();
        assert!(during >= before + (60 << 20), "{before} -> {during}");
        drop(block);
        if reset_peak_rss(None) {
            let after = peak_rss(None).unwrap();
            assert!(after < during, "{during} -> {after}");
        }
    }
}
