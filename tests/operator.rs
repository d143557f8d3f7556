//! The operator's tools against a real server: every CLI verb (its output,
//! `-o json`, its exit codes), `GET /admin/models`, the console's pages and
//! the refusal of admin calls a browser makes for another site.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{client, copy_dir, sample_models, scratch, Server};
use serde_json::{json, Value};

const TOKEN: &str = "operator-secret";

/// iris with two versions (both with the drift profile) and mlp with two.
fn repo(name: &str) -> PathBuf {
    let repo = scratch(name);
    let s = sample_models();
    for v in ["1", "2"] {
        copy_dir(&s.join("iris/1"), &repo.join("iris").join(v));
        copy_dir(&s.join("mlp").join(v), &repo.join("mlp").join(v));
    }
    for m in ["iris", "mlp"] {
        std::fs::write(
            repo.join(m).join("config.toml"),
            "[version_policy]\nall = true\n",
        )
        .unwrap();
    }
    repo
}

/// Runs `switchyard ARGS` against `server` (no token unless ARGS give one).
fn cli(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_switchyard"))
        .args(args)
        .env("SWITCHYARD_URL", server)
        .env_remove("SWITCHYARD_ADMIN_TOKEN")
        .env("NO_COLOR", "1")
        .output()
        .expect("run switchyard")
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// `args` must exit with `code`; its stdout and stderr.
fn expect(server: &str, args: &[&str], code: i32) -> (String, String) {
    let o = cli(server, args);
    let (out, err) = text(&o);
    assert_eq!(
        o.status.code(),
        Some(code),
        "switchyard {args:?}\nstdout:\n{out}\nstderr:\n{err}"
    );
    (out, err)
}

/// The words of a command line, as `with` takes them.
fn words(line: &str) -> Vec<&str> {
    line.split(' ').collect()
}

fn json_of(server: &str, args: &[&str]) -> Value {
    let (out, _) = expect(server, args, 0);
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{args:?}: {e}: {out}"))
}

fn mlp_row() -> Value {
    json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 16],
        "data": (0..16).map(|i| i as f32 / 16.0).collect::<Vec<_>>()}]})
}

