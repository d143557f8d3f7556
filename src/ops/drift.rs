//! `switchyard drift MODEL[:VERSION]`: each feature's drift, worst first, and
//! the reference and live histograms of the worst few side by side.

use serde_json::Value;

use super::api::{model_version, segment, Client, Outcome};
use super::render::{self, histogram, num, opt, verdict, Format};

/// Features whose histograms are drawn under the table.
const DRAWN: usize = 3;

pub fn drift(client: &Client, model: &str, format: Format) -> Outcome {
    let (m, v) = model_version(model)?;
    let path = match v {
        Some(v) => format!("/v2/models/{}/versions/{v}/drift", segment(&m)?),
        None => format!("/v2/models/{}/drift", segment(&m)?),
    };
    let report = client.get(&path)?;
    if !render::structured(format, &report) {
        render::emit(&draw(&report));
    }
    Ok(())
}

fn draw(r: &Value) -> String {
    let threshold = r["psi_threshold"].as_f64().unwrap_or(0.1);
    let alert = |k: &str| {
        if r[k].as_bool().unwrap_or(false) {
            "ALERT"
        } else {
            "ok"
        }
    };
    let mut out = format!(
        "{} version {}: {} rows in the window (of {}, {} seen), inputs {} ({} drifted, alert at {}), predictions {} ({} drifted)\n",
        r["model"].as_str().unwrap_or("?"),
        r["version"].as_str().unwrap_or("?"),
        r["rows"],
        r["window"],
        r["seen"],
        alert("alert"),
        render::pct(r["drifted_share"].as_f64().unwrap_or(0.0)),
        render::pct(r["share"].as_f64().unwrap_or(0.0)),
        alert("prediction_alert"),
        render::pct(r["prediction_drifted_share"].as_f64().unwrap_or(0.0)),
    );
    if r["dropped"].as_u64().unwrap_or(0) > 0 {
        out.push_str(&format!(
            "{} observations dropped while the monitor was behind\n",
            r["dropped"]
        ));
    }
    let too_few = r["rows"].as_u64() < r["min_rows"].as_u64();
    if too_few {
        out.push_str(&format!(
            "no verdict yet: a feature counts as drifted once the window holds {} rows\n",
            r["min_rows"]
        ));
    }
    let mut features = r["features"].as_array().cloned().unwrap_or_default();
    features.sort_by(|a, b| psi(b).total_cmp(&psi(a)));
    let mut t = render::table(&[
        "FEATURE",
        "SIDE",
        "STATISTIC",
        "SCORE",
        "THRESHOLD",
        "VERDICT",
        "JS",
        "KS",
        "CHI²",
    ]);
    for f in &features {
        let drifted = f["drifted"].as_bool().unwrap_or(false);
        t.add_row(vec![
            comfy_table::Cell::new(f["feature"].as_str().unwrap_or("?")),
            f["side"].as_str().unwrap_or("?").into(),
            "psi".into(),
            num(psi(f)).into(),
            num(threshold).into(),
            if too_few {
                comfy_table::Cell::new("too few rows")
            } else {
                verdict(if drifted { "drifted" } else { "ok" }, !drifted)
            },
            opt(f["jensen_shannon"].as_f64()).into(),
            opt(f["ks"].as_f64()).into(),
            opt(f["chi_square"].as_f64()).into(),
        ]);
    }
    out.push_str(&format!("{t}\n"));
    for f in features.iter().take(DRAWN) {
        let props = |k: &str| -> Vec<f64> {
            f[k].as_array()
                .map(|a| a.iter().filter_map(Value::as_f64).collect())
                .unwrap_or_default()
        };
        let (reference, live) = (props("reference"), props("current"));
        let top = reference.iter().chain(&live).copied().fold(0.0, f64::max);
        out.push_str(&format!(
            "\n{} (psi {})\n  reference │{}│\n  live      │{}│\n",
            f["feature"].as_str().unwrap_or("?"),
            num(psi(f)),
            histogram(&reference, top),
            histogram(&live, top),
        ));
    }
    out
}

fn psi(f: &Value) -> f64 {
    f["psi"].as_f64().unwrap_or(0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn worst_first_with_histograms_of_the_worst() {
        let r = serde_json::json!({
            "model": "iris", "version": "1", "rows": 200, "window": 1000, "seen": 500, "min_rows": 100,
            "psi_threshold": 0.1, "share": 0.5, "drifted_share": 0.25, "alert": false,
            "prediction_drifted_share": 0.0, "prediction_alert": false, "dropped": 0,
            "features": [
                {"feature": "sepal_width", "side": "input", "psi": 0.01, "jensen_shannon": 0.02,
                 "ks": 0.03, "drifted": false, "reference": [0.5, 0.5], "current": [0.5, 0.5]},
                {"feature": "petal_length", "side": "input", "psi": 1.5, "jensen_shannon": 0.4,
                 "ks": 0.6, "drifted": true, "reference": [0.8, 0.2], "current": [0.0, 1.0]}]});
        let text = draw(&r);
        let (worst, other) = (
            text.find("petal_length").unwrap(),
            text.find("sepal_width").unwrap(),
        );
        assert!(worst < other, "{text}");
        assert!(text.contains("drifted") && text.contains("1.5"), "{text}");
        assert!(
            text.contains("reference │▆▂│") && text.contains("live      │ █│"),
            "{text}"
        );
    }
}
