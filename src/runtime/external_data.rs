//! The external-data check of an ONNX file, before ONNX Runtime opens it: a
//! tensor stored outside the model names its file by `location`, and ONNX
//! Runtime builds older than 1.17 follow it anywhere (CVE-2024-27318 and its
//! follow-ups). A location that is absolute, climbs with `..`, or resolves,
//! through a symlink, outside the version folder is refused, as is a file
//! hard-linked from elsewhere (its other names may lie outside).

use std::path::{Component, Path};

use prost::Message;

use crate::core::error::{Error, Result};

// The slice of onnx.proto that holds tensors; every other field is skipped
// by the decoder, raw data included, so nothing large is copied.

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
    #[prost(message, repeated, tag = "25")]
    functions: Vec<FunctionProto>,
}

#[derive(Clone, PartialEq, Message)]
struct FunctionProto {
    #[prost(message, repeated, tag = "7")]
    node: Vec<NodeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
    #[prost(message, repeated, tag = "15")]
    sparse_initializer: Vec<SparseTensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct NodeProto {
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
struct AttributeProto {
    #[prost(message, optional, tag = "5")]
    t: Option<TensorProto>,
    #[prost(message, optional, tag = "6")]
    g: Option<GraphProto>,
    #[prost(message, repeated, tag = "10")]
    tensors: Vec<TensorProto>,
    #[prost(message, repeated, tag = "11")]
    graphs: Vec<GraphProto>,
    #[prost(message, optional, tag = "22")]
    sparse_tensor: Option<SparseTensorProto>,
    #[prost(message, repeated, tag = "23")]
    sparse_tensors: Vec<SparseTensorProto>,
}

#[derive(Clone, PartialEq, Message)]
struct SparseTensorProto {
    #[prost(message, optional, tag = "1")]
    values: Option<TensorProto>,
    #[prost(message, optional, tag = "2")]
    indices: Option<TensorProto>,
}

// Strings as bytes: ONNX Runtime's parser (proto2) does not insist on UTF-8,
// so neither may this one, or a file could fail here and load there.
#[derive(Clone, PartialEq, Message)]
struct TensorProto {
    #[prost(bytes = "vec", tag = "8")]
    name: Vec<u8>,
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<Entry>,
}

#[derive(Clone, PartialEq, Message)]
struct Entry {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

/// Every (tensor, location) the model's tensors name, graphs and functions
/// included, to any depth the decoder accepts (prost stops at 100).
fn locations(model: &ModelProto) -> Vec<(String, String)> {
    fn tensor(t: &TensorProto, out: &mut Vec<(String, String)>) {
        for e in &t.external_data {
            if e.key == b"location" {
                out.push((
                    String::from_utf8_lossy(&t.name).into_owned(),
                    // Not UTF-8: the replacement characters make it a name
                    // no file has, refused or reported missing.
                    String::from_utf8_lossy(&e.value).into_owned(),
                ));
            }
        }
    }
    fn sparse(s: &SparseTensorProto, out: &mut Vec<(String, String)>) {
        s.values
            .iter()
            .chain(&s.indices)
            .for_each(|t| tensor(t, out));
    }
    fn nodes(ns: &[NodeProto], out: &mut Vec<(String, String)>) {
        for a in ns.iter().flat_map(|n| &n.attribute) {
            a.t.iter().chain(&a.tensors).for_each(|t| tensor(t, out));
            a.sparse_tensor
                .iter()
                .chain(&a.sparse_tensors)
                .for_each(|s| sparse(s, out));
            a.g.iter().chain(&a.graphs).for_each(|g| graph(g, out));
        }
    }
    fn graph(g: &GraphProto, out: &mut Vec<(String, String)>) {
        g.initializer.iter().for_each(|t| tensor(t, out));
        g.sparse_initializer.iter().for_each(|s| sparse(s, out));
        nodes(&g.node, out);
    }
    let mut out = Vec::new();
    if let Some(g) = &model.graph {
        graph(g, &mut out);
    }
    for f in &model.functions {
        nodes(&f.node, &mut out);
    }
    out
}

/// The external data locations an ONNX file's bytes name, by tensor; an
/// error when the bytes do not decode as a model (which could then hide one).
pub fn locations_in(bytes: &[u8]) -> std::result::Result<Vec<(String, String)>, String> {
    ModelProto::decode(bytes)
        .map(|m| locations(&m))
        .map_err(|e| e.to_string())
}

/// Why a relative path given by a file or a registry could leave the folder
/// it is meant for: absolute, a backslash or NUL, a `..` component, or
/// deeper than `max_depth`.
pub fn escapes(location: &str, max_depth: usize) -> Option<&'static str> {
    let rel = Path::new(location);
    if location.is_empty() {
        return Some("an empty path");
    }
    if location.contains('\\') || location.contains('\0') {
        return Some("a path with a backslash or NUL");
    }
    if rel.is_absolute() || rel.has_root() {
        return Some("an absolute path");
    }
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Some("a path that climbs out with '..'");
    }
    if rel.components().count() > max_depth {
        return Some("a path nested too deep");
    }
    None
}

/// Refuses a model at `path` whose external data could be read from outside
/// its folder, or that does not decode far enough to tell.
pub fn check(path: &Path) -> Result<()> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::load(format!("cannot read {}: {e}", path.display())))?;
    let found = locations_in(&bytes).map_err(|e| {
        Error::load(format!(
            "{} is not an ONNX model whose tensors can be read: {e}",
            path.display()
        ))
    })?;
    if found.is_empty() {
        return Ok(());
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let root = dir
        .canonicalize()
        .map_err(|e| Error::load(format!("cannot resolve {}: {e}", dir.display())))?;
    for (tensor, location) in found {
        let refuse = |why: &str| {
            Error::load(format!(
                "{}: tensor '{tensor}' keeps its data at '{location}', {why}; \
                 external data must be a file inside the version folder",
                path.display()
            ))
        };
        if let Some(why) = escapes(&location, usize::MAX) {
            return Err(refuse(why));
        }
        let rel = Path::new(&location);
        let file = dir.join(rel);
        // A missing file is ONNX Runtime's to report.
        let Ok(real) = file.canonicalize() else {
            continue;
        };
        if !real.starts_with(&root) {
            return Err(refuse(&format!(
                "which resolves outside it (to {})",
                real.display()
            )));
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            if std::fs::metadata(&real).is_ok_and(|m| m.nlink() > 1) {
                return Err(refuse(
                    "a file with other hard links, which may lie outside",
                ));
            }
        }
    }
    Ok(())
}

