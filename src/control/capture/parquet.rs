//! Capture records as Parquet, for tabular models: one table row per row of
//! a request (a request of n rows is n table rows, its id repeated), and a
//! typed column per feature of every 2-D numeric input and output, named as
//! the drift profile names them (`input[0]`), so pandas and Spark read the
//! features directly.

use std::fs::File;
use std::sync::Arc;

use parquet::basic::Compression;
use parquet::data_type::{
    BoolType, ByteArray, ByteArrayType, DoubleType, FloatType, Int32Type, Int64Type,
};
use parquet::file::properties::WriterProperties;
use parquet::file::writer::SerializedFileWriter;

use super::Record;
use crate::core::config::CaptureRecord;
use crate::core::error::{Error, Result};
use crate::core::metadata::{ModelMetadata, TensorSpec};
use crate::core::tensor::{DataType, Tensor};

/// The record's own columns, before the features.
const FIELDS: [&str; 12] = [
    "timestamp",
    "id",
    "row",
    "model",
    "version",
    "role",
    "routing",
    "protocol",
    "latency_ms",
    "status",
    "error",
    "trace_id",
];

/// The footer key naming the model's first input.
pub const FIRST_INPUT: &str = "switchyard.first_input";

/// Rows a row group holds before it is written.
const ROW_GROUP: usize = 8192;

/// The feature columns of a model, fixed at load from its declared shapes.
#[derive(Debug)]
pub struct Layout {
    features: Vec<Feature>,
}

#[derive(Debug)]
struct Feature {
    name: String,
    output: bool,
    tensor: String,
    /// The column within the tensor's row; its row's width.
    k: usize,
    width: usize,
    kind: Kind,
}

/// A column's Parquet type.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    F32,
    F64,
    I32,
    I64,
    Bool,
}

impl Kind {
    fn of(d: DataType) -> Option<Kind> {
        Some(match d {
            DataType::F32 | DataType::F16 | DataType::BF16 => Kind::F32,
            DataType::F64 => Kind::F64,
            DataType::I8 | DataType::I16 | DataType::I32 | DataType::U8 | DataType::U16 => {
                Kind::I32
            }
            DataType::I64 | DataType::U32 | DataType::U64 => Kind::I64,
            DataType::Bool => Kind::Bool,
            DataType::Bytes => return None,
        })
    }

    fn schema(self) -> &'static str {
        match self {
            Kind::F32 => "FLOAT",
            Kind::F64 => "DOUBLE",
            Kind::I32 => "INT32",
            Kind::I64 => "INT64",
            Kind::Bool => "BOOLEAN",
        }
    }
}

impl Layout {
    /// The columns of `metadata`'s inputs (less `dropped`) and outputs, or why
    /// the model is not tabular: every one must be numeric, `[-1]` or `[-1, k]`.
    pub fn of(
        metadata: &ModelMetadata,
        dropped: &[String],
        record: CaptureRecord,
    ) -> Result<Layout> {
        let mut features = Vec::new();
        let mut add = |specs: &[TensorSpec], output: bool| -> Result<()> {
            for s in specs {
                if !output && dropped.contains(&s.name) {
                    continue;
                }
                let refuse = |why: &str| {
                    Err(Error::load(format!(
                        "[capture] format = \"parquet\" writes tabular rows: {} '{}' {why}; use format = \"jsonl\"",
                        if output { "output" } else { "input" },
                        s.name
                    )))
                };
                let Some(kind) = Kind::of(s.dtype) else {
                    return refuse("is BYTES");
                };
                let width = match s.shape.as_slice() {
                    [-1] => 1,
                    [-1, k] if *k > 0 => *k as usize,
                    _ => return refuse(&format!("has shape {:?}, not [-1] or [-1, k]", s.shape)),
                };
                for k in 0..width {
                    features.push(Feature {
                        name: if s.shape.len() == 1 {
                            s.name.clone()
                        } else {
                            format!("{}[{k}]", s.name)
                        },
                        output,
                        tensor: s.name.clone(),
                        k,
                        width,
                        kind,
                    });
                }
            }
            Ok(())
        };
        if record != CaptureRecord::Response {
            add(&metadata.inputs, false)?;
        }
        if record != CaptureRecord::Request {
            add(&metadata.outputs, true)?;
        }
        // Each column once: a feature named like a record field (an input
        // called `id`) or like another feature would make pandas and Spark
        // refuse the file.
        let mut seen: std::collections::HashSet<&str> = FIELDS.iter().copied().collect();
        if let Some(f) = features.iter().find(|f| !seen.insert(f.name.as_str())) {
            return Err(Error::load(format!(
                "[capture] format = \"parquet\": the column '{}' would appear twice; use format = \"jsonl\"",
                f.name
            )));
        }
        Ok(Layout { features })
    }

