//! BERT-family text encoders (BERT, MiniLM, …) from a Hugging Face folder, run with
//! candle: BYTES texts in, one FP32 sentence embedding per text out.
//!
//! The version folder holds what `sentence-transformers` saves: `config.json`,
//! `tokenizer.json`, `model.safetensors`, and optionally `sentence_bert_config.json`
//! (maximum length), `1_Pooling/config.json` (mean or CLS pooling) and `modules.json`
//! (a `Normalize` module turns L2 normalisation on). `config.toml`'s `[encoder]`
//! overrides each of them.

use std::path::Path;

use candle_core::DType;
use tokenizers::{Encoding, Tokenizer, TruncationParams};

use super::transformer::{Bert, BertConfig};
use super::{Backend, Loaded};
use crate::core::config::{EncoderConfig, ModelConfig};
use crate::core::error::{Error, Result};
use crate::core::metadata::TensorSpec;
use crate::core::tensor::{BytesIter, DataType, Tensor};

/// How token states become one vector per text.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pooling {
    /// The average over real tokens (the attention mask), as sentence-transformers' default.
    Mean,
    /// The `[CLS]` token's state.
    Cls,
}

#[derive(Clone)]
struct Encoder {
    model: std::sync::Arc<Bert>,
    tokenizer: Tokenizer,
    max_length: usize,
    pooling: Pooling,
    normalize: bool,
    hidden: usize,
    input: String,
    output: String,
}

/// The encoder's second output: the tokens of each text, as it ran (after
/// truncation, `[CLS]` and `[SEP]` included). What OpenAI's `usage` counts.
pub const TOKENS_OUTPUT: &str = "tokens";

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::load(format!("{}: {e}", path.display()))
}

fn read_json(path: &Path) -> Result<Option<serde_json::Value>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| err(path, e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(path, e)),
    }
}

/// The settings sentence-transformers saved beside the weights, under `config.toml`'s.
fn settings(dir: &Path, bert: &BertConfig, enc: &EncoderConfig) -> Result<(usize, Pooling, bool)> {
    let st_max = read_json(&dir.join("sentence_bert_config.json"))?
        .and_then(|v| v["max_seq_length"].as_u64())
        .map(|n| n as usize);
    let max_length = enc
        .max_length
        .or(st_max)
        .unwrap_or(bert.max_position_embeddings);
    if max_length < 2 || max_length > bert.max_position_embeddings {
        return Err(Error::load(format!(
            "config.toml: [encoder] max_length = {max_length} must be between 2 and the model's \
             max_position_embeddings ({})",
            bert.max_position_embeddings
        )));
    }
    let pooling = match enc.pooling.as_deref() {
        Some("mean") => Pooling::Mean,
        Some("cls") => Pooling::Cls,
        Some(other) => {
            return Err(Error::load(format!(
                "config.toml: [encoder] pooling '{other}' is not 'mean' or 'cls'"
            )))
        }
        None => match read_json(&dir.join("1_Pooling/config.json"))? {
            Some(p) if p["pooling_mode_cls_token"].as_bool() == Some(true) => Pooling::Cls,
            Some(p) if p["pooling_mode_mean_tokens"].as_bool() == Some(false) => {
                return Err(Error::load(format!(
                    "{}: only mean and CLS pooling are supported",
                    dir.join("1_Pooling/config.json").display()
                )))
            }
            _ => Pooling::Mean,
        },
    };
    let normalize = match enc.normalize {
        Some(n) => n,
        None => read_json(&dir.join("modules.json"))?
            .and_then(|m| {
                m.as_array().map(|mods| {
                    mods.iter().any(|m| {
                        m["type"]
                            .as_str()
                            .is_some_and(|t| t.ends_with("models.Normalize"))
                    })
                })
            })
            .unwrap_or(false),
    };
    Ok((max_length, pooling, normalize))
}

