//! A BERT encoder over packed tokens: the texts of a batch are laid end to end, with
//! no padding, so every dense layer runs once over exactly the real tokens; only
//! attention looks at each text on its own.
//!
//! Padding a batch to its longest text, as a padded `[texts, longest]` forward
//! does, costs the padding in every matmul: with sentences of 5 to 30 tokens, a
//! third of the work or more. The weights are Hugging Face `BertModel`'s.

use std::collections::HashMap;

use candle_core::{CpuStorage, CustomOp1, CustomOp3, DType, Device, Layout, Shape, Tensor, D};
use rayon::prelude::*;

use super::kernels::{erf, gemm_rows, matmul, softmax_rows};
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
        for layer in &self.layers {
            let qkv = self.dense(&x, &layer.qkv, &layer.qkv_bias, Activation::None)?;
            let ctx = self.attention(&qkv, lens)?;
            let a = self.dense(&ctx, &layer.out, &layer.out_bias, Activation::None)?;
            x = self.norm(&(a + &x)?, &layer.norm1)?;
            let up = self.dense(&x, &layer.up, &layer.up_bias, self.activation)?;
            let down = self.dense(&up, &layer.down, &layer.down_bias, Activation::None)?;
            x = self.norm(&(down + &x)?, &layer.norm2)?;
        }
        Ok(x)
    }

    /// `activation(x · w + bias)`. On the CPU, one [`Dense`] op: candle's own
    /// element-wise ops run on one thread (its erf alone took a fifth of MiniLM's
    /// time), and a separate bias pass reads and writes every output once more.
    fn dense(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: &Tensor,
        act: Activation,
    ) -> candle_core::Result<Tensor> {
        if self.device.is_cpu() {
            return x.apply_op3_no_bwd(w, bias, &Dense(act));
        }
        let y = x.matmul(w)?;
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
    fn attention(&self, qkv: &Tensor, lens: &[usize]) -> candle_core::Result<Tensor> {
        if self.device.is_cpu() {
            return qkv.apply_op1_no_bwd(&Attention {
                lens,
                heads: self.heads,
            });
        }
        // Elsewhere (CUDA), candle's ops, one call per run of texts of one length.
        let mut runs: Vec<(usize, usize, usize)> = Vec::new(); // (first token, texts, length)
        let mut at = 0;
        for &n in lens {
            match runs.last_mut() {
                Some(r) if r.2 == n => r.1 += 1,
                _ => runs.push((at, 1, n)),
            }
            at += n;
        }
        let (h, heads) = (self.hidden, self.heads);
        let d = h / heads;
        let mut parts = Vec::with_capacity(runs.len());
        for (first, texts, len) in runs {
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

/// Attention on the CPU, straight from the packed `[tokens, 3 × hidden]` buffer:
/// per text and head, scores = q·kᵀ, a softmax per row, then scores·v into the
/// head's columns of the output. Texts run in parallel; each product is one
/// single-threaded `gemm` call on strided views, so nothing is copied or permuted
/// and no thread is woken for a 20 × 20 product.
struct Attention<'a> {
    lens: &'a [usize],
    heads: usize,
}

/// Query rows per parallel attention task: a long text is split across threads.
const QUERY_ROWS: usize = 64;

impl CustomOp1 for Attention<'_> {
    fn name(&self) -> &'static str {
        "packed-attention"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(qkv) = s else {
            candle_core::bail!("packed-attention takes F32");
        };
        let Some((a, b)) = l.contiguous_offsets() else {
            candle_core::bail!("packed-attention takes a contiguous tensor");
        };
        let qkv = &qkv[a..b];
        let (tokens, w) = l.shape().dims2()?;
        let h = w / 3;
        let d = h / self.heads;
        if w % 3 != 0 || h % self.heads != 0 || self.lens.iter().sum::<usize>() != tokens {
            candle_core::bail!("packed-attention: {:?} does not fit the texts", l.dims());
        }
        let mut out = vec![0f32; tokens * h];
        // Tasks of at most QUERY_ROWS query rows of one text (a long text is
        // several), each with its rows of the output.
        let mut tasks = Vec::new();
        let mut rest = out.as_mut_slice();
        let mut first = 0;
        for &len in self.lens {
            for row0 in (0..len).step_by(QUERY_ROWS) {
                let rows = QUERY_ROWS.min(len - row0);
                let (mine, tail) = rest.split_at_mut(rows * h);
                tasks.push((first, len, row0, rows, mine));
                rest = tail;
            }
            first += len;
        }
        tasks
            .into_par_iter()
            .for_each(|(first, len, row0, rows, out)| {
                let mut scores = vec![0f32; rows * len];
                let text = &qkv[first * w..(first + len) * w];
                for head in 0..self.heads {
                    let (q, k, v) = ((row0 * w) + head * d, h + head * d, 2 * h + head * d);
                    // SAFETY: every view stays inside `text`, `scores` or `out`: rows
                    // or len rows of stride w, len or h, and d or len columns.
                    unsafe {
                        matmul(
                            (rows, len, d),
                            (scores.as_mut_ptr(), len),
                            (text.as_ptr().add(q), w, 1),
                            (text.as_ptr().add(k), 1, w),
                            gemm::Parallelism::None,
                        );
                    }
                    softmax_rows(&mut scores, len);
                    // SAFETY: as above.
                    unsafe {
                        matmul(
                            (rows, d, len),
                            (out.as_mut_ptr().add(head * d), h),
                            (scores.as_ptr(), len, 1),
                            (text.as_ptr().add(v), w, 1),
                            gemm::Parallelism::None,
                        );
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((tokens, h))))
    }
}

/// `activation(x · w + bias)` for contiguous F32 `x` `[rows, k]`, `w` `[k, n]`,
/// `bias` `[n]`: the output starts as the bias, the product is added to it in the
/// same pass, then the activation runs over it in parallel.
struct Dense(Activation);

/// Elements per parallel task of the activation pass.
const CHUNK: usize = 16 * 1024;

fn f32_slice<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("dense takes contiguous F32 tensors"),
    }
}