    fn schema(&self) -> String {
        let mut s = String::from(
            "message capture {
  REQUIRED INT64 timestamp (TIMESTAMP(MICROS,true));
  REQUIRED BYTE_ARRAY id (UTF8);
  REQUIRED INT32 row;
  REQUIRED BYTE_ARRAY model (UTF8);
  REQUIRED BYTE_ARRAY version (UTF8);
  REQUIRED BYTE_ARRAY role (UTF8);
  REQUIRED BYTE_ARRAY routing (UTF8);
  REQUIRED BYTE_ARRAY protocol (UTF8);
  REQUIRED DOUBLE latency_ms;
  REQUIRED BYTE_ARRAY status (UTF8);
  OPTIONAL BYTE_ARRAY error (UTF8);
  OPTIONAL BYTE_ARRAY trace_id (UTF8);
",
        );
        for (i, f) in self.features.iter().enumerate() {
            // Column names with brackets do not parse in a schema message:
            // columns are named c<i> here and renamed below.
            s.push_str(&format!("  OPTIONAL {} c{i};\n", f.kind.schema()));
        }
        s.push('}');
        s
    }
}

/// Values of one feature column not written yet.
enum Column {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I32(Vec<i32>),
    I64(Vec<i64>),
    Bool(Vec<bool>),
}

/// A Parquet file being written.
pub struct Table {
    layout: Arc<Layout>,
    writer: SerializedFileWriter<File>,
    at: Vec<i64>,
    text: [Vec<ByteArray>; 7],
    error: (Vec<ByteArray>, Vec<i16>),
    trace: (Vec<ByteArray>, Vec<i16>),
    row: Vec<i32>,
    latency: Vec<f64>,
    values: Vec<(Column, Vec<i16>)>,
}

impl Table {
    pub fn create(file: File, layout: Arc<Layout>) -> std::io::Result<Table> {
        let io = |e: parquet::errors::ParquetError| std::io::Error::other(e.to_string());
        let mut schema =
            parquet::schema::parser::parse_message_type(&layout.schema()).map_err(io)?;
        // The feature columns' real names (see Layout::schema).
        if let parquet::schema::types::Type::GroupType { fields, .. } = &mut schema {
            let first = fields.len() - layout.features.len();
            for (f, feature) in fields[first..].iter_mut().zip(&layout.features) {
                let t = parquet::schema::types::Type::primitive_type_builder(
                    &feature.name,
                    f.get_physical_type(),
                )
                .with_repetition(parquet::basic::Repetition::OPTIONAL)
                .build()
                .map_err(io)?;
                *f = Arc::new(t);
            }
        }
        let props = WriterProperties::builder()
            .set_compression(Compression::SNAPPY)
            .build();
        let mut writer =
            SerializedFileWriter::new(file, Arc::new(schema), Arc::new(props)).map_err(io)?;
        // Which columns are the first input's: `switchyard profile --data`
        // makes a baseline of them (names alone do not tell inputs from outputs).
        if let Some(first) = layout.features.iter().find(|f| !f.output) {
            writer.append_key_value_metadata(parquet::file::metadata::KeyValue::new(
                FIRST_INPUT.to_string(),
                first.tensor.clone(),
            ));
        }
        let values = layout
            .features
            .iter()
            .map(|f| {
                let c = match f.kind {
                    Kind::F32 => Column::F32(Vec::new()),
                    Kind::F64 => Column::F64(Vec::new()),
                    Kind::I32 => Column::I32(Vec::new()),
                    Kind::I64 => Column::I64(Vec::new()),
                    Kind::Bool => Column::Bool(Vec::new()),
                };
                (c, Vec::new())
            })
            .collect();
        Ok(Table {
            layout,
            writer,
            at: Vec::new(),
            text: Default::default(),
            error: Default::default(),
            trace: Default::default(),
            row: Vec::new(),
            latency: Vec::new(),
            values,
        })
    }

