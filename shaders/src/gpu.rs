//! The wgpu runtime.

/// An adapter wgpu can see, as `baton-node info` lists it.
#[derive(Clone, Debug)]
pub struct AdapterSummary {
    pub name: String,
    pub kind: String,
    pub api: String,
    pub software: bool,
    pub max_buffer_bytes: u64,
    pub shader_f16: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no suitable GPU adapter found")]
    NoAdapter,
}

pub fn list_adapters() -> Vec<AdapterSummary> {
    Vec::new()
}