/// Loads the encoder in `version_dir` as `config.toml` says.
pub fn load(version_dir: &Path, config: &ModelConfig) -> Result<Loaded> {
    let device = super::candle_device(config.device()?)?;
    let config_path = version_dir.join("config.json");
    let bert: BertConfig = match read_json(&config_path)? {
        Some(v) => serde_json::from_value(v).map_err(|e| err(&config_path, e))?,
        None => {
            return Err(err(
                &config_path,
                "missing: architecture = \"bert\" needs the Hugging Face config.json",
            ))
        }
    };
    let (max_length, pooling, normalize) = settings(version_dir, &bert, &config.encoder)?;

    let tok_path = version_dir.join("tokenizer.json");
    if !tok_path.is_file() {
        return Err(err(
            &tok_path,
            "missing: architecture = \"bert\" needs tokenizer.json",
        ));
    }
    let mut tokenizer = Tokenizer::from_file(&tok_path).map_err(|e| err(&tok_path, e))?;
    // A token id past the embedding table would fail every request that has it.
    let vocab = tokenizer.get_vocab_size(true);
    if vocab > bert.vocab_size {
        return Err(err(
            &tok_path,
            format!(
                "{vocab} tokens, but config.json's vocab_size is {}: the tokenizer is not this model's",
                bert.vocab_size
            ),
        ));
    }
    // Texts are packed, never padded; the file's own settings (often a fixed
    // padding to 128) would pad or cut every text the same way.
    tokenizer.with_padding(None);
    let truncate = config.encoder.truncate.unwrap_or(true);
    tokenizer
        .with_truncation(truncate.then(|| TruncationParams {
            max_length,
            ..Default::default()
        }))
        .map_err(|e| err(&tok_path, e))?;

    let weights = version_dir.join("model.safetensors");
    // candle checks the header against the file (offsets, sizes, dtypes): a bad file
    // is a load error, not a crash. The file is read rather than mapped, so a
    // version folder replaced on disk cannot change the weights under a running model.
    let tensors =
        candle_core::safetensors::load(&weights, &device).map_err(|e| err(&weights, e))?;
    // Weights in any float type are converted to F32 once, here. Integer tensors
    // are only index buffers (`position_ids`) that transformers saves with them.
    let float = |d: DType| matches!(d, DType::F16 | DType::BF16 | DType::F32 | DType::F64);
    if let Some((name, t)) = tensors
        .iter()
        .find(|(name, t)| !float(t.dtype()) && !name.ends_with("_ids"))
    {
        return Err(err(
            &weights,
            format!(
                "tensor '{name}' is {:?}; the bert architecture takes float weights",
                t.dtype()
            ),
        ));
    }
    let model = Bert::new(&bert, &tensors, &device).map_err(|e| err(&weights, e))?;

    let io = |declared: &[crate::core::config::IoConfig],
              name: &str,
              dtype: DataType,
              shapes: &[&[i64]],
              what: &str|
     -> Result<TensorSpec> {
        let (name, shape) = match declared {
            [] => (name.to_string(), shapes[0].to_vec()),
            [one] if one.datatype == dtype.as_str() && shapes.contains(&one.shape.as_slice()) => {
                (one.name.clone(), one.shape.clone())
            }
            [one] => {
                return Err(Error::load(format!(
                    "config.toml: the encoder's {what} is {dtype} {:?}; '{}' is declared {} {:?}",
                    shapes[0], one.name, one.datatype, one.shape
                )))
            }
            _ => {
                return Err(Error::load(format!(
                    "config.toml: the encoder has one {what}"
                )))
            }
        };
        Ok(TensorSpec {
            name,
            dtype,
            symbols: vec![None; shape.len()],
            shape,
        })
    };
    let hidden = bert.hidden_size as i64;
    let input = io(
        &config.input,
        "text",
        DataType::Bytes,
        &[&[-1], &[-1, 1]],
        "input",
    )?;
    let output = io(
        &config.output,
        "embedding",
        DataType::F32,
        &[&[-1, hidden]],
        "output",
    )?;
    let encoder = Encoder {
        model: std::sync::Arc::new(model),
        tokenizer,
        max_length,
        pooling,
        normalize,
        hidden: bert.hidden_size,
        input: input.name.clone(),
        output: output.name.clone(),
    };
    let tokens = TensorSpec {
        name: TOKENS_OUTPUT.into(),
        dtype: DataType::I64,
        shape: vec![-1],
        symbols: vec![None],
    };
    let mut loaded = super::candle_loaded(
        "safetensors_bert",
        input,
        vec![output, tokens],
        config,
        encoder,
    )?;
    loaded.metadata.optional_outputs.push(TOKENS_OUTPUT.into());
    Ok(loaded)
}

