//! BERT-family text encoders (BERT, MiniLM, …) from a Hugging Face folder, run with
//! candle: BYTES texts in, one FP32 sentence embedding per text out.
//!
//! The version folder holds what `sentence-transformers` saves: `config.json`,
//! `tokenizer.json`, `model.safetensors`, and optionally `sentence_bert_config.json`
//! (maximum length), `1_Pooling/config.json` (mean or CLS pooling) and `modules.json`
//! (a `Normalize` module turns L2 normalisation on). `config.toml`'s `[encoder]`
//! overrides each of them.

use std::path::Path;

use candle_core::{DType, Device, Tensor as CTensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};
use tokenizers::{Tokenizer, TruncationParams};

use super::{Backend, Loaded};
use crate::config::{EncoderConfig, ModelConfig};
use crate::error::{Error, Result};
use crate::model::{ModelMetadata, TensorSpec};
use crate::tensor::{BytesIter, DataType, Tensor};

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
    model: std::sync::Arc<BertModel>,
    tokenizer: Tokenizer,
    device: Device,
    max_length: usize,
    pooling: Pooling,
    normalize: bool,
    pad_id: u32,
    hidden: i64,
    input: String,
    output: String,
}

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
    let pad_id = tokenizer.get_padding().map_or(0, |p| p.pad_id);
    // Texts are padded here, per batch, to the longest; the file's own settings
    // (often a fixed padding to 128) would pad or cut every text the same way.
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
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &device);
    let model = BertModel::load(vb, &bert).map_err(|e| err(&weights, e))?;

    let io = |declared: &[crate::config::IoConfig],
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
        device,
        max_length,
        pooling,
        normalize,
        pad_id,
        hidden,
        input: input.name.clone(),
        output: output.name.clone(),
    };
    let mut metadata = ModelMetadata {
        platform: "safetensors_bert",
        inputs: vec![input],
        outputs: vec![output],
        max_batch_size: 0,
    };
    metadata.max_batch_size = super::max_batch_size(config, &metadata)?;
    // Candle tensors share their storage: instances cost no copy of the weights.
    let instances = (0..config.instances())
        .map(|_| Box::new(encoder.clone()) as Box<dyn Backend>)
        .collect();
    Ok(Loaded {
        metadata,
        instances,
    })
}

/// Padded tokens a group may hold per real token before a longer text starts a new
/// group: one long text must not make a batch of short ones cost its length each.
const MAX_PADDING_RATIO: f64 = 1.25;

/// Splits texts, shortest first, into groups that are each run padded to their
/// longest: a group grows while its padded size stays within
/// [`MAX_PADDING_RATIO`] of its real tokens. Returns indexes into `lens`.
fn length_groups(lens: &[usize]) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lens.len()).collect();
    order.sort_by_key(|&i| lens[i]);
    let mut groups: Vec<Vec<usize>> = Vec::new();
    let mut real = 0usize;
    for i in order {
        let len = lens[i];
        let fits = groups.last().is_some_and(|g| {
            (g.len() + 1) as f64 * len as f64 <= MAX_PADDING_RATIO * (real + len) as f64
        });
        if !fits {
            groups.push(Vec::new());
            real = 0;
        }
        groups.last_mut().expect("pushed above").push(i);
        real += len;
    }
    groups
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

    /// Embeddings of texts run together, padded to the longest with the attention
    /// mask: `[texts.len() * hidden]`.
    fn embed(&self, texts: &[&tokenizers::Encoding]) -> candle_core::Result<Vec<f32>> {
        let n = texts.len();
        let len = texts.iter().map(|e| e.len()).max().unwrap_or(0);
        let mut ids = vec![self.pad_id; n * len];
        let mut mask = vec![0u32; n * len];
        for (row, e) in texts.iter().enumerate() {
            let at = row * len;
            ids[at..at + e.len()].copy_from_slice(e.get_ids());
            mask[at..at + e.len()].copy_from_slice(e.get_attention_mask());
        }
        let ids = CTensor::from_vec(ids, (n, len), &self.device)?;
        let mask = CTensor::from_vec(mask, (n, len), &self.device)?;
        let types = ids.zeros_like()?;
        let states = self.model.forward(&ids, &types, Some(&mask))?;
        let pooled = match self.pooling {
            Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let m = mask.to_dtype(DType::F32)?.unsqueeze(2)?;
                let summed = states.broadcast_mul(&m)?.sum(1)?;
                let counts = m.sum(1)?.clamp(1e-9, f32::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        let pooled = if self.normalize {
            let norms = pooled
                .sqr()?
                .sum_keepdim(1)?
                .sqrt()?
                .clamp(1e-12, f32::MAX)?;
            pooled.broadcast_div(&norms)?
        } else {
            pooled
        };
        pooled.flatten_all()?.to_vec1::<f32>()
    }
}

impl Backend for Encoder {
    fn infer(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
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
        if n == 0 {
            return Tensor::new(
                self.output.clone(),
                DataType::F32,
                vec![0, self.hidden],
                bytes::Bytes::new(),
            )
            .map(|t| vec![t]);
        }
        let encodings = self.tokenize(texts)?;
        let lens: Vec<usize> = encodings.iter().map(|e| e.len()).collect();
        let width = self.hidden as usize;
        let mut out = vec![0f32; n * width];
        for group in length_groups(&lens) {
            let texts: Vec<&tokenizers::Encoding> = group.iter().map(|&i| &encodings[i]).collect();
            let vectors = self
                .embed(&texts)
                .map_err(|e| Error::Internal(format!("candle: {e}")))?;
            for (&i, v) in group.iter().zip(vectors.chunks_exact(width)) {
                out[i * width..(i + 1) * width].copy_from_slice(v);
            }
        }
        let data: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(vec![Tensor::new(
            self.output.clone(),
            DataType::F32,
            vec![n as i64, width as i64],
            data.into(),
        )?])
    }
}

#[cfg(test)]
mod tests {
    use super::length_groups;

    #[test]
    fn one_long_text_runs_apart_from_short_ones() {
        let lens = [10, 300, 12, 11, 10];
        let groups = length_groups(&lens);
        assert_eq!(groups, vec![vec![0, 4, 3, 2], vec![1]]);
        // Every text is in exactly one group.
        let mut all: Vec<usize> = groups.concat();
        all.sort();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
    }

    #[test]
    fn equal_lengths_share_one_group() {
        assert_eq!(length_groups(&[7; 32]).len(), 1);
        assert!(length_groups(&[]).is_empty());
    }
}
