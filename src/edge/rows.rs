//! The JSON bodies of KServe V1 (`instances`, `inputs`) and MLflow scoring
//! (`dataframe_split`, `dataframe_records`, `instances`, `inputs`) decoded
//! straight into typed tensors of the model's inputs while they are parsed: no
//! JSON tree (16-32x the body) and no grid of cells, so memory follows the
//! model's inputs, not what a client sends (20k records of invented keys once
//! asked for gigabytes). A key that names no input or column is a 400 naming it.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::json::{Scalar, Sink};
use crate::core::error::{Error, Result};
use crate::core::metadata::ModelMetadata;
use crate::core::tensor::{Tensor, MAX_RANK};

/// How a field of the body maps to the inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsOf {
    /// `inputs`: the only input's tensor, or an object naming each input.
    Inputs,
    /// `dataframe_split`: `{"columns": [...], "data": [[...], ...]}`; with one
    /// input the rows of values are its rows, with several each input is the
    /// column of its name (`columns` before `data`, as pandas writes it).
    Split,
    /// TF Serving / KServe V1 `instances`: with one input each row is a row of
    /// it (or an object naming it); with several, an object naming each input.
    Instances,
    /// A DataFrame as records: with one input, the record's columns in order
    /// are its row (MLflow's ONNX flavour feeds the value matrix); with
    /// several, each input is the column of its name.
    Records,
}

/// `DeserializeSeed` for a type that is its own visitor: the seed carries the
/// state (the model, the buffers) that a plain `Deserialize` cannot.
macro_rules! seed {
    ($ty:ty, $out:ty, $how:ident) => {
        impl<'de> DeserializeSeed<'de> for $ty {
            type Value = $out;
            fn deserialize<D: de::Deserializer<'de>>(
                self,
                d: D,
            ) -> std::result::Result<$out, D::Error> {
                d.$how(self)
            }
        }
    };
}

/// A request body: the known fields it gave, and the last one decoded.
#[derive(Debug, Default)]
pub struct Body {
    /// The known fields the body gave, in order.
    pub given: Vec<&'static str>,
    pub rows: Option<(RowsOf, Vec<Tensor>)>,
}

/// Parses a JSON object whose `keys` are decoded against `meta` as they are
/// read; other keys are skipped unread.
pub fn parse(body: &[u8], meta: &ModelMetadata, keys: &[(&'static str, RowsOf)]) -> Result<Body> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Request { meta, keys }
        .deserialize(&mut de)
        .and_then(|b| de.end().map(|_| b));
    parsed.map_err(|e| match e.classify() {
        serde_json::error::Category::Data => Error::invalid(e.to_string()),
        _ => Error::invalid(format!("malformed JSON request: {e}")),
    })
}

struct Request<'m> {
    meta: &'m ModelMetadata,
    keys: &'m [(&'static str, RowsOf)],
}

seed!(Request<'_>, Body, deserialize_map);

impl<'de> Visitor<'de> for Request<'_> {
    type Value = Body;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let keys: Vec<&str> = self.keys.iter().map(|(k, _)| *k).collect();
        write!(f, "a JSON object with one of {}", keys.join(", "))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<Body, A::Error> {
        let mut body = Body::default();
        while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(&(name, what)) = self.keys.iter().find(|(k, _)| *k == key) else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            if body.given.contains(&name) {
                return Err(de::Error::custom(format!("'{name}' is given twice")));
            }
            body.given.push(name);
            let tensors = match what {
                RowsOf::Instances | RowsOf::Records => {
                    map.next_value_seed(Rows::new(what, self.meta, name))?
                }
                RowsOf::Inputs => map.next_value_seed(Inputs::new(self.meta, name))?,
                RowsOf::Split => map.next_value_seed(Split::new(self.meta))?,
            };
            body.rows = Some((what, tensors));
        }
        Ok(body)
    }
}

/// One input's tensor as it is read: its elements, and its dims as far as seen.
struct Shaped {
    name: String,
    sink: Sink,
    /// The length of the lists at each depth (0: the rows), once one is complete.
    dims: Vec<Option<i64>>,
    /// The depth of the scalars, once one is seen.
    rank: Option<usize>,
}

impl Shaped {
    fn new(spec: &crate::core::metadata::TensorSpec) -> Self {
        Shaped {
            name: spec.name.clone(),
            sink: Sink {
                dtype: spec.dtype,
                out: Vec::new(),
            },
            dims: Vec::new(),
            rank: None,
        }
    }

