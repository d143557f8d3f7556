//! A BERT encoder over packed tokens: the texts of a batch are laid end to end, with
//! no padding, so every dense layer runs once over exactly the real tokens; only
//! attention looks at each text on its own (texts of equal length together).
//!
//! Padding a batch to its longest text, as a padded `[texts, longest]` forward
//! does, costs the padding in every matmul: with sentences of 5 to 30 tokens, a
//! third of the work or more. The weights are Hugging Face `BertModel`'s.

use std::collections::HashMap;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;
use serde::Deserialize;

/// The keys of a Hugging Face BERT `config.json` this encoder reads.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub hidden_act: String,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

fn default_type_vocab_size() -> usize {
    2
}

fn default_layer_norm_eps() -> f64 {
    1e-12
}

#[derive(Clone, Copy)]
enum Activation {
    None,
    /// `gelu` in transformers: the exact form, with erf.
    Gelu,
    /// `gelu_new` / `gelu_pytorch_tanh`: the tanh approximation.
    GeluTanh,
    Relu,
}

struct Norm {
    weight: Tensor,
    bias: Tensor,
}

struct Layer {
    /// Query, key and value as one `[hidden, 3 × hidden]` matmul; the query's
    /// columns carry attention's 1/√head_dim.
    qkv: Tensor,
    qkv_bias: Tensor,
    out: Tensor,
    out_bias: Tensor,
    norm1: Norm,
    up: Tensor,
    up_bias: Tensor,
    down: Tensor,
    down_bias: Tensor,
    norm2: Norm,
}

/// The encoder's weights, shared by every instance of a version.
pub struct Bert {
    words: Tensor,
    positions: Tensor,
    types: Tensor,
    norm: Norm,
    layers: Vec<Layer>,
    heads: usize,
    eps: f32,
    activation: Activation,
    pub hidden: usize,
    pub max_positions: usize,
    device: Device,
}

/// Finds `name` (or `bert.name`, as checkpoints of task models store it) with the
/// shape the config implies, as F32.
struct Weights<'a> {
    tensors: &'a HashMap<String, Tensor>,
}

impl Weights<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor, String> {
        let t = self
            .tensors
            .get(name)
            .or_else(|| self.tensors.get(&format!("bert.{name}")))
            .ok_or_else(|| format!("the file has no tensor '{name}'"))?;
        if t.dims() != shape {
            return Err(format!(
                "shape mismatch for '{name}': the file has {:?}, config.json implies {shape:?}",
                t.dims()
            ));
        }
        t.to_dtype(DType::F32).map_err(|e| format!("'{name}': {e}"))
    }

    /// A PyTorch `Linear`'s weight `[out, in]`, transposed once to `[in, out]`.
    fn linear(&self, name: &str, inp: usize, out: usize) -> Result<(Tensor, Tensor), String> {
        let w = self.get(&format!("{name}.weight"), &[out, inp])?;
        let b = self.get(&format!("{name}.bias"), &[out])?;
        let w = w
            .t()
            .and_then(|w| w.contiguous())
            .map_err(|e| e.to_string())?;
        Ok((w, b))
    }

    fn norm(&self, name: &str, width: usize) -> Result<Norm, String> {
        Ok(Norm {
            weight: self.get(&format!("{name}.weight"), &[width])?,
            bias: self.get(&format!("{name}.bias"), &[width])?,
        })
    }
}

