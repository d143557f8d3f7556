//! `switchyard infer MODEL --data FILE`: the quickest check that a model
//! serves. A V2 JSON body is sent as it is; rows (CSV with a header, `.npy`,
//! Parquet) become the model's one input, shaped and typed from its metadata.

use std::path::Path;

use serde_json::{json, Value};

use super::api::{model_version, segment, Client, Failure, Outcome};
use super::render::{self, num, Format};

/// Rows printed at most; `-o json` gives them all.
const SHOWN: usize = 50;

pub fn infer(client: &Client, model: &str, data: &Path, format: Format) -> Outcome {
    let (m, v) = model_version(model)?;
    let base = match &v {
        Some(v) => format!("/v2/models/{}/versions/{v}", segment(&m)?),
        None => format!("/v2/models/{}", segment(&m)?),
    };
    let answer = if data.extension().is_some_and(|e| e == "json") {
        let text = std::fs::read(data)
            .map_err(|e| Failure::Usage(format!("--data {}: {e}", data.display())))?;
        let body = serde_json::from_slice(&text)
            .map_err(|e| Failure::Usage(format!("--data {}: not JSON: {e}", data.display())))?;
        client.call("POST", &format!("{base}/infer"), Some(&body))?
    } else {
        let (_, rows) = switchyard::control::drift::profile::read_data(data)
            .map_err(|e| Failure::Usage(format!("--data {e}")))?;
        if rows.is_empty() {
            return Err(Failure::Usage(format!(
                "--data {}: no rows",
                data.display()
            )));
        }
        let metadata = client.get(&base)?;
        // A file larger than the model's batch goes in batches it takes.
        let most = metadata["max_batch_size"]
            .as_u64()
            .filter(|m| *m > 0)
            .map_or(rows.len(), |m| m as usize);
        let mut answer: Option<Value> = None;
        for chunk in rows.chunks(most) {
            let part = client.call(
                "POST",
                &format!("{base}/infer"),
                Some(&body_of(&metadata, chunk)?),
            )?;
            answer = Some(match answer {
                None => part,
                Some(whole) => append(whole, &part),
            });
        }
        answer.unwrap_or_default()
    };
    if !render::structured(format, &answer) {
        render::emit(&table(&answer));
    }
    Ok(())
}

/// A V2 request carrying `rows` as the model's only input.
fn body_of(metadata: &Value, rows: &[Vec<f64>]) -> Outcome<Value> {
    let inputs = metadata["inputs"].as_array().cloned().unwrap_or_default();
    let [input] = inputs.as_slice() else {
        return Err(Failure::Usage(format!(
            "model {} has {} inputs; rows fill one: give --data a V2 JSON body (.json) naming each",
            metadata["name"].as_str().unwrap_or("?"),
            inputs.len()
        )));
    };
    let cols = rows.first().map_or(0, Vec::len);
    let declared: Vec<i64> = input["shape"]
        .as_array()
        .map(|s| s.iter().filter_map(Value::as_i64).collect())
        .unwrap_or_default();
    // The model's own shape when a row fills its inner dimensions exactly
    // (an image from a .npy of [n, 3, 8, 8]); else rows of columns.
    let inner: Option<i64> = declared
        .get(1..)
        .filter(|d| !d.is_empty() && d.iter().all(|x| *x > 0))
        .map(|d| d.iter().product());
    let shape: Vec<i64> = match inner {
        Some(n) if n == cols as i64 => std::iter::once(rows.len() as i64)
            .chain(declared[1..].iter().copied())
            .collect(),
        _ => vec![rows.len() as i64, cols as i64],
    };
    let datatype = input["datatype"].as_str().unwrap_or("FP32");
    let values = rows.iter().flatten();
    let data: Vec<Value> = match datatype {
        "BOOL" => values.map(|x| json!(*x != 0.0)).collect(),
        t if t.starts_with("INT") || t.starts_with("UINT") => {
            values.map(|x| json!(x.round() as i64)).collect()
        }
        _ => values.map(|x| json!(x)).collect(),
    };
    Ok(json!({
        "inputs": [{
            "name": input["name"],
            "datatype": datatype,
            "shape": shape,
            "data": data,
        }]
    }))
}

/// `whole` with `part`'s outputs appended along their first dimension.
fn append(mut whole: Value, part: &Value) -> Value {
    let Some(outputs) = whole["outputs"].as_array_mut() else {
        return whole;
    };
    for (o, p) in outputs
        .iter_mut()
        .zip(part["outputs"].as_array().into_iter().flatten())
    {
        let rows = o["shape"][0].as_u64().zip(p["shape"][0].as_u64());
        if let (Some((a, b)), Some(data), Some(more)) =
            (rows, o["data"].as_array_mut(), p["data"].as_array())
        {
            data.extend(more.iter().cloned());
            o["shape"][0] = (a + b).into();
        }
    }
    whole
}

