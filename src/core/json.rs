//! A tensor's elements as JSON: the V2 `data` array that the JSON codecs
//! answer with and that capture records keep.

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::core::tensor::{BytesIter, DataType, Tensor};

/// Serializes a tensor's elements as a flat JSON array.
pub struct DataJson<'a>(pub &'a Tensor);

fn le<const N: usize>(c: &[u8]) -> [u8; N] {
    c.try_into().expect("chunk of N bytes")
}

impl Serialize for DataJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let d = &self.0.data;
        match self.0.dtype {
            DataType::Bool => s.collect_seq(d.iter().map(|&b| b != 0)),
            DataType::U8 => s.collect_seq(d.iter()),
            DataType::I8 => s.collect_seq(d.iter().map(|&b| b as i8)),
            DataType::U16 => s.collect_seq(d.chunks_exact(2).map(|c| u16::from_le_bytes(le(c)))),
            DataType::I16 => s.collect_seq(d.chunks_exact(2).map(|c| i16::from_le_bytes(le(c)))),
            DataType::U32 => s.collect_seq(d.chunks_exact(4).map(|c| u32::from_le_bytes(le(c)))),
            DataType::I32 => s.collect_seq(d.chunks_exact(4).map(|c| i32::from_le_bytes(le(c)))),
            DataType::U64 => s.collect_seq(d.chunks_exact(8).map(|c| u64::from_le_bytes(le(c)))),
            DataType::I64 => s.collect_seq(d.chunks_exact(8).map(|c| i64::from_le_bytes(le(c)))),
            DataType::F16 => s.collect_seq(
                d.chunks_exact(2)
                    .map(|c| half::f16::from_le_bytes(le(c)).to_f32()),
            ),
            DataType::BF16 => s.collect_seq(
                d.chunks_exact(2)
                    .map(|c| half::bf16::from_le_bytes(le(c)).to_f32()),
            ),
            DataType::F32 => s.collect_seq(d.chunks_exact(4).map(|c| f32::from_le_bytes(le(c)))),
            DataType::F64 => s.collect_seq(d.chunks_exact(8).map(|c| f64::from_le_bytes(le(c)))),
            DataType::Bytes => s.collect_seq(
                BytesIter::new(d).map(|e| String::from_utf8_lossy(e.unwrap_or_default())),
            ),
        }
    }
}

/// A float of a 32- or 16-bit type as a JSON number that prints as briefly as the
/// type allows (`0.1`, not the f64 `0.10000000149011612`), yet reads back to it.
fn short_float(x: f32) -> Value {
    format!("{x}")
        .parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or(Value::Null, Value::Number)
}

/// The elements of a tensor as flat JSON values.
pub fn flat_values(t: &Tensor) -> Vec<Value> {
    let f32s = |v: Vec<f32>| v.into_iter().map(short_float).collect();
    let d = &t.data;
    match t.dtype {
        DataType::F32 => f32s(
            d.chunks_exact(4)
                .map(|c| f32::from_le_bytes(le(c)))
                .collect(),
        ),
        DataType::F16 => f32s(
            d.chunks_exact(2)
                .map(|c| half::f16::from_le_bytes(le(c)).to_f32())
                .collect(),
        ),
        DataType::BF16 => f32s(
            d.chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes(le(c)).to_f32())
                .collect(),
        ),
        _ => match serde_json::to_value(DataJson(t)).expect("plain data") {
            Value::Array(v) => v,
            other => vec![other],
        },
    }
}