/// `n` unversioned mlp requests; answers counted by version.
fn send(s: &Server, n: usize) -> BTreeMap<String, usize> {
    let c = client();
    let mut by = BTreeMap::new();
    for _ in 0..n {
        let r: Value = c
            .post(s.public_url("/v2/models/mlp/infer"))
            .json(&mlp_row())
            .send()
            .unwrap()
            .json()
            .unwrap();
        *by.entry(r["model_version"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    by
}

fn iris_csv() -> PathBuf {
    sample_models().join("iris/reference.csv")
}

#[test]
fn every_verb_against_a_real_server() {
    let s = Server::start(&repo("operator_verbs"), &["--admin-token", TOKEN]);
    let admin = s.admin.clone().unwrap();
    let a = admin.as_str();
    fn with<'a>(args: &[&'a str]) -> Vec<&'a str> {
        args.iter().copied().chain(["--token", TOKEN]).collect()
    }

    // models: both models, each version, the default marked.
    let listed = json_of(a, &with(&words("models -o json")));
    let names: Vec<&str> = listed["models"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["iris", "mlp"]);
    assert_eq!(listed["models"][1]["versions"].as_array().unwrap().len(), 2);
    let (table, _) = expect(a, &with(&["models"]), 0);
    assert!(
        table.contains("2 (default)") && table.contains("READY"),
        "{table}"
    );
    expect(a, &with(&words("models nope")), 1);

    // traffic: refused without the token (the server's words), bad weights
    // refused here before anything is sent, then set and honoured.
    let (_, err) = expect(a, &["traffic", "set", "mlp", "1=90", "2=10"], 1);
    assert!(err.contains("401") && err.contains("Bearer"), "{err}");
    let (_, err) = expect(a, &with(&words("traffic set mlp 1=-5 2=10")), 2);
    assert!(err.contains("non-negative integer"), "{err}");
    let (out, _) = expect(a, &with(&words("traffic set mlp 1=70 2=30 --dry-run")), 0);
    assert!(out.contains("\"1\": 70"), "{out}");
    let before = json_of(a, &with(&words("traffic get mlp -o json")));
    assert_eq!(before["shares"], json!({"2": 1.0}), "dry run sent nothing");
    let set = json_of(a, &with(&words("traffic set mlp 1=70 2=30 -o json")));
    assert_eq!(set["weights"], json!({"1": 70, "2": 30}));
    let split = send(&s, 400);
    let one = split.get("1").copied().unwrap_or(0) as f64 / 400.0;
    // 400 draws at 0.7: a standard deviation is 2.3 points; 0.6..0.8 is ±4.
    assert!((0.6..0.8).contains(&one), "{split:?}");
    let (out, _) = expect(a, &with(&words("traffic get mlp -o yaml")), 0);
    assert!(
        out.contains("weights:") && out.contains("\"1\": 70"),
        "{out}"
    );
    let (out, _) = expect(
        a,
        &with(&words("traffic set mlp 1=90 2=10 --shadow 2:5%")),
        2,
    );
    assert!(out.is_empty());
    let (out, _) = expect(a, &with(&words("traffic set mlp 1=90 2=10")), 0);
    assert!(
        out.contains("70%") && out.contains("90%"),
        "before and after: {out}"
    );

    // infer: a CSV larger than the model's batch goes in batches, one answer.
    let csv = iris_csv();
    let csv = csv.to_str().unwrap();
    let answer = json_of(a, &with(&["infer", "iris:1", "--data", csv, "-o", "json"]));
    assert_eq!(answer["model_version"], "1");
    let label = answer["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "label")
        .unwrap();
    assert_eq!(label["shape"], json!([150]));
    let (out, _) = expect(a, &with(&["infer", "iris", "--data", csv]), 0);
    assert!(
        out.contains("iris version 2 answered") && out.contains("probabilities"),
        "{out}"
    );
    let (_, err) = expect(a, &with(&words("infer iris --data /nonexistent.csv")), 2);
    assert!(err.contains("/nonexistent.csv"), "{err}");

    // drift: the rows just sent reach version 1's window (binned off the
    // request path, so soon rather than at once).
    let deadline = Instant::now() + Duration::from_secs(10);
    while json_of(a, &with(&words("drift iris:1 -o json")))["rows"] != 150 {
        assert!(
            Instant::now() < deadline,
            "150 rows never reached the window"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (out, _) = expect(a, &with(&words("drift iris:1")), 0);
    assert!(
        out.contains("petal_length") && out.contains("reference │"),
        "{out}"
    );
    expect(a, &with(&words("drift mlp")), 1);
    expect(a, &with(&words("drift iris:zero")), 2);

    // rollout: start, status, abort; --watch ends with the verdict's code.
    let started = json_of(
        a,
        &with(&words(
            "rollout start mlp --candidate 2 --step 20 --interval 1h --max-p99 50 -o json",
        )),
    );
    assert_eq!(started["phase"], "progressing");
    assert_eq!(started["weight"], 20);
    let (out, _) = expect(a, &with(&words("rollout status mlp")), 0);
    assert!(
        out.contains("candidate 2 against stable 1 · progressing · weight 20%"),
        "{out}"
    );
    expect(
        a,
        &with(&words("rollout start mlp --candidate 2 --interval soon")),
        2,
    );
    let aborted = json_of(a, &with(&words("rollout abort mlp -o json")));
    assert_eq!(aborted["phase"], "aborted");
    let (_, err) = expect(a, &with(&words("rollout status mlp --watch")), 1);
    assert!(err.contains("ended aborted"), "{err}");
    // A healthy candidate promoted while --watch follows it: exit 0.
    expect(
        a,
        &with(&words(
            "rollout start mlp --candidate 2 --step 50 --max 50 --interval 300ms --min-requests 1",
        )),
        0,
    );
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(30);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && Instant::now() < deadline {
                send(&s, 5);
            }
        });
        // Killed after a deadline rather than waited for: a rollout that
        // never ends must fail the test, not hang it.
        let mut watch = Command::new(env!("CARGO_BIN_EXE_switchyard"))
            .args(with(&words("rollout status mlp --watch --every 200ms")))
            .env("SWITCHYARD_URL", a)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = watch.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = watch.kill();
                panic!("rollout status --watch still running after 30 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut out = String::new();
        std::io::Read::read_to_string(&mut watch.stdout.take().unwrap(), &mut out).unwrap();
        assert!(
            status.success() && out.contains("promoted"),
            "{status}: {out}"
        );
    });

    // load and unload act on whole models.
    expect(a, &with(&words("unload iris")), 0);
    let iris = json_of(a, &with(&words("models iris -o json")));
    assert_eq!(iris["versions"], json!([]), "{iris}");
    assert_eq!(iris["error"], "unloaded by request");
    expect(a, &with(&words("load iris")), 0);
    let (_, err) = expect(a, &with(&words("load iris:1")), 2);
    assert!(err.contains("whole model"), "{err}");

    // The windows the console draws: the control plane closes one every 5 s.
    let deadline = Instant::now() + Duration::from_secs(12);
    loop {
        let mlp = json_of(a, &with(&words("models mlp -o json")));
        let windows = mlp["versions"][1]["windows"].as_array().unwrap().clone();
        if windows.iter().any(|w| w["requests"].as_u64() > Some(0)) {
            assert!(windows.iter().all(|w| w["seconds"].as_f64().unwrap() > 0.0));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no window counted requests: {mlp}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // The same calls on the public port need the token too.
    let (_, err) = expect(&s.base, &["models"], 1);
    assert!(err.contains("401"), "{err}");
    expect(&s.base, &with(&["models"]), 0);
}

#[test]
fn no_server_is_exit_3_and_usage_is_exit_2() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let (_, err) = expect(&url, &["models"], 3);
    assert!(err.contains("cannot reach the server"), "{err}");
    expect(&url, &["models", "--server", "ftp://x"], 2);
    expect(&url, &["traffic", "set"], 2);
    expect(&url, &["rollout", "frobnicate"], 2);
    let (out, _) = expect(&url, &["completions", "bash"], 0);
    assert!(
        out.contains("switchyard") && out.contains("rollout"),
        "{out:.200}"
    );
    let (out, _) = expect(&url, &["man"], 0);
    assert!(
        out.contains(".TH switchyard") && out.contains("switchyard\\-traffic"),
        "{out:.300}"
    );
}

/// `GET path` on `base`: status, headers, body.
fn get(base: &str, path: &str) -> (u16, reqwest::header::HeaderMap, String) {
    get_with(base, path, &[])
}

fn get_with(
    base: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, reqwest::header::HeaderMap, String) {
    let mut r = client().get(format!("{base}{path}"));
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    let r = r.send().unwrap();
    (r.status().as_u16(), r.headers().clone(), r.text().unwrap())
}

#[test]
fn the_console_is_on_the_admin_listener_and_escapes_what_files_name() {
    let dir = repo("operator_console");
    // A feature name a page must not take as markup: profiles are files.
    let odd = "<img src=x onerror=alert(1)>";
    let profile = dir.join("iris/2/baseline.json");
    let text = std::fs::read_to_string(&profile).unwrap();
    assert!(text.contains("\"petal_length\""));
    std::fs::write(
        &profile,
        text.replace("\"petal_length\"", &format!("{odd:?}")),
    )
    .unwrap();
    let s = Server::start(&dir, &["--admin-token", TOKEN]);
    let admin = s.admin.clone().unwrap();

    let (code, headers, body) = get(&admin, "/console");
    assert_eq!(code, 200, "{body}");
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self'"),
        "{csp}"
    );
    assert!(body.contains("href=\"/console/models/iris\""), "{body}");

    // Drift shows every feature's name, so send rows to version 2.
    let rows: Vec<f32> = [5.1, 3.5, 1.4, 0.2].repeat(20);
    let (code, _) = s.post(
        "/v2/models/iris/versions/2/infer",
        &json!({"inputs": [{"name": "input", "datatype": "FP32", "shape": [20, 4], "data": rows}]}),
    );
    assert_eq!(code, 200);
    let (code, _, body) = get(&admin, "/console/models/iris");
    assert_eq!(code, 200);
    assert!(
        !body.contains(odd) && body.contains("&lt;img src=x onerror=alert(1)&gt;"),
        "{body}"
    );
    for part in [
        "id=\"traffic-form\"",
        "id=\"rollout-form\"",
        "id=\"split\"",
        "id=\"drift\"",
        "id=\"latency\"",
        "data-phase=\"none\"",
    ] {
        assert!(body.contains(part), "{part} missing");
    }
    let (code, _, live) = get(&admin, "/console/models/iris/live");
    assert_eq!(code, 200);
    assert!(
        live.contains("data-live") && !live.contains("<html"),
        "{live:.500}"
    );
    for (path, kind) in [
        ("/console/assets/console.js", "text/javascript"),
        ("/console/assets/console.css", "text/css"),
    ] {
        let (code, headers, _) = get(&admin, path);
        assert_eq!(code, 200);
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind));
    }
    assert_eq!(get(&admin, "/console/models/nope").0, 404);
    assert_eq!(get(&admin, "/console/models/bad%zz").0, 404);
    assert_eq!(get(&admin, "/console/nothing").0, 404);
    let (code, _, body) = get(&s.base, "/console");
    assert_eq!(code, 404);
    assert!(body.contains("admin listener"), "{body}");
    // With a token, a cross-site page's call is refused all the same.
    let r = client()
        .put(format!("{admin}/admin/models/mlp/traffic"))
        .bearer_auth(TOKEN)
        .header("origin", "http://evil.example")
        .json(&json!({"weights": {"1": 50, "2": 50}}))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
}

