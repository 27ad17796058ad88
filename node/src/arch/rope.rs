//! Rotary position embeddings: the base frequency, and the scalings of long-context models
//! (linear, Llama 3.1's, YaRN), turned into the inverse frequencies the kernels read.
//! Numerics follow transformers' `modeling_rope_utils.py`, in f32.

use std::f32::consts::PI;

use serde_json::Value as Json;

use super::GgufKeys;
use crate::error::LoadError;

#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    pub theta: f32,
    /// Rotated dimensions per head.
    pub dims: usize,
    /// GGUF stores Llama's Q and K rows permuted for RoPE on adjacent pairs; Hugging Face and
    /// the other architectures rotate halves.
    pub interleaved: bool,
    pub scaling: RopeScaling,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f32,
    },
    /// Llama 3.1: low frequencies divided by `factor`, high ones kept, a ramp between.
    Llama3 {
        factor: f32,
        low_freq_factor: f32,
        high_freq_factor: f32,
        original_context: usize,
    },
    /// YaRN: interpolation blended with extrapolation by frequency, and an attention factor.
    Yarn {
        factor: f32,
        original_context: usize,
        beta_fast: f32,
        beta_slow: f32,
        attention_factor: Option<f32>,
    },
    /// Per-frequency divisors from the file (GGUF's `rope_freqs.weight`).
    Factors(Vec<f32>),
}

impl Rope {
    pub(crate) fn check(&self, head_dim: usize) -> Result<(), String> {
        if self.dims != head_dim {
            return Err(format!(
                "RoPE over {} of {head_dim} dimensions (partial rotary) is not supported",
                self.dims
            ));
        }
        if !(self.theta.is_finite() && self.theta > 1.0) {
            return Err(format!("RoPE base {} is not supported", self.theta));
        }
        let bad_factor = |f: f32| !(f.is_finite() && f > 0.0);
        match &self.scaling {
            RopeScaling::Linear { factor }
            | RopeScaling::Llama3 { factor, .. }
            | RopeScaling::Yarn { factor, .. }
                if bad_factor(*factor) =>
            {
                Err(format!("RoPE scaling factor {factor} is not supported"))
            }
            RopeScaling::Factors(f)
                if f.len() != self.dims / 2 || f.iter().any(|v| bad_factor(*v)) =>
            {
                Err(format!(
                    "`rope_freqs.weight` holds {} values, not {} positive ones",
                    f.len(),
                    self.dims / 2
                ))
            }
            _ => Ok(()),
        }
    }

    /// The inverse frequencies (`dims / 2`) and the factor the rotated values are multiplied
    /// by (YaRN's attention factor, 1 otherwise).
    pub fn inv_freq(&self) -> (Vec<f32>, f32) {
        let d = self.dims;
        let base = baton_shaders::cpu::rope_inv_freq(self.theta, d);
        match &self.scaling {
            RopeScaling::None => (base, 1.0),
            RopeScaling::Linear { factor } => (base.iter().map(|f| f / factor).collect(), 1.0),
            RopeScaling::Factors(div) => (base.iter().zip(div).map(|(f, v)| f / v).collect(), 1.0),
            RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_context,
            } => {
                let old = *original_context as f32;
                let low_wavelen = old / low_freq_factor;
                let high_wavelen = old / high_freq_factor;
                let out = base
                    .iter()
                    .map(|&f| {
                        let wavelen = 2.0 * PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low_freq_factor)
                                / (high_freq_factor - low_freq_factor);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect();
                (out, 1.0)
            }
            RopeScaling::Yarn {
                factor,
                original_context,
                beta_fast,
                beta_slow,
                attention_factor,
            } => {
                let attn = attention_factor.unwrap_or(if *factor <= 1.0 {
                    1.0
                } else {
                    0.1 * factor.ln() + 1.0
                });
                let dim = d as f32;
                let correction = |rotations: f32| {
                    dim * (*original_context as f32 / (rotations * 2.0 * PI)).ln()
                        / (2.0 * self.theta.ln())
                };
                let low = correction(*beta_fast).floor().max(0.0);
                let high = correction(*beta_slow).ceil().min(dim - 1.0);
                let high = if low == high { high + 0.001 } else { high };
                let out = base
                    .iter()
                    .enumerate()
                    .map(|(i, &f)| {
                        let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                        let extrapolation = 1.0 - ramp;
                        (f / factor) * (1.0 - extrapolation) + f * extrapolation
                    })
                    .collect();
                (out, attn)
            }
        }
    }
}

