//! The CPU backend: activations in `Vec<f32>`, weights read straight from the memory map.

use baton_shaders::cpu::{self, AttnShape};

use super::kv::{KvLayout, KvPositions};
use super::Backend;
use crate::error::RunError;
use crate::model::TensorRef;

#[derive(Clone, Debug, Default)]
pub struct CpuBackend;

pub struct CpuAct {
    pub data: Vec<f32>,
    pub width: usize,
}

pub struct CpuKv {
    /// Keys and values of positions `at.base..at.end`; no values for a latent cache.
    k: Vec<f32>,
    v: Vec<f32>,
    layout: KvLayout,
    at: KvPositions,
}

impl Backend for CpuBackend {
    type Act = CpuAct;
    type Weight = TensorRef;
    type Vector = Vec<f32>;
    type Kv = CpuKv;

    fn describe(&self) -> String {
        format!("cpu ({} threads)", cpu::pool().threads())
    }

    fn weight(&self, t: &TensorRef) -> Result<TensorRef, RunError> {
        Ok(t.clone())
    }

    fn vector(&self, v: &[f32]) -> Result<Vec<f32>, RunError> {
        Ok(v.to_vec())
    }

    fn kv_cache(
        &self,
        layout: KvLayout,
        _capacity: usize,
        window: usize,
    ) -> Result<CpuKv, RunError> {
        Ok(CpuKv {
            k: Vec::new(),
            v: Vec::new(),
            layout,
            at: KvPositions::new(window),
        })
    }

    fn kv_truncate(&self, kv: &mut CpuKv, tokens: usize) -> Result<(), RunError> {
        kv.at.truncate(tokens)?;
        kv.k.truncate(kv.at.len() * kv.layout.width);
        kv.v.truncate(kv.at.len() * kv.layout.width);
        Ok(())
    }

    fn kv_allocated(&self, kv: &CpuKv) -> usize {
        (kv.k.capacity() + kv.v.capacity()) * 4
    }

    fn kv_fork(&self, kv: &CpuKv, tokens: usize) -> Result<CpuKv, RunError> {
        let at = kv.at.first(tokens)?;
        let n = tokens * kv.layout.width;
        Ok(CpuKv {
            k: kv.k[..n].to_vec(),
            v: kv.v.get(..n).unwrap_or_default().to_vec(),
            layout: kv.layout,
            at,
        })
    }

    fn upload(&self, x: &[f32], width: usize) -> Result<CpuAct, RunError> {
        Ok(CpuAct {
            data: x.to_vec(),
            width,
        })
    }

    fn download(&self, x: &CpuAct) -> Result<Vec<f32>, RunError> {
        Ok(x.data.clone())
    }

    fn tokens(&self, x: &CpuAct) -> usize {
        x.data.len() / x.width
    }

    fn embed(&self, table: &TensorRef, ids: &[u32]) -> Result<CpuAct, RunError> {
        let m = table.matrix()?;
        let mut data = vec![0f32; ids.len() * m.cols];
        for (id, dst) in ids.iter().zip(data.chunks_exact_mut(m.cols)) {
            let id = *id as usize;
            if id >= m.rows {
                return Err(RunError::TokenId {
                    id: id as u32,
                    vocab: m.rows,
                });
            }
            cpu::dequantize_row(m.dtype, m.row(id), dst);
        }
        Ok(CpuAct {
            data,
            width: m.cols,
        })
    }

    fn rmsnorm(&self, x: &CpuAct, w: &Vec<f32>, eps: f32) -> Result<CpuAct, RunError> {
        let mut out = vec![0f32; x.data.len()];
        cpu::rmsnorm(&x.data, w, eps, &mut out);
        Ok(CpuAct {
            data: out,
            width: x.width,
        })
    }

    fn linear(
        &self,
        ws: &[&TensorRef],
        x: &CpuAct,
        decode: usize,
    ) -> Result<Vec<CpuAct>, RunError> {
        Ok(self
            .linear_groups(&[(ws, x, decode)])?
            .pop()
            .unwrap_or_default())
    }