    fn scalar(&mut self, depth: usize, v: Scalar<'_>) -> std::result::Result<(), String> {
        let deeper_lists = self
            .dims
            .get(depth..)
            .is_some_and(|d| d.iter().any(Option::is_some));
        match self.rank {
            Some(r) if r != depth => return Err(self.ragged("depths")),
            None if deeper_lists => return Err(self.ragged("depths")),
            _ => self.rank = Some(depth),
        }
        self.sink
            .push(v)
            .map_err(|e| format!("input '{}': {e}", self.name))
    }

    fn list_done(&mut self, depth: usize, n: i64) -> std::result::Result<(), String> {
        if self.dims.len() <= depth {
            self.dims.resize(depth + 1, None);
        }
        match self.dims[depth] {
            Some(m) if m != n => Err(self.ragged("lengths")),
            _ => {
                self.dims[depth] = Some(n);
                Ok(())
            }
        }
    }

    fn ragged(&self, what: &str) -> String {
        format!(
            "input '{}': nested lists of different {what} (not a tensor)",
            self.name
        )
    }

    /// The tensor read: of `rows` rows when its values were given row by row.
    fn finish(mut self, rows: Option<usize>) -> Result<Tensor> {
        if let Some(rows) = rows {
            if self.dims.is_empty() {
                self.dims.push(None);
            }
            self.dims[0] = Some(rows as i64);
        }
        let rank = self
            .rank
            .unwrap_or_else(|| self.dims.iter().take_while(|d| d.is_some()).count());
        let shape = self.dims[..rank].iter().map(|d| d.unwrap_or(0)).collect();
        Tensor::new(self.name, self.sink.dtype, shape, self.sink.out.into())
    }
}

/// A value at `depth` of one input's nesting (1: a row's value).
struct Cell<'s> {
    t: &'s mut Shaped,
    depth: usize,
}

