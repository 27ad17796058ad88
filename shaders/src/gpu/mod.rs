//! The wgpu runtime: adapter choice, the device, a pipeline cache, buffers, and batched
//! submission. [`kernels`] holds one dispatch function per WGSL kernel.
//!
//! Work is recorded into one command encoder and submitted only when a result must be read back,
//! so that the layers of a span run back to back on the GPU.

mod kernels;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use crate::quant::{DType, QTensor};

#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error("no GPU adapter found{0}")]
    NoAdapter(&'static str),
    #[error("cannot open the GPU device: {0}")]
    Device(String),
    #[error("the GPU reported: {0}")]
    Runtime(String),
    #[error("a {rows}x{cols} {dtype} weight has rows of {row_bytes} bytes, more than one buffer binding ({max} bytes) holds")]
    RowTooLarge {
        rows: usize,
        cols: usize,
        dtype: &'static str,
        row_bytes: usize,
        max: u64,
    },
    #[error("head dimension {0} is not an even number up to 1024, as the attention kernel needs")]
    HeadDim(usize),
    #[error(
        "{0} values per head: the attention kernel takes up to 512, no more than a key holds, \
         and a latent cache of one KV head"
    )]
    ValueDim(usize),
}

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

fn instance() -> wgpu::Instance {
    wgpu::Instance::new(wgpu::InstanceDescriptor {
        backends: wgpu::Backends::PRIMARY,
        ..wgpu::InstanceDescriptor::new_without_display_handle_from_env()
    })
}

fn is_software(info: &wgpu::AdapterInfo) -> bool {
    info.device_type == wgpu::DeviceType::Cpu
}

fn summary(a: &wgpu::Adapter) -> AdapterSummary {
    let info = a.get_info();
    AdapterSummary {
        name: info.name.clone(),
        kind: format!("{:?}", info.device_type),
        api: format!("{:?}", info.backend),
        software: is_software(&info),
        max_buffer_bytes: a.limits().max_buffer_size,
        shader_f16: a.features().contains(wgpu::Features::SHADER_F16),
    }
}

pub fn list_adapters() -> Vec<AdapterSummary> {
    pollster::block_on(instance().enumerate_adapters(wgpu::Backends::PRIMARY))
        .iter()
        .map(summary)
        .collect()
}

/// Whether a real (hardware) GPU adapter is present: what `--backend auto` asks.
pub fn hardware_adapter_present() -> bool {
    list_adapters().iter().any(|a| !a.software)
}

/// Options for opening the device.
#[derive(Clone, Debug, Default)]
pub struct GpuOptions {
    /// Accept a software adapter (lavapipe) when no GPU is present.
    pub allow_software: bool,
    /// Use at most this many bytes per storage binding (to test weight splitting).
    pub max_binding: Option<u64>,
}

/// How a KV cache stores keys and values, in 32-bit words. The discriminant is the kernels'
/// DTYPE code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvFormat {
    F32 = 0,
    /// Two f16 values per word: half the memory and bandwidth of f32.
    #[default]
    F16 = 1,
}

impl KvFormat {
    /// 32-bit words that hold `elements` values.
    pub fn words(self, elements: usize) -> usize {
        match self {
            KvFormat::F32 => elements,
            KvFormat::F16 => elements.div_ceil(2),
        }
    }
}

/// An f32 tensor on the GPU.
pub struct GpuTensor {
    pub buf: wgpu::Buffer,
    pub len: usize,
}

/// A weight matrix on the GPU in its stored format, split into row ranges that each fit one
/// storage binding.
pub struct GpuMatrix {
    pub dtype: DType,
    pub rows: usize,
    pub cols: usize,
    pub row_bytes: usize,
    /// (buffer, first row, rows)
    pub parts: Vec<(wgpu::Buffer, usize, usize)>,
}

impl GpuMatrix {
    pub fn bytes(&self) -> usize {
        self.rows * self.row_bytes
    }
}

const PARAM_SLOT: u64 = 256;
const PARAM_SLOTS: u64 = 1024;
/// Workgroups per grid dimension that every adapter accepts.
const MAX_GROUPS: u32 = 65535;

struct Pending {
    encoder: wgpu::CommandEncoder,
    params_used: u64,
}