    /// Adds a record's rows; the bytes it adds, about.
    pub fn push(&mut self, r: &Record) -> std::io::Result<u64> {
        let tensor = |output: bool, name: &str| -> Option<&Tensor> {
            let list = if output { &r.outputs } else { &r.inputs };
            list.as_ref()?.iter().find(|t| t.name == name)
        };
        // Rows: the largest first dimension of the record's tensors; a tensor
        // with fewer rows (or another width) leaves its columns empty there.
        let rows = r
            .inputs
            .iter()
            .chain(&r.outputs)
            .flatten()
            .filter_map(|t| t.shape.first().copied())
            .max()
            .unwrap_or(1)
            .max(0) as usize;
        if rows == 0 {
            return Ok(0);
        }
        let at =
            r.at.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_micros() as i64);
        let version = r.version.to_string();
        let texts = [
            r.id.as_str(),
            &r.model,
            &version,
            r.role(),
            r.routing.as_str(),
            r.protocol(),
            r.status(),
        ];
        for row in 0..rows {
            self.at.push(at);
            for (col, t) in self.text.iter_mut().zip(texts) {
                col.push(ByteArray::from(t));
            }
            match &r.error {
                Some(e) => {
                    self.error.0.push(ByteArray::from(e.as_str()));
                    self.error.1.push(1);
                }
                None => self.error.1.push(0),
            }
            match r.trace_id() {
                Some(t) => {
                    self.trace.0.push(ByteArray::from(t.as_str()));
                    self.trace.1.push(1);
                }
                None => self.trace.1.push(0),
            }
            self.row.push(row as i32);
            self.latency.push(r.latency.as_secs_f64() * 1e3);
            for (f, (col, defs)) in self.layout.features.iter().zip(&mut self.values) {
                let value = tensor(f.output, &f.tensor)
                    .filter(|t| t.len() == rows * f.width && Kind::of(t.dtype) == Some(f.kind))
                    .map(|t| (t, row * f.width + f.k));
                defs.push(i16::from(value.is_some()));
                if let Some((t, i)) = value {
                    push(col, t, i);
                }
            }
        }
        if self.at.len() >= ROW_GROUP {
            self.flush()?;
        }
        Ok((rows * (64 + r.id.len() + 8 * self.layout.features.len())) as u64)
    }

    /// Writes the rows held as one row group.
    fn flush(&mut self) -> std::io::Result<()> {
        if self.at.is_empty() {
            return Ok(());
        }
        let io = |e: parquet::errors::ParquetError| std::io::Error::other(e.to_string());
        let mut group = self.writer.next_row_group().map_err(io)?;
        let mut n = 0;
        while let Some(mut c) = group.next_column().map_err(io)? {
            match n {
                0 => {
                    c.typed::<Int64Type>()
                        .write_batch(&self.at, None, None)
                        .map_err(io)?;
                }
                // The columns in the schema's order: id, row, model ... protocol.
                1 => {
                    c.typed::<ByteArrayType>()
                        .write_batch(&self.text[0], None, None)
                        .map_err(io)?;
                }
                2 => {
                    c.typed::<Int32Type>()
                        .write_batch(&self.row, None, None)
                        .map_err(io)?;
                }
                3..=7 => {
                    c.typed::<ByteArrayType>()
                        .write_batch(&self.text[n - 2], None, None)
                        .map_err(io)?;
                }
                8 => {
                    c.typed::<DoubleType>()
                        .write_batch(&self.latency, None, None)
                        .map_err(io)?;
                }
                9 => {
                    c.typed::<ByteArrayType>()
                        .write_batch(&self.text[6], None, None)
                        .map_err(io)?;
                }
                10 | 11 => {
                    let (values, defs) = if n == 10 { &self.error } else { &self.trace };
                    c.typed::<ByteArrayType>()
                        .write_batch(values, Some(defs), None)
                        .map_err(io)?;
                }
                _ => {
                    let (col, defs) = &self.values[n - 12];
                    match col {
                        Column::F32(v) => c.typed::<FloatType>().write_batch(v, Some(defs), None),
                        Column::F64(v) => c.typed::<DoubleType>().write_batch(v, Some(defs), None),
                        Column::I32(v) => c.typed::<Int32Type>().write_batch(v, Some(defs), None),
                        Column::I64(v) => c.typed::<Int64Type>().write_batch(v, Some(defs), None),
                        Column::Bool(v) => c.typed::<BoolType>().write_batch(v, Some(defs), None),
                    }
                    .map_err(io)?;
                }
            }
            c.close().map_err(io)?;
            n += 1;
        }
        group.close().map_err(io)?;
        self.at.clear();
        self.text.iter_mut().for_each(Vec::clear);
        self.error.0.clear();
        self.error.1.clear();
        self.trace.0.clear();
        self.trace.1.clear();
        self.row.clear();
        self.latency.clear();
        for (col, defs) in &mut self.values {
            defs.clear();
            match col {
                Column::F32(v) => v.clear(),
                Column::F64(v) => v.clear(),
                Column::I32(v) => v.clear(),
                Column::I64(v) => v.clear(),
                Column::Bool(v) => v.clear(),
            }
        }
        Ok(())
    }

    /// Writes what is held and the footer; the file is whole after it.
    pub fn finish(mut self) -> std::io::Result<File> {
        self.flush()?;
        let io = |e: parquet::errors::ParquetError| std::io::Error::other(e.to_string());
        self.writer.into_inner().map_err(io)
    }
}