/// The answer as rows: one line per row of the batch, one column per output.
fn table(answer: &Value) -> String {
    let outputs = answer["outputs"].as_array().cloned().unwrap_or_default();
    let mut out = format!(
        "{} version {} answered\n",
        answer["model_name"].as_str().unwrap_or("?"),
        answer["model_version"].as_str().unwrap_or("?")
    );
    let rows_of = |o: &Value| o["shape"][0].as_u64();
    let batch = outputs.first().and_then(rows_of);
    let batched = batch.is_some() && outputs.iter().all(|o| rows_of(o) == batch);
    if !batched {
        for o in &outputs {
            out.push_str(&format!(
                "{} {} {}: {}\n",
                o["name"].as_str().unwrap_or("?"),
                o["datatype"].as_str().unwrap_or("?"),
                o["shape"],
                cell(o["data"].as_array().map_or(&[][..], Vec::as_slice))
            ));
        }
        return out;
    }
    let n = batch.unwrap_or(0) as usize;
    let mut header = vec!["ROW".to_string()];
    header.extend(
        outputs
            .iter()
            .map(|o| o["name"].as_str().unwrap_or("?").to_string()),
    );
    let header: Vec<&str> = header.iter().map(String::as_str).collect();
    let mut t = render::table(&header);
    for r in 0..n.min(SHOWN) {
        let mut row = vec![r.to_string()];
        for o in &outputs {
            let data = o["data"].as_array().map_or(&[][..], Vec::as_slice);
            let per = data.len() / n.max(1);
            row.push(cell(data.get(r * per..(r + 1) * per).unwrap_or(&[])));
        }
        t.add_row(row);
    }
    out.push_str(&format!("{t}\n"));
    if n > SHOWN {
        out.push_str(&format!(
            "… {} more rows (-o json shows them all)\n",
            n - SHOWN
        ));
    }
    out
}

/// One row of an output: a value, or a short list of them.
fn cell(values: &[Value]) -> String {
    let one = |v: &Value| match v {
        Value::Number(x) if x.is_f64() => num(x.as_f64().unwrap_or(0.0)),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    match values {
        [v] => one(v),
        vs if vs.len() <= 16 => format!("[{}]", vs.iter().map(one).collect::<Vec<_>>().join(", ")),
        vs => format!(
            "[{}, … {} values]",
            vs[..8].iter().map(one).collect::<Vec<_>>().join(", "),
            vs.len()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_take_the_models_input_name_type_and_shape() {
        let meta = json!({"name": "iris", "inputs": [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]});
        let body = body_of(&meta, &[vec![1.0, 2.0, 3.0, 4.0], vec![5.0, 6.0, 7.0, 8.0]]).unwrap();
        assert_eq!(body["inputs"][0]["shape"], json!([2, 4]));
        assert_eq!(body["inputs"][0]["name"], "x");
        let meta = json!({"name": "img", "inputs": [{"name": "x", "datatype": "INT64", "shape": [-1, 2, 2]}]});
        let body = body_of(&meta, &[vec![1.4, 2.0, 3.0, 4.0]]).unwrap();
        assert_eq!(body["inputs"][0]["shape"], json!([1, 2, 2]));
        assert_eq!(body["inputs"][0]["data"][0], 1);
        let meta = json!({"name": "two", "inputs": [{"name": "a"}, {"name": "b"}]});
        assert!(
            matches!(body_of(&meta, &[vec![1.0]]), Err(Failure::Usage(m)) if m.contains("2 inputs"))
        );
    }

    #[test]
    fn batches_of_an_answer_join_along_rows() {
        let part = |d: Vec<i64>| json!({"outputs": [{"name": "y", "shape": [d.len()], "data": d}]});
        let whole = append(part(vec![1, 2]), &part(vec![3]));
        assert_eq!(whole["outputs"][0]["shape"], json!([3]));
        assert_eq!(whole["outputs"][0]["data"], json!([1, 2, 3]));
    }

    #[test]
    fn the_answer_prints_a_row_per_row_of_the_batch() {
        let answer = json!({"model_name": "iris", "model_version": "1", "outputs": [
            {"name": "label", "datatype": "INT64", "shape": [2], "data": [0, 2]},
            {"name": "probabilities", "datatype": "FP32", "shape": [2, 3],
             "data": [1.0, 0.0, 0.0, 0.0, 0.12, 0.88]}]});
        let text = table(&answer);
        assert!(text.contains("iris version 1 answered"), "{text}");
        assert!(text.contains("[0, 0.12, 0.88]"), "{text}");
    }
}
