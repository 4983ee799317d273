//! Readers of `/proc`: CPU seconds and resident memory of the measured
//! processes (server instances, redis, the loadgen itself) and machine-wide
//! CPU. Missing or unreadable files give `None`, never an error: a server
//! that died is reported, not fatal to the report.

use std::fs;
use std::process::Command;
use std::sync::OnceLock;

/// Kernel clock ticks per second (`getconf CLK_TCK`, 100 on every Linux
/// this runs on). Asked once without libc, since unsafe code is forbidden.
pub fn ticks_per_s() -> f64 {
    static TCK: OnceLock<f64> = OnceLock::new();
    *TCK.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .filter(|v| *v > 0.0)
            .unwrap_or(100.0)
    })
}

/// Which process to read: one by pid, or the loadgen itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proc {
    Pid(u32),
    Myself,
}

impl Proc {
    fn path(self, file: &str) -> String {
        match self {
            Proc::Pid(pid) => format!("/proc/{pid}/{file}"),
            Proc::Myself => format!("/proc/self/{file}"),
        }
    }

    /// utime + stime of all threads, in seconds.
    pub fn cpu_s(self) -> Option<f64> {
        let stat = fs::read_to_string(self.path("stat")).ok()?;
        let ticks = parse_cpu_ticks(&stat)?;
        Some(ticks as f64 / ticks_per_s())
    }

    /// VmRSS in bytes.
    pub fn rss_bytes(self) -> Option<u64> {
        let status = fs::read_to_string(self.path("status")).ok()?;
        parse_status_kb(&status, "VmRSS:").map(|kb| kb * 1024)
    }

    /// The soft limit on open files, from `/proc/PID/limits`.
    pub fn nofile_soft(self) -> Option<u64> {
        let limits = fs::read_to_string(self.path("limits")).ok()?;
        let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }
}

/// utime (field 14) + stime (field 15) of a `/proc/PID/stat` line. The
/// command name (field 2) may contain spaces and parentheses, so fields are
/// counted from the last `)`.
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn parse_status_kb(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    line.get(key.len()..)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Machine-wide CPU: busy and total jiffies over all cores.
#[derive(Debug, Clone, Copy, Default)]
pub struct MachineCpu {
    pub busy: u64,
    pub total: u64,
}

impl MachineCpu {
    pub fn read() -> Option<MachineCpu> {
        let stat = fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let v: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|x| x.parse().ok())
            .collect();
        if v.len() < 5 {
            return None;
        }
        // user nice system idle iowait irq softirq steal
        let total: u64 = v.iter().sum();
        let idle = v[3] + v[4];
        Some(MachineCpu {
            busy: total.saturating_sub(idle),
            total,
        })
    }

    /// Percent busy of all cores between two readings (0-100).
    pub fn busy_pct_since(self, earlier: MachineCpu) -> Option<f64> {
        let total = self.total.checked_sub(earlier.total)?;
        let busy = self.busy.checked_sub(earlier.busy)?;
        (total > 0).then(|| 100.0 * busy as f64 / total as f64)
    }
}

/// CPU seconds of a set of processes at one instant, to subtract later.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    pub servers: Vec<Option<f64>>,
    pub extra: Vec<Option<f64>>,
    pub loadgen: Option<f64>,
    pub machine: Option<MachineCpu>,
}

impl CpuSnapshot {
    pub fn take(servers: &[Proc], extra: &[Proc]) -> CpuSnapshot {
        CpuSnapshot {
            servers: servers.iter().map(|p| p.cpu_s()).collect(),
            extra: extra.iter().map(|p| p.cpu_s()).collect(),
            loadgen: Proc::Myself.cpu_s(),
            machine: MachineCpu::read(),
        }
    }
}

/// CPU seconds used between two snapshots.
#[derive(Debug, Clone, Default)]
pub struct CpuUsed {
    pub servers: Vec<Option<f64>>,
    pub extra: Vec<Option<f64>>,
    pub loadgen: Option<f64>,
    pub machine_busy_pct: Option<f64>,
}

impl CpuUsed {
    pub fn between(a: &CpuSnapshot, b: &CpuSnapshot) -> CpuUsed {
        let diff = |x: &[Option<f64>], y: &[Option<f64>]| {
            x.iter()
                .zip(y)
                .map(|(x, y)| Some((y.as_ref()? - x.as_ref()?).max(0.0)))
                .collect()
        };
        CpuUsed {
            servers: diff(&a.servers, &b.servers),
            extra: diff(&a.extra, &b.extra),
            loadgen: a.loadgen.zip(b.loadgen).map(|(x, y)| (y - x).max(0.0)),
            machine_busy_pct: a
                .machine
                .zip(b.machine)
                .and_then(|(x, y)| y.busy_pct_since(x)),
        }
    }

    /// Sum over the server instances, `None` if any could not be read.
    pub fn servers_total(&self) -> Option<f64> {
        self.servers.iter().copied().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_command_with_spaces() {
        let line = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 250 70 0 0 20 0 1 0";
        assert_eq!(parse_cpu_ticks(line), Some(320));
    }

    #[test]
    fn status_rss() {
        let s = "Name:\tx\nVmPeak:\t  10 kB\nVmRSS:\t    2048 kB\n";
        assert_eq!(parse_status_kb(s, "VmRSS:"), Some(2048));
    }
}
