//! The deployment manifests against the server they deploy: every flag a
//! container passes is one `switchyard serve --help` lists and the server
//! starts with, every probe path answers 200 on the port the probe names, the
//! ports the flags open are the ones the manifests declare, and the grace
//! period outlasts the stop. So the manifests cannot drift from the binary.

mod common;

use common::{client, copy_dir, sample_models, scratch, Server};
use yaml_rust2::{Yaml, YamlLoader};

fn load(rel: &str) -> Vec<Yaml> {
    let path = common::repo_root().join(rel);
    let text = std::fs::read_to_string(&path).unwrap();
    YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn help() -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

/// A container's `args` as strings.
fn args_of(container: &Yaml) -> Vec<String> {
    container["args"]
        .as_vec()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("a string").to_string())
        .collect()
}

/// Whether `switchyard serve --help` lists `flag` (whole, not a prefix of another).
fn listed(help: &str, flag: &str) -> bool {
    help.lines()
        .any(|l| l.trim_start().split([',', ' ']).any(|word| word == flag))
}

/// `--flag=value` → (flag, value).
fn flag(arg: &str) -> (&str, Option<&str>) {
    match arg.split_once('=') {
        Some((f, v)) => (f, Some(v)),
        None => (arg, None),
    }
}

fn value<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().find_map(|a| match flag(a) {
        (f, v) if f == name => v,
        _ => None,
    })
}

fn port_of(addr: &str) -> i64 {
    addr.rsplit(':').next().unwrap().parse().unwrap()
}

/// Checks a container's flags against `--help`, then starts the server with
/// them (paths and ports made local) and asks each probe's path.
fn check_container(what: &str, container: &Yaml) {
    let args = args_of(container);
    assert_eq!(
        args[0], "serve",
        "{what}: the image's entrypoint is switchyard; args start with serve"
    );
    let help = help();
    for a in &args[1..] {
        let (f, _) = flag(a);
        assert!(
            listed(&help, f),
            "{what}: {f} is not a flag of `switchyard serve`"
        );
    }
    // The ports the flags open are the ones the container declares.
    let declared: Vec<i64> = container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p["containerPort"].as_i64().unwrap())
        .collect();
    let http = port_of(value(&args, "--http").expect("--http"));
    assert!(
        declared.contains(&http),
        "{what}: --http port {http} is not declared in {declared:?}"
    );
    // Start it as the manifest says, on a local copy of a model and local ports.
    // With --model-name, one model's folder (what KServe's storage initializer
    // leaves); else a repository.
    let models = scratch(&format!("deploy-{what}"));
    if value(&args, "--model-name").is_some() {
        copy_dir(&sample_models().join("iris/1"), &models);
    } else {
        copy_dir(&sample_models().join("iris"), &models.join("iris"));
    }
    let state = scratch(&format!("deploy-{what}-state"));
    let mut local: Vec<String> = Vec::new();
    for a in &args[1..] {
        let (f, v) = flag(a);
        match f {
            "--models" | "--http" | "--grpc" | "--mlflow-uri" => {}
            "--metrics" => local.push("--metrics=127.0.0.1:0".into()),
            "--state-dir" => local.push(format!("--state-dir={}", state.display())),
            "--model-name" => local.push("--model-name=iris".into()),
            _ => local.push(v.map_or(f.to_string(), |v| format!("{f}={v}"))),
        }
    }
    let local: Vec<&str> = local.iter().map(String::as_str).collect();
    let s = Server::start(&models, &local);
    let mut asked = 0;
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let p = &container[probe];
        if p.is_badvalue() {
            continue;
        }
        let path = p["httpGet"]["path"].as_str().unwrap();
        let port = &p["httpGet"]["port"];
        // A probe names the HTTP port, by number or by name.
        match (port.as_i64(), port.as_str()) {
            (Some(n), _) => assert_eq!(n, http, "{what}: {probe} on port {n}"),
            (_, Some(name)) => {
                let named = container["ports"]
                    .as_vec()
                    .unwrap()
                    .iter()
                    .find(|q| q["name"].as_str() == Some(name))
                    .unwrap_or_else(|| {
                        panic!("{what}: {probe} names port {name}, which is not declared")
                    });
                assert_eq!(named["containerPort"].as_i64(), Some(http));
            }
            _ => panic!("{what}: {probe} has no port"),
        }
        let r = client().get(s.public_url(path)).send().unwrap();
        assert_eq!(r.status(), 200, "{what}: {probe} {path}");
        asked += 1;
    }
    assert!(
        asked >= 2,
        "{what}: a readiness and a liveness probe at least"
    );
}

