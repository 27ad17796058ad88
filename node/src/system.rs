//! What the machine has: memory and processor, as Linux reports them.

/// A `key: value kB` line of a /proc file, in bytes.
pub fn proc_kb(file: &str, key: &str) -> Option<u64> {
    let s = std::fs::read_to_string(file).ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Memory the system could give a new process, in bytes (0 where unknown).
pub fn memory_available() -> u64 {
    proc_kb("/proc/meminfo", "MemAvailable:").unwrap_or(0)
}

/// All memory, in bytes (0 where unknown).
pub fn memory_total() -> u64 {
    proc_kb("/proc/meminfo", "MemTotal:").unwrap_or(0)
}

/// The processor's model name.
pub fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
