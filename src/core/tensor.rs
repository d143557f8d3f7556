//! Data types and tensors: the protocol-neutral payload every codec produces and every backend consumes.

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::core::error::Error;

/// The V2 / Open Inference Protocol datatypes that ONNX Runtime can run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DataType {
    #[serde(rename = "BOOL")]
    Bool,
    #[serde(rename = "UINT8")]
    U8,
    #[serde(rename = "UINT16")]
    U16,
    #[serde(rename = "UINT32")]
    U32,
    #[serde(rename = "UINT64")]
    U64,
    #[serde(rename = "INT8")]
    I8,
    #[serde(rename = "INT16")]
    I16,
    #[serde(rename = "INT32")]
    I32,
    #[serde(rename = "INT64")]
    I64,
    #[serde(rename = "FP16")]
    F16,
    #[serde(rename = "FP32")]
    F32,
    #[serde(rename = "FP64")]
    F64,
    #[serde(rename = "BF16")]
    BF16,
    /// Variable-length byte strings (ONNX `string`).
    #[serde(rename = "BYTES")]
    Bytes,
}

impl DataType {
    pub const ALL: [DataType; 14] = [
        DataType::Bool,
        DataType::U8,
        DataType::U16,
        DataType::U32,
        DataType::U64,
        DataType::I8,
        DataType::I16,
        DataType::I32,
        DataType::I64,
        DataType::F16,
        DataType::F32,
        DataType::F64,
        DataType::BF16,
        DataType::Bytes,
    ];

    /// The protocol name (`"FP32"`, `"BYTES"`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            DataType::Bool => "BOOL",
            DataType::U8 => "UINT8",
            DataType::U16 => "UINT16",
            DataType::U32 => "UINT32",
            DataType::U64 => "UINT64",
            DataType::I8 => "INT8",
            DataType::I16 => "INT16",
            DataType::I32 => "INT32",
            DataType::I64 => "INT64",
            DataType::F16 => "FP16",
            DataType::F32 => "FP32",
            DataType::F64 => "FP64",
            DataType::BF16 => "BF16",
            DataType::Bytes => "BYTES",
        }
    }

    /// The name in Triton's model configuration (`TYPE_FP32`, `TYPE_STRING`, …).
    pub fn triton_config_name(self) -> &'static str {
        match self {
            DataType::Bool => "TYPE_BOOL",
            DataType::U8 => "TYPE_UINT8",
            DataType::U16 => "TYPE_UINT16",
            DataType::U32 => "TYPE_UINT32",
            DataType::U64 => "TYPE_UINT64",
            DataType::I8 => "TYPE_INT8",
            DataType::I16 => "TYPE_INT16",
            DataType::I32 => "TYPE_INT32",
            DataType::I64 => "TYPE_INT64",
            DataType::F16 => "TYPE_FP16",
            DataType::F32 => "TYPE_FP32",
            DataType::F64 => "TYPE_FP64",
            DataType::BF16 => "TYPE_BF16",
            DataType::Bytes => "TYPE_STRING",
        }
    }

    pub fn parse(s: &str) -> Option<DataType> {
        DataType::ALL.into_iter().find(|d| d.as_str() == s)
    }

    /// Whether it is a signed or unsigned integer type.
    pub fn is_integer(self) -> bool {
        matches!(
            self,
            DataType::U8
                | DataType::U16
                | DataType::U32
                | DataType::U64
                | DataType::I8
                | DataType::I16
                | DataType::I32
                | DataType::I64
        )
    }

    /// Bytes per element; `None` for BYTES, whose elements vary in length.
    pub fn size(self) -> Option<usize> {
        Some(match self {
            DataType::Bool | DataType::U8 | DataType::I8 => 1,
            DataType::U16 | DataType::I16 | DataType::F16 | DataType::BF16 => 2,
            DataType::U32 | DataType::I32 | DataType::F32 => 4,
            DataType::U64 | DataType::I64 | DataType::F64 => 8,
            DataType::Bytes => return None,
        })
    }
}

impl std::fmt::Display for DataType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A named n-dimensional array.
///
/// `data` holds the elements in row-major order as little-endian bytes, exactly as
/// Triton's binary extension and gRPC `raw_*_contents` carry them: fixed-size types
/// back to back, BYTES as a 4-byte little-endian length followed by the bytes, per
/// element. One layout everywhere means binary payloads are sliced, never re-encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub dtype: DataType,
    pub shape: Vec<i64>,
    pub data: Bytes,
}

/// The most dimensions a tensor may have (numpy's limit).
pub const MAX_RANK: usize = 64;
/// The largest size of one dimension (the largest `int32`, which runtimes index with).
pub const MAX_DIM: i64 = i32::MAX as i64;
/// The most elements a tensor may name, counting a zero-sized dim as one: a shape
/// such as `[0, 2^62]` holds nothing but would still reach the runtime's
/// arithmetic, so it is refused like a large one. 2^28: four times what a 64 MiB
/// body of one-byte elements can carry.
pub const MAX_ELEMENTS: usize = 1 << 28;

/// Checks a client's shape against [`MAX_RANK`], [`MAX_DIM`] and
/// [`MAX_ELEMENTS`]; the error names the tensor.
pub fn check_shape(name: &str, shape: &[i64]) -> Result<usize, Error> {
    if shape.len() > MAX_RANK {
        return Err(Error::invalid(format!(
            "tensor '{name}': {} dimensions, more than the {MAX_RANK} a tensor may have",
            shape.len()
        )));
    }
    if let Some(d) = shape.iter().find(|&&d| d < 0) {
        return Err(Error::invalid(format!(
            "tensor '{name}': shape {shape:?} has a negative dimension ({d})"
        )));
    }
    if let Some(d) = shape.iter().find(|&&d| d > MAX_DIM) {
        return Err(Error::invalid(format!(
            "tensor '{name}': dimension {d} is larger than the {MAX_DIM} a dimension may be"
        )));
    }
    let nominal = shape.iter().try_fold(1usize, |acc, &d| {
        acc.checked_mul((d as usize).max(1))
            .filter(|&n| n <= MAX_ELEMENTS)
    });
    if nominal.is_none() {
        return Err(Error::invalid(format!(
            "tensor '{name}': shape {shape:?} names more than {MAX_ELEMENTS} elements"
        )));
    }
    Ok(element_count(shape).expect("bounded above"))
}

