//! Baseline profiles (`baseline.json` beside a version's files): for each input
//! feature and each output, the reference distribution the live traffic is
//! compared with: quantile bin edges and proportions (numeric), or category
//! frequencies. `switchyard profile` writes them from training data.

use serde::{Deserialize, Serialize};

use crate::core::error::{Error, Result};
use crate::core::tensor::{DataType, Tensor};

/// The file name of a version's profile.
pub const FILE: &str = "baseline.json";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Profile {
    /// Reference rows the profile was made from.
    pub rows: u64,
    pub features: Vec<Feature>,
}

/// Where a feature's values come from.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    Input,
    Output,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Feature {
    /// Its name: a column name, or `tensor[k]`.
    pub name: String,
    pub side: Side,
    /// The tensor it is read from.
    pub tensor: String,
    /// The column of a 2-D tensor; `None` for a 1-D one or a summary.
    pub column: Option<usize>,
    /// For tensors of rank 3 and more: a per-row summary instead of a column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<Summary>,
    #[serde(flatten)]
    pub kind: Kind,
}

/// A per-row summary of a tensor whose rows are not feature vectors (images,
/// sequences): one number a row.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Summary {
    Mean,
    L2,
}

impl Summary {
    pub fn of(self, row: impl Iterator<Item = f64>) -> f64 {
        let (mut n, mut sum, mut sq) = (0usize, 0.0, 0.0);
        for x in row {
            n += 1;
            sum += x;
            sq += x * x;
        }
        match self {
            Summary::Mean if n > 0 => sum / n as f64,
            Summary::Mean => 0.0,
            Summary::L2 => sq.sqrt(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Kind {
    /// Bins `[edges[i], edges[i+1])`, values past either end counted in the end bins.
    Numeric {
        edges: Vec<f64>,
        proportions: Vec<f64>,
        /// The reference's standard deviation (normalises Wasserstein).
        std: f64,
    },
    /// Integer categories and their reference frequencies; unseen ones count as "other".
    Categorical {
        categories: Vec<i64>,
        proportions: Vec<f64>,
    },
}

impl Kind {
    /// Number of bins (categories plus "other").
    pub fn bins(&self) -> usize {
        match self {
            Kind::Numeric { proportions, .. } => proportions.len(),
            Kind::Categorical { categories, .. } => categories.len() + 1,
        }
    }

    /// The bin of a value.
    pub fn bin(&self, x: f64) -> usize {
        match self {
            Kind::Numeric { edges, .. } => {
                let inner = &edges[1..edges.len() - 1];
                // Counting the edges at or below x has no branch to mispredict
                // and vectorises: a third of a binary search's time for the
                // usual ten bins, which matters at a row of features a request.
                if inner.len() <= 32 {
                    inner.iter().map(|e| (*e <= x) as usize).sum()
                } else {
                    inner.partition_point(|e| *e <= x)
                }
            }
            Kind::Categorical { categories, .. } => {
                let v = x as i64;
                categories
                    .iter()
                    .position(|c| *c == v)
                    .unwrap_or(categories.len())
            }
        }
    }

    /// Reference proportions per bin ("other" last for categorical).
    pub fn reference(&self) -> Vec<f64> {
        match self {
            Kind::Numeric { proportions, .. } => proportions.clone(),
            Kind::Categorical { proportions, .. } => {
                let mut p = proportions.clone();
                p.push(0.0);
                p
            }
        }
    }
}

impl Profile {
    pub fn load(path: &std::path::Path) -> Result<Option<Profile>> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::load(format!("{}: {e}", path.display()))),
        };
        let p: Profile = serde_json::from_str(&text)
            .map_err(|e| Error::load(format!("{}: not a drift profile: {e}", path.display())))?;
        for f in &p.features {
            if let Kind::Numeric {
                edges, proportions, ..
            } = &f.kind
            {
                if edges.len() < 2 || proportions.len() != edges.len() - 1 {
                    return Err(Error::load(format!(
                        "{}: feature '{}' needs n+1 edges for n proportions",
                        path.display(),
                        f.name
                    )));
                }
            }
        }
        Ok(Some(p))
    }
}

/// A numeric tensor's values as f64: `(rows, values per row, values)` (the first
/// dim is the rows); `None` for BYTES, BOOL and scalars.
pub fn table(t: &Tensor) -> Option<(usize, usize, Vec<f64>)> {
    let values: Vec<f64> = match t.dtype {
        DataType::F32 => t
            .data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        DataType::F64 => t
            .data
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        DataType::I64 => t
            .data
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        DataType::I32 => t
            .data
            .chunks_exact(4)
            .map(|c| i32::from_le_bytes(c.try_into().unwrap()) as f64)
            .collect(),
        _ => return None,
    };
    let (&rows, rest) = t.shape.split_first()?;
    let per_row = rest.iter().product::<i64>().max(0) as usize;
    Some((rows as usize, per_row, values))
}

/// Builds the features of one tensor from reference values.
pub fn features_of(t: &Tensor, side: Side, names: Option<&[String]>, bins: usize) -> Vec<Feature> {
    let Some((rows, cols, values)) = table(t) else {
        return Vec::new();
    };
    if t.shape.len() >= 3 {
        return [(Summary::Mean, "mean"), (Summary::L2, "l2")]
            .into_iter()
            .map(|(summary, label)| {
                let col: Vec<f64> = (0..rows)
                    .map(|r| summary.of(values[r * cols..(r + 1) * cols].iter().copied()))
                    .collect();
                Feature {
                    name: format!("{}:{label}", t.name),
                    side,
                    tensor: t.name.clone(),
                    column: None,
                    summary: Some(summary),
                    kind: numeric_kind(&col, bins),
                }
            })
            .collect();
    }
    let categorical = matches!(t.dtype, DataType::I64 | DataType::I32);
    (0..cols)
        .map(|j| {
            let col: Vec<f64> = (0..rows).map(|r| values[r * cols + j]).collect();
            let name = match (names, t.shape.len()) {
                (Some(n), _) if j < n.len() => n[j].clone(),
                (_, 1) => t.name.clone(),
                _ => format!("{}[{j}]", t.name),
            };
            Feature {
                name,
                side,
                tensor: t.name.clone(),
                column: (t.shape.len() == 2).then_some(j),
                summary: None,
                kind: if categorical {
                    categorical_kind(&col)
                } else {
                    numeric_kind(&col, bins)
                },
            }
        })
        .collect()
}

fn categorical_kind(col: &[f64]) -> Kind {
    let mut cats: Vec<i64> = col.iter().map(|x| *x as i64).collect();
    cats.sort_unstable();
    cats.dedup();
    let n = col.len().max(1) as f64;
    let proportions = cats
        .iter()
        .map(|c| col.iter().filter(|x| **x as i64 == *c).count() as f64 / n)
        .collect();
    Kind::Categorical {
        categories: cats,
        proportions,
    }
}

/// Quantile edges (linear interpolation, as numpy's default), repeated edges merged.
fn numeric_kind(col: &[f64], bins: usize) -> Kind {
    let mut sorted: Vec<f64> = col.iter().copied().filter(|x| x.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| {
        if sorted.is_empty() {
            return 0.0;
        }
        let pos = p * (sorted.len() - 1) as f64;
        let (lo, frac) = (pos.floor() as usize, pos - pos.floor());
        let hi = (lo + 1).min(sorted.len() - 1);
        sorted[lo] + (sorted[hi] - sorted[lo]) * frac
    };
    let mut edges: Vec<f64> = (0..=bins).map(|i| q(i as f64 / bins as f64)).collect();
    edges.dedup();
    if edges.len() < 2 {
        let e = edges.first().copied().unwrap_or(0.0);
        edges = vec![e, e];
    }
    let mut kind = Kind::Numeric {
        proportions: vec![0.0; edges.len() - 1],
        edges,
        std: 0.0,
    };
    let mut counts = vec![0u64; kind.bins()];
    for x in col {
        counts[kind.bin(*x)] += 1;
    }
    let mean = sorted.iter().sum::<f64>() / sorted.len().max(1) as f64;
    let var = sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / sorted.len().max(1) as f64;
    if let Kind::Numeric {
        proportions, std, ..
    } = &mut kind
    {
        *proportions = super::stats::proportions(&counts);
        *std = var.sqrt();
    }
    kind
}

/// Reference data: column names when the file gives them, and the rows.
pub type Data = (Option<Vec<String>>, Vec<Vec<f64>>);

/// Reference rows read from a CSV file (a header row names the columns), a
/// 2-D `.npy` array, a Parquet file (its numeric columns, named), or a
/// capture folder (the first input of each answered request).
pub fn read_data(path: &std::path::Path) -> Result<Data> {
    if path.is_dir() {
        // A capture folder: the live rows of another day become a baseline.
        return Ok((None, crate::control::capture::read_dir(path)?));
    }
    let bad = |e: &dyn std::fmt::Display| Error::invalid(format!("{}: {e}", path.display()));
    if path
        .extension()
        .is_some_and(|e| e == "parquet" || e == "pq")
    {
        return read_parquet(path).map_err(|e| bad(&e));
    }
    if path.extension().is_some_and(|e| e == "npy") {
        let bytes = std::fs::read(path).map_err(|e| bad(&e))?;
        let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(&e))?;
        let shape = npy.shape().to_vec();
        let Some((&rows, rest)) = shape.split_first().filter(|(_, rest)| !rest.is_empty()) else {
            return Err(bad(&format!(
                "an array of rows is needed, this one has shape {shape:?}"
            )));
        };
        let cols: u64 = rest.iter().product();
        let values: Vec<f64> = match npy.dtype() {
            npyz::DType::Plain(t)
                if t.type_char() == npyz::TypeChar::Float && t.size_field() == 4 =>
            {
                npy.into_vec::<f32>()
                    .map_err(|e| bad(&e))?
                    .into_iter()
                    .map(f64::from)
                    .collect()
            }
            npyz::DType::Plain(t)
                if t.type_char() == npyz::TypeChar::Float && t.size_field() == 8 =>
            {
                npy.into_vec::<f64>().map_err(|e| bad(&e))?
            }
            d => {
                return Err(bad(&format!(
                    "float32 or float64 data is needed, not {}",
                    d.descr()
                )))
            }
        };
        let rows = (0..rows as usize)
            .map(|r| values[r * cols as usize..(r + 1) * cols as usize].to_vec())
            .collect();
        return Ok((None, rows));
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .from_path(path)
        .map_err(|e| bad(&e))?;
    let mut names = None;
    let mut rows = Vec::new();
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| bad(&e))?;
        let parsed: std::result::Result<Vec<f64>, _> =
            rec.iter().map(|f| f.trim().parse::<f64>()).collect();
        match parsed {
            Ok(row) => rows.push(row),
            Err(_) if i == 0 => names = Some(rec.iter().map(|f| f.trim().to_string()).collect()),
            Err(e) => return Err(bad(&format!("row {}: {e}", i + 1))),
        }
    }
    Ok((names, rows))
}

