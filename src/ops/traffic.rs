//! `switchyard traffic get|set`: a model's split between versions, checked
//! here before it is sent, and shown before and after.

use std::collections::BTreeMap;

use serde_json::Value;
use switchyard::core::config::{ShadowSpec, TrafficSpec};

use super::api::{segment, Client, Failure, Outcome};
use super::render::{self, bar, num, pct, Format};

/// What `traffic set` was given.
pub struct Change<'a> {
    pub weights: &'a [String],
    pub sticky_header: Option<&'a str>,
    pub shadow: Option<&'a str>,
    pub clear: bool,
    pub dry_run: bool,
}

pub fn get(client: &Client, model: &str, format: Format) -> Outcome {
    let now = client.get(&path(model)?)?;
    if !render::structured(format, &now) {
        render::emit(&describe(&now));
    }
    Ok(())
}

pub fn set(client: &Client, model: &str, change: Change<'_>, format: Format) -> Outcome {
    let spec = policy(&change)?;
    let body = serde_json::to_value(&spec).expect("plain data");
    if change.dry_run {
        if !render::structured(format, &body) {
            render::emit(&format!(
                "would send to PUT {}{}:\n{}\n",
                client.base(),
                path(model)?,
                serde_json::to_string_pretty(&body).expect("plain data")
            ));
        }
        return Ok(());
    }
    let before = client.get(&path(model)?)?;
    let after = client.call("PUT", &path(model)?, Some(&body))?;
    if render::structured(format, &after) {
        return Ok(());
    }
    render::emit(&before_after(&before, &after));
    Ok(())
}

fn path(model: &str) -> Outcome<String> {
    Ok(format!("/admin/models/{}/traffic", segment(model)?))
}

/// The policy `change` asks for, or why it cannot be one.
fn policy(change: &Change<'_>) -> Outcome<TrafficSpec> {
    let usage = |s: String| Err(Failure::Usage(s));
    if change.clear {
        if !change.weights.is_empty() || change.shadow.is_some() || change.sticky_header.is_some() {
            return usage("--clear takes no weights, --shadow or --sticky-header: it removes the policy (the default version takes everything)".into());
        }
        return Ok(TrafficSpec::default());
    }
    let mut weights = BTreeMap::new();
    for w in change.weights {
        let Some((v, n)) = w.split_once('=') else {
            return usage(format!("'{w}': give VERSION=WEIGHT, e.g. 1=90 2=10"));
        };
        let Ok(n) = n.trim().parse::<u64>() else {
            return usage(format!(
                "'{w}': a weight is a non-negative integer (weights are normalised)"
            ));
        };
        let v = v.trim();
        if v.is_empty() {
            return usage(format!("'{w}': the version is missing"));
        }
        if weights.insert(v.to_string(), n).is_some() {
            return usage(format!("version {v} is given twice"));
        }
    }
    if weights.is_empty() {
        return usage("give weights (1=90 2=10), or --clear to remove the policy".into());
    }
    if weights.values().all(|w| *w == 0) {
        return usage("every weight is 0: at least one version must get traffic".into());
    }
    let shadow = match change.shadow {
        None => None,
        Some(s) => {
            let (v, p) = s.split_once(':').unwrap_or((s, "100"));
            let p = p.trim().trim_end_matches('%');
            let percent = p.parse::<f64>().ok().filter(|p| (0.0..=100.0).contains(p));
            let Some(percent) = percent.filter(|_| !v.is_empty()) else {
                return usage(format!(
                    "--shadow '{s}': give VERSION:PERCENT, e.g. 3:5% (0 to 100)"
                ));
            };
            if weights.get(v).is_some_and(|w| *w > 0) {
                return usage(format!(
                    "--shadow {v}: a shadow gets copies, not traffic; it cannot also have a weight"
                ));
            }
            Some(ShadowSpec {
                version: v.to_string(),
                percent,
            })
        }
    };
    Ok(TrafficSpec {
        weights,
        sticky_header: change.sticky_header.map(str::to_string),
        shadow,
    })
}

