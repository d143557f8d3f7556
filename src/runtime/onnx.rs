//! The ONNX backend: sessions of the ONNX Runtime library loaded at run time.

use std::borrow::Cow;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use bytes::Bytes;
use ort::environment::Environment;
use ort::memory::Allocator;
use ort::session::{builder::GraphOptimizationLevel, Session, SessionInputValue};
use ort::value::{DynTensor, DynValue, Tensor as OrtTensor, TensorElementType, ValueType};

use super::{Backend, Loaded};
use crate::core::config::{Device, ModelConfig};
use crate::core::error::{Error, Result};
use crate::core::metadata::{ModelMetadata, TensorSpec};
use crate::core::tensor::{encode_bytes_elements, BytesIter, DataType, Tensor};

/// The ONNX Runtime release whose API `ort` targets; the Makefile fetches this wheel.
pub const ORT_VERSION: &str = "1.31.1";
const LIB_NAME: &str = "libonnxruntime.so";

static ENV: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Where the ONNX Runtime shared library is looked for, in order: `ORT_DYLIB_PATH`,
/// then beside the running binary, then `../lib` from it.
pub fn library_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return vec![PathBuf::from(p)];
    }
    let mut v = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(Path::to_path_buf))
    {
        for d in [dir.clone(), dir.join("../lib")] {
            v.push(d.join(LIB_NAME));
            v.push(d.join(format!("{LIB_NAME}.{ORT_VERSION}")));
        }
    }
    v
}

/// Loads ONNX Runtime once per process. The error says how to get the library.
pub fn init() -> Result<&'static Environment> {
    let env = ENV.get_or_init(|| {
        let candidates = library_candidates();
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            let looked: Vec<String> = candidates.iter().map(|p| p.display().to_string()).collect();
            return Err(format!(
                "the ONNX Runtime library {LIB_NAME} was not found (looked in: {}). \
                 Run `make build` in the Switchyard checkout: it fetches it from the \
                 onnxruntime=={ORT_VERSION} wheel on PyPI and puts it beside the binary. \
                 Or point ORT_DYLIB_PATH at a libonnxruntime.so {ORT_VERSION}.",
                looked.join(", ")
            ));
        };
        let builder = ort::init_from(path)
            .map_err(|e| format!("cannot load ONNX Runtime from {}: {e}", path.display()))?;
        builder
            .with_name("switchyard")
            .build()
            .map_err(|e| format!("cannot start ONNX Runtime from {}: {e}", path.display()))
    });
    env.as_ref().map_err(|e| Error::load(e.clone()))
}

fn element_type(t: TensorElementType) -> Option<DataType> {
    Some(match t {
        TensorElementType::Bool => DataType::Bool,
        TensorElementType::Uint8 => DataType::U8,
        TensorElementType::Uint16 => DataType::U16,
        TensorElementType::Uint32 => DataType::U32,
        TensorElementType::Uint64 => DataType::U64,
        TensorElementType::Int8 => DataType::I8,
        TensorElementType::Int16 => DataType::I16,
        TensorElementType::Int32 => DataType::I32,
        TensorElementType::Int64 => DataType::I64,
        TensorElementType::Float16 => DataType::F16,
        TensorElementType::Float32 => DataType::F32,
        TensorElementType::Float64 => DataType::F64,
        TensorElementType::Bfloat16 => DataType::BF16,
        TensorElementType::String => DataType::Bytes,
        _ => return None,
    })
}

fn ort_type(d: DataType) -> TensorElementType {
    match d {
        DataType::Bool => TensorElementType::Bool,
        DataType::U8 => TensorElementType::Uint8,
        DataType::U16 => TensorElementType::Uint16,
        DataType::U32 => TensorElementType::Uint32,
        DataType::U64 => TensorElementType::Uint64,
        DataType::I8 => TensorElementType::Int8,
        DataType::I16 => TensorElementType::Int16,
        DataType::I32 => TensorElementType::Int32,
        DataType::I64 => TensorElementType::Int64,
        DataType::F16 => TensorElementType::Float16,
        DataType::F32 => TensorElementType::Float32,
        DataType::F64 => TensorElementType::Float64,
        DataType::BF16 => TensorElementType::Bfloat16,
        DataType::Bytes => TensorElementType::String,
    }
}

fn spec(kind: &str, name: &str, ty: &ValueType) -> Result<TensorSpec> {
    let ValueType::Tensor {
        ty,
        shape,
        dimension_symbols,
    } = ty
    else {
        return Err(Error::load(format!(
            "{kind} '{name}' is a {ty}, not a tensor; Switchyard serves tensor inputs and outputs"
        )));
    };
    let dtype = element_type(*ty).ok_or_else(|| {
        Error::load(format!(
            "{kind} '{name}' has element type {ty:?}, which has no V2 datatype"
        ))
    })?;
    let shape: Vec<i64> = shape.iter().map(|&d| if d < 0 { -1 } else { d }).collect();
    let symbols = shape
        .iter()
        .zip(dimension_symbols.iter())
        .map(|(&d, s)| (d < 0 && !s.is_empty()).then(|| s.clone()))
        .chain(std::iter::repeat(None))
        .take(shape.len())
        .collect();
    Ok(TensorSpec {
        name: name.to_string(),
        dtype,
        shape,
        symbols,
    })
}