seed!(Cell<'_>, (), deserialize_any);

impl<'de> Visitor<'de> for Cell<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a value or nested list of {} values for input '{}'",
            self.t.sink.dtype, self.t.name
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        if self.t.rank.is_some_and(|r| self.depth >= r) {
            return Err(de::Error::custom(self.t.ragged("depths")));
        }
        if self.depth >= MAX_RANK {
            return Err(de::Error::custom(format!(
                "input '{}': nested deeper than the {MAX_RANK} dimensions a tensor may have",
                self.t.name
            )));
        }
        let mut n = 0i64;
        while seq
            .next_element_seed(Cell {
                t: &mut *self.t,
                depth: self.depth + 1,
            })?
            .is_some()
        {
            n += 1;
        }
        self.t.list_done(self.depth, n).map_err(de::Error::custom)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<(), E> {
        self.t
            .scalar(self.depth, Scalar::Bool(v))
            .map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<(), E> {
        self.t.scalar(self.depth, Scalar::I64(v)).map_err(E::custom)
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<(), E> {
        self.t.scalar(self.depth, Scalar::U64(v)).map_err(E::custom)
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<(), E> {
        self.t.scalar(self.depth, Scalar::F64(v)).map_err(E::custom)
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<(), E> {
        self.t.scalar(self.depth, Scalar::Str(v)).map_err(E::custom)
    }
    fn visit_unit<E: de::Error>(self) -> std::result::Result<(), E> {
        Err(E::custom(format!(
            "input '{}': null is not a valid {} value",
            self.t.name, self.t.sink.dtype
        )))
    }
}

/// A single value of a DataFrame cell, kept until its record's row is complete.
#[derive(Debug)]
enum Owned {
    Bool(bool),
    I64(i64),
    U64(u64),
    F64(f64),
    Str(String),
}

impl Owned {
    fn scalar(&self) -> Scalar<'_> {
        match self {
            Owned::Bool(b) => Scalar::Bool(*b),
            Owned::I64(i) => Scalar::I64(*i),
            Owned::U64(u) => Scalar::U64(*u),
            Owned::F64(f) => Scalar::F64(*f),
            Owned::Str(s) => Scalar::Str(s),
        }
    }
}

impl<'de> de::Deserialize<'de> for Owned {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Owned;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a single value (a DataFrame cell of a one-input model)")
            }
            fn visit_bool<E>(self, v: bool) -> std::result::Result<Owned, E> {
                Ok(Owned::Bool(v))
            }
            fn visit_i64<E>(self, v: i64) -> std::result::Result<Owned, E> {
                Ok(Owned::I64(v))
            }
            fn visit_u64<E>(self, v: u64) -> std::result::Result<Owned, E> {
                Ok(Owned::U64(v))
            }
            fn visit_f64<E>(self, v: f64) -> std::result::Result<Owned, E> {
                Ok(Owned::F64(v))
            }
            fn visit_str<E>(self, v: &str) -> std::result::Result<Owned, E> {
                Ok(Owned::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// The columns of a one-input DataFrame, from its first record.
#[derive(Default)]
struct Columns {
    names: Vec<String>,
    index: HashMap<String, usize>,
}

/// The row list: one [`Shaped`] per input, filled row by row.
struct Rows<'m> {
    what: RowsOf,
    key: &'static str,
    meta: &'m ModelMetadata,
    inputs: Vec<Shaped>,
    rows: usize,
    /// Whether rows are objects (decided by the first).
    objects: Option<bool>,
    /// Records of a one-input model whose first record is not `{input: ...}`.
    columns: Option<Columns>,
}

impl<'m> Rows<'m> {
    fn new(what: RowsOf, meta: &'m ModelMetadata, key: &'static str) -> Self {
        Rows {
            what,
            key,
            meta,
            inputs: meta.inputs.iter().map(Shaped::new).collect(),
            rows: 0,
            objects: None,
            columns: None,
        }
    }

    fn finish(self) -> Result<Vec<Tensor>> {
        if let Some(cols) = &self.columns {
            let [only] = <[Shaped; 1]>::try_from(self.inputs).map_err(|_| {
                Error::Internal("DataFrame columns are read for one input only".into())
            })?;
            // One column of a 1-D input is that input; otherwise rows × columns.
            let shape = if cols.names.len() == 1 && self.meta.inputs[0].shape.len() == 1 {
                vec![self.rows as i64]
            } else {
                vec![self.rows as i64, cols.names.len() as i64]
            };
            return Ok(vec![Tensor::new(
                only.name,
                only.sink.dtype,
                shape,
                only.sink.out.into(),
            )?]);
        }
        self.inputs
            .into_iter()
            .map(|t| t.finish(Some(self.rows)))
            .collect()
    }
}

seed!(Rows<'_>, Vec<Tensor>, deserialize_seq);

impl<'de> Visitor<'de> for Rows<'_> {
    type Value = Vec<Tensor>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.what {
            RowsOf::Instances => write!(f, "'{}' to be a list", self.key),
            _ => write!(f, "'{}' to be a list of objects", self.key),
        }
    }

    fn visit_seq<A: SeqAccess<'de>>(
        mut self,
        mut seq: A,
    ) -> std::result::Result<Vec<Tensor>, A::Error> {
        while seq.next_element_seed(Row { rows: &mut self })?.is_some() {
            self.rows += 1;
        }
        self.finish().map_err(|e| de::Error::custom(e.to_string()))
    }
}

/// One element of the row list.
struct Row<'r, 'm> {
    rows: &'r mut Rows<'m>,
}

impl Row<'_, '_> {
    /// A row that is not an object: a row of the only input (instances only).
    fn value(&mut self) -> std::result::Result<Cell<'_>, String> {
        let r = &mut *self.rows;
        let (i, key) = (r.rows, r.key);
        if r.what == RowsOf::Records {
            return Err(format!("{key}[{i}] is not an object"));
        }
        if r.inputs.len() != 1 {
            return Err(format!(
                "{key}[{i}] is not an object; unless the model has one input, each instance \
                 is an object naming every input: {}",
                r.meta.input_names()
            ));
        }
        if *r.objects.get_or_insert(false) {
            return Err(format!(
                "{key}[{i}] is not an object, but the instances before it are"
            ));
        }
        Ok(Cell {
            t: &mut r.inputs[0],
            depth: 1,
        })
    }
}

seed!(Row<'_, '_>, (), deserialize_any);

macro_rules! value_row {
    ($name:ident, $t:ty) => {
        fn $name<E: de::Error>(mut self, v: $t) -> std::result::Result<(), E> {
            let cell = self.value().map_err(E::custom)?;
            cell.$name(v)
        }
    };
}

impl<'de> Visitor<'de> for Row<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a row: a value, a list, or an object naming inputs")
    }

    value_row!(visit_bool, bool);
    value_row!(visit_i64, i64);
    value_row!(visit_u64, u64);
    value_row!(visit_f64, f64);
    value_row!(visit_str, &str);

    fn visit_unit<E: de::Error>(mut self) -> std::result::Result<(), E> {
        self.value().map_err(E::custom)?.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, seq: A) -> std::result::Result<(), A::Error> {
        self.value().map_err(de::Error::custom)?.visit_seq(seq)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> std::result::Result<(), A::Error> {
        let r = self.rows;
        let (i, key) = (r.rows, r.key);
        if r.objects == Some(false) {
            return Err(de::Error::custom(format!(
                "{key}[{i}] is an object, but the instances before it are not"
            )));
        }
        r.objects = Some(true);
        let Some(first) = map.next_key::<std::borrow::Cow<'de, str>>()? else {
            return Err(de::Error::custom(format!("{key}[{i}] is an empty object")));
        };
        // A one-input DataFrame whose columns are not just the input: its cells
        // in column order are the row.
        // A one-input DataFrame: its cells in column order are the row, as
        // MLflow's ONNX flavour feeds `data.values`, whatever the columns' names.
        if r.what == RowsOf::Records && r.inputs.len() == 1 {
            return record_row(r, first.into_owned(), map);
        }
        let mut seen = vec![false; r.inputs.len()];
        let mut next = Some(first);
        while let Some(k) = next {
            let Some(at) = r.inputs.iter().position(|t| t.name == k) else {
                // A DataFrame's other columns are not fed (as MLflow does); an
                // instance names inputs only.
                if r.what == RowsOf::Records {
                    map.next_value::<IgnoredAny>()?;
                    next = map.next_key::<std::borrow::Cow<'de, str>>()?;
                    continue;
                }
                return Err(de::Error::custom(format!(
                    "{key}[{i}] has '{k}', which is not an input of the model; its inputs are {}",
                    r.meta.input_names()
                )));
            };
            if std::mem::replace(&mut seen[at], true) {
                return Err(de::Error::custom(format!("{key}[{i}] gives '{k}' twice")));
            }
            map.next_value_seed(Cell {
                t: &mut r.inputs[at],
                depth: 1,
            })?;
            next = map.next_key::<std::borrow::Cow<'de, str>>()?;
        }
        if let Some(at) = seen.iter().position(|s| !s) {
            return Err(de::Error::custom(format!(
                "{key}[{i}] has no '{}'; each row names every input: {}",
                r.inputs[at].name,
                r.meta.input_names()
            )));
        }
        Ok(())
    }
}

