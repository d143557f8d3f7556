//! `switchyard rollout start|status|abort`: a progressive rollout, drawn as
//! its steps, its weight, and each gate's last measure against its threshold.

use serde_json::{Map, Value};

use super::api::{segment, Client, Failure, Outcome};
use switchyard::core::human::clock;

use super::render::{self, bar, num, opt, pct, verdict, Format};

/// `rollout start`'s flags, Flagger's vocabulary; unset ones take the server's defaults.
#[derive(clap::Args, Debug)]
pub struct StartArgs {
    /// The model.
    pub model: String,
    /// The version rolled out.
    #[arg(long, value_name = "VERSION")]
    pub candidate: String,
    /// Percent of traffic the candidate gains each healthy interval (server default 10).
    #[arg(long, value_name = "PERCENT")]
    pub step: Option<u64>,
    /// The candidate's weight before it is promoted to all of it (server default 50).
    #[arg(long, value_name = "PERCENT")]
    pub max: Option<u64>,
    /// How long each step is watched: 30s, 1m (server default 30s).
    #[arg(long, value_name = "DURATION")]
    pub interval: Option<String>,
    /// Failed checks before the rollback (server default 3).
    #[arg(long, value_name = "N")]
    pub threshold: Option<u32>,
    /// The candidate's failed requests over all, in a window (server default 0.01).
    #[arg(long, value_name = "RATE")]
    pub max_error_rate: Option<f64>,
    /// The candidate's p99 latency in a window, in milliseconds.
    #[arg(long, value_name = "MS")]
    pub max_p99: Option<f64>,
    /// The largest PSI of the candidate's input features (needs its baseline).
    #[arg(long, value_name = "PSI")]
    pub max_drift_psi: Option<f64>,
    /// Fewer requests than this in a window give no verdict (server default 100).
    #[arg(long, value_name = "N")]
    pub min_requests: Option<u64>,
}

fn path(model: &str) -> Outcome<String> {
    Ok(format!("/admin/models/{}/rollout", segment(model)?))
}

/// The body `POST .../rollout` takes, checked here first.
fn spec(a: &StartArgs) -> Outcome<Value> {
    let usage = |s: String| Err(Failure::Usage(s));
    if let Some(i) = &a.interval {
        if let Err(e) = humantime::parse_duration(i) {
            return usage(format!("--interval '{i}': {e} (e.g. 30s, 1m)"));
        }
    }
    if a.step == Some(0) || a.step.is_some_and(|s| s > 100) || a.max.is_some_and(|m| m > 100) {
        return usage("--step is 1 to 100 and --max 0 to 100 (percent of traffic)".into());
    }
    if a.max_error_rate.is_some_and(|r| !(0.0..=1.0).contains(&r)) {
        return usage("--max-error-rate is a rate, 0 to 1 (0.01 is 1 %)".into());
    }
    let mut body = Map::new();
    body.insert("candidate".into(), a.candidate.clone().into());
    let mut put = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            body.insert(k.into(), v);
        }
    };
    put("step_weight", a.step.map(Value::from));
    put("max_weight", a.max.map(Value::from));
    put("interval", a.interval.clone().map(Value::from));
    put("threshold", a.threshold.map(Value::from));
    put("max_error_rate", a.max_error_rate.map(Value::from));
    put("max_p99_latency_ms", a.max_p99.map(Value::from));
    put("max_drift_psi", a.max_drift_psi.map(Value::from));
    put("min_requests", a.min_requests.map(Value::from));
    Ok(Value::Object(body))
}

pub fn start(client: &Client, a: &StartArgs, format: Format) -> Outcome {
    let body = spec(a)?;
    let status = client.call("POST", &path(&a.model)?, Some(&body))?;
    if !render::structured(format, &status) {
        render::emit(&draw(&status));
    }
    Ok(())
}

pub fn abort(client: &Client, model: &str, format: Format) -> Outcome {
    let status = client.call("DELETE", &path(model)?, None)?;
    if !render::structured(format, &status) {
        render::emit(&draw(&status));
    }
    Ok(())
}

/// `rollout status [--watch]`: with `--watch`, redrawn every `every` until the
/// rollout ends; then exit 0 when it was promoted, 1 when it was not.
pub fn status(
    client: &Client,
    model: &str,
    format: Format,
    watch: Option<std::time::Duration>,
) -> Outcome {
    loop {
        let status = client.get(&path(model)?)?;
        let phase = status["phase"].as_str().unwrap_or("?").to_string();
        if watch.is_some() {
            render::frame_start(format);
        }
        if !render::structured(format, &status) {
            render::emit(&draw(&status));
        }
        let Some(every) = watch else { return Ok(()) };
        if phase != "progressing" {
            return match phase.as_str() {
                "promoted" => Ok(()),
                other => Err(Failure::Refused {
                    status: 0,
                    message: format!("the rollout of {model} ended {other}"),
                }),
            };
        }
        render::frame_end(format);
        std::thread::sleep(every);
    }
}