fn session(path: &Path, config: &ModelConfig) -> Result<Session> {
    let env = init()?;
    super::external_data::check(path)?;
    let fail = |e: &dyn std::fmt::Display| Error::load(format!("{}: {e}", path.display()));
    let builder = Session::builder(env)
        .map_err(|e| fail(&e))?
        .with_optimization_level(GraphOptimizationLevel::All)
        .map_err(|e| fail(&e))?
        .with_intra_threads(config.intra_op_threads())
        .map_err(|e| fail(&e))?
        .with_inter_threads(1)
        .map_err(|e| fail(&e))?
        // Spinning intra-op threads burn the cores the network needs on small machines.
        .with_intra_op_spinning(false)
        .map_err(|e| fail(&e))?;
    let mut builder = with_device(builder, config.device()?)?;
    builder.commit_from_file(path).map_err(|e| fail(&e))
}

#[cfg(not(feature = "cuda"))]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda(_) => Err(Error::load(format!(
            "device '{device}' needs a GPU build: this binary was built without the `cuda` \
             feature (build with `cargo build --release --features cuda`), or set device = \"cpu\""
        ))),
    }
}

#[cfg(feature = "cuda")]
fn with_device(
    builder: ort::session::builder::SessionBuilder,
    device: Device,
) -> Result<ort::session::builder::SessionBuilder> {
    match device {
        Device::Cpu => Ok(builder),
        Device::Cuda(n) => builder
            .with_execution_providers([ort::ep::CUDA::default()
                .with_device_id(n as i32)
                .build()
                .error_on_failure()])
            .map_err(|e| Error::load(format!("device '{device}': {e}"))),
    }
}

/// Opens `config.instances()` sessions of one `model.onnx` and reads its metadata.
pub fn load(path: &Path, config: &ModelConfig) -> Result<Loaded> {
    let mut instances: Vec<Box<dyn Backend>> = Vec::new();
    let first = session(path, config)?;
    let inputs = first
        .inputs()
        .iter()
        .map(|o| spec("input", o.name(), o.dtype()))
        .collect::<Result<Vec<_>>>()?;
    let outputs = first
        .outputs()
        .iter()
        .map(|o| spec("output", o.name(), o.dtype()))
        .collect::<Result<Vec<_>>>()?;
    let mut metadata = ModelMetadata {
        platform: "onnxruntime_onnx",
        inputs,
        outputs,
        max_batch_size: 0,
        optional_outputs: Vec::new(),
    };
    metadata.max_batch_size = super::max_batch_size(config, &metadata)?;
    let outputs_all = metadata.outputs.clone();
    instances.push(Box::new(OnnxInstance {
        session: first,
        outputs: outputs_all.clone(),
    }));
    for _ in 1..config.instances() {
        instances.push(Box::new(OnnxInstance {
            session: session(path, config)?,
            outputs: outputs_all.clone(),
        }));
    }
    Ok(Loaded {
        metadata,
        instances,
    })
}

struct OnnxInstance {
    session: Session,
    outputs: Vec<TensorSpec>,
}

impl Backend for OnnxInstance {
    fn infer(&mut self, inputs: &[Tensor], outputs: &[String]) -> Result<Vec<Tensor>> {
        let mut feed: Vec<(Cow<'_, str>, SessionInputValue<'_>)> = Vec::with_capacity(inputs.len());
        for t in inputs {
            feed.push((Cow::Borrowed(t.name.as_str()), to_ort(t)?.into()));
        }
        let results = self.session.run(feed).map_err(|e| run_error(&e))?;
        outputs
            .iter()
            .map(|name| {
                let value = results.get(name.as_str()).ok_or_else(|| {
                    Error::Internal(format!("ONNX Runtime returned no output '{name}'"))
                })?;
                let dtype = self
                    .outputs
                    .iter()
                    .find(|s| &s.name == name)
                    .map(|s| s.dtype)
                    .ok_or_else(|| Error::Internal(format!("undeclared output '{name}'")))?;
                from_ort(name, dtype, value)
            })
            .collect()
    }
}