/// One record of a one-input DataFrame: its cells, put in the first record's
/// column order.
fn record_row<'de, A: MapAccess<'de>>(
    r: &mut Rows<'_>,
    first: String,
    mut map: A,
) -> std::result::Result<(), A::Error> {
    let (i, key) = (r.rows, r.key);
    let defining = r.columns.is_none();
    let cols = r.columns.get_or_insert_with(Columns::default);
    let mut cells: Vec<Option<Owned>> = (0..cols.names.len()).map(|_| None).collect();
    let mut next = Some(first);
    while let Some(k) = next {
        let at = match cols.index.get(&k) {
            Some(&at) => at,
            None if defining => {
                cols.index.insert(k.clone(), cols.names.len());
                cols.names.push(k.clone());
                cells.push(None);
                cols.names.len() - 1
            }
            None => {
                return Err(de::Error::custom(format!(
                    "{key}[{i}] has column '{k}', which the first record does not have"
                )))
            }
        };
        let cell: Owned = map
            .next_value()
            .map_err(|e: A::Error| de::Error::custom(format!("{key}[{i}], column '{k}': {e}")))?;
        if cells[at].replace(cell).is_some() {
            return Err(de::Error::custom(format!("{key}[{i}] gives '{k}' twice")));
        }
        next = map.next_key::<String>()?;
    }
    let t = &mut r.inputs[0];
    for (c, cell) in cells.iter().enumerate() {
        let cell = cell.as_ref().ok_or_else(|| {
            de::Error::custom(format!("{key}[{i}] has no column '{}'", cols.names[c]))
        })?;
        t.sink
            .push(cell.scalar())
            .map_err(|e| de::Error::custom(format!("column '{}': {e}", cols.names[c])))?;
    }
    Ok(())
}

/// `inputs`: the only input's whole tensor, or an object naming every input.
struct Inputs<'m> {
    key: &'static str,
    meta: &'m ModelMetadata,
    inputs: Vec<Shaped>,
}

impl<'m> Inputs<'m> {
    fn new(meta: &'m ModelMetadata, key: &'static str) -> Self {
        Inputs {
            key,
            meta,
            inputs: meta.inputs.iter().map(Shaped::new).collect(),
        }
    }

    fn finish<E: de::Error>(self) -> std::result::Result<Vec<Tensor>, E> {
        self.inputs
            .into_iter()
            .map(|t| t.finish(None).map_err(|e| E::custom(e.to_string())))
            .collect()
    }
}

seed!(Inputs<'_>, Vec<Tensor>, deserialize_any);

/// The value of `inputs` when it is not an object: the only input's tensor.
struct Whole<'m>(Inputs<'m>);

impl Whole<'_> {
    fn cell(&mut self) -> std::result::Result<Cell<'_>, String> {
        match self.0.inputs.len() {
            1 => {}
            0 => {
                return Err(format!(
                    "this model has no inputs: '{}' must be {{}}",
                    self.0.key
                ))
            }
            _ => {
                return Err(format!(
                    "this model has several inputs: '{}' must be an object naming each: {}",
                    self.0.key,
                    self.0.meta.input_names()
                ))
            }
        }
        Ok(Cell {
            t: &mut self.0.inputs[0],
            depth: 0,
        })
    }
}