/// Element `i` of `t` onto `col`, converted to the column's type.
fn push(col: &mut Column, t: &Tensor, i: usize) {
    let d = &t.data;
    let f = |n: usize| &d[i * n..(i + 1) * n];
    match (col, t.dtype) {
        (Column::F32(v), DataType::F32) => v.push(f32::from_le_bytes(f(4).try_into().unwrap())),
        (Column::F32(v), DataType::F16) => {
            v.push(half::f16::from_le_bytes(f(2).try_into().unwrap()).to_f32())
        }
        (Column::F32(v), DataType::BF16) => {
            v.push(half::bf16::from_le_bytes(f(2).try_into().unwrap()).to_f32())
        }
        (Column::F64(v), _) => v.push(f64::from_le_bytes(f(8).try_into().unwrap())),
        (Column::I32(v), DataType::I8) => v.push(d[i] as i8 as i32),
        (Column::I32(v), DataType::U8) => v.push(d[i] as i32),
        (Column::I32(v), DataType::I16) => {
            v.push(i16::from_le_bytes(f(2).try_into().unwrap()) as i32)
        }
        (Column::I32(v), DataType::U16) => {
            v.push(u16::from_le_bytes(f(2).try_into().unwrap()) as i32)
        }
        (Column::I32(v), _) => v.push(i32::from_le_bytes(f(4).try_into().unwrap())),
        (Column::I64(v), DataType::U32) => {
            v.push(u32::from_le_bytes(f(4).try_into().unwrap()) as i64)
        }
        (Column::I64(v), DataType::U64) => {
            v.push(u64::from_le_bytes(f(8).try_into().unwrap()) as i64)
        }
        (Column::I64(v), _) => v.push(i64::from_le_bytes(f(8).try_into().unwrap())),
        (Column::Bool(v), _) => v.push(d[i] != 0),
        // The layout chose the column from the declared type, which validation enforced.
        (_, _) => {}
    }
}

