//! Batching arithmetic: joining requests' inputs along dimension 0 and splitting a
//! batched run's outputs back, by rows.

use bytes::{Bytes, BytesMut};

use crate::core::error::{Error, Result};
use crate::core::tensor::{element_count, BytesIter, Tensor};

/// Rows of a request: the first dim of its first input.
pub fn rows_of(inputs: &[Tensor]) -> usize {
    inputs
        .first()
        .and_then(|t| t.shape.first())
        .map_or(1, |&d| d.max(0) as usize)
}

/// Whether two requests can share a run: the same inputs with the same dims past
/// the batch dim, and the same outputs asked for.
pub fn compatible(a: (&[Tensor], &[String]), b: (&[Tensor], &[String])) -> bool {
    a.1 == b.1
        && a.0.len() == b.0.len()
        && a.0.iter().all(|t| {
            b.0.iter()
                .find(|u| u.name == t.name)
                .is_some_and(|u| u.dtype == t.dtype && u.shape.get(1..) == t.shape.get(1..))
        })
}

/// Joins the inputs of several compatible requests along dim 0, in the order of
/// the first request's inputs. BYTES data joins as is: its length-prefixed layout
/// concatenates.
pub fn concat(requests: &[&[Tensor]]) -> Vec<Tensor> {
    let first = requests[0];
    first
        .iter()
        .map(|t| {
            let parts: Vec<&Tensor> = requests
                .iter()
                .map(|r| r.iter().find(|u| u.name == t.name).expect("compatible"))
                .collect();
            let rows: i64 = parts.iter().map(|p| p.shape[0]).sum();
            let mut data = BytesMut::with_capacity(parts.iter().map(|p| p.data.len()).sum());
            for p in &parts {
                data.extend_from_slice(&p.data);
            }
            let mut shape = t.shape.clone();
            shape[0] = rows;
            Tensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape,
                data: data.freeze(),
            }
        })
        .collect()
}

/// Byte offset where each row of `t` starts, plus the end.
fn row_offsets(t: &Tensor) -> Result<Vec<usize>> {
    let rows = *t.shape.first().ok_or_else(|| {
        Error::Internal(format!(
            "output '{}' is a scalar; it cannot be split by rows",
            t.name
        ))
    })? as usize;
    let per_row = element_count(&t.shape[1..]).unwrap_or(0);
    match t.dtype.size() {
        Some(size) => Ok((0..=rows).map(|r| r * per_row * size).collect()),
        None => {
            let mut offsets = vec![0];
            let mut pos = 0;
            let mut in_row = 0;
            for e in BytesIter::new(&t.data) {
                let e =
                    e.ok_or_else(|| Error::Internal(format!("output '{}': bad BYTES", t.name)))?;
                pos += 4 + e.len();
                in_row += 1;
                if in_row == per_row {
                    offsets.push(pos);
                    in_row = 0;
                }
            }
            if per_row == 0 {
                offsets = vec![0; rows + 1];
            }
            Ok(offsets)
        }
    }
}

/// Splits a batched run's outputs into one list per request, `rows[i]` rows each.
/// Slices share the run's buffers: no copy.
pub fn split(outputs: Vec<Tensor>, rows: &[usize]) -> Result<Vec<Vec<Tensor>>> {
    let total: usize = rows.iter().sum();
    let mut per_request: Vec<Vec<Tensor>> = rows
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for t in outputs {
        if t.shape.first().map(|&d| d as usize) != Some(total) {
            return Err(Error::Internal(format!(
                "output '{}' has shape {:?}, not {total} rows; the model cannot be batched \
                 (set max_batch_size = 0 in its config.toml)",
                t.name, t.shape
            )));
        }
        let offsets = row_offsets(&t)?;
        let mut row = 0;
        for (i, &n) in rows.iter().enumerate() {
            let (start, end) = (offsets[row], offsets[row + n]);
            let mut shape = t.shape.clone();
            shape[0] = n as i64;
            per_request[i].push(Tensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape,
                data: if end > start {
                    t.data.slice(start..end)
                } else {
                    Bytes::new()
                },
            });
            row += n;
        }
    }
    Ok(per_request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::tensor::{encode_bytes_elements, DataType};

    fn f32s(name: &str, rows: i64, cols: i64, start: f32) -> Tensor {
        let data: Vec<u8> = (0..rows * cols)
            .flat_map(|i| (start + i as f32).to_le_bytes())
            .collect();
        Tensor {
            name: name.into(),
            dtype: DataType::F32,
            shape: vec![rows, cols],
            data: data.into(),
        }
    }

    #[test]
    fn concat_then_split_gives_each_request_its_rows() {
        let a = vec![f32s("x", 1, 2, 0.0)];
        let b = vec![f32s("x", 3, 2, 10.0)];
        let outs = vec!["x".to_string()];
        assert!(compatible((&a, &outs), (&b, &outs)));
        assert!(!compatible((&a, &outs), (&[f32s("x", 1, 3, 0.0)], &outs)));
        let joined = concat(&[&a, &b]);
        assert_eq!(joined[0].shape, vec![4, 2]);
        let back = split(joined, &[1, 3]).unwrap();
        assert_eq!(back[0][0], a[0]);
        assert_eq!(back[1][0], b[0]);
    }

    #[test]
    fn bytes_split_by_elements() {
        let t = Tensor {
            name: "s".into(),
            dtype: DataType::Bytes,
            shape: vec![3, 2],
            data: encode_bytes_elements([&b"a"[..], b"bb", b"", b"ccc", b"d", b"ee"]),
        };
        let back = split(vec![t], &[2, 1]).unwrap();
        assert_eq!(
            back[0][0].data,
            encode_bytes_elements([&b"a"[..], b"bb", b"", b"ccc"])
        );
        assert_eq!(back[1][0].data, encode_bytes_elements([&b"d"[..], b"ee"]));
        assert_eq!(back[1][0].shape, vec![1, 2]);
    }

    #[test]
    fn an_output_without_the_batch_rows_is_an_error() {
        let e = split(vec![f32s("y", 2, 1, 0.0)], &[1, 2]).unwrap_err();
        assert!(e.to_string().contains("max_batch_size = 0"), "{e}");
    }
}
