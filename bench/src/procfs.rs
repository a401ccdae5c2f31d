//! Reading a process's memory and CPU time from `/proc` (Linux).

use anyhow::{Context, Result};

/// Clock ticks per second of `/proc/<pid>/stat` times. `USER_HZ` is 100 on
/// every mainstream Linux architecture, and reading it properly needs
/// `sysconf`, i.e. `unsafe`, which the workspace forbids.
const USER_HZ: f64 = 100.0;

/// A `kB` field (e.g. `VmRSS`) of `/proc/<pid>/status`.
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_status_kib(&text, field).with_context(|| format!("no {field} in {path}"))
}

fn parse_status_kib(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().trim_end_matches("kB").trim().parse().ok()
    })
}

/// User + system CPU seconds a process has used so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_stat_cpu(&text).with_context(|| format!("unexpected format of {path}"))
}

fn parse_stat_cpu(stat: &str) -> Option<f64> {
    // The command name (field 2) may contain spaces; fields after it are plain.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// The soft limit on open files of this process, from `/proc/self/limits`.
pub fn open_files_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// CPU used by the relay (when its pids are known: several processes are
/// summed) and by this process over a run.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    relay_pids: Vec<u32>,
    relay_start: Option<f64>,
    own_start: Option<f64>,
}

/// The summed CPU seconds of `pids`, or `None` if any cannot be read (a
/// partial sum would look like a lower figure, not a missing one).
fn cpu_seconds_sum(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|&p| cpu_seconds(p).ok()).sum()
}

impl CpuMeter {
    /// Start counting.
    pub fn start(relay_pids: &[u32]) -> Self {
        Self {
            relay_pids: relay_pids.to_vec(),
            relay_start: cpu_seconds_sum(relay_pids),
            own_start: cpu_seconds(std::process::id()).ok(),
        }
    }

    /// Add `relay_cpu_seconds` (summed over the relay processes) and
    /// `bench_cpu_seconds` used since `start`.
    pub fn report(&self, report: &mut crate::stats::Report) {
        if let (Some(start), Some(now)) = (self.relay_start, cpu_seconds_sum(&self.relay_pids)) {
            report.add("relay_cpu_seconds", now - start);
            if self.relay_pids.len() > 1 {
                report.add("relay_processes", self.relay_pids.len() as u64);
            }
        }
        if let (Some(start), Ok(now)) = (self.own_start, cpu_seconds(std::process::id())) {
            report.add("bench_cpu_seconds", now - start);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_status_fields() {
        let status = "Name:\tcairn\nVmHWM:\t  123456 kB\nVmRSS:\t   98765 kB\nThreads:\t4\n";
        assert_eq!(parse_status_kib(status, "VmRSS"), Some(98_765));
        assert_eq!(parse_status_kib(status, "VmHWM"), Some(123_456));
        assert_eq!(parse_status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn parses_cpu_times_even_with_spaces_in_the_name() {
        let stat = "4242 (tokio rt) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0";
        assert_eq!(parse_stat_cpu(stat), Some(3.0));
    }

    #[test]
    fn reads_own_process() {
        assert!(status_kib(std::process::id(), "VmRSS").expect("own status") > 0);
        assert!(cpu_seconds(std::process::id()).expect("own stat") >= 0.0);
        assert!(open_files_limit().expect("limits") > 0);
    }
}
