//! What a loaded model version takes and gives: the declared tensors, the
//! batch dimension, and the checks a request passes before it is queued.

use crate::core::error::{Error, Result};
use crate::core::request::InferRequest;
use crate::core::tensor::{DataType, Tensor};

/// Parses a version as a URL or message gives it; empty means "the default version".
pub fn parse_version(model: &str, v: &str) -> Result<Option<u64>> {
    if v.is_empty() {
        return Ok(None);
    }
    match v.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(Error::not_found(format!(
            "model '{model}' has no version '{v}' (versions are positive integers)"
        ))),
    }
}

/// The declared name, datatype and shape of one input or output.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorSpec {
    pub name: String,
    pub dtype: DataType,
    /// `-1` marks a dynamic dimension.
    pub shape: Vec<i64>,
    /// The graph's symbolic name of each dimension, when it has one: two inputs
    /// whose dims share a name must agree on them.
    pub symbols: Vec<Option<String>>,
}

impl TensorSpec {
    /// A tensor of `shape` with no symbolic dimension names.
    pub fn new(name: &str, dtype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            symbols: vec![None; shape.len()],
        }
    }
}

/// What a loaded model version takes and gives.
#[derive(Debug, Clone)]
pub struct ModelMetadata {
    pub platform: &'static str,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
    /// 0: no batch dimension; otherwise the first dim of every input and output is
    /// the batch dim and a request may carry at most this many rows.
    pub max_batch_size: u32,
    /// Outputs given only to a request that names them (a text encoder's
    /// token counts): a request that names none gets the others, so that an
    /// output added for one protocol changes no other protocol's answers.
    pub optional_outputs: Vec<String>,
}

impl ModelMetadata {
    /// Whether every input and output has a dynamic first dimension.
    pub fn dynamic_first_dims(&self) -> bool {
        self.inputs
            .iter()
            .chain(&self.outputs)
            .all(|t| t.shape.first() == Some(&-1))
    }

    /// Whether dim 0 is a batch dimension that requests can be joined along, as
    /// read off a graph with no configuration, and why. A dynamic first dim alone
    /// is not enough (`MatMul(a[M,K], b[K,N])` has two that differ): every input
    /// and output must have one *and* the graph must name them all alike, or name
    /// none of them with a single input.
    pub fn inferred_batch_dim(&self) -> (bool, String) {
        if self.inputs.is_empty() {
            return (false, "the model has no inputs".into());
        }
        if !self.dynamic_first_dims() {
            return (
                false,
                "not every input and output has a dynamic first dimension".into(),
            );
        }
        let mut names = self
            .inputs
            .iter()
            .chain(&self.outputs)
            .map(|t| t.symbols.first().cloned().flatten());
        let first = names.next().flatten();
        let all_same = names.all(|n| n == first);
        match (first, all_same) {
            (Some(sym), true) => (
                true,
                format!("every input and output has dynamic first dimension '{sym}'"),
            ),
            (None, true) if self.inputs.len() == 1 => (
                true,
                "the only input and every output have an unnamed dynamic first dimension".into(),
            ),
            (None, true) => (
                false,
                "the inputs' dynamic first dimensions are unnamed, so nothing says they agree"
                    .into(),
            ),
            (_, false) => (
                false,
                "the graph names the dynamic first dimensions differently (or some not at all)"
                    .into(),
            ),
        }
    }

    /// The inputs as clients are told of them (model metadata): a batched input
    /// of one value a row (`[-1]`, texts) is `[-1, 1]`, as Triton shows it with
    /// its configuration's dims `[1]`; both shapes are taken.
    pub fn shown_inputs(&self) -> Vec<TensorSpec> {
        self.inputs
            .iter()
            .map(|s| {
                let mut s = s.clone();
                if self.max_batch_size > 0 && s.shape.len() == 1 {
                    s.shape.push(1);
                    s.symbols.push(None);
                }
                s
            })
            .collect()
    }

    /// Takes a `[batch, 1]` tensor for a batched input of one value a row
    /// (`[-1]`), as the model configuration's reshape tells Triton's clients to
    /// send it.
    pub fn apply_reshapes(&self, req: &mut InferRequest) {
        if self.max_batch_size == 0 {
            return;
        }
        for t in &mut req.inputs {
            if t.shape.len() == 2
                && t.shape[1] == 1
                && self.input(&t.name).is_some_and(|s| s.shape.len() == 1)
            {
                t.shape.pop();
            }
        }
    }