/// `{arch}.rope.scaling.*` of a GGUF file. Llama 3.1's scaling comes as the `rope_freqs.weight`
/// tensor instead, which the loader applies.
pub(crate) fn scaling_from_gguf(k: &GgufKeys) -> Result<RopeScaling, LoadError> {
    let kind =
        k.g.get_str(&k.key("rope.scaling.type"))
            .unwrap_or("none")
            .to_string();
    let factor = k.f_or("rope.scaling.factor", 1.0) as f32;
    let original = k.u_or("rope.scaling.original_context_length", 0);
    Ok(match kind.as_str() {
        "none" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor },
        "yarn" => RopeScaling::Yarn {
            factor,
            original_context: original,
            beta_fast: k.f_or("rope.scaling.yarn_beta_fast", 32.0) as f32,
            beta_slow: k.f_or("rope.scaling.yarn_beta_slow", 1.0) as f32,
            attention_factor: None,
        },
        other => {
            return Err(LoadError::Config {
                path: k.g.path.clone(),
                what: format!(
                    "RoPE scaling `{other}` ({}) is not supported (none, linear, yarn are)",
                    k.key("rope.scaling.type")
                ),
            })
        }
    })
}

/// YaRN's magnitude correction `0.1 · mscale · ln(factor) + 1` (1 without scaling up).
pub fn yarn_mscale(factor: f32, mscale: f32) -> f32 {
    if factor <= 1.0 {
        1.0
    } else {
        0.1 * mscale * factor.ln() + 1.0
    }
}

/// `rope_theta` and `rope_scaling` (or transformers 5's `rope_parameters`) of a `config.json`.
pub(crate) fn from_hf(raw: &Json, default_theta: f64) -> Result<(f32, RopeScaling), String> {
    let params = raw
        .get("rope_parameters")
        .filter(|v| !v.is_null())
        .or_else(|| raw.get("rope_scaling").filter(|v| !v.is_null()));
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| raw.get("rope_theta"))
        .and_then(Json::as_f64)
        .unwrap_or(default_theta);
    let Some(p) = params else {
        return Ok((theta as f32, RopeScaling::None));
    };
    let kind = p
        .get("rope_type")
        .or_else(|| p.get("type"))
        .and_then(Json::as_str)
        .unwrap_or("default");
    let num = |k: &str| p.get(k).and_then(Json::as_f64);
    let need = |k: &str| num(k).ok_or(format!("rope_scaling of type `{kind}` lacks `{k}`"));
    let original = || {
        num("original_max_position_embeddings")
            .or_else(|| raw.get("max_position_embeddings").and_then(Json::as_f64))
            .map(|v| v as usize)
            .ok_or("rope_scaling lacks `original_max_position_embeddings`".to_string())
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: need("factor")? as f32,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: need("factor")? as f32,
            low_freq_factor: need("low_freq_factor")? as f32,
            high_freq_factor: need("high_freq_factor")? as f32,
            original_context: original()?,
        },
        "yarn" => {
            if p.get("truncate").and_then(Json::as_bool) == Some(false) {
                return Err("rope_scaling `truncate: false` is not supported yet".into());
            }
            let factor = need("factor")? as f32;
            // DeepSeek's: the ratio of two magnitude corrections, when both are given.
            let ratio = match (num("mscale"), num("mscale_all_dim")) {
                (Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    Some(yarn_mscale(factor, m as f32) / yarn_mscale(factor, all as f32))
                }
                _ => None,
            };
            RopeScaling::Yarn {
                factor,
                original_context: original()?,
                beta_fast: num("beta_fast").unwrap_or(32.0) as f32,
                beta_slow: num("beta_slow").unwrap_or(1.0) as f32,
                attention_factor: num("attention_factor").map(|v| v as f32).or(ratio),
            }
        }
        other => {
            return Err(format!(
                "RoPE scaling `{other}` is not supported (default, linear, llama3, yarn are)"
            ))
        }
    };
    Ok((theta as f32, scaling))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rope(scaling: RopeScaling) -> Rope {
        Rope {
            theta: 500000.0,
            dims: 64,
            interleaved: false,
            scaling,
        }
    }

    #[test]
    fn llama3_keeps_high_frequencies_and_divides_low_ones() {
        let plain = rope(RopeScaling::None).inv_freq().0;
        let (scaled, f) = rope(RopeScaling::Llama3 {
            factor: 8.0,
            low_freq_factor: 1.0,
            high_freq_factor: 4.0,
            original_context: 8192,
        })
        .inv_freq();
        assert_eq!(f, 1.0);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[31] - plain[31] / 8.0).abs() < 1e-12);
        assert!(scaled
            .iter()
            .zip(&plain)
            .all(|(s, p)| s <= p && *s >= p / 8.0));
    }

    #[test]
    fn yarn_blends_and_scales_attention() {
        let plain = rope(RopeScaling::None).inv_freq().0;
        let (scaled, f) = rope(RopeScaling::Yarn {
            factor: 4.0,
            original_context: 4096,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
        })
        .inv_freq();
        assert!((f - (0.1 * 4f32.ln() + 1.0)).abs() < 1e-6);
        assert_eq!(scaled[0], plain[0]);
        assert!((scaled[31] - plain[31] / 4.0).abs() < 1e-12);
    }

    #[test]
    fn unknown_scalings_are_refused() {
        let raw: Json =
            serde_json::json!({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}});
        assert!(from_hf(&raw, 10000.0).unwrap_err().contains("dynamic"));
    }
}