impl Bert {
    /// Builds the encoder from a `model.safetensors`' tensors; the error names the
    /// tensor or setting that does not fit.
    pub fn new(
        config: &BertConfig,
        tensors: &HashMap<String, Tensor>,
        device: &Device,
    ) -> Result<Bert, String> {
        if let Some(p) = config
            .position_embedding_type
            .as_deref()
            .filter(|p| *p != "absolute")
        {
            return Err(format!(
                "config.json: position_embedding_type '{p}' is not supported (absolute only)"
            ));
        }
        let activation = match config.hidden_act.as_str() {
            "gelu" => Activation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(format!(
                    "config.json: hidden_act '{other}' is not supported (gelu, gelu_new, relu)"
                ))
            }
        };
        let h = config.hidden_size;
        let heads = config.num_attention_heads;
        if heads == 0 || h % heads != 0 {
            return Err(format!(
                "config.json: hidden_size {h} is not a multiple of num_attention_heads {heads}"
            ));
        }
        let w = Weights { tensors };
        let scale = 1.0 / ((h / heads) as f64).sqrt();
        let mut layers = Vec::with_capacity(config.num_hidden_layers);
        for i in 0..config.num_hidden_layers {
            let p = format!("encoder.layer.{i}");
            let (q, qb) = w.linear(&format!("{p}.attention.self.query"), h, h)?;
            let (k, kb) = w.linear(&format!("{p}.attention.self.key"), h, h)?;
            let (v, vb) = w.linear(&format!("{p}.attention.self.value"), h, h)?;
            let fuse = || -> candle_core::Result<(Tensor, Tensor)> {
                Ok((
                    Tensor::cat(&[(q * scale)?, k, v], 1)?,
                    Tensor::cat(&[(qb * scale)?, kb, vb], 0)?,
                ))
            };
            let (qkv, qkv_bias) = fuse().map_err(|x| x.to_string())?;
            let (out, out_bias) = w.linear(&format!("{p}.attention.output.dense"), h, h)?;
            let (up, up_bias) = w.linear(
                &format!("{p}.intermediate.dense"),
                h,
                config.intermediate_size,
            )?;
            let (down, down_bias) =
                w.linear(&format!("{p}.output.dense"), config.intermediate_size, h)?;
            layers.push(Layer {
                qkv,
                qkv_bias,
                out,
                out_bias,
                norm1: w.norm(&format!("{p}.attention.output.LayerNorm"), h)?,
                up,
                up_bias,
                down,
                down_bias,
                norm2: w.norm(&format!("{p}.output.LayerNorm"), h)?,
            });
        }
        let to = |t: Tensor| t.to_device(device).map_err(|x| x.to_string());
        Ok(Bert {
            words: to(w.get("embeddings.word_embeddings.weight", &[config.vocab_size, h])?)?,
            positions: to(w.get(
                "embeddings.position_embeddings.weight",
                &[config.max_position_embeddings, h],
            )?)?,
            types: to(w.get(
                "embeddings.token_type_embeddings.weight",
                &[config.type_vocab_size, h],
            )?)?,
            norm: w.norm("embeddings.LayerNorm", h)?,
            layers,
            heads,
            eps: config.layer_norm_eps as f32,
            activation,
            hidden: h,
            max_positions: config.max_position_embeddings,
            device: device.clone(),
        })
    }

    /// The final hidden states `[tokens, hidden]` of texts packed end to end:
    /// `ids` and `type_ids` hold every text's tokens in turn, `lens` their counts.
    pub fn forward(
        &self,
        ids: &[u32],
        type_ids: &[u32],
        lens: &[usize],
    ) -> candle_core::Result<Tensor> {
        let tokens = ids.len();
        let positions: Vec<u32> = lens.iter().flat_map(|&n| 0..n as u32).collect();
        let ids = Tensor::from_slice(ids, tokens, &self.device)?;
        let type_ids = Tensor::from_slice(type_ids, tokens, &self.device)?;
        let positions = Tensor::from_slice(&positions, tokens, &self.device)?;
        let x = (self.words.index_select(&ids, 0)?
            + self.positions.index_select(&positions, 0)?)?
        .add(&self.types.index_select(&type_ids, 0)?)?;
        let mut x = self.norm(&x, &self.norm)?;
        // Runs of texts of one length share each attention call.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new(); // (first token, texts, length)
        let mut at = 0;
        for &n in lens {
            match runs.last_mut() {
                Some(r) if r.2 == n => r.1 += 1,
                _ => runs.push((at, 1, n)),
            }
            at += n;
        }
        for layer in &self.layers {
            let qkv = self.dense(&x, &layer.qkv, &layer.qkv_bias, Activation::None)?;
            let ctx = self.attention(&qkv, &runs)?;
            let a = self.dense(&ctx, &layer.out, &layer.out_bias, Activation::None)?;
            x = self.norm(&(a + &x)?, &layer.norm1)?;
            let up = self.dense(&x, &layer.up, &layer.up_bias, self.activation)?;
            let down = self.dense(&up, &layer.down, &layer.down_bias, Activation::None)?;
            x = self.norm(&(down + &x)?, &layer.norm2)?;
        }
        Ok(x)
    }

    /// `activation(x · w + bias)`. On the CPU the bias and activation are one
    /// parallel pass ([`BiasAct`]): candle's own element-wise ops run on one
    /// thread, and its erf alone took a fifth of MiniLM's time.
    fn dense(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        act: Activation,
    ) -> candle_core::Result<Tensor> {
        let y = x.matmul(w)?;
        if self.device.is_cpu() {
            return y.apply_op2_no_bwd(bias, &BiasAct(act));
        }
        let y = y.broadcast_add(bias)?;
        match act {
            Activation::None => Ok(y),
            Activation::Gelu => y.gelu_erf(),
            Activation::GeluTanh => y.gelu(),
            Activation::Relu => y.relu(),
        }
    }

    fn norm(&self, x: &Tensor, n: &Norm) -> candle_core::Result<Tensor> {
        candle_nn::ops::layer_norm(x, &n.weight, &n.bias, self.eps)
    }

    /// Self-attention of each text over its own tokens: `qkv` is `[tokens, 3 × hidden]`.
    fn attention(
        &self,
        qkv: &Tensor,
        runs: &[(usize, usize, usize)],
    ) -> candle_core::Result<Tensor> {
        let (h, heads) = (self.hidden, self.heads);
        let d = h / heads;
        let mut parts = Vec::with_capacity(runs.len());
        for &(first, texts, len) in runs {
            // [texts·len, 3h] → [3, texts, heads, len, d]
            let s = qkv
                .narrow(0, first, texts * len)?
                .reshape((texts, len, 3, heads, d))?
                .permute((2, 0, 3, 1, 4))?
                .contiguous()?;
            let (q, k, v) = (s.get(0)?, s.get(1)?, s.get(2)?);
            let p = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
            // [texts, heads, len, d] → [texts·len, h]
            let ctx = p
                .matmul(&v)?
                .transpose(1, 2)?
                .contiguous()?
                .reshape((texts * len, h))?;
            parts.push(ctx);
        }
        Tensor::cat(&parts, D::Minus2)
    }
}