#[test]
fn reads_a_server_protects_need_the_api_token_and_close_the_console() {
    let s = Server::start(
        &repo("operator_protected"),
        &["--api-token", "api-secret", "--protect-reads"],
    );
    let admin = s.admin.clone().unwrap();
    let csv = iris_csv();
    let csv = csv.to_str().unwrap();
    let (_, err) = expect(&admin, &["infer", "iris", "--data", csv], 1);
    assert!(err.contains("401"), "{err}");
    let (out, _) = expect(
        &admin,
        &["infer", "iris", "--data", csv, "--api-token", "api-secret"],
        0,
    );
    assert!(out.contains("iris version 2 answered"), "{out}");
    let (code, _, body) = get(&admin, "/console");
    assert_eq!(code, 403);
    assert!(body.contains("--protect-reads"), "{body}");
}

#[test]
fn admin_calls_from_another_sites_page_are_refused() {
    let s = Server::start(&repo("operator_origin"), &[]);
    let admin = s.admin.clone().unwrap();
    let host = admin.trim_start_matches("http://").to_string();
    let put = |headers: &[(&str, &str)]| {
        let mut r = client()
            .put(format!("{admin}/admin/models/mlp/traffic"))
            .json(&json!({"weights": {"1": 50, "2": 50}}));
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let resp = r.send().unwrap();
        (resp.status().as_u16(), resp.text().unwrap())
    };
    // No token on the admin listener: what a browser sends decides.
    let (code, body) = put(&[("origin", "http://evil.example")]);
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("Origin"), "{body}");
    let (code, body) = put(&[("sec-fetch-site", "cross-site")]);
    assert_eq!(code, 403, "{body}");
    let (code, body) = put(&[
        ("origin", &format!("http://{host}")),
        ("sec-fetch-site", "same-origin"),
    ]);
    assert_eq!(code, 200, "the console's own call: {body}");
    assert_eq!(put(&[]).0, 200, "curl and the CLI send neither header");
    // DNS rebinding: the attacker's name, resolved to this address, is
    // same-origin to the browser; its Host names it.
    let rebound = client()
        .put(format!("{admin}/admin/models/mlp/traffic"))
        .header("host", "evil.example:8003")
        .header("origin", "http://evil.example:8003")
        .header("sec-fetch-site", "same-origin")
        .json(&json!({"weights": {"1": 50, "2": 50}}))
        .send()
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 403);
    assert!(rebound.text().unwrap().contains("evil.example"));
    let (code, _, _) = get_with(&admin, "/console", &[("host", "evil.example:8003")]);
    assert_eq!(code, 403, "the console's reads too");
    for host in ["localhost:1", "[::1]:8003", "127.0.0.1"] {
        let (code, _, body) = get_with(&admin, "/admin/models", &[("host", host)]);
        assert_eq!(code, 200, "{host}: {body}");
    }
    let text_plain = client()
        .post(format!("{admin}/v2/repository/models/mlp/unload"))
        .header("origin", "http://evil.example")
        .header("content-type", "text/plain")
        .send()
        .unwrap();
    assert_eq!(text_plain.status().as_u16(), 403);
}