#[test]
fn the_deployment_matches_the_binary() {
    let docs = load("deploy/kubernetes/deployment.yaml");
    let pod = &docs[0]["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    check_container("deployment", container);
    let args = args_of(container);
    assert_eq!(port_of(value(&args, "--grpc").unwrap()), 8001);
    assert_eq!(port_of(value(&args, "--metrics").unwrap()), 8002);
    // The grace period outlasts the whole stop (--shutdown-timeout, 30 s by
    // default, which includes --shutdown-delay).
    let help = help();
    let timeout: u64 = value(&args, "--shutdown-timeout")
        .map(|v| v.trim_end_matches('s').parse().unwrap())
        .unwrap_or_else(|| {
            // The documented default, read from the flag's own help entry.
            let entry = help.split("--shutdown-timeout").nth(1).unwrap();
            let entry = entry.split("\n      --").next().unwrap();
            assert!(
                entry.contains("[default: 30s]"),
                "the default moved: {entry}"
            );
            30
        });
    let grace = pod["terminationGracePeriodSeconds"].as_i64().unwrap() as u64;
    assert!(
        grace > timeout,
        "terminationGracePeriodSeconds {grace} <= --shutdown-timeout {timeout}"
    );
    // Non-root, read-only root, no capabilities; the state volume mounted
    // where --state-dir points.
    assert_eq!(pod["securityContext"]["runAsUser"].as_i64(), Some(65532));
    assert_eq!(
        container["securityContext"]["readOnlyRootFilesystem"].as_bool(),
        Some(true)
    );
    let mounts: Vec<&str> = container["volumeMounts"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap())
        .collect();
    assert!(mounts.contains(&value(&args, "--state-dir").unwrap()));
    assert!(mounts.contains(&value(&args, "--models").unwrap()));

    // The Service's target ports are the container's named ports.
    let names: Vec<&str> = container["ports"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let service = &load("deploy/kubernetes/service.yaml")[0];
    for p in service["spec"]["ports"].as_vec().unwrap() {
        let target = p["targetPort"].as_str().unwrap();
        assert!(
            names.contains(&target),
            "the Service targets port {target}, which the pod lacks"
        );
    }
}

#[test]
fn the_mlflow_patch_passes_flags_the_binary_takes() {
    let docs = load("deploy/kubernetes/patch-mlflow.yaml");
    let args: Vec<String> = docs[0][0]["value"]
        .as_vec()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    let help = help();
    for a in &args[1..] {
        let (f, _) = flag(a);
        assert!(
            listed(&help, f),
            "patch-mlflow.yaml: {f} is not a flag of `switchyard serve`"
        );
    }
}

#[test]
fn the_kserve_runtime_matches_the_binary() {
    let docs = load("deploy/kserve/clusterservingruntime.yaml");
    let container = &docs[0]["spec"]["containers"][0];
    check_container("kserve", container);
    let args = args_of(container);
    // KServe's contract: HTTP on 8080, gRPC on 8081, the model at /mnt/models.
    assert_eq!(port_of(value(&args, "--http").unwrap()), 8080);
    assert_eq!(port_of(value(&args, "--grpc").unwrap()), 8081);
    assert_eq!(value(&args, "--models"), Some("/mnt/models"));
    assert_eq!(value(&args, "--model-name"), Some("{{.Name}}"));
}