/// A policy as `GET .../traffic` answers it, for people.
pub fn describe(p: &Value) -> String {
    let mut t = render::table(&["VERSION", "WEIGHT", "SHARE", ""]);
    for (v, share) in shares(p) {
        let weight = p["weights"][&v]
            .as_u64()
            .map_or("-".into(), |w| w.to_string());
        t.add_row(vec![v, weight, pct(share), bar(share, 20)]);
    }
    let mut out = format!("{t}\n");
    if let Some(h) = p["sticky_header"].as_str() {
        out.push_str(&format!("sticky: callers pinned by their {h} header\n"));
    }
    if let Some(s) = p.get("shadow").filter(|s| !s.is_null()) {
        let stats = &p["shadow_stats"];
        out.push_str(&format!(
            "shadow: version {} gets a copy of {}% of requests ({} copies, {} errors, {} disagreements)\n",
            s["version"].as_str().unwrap_or("?"),
            num(s["percent"].as_f64().unwrap_or(0.0)),
            stats["requests"].as_u64().unwrap_or(0),
            stats["errors"].as_u64().unwrap_or(0),
            stats["disagreements"].as_u64().unwrap_or(0),
        ));
    }
    if let Some(e) = p["policy_error"].as_str() {
        out.push_str(&format!("policy error: {e}\n"));
    }
    out
}

/// Each version's share, by version number.
fn shares(p: &Value) -> Vec<(String, f64)> {
    let mut out: Vec<(String, f64)> = p["shares"]
        .as_object()
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
                .collect()
        })
        .unwrap_or_default();
    out.sort_by_key(|(v, _)| (v.parse::<u64>().unwrap_or(u64::MAX), v.clone()));
    out
}

/// The split before and after a change, side by side.
fn before_after(before: &Value, after: &Value) -> String {
    let (b, a) = (shares(before), shares(after));
    let mut versions: Vec<String> = b.iter().chain(&a).map(|(v, _)| v.clone()).collect();
    versions.sort_by_key(|v| (v.parse::<u64>().unwrap_or(u64::MAX), v.clone()));
    versions.dedup();
    let of = |list: &[(String, f64)], v: &str| {
        list.iter().find(|(x, _)| x == v).map_or(0.0, |(_, s)| *s)
    };
    let mut t = render::table(&["VERSION", "BEFORE", "AFTER", ""]);
    for v in versions {
        let (x, y) = (of(&b, &v), of(&a, &v));
        t.add_row(vec![v, pct(x), pct(y), bar(y, 20)]);
    }
    let mut out = format!(
        "{}: traffic policy set\n{t}\n",
        after["model"].as_str().unwrap_or("?")
    );
    let rest = describe(after);
    // The sticky and shadow lines of the new policy.
    out.extend(
        rest.lines()
            .skip_while(|l| {
                !l.starts_with("sticky") && !l.starts_with("shadow") && !l.starts_with("policy")
            })
            .map(|l| format!("{l}\n")),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change<'a>(weights: &'a [String], shadow: Option<&'a str>) -> Change<'a> {
        Change {
            weights,
            sticky_header: None,
            shadow,
            clear: false,
            dry_run: false,
        }
    }

    fn weights(w: &[&str]) -> Vec<String> {
        w.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_policy_is_checked_before_it_is_sent() {
        let ok = policy(&change(&weights(&["1=90", "2=10"]), Some("3:5%"))).unwrap();
        assert_eq!(ok.weights["1"], 90);
        assert_eq!(ok.shadow.unwrap().percent, 5.0);
        for (w, shadow, says) in [
            (vec!["1:90"], None, "VERSION=WEIGHT"),
            (vec!["1=-5"], None, "non-negative integer"),
            (vec!["1=0.5"], None, "non-negative integer"),
            (vec!["1=0", "2=0"], None, "every weight is 0"),
            (vec!["1=1", "1=2"], None, "twice"),
            (vec![], None, "--clear"),
            (vec!["1=1"], Some("3:150%"), "0 to 100"),
            (vec!["1=1"], Some("1:5"), "cannot also have a weight"),
        ] {
            let w = weights(&w);
            let e = policy(&change(&w, shadow)).unwrap_err();
            assert!(
                matches!(&e, Failure::Usage(m) if m.contains(says)),
                "{w:?}: {e}"
            );
        }
    }

    #[test]
    fn before_and_after_list_every_version_of_either() {
        let before = serde_json::json!({"model": "mlp", "shares": {"1": 1.0}});
        let after = serde_json::json!({"model": "mlp", "weights": {"1": 90, "2": 10},
            "shares": {"1": 0.9, "2": 0.1}, "sticky_header": "x-user-id"});
        let text = before_after(&before, &after);
        assert!(
            text.contains("100%") && text.contains("90%") && text.contains("10%"),
            "{text}"
        );
        assert!(text.contains("x-user-id"), "{text}");
    }
}
