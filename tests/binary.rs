//! Triton's binary tensor data extension and gzip/deflate bodies over HTTP.

mod common;

use std::io::{Read, Write};

use common::{client, sample_models, Server};
use serde_json::{json, Value};

/// A binary-extension body: the JSON header, then the raw parts.
fn body(header: &Value, parts: &[&[u8]]) -> (Vec<u8>, usize) {
    let mut b = serde_json::to_vec(header).unwrap();
    let n = b.len();
    for p in parts {
        b.extend_from_slice(p);
    }
    (b, n)
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn le_i64(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bytes_elems(v: &[&str]) -> Vec<u8> {
    v.iter()
        .flat_map(|s| {
            let mut e = (s.len() as u32).to_le_bytes().to_vec();
            e.extend_from_slice(s.as_bytes());
            e
        })
        .collect()
}

fn mixed_request(binary_out: &[(&str, bool)], request_default: Option<bool>) -> (Vec<u8>, usize) {
    let features = le_f32(&[1.5, -2.0, 0.25, 0.0, 3.0, -0.5]);
    let counts = le_i64(&[1, 2, 3, 4, -4, 0]);
    let tags = bytes_elems(&["alpha", "βeta ✓"]);
    let mut header = json!({
        "id": "bin-1",
        "inputs": [
            {"name": "features", "datatype": "FP32", "shape": [2, 3], "parameters": {"binary_data_size": features.len()}},
            {"name": "counts", "datatype": "INT64", "shape": [2, 3], "parameters": {"binary_data_size": counts.len()}},
            {"name": "scale", "datatype": "FP64", "shape": [], "data": [0.5]},
            {"name": "tag", "datatype": "BYTES", "shape": [2], "parameters": {"binary_data_size": tags.len()}}
        ],
        "outputs": binary_out.iter().map(|(n, b)| json!({"name": n, "parameters": {"binary_data": b}})).collect::<Vec<_>>()
    });
    if let Some(d) = request_default {
        header["parameters"] = json!({ "binary_data_output": d });
        header.as_object_mut().unwrap().remove("outputs");
    }
    body(&header, &[&features, &counts, &tags])
}

fn post(
    s: &Server,
    path: &str,
    body: Vec<u8>,
    json_len: Option<usize>,
) -> reqwest::blocking::Response {
    let mut r = client().post(s.url(path)).body(body);
    if let Some(n) = json_len {
        r = r.header("Inference-Header-Content-Length", n.to_string());
    }
    r.send().unwrap()
}

/// Splits a response into its JSON and the binary part of each output.
fn split(resp: reqwest::blocking::Response) -> (Value, Vec<(String, Vec<u8>)>) {
    let header = resp
        .headers()
        .get("inference-header-content-length")
        .map(|v| v.to_str().unwrap().parse::<usize>().unwrap());
    let all = resp.bytes().unwrap();
    let n = header.unwrap_or(all.len());
    let v: Value = serde_json::from_slice(&all[..n]).unwrap();
    let mut off = n;
    let mut parts = Vec::new();
    for o in v["outputs"].as_array().unwrap() {
        if let Some(size) = o["parameters"]["binary_data_size"].as_u64() {
            parts.push((
                o["name"].as_str().unwrap().to_string(),
                all[off..off + size as usize].to_vec(),
            ));
            off += size as usize;
        }
    }
    assert_eq!(off, all.len(), "the binary parts fill the body");
    (v, parts)
}

#[test]
fn binary_inputs_and_mixed_binary_and_json_outputs() {
    let s = Server::start(&sample_models(), &[]);
    let (b, n) = mixed_request(
        &[("weighted", true), ("total", false), ("tag_out", true)],
        None,
    );
    let resp = post(&s, "/v2/models/mixed/infer", b, Some(n));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/octet-stream");
    let (v, parts) = split(resp);
    assert_eq!(v["id"], "bin-1");
    assert_eq!(v["outputs"][1]["data"], json!([6, 0]), "total is JSON");
    assert_eq!(parts.len(), 2);
    let weighted: Vec<f64> = parts[0]
        .1
        .chunks(8)
        .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(weighted, vec![0.75, -2.0, 0.375, 0.0, -6.0, 0.0]);
    assert_eq!(parts[1].1, bytes_elems(&["alpha", "βeta ✓"]));
}

#[test]
fn binary_data_output_makes_every_output_binary() {
    let s = Server::start(&sample_models(), &[]);
    let (b, n) = mixed_request(&[], Some(true));
    let (v, parts) = split(post(&s, "/v2/models/mixed/infer", b, Some(n)));
    assert_eq!(parts.len(), 4, "{v}");
    assert_eq!(
        parts[1].1,
        vec![1, 0, 1, 0, 1, 0],
        "BOOL is one byte per element"
    );
    // And the plain JSON answer when nothing asks for binary.
    let (b, n) = mixed_request(&[], Some(false));
    let resp = post(&s, "/v2/models/mixed/infer", b, Some(n));
    assert!(resp
        .headers()
        .get("inference-header-content-length")
        .is_none());
    let (v, parts) = split(resp);
    assert!(parts.is_empty());
    assert_eq!(v["outputs"][3]["data"], json!(["alpha", "βeta ✓"]));
}

#[test]
fn binary_sizes_that_do_not_add_up_are_400() {
    let s = Server::start(&sample_models(), &[]);
    let row = le_f32(&[5.1, 3.5, 1.4, 0.2]);
    let input = |size: usize| json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "parameters": {"binary_data_size": size}}]});
    let cases: Vec<(Vec<u8>, Option<String>, &str)> = vec![
        {
            let (b, n) = body(&input(16), &[&row]);
            (b, Some((n + 100).to_string()), "but the body has only")
        },
        {
            let (b, n) = body(&input(16), &[&row, b"xx"]);
            (b, Some(n.to_string()), "add up to 16")
        },
        {
            let (b, n) = body(&input(20), &[&row]);
            (b, Some(n.to_string()), "runs past the end")
        },
        {
            let (b, n) = body(&input(12), &[&row[..12]]);
            (b, Some(n.to_string()), "needs 4 elements")
        },
        {
            let (b, _) = body(&input(16), &[]);
            (b, None, "no Inference-Header-Content-Length")
        },
        {
            let (b, n) = body(
                &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4], "parameters": {"binary_data_size": 16}}]}),
                &[&row],
            );
            (b, Some(n.to_string()), "both 'data' and")
        },
        {
            let (b, _) = body(&input(16), &[&row]);
            (b, Some("lots".to_string()), "not a byte count")
        },
        {
            let (b, n) = body(
                &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [1, 2, 3, 4]}], "outputs": [{"name": "label", "parameters": {"shared_memory_region": "r0"}}]}),
                &[],
            );
            (b, Some(n.to_string()), "shared_memory_region")
        },
    ];
    for (b, header, needle) in cases {
        let mut r = client().post(s.url("/v2/models/iris/infer")).body(b);
        if let Some(h) = header {
            r = r.header("Inference-Header-Content-Length", h);
        }
        let resp = r.send().unwrap();
        assert_eq!(resp.status(), 400, "{needle}");
        let v: Value = resp.json().unwrap();
        assert!(
            v["error"].as_str().unwrap().contains(needle),
            "{v} should contain {needle:?}"
        );
    }
    // A BYTES input whose length prefixes lie.
    let bad = [&(100u32.to_le_bytes())[..], b"ab"].concat();
    let (b, n) = body(
        &json!({"inputs": [
        {"name": "x_bytes", "datatype": "BYTES", "shape": [1], "parameters": {"binary_data_size": bad.len()}}]}),
        &[&bad],
    );
    let resp = post(&s, "/v2/models/identity/infer", b, Some(n));
    assert_eq!(resp.status(), 400);
    assert_eq!(s.get("/v2/health/ready").0, 200);
}