    /// Checks a request against the declared inputs and outputs before it is queued,
    /// so that a mistake is a 400 naming the field and never reaches the runtime.
    pub fn validate(&self, req: &InferRequest) -> Result<()> {
        for (i, t) in req.inputs.iter().enumerate() {
            if req.inputs[..i].iter().any(|o| o.name == t.name) {
                return Err(Error::invalid(format!("input '{}' is given twice", t.name)));
            }
            let Some(spec) = self.inputs.iter().find(|s| s.name == t.name) else {
                return Err(Error::invalid(format!(
                    "unknown input '{}'; the model's inputs are {}",
                    t.name,
                    names(&self.inputs)
                )));
            };
            check_tensor(spec, t)?;
        }
        if let Some(missing) = self
            .inputs
            .iter()
            .find(|s| !req.inputs.iter().any(|t| t.name == s.name))
        {
            return Err(Error::invalid(format!(
                "missing input '{}' ({} {:?})",
                missing.name, missing.dtype, missing.shape
            )));
        }
        for o in &req.outputs {
            if !self.outputs.iter().any(|s| s.name == o.name) {
                return Err(Error::invalid(format!(
                    "unknown output '{}'; the model's outputs are {}",
                    o.name,
                    names(&self.outputs)
                )));
            }
        }
        self.check_shared_dims(req)
    }

    /// Dims that share a symbol (a batch dim `N`, a sequence length) must be equal
    /// across inputs, and so must the batch dim of a batching model.
    fn check_shared_dims(&self, req: &InferRequest) -> Result<()> {
        let mut seen: Vec<(&str, i64, &str)> = Vec::new();
        for t in &req.inputs {
            let spec = self.input(&t.name).expect("validated above");
            for (axis, sym) in spec.symbols.iter().enumerate() {
                let sym = match (axis, sym) {
                    (0, _) if self.max_batch_size > 0 => "<batch>",
                    (_, Some(s)) => s.as_str(),
                    _ => continue,
                };
                let dim = t.shape[axis];
                match seen.iter().find(|(s, _, _)| *s == sym) {
                    Some((_, d, other)) if *d != dim => {
                        return Err(Error::invalid(format!(
                            "input '{}' has {} at dim {} ('{}') but input '{}' has {}",
                            t.name, dim, axis, sym, other, d
                        )))
                    }
                    Some(_) => {}
                    None => seen.push((sym, dim, &t.name)),
                }
            }
        }
        if self.max_batch_size > 0 {
            if let Some((_, rows, name)) = seen.iter().find(|(s, _, _)| *s == "<batch>") {
                if *rows > self.max_batch_size as i64 {
                    return Err(Error::invalid(format!(
                        "input '{name}' has {rows} rows, more than the model's max_batch_size of {}",
                        self.max_batch_size
                    )));
                }
            }
        }
        Ok(())
    }

    /// The outputs a request that names none gets.
    pub fn default_outputs(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter(|s| !self.optional_outputs.contains(&s.name))
            .map(|s| s.name.clone())
            .collect()
    }

    /// The inputs' names as error messages list them: `'a', 'b'`.
    pub fn input_names(&self) -> String {
        names(&self.inputs)
    }

    pub fn input(&self, name: &str) -> Option<&TensorSpec> {
        self.inputs.iter().find(|s| s.name == name)
    }
}

fn names(specs: &[TensorSpec]) -> String {
    let v: Vec<String> = specs.iter().map(|s| format!("'{}'", s.name)).collect();
    v.join(", ")
}