    fn linear_groups(
        &self,
        groups: &[super::LinearGroup<'_, TensorRef, CpuAct>],
    ) -> Result<Vec<Vec<CpuAct>>, RunError> {
        let mut mats = Vec::with_capacity(groups.len());
        for (ws, x, decode) in groups {
            if *decode > self.tokens(x) {
                return Err(RunError::Backend(format!(
                    "{decode} decode rows of {}",
                    self.tokens(x)
                )));
            }
            mats.push(
                ws.iter()
                    .map(|w| w.matrix())
                    .collect::<Result<Vec<_>, _>>()?,
            );
        }
        let products: Vec<cpu::Product> = groups
            .iter()
            .zip(&mats)
            .map(|((_, x, decode), ws)| cpu::Product {
                ws,
                x: &x.data,
                tokens: self.tokens(x),
                decode: *decode,
            })
            .collect();
        let mut outs: Vec<Vec<f32>> = products
            .iter()
            .flat_map(|p| p.ws.iter().map(|m| vec![0f32; p.tokens * m.rows]))
            .collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        cpu::matmul_groups(&products, &mut refs);
        let mut outs = outs.into_iter();
        Ok(products
            .iter()
            .map(|p| {
                p.ws.iter()
                    .zip(outs.by_ref())
                    .map(|(m, data)| CpuAct {
                        data,
                        width: m.rows,
                    })
                    .collect()
            })
            .collect())
    }

    fn rope(
        &self,
        x: &mut CpuAct,
        pos0: usize,
        head_dim: usize,
        inv: &Vec<f32>,
        factor: f32,
        interleaved: bool,
    ) -> Result<(), RunError> {
        if head_dim == 0 || !x.width.is_multiple_of(head_dim) || inv.len() * 2 != head_dim {
            return Err(RunError::Backend(format!(
                "RoPE of {} frequencies over heads of {head_dim} in rows of {}",
                inv.len(),
                x.width
            )));
        }
        let heads = x.width / head_dim;
        cpu::rope(&mut x.data, pos0, heads, head_dim, inv, factor, interleaved);
        Ok(())
    }

    fn attention(
        &self,
        q: &CpuAct,
        k: &CpuAct,
        v: Option<&CpuAct>,
        kv: &mut CpuKv,
        pos0: usize,
        shape: &AttnShape,
    ) -> Result<CpuAct, RunError> {
        let width = kv.layout.width;
        kv.layout.check(k.width, v.map(|v| v.width), shape.latent)?;
        let drop = kv.at.append(pos0, self.tokens(k))?;
        kv.k.drain(..drop * width);
        kv.k.extend_from_slice(&k.data);
        if let Some(v) = v {
            kv.v.drain(..drop * width);
            kv.v.extend_from_slice(&v.data);
        }
        let mut out = vec![0f32; self.tokens(q) * shape.out_width()];
        // Positions relative to the first held: attention depends on differences only.
        let rel = pos0 - kv.at.base;
        let values = if shape.latent { &kv.k } else { &kv.v };
        cpu::attention(&q.data, &kv.k, values, rel, shape, &mut out);
        Ok(CpuAct {
            data: out,
            width: shape.out_width(),
        })
    }

    fn gelu_mul(&self, gate: &mut CpuAct, up: &CpuAct) -> Result<(), RunError> {
        cpu::gelu_mul(&mut gate.data, &up.data);
        Ok(())
    }

    fn add_rows(&self, x: &mut CpuAct, b: &Vec<f32>) -> Result<(), RunError> {
        cpu::add_rows(&mut x.data, b);
        Ok(())
    }

    fn scale(&self, x: &mut CpuAct, s: f32) -> Result<(), RunError> {
        cpu::scale(&mut x.data, s);
        Ok(())
    }

    fn silu_mul(&self, gate: &mut CpuAct, up: &CpuAct) -> Result<(), RunError> {
        cpu::silu_mul(&mut gate.data, &up.data);
        Ok(())
    }

    fn add(&self, x: &mut CpuAct, y: &CpuAct) -> Result<(), RunError> {
        cpu::add(&mut x.data, &y.data);
        Ok(())
    }

    fn rows(&self, x: &CpuAct, start: usize, rows: usize) -> Result<CpuAct, RunError> {
        let data = x
            .data
            .get(start * x.width..(start + rows) * x.width)
            .ok_or_else(|| out_of_rows(start, rows, self.tokens(x)))?;
        Ok(CpuAct {
            data: data.to_vec(),
            width: x.width,
        })
    }

    fn columns(&self, parts: &[(&CpuAct, usize, usize)]) -> Result<CpuAct, RunError> {
        let tokens = check_columns(parts, |x| (self.tokens(x), x.width))?;
        let width = parts.iter().map(|p| p.2).sum();
        let mut data = Vec::with_capacity(tokens * width);
        for t in 0..tokens {
            for &(x, first, n) in parts {
                data.extend_from_slice(&x.data[t * x.width + first..][..n]);
            }
        }
        Ok(CpuAct { data, width })
    }

    fn concat(&self, parts: &[CpuAct]) -> Result<CpuAct, RunError> {
        let width = parts.first().map_or(1, |p| p.width);
        if parts.iter().any(|p| p.width != width) {
            return Err(RunError::Backend("rows of different widths".into()));
        }
        Ok(CpuAct {
            data: parts.iter().flat_map(|p| p.data.iter().copied()).collect(),
            width,
        })
    }

    fn gather(&self, x: &CpuAct, idx: &[u32], scale: Option<&[f32]>) -> Result<CpuAct, RunError> {
        check_gather(idx, scale, self.tokens(x))?;
        let w = x.width;
        let mut data = Vec::with_capacity(idx.len() * w);
        for (r, &i) in idx.iter().enumerate() {
            let row = &x.data[i as usize * w..(i as usize + 1) * w];
            match scale {
                Some(s) => data.extend(row.iter().map(|v| v * s[r])),
                None => data.extend_from_slice(row),
            }
        }
        Ok(CpuAct { data, width: w })
    }
}

/// The rows of the parts of [`Backend::columns`], refused where they differ or a range passes
/// the end of its rows; `shape` gives a part's rows and width.
pub(super) fn check_columns<A>(
    parts: &[(&A, usize, usize)],
    shape: impl Fn(&A) -> (usize, usize),
) -> Result<usize, RunError> {
    let mut tokens = None;
    for &(x, first, n) in parts {
        let (rows, width) = shape(x);
        if first.checked_add(n).is_none_or(|end| end > width) || tokens.is_some_and(|t| t != rows) {
            return Err(RunError::Backend(format!(
                "columns {first}..{} of rows {width} wide, {rows} of them",
                first.saturating_add(n)
            )));
        }
        tokens = Some(rows);
    }
    Ok(tokens.unwrap_or(0))
}

/// Refuses a gather of rows that `x` lacks, or with a scale count unlike the row count.
pub(super) fn check_gather(
    idx: &[u32],
    scale: Option<&[f32]>,
    tokens: usize,
) -> Result<(), RunError> {
    if let Some(&i) = idx.iter().find(|&&i| i as usize >= tokens) {
        return Err(out_of_rows(i as usize, 1, tokens));
    }
    match scale {
        Some(s) if s.len() != idx.len() => Err(RunError::Backend(format!(
            "{} scales for {} rows",
            s.len(),
            idx.len()
        ))),
        _ => Ok(()),
    }
}

pub(super) fn out_of_rows(start: usize, rows: usize, tokens: usize) -> RunError {
    RunError::Backend(format!("rows {start}..{} of {tokens}", start + rows))
}