pub struct Gpu {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub info: wgpu::AdapterInfo,
    pub max_binding: u64,
    pipelines: Mutex<HashMap<(&'static str, u32), wgpu::ComputePipeline>>,
    params: wgpu::Buffer,
    pending: Mutex<Option<Pending>>,
}

impl Gpu {
    pub fn new(opts: &GpuOptions) -> Result<Arc<Gpu>, GpuError> {
        let adapters = pollster::block_on(instance().enumerate_adapters(wgpu::Backends::PRIMARY));
        let rank = |a: &wgpu::Adapter| match a.get_info().device_type {
            wgpu::DeviceType::DiscreteGpu => 0,
            wgpu::DeviceType::IntegratedGpu => 1,
            wgpu::DeviceType::VirtualGpu | wgpu::DeviceType::Other => 2,
            wgpu::DeviceType::Cpu => 3,
        };
        let adapter = adapters
            .into_iter()
            .filter(|a| opts.allow_software || !is_software(&a.get_info()))
            .min_by_key(rank)
            .ok_or(GpuError::NoAdapter(if opts.allow_software {
                " (install Vulkan drivers, e.g. mesa-vulkan-drivers)"
            } else {
                "; software adapters are used only with --backend wgpu"
            }))?;
        let limits = adapter.limits();
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("baton"),
            required_features: wgpu::Features::empty(),
            required_limits: limits.clone(),
            ..Default::default()
        }))
        .map_err(|e| GpuError::Device(e.to_string()))?;
        let max_binding = (limits.max_storage_buffer_binding_size as u64)
            .min(limits.max_buffer_size)
            .min(opts.max_binding.unwrap_or(u64::MAX));
        let params = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("params"),
            size: PARAM_SLOT * PARAM_SLOTS,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Ok(Arc::new(Gpu {
            device,
            queue,
            info: adapter.get_info(),
            max_binding,
            pipelines: Mutex::new(HashMap::new()),
            params,
            pending: Mutex::new(None),
        }))
    }

    pub fn describe(&self) -> String {
        format!("wgpu {} ({:?})", self.info.name, self.info.backend)
    }

    fn storage(&self, size: u64, label: &str) -> wgpu::Buffer {
        self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some(label),
            size: size.max(4),
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_SRC
                | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        })
    }

    pub fn zeros(&self, len: usize) -> GpuTensor {
        GpuTensor {
            buf: self.storage(len as u64 * 4, "tensor"),
            len,
        }
    }

    fn init(&self, bytes: &[u8], label: &str) -> wgpu::Buffer {
        let mut padded;
        let data = if bytes.len().is_multiple_of(4) && !bytes.is_empty() {
            bytes
        } else {
            padded = bytes.to_vec();
            padded.resize(bytes.len().div_ceil(4).max(1) * 4, 0);
            &padded
        };
        self.device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some(label),
                contents: data,
                usage: wgpu::BufferUsages::STORAGE
                    | wgpu::BufferUsages::COPY_SRC
                    | wgpu::BufferUsages::COPY_DST,
            })
    }

    pub fn upload(&self, data: &[f32]) -> GpuTensor {
        GpuTensor {
            buf: self.init(bytemuck::cast_slice(data), "tensor"),
            len: data.len(),
        }
    }

    pub fn upload_u32(&self, data: &[u32]) -> wgpu::Buffer {
        self.init(bytemuck::cast_slice(data), "ids")
    }

    /// Uploads a weight in its stored format, split by rows so that each part fits a binding
    /// and a dispatch grid.
    pub fn upload_matrix(&self, q: &QTensor) -> Result<GpuMatrix, GpuError> {
        let row_bytes = q.row_bytes();
        let by_binding = (self.max_binding / row_bytes.max(1) as u64) as usize;
        if by_binding == 0 {
            return Err(GpuError::RowTooLarge {
                rows: q.rows,
                cols: q.cols,
                dtype: q.dtype.name(),
                row_bytes,
                max: self.max_binding,
            });
        }
        let per_part = by_binding.min(MAX_GROUPS as usize);
        let mut parts = Vec::new();
        let mut r0 = 0;
        while r0 < q.rows {
            let n = per_part.min(q.rows - r0);
            let slice = q.rows(r0, r0 + n);
            parts.push((self.init(slice.data, "weight"), r0, n));
            r0 += n;
        }
        Ok(GpuMatrix {
            dtype: q.dtype,
            rows: q.rows,
            cols: q.cols,
            row_bytes,
            parts,
        })
    }

    fn pipeline(&self, name: &'static str, dtype: u32) -> wgpu::ComputePipeline {
        let mut cache = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = cache.get(&(name, dtype)) {
            return p.clone();
        }
        let (file, entry) = kernels::source(name);
        let mut src = String::from(kernels::COMMON);
        if kernels::reads_weights(name) {
            src.push_str(kernels::DEQUANT);
        }
        src.push_str(file);
        let module = self
            .device
            .create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some(name),
                source: wgpu::ShaderSource::Wgsl(src.into()),
            });
        let constants = [("DTYPE", dtype as f64)];
        let pipeline = self
            .device
            .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                label: Some(name),
                layout: None,
                module: &module,
                entry_point: Some(entry),
                compilation_options: wgpu::PipelineCompilationOptions {
                    constants: &constants,
                    ..Default::default()
                },
                cache: None,
            });
        cache.insert((name, dtype), pipeline.clone());
        pipeline
    }

    fn with_encoder<R>(&self, f: impl FnOnce(&mut Pending) -> R) -> R {
        let mut guard = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        let pending = guard.get_or_insert_with(|| Pending {
            encoder: self.new_encoder(),
            params_used: 0,
        });
        f(pending)
    }

    fn new_encoder(&self) -> wgpu::CommandEncoder {
        self.device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor { label: None })
    }

    /// Records one dispatch of `name` with its parameters and storage bindings 1, 2, ….
    fn dispatch(
        &self,
        name: &'static str,
        dtype: u32,
        params: [u32; 8],
        buffers: &[&wgpu::Buffer],
        groups: (u32, u32),
    ) {
        if groups.0 == 0 || groups.1 == 0 {
            return;
        }
        let pipeline = self.pipeline(name, dtype);
        // The slot is checked and taken under one lock: sessions on other threads record into
        // the same encoder.
        self.with_encoder(|p| {
            if p.params_used >= PARAM_SLOTS {
                let full = std::mem::replace(&mut p.encoder, self.new_encoder());
                self.queue.submit([full.finish()]);
                p.params_used = 0;
            }
            let offset = p.params_used * PARAM_SLOT;
            p.params_used += 1;
            self.queue
                .write_buffer(&self.params, offset, bytemuck::cast_slice(&params));
            let mut entries = vec![wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &self.params,
                    offset,
                    size: wgpu::BufferSize::new(32),
                }),
            }];
            for (i, b) in buffers.iter().enumerate() {
                entries.push(wgpu::BindGroupEntry {
                    binding: i as u32 + 1,
                    resource: b.as_entire_binding(),
                });
            }
            let bind = self.device.create_bind_group(&wgpu::BindGroupDescriptor {
                label: None,
                layout: &pipeline.get_bind_group_layout(0),
                entries: &entries,
            });
            let mut pass = p
                .encoder
                .begin_compute_pass(&wgpu::ComputePassDescriptor::default());
            pass.set_pipeline(&pipeline);
            pass.set_bind_group(0, &bind, &[]);
            pass.dispatch_workgroups(groups.0, groups.1, 1);
        });
    }

    /// Copies `len` f32 values between buffers, in order with the recorded dispatches.
    pub fn copy(
        &self,
        src: &wgpu::Buffer,
        src_at: usize,
        dst: &wgpu::Buffer,
        dst_at: usize,
        len: usize,
    ) {
        if len == 0 {
            return;
        }
        self.with_encoder(|p| {
            p.encoder.copy_buffer_to_buffer(
                src,
                src_at as u64 * 4,
                dst,
                dst_at as u64 * 4,
                len as u64 * 4,
            )
        });
    }

    /// Submits everything recorded so far. The submit happens under the encoder's lock: a
    /// thread that took the encoder and submitted it after releasing the lock would let a later
    /// encoder (another thread's readback) reach the queue before the work recorded ahead of it,
    /// and let that thread's parameter writes land in this encoder's slots.
    pub fn flush(&self) {
        let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = pending.take() {
            self.queue.submit([p.encoder.finish()]);
        }
    }

    /// Reads a tensor back, after everything recorded before it.
    pub fn download(&self, t: &GpuTensor) -> Result<Vec<f32>, GpuError> {
        let size = t.len as u64 * 4;
        if size == 0 {
            return Ok(Vec::new());
        }
        let staging = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        self.with_encoder(|p| {
            p.encoder
                .copy_buffer_to_buffer(&t.buf, 0, &staging, 0, size)
        });
        self.flush();
        let slice = staging.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| GpuError::Runtime(e.to_string()))?;
        rx.recv()
            .map_err(|e| GpuError::Runtime(e.to_string()))?
            .map_err(|e| GpuError::Runtime(e.to_string()))?;
        let out = bytemuck::cast_slice::<u8, f32>(&slice.get_mapped_range()).to_vec();
        staging.unmap();
        Ok(out)
    }
}

/// A 2-D grid of 64-wide workgroups covering `n` invocations, within the per-dimension limit.
fn grid_1d(n: usize) -> (u32, u32) {
    let groups = n.div_ceil(64) as u32;
    if groups <= MAX_GROUPS {
        (groups, 1)
    } else {
        (MAX_GROUPS, groups.div_ceil(MAX_GROUPS))
    }
}
