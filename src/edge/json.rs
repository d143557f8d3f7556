//! JSON values and tensors: the element-level parsing and writing shared by the
//! JSON codecs (V2, KServe V1, MLflow scoring).

use std::fmt;

use bytes::Bytes;
use serde::de::{DeserializeSeed, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::core::error::{Error, Result};
pub use crate::core::json::{flat_values, DataJson};
use crate::core::tensor::{DataType, Tensor};

/// A JSON scalar as it came off the wire.
#[derive(Clone, Copy)]
pub(super) enum Scalar<'a> {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(&'a str),
}

impl fmt::Display for Scalar<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::I64(i) => write!(f, "{i}"),
            Scalar::U64(u) => write!(f, "{u}"),
            Scalar::F64(x) => write!(f, "{x}"),
            Scalar::Str(s) => write!(f, "{s:?}"),
        }
    }
}

/// Collects elements of one datatype, little-endian, in row-major order.
pub(super) struct Sink {
    pub(super) dtype: DataType,
    pub(super) out: Vec<u8>,
}

macro_rules! push_int {
    ($out:expr, $t:ty, $v:expr, $dtype:expr) => {{
        let n: Option<$t> = match $v {
            Scalar::I64(i) => <$t>::try_from(i).ok(),
            Scalar::U64(u) => <$t>::try_from(u).ok(),
            Scalar::F64(f)
                if f.fract() == 0.0 && f >= <$t>::MIN as f64 && f <= <$t>::MAX as f64 =>
            {
                Some(f as $t)
            }
            _ => None,
        };
        match n {
            Some(n) => {
                $out.extend_from_slice(&n.to_le_bytes());
                Ok(())
            }
            None => Err(format!("{} is not a valid {} value", $v, $dtype)),
        }
    }};
}

impl Sink {
    pub(super) fn push(&mut self, v: Scalar<'_>) -> std::result::Result<(), String> {
        let out = &mut self.out;
        let bad = |v: Scalar<'_>, d: DataType| format!("{v} is not a valid {d} value");
        match self.dtype {
            DataType::Bool => match v {
                Scalar::Bool(b) => {
                    out.push(b as u8);
                    Ok(())
                }
                _ => Err(bad(v, self.dtype)),
            },
            DataType::U8 => push_int!(out, u8, v, self.dtype),
            DataType::U16 => push_int!(out, u16, v, self.dtype),
            DataType::U32 => push_int!(out, u32, v, self.dtype),
            DataType::U64 => push_int!(out, u64, v, self.dtype),
            DataType::I8 => push_int!(out, i8, v, self.dtype),
            DataType::I16 => push_int!(out, i16, v, self.dtype),
            DataType::I32 => push_int!(out, i32, v, self.dtype),
            DataType::I64 => push_int!(out, i64, v, self.dtype),
            DataType::F64 => push_float(out, v, self.dtype, |f| Some(f.to_le_bytes())),
            DataType::F32 => push_float(out, v, self.dtype, |f| {
                let x = f as f32;
                x.is_finite().then(|| x.to_le_bytes())
            }),
            DataType::F16 => push_float(out, v, self.dtype, |f| {
                let x = half::f16::from_f64(f);
                x.is_finite().then(|| x.to_le_bytes())
            }),
            DataType::BF16 => push_float(out, v, self.dtype, |f| {
                let x = half::bf16::from_f64(f);
                x.is_finite().then(|| x.to_le_bytes())
            }),
            DataType::Bytes => match v {
                Scalar::Str(s) => {
                    out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                    Ok(())
                }
                _ => Err(format!(
                    "{v} is not a string; BYTES data is given as JSON strings"
                )),
            },
        }
    }
}

/// Pushes a number as a float type; `conv` gives its bytes, or `None` when the
/// value is out of the type's range (JSON numbers are always finite).
fn push_float<const N: usize>(
    out: &mut Vec<u8>,
    v: Scalar<'_>,
    dtype: DataType,
    conv: impl Fn(f64) -> Option<[u8; N]>,
) -> std::result::Result<(), String> {
    let f = match v {
        Scalar::I64(i) => i as f64,
        Scalar::U64(u) => u as f64,
        Scalar::F64(f) => f,
        _ => return Err(format!("{v} is not a valid {dtype} value")),
    };
    let bytes = conv(f).ok_or_else(|| format!("{v} is out of the range of {dtype}"))?;
    out.extend_from_slice(&bytes);
    Ok(())
}

/// Visits a (nested) JSON array, pushing every leaf into the sink.
struct Elems<'s>(&'s mut Sink);