fn check_tensor(spec: &TensorSpec, t: &Tensor) -> Result<()> {
    if spec.dtype != t.dtype {
        return Err(Error::invalid(format!(
            "input '{}': datatype {} does not match the model's {}",
            t.name, t.dtype, spec.dtype
        )));
    }
    let dims_match = spec.shape.len() == t.shape.len()
        && spec
            .shape
            .iter()
            .zip(&t.shape)
            .all(|(&want, &got)| want < 0 || want == got);
    if !dims_match {
        return Err(Error::invalid(format!(
            "input '{}': shape {:?} does not match the model's {:?} (-1 is any size)",
            t.name, t.shape, spec.shape
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn spec(name: &str, dtype: DataType, shape: &[i64], sym: &[Option<&str>]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            symbols: sym.iter().map(|s| s.map(String::from)).collect(),
        }
    }

    fn tensor(name: &str, dtype: DataType, shape: &[i64]) -> Tensor {
        let n: usize = shape.iter().product::<i64>() as usize;
        Tensor {
            name: name.into(),
            dtype,
            shape: shape.to_vec(),
            data: Bytes::from(vec![0; n * dtype.size().unwrap()]),
        }
    }

    fn meta(max_batch_size: u32) -> ModelMetadata {
        ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs: vec![
                spec("a", DataType::F32, &[-1, 3], &[Some("n"), None]),
                spec("b", DataType::I64, &[-1, 3], &[Some("n"), None]),
            ],
            outputs: vec![spec("y", DataType::F32, &[-1], &[Some("n")])],
            max_batch_size,
            optional_outputs: Vec::new(),
        }
    }

    fn req(inputs: Vec<Tensor>) -> InferRequest {
        InferRequest {
            inputs,
            ..Default::default()
        }
    }

    #[test]
    fn one_value_a_row_is_shown_as_dims_1_and_taken_either_way() {
        let m = ModelMetadata {
            platform: "safetensors_bert",
            inputs: vec![spec("text", DataType::Bytes, &[-1], &[None])],
            outputs: vec![spec("embedding", DataType::F32, &[-1, 384], &[None, None])],
            max_batch_size: 32,
            optional_outputs: Vec::new(),
        };
        assert_eq!(m.shown_inputs()[0].shape, [-1, 1]);
        let mut r = req(vec![Tensor {
            name: "text".into(),
            dtype: DataType::Bytes,
            shape: vec![2, 1],
            data: Bytes::from_static(b"\x01\0\0\0a\x01\0\0\0b"),
        }]);
        m.apply_reshapes(&mut r);
        assert_eq!(r.inputs[0].shape, [2]);
        m.validate(&r).unwrap();
        let unbatched = ModelMetadata {
            max_batch_size: 0,
            ..m.clone()
        };
        assert_eq!(
            unbatched.shown_inputs()[0].shape,
            [-1],
            "no batch dim to add to"
        );
    }

    #[test]
    fn dim_0_is_a_batch_dim_only_when_the_graph_says_so() {
        let m = |ins: Vec<TensorSpec>, outs: Vec<TensorSpec>| {
            ModelMetadata {
                platform: "onnxruntime_onnx",
                inputs: ins,
                outputs: outs,
                max_batch_size: 0,
                optional_outputs: Vec::new(),
            }
            .inferred_batch_dim()
            .0
        };
        let f = DataType::F32;
        // MatMul(a[M,K], b[K,N]): two dynamic first dims, named apart.
        assert!(!m(
            vec![
                spec("a", f, &[-1, -1], &[Some("M"), Some("K")]),
                spec("b", f, &[-1, -1], &[Some("K"), Some("N")])
            ],
            vec![spec("y", f, &[-1, -1], &[Some("M"), Some("N")])]
        ));
        // Unnamed and two inputs: nothing says they agree.
        assert!(!m(
            vec![spec("a", f, &[-1], &[None]), spec("b", f, &[-1], &[None])],
            vec![spec("y", f, &[-1], &[None])]
        ));
        // Unnamed, one input; or one name throughout.
        assert!(m(
            vec![spec("a", f, &[-1, 3], &[None, None])],
            vec![spec("y", f, &[-1], &[None])]
        ));
        assert!(m(meta(0).inputs, meta(0).outputs));
        // A fixed first dim anywhere.
        assert!(!m(
            vec![spec("a", f, &[2, 3], &[None, None])],
            vec![spec("y", f, &[-1], &[None])]
        ));
    }

    #[test]
    fn validation_names_the_problem() {
        let m = meta(4);
        let ok = req(vec![
            tensor("a", DataType::F32, &[2, 3]),
            tensor("b", DataType::I64, &[2, 3]),
        ]);
        m.validate(&ok).unwrap();
        let cases = [
            (
                vec![tensor("a", DataType::F32, &[2, 3])],
                "missing input 'b'",
            ),
            (
                vec![
                    tensor("a", DataType::F64, &[2, 3]),
                    tensor("b", DataType::I64, &[2, 3]),
                ],
                "datatype FP64",
            ),
            (
                vec![
                    tensor("a", DataType::F32, &[2, 4]),
                    tensor("b", DataType::I64, &[2, 3]),
                ],
                "shape [2, 4]",
            ),
            (
                vec![
                    tensor("a", DataType::F32, &[2, 3]),
                    tensor("b", DataType::I64, &[1, 3]),
                ],
                "input 'a' has 2",
            ),
            (
                vec![
                    tensor("a", DataType::F32, &[5, 3]),
                    tensor("b", DataType::I64, &[5, 3]),
                ],
                "max_batch_size of 4",
            ),
            (
                vec![
                    tensor("a", DataType::F32, &[2, 3]),
                    tensor("c", DataType::I64, &[2, 3]),
                ],
                "unknown input 'c'",
            ),
        ];
        for (inputs, want) in cases {
            let e = m.validate(&req(inputs)).unwrap_err().to_string();
            assert!(e.contains(want), "{e:?} should contain {want:?}");
        }
        let mut bad_out = ok.clone();
        bad_out.outputs.push(crate::core::request::RequestedOutput {
            name: "z".into(),
            ..Default::default()
        });
        assert!(m
            .validate(&bad_out)
            .unwrap_err()
            .to_string()
            .contains("unknown output 'z'"));
    }
}
