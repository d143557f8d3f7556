//! `switchyard models`, `load` and `unload`: what serves, and the repository
//! calls that change it.

use serde_json::Value;

use super::api::{model_version, segment, Client, Failure, Outcome};
use super::render::{self, num, opt, pct, verdict, Format};

/// `switchyard models [MODEL] [--watch]`.
pub fn models(client: &Client, model: Option<&str>, format: Format) -> Outcome {
    let path = match model {
        Some(m) => format!("/admin/models/{}", segment(m)?),
        None => "/admin/models".into(),
    };
    let answer = client.get(&path)?;
    if render::structured(format, &answer) {
        return Ok(());
    }
    let list = match model {
        Some(_) => vec![answer],
        None => answer["models"].as_array().cloned().unwrap_or_default(),
    };
    render::emit(&models_table(&list));
    Ok(())
}

fn models_table(models: &[Value]) -> String {
    let mut t = render::table(&[
        "MODEL", "VERSION", "STATE", "SHARE", "QUEUE", "REQ/S", "ERRORS", "P50 ms", "P99 ms",
        "DRIFT", "REASON",
    ]);
    for m in models {
        let name = m["name"].as_str().unwrap_or("?");
        let default = m["default_version"].as_str();
        let versions = m["versions"].as_array().cloned().unwrap_or_default();
        if versions.is_empty() {
            t.add_row(vec![
                comfy_table::Cell::new(name),
                "-".into(),
                verdict("UNAVAILABLE", false),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                "".into(),
                m["error"].as_str().unwrap_or("").into(),
            ]);
        }
        for v in versions {
            let number = v["version"].as_str().unwrap_or("?");
            let mut version = number.to_string();
            if Some(number) == default {
                version.push_str(" (default)");
            }
            let ready = v["state"] == "READY";
            let mut share = pct(v["share"].as_f64().unwrap_or(0.0));
            if let Some(p) = v["shadow_percent"].as_f64() {
                share.push_str(&format!(" +shadow {}%", num(p)));
            }
            let recent = &v["last_minute"];
            let drift = match v.get("drift").filter(|d| !d.is_null()) {
                None => comfy_table::Cell::new("-"),
                Some(d) if d["rows"].as_u64() < d["min_rows"].as_u64() => {
                    comfy_table::Cell::new(format!("{} rows", d["rows"]))
                }
                Some(d) => {
                    let alert = d["alert"].as_bool().unwrap_or(false)
                        || d["prediction_alert"].as_bool().unwrap_or(false);
                    let worst = d["worst_psi"]
                        .as_f64()
                        .map(|p| format!(" (psi {})", num(p)))
                        .unwrap_or_default();
                    verdict(
                        format!("{}{worst}", if alert { "ALERT" } else { "ok" }),
                        !alert,
                    )
                }
            };
            t.add_row(vec![
                comfy_table::Cell::new(name),
                version.into(),
                verdict(v["state"].as_str().unwrap_or("?"), ready),
                share.into(),
                v["queue_depth"].to_string().into(),
                num(recent["per_second"].as_f64().unwrap_or(0.0)).into(),
                pct(recent["error_rate"].as_f64().unwrap_or(0.0)).into(),
                opt(recent["p50_ms"].as_f64()).into(),
                opt(recent["p99_ms"].as_f64()).into(),
                drift,
                v["reason"].as_str().unwrap_or("").into(),
            ]);
        }
    }
    format!("{t}\n")
}

/// `switchyard load|unload MODEL`: Triton's repository calls, which act on
/// the whole model.
pub fn load(client: &Client, model: &str, unload: bool) -> Outcome {
    let (m, v) = model_version(model)?;
    if v.is_some() {
        return Err(Failure::Usage(format!(
            "'{model}': load and unload act on a whole model (Triton's repository API); \
             to take one version out of traffic, set its weight to 0 (switchyard traffic set)"
        )));
    }
    let verb = if unload { "unload" } else { "load" };
    client.call(
        "POST",
        &format!("/v2/repository/models/{}/{verb}", segment(&m)?),
        None,
    )?;
    eprintln!("{m}: {verb}ed");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_marks_the_default_version_and_lists_a_model_without_versions() {
        let models = serde_json::json!([
            {"name": "mlp", "default_version": "1", "versions": [
                {"version": "1", "state": "READY", "reason": "", "share": 0.9, "queue_depth": 0,
                 "last_minute": {"per_second": 12.5, "error_rate": 0.0, "p50_ms": 0.2, "p99_ms": 1.5}},
                {"version": "2", "state": "READY", "reason": "", "share": 0.1, "queue_depth": 3,
                 "shadow_percent": 5.0,
                 "last_minute": {"per_second": 1.0, "error_rate": 0.5, "p50_ms": null, "p99_ms": null},
                 "drift": {"alert": true, "prediction_alert": false, "worst_psi": 0.42}}]},
            {"name": "broken", "error": "config.toml: bad", "versions": []}
        ]);
        let text = models_table(models.as_array().unwrap());
        assert!(text.contains("1 (default)"), "{text}");
        assert!(
            text.contains("90%") && text.contains("10% +shadow 5%"),
            "{text}"
        );
        assert!(text.contains("ALERT (psi 0.42)"), "{text}");
        assert!(text.contains("config.toml: bad"), "{text}");
    }
}
