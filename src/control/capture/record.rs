//! One captured request: what a JSON Lines file holds per line and what a
//! CloudEvent carries, and the reading back of a capture folder as rows.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;
use serde_json::Value;

use crate::core::error::{Error, Result};
use crate::core::json::DataJson;
use crate::core::request::{Protocol, Routing};
use crate::core::tensor::{encode_bytes_elements, BytesIter, DataType, Tensor};

/// A request and its answer, as captured.
#[derive(Debug)]
pub struct Record {
    pub at: SystemTime,
    pub id: String,
    /// The request's W3C `traceparent`: its server span's when spans are
    /// exported, else the caller's, when it sent a valid one.
    pub traceparent: Option<crate::core::request::TraceParent>,
    pub model: Arc<str>,
    pub version: u64,
    pub routing: Routing,
    pub protocol: Protocol,
    pub latency: Duration,
    /// Why it failed after it was queued; `None` when it was answered.
    pub error: Option<String>,
    /// `None` when the capture records answers only.
    pub inputs: Option<Vec<Tensor>>,
    /// `None` when it records requests only, or the request failed.
    pub outputs: Option<Vec<Tensor>>,
    /// Its bytes in the queue's budget, given back when it is written or dropped.
    pub held: Held,
}

/// Bytes a queued record counts against its capture's budget.
#[derive(Debug)]
pub struct Held {
    pub queued: Arc<std::sync::atomic::AtomicU64>,
    pub bytes: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.queued
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A tensor as V2 JSON: name, datatype, shape, flat data, serialised
/// straight to the writer (floats as briefly as their type prints them:
/// 0.1, not 0.10000000149).
pub struct TensorJson<'a>(pub &'a Tensor);

impl Serialize for TensorJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry("name", &self.0.name)?;
        m.serialize_entry("datatype", self.0.dtype.as_str())?;
        m.serialize_entry("shape", &self.0.shape)?;
        m.serialize_entry("data", &DataJson(self.0))?;
        m.end()
    }
}

/// Tensors as a JSON list.
pub struct TensorsJson<'a>(pub &'a [Tensor]);

impl Serialize for TensorsJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(TensorJson))
    }
}

impl Record {
    /// Replaces the named BYTES inputs by their hashes (on the writer's thread).
    pub fn hash(&mut self, names: &[String]) {
        if let Some(inputs) = &mut self.inputs {
            for t in inputs.iter_mut().filter(|t| names.contains(&t.name)) {
                *t = hashed(t);
            }
        }
    }

    /// The request's trace id, from its `traceparent`.
    pub fn trace_id(&self) -> Option<String> {
        self.traceparent.map(|t| t.trace_id_hex())
    }

    pub fn role(&self) -> &'static str {
        if self.routing == Routing::Shadow {
            "shadow"
        } else {
            "primary"
        }
    }

    pub fn protocol(&self) -> &'static str {
        match self.protocol {
            Protocol::Http => "http",
            Protocol::Grpc => "grpc",
        }
    }

    pub fn status(&self) -> &'static str {
        if self.error.is_some() {
            "error"
        } else {
            "ok"
        }
    }
}

/// Its line in a capture file, written without building a JSON tree: a
/// record's tensors can be large, and this runs for every captured request.
impl Serialize for Record {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry(
            "timestamp",
            &humantime::format_rfc3339_micros(self.at).to_string(),
        )?;
        m.serialize_entry("id", &self.id)?;
        if let Some(t) = self.trace_id() {
            m.serialize_entry("trace_id", &t)?;
        }
        m.serialize_entry("model", &*self.model)?;
        m.serialize_entry("version", &self.version.to_string())?;
        m.serialize_entry("role", self.role())?;
        m.serialize_entry("routing", self.routing.as_str())?;
        m.serialize_entry("protocol", self.protocol())?;
        m.serialize_entry("latency_ms", &(self.latency.as_secs_f64() * 1e3))?;
        m.serialize_entry("status", self.status())?;
        if let Some(e) = &self.error {
            m.serialize_entry("error", e)?;
        }
        if let Some(i) = &self.inputs {
            m.serialize_entry("inputs", &TensorsJson(i))?;
        }
        if let Some(o) = &self.outputs {
            m.serialize_entry("outputs", &TensorsJson(o))?;
        }
        m.end()
    }
}