/// A Parquet file's rows, every column a number (integers, floats, booleans;
/// nulls are NaN and fall in the first bin). pandas' index column, when it
/// wrote one, is not a feature.
fn read_parquet(path: &std::path::Path) -> std::result::Result<Data, String> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    use parquet::record::Field;
    const PANDAS_INDEX: &str = "__index_level_0__";
    let file = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let reader = SerializedFileReader::new(file).map_err(|e| e.to_string())?;
    let schema = reader.metadata().file_metadata().schema_descr_ptr();
    let names: Vec<String> = schema
        .columns()
        .iter()
        .map(|c| c.path().string())
        .filter(|n| n != PANDAS_INDEX)
        .collect();
    let mut rows = Vec::new();
    for (i, row) in reader
        .get_row_iter(None)
        .map_err(|e| e.to_string())?
        .enumerate()
    {
        let row = row.map_err(|e| format!("row {}: {e}", i + 1))?;
        let mut values = Vec::with_capacity(names.len());
        for (name, field) in row.get_column_iter() {
            if name == PANDAS_INDEX {
                continue;
            }
            values.push(match *field {
                Field::Null => f64::NAN,
                Field::Bool(b) => f64::from(u8::from(b)),
                Field::Byte(v) => v.into(),
                Field::Short(v) => v.into(),
                Field::Int(v) => v.into(),
                Field::Long(v) => v as f64,
                Field::UByte(v) => v.into(),
                Field::UShort(v) => v.into(),
                Field::UInt(v) => v.into(),
                Field::ULong(v) => v as f64,
                Field::Float16(v) => v.into(),
                Field::Float(v) => v.into(),
                Field::Double(v) => v,
                ref other => {
                    return Err(format!(
                        "column '{name}' is not numeric (row {}: {other})",
                        i + 1
                    ))
                }
            });
        }
        rows.push(values);
    }
    Ok((Some(names), rows))
}

