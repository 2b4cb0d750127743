//! Reading the machine: the environment facts stored with a result (kernel, CPU, memory,
//! host, date, git commit) and the resource samples taken during a run from /proc (a
//! process's RSS and CPU time, the kernel's TCP socket memory and slab size). Linux only;
//! every figure is optional, so a missing file degrades to "unknown" instead of failing.

use std::time::SystemTime;

use serde::{Deserialize, Serialize};

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

/// A `Key:   value kB` line of a /proc status-like file, in bytes.
fn kb_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kb| kb * 1024)
}

fn proc_dir(pid: Option<u32>) -> String {
    pid.map_or_else(|| "/proc/self".to_string(), |p| format!("/proc/{p}"))
}

/// Resident set size of a process (this one when `pid` is None).
pub fn rss_bytes(pid: Option<u32>) -> Option<u64> {
    kb_field(&read(&format!("{}/status", proc_dir(pid)))?, "VmRSS")
}

/// User plus system CPU time of a process, in microseconds.
pub fn cpu_us(pid: Option<u32>) -> Option<u64> {
    let stat = read(&format!("{}/stat", proc_dir(pid)))?;
    // Fields after the command name, which is parenthesised and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let ticks = u64::try_from(ticks).ok().filter(|&t| t > 0)?;
    Some((utime + stime) * 1_000_000 / ticks)
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    u64::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096)
}

/// Kernel memory that grows with sockets: TCP buffer pages (`/proc/net/sockstat`, this
/// network namespace) and the slab (`/proc/meminfo`, which holds socket structures).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelMem {
    pub tcp_mem_bytes: Option<u64>,
    pub tcp_inuse: Option<u64>,
    pub slab_bytes: Option<u64>,
}

pub fn kernel_mem() -> KernelMem {
    let mut k = KernelMem::default();
    if let Some(sockstat) = read("/proc/net/sockstat") {
        if let Some(tcp) = sockstat.lines().find_map(|l| l.strip_prefix("TCP:")) {
            let words: Vec<&str> = tcp.split_whitespace().collect();
            let value = |key: &str| {
                let i = words.iter().position(|w| *w == key)?;
                words.get(i + 1)?.parse::<u64>().ok()
            };
            k.tcp_mem_bytes = value("mem").map(|pages| pages * page_size());
            k.tcp_inuse = value("inuse");
        }
    }
    k.slab_bytes = read("/proc/meminfo").and_then(|m| kb_field(&m, "Slab"));
    k
}

impl KernelMem {
    pub fn total(&self) -> Option<u64> {
        Some(self.tcp_mem_bytes? + self.slab_bytes?)
    }
}

/// One resource sample (see `result::Resources` for when they are taken).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub loadgen_rss_bytes: Option<u64>,
    pub loadgen_cpu_us: Option<u64>,
    pub server_rss_bytes: Option<u64>,
    pub server_cpu_us: Option<u64>,
    pub kernel: KernelMem,
    /// Streams open and events received when the sample was taken.
    pub open: u64,
    pub events: u64,
    /// Published events received (publish mode; absent from older files).
    #[serde(default)]
    pub publish_events: u64,
}

pub fn sample(server_pid: Option<u32>, open: u64, events: u64) -> Sample {
    Sample {
        loadgen_rss_bytes: rss_bytes(None),
        loadgen_cpu_us: cpu_us(None),
        server_rss_bytes: server_pid.and_then(|p| rss_bytes(Some(p))),
        server_cpu_us: server_pid.and_then(|p| cpu_us(Some(p))),
        kernel: kernel_mem(),
        open,
        events,
        publish_events: 0,
    }
}

/// Facts about the machine and the run, stored with every result.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    pub hostname: Option<String>,
    pub kernel_release: Option<String>,
    pub cpu_model: Option<String>,
    pub cores: usize,
    pub memory_bytes: Option<u64>,
    /// RFC 3339, UTC, when the run started.
    pub date: String,
    pub loadgen_version: String,
    /// "uring", "epoll" or "mixed" when cores ended up on different drivers.
    pub loadgen_driver: String,
    pub loadgen_threads: usize,
    pub git_commit: Option<String>,
    pub label: Option<String>,
}

pub fn environment(label: Option<String>) -> Environment {
    let trimmed = |s: String| s.trim().to_string();
    Environment {
        hostname: read("/proc/sys/kernel/hostname").map(trimmed),
        kernel_release: read("/proc/sys/kernel/osrelease").map(trimmed),
        cpu_model: read("/proc/cpuinfo").and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")?
                    .split_once(':')
                    .map(|(_, v)| v.trim().to_string())
            })
        }),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        memory_bytes: read("/proc/meminfo").and_then(|m| kb_field(&m, "MemTotal")),
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        loadgen_version: env!("CARGO_PKG_VERSION").to_string(),
        loadgen_driver: String::new(),
        loadgen_threads: 0,
        git_commit: option_env!("RINGCAST_GIT_COMMIT").map(str::to_string),
        label,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_and_kernel() {
        assert!(rss_bytes(None).is_some_and(|r| r > 0));
        assert!(cpu_us(None).is_some());
        let k = kernel_mem();
        assert!(k.tcp_inuse.is_some() && k.slab_bytes.is_some());
        assert_eq!(rss_bytes(Some(u32::MAX)), None);
    }

    #[test]
    fn kb_fields() {
        let text = "Name:\tx\nVmRSS:\t  1234 kB\nSlab:  7 kB\n";
        assert_eq!(kb_field(text, "VmRSS"), Some(1234 * 1024));
        assert_eq!(kb_field(text, "Slab"), Some(7 * 1024));
        assert_eq!(kb_field(text, "VmSwap"), None);
    }

    #[test]
    fn environment_has_the_basics() {
        let env = environment(Some("t".into()));
        assert!(env.cores >= 1);
        assert!(env.kernel_release.is_some());
        assert!(env.date.ends_with('Z'));
        assert_eq!(env.label.as_deref(), Some("t"));
    }
}