/// A BYTES tensor with each element replaced by its SHA-256, in hex: equal
/// values stay equal (joins and counts still work), the value is not kept.
pub fn hashed(t: &Tensor) -> Tensor {
    let digests: Vec<String> = BytesIter::new(&t.data)
        .map(|e| {
            let d = ring::digest::digest(&ring::digest::SHA256, e.unwrap_or_default());
            d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
        })
        .collect();
    Tensor {
        name: t.name.clone(),
        dtype: DataType::Bytes,
        shape: t.shape.clone(),
        data: encode_bytes_elements(digests.iter().map(|s| s.as_bytes())),
    }
}

/// The rows of every record's first input in a capture folder (its
/// `*.jsonl.gz`, `*.jsonl` and `*.parquet` files, sub-folders included,
/// oldest first):
/// what `switchyard profile --data DIR` makes a baseline from. Failed
/// requests and records without inputs are skipped.
pub fn read_dir(dir: &std::path::Path) -> Result<Vec<Vec<f64>>> {
    let bad = |e: &dyn std::fmt::Display| Error::invalid(format!("{}: {e}", dir.display()));
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(|e| bad(&e))? {
            let e = e.map_err(|e| bad(&e))?;
            let p = e.path();
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Links are not followed: a loop of them would never end.
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p);
            } else if [".jsonl.gz", ".jsonl", ".parquet"]
                .iter()
                .any(|x| name.ends_with(x))
            {
                files.push(p);
            }
        }
    }
    // Names begin with the time they were begun.
    files.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
    let mut rows = Vec::new();
    for f in &files {
        if f.extension().is_some_and(|e| e == "parquet") {
            rows.extend(super::parquet::read_rows(f)?);
            continue;
        }
        let file = std::fs::File::open(f).map_err(|e| bad(&e))?;
        let reader: Box<dyn std::io::Read> = if f.to_string_lossy().ends_with(".gz") {
            Box::new(flate2::read::MultiGzDecoder::new(file))
        } else {
            Box::new(file)
        };
        for (n, line) in std::io::BufRead::lines(std::io::BufReader::new(reader)).enumerate() {
            let line = line.map_err(|e| bad(&format!("{}: {e}", f.display())))?;
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| Error::invalid(format!("{} line {}: {e}", f.display(), n + 1)))?;
            if v["status"] != "ok" {
                continue;
            }
            let Some(input) = v["inputs"].get(0) else {
                continue;
            };
            let shape: Vec<u64> = input["shape"]
                .as_array()
                .map(|s| s.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            // NaN and infinities are written as null: read back as NaN, as
            // the CSV and Parquet readers give an empty cell.
            let data: Vec<f64> = input["data"]
                .as_array()
                .map(|d| d.iter().map(|x| x.as_f64().unwrap_or(f64::NAN)).collect())
                .unwrap_or_default();
            let Some((&n_rows, _)) = shape.split_first() else {
                continue;
            };
            let per_row = data.len() / (n_rows.max(1) as usize);
            if per_row == 0 || data.len() != per_row * n_rows as usize {
                continue;
            }
            rows.extend(data.chunks(per_row).map(<[f64]>::to_vec));
        }
    }
    if rows.is_empty() {
        return Err(Error::invalid(format!(
            "{}: no captured rows (numeric first inputs of answered requests) in {} files",
            dir.display(),
            files.len()
        )));
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_keeps_equal_values_equal_and_the_value_out() {
        let t = Tensor {
            name: "email".into(),
            dtype: DataType::Bytes,
            shape: vec![3],
            data: encode_bytes_elements([&b"a@b.c"[..], b"x", b"a@b.c"]),
        };
        let h = hashed(&t);
        let e: Vec<&[u8]> = BytesIter::new(&h.data).map(|e| e.unwrap()).collect();
        assert_eq!(e[0], e[2]);
        assert_ne!(e[0], e[1]);
        // sha256("x")
        assert_eq!(
            e[1],
            b"2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
        );
        assert!(!h.data.windows(5).any(|w| w == b"a@b.c"));
        let mut r = Record {
            at: SystemTime::now(),
            id: "r".into(),
            traceparent: None,
            model: "m".into(),
            version: 1,
            routing: Routing::Named,
            protocol: Protocol::Http,
            latency: Duration::ZERO,
            error: None,
            inputs: Some(vec![t.clone()]),
            outputs: None,
            held: Held {
                queued: Arc::new(std::sync::atomic::AtomicU64::new(5)),
                bytes: 5,
            },
        };
        r.hash(&["email".to_string()]);
        assert_eq!(r.inputs.as_ref().unwrap()[0], h);
        let queued = r.held.queued.clone();
        drop(r);
        assert_eq!(
            queued.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "given back"
        );
    }
}