/// Runs the version in `dir` on the reference data at `data` and profiles its one
/// 2-D numeric input (each column) and its outputs.
pub fn build(dir: &std::path::Path, data: &std::path::Path, bins: usize) -> Result<Profile> {
    let model_dir = dir.parent().unwrap_or(dir);
    let mut config = crate::core::config::ModelConfig::load(model_dir)?;
    // Profiling runs the reference data, which is no served request to keep.
    config.capture.enabled = Some(false);
    let name: std::sync::Arc<str> = model_dir
        .file_name()
        .map_or_else(|| "model".into(), |n| n.to_string_lossy().into());
    let scope = crate::core::tasks::Scope::new("profile");
    let mv = crate::control::repository::load_version(&name, 1, dir, &config, &scope)?;
    let [input] = mv.metadata.inputs.as_slice() else {
        return Err(Error::invalid(
            "profiles are made for models with one input",
        ));
    };
    let inner = &input.shape[1.min(input.shape.len())..];
    if input.shape.len() < 2
        || !matches!(input.dtype, DataType::F32 | DataType::F64)
        || (inner.len() > 1 && inner.iter().any(|d| *d < 0))
    {
        return Err(Error::invalid(format!(
            "profiles are made for one floating-point input of rows, [batch, features] or [batch, fixed dims...]; '{}' is {} {:?}",
            input.name, input.dtype, input.shape
        )));
    }
    let (names, rows) = read_data(data)?;
    let cols = if inner.len() == 1 {
        inner[0]
    } else {
        inner.iter().product()
    };
    if let Some(bad) = rows
        .iter()
        .position(|r| cols >= 0 && r.len() as i64 != cols)
    {
        return Err(Error::invalid(format!(
            "row {} of {} has {} values; the model's input takes {cols}",
            bad + 1,
            data.display(),
            rows[bad].len()
        )));
    }
    if rows.is_empty() {
        return Err(Error::invalid(format!("{} holds no rows", data.display())));
    }
    let width = rows[0].len();
    let chunk = (mv.metadata.max_batch_size as usize).max(1);
    let to_tensor = |rows: &[Vec<f64>]| -> Result<Tensor> {
        let data: Vec<u8> = match input.dtype {
            DataType::F64 => rows
                .iter()
                .flatten()
                .flat_map(|x| x.to_le_bytes())
                .collect(),
            _ => rows
                .iter()
                .flatten()
                .flat_map(|x| (*x as f32).to_le_bytes())
                .collect(),
        };
        let shape = if inner.len() == 1 {
            vec![rows.len() as i64, width as i64]
        } else {
            std::iter::once(rows.len() as i64)
                .chain(inner.iter().copied())
                .collect()
        };
        Tensor::new(input.name.clone(), input.dtype, shape, data.into())
    };
    let mut outputs = Vec::new();
    for part in rows.chunks(chunk) {
        let req =
            crate::core::request::InferRequest::of_inputs(&name, None, vec![to_tensor(part)?])?;
        outputs.push(mv.infer_blocking(req)?);
    }
    let parts: Vec<&[Tensor]> = outputs.iter().map(Vec::as_slice).collect();
    let all_out = crate::core::batch::concat(&parts);
    let mut features = features_of(&to_tensor(&rows)?, Side::Input, names.as_deref(), bins);
    for t in &all_out {
        features.extend(features_of(t, Side::Output, None, bins));
    }
    Ok(Profile {
        rows: rows.len() as u64,
        features,
    })
}
