// Appends keys or values to a KV cache held as 32-bit words: f16 pairs packed in a word when
// DTYPE is 1 (half the memory and bandwidth), f32 bits when it is 0.
// a: pairs to store, b: element offset in the cache where they go (even).

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> src: array<f32>;
@group(0) @binding(2) var<storage, read_write> cache: array<u32>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
    let i = gid.y * nw.x * 64u + gid.x;
    if (i >= p.a) { return; }
    let pair = vec2<f32>(src[2u * i], src[2u * i + 1u]);
    if (DTYPE == 1u) {
        cache[p.b / 2u + i] = pack2x16float(pair);
    } else {
        cache[p.b + 2u * i] = bitcast<u32>(pair.x);
        cache[p.b + 2u * i + 1u] = bitcast<u32>(pair.y);
    }
}