/// Number of elements a shape holds, or `None` on a negative dim or overflow.
pub fn element_count(shape: &[i64]) -> Option<usize> {
    shape.iter().try_fold(1usize, |acc, &d| {
        usize::try_from(d).ok().and_then(|d| acc.checked_mul(d))
    })
}

impl Tensor {
    /// A tensor whose data has been checked against its shape.
    pub fn new(
        name: String,
        dtype: DataType,
        shape: Vec<i64>,
        data: Bytes,
    ) -> Result<Tensor, Error> {
        let t = Tensor {
            name,
            dtype,
            shape,
            data,
        };
        t.validate_size()?;
        Ok(t)
    }

    /// Checks that `data` holds exactly the elements `shape` promises.
    pub fn validate_size(&self) -> Result<(), Error> {
        let n = check_shape(&self.name, &self.shape)?;
        match self.dtype.size() {
            Some(sz) => {
                let want = n.checked_mul(sz).ok_or_else(|| {
                    Error::invalid(format!("tensor '{}': shape is too large", self.name))
                })?;
                if self.data.len() != want {
                    return Err(Error::invalid(format!(
                        "tensor '{}': shape {:?} needs {} elements ({} bytes of {}), got {} bytes",
                        self.name,
                        self.shape,
                        n,
                        want,
                        self.dtype,
                        self.data.len()
                    )));
                }
            }
            None => {
                let got = BytesIter::new(&self.data).try_fold(0usize, |c, e| e.map(|_| c + 1));
                match got {
                    Some(c) if c == n => {}
                    Some(c) => {
                        return Err(Error::invalid(format!(
                            "tensor '{}': shape {:?} needs {} elements, got {}",
                            self.name, self.shape, n, c
                        )))
                    }
                    None => {
                        return Err(Error::invalid(format!(
                            "tensor '{}': BYTES data is not a sequence of 4-byte length-prefixed elements",
                            self.name
                        )))
                    }
                }
            }
        }
        Ok(())
    }

    /// Number of elements (from the shape).
    pub fn len(&self) -> usize {
        element_count(&self.shape).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Iterates the elements of a BYTES tensor's length-prefixed layout; yields `None`
/// once if the layout is malformed.
pub struct BytesIter<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> BytesIter<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        BytesIter {
            rest: data,
            failed: false,
        }
    }
}

impl<'a> Iterator for BytesIter<'a> {
    type Item = Option<&'a [u8]>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() || self.failed {
            return None;
        }
        let Some((len, rest)) = self.rest.split_first_chunk::<4>() else {
            self.failed = true;
            return Some(None);
        };
        let len = u32::from_le_bytes(*len) as usize;
        if rest.len() < len {
            self.failed = true;
            return Some(None);
        }
        let (elem, rest) = rest.split_at(len);
        self.rest = rest;
        Some(Some(elem))
    }
}

/// Builds the length-prefixed layout of a BYTES tensor.
pub fn encode_bytes_elements<'a>(elems: impl IntoIterator<Item = &'a [u8]>) -> Bytes {
    let mut out = BytesMut::new();
    for e in elems {
        out.put_u32_le(e.len() as u32);
        out.put_slice(e);
    }
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datatype_names_round_trip() {
        for d in DataType::ALL {
            assert_eq!(DataType::parse(d.as_str()), Some(d));
        }
        assert_eq!(DataType::parse("FP8"), None);
    }

    #[test]
    fn bytes_layout_round_trips_and_rejects_truncation() {
        let b = encode_bytes_elements([&b"ab"[..], b"", b"xyz"]);
        let elems: Vec<_> = BytesIter::new(&b).map(|e| e.unwrap().to_vec()).collect();
        assert_eq!(elems, vec![b"ab".to_vec(), vec![], b"xyz".to_vec()]);
        let cut = &b[..b.len() - 1];
        assert!(BytesIter::new(cut).any(|e| e.is_none()));
    }

    #[test]
    fn size_validation_names_the_tensor() {
        let t = Tensor {
            name: "x".into(),
            dtype: DataType::F32,
            shape: vec![2, 2],
            data: Bytes::from(vec![0u8; 12]),
        };
        let e = t.validate_size().unwrap_err().to_string();
        assert!(e.contains("'x'") && e.contains("4 elements"), "{e}");
        assert_eq!(element_count(&[]), Some(1));
        assert_eq!(element_count(&[3, 0]), Some(0));
        assert_eq!(element_count(&[-1]), None);
    }

    #[test]
    fn shapes_are_bounded_even_when_empty() {
        assert_eq!(check_shape("x", &[0, 3]).unwrap(), 0);
        assert_eq!(check_shape("x", &[]).unwrap(), 1);
        for bad in [
            vec![0, 1 << 62],
            vec![0, MAX_DIM, MAX_DIM],
            vec![-1, 2],
            vec![1; MAX_RANK + 1],
        ] {
            let e = check_shape("x", &bad).unwrap_err();
            assert_eq!(e.status_code(), 400);
            assert!(e.to_string().contains("tensor 'x'"), "{e}");
        }
    }
}