/// The rollout as a picture: who against whom, the split, the gates, the steps.
pub fn draw(s: &Value) -> String {
    let spec = &s["spec"];
    let candidate = spec["candidate"].as_str().unwrap_or("?");
    let stable = s["stable"].as_str().unwrap_or("?");
    let weight = s["weight"].as_u64().unwrap_or(0);
    let phase = s["phase"].as_str().unwrap_or("?");
    let mut out = format!(
        "{}: candidate {candidate} against stable {stable} · {} · weight {weight}% \
         (step {}% every {}, up to {}%)\n",
        s["model"].as_str().unwrap_or("?"),
        phase.replace('_', " "),
        spec["step_weight"],
        spec["interval"].as_str().unwrap_or("?"),
        spec["max_weight"],
    );
    if let Some(l) = s["leader"].as_str() {
        out.push_str(&format!("driven by replica {l}\n"));
    }
    let share = weight as f64 / 100.0;
    out.push_str(&format!(
        "  stable    {stable:>4} {} {}\n  candidate {candidate:>4} {} {}\n\n",
        bar(1.0 - share, 30),
        pct(1.0 - share),
        bar(share, 30),
        pct(share),
    ));
    let history = s["history"].as_array().cloned().unwrap_or_default();
    let last = history.iter().rev().find(|e| e.get("requests").is_some());
    let mut gates = render::table(&["GATE", "THRESHOLD", "LAST CHECK", ""]);
    let measured = |k: &str| last.and_then(|e| e[k].as_f64());
    let mut gate = |name: &str, limit: String, value: Option<f64>, shown: String, ok: bool| {
        let mark = match value {
            None => comfy_table::Cell::new("-"),
            Some(_) => verdict(if ok { "ok" } else { "FAIL" }, ok),
        };
        gates.add_row(vec![name.into(), limit.into(), shown.into(), mark]);
    };
    let min = spec["min_requests"].as_f64().unwrap_or(0.0);
    let n = measured("requests");
    gate(
        "requests in the window",
        format!("≥ {}", num(min)),
        n,
        opt(n),
        n.is_some_and(|n| n >= min),
    );
    let max_err = spec["max_error_rate"].as_f64().unwrap_or(0.0);
    let err = measured("error_rate");
    gate(
        "error rate",
        format!("≤ {}", pct(max_err)),
        err,
        err.map_or("-".into(), pct),
        err.is_some_and(|e| e <= max_err),
    );
    if let Some(max) = spec["max_p99_latency_ms"].as_f64() {
        let p99 = measured("p99_ms");
        gate(
            "p99 latency",
            format!("≤ {} ms", num(max)),
            p99,
            p99.map_or("-".into(), |p| format!("{} ms", num(p))),
            p99.is_some_and(|p| p <= max),
        );
    }
    if let Some(max) = spec["max_drift_psi"].as_f64() {
        let psi = measured("drift_psi");
        gate(
            "input drift (PSI)",
            format!("≤ {}", num(max)),
            psi,
            opt(psi),
            psi.is_some_and(|p| p <= max),
        );
    }
    out.push_str(&format!(
        "{gates}\nfailed checks: {} of {}\n\n",
        s["failed_checks"], spec["threshold"]
    ));
    let mut steps = render::table(&[
        "TIME", "WEIGHT", "", "REQUESTS", "ERRORS", "P99 ms", "PSI", "WHAT",
    ]);
    for e in &history {
        let w = e["weight"].as_u64().unwrap_or(0);
        steps.add_row(vec![
            clock(e["at"].as_f64().unwrap_or(0.0)),
            format!("{w}%"),
            bar(w as f64 / 100.0, 10),
            e["requests"].as_u64().map_or("".into(), |n| n.to_string()),
            e["error_rate"].as_f64().map_or("".into(), pct),
            e["p99_ms"].as_f64().map_or("".into(), num),
            e["drift_psi"].as_f64().map_or("".into(), num),
            e["what"].as_str().unwrap_or("").into(),
        ]);
    }
    out.push_str(&format!("{steps}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_picture_shows_split_gates_and_steps() {
        let s = json!({
            "model": "mlp", "stable": "1", "phase": "progressing", "weight": 20, "failed_checks": 1,
            "spec": {"candidate": "2", "step_weight": 10, "max_weight": 50, "interval": "30s",
                     "threshold": 3, "max_error_rate": 0.01, "max_p99_latency_ms": 50.0,
                     "max_drift_psi": 0.2, "min_requests": 100},
            "history": [
                {"at": 0.0, "what": "started", "weight": 10},
                {"at": 30.0, "what": "advance to 20%", "weight": 20, "requests": 340,
                 "error_rate": 0.0, "p99_ms": 1.25, "drift_psi": 0.31}]});
        let text = draw(&s);
        assert!(
            text.contains("candidate 2 against stable 1 · progressing · weight 20%"),
            "{text}"
        );
        assert!(text.contains("≤ 1%") && text.contains("1.25 ms"), "{text}");
        assert!(text.contains("0.31") && text.contains("FAIL"), "{text}");
        assert!(
            text.contains("00:00:30") && text.contains("advance to 20%"),
            "{text}"
        );
        assert!(text.contains("failed checks: 1 of 3"), "{text}");
    }

    #[test]
    fn a_bad_interval_is_refused_here() {
        let a = StartArgs {
            model: "mlp".into(),
            candidate: "2".into(),
            step: None,
            max: None,
            interval: Some("soon".into()),
            threshold: None,
            max_error_rate: None,
            max_p99: None,
            max_drift_psi: None,
            min_requests: None,
        };
        assert!(matches!(spec(&a), Err(Failure::Usage(m)) if m.contains("--interval")));
    }
}