/// An ONNX file whose initializers keep their data at `locations` (for tests
/// of what reads such files).
#[cfg(test)]
pub(crate) fn model_with(locations: &[&str]) -> Vec<u8> {
    tests::model_with(locations)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn model_with(locations: &[&str]) -> Vec<u8> {
        let initializer = locations
            .iter()
            .enumerate()
            .map(|(i, l)| TensorProto {
                name: format!("w{i}").into_bytes(),
                external_data: vec![
                    Entry {
                        key: b"location".to_vec(),
                        value: l.as_bytes().to_vec(),
                    },
                    Entry {
                        key: b"offset".to_vec(),
                        value: b"0".to_vec(),
                    },
                ],
            })
            .collect();
        ModelProto {
            graph: Some(GraphProto {
                node: vec![],
                initializer,
                sparse_initializer: vec![],
            }),
            functions: vec![],
        }
        .encode_to_vec()
    }

    fn dir(name: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("switchyard-extdata-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn locations_inside_the_folder_pass_and_others_are_refused() {
        let d = dir("paths");
        std::fs::write(d.join("weights.bin"), [0u8; 16]).unwrap();
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/w.bin"), [0u8; 16]).unwrap();
        let model = d.join("model.onnx");
        let case = |loc: &str| {
            std::fs::write(&model, model_with(&[loc])).unwrap();
            check(&model)
        };
        assert!(case("weights.bin").is_ok());
        assert!(case("./sub/w.bin").is_ok());
        assert!(case("missing.bin").is_ok(), "ONNX Runtime reports it");
        for bad in [
            "/etc/passwd",
            "../outside.bin",
            "sub/../../x",
            "..\\x",
            "a\\..\\..\\b",
        ] {
            let e = case(bad).unwrap_err().to_string();
            assert!(
                e.contains("external data must be a file inside"),
                "{bad}: {e}"
            );
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_and_hard_links_out_of_the_folder_are_refused() {
        let d = dir("links");
        let outside = dir("links-outside");
        std::fs::write(outside.join("secret"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), d.join("w.bin")).unwrap();
        std::fs::hard_link(outside.join("secret"), d.join("h.bin")).unwrap();
        let model = d.join("model.onnx");
        std::fs::write(&model, model_with(&["w.bin"])).unwrap();
        let e = check(&model).unwrap_err().to_string();
        assert!(e.contains("resolves outside"), "{e}");
        std::fs::write(&model, model_with(&["h.bin"])).unwrap();
        let e = check(&model).unwrap_err().to_string();
        assert!(e.contains("hard links"), "{e}");
        // Nested in a subgraph of a node's attribute: found too.
        let nested = ModelProto {
            graph: Some(GraphProto {
                node: vec![NodeProto {
                    attribute: vec![AttributeProto {
                        g: Some(GraphProto::decode(&*graph_bytes(&["../x"])).unwrap()),
                        ..Default::default()
                    }],
                }],
                ..Default::default()
            }),
            functions: vec![],
        };
        std::fs::write(&model, nested.encode_to_vec()).unwrap();
        assert!(check(&model).is_err());
        let _ = std::fs::remove_dir_all(&d);
        let _ = std::fs::remove_dir_all(&outside);
    }

    fn graph_bytes(locations: &[&str]) -> Vec<u8> {
        ModelProto::decode(&*model_with(locations))
            .unwrap()
            .graph
            .unwrap()
            .encode_to_vec()
    }
}