impl<'de> DeserializeSeed<'de> for Elems<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> std::result::Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Elems<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an array of {} values", self.0.dtype)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        while seq.next_element_seed(Elems(&mut *self.0))?.is_some() {}
        Ok(())
    }

    fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.0.push(Scalar::Bool(v)).map_err(E::custom)
    }
    fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.0.push(Scalar::I64(v)).map_err(E::custom)
    }
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.0.push(Scalar::U64(v)).map_err(E::custom)
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.0.push(Scalar::F64(v)).map_err(E::custom)
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.0.push(Scalar::Str(v)).map_err(E::custom)
    }
}

pub fn parse_data(name: &str, dtype: DataType, raw: &RawValue, capacity: usize) -> Result<Bytes> {
    let mut sink = Sink {
        dtype,
        out: Vec::with_capacity(capacity),
    };
    let mut de = serde_json::Deserializer::from_str(raw.get());
    Elems(&mut sink)
        .deserialize(&mut de)
        .map_err(|e| Error::invalid(format!("input '{name}': data: {e}")))?;
    Ok(Bytes::from(sink.out))
}

/// Lists written for a tensor's nesting beyond what its elements need: a shape
/// such as `[126, 16224, 0]` holds nothing but would be two million empty
/// lists (a model with shape inputs answers what the client asks for).
pub const MAX_EMPTY_LISTS: usize = 1 << 16;

/// A tensor as nested JSON arrays, following its shape; refused (400) when the
/// nesting would hold far more lists than the tensor has elements.
pub fn tensor_to_value(t: &Tensor) -> Result<Value> {
    let mut lists = 0usize;
    let mut level = 1usize;
    for &d in t.shape.iter().take(t.shape.len().saturating_sub(1)) {
        level = level.saturating_mul(d.max(0) as usize);
        lists = lists.saturating_add(level);
    }
    let bound = t
        .len()
        .max(1)
        .saturating_mul(t.shape.len())
        .saturating_add(MAX_EMPTY_LISTS);
    if lists > bound {
        return Err(Error::invalid(format!(
            "output '{}' has shape {:?}: as nested JSON it would be {lists} lists holding {} values; ask for it as V2 JSON (flat data) or binary",
            t.name,
            t.shape,
            t.len()
        )));
    }
    let items = flat_values(t);
    fn nest(items: &mut std::vec::IntoIter<Value>, shape: &[i64]) -> Value {
        match shape.split_first() {
            None => items.next().unwrap_or(Value::Null),
            Some((&n, rest)) => Value::Array((0..n).map(|_| nest(items, rest)).collect()),
        }
    }
    Ok(nest(&mut items.into_iter(), &t.shape))
}

/// Splits a tensor's nested JSON along dim 0: one value per row.
pub fn rows_of(t: &Tensor) -> Result<Vec<Value>> {
    match tensor_to_value(t)? {
        Value::Array(rows) => Ok(rows),
        _ => Err(Error::invalid(format!(
            "output '{}' is a scalar; it has no rows to give per instance",
            t.name
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_nest_and_unnest() {
        let t = Tensor {
            name: "x".into(),
            dtype: DataType::I32,
            shape: vec![2, 3],
            data: (1..=6i32)
                .flat_map(i32::to_le_bytes)
                .collect::<Vec<_>>()
                .into(),
        };
        assert_eq!(tensor_to_value(&t).unwrap(), json!([[1, 2, 3], [4, 5, 6]]));
        assert_eq!(rows_of(&t).unwrap()[1], json!([4, 5, 6]));
        let s = Tensor {
            name: "s".into(),
            dtype: DataType::F64,
            shape: vec![],
            data: 2.5f64.to_le_bytes().to_vec().into(),
        };
        assert_eq!(tensor_to_value(&s).unwrap(), json!(2.5));
        // Nothing in it, but two million lists of nothing: refused.
        let empty = Tensor {
            name: "e".into(),
            dtype: DataType::F32,
            shape: vec![126, 16224, 0],
            data: Bytes::new(),
        };
        let e = tensor_to_value(&empty).unwrap_err().to_string();
        assert!(e.contains("'e'") && e.contains("binary"), "{e}");
        let few = Tensor {
            shape: vec![3, 0],
            ..empty
        };
        assert_eq!(tensor_to_value(&few).unwrap(), json!([[], [], []]));
        assert!(rows_of(&s).is_err());
        let data = Bytes::from_static(b"[1, true]");
        let raw: Box<RawValue> = serde_json::from_slice(&data).unwrap();
        let e = parse_data("b", DataType::Bool, &raw, 2).unwrap_err();
        assert!(e.to_string().contains("BOOL"), "{e}");
    }
}
