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

// x = gelu(x) · y, GELU's tanh approximation
@compute @workgroup_size(64)
fn gelu_mul(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(gid, nw);
    if (i >= p.a) { return; }
    let g = x[i];
    // tanh(u) = 1 - 2 / (exp(2u) + 1), written so that large |u| saturates instead of overflowing.
    let u = clamp(0.7978846 * (g + 0.044715 * g * g * g), -15.0, 15.0);
    let th = 1.0 - 2.0 / (exp(2.0 * u) + 1.0);
    x[i] = 0.5 * g * (1.0 + th) * y[i];
}

// x[t] = x[t] + y for every row t, y of b values (a bias)
@compute @workgroup_size(64)
fn add_rows(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(gid, nw);
    if (i >= p.a) { return; }
    x[i] = x[i] + y[i % p.b];
}

// x = x · s, s = b (f32 bits); y is bound but not read
@compute @workgroup_size(64)
fn scale(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = index(gid, nw);
    if (i >= p.a) { return; }
    x[i] = x[i] * bitcast<f32>(p.b);
}
