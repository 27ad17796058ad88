//! `baton-node info`: the backends and devices found.

use clap::Args;

#[derive(Args)]
pub struct InfoArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> anyhow::Result<()> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = baton_node::system::memory_total();
    let adapters = baton_shaders::gpu::list_adapters();
    if a.json {
        let doc = serde_json::json!({
            "cpu": {"name": baton_node::system::cpu_name(), "threads": threads, "memory_bytes": mem},
            "wgpu": adapters.iter().map(|d| serde_json::json!({
                "name": d.name, "kind": d.kind, "api": d.api, "software": d.software,
                "max_buffer_bytes": d.max_buffer_bytes, "shader_f16": d.shader_f16,
            })).collect::<Vec<_>>(),
        });
        println!("{doc}");
        return Ok(());
    }
    println!("backends:");
    println!(
        "  cpu    {} — {threads} threads, {:.1} GiB memory",
        baton_node::system::cpu_name(),
        mem as f64 / (1u64 << 30) as f64
    );
    if adapters.is_empty() {
        println!("  wgpu   no adapter found (install Vulkan drivers, e.g. mesa-vulkan-drivers)");
    }
    for d in &adapters {
        println!(
            "  wgpu   {} — {} via {}{}, largest buffer {:.1} GiB, shader-f16 {}",
            d.name,
            d.kind,
            d.api,
            if d.software {
                " (software; used only with --backend wgpu)"
            } else {
                ""
            },
            d.max_buffer_bytes as f64 / (1u64 << 30) as f64,
            if d.shader_f16 { "yes" } else { "no" },
        );
    }
    Ok(())
}