/// The rows of the first input's columns in a capture file, answered requests only.
pub fn read_rows(path: &std::path::Path) -> Result<Vec<Vec<f64>>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    let bad = |e: &dyn std::fmt::Display| Error::invalid(format!("{}: {e}", path.display()));
    let file = File::open(path).map_err(|e| bad(&e))?;
    let reader = SerializedFileReader::new(file).map_err(|e| bad(&e))?;
    let meta = reader.metadata().file_metadata();
    let Some(input) = meta
        .key_value_metadata()
        .and_then(|kv| kv.iter().find(|k| k.key == FIRST_INPUT))
        .and_then(|k| k.value.clone())
    else {
        return Err(bad(
            &"not a Switchyard capture file (no first input in its footer)",
        ));
    };
    let feature = |n: &str| {
        n == input
            || n.strip_prefix(input.as_str())
                .and_then(|r| r.strip_prefix('['))
                .is_some_and(|r| r.ends_with(']'))
    };
    let fields: Vec<_> = meta
        .schema()
        .get_fields()
        .iter()
        .filter(|f| f.name() == "status" || feature(f.name()))
        .cloned()
        .collect();
    // A projection must be named as the file's root to be taken.
    let projection = parquet::schema::types::Type::group_type_builder(meta.schema().name())
        .with_fields(fields)
        .build()
        .map_err(|e| bad(&e))?;
    let mut rows = Vec::new();
    for row in reader.get_row_iter(Some(projection)).map_err(|e| bad(&e))? {
        let row = row.map_err(|e| bad(&e))?;
        let mut values = Vec::new();
        let mut answered = true;
        for (name, field) in row.get_column_iter() {
            match field {
                Field::Str(s) if name == "status" => answered = s == "ok",
                Field::Float(v) => values.push(f64::from(*v)),
                Field::Double(v) => values.push(*v),
                Field::Int(v) => values.push(f64::from(*v)),
                Field::Long(v) => values.push(*v as f64),
                Field::Bool(v) => values.push(f64::from(u8::from(*v))),
                _ => values.push(f64::NAN),
            }
        }
        if answered {
            rows.push(values);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metadata::TensorSpec;

    fn spec(name: &str, dtype: DataType, shape: &[i64]) -> TensorSpec {
        TensorSpec::new(name, dtype, shape)
    }

    fn layout(inputs: Vec<TensorSpec>) -> Result<Layout> {
        let m = ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs,
            outputs: vec![spec("y", DataType::F32, &[-1, 2])],
            max_batch_size: 8,
            optional_outputs: vec![],
        };
        Layout::of(&m, &[], CaptureRecord::Both)
    }

    #[test]
    fn tabular_models_only_and_every_column_once() {
        let ok = layout(vec![spec("x", DataType::F32, &[-1, 3])]).unwrap();
        let names: Vec<&str> = ok.features.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, ["x[0]", "x[1]", "x[2]", "y[0]", "y[1]"]);
        for (inputs, says) in [
            (vec![spec("id", DataType::F32, &[-1])], "twice"),
            (vec![spec("y", DataType::F32, &[-1, 2])], "twice"),
            (vec![spec("t", DataType::Bytes, &[-1])], "BYTES"),
            (vec![spec("img", DataType::F32, &[-1, 3, 8])], "not [-1]"),
            (vec![spec("fixed", DataType::F32, &[3])], "not [-1]"),
        ] {
            let e = layout(inputs).unwrap_err().to_string();
            assert!(e.contains(says), "{e}");
        }
    }
}
