// Element-wise kernels over n = a values, dispatched on a 2-D grid of 64-wide workgroups.

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read> y: array<f32>;

fn index(gid: vec3<u32>, nw: vec3<u32>) -> u32 {
    return gid.y * nw.x * 64u + gid.x;
}

// x = silu(x) · y
@compute @workgroup_size(64)
fn silu_mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(gid, nw);
    if (i >= p.a) { return; }
    let g = x[i];
    x[i] = g / (1.0 + exp(-g)) * y[i];
}

// x = x + y
@compute @workgroup_size(64)
fn add(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(gid, nw);
    if (i >= p.a) { return; }
    x[i] = x[i] + y[i];
}
