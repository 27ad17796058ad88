//! The CPU backend: activations in `Vec<f32>`, weights read straight from the memory map.

use baton_shaders::cpu;

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
    k: Vec<f32>,
    v: Vec<f32>,
    width: usize,
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

    fn kv_cache(&self, width: usize, _capacity: usize) -> Result<CpuKv, RunError> {
        Ok(CpuKv {
            k: Vec::new(),
            v: Vec::new(),
            width,
        })
    }

    fn kv_truncate(&self, kv: &mut CpuKv, tokens: usize) {
        kv.k.truncate(tokens * kv.width);
        kv.v.truncate(tokens * kv.width);
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
        let m = table.matrix();
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

    fn linear(&self, ws: &[&TensorRef], x: &CpuAct) -> Result<Vec<CpuAct>, RunError> {
        let tokens = self.tokens(x);
        let mats: Vec<_> = ws.iter().map(|w| w.matrix()).collect();
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|m| vec![0f32; tokens * m.rows]).collect();
        let mut refs: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.as_mut_slice()).collect();
        cpu::matmul_many(&mats, &x.data, tokens, &mut refs);
        Ok(outs
            .into_iter()
            .zip(&mats)
            .map(|(data, m)| CpuAct {
                data,
                width: m.rows,
            })
            .collect())
    }

    fn rope(
        &self,
        x: &mut CpuAct,
        pos0: usize,
        head_dim: usize,
        theta: f32,
        interleaved: bool,
    ) -> Result<(), RunError> {
        cpu::rope(
            &mut x.data,
            pos0,
            x.width / head_dim,
            head_dim,
            theta,
            interleaved,
        );
        Ok(())
    }

    fn attention(
        &self,
        q: &CpuAct,
        k: &CpuAct,
        v: &CpuAct,
        kv: &mut CpuKv,
        pos0: usize,
        heads: usize,
        kv_heads: usize,
        head_dim: usize,
    ) -> Result<CpuAct, RunError> {
        debug_assert_eq!(kv.k.len(), pos0 * kv.width);
        kv.k.extend_from_slice(&k.data);
        kv.v.extend_from_slice(&v.data);
        let mut out = vec![0f32; q.data.len()];
        cpu::attention(
            &q.data, &kv.k, &kv.v, pos0, heads, kv_heads, head_dim, &mut out,
        );
        Ok(CpuAct {
            data: out,
            width: q.width,
        })
    }

    fn silu_mul(&self, gate: &mut CpuAct, up: &CpuAct) -> Result<(), RunError> {
        cpu::silu_mul(&mut gate.data, &up.data);
        Ok(())
    }

    fn add(&self, x: &mut CpuAct, y: &CpuAct) -> Result<(), RunError> {
        cpu::add(&mut x.data, &y.data);
        Ok(())
    }

    fn tail(&self, x: &CpuAct, rows: usize) -> Result<CpuAct, RunError> {
        let start = x.data.len() - rows * x.width;
        Ok(CpuAct {
            data: x.data[start..].to_vec(),
            width: x.width,
        })
    }
}