impl<'de> Visitor<'de> for Inputs<'_> {
    type Value = Vec<Tensor>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "'{}': a tensor, or an object naming every input",
            self.key
        )
    }

    fn visit_map<A: MapAccess<'de>>(
        mut self,
        mut map: A,
    ) -> std::result::Result<Vec<Tensor>, A::Error> {
        let mut seen = vec![false; self.inputs.len()];
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            let Some(at) = self.inputs.iter().position(|t| t.name == k) else {
                return Err(de::Error::custom(format!(
                    "'{}' has '{k}', which is not an input of the model; its inputs are {}",
                    self.key,
                    self.meta.input_names()
                )));
            };
            if std::mem::replace(&mut seen[at], true) {
                return Err(de::Error::custom(format!(
                    "'{}' gives '{k}' twice",
                    self.key
                )));
            }
            map.next_value_seed(Cell {
                t: &mut self.inputs[at],
                depth: 0,
            })?;
        }
        if seen.iter().any(|s| !s) {
            return Err(de::Error::custom(format!(
                "'{}' must name every input: {}",
                self.key,
                self.meta.input_names()
            )));
        }
        self.finish()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> std::result::Result<Vec<Tensor>, A::Error> {
        let mut w = Whole(self);
        w.cell().map_err(de::Error::custom)?.visit_seq(seq)?;
        w.0.finish()
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> std::result::Result<Vec<Tensor>, E> {
        Whole(self).scalar(Scalar::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> std::result::Result<Vec<Tensor>, E> {
        Whole(self).scalar(Scalar::I64(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> std::result::Result<Vec<Tensor>, E> {
        Whole(self).scalar(Scalar::U64(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> std::result::Result<Vec<Tensor>, E> {
        Whole(self).scalar(Scalar::F64(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<Vec<Tensor>, E> {
        Whole(self).scalar(Scalar::Str(v))
    }
}

impl Whole<'_> {
    fn scalar<E: de::Error>(mut self, v: Scalar<'_>) -> std::result::Result<Vec<Tensor>, E> {
        let cell = self.cell().map_err(E::custom)?;
        cell.t.scalar(0, v).map_err(E::custom)?;
        self.0.finish()
    }
}

/// `dataframe_split`: columns, then rows of cells.
struct Split<'m> {
    meta: &'m ModelMetadata,
    inputs: Vec<Shaped>,
    /// The input each column feeds (several inputs), once `columns` is read.
    feeds: Option<Vec<Option<usize>>>,
    columns: Option<Vec<String>>,
    rows: usize,
    /// Cells a row, from the first row.
    width: Option<usize>,
    data: bool,
}

impl<'m> Split<'m> {
    fn new(meta: &'m ModelMetadata) -> Self {
        Split {
            meta,
            inputs: meta.inputs.iter().map(Shaped::new).collect(),
            feeds: None,
            columns: None,
            rows: 0,
            width: None,
            data: false,
        }
    }

    fn finish(self) -> std::result::Result<Vec<Tensor>, String> {
        if !self.data {
            return Err("dataframe_split needs 'data', a list of rows".into());
        }
        let one = self.inputs.len() == 1;
        let rank1 = self.meta.inputs.first().is_some_and(|s| s.shape.len() == 1);
        let width = self
            .columns
            .as_ref()
            .map(Vec::len)
            .or(self.width)
            .unwrap_or(0);
        let mut out = Vec::with_capacity(self.inputs.len());
        for t in self.inputs {
            let mut t = t.finish(Some(self.rows)).map_err(|e| e.to_string())?;
            // One column of a 1-D input is that input, as MLflow's ONNX flavour feeds it.
            if one && rank1 && width == 1 && t.shape.len() == 2 {
                t.shape.pop();
            }
            out.push(t);
        }
        Ok(out)
    }
}

seed!(Split<'_>, Vec<Tensor>, deserialize_map);

impl<'de> Visitor<'de> for Split<'_> {
    type Value = Vec<Tensor>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("'dataframe_split' to be an object with 'columns' and 'data'")
    }

    fn visit_map<A: MapAccess<'de>>(
        mut self,
        mut map: A,
    ) -> std::result::Result<Vec<Tensor>, A::Error> {
        while let Some(k) = map.next_key::<std::borrow::Cow<'de, str>>()? {
            match &*k {
                "columns" if self.data => {
                    map.next_value::<IgnoredAny>()?;
                }
                "columns" => {
                    let cols: Vec<Owned> = map.next_value().map_err(|e: A::Error| {
                        de::Error::custom(format!(
                            "dataframe_split.columns must be a list of names: {e}"
                        ))
                    })?;
                    let cols: Vec<String> = cols
                        .into_iter()
                        .map(|c| match c {
                            Owned::Str(s) => s,
                            Owned::Bool(b) => b.to_string(),
                            Owned::I64(i) => i.to_string(),
                            Owned::U64(u) => u.to_string(),
                            Owned::F64(f) => f.to_string(),
                        })
                        .collect();
                    if self.inputs.len() > 1 {
                        let feeds = column_feeds(&cols, self.meta);
                        if let Some(t) = self
                            .inputs
                            .iter()
                            .enumerate()
                            .find(|(i, _)| !feeds.contains(&Some(*i)))
                        {
                            return Err(de::Error::custom(no_column(self.meta, &t.1.name)));
                        }
                        self.feeds = Some(feeds);
                    }
                    self.columns = Some(cols);
                }
                "data" => {
                    if self.inputs.is_empty() {
                        return Err(de::Error::custom(
                            "this model has no inputs, so a DataFrame has nothing to feed",
                        ));
                    }
                    if self.inputs.len() > 1 && self.feeds.is_none() {
                        return Err(de::Error::custom(format!(
                            "dataframe_split: this model's inputs are the columns {}, so 'columns' must come before 'data' (as pandas writes it)",
                            self.meta.input_names()
                        )));
                    }
                    self.data = true;
                    map.next_value_seed(SplitRows(&mut self))?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        self.finish().map_err(de::Error::custom)
    }
}

/// The error of a DataFrame that lacks an input's column.
pub fn no_column(meta: &ModelMetadata, input: &str) -> String {
    format!(
        "the DataFrame has no column '{input}'; this model's inputs are the columns {}",
        meta.input_names()
    )
}

/// The input each column feeds: the first column of an input's name does;
/// another of the same name, or of no input's name, feeds nothing.
pub fn column_feeds(columns: &[String], meta: &ModelMetadata) -> Vec<Option<usize>> {
    let mut fed = vec![false; meta.inputs.len()];
    columns
        .iter()
        .map(|c| {
            let at = meta.inputs.iter().position(|s| &s.name == c)?;
            (!std::mem::replace(&mut fed[at], true)).then_some(at)
        })
        .collect()
}

/// `dataframe_split.data`: the list of rows.
struct SplitRows<'s, 'm>(&'s mut Split<'m>);

seed!(SplitRows<'_, '_>, (), deserialize_seq);

impl<'de> Visitor<'de> for SplitRows<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("dataframe_split.data to be a list of rows")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let s = self.0;
        loop {
            let more = match &s.feeds {
                // One input: each row is a row of it.
                None => seq
                    .next_element_seed(Cell {
                        t: &mut s.inputs[0],
                        depth: 1,
                    })?
                    .is_some(),
                Some(_) => seq.next_element_seed(SplitRow { s: &mut *s })?.is_some(),
            };
            if !more {
                break;
            }
            s.rows += 1;
        }
        // Every row had the same number of cells (the tensor's dim 1).
        s.width = s.inputs[0]
            .dims
            .get(1)
            .copied()
            .flatten()
            .map(|w| w as usize);
        if let (None, Some(cols), Some(w)) = (&s.feeds, &s.columns, s.width) {
            if cols.len() != w && s.rows > 0 {
                return Err(de::Error::custom(format!(
                    "dataframe_split has {} columns but its rows have {w} values",
                    cols.len()
                )));
            }
        }
        Ok(())
    }
}

/// One row of a several-input DataFrame: each cell goes to its column's input.
struct SplitRow<'s, 'm> {
    s: &'s mut Split<'m>,
}

seed!(SplitRow<'_, '_>, (), deserialize_seq);

impl<'de> Visitor<'de> for SplitRow<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "dataframe_split.data[{}] to be a list of cells",
            self.s.rows
        )
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> std::result::Result<(), A::Error> {
        let s = self.s;
        let feeds = s
            .feeds
            .as_ref()
            .expect("several inputs read their columns first");
        let mut i = 0;
        loop {
            let more = match feeds.get(i).copied().flatten() {
                Some(at) => seq
                    .next_element_seed(Cell {
                        t: &mut s.inputs[at],
                        depth: 1,
                    })?
                    .is_some(),
                None => seq.next_element::<IgnoredAny>()?.is_some(),
            };
            if !more {
                break;
            }
            i += 1;
        }
        if i != feeds.len() {
            return Err(de::Error::custom(format!(
                "dataframe_split.data[{}] has {i} values, but the DataFrame has {} columns",
                s.rows,
                feeds.len()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::metadata::TensorSpec;
    use crate::core::tensor::DataType;
    use crate::edge::ErrorStatus;

    fn meta(inputs: &[(&str, DataType, &[i64])]) -> ModelMetadata {
        ModelMetadata {
            platform: "onnxruntime_onnx",
            inputs: inputs
                .iter()
                .map(|(n, d, s)| TensorSpec {
                    name: n.to_string(),
                    dtype: *d,
                    shape: s.to_vec(),
                    symbols: vec![None; s.len()],
                })
                .collect(),
            outputs: vec![],
            max_batch_size: 0,
            optional_outputs: Vec::new(),
        }
    }

    fn rows(body: &str, m: &ModelMetadata, what: RowsOf) -> Result<Vec<Tensor>> {
        let b = parse(body.as_bytes(), m, &[("rows", what)])?;
        Ok(b.rows.map(|r| r.1).unwrap_or_default())
    }

    #[test]
    fn instances_of_one_input_are_its_rows() {
        let m = meta(&[("x", DataType::F32, &[-1, 2])]);
        let t = rows(r#"{"rows": [[1, 2], [3, 4.5]]}"#, &m, RowsOf::Instances).unwrap();
        assert_eq!(t[0].shape, vec![2, 2]);
        let t = rows(r#"{"rows": [{"x": [1, 2]}]}"#, &m, RowsOf::Instances).unwrap();
        assert_eq!(t[0].shape, vec![1, 2]);
        let t = rows(r#"{"rows": []}"#, &m, RowsOf::Instances).unwrap();
        assert_eq!(t[0].shape, vec![0]);
        for (body, want) in [
            (r#"{"rows": [[1, 2], [3]]}"#, "different lengths"),
            (r#"{"rows": [[1, 2], 3]}"#, "different depths"),
            (r#"{"rows": [[1, 2], {"x": [1, 2]}]}"#, "before it are not"),
            (r#"{"rows": [{"y": 1}]}"#, "'y', which is not an input"),
            (r#"{"rows": [[null, 1]]}"#, "null"),
            (r#"{"rows": 3}"#, "a list"),
            (r#"{"rows": [1, 2]"#, "malformed JSON"),
        ] {
            let e = rows(body, &m, RowsOf::Instances).unwrap_err();
            assert_eq!(e.http_status(), http::StatusCode::BAD_REQUEST);
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn records_of_one_input_are_rows_of_its_columns_in_order() {
        let m = meta(&[("x", DataType::I64, &[-1, 2])]);
        let t = rows(
            r#"{"rows": [{"a": 1, "b": 2}, {"b": 4, "a": 3}]}"#,
            &m,
            RowsOf::Records,
        )
        .unwrap();
        assert_eq!(t[0].shape, vec![2, 2]);
        let v: Vec<i64> = t[0]
            .data
            .chunks(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(v, vec![1, 2, 3, 4]);
        let one = meta(&[("x", DataType::I64, &[-1])]);
        let t = rows(r#"{"rows": [{"a": 1}, {"a": 2}]}"#, &one, RowsOf::Records).unwrap();
        assert_eq!(t[0].shape, vec![2]);
        // A column named as the input is a column too: MLflow's `data.values`.
        let col = meta(&[("x", DataType::I64, &[-1, 1])]);
        let t = rows(r#"{"rows": [{"x": 1}, {"x": 2}]}"#, &col, RowsOf::Records).unwrap();
        assert_eq!(t[0].shape, vec![2, 1]);
        for (body, want) in [
            (
                r#"{"rows": [{"a": 1, "b": 2}, {"a": 3, "c": 4}]}"#,
                "column 'c'",
            ),
            (r#"{"rows": [{"a": 1, "b": 2}, {"a": 3}]}"#, "no column 'b'"),
            (r#"{"rows": [{"a": [1]}]}"#, "single value"),
            (r#"{"rows": [[1, 2]]}"#, "not an object"),
            (r#"{"rows": [{}]}"#, "empty object"),
        ] {
            let e = rows(body, &m, RowsOf::Records).unwrap_err();
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn inputs_are_the_tensor_or_name_every_input() {
        let one = meta(&[("x", DataType::F32, &[-1, 2])]);
        let t = rows(r#"{"rows": [[1, 2]]}"#, &one, RowsOf::Inputs).unwrap();
        assert_eq!(t[0].shape, vec![1, 2]);
        let t = rows(r#"{"rows": {"x": [[1, 2], [3, 4]]}}"#, &one, RowsOf::Inputs).unwrap();
        assert_eq!(t[0].shape, vec![2, 2]);
        let t = rows(r#"{"rows": 2.5}"#, &one, RowsOf::Inputs).unwrap();
        assert_eq!(t[0].shape, Vec::<i64>::new());
        let two = meta(&[("a", DataType::F32, &[-1]), ("b", DataType::I32, &[-1, 2])]);
        let t = rows(
            r#"{"rows": {"b": [[1, 2]], "a": [1]}}"#,
            &two,
            RowsOf::Inputs,
        )
        .unwrap();
        assert_eq!(
            (t[0].shape.clone(), t[1].shape.clone()),
            (vec![1], vec![1, 2])
        );
        for (body, m, want) in [
            (r#"{"rows": {"a": [1]}}"#, &two, "must name every input"),
            (
                r#"{"rows": {"a": [1], "c": 2}}"#,
                &two,
                "'c', which is not an input",
            ),
            (r#"{"rows": [1]}"#, &two, "several inputs"),
            (r#"{"rows": {"y": [1]}}"#, &one, "'y'"),
        ] {
            let e = rows(body, m, RowsOf::Inputs).unwrap_err();
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn split_frames_feed_the_matrix_or_a_column_per_input() {
        let one = meta(&[("x", DataType::F32, &[-1, 2])]);
        let t = rows(
            r#"{"rows": {"columns": ["p", "q"], "index": [0, 1], "data": [[1, 2], [3, 4]]}}"#,
            &one,
            RowsOf::Split,
        )
        .unwrap();
        assert_eq!(t[0].shape, vec![2, 2]);
        let flat = meta(&[("x", DataType::F32, &[-1])]);
        let t = rows(
            r#"{"rows": {"columns": ["p"], "data": [[1], [2]]}}"#,
            &flat,
            RowsOf::Split,
        )
        .unwrap();
        assert_eq!(t[0].shape, vec![2]);
        let two = meta(&[("a", DataType::F32, &[-1]), ("b", DataType::Bytes, &[-1])]);
        let t = rows(
            r#"{"rows": {"columns": ["b", "extra", "a"], "data": [["x", 0, 1.5], ["y", 0, 2]]}}"#,
            &two,
            RowsOf::Split,
        )
        .unwrap();
        assert_eq!((t[0].shape.clone(), t[1].shape.clone()), (vec![2], vec![2]));
        // The first column of a name feeds its input; a second one nothing.
        let t = rows(
            r#"{"rows": {"columns": ["a", "a", "b"], "data": [[1, 9, "x"]]}}"#,
            &two,
            RowsOf::Split,
        )
        .unwrap();
        assert_eq!(&t[0].data[..], &1f32.to_le_bytes()[..]);
        let none = meta(&[]);
        let e = rows(r#"{"rows": {"data": []}}"#, &none, RowsOf::Split).unwrap_err();
        assert!(e.to_string().contains("no inputs"), "{e}");
        for (body, m, want) in [
            (
                r#"{"rows": {"columns": ["x"], "data": [[]]}}"#,
                &flat,
                "1 columns but its rows have 0",
            ),
            (
                r#"{"rows": {"columns": ["a"], "data": []}}"#,
                &two,
                "no column 'b'",
            ),
            (
                r#"{"rows": {"data": [[1, "x"]], "columns": ["a", "b"]}}"#,
                &two,
                "must come before",
            ),
            (
                r#"{"rows": {"columns": ["a", "b"], "data": [[1]]}}"#,
                &two,
                "has 1 values",
            ),
            (r#"{"rows": {"columns": ["p"]}}"#, &one, "needs 'data'"),
            (r#"{"rows": [1]}"#, &one, "an object"),
        ] {
            let e = rows(body, m, RowsOf::Split).unwrap_err();
            assert!(e.to_string().contains(want), "{body}: {e}");
        }
    }

    #[test]
    fn records_of_several_inputs_name_each_and_nothing_else() {
        let m = meta(&[("a", DataType::F32, &[-1]), ("b", DataType::I32, &[-1, 2])]);
        let t = rows(
            r#"{"rows": [{"a": 1, "b": [1, 2], "extra": {}}, {"b": [3, 4], "a": 2}]}"#,
            &m,
            RowsOf::Records,
        )
        .unwrap();
        assert_eq!(
            (t[0].shape.clone(), t[1].shape.clone()),
            (vec![2], vec![2, 2])
        );
        // Many invented keys cost one error, not a grid of them.
        let mut body = String::from(r#"{"rows": ["#);
        for i in 0..20_000 {
            body.push_str(&format!(r#"{{"k{i}": 1}},"#));
        }
        body.push_str("{}]}");
        let e = rows(&body, &m, RowsOf::Records).unwrap_err();
        assert!(e.to_string().contains("has no 'a'"), "{e}");
        let e = rows(r#"{"rows": [{"a": 1}]}"#, &m, RowsOf::Records).unwrap_err();
        assert!(e.to_string().contains("has no 'b'"), "{e}");
    }
}