/// `activation(x + bias)` over the rows of a contiguous F32 `[rows, n]`, `bias` `[n]`.
struct BiasAct(Activation);

/// Elements per parallel task: large enough that a task outweighs its scheduling.
const CHUNK: usize = 16 * 1024;

impl CustomOp2 for BiasAct {
    fn name(&self) -> &'static str {
        "bias-activation"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(b)) = (s1, s2) else {
            candle_core::bail!("bias-activation takes F32 tensors");
        };
        let (Some((x0, x1)), Some((b0, b1))) = (l1.contiguous_offsets(), l2.contiguous_offsets())
        else {
            candle_core::bail!("bias-activation takes contiguous tensors");
        };
        let (x, b) = (&x[x0..x1], &b[b0..b1]);
        let n = b.len();
        if n == 0 || x.len() % n != 0 || l1.dims().last() != Some(&n) {
            candle_core::bail!("bias-activation: bias {n} does not fit {:?}", l1.dims());
        }
        let rows = (CHUNK / n).max(1);
        let mut out = vec![0f32; x.len()];
        // One loop per activation, so that each compiles to straight vector code.
        match self.0 {
            Activation::None => bias_map(&mut out, x, b, rows, |v| v),
            Activation::Gelu => bias_map(&mut out, x, b, rows, |v| {
                0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
            }),
            Activation::GeluTanh => bias_map(&mut out, x, b, rows, |v| {
                let c = (2.0 / std::f32::consts::PI).sqrt();
                0.5 * v * (1.0 + (c * (v + 0.044_715 * v * v * v)).tanh())
            }),
            Activation::Relu => bias_map(&mut out, x, b, rows, |v| v.max(0.0)),
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// `out = f(x + b)` row by row, `rows` rows a parallel task.
fn bias_map(out: &mut [f32], x: &[f32], b: &[f32], rows: usize, f: impl Fn(f32) -> f32 + Sync) {
    let n = b.len();
    out.par_chunks_mut(rows * n)
        .zip(x.par_chunks(rows * n))
        .for_each(|(o, x)| {
            for (o, x) in o.chunks_exact_mut(n).zip(x.chunks_exact(n)) {
                for ((o, &x), &b) in o.iter_mut().zip(x).zip(b) {
                    *o = f(x + b);
                }
            }
        });
}

/// erf for f32 as a rational function on [-4, 4] (Eigen's and XLA's
/// approximation; erf(±4) is ±1 in f32): no branch, so the loop vectorises, and
/// within 1e-6 of the exact value (checked against libm in the tests).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_600_1e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5_f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329_2e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_erf_is_within_a_millionth_of_libm() {
        let worst = (-600_000..=600_000)
            .map(|i| i as f32 * 1e-5)
            .map(|x| (erf(x) - libm::erff(x)).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-6, "max abs error {worst}");
    }

    #[test]
    fn bias_and_activation_in_one_pass_equal_candles_ops() {
        let x = Tensor::arange(0f32, 3000.0, &Device::Cpu)
            .unwrap()
            .affine(0.004, -6.0)
            .unwrap()
            .reshape((30, 100))
            .unwrap();
        let b = Tensor::arange(0f32, 100.0, &Device::Cpu)
            .unwrap()
            .affine(0.01, -0.5)
            .unwrap();
        let want = x.broadcast_add(&b).unwrap().gelu_erf().unwrap();
        let got = x.apply_op2_no_bwd(&b, &BiasAct(Activation::Gelu)).unwrap();
        let diff = (want - got)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        assert!(diff < 1e-6, "max abs diff {diff}");
    }
}
