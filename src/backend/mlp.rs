//! safetensors weights run with candle as a multi-layer perceptron whose layers
//! `config.toml` declares (`architecture = "mlp"`): a `.safetensors` file holds
//! weights only, so the architecture, inputs and outputs come from the config.

use std::path::Path;

use candle_core::{DType, Device, Tensor as CTensor};

use super::{Backend, Loaded};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::model::TensorSpec;
use crate::tensor::{DataType, Tensor};

#[derive(Clone, Copy)]
enum Activation {
    None,
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
}

#[derive(Clone)]
struct Layer {
    /// `[in, out]`: transposed once at load so a run is one matmul.
    weight_t: CTensor,
    bias: Option<CTensor>,
    activation: Activation,
}

#[derive(Clone)]
struct Mlp {
    layers: Vec<Layer>,
    softmax: bool,
    input: String,
    output: String,
    device: Device,
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::load(format!("{}: {e}", path.display()))
}

/// Loads `model.safetensors` as the MLP `config.toml` declares.
pub fn load(path: &Path, config: &ModelConfig) -> Result<Loaded> {
    let device = super::candle_device(config.device()?)?;
    if config.layers.is_empty() {
        return Err(Error::load(
            "config.toml: architecture = \"mlp\" needs at least one [[layer]]",
        ));
    }
    // candle checks the header against the file: offsets past the end, overlapping
    // or truncated data are load errors, not crashes.
    let tensors = candle_core::safetensors::load(path, &device).map_err(|e| err(path, e))?;
    let mut layers = Vec::new();
    for (i, l) in config.layers.iter().enumerate() {
        let get = |name: &str, want: &[usize]| -> Result<CTensor> {
            let t = tensors.get(name).ok_or_else(|| {
                let mut have: Vec<&String> = tensors.keys().collect();
                have.sort();
                err(path, format!("layer {} names tensor '{name}', which the file does not hold (it has: {have:?})", i + 1))
            })?;
            if t.dtype() != DType::F32 {
                return Err(err(
                    path,
                    format!(
                        "tensor '{name}' is {:?}; the mlp architecture takes F32 weights",
                        t.dtype()
                    ),
                ));
            }
            if t.dims() != want {
                return Err(err(
                    path,
                    format!(
                        "tensor '{name}' has shape {:?}, but layer {} declares {want:?}",
                        t.dims(),
                        i + 1
                    ),
                ));
            }
            Ok(t.clone())
        };
        if i > 0 && config.layers[i - 1].out_features != l.in_features {
            return Err(Error::load(format!(
                "config.toml: layer {} takes {} features but layer {} gives {}",
                i + 1,
                l.in_features,
                i,
                config.layers[i - 1].out_features
            )));
        }
        let weight = get(&l.weight, &[l.out_features, l.in_features])?;
        let bias = l
            .bias
            .as_deref()
            .map(|b| get(b, &[l.out_features]))
            .transpose()?;
        let activation = match l.activation.as_deref().unwrap_or("none") {
            "none" => Activation::None,
            "relu" => Activation::Relu,
            "gelu" => Activation::Gelu,
            "tanh" => Activation::Tanh,
            "sigmoid" => Activation::Sigmoid,
            other => {
                return Err(Error::load(format!(
                    "config.toml: layer {} activation '{other}' is not relu, gelu, tanh, sigmoid or none",
                    i + 1
                )))
            }
        };
        let weight_t = weight
            .t()
            .and_then(|w| w.contiguous())
            .map_err(|e| err(path, e))?;
        layers.push(Layer {
            weight_t,
            bias,
            activation,
        });
    }
    let first = config.layers[0].in_features as i64;
    let last = config.layers[config.layers.len() - 1].out_features as i64;
    let io = |declared: &[crate::config::IoConfig],
              default: &str,
              width: i64,
              what: &str|
     -> Result<TensorSpec> {
        let (name, shape) = match declared {
            [] => (default.to_string(), vec![-1, width]),
            [one] => {
                let dtype = DataType::parse(&one.datatype).ok_or_else(|| {
                    Error::load(format!(
                        "config.toml: {what} '{}' has an unknown datatype '{}'",
                        one.name, one.datatype
                    ))
                })?;
                if dtype != DataType::F32 || one.shape.len() != 2 || one.shape[1] != width {
                    return Err(Error::load(format!(
                        "config.toml: the mlp's {what} is FP32 [-1, {width}]; '{}' is declared {} {:?}",
                        one.name, one.datatype, one.shape
                    )));
                }
                (one.name.clone(), one.shape.clone())
            }
            _ => return Err(Error::load(format!("config.toml: the mlp has one {what}"))),
        };
        Ok(TensorSpec {
            name,
            dtype: DataType::F32,
            symbols: vec![None; shape.len()],
            shape,
        })
    };
    let input = io(&config.input, "input", first, "input")?;
    let output = io(&config.output, "output", last, "output")?;
    let mlp = Mlp {
        layers,
        softmax: config.softmax.unwrap_or(false),
        input: input.name.clone(),
        output: output.name.clone(),
        device,
    };
    super::candle_loaded("safetensors_mlp", input, output, config, mlp)
}

impl Backend for Mlp {
    fn infer(&mut self, inputs: &[Tensor], _outputs: &[String]) -> Result<Vec<Tensor>> {
        let x = inputs
            .iter()
            .find(|t| t.name == self.input)
            .ok_or_else(|| Error::invalid(format!("missing input '{}'", self.input)))?;
        let (rows, cols) = (x.shape[0] as usize, x.shape[1] as usize);
        let values: Vec<f32> = x
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let run = || -> candle_core::Result<Vec<f32>> {
            let mut h = CTensor::from_vec(values, (rows, cols), &self.device)?;
            for l in &self.layers {
                h = h.matmul(&l.weight_t)?;
                if let Some(b) = &l.bias {
                    h = h.broadcast_add(b)?;
                }
                h = match l.activation {
                    Activation::None => h,
                    Activation::Relu => h.relu()?,
                    Activation::Gelu => h.gelu_erf()?,
                    Activation::Tanh => h.tanh()?,
                    Activation::Sigmoid => candle_nn::ops::sigmoid(&h)?,
                };
            }
            if self.softmax {
                h = candle_nn::ops::softmax_last_dim(&h)?;
            }
            h.flatten_all()?.to_vec1::<f32>()
        };
        let out = run().map_err(|e| Error::Internal(format!("candle: {e}")))?;
        let width = out.len() / rows.max(1);
        let data: Vec<u8> = out.iter().flat_map(|v| v.to_le_bytes()).collect();
        Ok(vec![Tensor::new(
            self.output.clone(),
            DataType::F32,
            vec![rows as i64, width as i64],
            data.into(),
        )?])
    }
}
