//! safetensors weights run with candle as a multi-layer perceptron whose layers
//! `config.toml` declares (`architecture = "mlp"`): a `.safetensors` file holds
//! weights only, so the architecture, inputs and outputs come from the config.

use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor as CTensor};

use super::{Backend, Loaded};
use crate::core::config::ModelConfig;
use crate::core::error::{Error, Result};
use crate::core::metadata::TensorSpec;
use crate::core::tensor::{DataType, Tensor};

#[derive(Clone, Copy)]
enum Activation {
    None,
    Relu,
    Gelu,
    Tanh,
    Sigmoid,
}

impl Activation {
    fn apply(self, v: f32) -> f32 {
        match self {
            Activation::None => v,
            Activation::Relu => v.max(0.0),
            Activation::Gelu => {
                0.5 * v * (1.0 + super::kernels::erf(v * std::f32::consts::FRAC_1_SQRT_2))
            }
            Activation::Tanh => v.tanh(),
            Activation::Sigmoid => 1.0 / (1.0 + (-v).exp()),
        }
    }
}

#[derive(Clone)]
struct Layer {
    params: Params,
    activation: Activation,
    /// `[in, out]` sizes.
    sizes: (usize, usize),
}

/// A layer's weights where they run.
#[derive(Clone)]
enum Params {
    /// On the CPU, plain row-major arrays: one gemm call and one pass for bias
    /// and activation a layer, instead of candle's four ops with a tensor each
    /// (64 rows of the sample MLP: 23 µs with candle's ops). Shared, as candle's
    /// tensors are, so that instances cost no copy of the weights.
    Cpu {
        weight_t: Arc<[f32]>,
        bias: Option<Arc<[f32]>>,
    },
    /// On a GPU, candle's ops. `weight_t` is `[in, out]`: transposed once at
    /// load so a run is one matmul.
    Device {
        weight_t: CTensor,
        bias: Option<CTensor>,
    },
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
        let params = if device.is_cpu() {
            Params::Cpu {
                weight_t: weight_t
                    .flatten_all()
                    .and_then(|w| w.to_vec1::<f32>())
                    .map_err(|e| err(path, e))?
                    .into(),
                bias: bias
                    .map(|b| b.to_vec1::<f32>().map(Arc::from))
                    .transpose()
                    .map_err(|e| err(path, e))?,
            }
        } else {
            Params::Device { weight_t, bias }
        };
        layers.push(Layer {
            params,
            activation,
            sizes: (l.in_features, l.out_features),
        });
    }
    let first = config.layers[0].in_features as i64;
    let last = config.layers[config.layers.len() - 1].out_features as i64;
    let io = |declared: &[crate::core::config::IoConfig],
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
    super::candle_loaded("safetensors_mlp", input, vec![output], config, mlp)
}

impl Mlp {
    fn run_cpu(&self, mut h: Vec<f32>, rows: usize) -> Result<Vec<f32>> {
        for l in &self.layers {
            let Params::Cpu { weight_t, bias } = &l.params else {
                return Err(Error::Internal("mlp: a device layer on the CPU".into()));
            };
            let (k, n) = l.sizes;
            h = super::kernels::gemm_rows(&h, weight_t, (rows, k, n)).ok_or_else(|| {
                Error::Internal(format!(
                    "mlp: {} values are not {rows} rows of {k}",
                    h.len()
                ))
            })?;
            let act = l.activation;
            match bias {
                Some(b) => h.chunks_exact_mut(n).for_each(|row| {
                    row.iter_mut()
                        .zip(b.iter())
                        .for_each(|(v, b)| *v = act.apply(*v + b))
                }),
                None => h.iter_mut().for_each(|v| *v = act.apply(*v)),
            }
        }
        if self.softmax {
            let n = self.layers.last().map_or(1, |l| l.sizes.1);
            super::kernels::softmax_rows(&mut h, n);
        }
        Ok(h)
    }