impl CustomOp3 for Dense {
    fn name(&self) -> &'static str {
        "dense"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (f32_slice(s1, l1)?, f32_slice(s2, l2)?, f32_slice(s3, l3)?);
        let (m, k) = l1.shape().dims2()?;
        let (k2, n) = l2.shape().dims2()?;
        if k != k2 || b.len() != n {
            candle_core::bail!("dense: {:?} · {:?} + {:?}", l1.dims(), l2.dims(), l3.dims());
        }
        let Some(mut out) = gemm_rows(x, w, (m, k, n)) else {
            candle_core::bail!(
                "dense: {:?} · {:?} over {} and {} values",
                l1.dims(),
                l2.dims(),
                x.len(),
                w.len()
            );
        };
        // One loop per activation, so that each compiles to straight vector code.
        match self.0 {
            Activation::None => map(&mut out, b, |v| v),
            Activation::Gelu => map(&mut out, b, |v| {
                0.5 * v * (1.0 + erf(v * std::f32::consts::FRAC_1_SQRT_2))
            }),
            Activation::GeluTanh => map(&mut out, b, |v| {
                let c = (2.0 / std::f32::consts::PI).sqrt();
                0.5 * v * (1.0 + (c * (v + 0.044_715 * v * v * v)).tanh())
            }),
            Activation::Relu => map(&mut out, b, |v| v.max(0.0)),
        }
        Ok((CpuStorage::F32(out), Shape::from((m, n))))
    }
}

/// `f(v + bias)` over every row, in parallel chunks of whole rows.
fn map(out: &mut [f32], bias: &[f32], f: impl Fn(f32) -> f32 + Sync) {
    let n = bias.len();
    out.par_chunks_mut((CHUNK / n).max(1) * n).for_each(|o| {
        for row in o.chunks_exact_mut(n) {
            for (v, &b) in row.iter_mut().zip(bias) {
                *v = f(*v + b);
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_attention_equals_candles_ops_per_text() {
        let (h, heads) = (8, 2);
        let lens = [3usize, 1, 5, QUERY_ROWS + 7];
        let tokens: usize = lens.iter().sum();
        let qkv = Tensor::arange(0f32, (tokens * 3 * h) as f32, &Device::Cpu)
            .unwrap()
            .affine(0.37, 0.0)
            .unwrap()
            .sin()
            .unwrap()
            .reshape((tokens, 3 * h))
            .unwrap();
        let got = qkv
            .apply_op1_no_bwd(&Attention { lens: &lens, heads })
            .unwrap();
        let d = h / heads;
        let mut first = 0;
        let mut want = Vec::new();
        for &len in &lens {
            let s = qkv
                .narrow(0, first, len)
                .unwrap()
                .reshape((len, 3, heads, d))
                .unwrap()
                .permute((1, 2, 0, 3))
                .unwrap()
                .contiguous()
                .unwrap();
            let (q, k, v) = (s.get(0).unwrap(), s.get(1).unwrap(), s.get(2).unwrap());
            let p = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t().unwrap()).unwrap()).unwrap();
            let ctx = p.matmul(&v).unwrap().transpose(0, 1).unwrap();
            want.push(ctx.contiguous().unwrap().reshape((len, h)).unwrap());
            first += len;
        }
        assert!(max_diff(&Tensor::cat(&want, 0).unwrap(), &got) < 1e-6);
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    #[test]
    fn dense_in_one_op_equals_candles_ops() {
        let t = |n: usize, scale: f64, shape: (usize, usize)| {
            Tensor::arange(0f32, n as f32, &Device::Cpu)
                .unwrap()
                .affine(scale, -1.0)
                .unwrap()
                .sin()
                .unwrap()
                .reshape(shape)
                .unwrap()
        };
        let w = t(40 * 100, 0.013, (40, 100));
        let b = t(100, 0.01, (1, 100)).squeeze(0).unwrap();
        // A small product on one thread and a large one in parallel.
        for rows in [3, 2000] {
            let x = t(rows * 40, 0.07, (rows, 40)).affine(3.0, 0.0).unwrap();
            let want = x.matmul(&w).unwrap().broadcast_add(&b).unwrap();
            let got = x
                .apply_op3_no_bwd(&w, &b, &Dense(Activation::None))
                .unwrap();
            assert!(max_diff(&want, &got) < 1e-5);
            let got = x
                .apply_op3_no_bwd(&w, &b, &Dense(Activation::Gelu))
                .unwrap();
            assert!(max_diff(&want.gelu_erf().unwrap(), &got) < 1e-5);
        }
    }
}
