//! The crate's layers import only downwards: core → runtime → serving →
//! control → edge. Reads every file of `src/` and fails on a `crate::<layer>`
//! path that points up (or sideways into a layer above), and on `http` or
//! `tonic` in the core.

use std::path::{Path, PathBuf};

/// Bottom first: a layer may name the ones before it.
const LAYERS: [&str; 5] = ["core", "runtime", "serving", "control", "edge"];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Each `crate::name` in `text`, with its line number.
fn crate_paths(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            // `crate::{a, b}` groups are not used in this crate; flag them so
            // that this check cannot be walked around.
            if after.starts_with('{') {
                out.push((n + 1, "{".into()));
            }
            out.push((n + 1, name));
            rest = after;
        }
    }
    out
}

#[test]
fn imports_point_down() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for (rank, layer) in LAYERS.iter().enumerate() {
        let mut fs = Vec::new();
        files(&src.join(layer), &mut fs);
        assert!(!fs.is_empty(), "src/{layer} is missing");
        for f in fs {
            let text = std::fs::read_to_string(&f).unwrap();
            for (line, name) in crate_paths(&text) {
                let allowed =
                    LAYERS[..=rank].contains(&name.as_str()) || name == "Error" || name == "Result";
                if !allowed {
                    bad.push(format!(
                        "{}:{line}: {layer} names crate::{name}",
                        f.display()
                    ));
                }
            }
        }
    }
    assert!(bad.is_empty(), "imports that point up:\n{}", bad.join("\n"));
}

#[test]
fn the_core_knows_no_protocol() {
    let mut fs = Vec::new();
    files(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("src/core"),
        &mut fs,
    );
    for f in fs {
        let text = std::fs::read_to_string(&f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for word in ["http::", "tonic::", "hyper::", "prost::"] {
                assert!(
                    !code.contains(word),
                    "{}:{}: the core names {word}",
                    f.display(),
                    n + 1
                );
            }
        }
    }
}

#[test]
fn the_check_sees_an_upward_import() {
    let found = crate_paths(
        "use crate::edge::http; // crate::core\nlet x = crate::serving::Models::new();",
    );
    let names: Vec<&str> = found.iter().map(|(_, n)| n.as_str()).collect();
    assert_eq!(names, ["edge", "serving"]);
}

/// A lock, a condition variable, a sleep or a blocking wait holds the thread
/// that runs it. The async runtime's threads serve every request and admin
/// call, so the layers that run on them (the edge, the serving layer's async
/// paths) name none of these, except the lines listed here, each of which runs
/// on a thread of its own. The control plane, load threads and drift monitors
/// have threads of their own; what the edge reads of them goes through the
/// plane's channel or `edge::off_runtime`. (Clippy's `await_holding_lock`,
/// on by default, catches a guard held across an `.await` anywhere.)
#[test]
fn nothing_blocks_the_async_threads() {
    const BLOCKING: [&str; 7] = [
        "Mutex",
        "RwLock",
        "Condvar",
        "thread::sleep",
        "blocking_recv",
        "block_on",
        "block_in_place",
    ];
    const OWN_THREAD: [(&str, &str); 4] = [
        // The metrics upkeep thread's clock.
        ("edge/metrics.rs", "block_on"),
        // A backend instance's slot: its worker thread locks it; a request
        // run inline (`Workers::try_inline`) only `try_lock`s it, which never
        // waits: a busy instance sends the request to the queue instead.
        ("serving/worker.rs", "Mutex"),
        // `ModelVersion::infer_blocking`: warm-up, on a load thread.
        ("serving/mod.rs", "blocking_recv"),
        // A version's recent windows: the control plane's sampler, a load
        // thread's reset and readers behind `edge::off_runtime` (the console,
        // GET /admin/models) lock them; a request never does.
        ("serving/stats.rs", "Mutex"),
    ];
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut bad = Vec::new();
    for layer in ["edge", "serving"] {
        let mut fs = Vec::new();
        files(&src.join(layer), &mut fs);
        for f in fs {
            let rel = f.strip_prefix(&src).unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&f).unwrap();
            // Unit tests below this line run on threads of their own.
            let code = text.split("#[cfg(test)]").next().unwrap_or("");
            for (n, line) in code.lines().enumerate() {
                let line = line.split("//").next().unwrap_or("");
                for token in BLOCKING {
                    if line.contains(token) && !OWN_THREAD.contains(&(rel.as_str(), token)) {
                        bad.push(format!("src/{rel}:{}: {}", n + 1, line.trim()));
                    }
                }
            }
        }
    }
    assert!(
        bad.is_empty(),
        "blocking on the async threads' layers:\n{}",
        bad.join("\n")
    );
}