impl Encoder {
    /// Each text's tokens, checked against the maximum length.
    fn tokenize(&self, texts: Vec<&str>) -> Result<Vec<tokenizers::Encoding>> {
        let encodings = self
            .tokenizer
            .encode_batch(texts, true)
            .map_err(|e| Error::invalid(format!("input '{}': {e}", self.input)))?;
        if let Some((i, e)) = encodings
            .iter()
            .enumerate()
            .find(|(_, e)| e.len() > self.max_length)
        {
            return Err(Error::invalid(format!(
                "input '{}': text {i} is {} tokens, more than the model's maximum of {} \
                 (this model is configured to reject long texts rather than truncate them)",
                self.input,
                e.len(),
                self.max_length
            )));
        }
        Ok(encodings)
    }

    /// One embedding per text, in order: `[texts × hidden]`. The texts run packed
    /// shortest first, so texts of one length share their attention calls.
    fn embed(&self, texts: &[Encoding]) -> candle_core::Result<Vec<f32>> {
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| texts[i].len());
        let lens: Vec<usize> = order.iter().map(|&i| texts[i].len()).collect();
        let ids: Vec<u32> = order
            .iter()
            .flat_map(|&i| texts[i].get_ids())
            .copied()
            .collect();
        let types: Vec<u32> = order
            .iter()
            .flat_map(|&i| texts[i].get_type_ids())
            .copied()
            .collect();
        let states = self
            .model
            .forward(&ids, &types, &lens)?
            .flatten_all()?
            .to_vec1::<f32>()?;
        let h = self.hidden;
        let mut out = vec![0f32; texts.len() * h];
        let mut rows = states.chunks_exact(h);
        for (&i, &len) in order.iter().zip(&lens) {
            let v = &mut out[i * h..(i + 1) * h];
            for (k, row) in rows.by_ref().take(len).enumerate() {
                match self.pooling {
                    Pooling::Mean => v.iter_mut().zip(row).for_each(|(a, b)| *a += b),
                    Pooling::Cls if k == 0 => v.copy_from_slice(row),
                    Pooling::Cls => {}
                }
            }
            if self.pooling == Pooling::Mean {
                let n = len.max(1) as f32;
                v.iter_mut().for_each(|a| *a /= n);
            }
            if self.normalize {
                let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt().max(1e-12);
                v.iter_mut().for_each(|a| *a /= norm);
            }
        }
        Ok(out)
    }
}

impl Backend for Encoder {
    fn infer(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>> {
        let x = inputs
            .iter()
            .find(|t| t.name == self.input)
            .ok_or_else(|| Error::invalid(format!("missing input '{}'", self.input)))?;
        let texts = BytesIter::new(&x.data)
            .enumerate()
            .map(|(i, e)| {
                let e = e.ok_or_else(|| {
                    Error::invalid(format!("input '{}': malformed BYTES data", self.input))
                })?;
                std::str::from_utf8(e).map_err(|_| {
                    Error::invalid(format!(
                        "input '{}': text {i} is not valid UTF-8",
                        self.input
                    ))
                })
            })
            .collect::<Result<Vec<&str>>>()?;
        let n = texts.len();
        let encodings = if n == 0 {
            Vec::new()
        } else {
            self.tokenize(texts)?
        };
        let wants = |name: &str| outputs.is_empty() || outputs.iter().any(|o| o == name);
        let embeddings = if wants(&self.output) && n > 0 {
            self.embed(&encodings)
                .map_err(|e| Error::Internal(format!("candle: {e}")))?
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect()
        } else {
            Vec::new()
        };
        let embedding = Tensor::new(
            self.output.clone(),
            DataType::F32,
            vec![n as i64, self.hidden as i64],
            embeddings.into(),
        );
        let tokens = || {
            let data: Vec<u8> = encodings
                .iter()
                .flat_map(|e| (e.len() as i64).to_le_bytes())
                .collect();
            Tensor::new(
                TOKENS_OUTPUT.into(),
                DataType::I64,
                vec![n as i64],
                data.into(),
            )
        };
        // In the order asked for (the worker's contract), all when none is named.
        if outputs.is_empty() {
            return Ok(vec![embedding?, tokens()?]);
        }
        let mut embedding = Some(embedding);
        outputs
            .iter()
            .map(|o| match o.as_str() {
                TOKENS_OUTPUT => tokens(),
                _ => embedding.take().unwrap_or_else(|| {
                    Err(Error::invalid(format!("output '{o}' asked for twice")))
                }),
            })
            .collect()
    }
}