    fn run_device(
        &self,
        values: Vec<f32>,
        rows: usize,
        cols: usize,
    ) -> candle_core::Result<Vec<f32>> {
        let mut h = CTensor::from_vec(values, (rows, cols), &self.device)?;
        for l in &self.layers {
            let Params::Device { weight_t, bias } = &l.params else {
                candle_core::bail!("mlp: a CPU layer on {:?}", self.device);
            };
            h = h.matmul(weight_t)?;
            if let Some(b) = bias {
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
    }
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
        let out = if self.device.is_cpu() {
            self.run_cpu(values, rows)?
        } else {
            self.run_device(values, rows, cols)
                .map_err(|e| Error::Internal(format!("candle: {e}")))?
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What both safetensors loaders rely on (they read the file, never map
    /// it, so an overwrite in place cannot fault the process): a header over
    /// 100 MB, and offsets that do not tile the data exactly, are refused.
    #[test]
    fn safetensors_headers_and_offsets_are_checked() {
        let dir = std::env::temp_dir().join(format!("switchyard-st-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = |name: &str, header_len: u64, header: &str, data: usize| {
            let mut b = header_len.to_le_bytes().to_vec();
            b.extend_from_slice(header.as_bytes());
            b.extend(std::iter::repeat_n(0u8, data));
            let p = dir.join(name);
            std::fs::write(&p, b).unwrap();
            p
        };
        let h = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}"#;
        let ok = file("ok", h.len() as u64, h, 8);
        assert!(candle_core::safetensors::load(&ok, &candle_core::Device::Cpu).is_ok());
        let huge = file("huge", 200_000_000, h, 8);
        let gap_after = file("gap-after", h.len() as u64, h, 12);
        let g = r#"{"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#;
        let gap_before = file("gap-before", g.len() as u64, g, 12);
        for p in [huge, gap_after, gap_before] {
            let e = candle_core::safetensors::load(&p, &candle_core::Device::Cpu);
            assert!(e.is_err(), "{}", p.display());
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The CPU path and candle's ops (the GPU path, run here on the CPU) agree
    /// for every activation, with and without bias and softmax.
    #[test]
    fn the_cpu_path_matches_candles_ops() {
        let (rows, sizes) = (37, [(16, 33), (33, 8), (8, 5)]);
        let acts = [
            Activation::Relu,
            Activation::Gelu,
            Activation::Tanh,
            Activation::Sigmoid,
            Activation::None,
        ];
        let mut rng = fastrand::Rng::with_seed(5);
        let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rng.f32() * 2.0 - 1.0).collect() };
        for (a, &act) in acts.iter().enumerate() {
            for softmax in [false, true] {
                let (mut cpu, mut dev) = (Vec::new(), Vec::new());
                for (i, &(k, n)) in sizes.iter().enumerate() {
                    let (w, b) = (rand(k * n), (i != a % 3).then(|| rand(n)));
                    let activation = if i + 1 == sizes.len() {
                        Activation::None
                    } else {
                        act
                    };
                    cpu.push(Layer {
                        params: Params::Cpu {
                            weight_t: w.clone().into(),
                            bias: b.clone().map(Arc::from),
                        },
                        activation,
                        sizes: (k, n),
                    });
                    dev.push(Layer {
                        params: Params::Device {
                            weight_t: CTensor::from_vec(w, (k, n), &Device::Cpu).unwrap(),
                            bias: b.map(|b| CTensor::from_vec(b, n, &Device::Cpu).unwrap()),
                        },
                        activation,
                        sizes: (k, n),
                    });
                }
                let mlp = |layers| Mlp {
                    layers,
                    softmax,
                    input: "input".into(),
                    output: "output".into(),
                    device: Device::Cpu,
                };
                let x = rand(rows * 16);
                let got = mlp(cpu).run_cpu(x.clone(), rows).unwrap();
                let want = mlp(dev).run_device(x, rows, 16).unwrap();
                assert_eq!(got.len(), rows * 5);
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(g, w)| (g - w).abs())
                    .fold(0.0, f32::max);
                assert!(
                    worst < 1e-5,
                    "activation {a}, softmax {softmax}: off by {worst}"
                );
            }
        }
    }
}