/// Whose fault a failed run is, from ONNX Runtime's status code. Inputs were
/// validated against the graph, so what ORT still refuses with a plain failure is
/// about their values or dynamic dims (an index out of range, shapes that do not
/// broadcast): the client's to fix, a 400 for that request alone. Memory,
/// engine and device faults are the server's: a 500 (503 when the device is
/// gone), and the batch is not re-run request by request for them.
fn run_error(e: &ort::Error) -> Error {
    use ort::ErrorCode as C;
    let msg = e.message();
    let lower = msg.to_ascii_lowercase();
    let out_of_memory = ["failed to allocate", "bad_alloc", "out of memory"]
        .iter()
        .any(|m| lower.contains(m));
    match e.code() {
        C::DeviceReset => Error::Unavailable(format!("the device was reset: {msg}")),
        _ if out_of_memory => Error::OutOfMemory(format!("ONNX Runtime ran out of memory: {msg}")),
        // The CUDA provider reports kernel and library faults as plain failures.
        _ if [
            "cuda failure",
            "cudnn failure",
            "cublas failure",
            "cuda error",
        ]
        .iter()
        .any(|m| lower.contains(m)) =>
        {
            Error::Internal(format!("ONNX Runtime's CUDA provider failed: {msg}"))
        }
        C::EngineError
        | C::ExecutionProviderFailure
        | C::NotImplemented
        | C::NoModel
        | C::NoSuchFile
        | C::ModelLoaded
        | C::ModelLoadCanceled
        | C::CompilationRequired
        | C::InvalidProtobuf => Error::Internal(format!("ONNX Runtime failed: {msg}")),
        // InvalidArgument, InvalidGraph (an input the graph cannot take),
        // GenericFailure and RuntimeException (a kernel's check on values).
        _ => Error::invalid(format!("the model could not run these inputs: {msg}")),
    }
}

fn to_ort(t: &Tensor) -> Result<DynValue> {
    let fail = |e: ort::Error| Error::Internal(format!("input '{}': {e}", t.name));
    if t.dtype == DataType::Bytes {
        let mut elems = Vec::with_capacity(t.len());
        for (i, e) in BytesIter::new(&t.data).enumerate() {
            let e =
                e.ok_or_else(|| Error::invalid(format!("input '{}': bad BYTES data", t.name)))?;
            let s = std::str::from_utf8(e).map_err(|_| {
                Error::invalid(format!(
                    "input '{}': element {i} is not UTF-8 text, which ONNX string tensors need",
                    t.name
                ))
            })?;
            elems.push(s.to_owned());
        }
        let elems: std::sync::Arc<[String]> = elems.into();
        let v = OrtTensor::from_string_array((t.shape.clone(), elems)).map_err(fail)?;
        return Ok(v.into_dyn());
    }
    let mut v =
        DynTensor::new(&Allocator::default(), ort_type(t.dtype), t.shape.clone()).map_err(fail)?;
    if !t.data.is_empty() {
        // SAFETY: ORT allocated exactly shape × element-size bytes on the CPU, and
        // `validate_size` checked that `data` has that length.
        unsafe {
            std::ptr::copy_nonoverlapping(
                t.data.as_ptr(),
                v.data_ptr_mut().cast::<u8>(),
                t.data.len(),
            );
        }
    }
    Ok(v.into_dyn())
}

fn from_ort(name: &str, dtype: DataType, value: &DynValue) -> Result<Tensor> {
    let fail = |e: ort::Error| Error::Internal(format!("output '{name}': {e}"));
    let ValueType::Tensor { ty, shape, .. } = value.dtype() else {
        return Err(Error::Internal(format!("output '{name}' is not a tensor")));
    };
    if element_type(*ty) != Some(dtype) {
        return Err(Error::Internal(format!(
            "output '{name}' came back as {ty:?}, declared {dtype}"
        )));
    }
    let shape: Vec<i64> = shape.to_vec();
    let data = if dtype == DataType::Bytes {
        let (_, strings) = value.try_extract_strings().map_err(fail)?;
        encode_bytes_elements(strings.iter().map(|s| s.as_bytes()))
    } else {
        let n = crate::core::tensor::element_count(&shape).unwrap_or(0);
        let len = n * dtype.size().expect("fixed-size type");
        if len == 0 {
            Bytes::new()
        } else {
            // SAFETY: a CPU tensor of `n` elements of this type holds `len` bytes at data_ptr.
            let view = value
                .view()
                .downcast::<ort::value::DynTensorValueType>()
                .map_err(fail)?;
            let slice = unsafe { std::slice::from_raw_parts(view.data_ptr().cast::<u8>(), len) };
            Bytes::copy_from_slice(slice)
        }
    };
    Ok(Tensor {
        name: name.to_string(),
        dtype,
        shape,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ort::ErrorCode as C;

    #[test]
    fn run_failures_are_the_clients_unless_the_runtime_or_device_failed() {
        let status =
            |code, msg: &str| run_error(&ort::Error::new_with_code(code, msg)).status_code();
        let bad = 400;
        assert_eq!(
            status(C::InvalidArgument, "indices element out of data bounds"),
            bad
        );
        assert_eq!(status(C::GenericFailure, "cannot broadcast"), bad);
        assert_eq!(status(C::RuntimeException, "k must be positive"), bad);
        let ours = 500;
        assert_eq!(status(C::EngineError, "kernel failed"), ours);
        assert_eq!(status(C::ExecutionProviderFailure, "provider failed"), ours);
        assert_eq!(
            status(
                C::GenericFailure,
                "CUDA failure 700: an illegal memory access"
            ),
            ours
        );
        assert_eq!(
            status(
                C::GenericFailure,
                "Failed to allocate memory for requested buffer"
            ),
            ours
        );
        assert_eq!(status(C::RuntimeException, "std::bad_alloc"), ours);
        assert_eq!(status(C::DeviceReset, "device lost"), 503);
    }
}