#[test]
fn gzip_and_deflate_bodies_both_ways() {
    let s = Server::start(&sample_models(), &[]);
    let req = serde_json::to_vec(&json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 4], "data": [5.1, 3.5, 1.4, 0.2]}]})).unwrap();
    for enc in ["gzip", "deflate"] {
        let compressed = match enc {
            "gzip" => {
                let mut e =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&req).unwrap();
                e.finish().unwrap()
            }
            _ => {
                let mut e =
                    flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(&req).unwrap();
                e.finish().unwrap()
            }
        };
        let resp = client()
            .post(s.url("/v2/models/iris/infer"))
            .header("Content-Encoding", enc)
            .header("Accept-Encoding", enc)
            .body(compressed)
            .send()
            .unwrap();
        assert_eq!(resp.status(), 200, "{enc}");
        assert_eq!(resp.headers()["content-encoding"], enc);
        let raw = resp.bytes().unwrap();
        let mut out = String::new();
        match enc {
            "gzip" => flate2::read::GzDecoder::new(&raw[..])
                .read_to_string(&mut out)
                .unwrap(),
            _ => flate2::read::ZlibDecoder::new(&raw[..])
                .read_to_string(&mut out)
                .unwrap(),
        };
        let v: Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["outputs"][0]["data"], json!([0]));
    }
    let resp = client()
        .post(s.url("/v2/models/iris/infer"))
        .header("Content-Encoding", "br")
        .body(req.clone())
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client()
        .post(s.url("/v2/models/iris/infer"))
        .header("Content-Encoding", "gzip")
        .body(req)
        .send()
        .unwrap();
    assert_eq!(resp.status(), 400);
}
