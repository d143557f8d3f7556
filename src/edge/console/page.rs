//! The console's HTML: the list of models and one page per model, each with
//! the parts that `console.js` swaps in place every few seconds (elements
//! with `data-live`) and the forms that call the admin API.

use maud::{html, Markup, DOCTYPE};

use super::chart::{self, Check};
use crate::core::human::{clock, num, opt, pct};
use crate::edge::overview::{ModelView, VersionView};

/// How often the live parts refresh, in milliseconds (the script reads it).
const REFRESH_MS: u32 = 3000;

fn layout(title: &str, live: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · Switchyard" }
                link rel="stylesheet" href="/console/assets/console.css";
                script src="/console/assets/console.js" defer {}
            }
            body data-source=(live) data-refresh=(REFRESH_MS) {
                a.skip href="#main" { "Skip to the content" }
                (body)
                footer {
                    p {
                        "Refreshes every " (REFRESH_MS / 1000) " s. "
                        span #updated aria-live="off" { }
                    }
                }
            }
        }
    }
}

/// The token field and the message line every page with forms has.
fn token_field(token_needed: bool) -> Markup {
    html! {
        div.token {
            label for="token" { "Admin token" }
            input #token type="password" autocomplete="off" spellcheck="false"
                aria-describedby="token-hint";
            p #token-hint.hint {
                @if token_needed {
                    "Reading needs no token; changes need the server's admin token (--admin-token). It stays in this tab only."
                } @else {
                    "The server has no admin token: changes on this listener need none."
                }
            }
        }
        p #message role="status" aria-live="polite" {}
    }
}

/// `GET /console`.
pub fn index(views: &[ModelView], token_needed: bool) -> Markup {
    layout(
        "Models",
        "/console/live",
        html! {
            header { h1 { "Switchyard console" } }
            main #main {
                p.hint {
                    "Pick a model to see its traffic, rollout, requests and drift"
                    @if token_needed { ", and to change them with the admin token" } "."
                }
                (index_live(views))
            }
        },
    )
}

/// The list of models, refreshed in place.
pub fn index_live(views: &[ModelView]) -> Markup {
    html! {
        section #models-part data-live {
            h2 { "Models" }
            table #models {
                caption { "Every model and version this server knows, with the last minute's requests" }
                thead { tr {
                    th scope="col" { "Model" } th scope="col" { "Version" } th scope="col" { "State" }
                    th scope="col" { "Share" } th scope="col" { "Requests/s" } th scope="col" { "p99 ms" }
                    th scope="col" { "Drift" } th scope="col" { "Rollout" }
                } }
                tbody {
                    @for m in views {
                        @if m.versions.is_empty() {
                            tr {
                                th scope="row" { a href=(model_href(&m.name)) { (m.name) } }
                                td { "-" } td.bad { "UNAVAILABLE" } td colspan="5" { (m.error.as_deref().unwrap_or("")) }
                            }
                        }
                        @for v in &m.versions {
                            tr {
                                th scope="row" { a href=(model_href(&m.name)) { (m.name) } }
                                td { (v.version) (default_mark(m, v)) }
                                td class=(state_class(v)) { (v.state) }
                                td { (pct(v.share)) }
                                td { (rate(v.last_minute.per_second)) }
                                td { (opt(v.last_minute.p99_ms)) }
                                td { (drift_cell(v)) }
                                td { (m.rollout.as_ref().filter(|r| r.spec.candidate == v.version).map(|r| phase_word(r.phase)).unwrap_or("")) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// `GET /console/models/{m}`.
pub fn model(view: &ModelView, token_needed: bool) -> Markup {
    let name = &view.name;
    let ready: Vec<&VersionView> = view
        .versions
        .iter()
        .filter(|v| v.state == "READY")
        .collect();
    let weights = view.traffic["weights"].as_object();
    let api = format!("/admin/models/{}", name);
    // The version a rollout would most likely roll out: not the stable one
    // (the most traffic), the newest of the others.
    let stable = ready
        .iter()
        .max_by(|a, b| a.share.total_cmp(&b.share))
        .map(|v| v.version.clone());
    let candidate = ready
        .iter()
        .rev()
        .find(|v| Some(&v.version) != stable.as_ref())
        .map(|v| v.version.clone());
    layout(
        name,
        &format!("{}/live", model_href(name)),
        html! {
            header {
                nav aria-label="Breadcrumb" { a href="/console" { "All models" } }
                h1 { (name) }
            }
            main #main {
                (token_field(token_needed))
                (versions_part(view))
                section aria-labelledby="traffic-h" {
                    h2 #traffic-h { "Traffic" }
                    (split_part(view))
                    form #traffic-form data-api=(format!("{api}/traffic")) data-method="PUT" data-done="Traffic split applied" {
                        fieldset {
                            legend { "Weights of requests that name no version" }
                            @for v in &ready {
                                @let id = format!("weight-{}", v.version);
                                @let current = weights.and_then(|w| w.get(&v.version)).and_then(|w| w.as_u64());
                                div.field {
                                    label for=(id) { "Weight of version " (v.version) }
                                    input #(id) name=(id) type="number" min="0" step="1" inputmode="numeric"
                                        value=(current.map_or(String::new(), |w| w.to_string()));
                                }
                            }
                            div.field {
                                label for="sticky-header" { "Sticky header (optional)" }
                                input #sticky-header name="sticky_header" type="text"
                                    value=(view.traffic["sticky_header"].as_str().unwrap_or(""))
                                    placeholder="x-user-id";
                            }
                            div.field {
                                label for="shadow-version" { "Shadow version" }
                                select #shadow-version name="shadow_version" {
                                    option value="" { "none" }
                                    @for v in &ready {
                                        option value=(v.version) selected[view.traffic["shadow"]["version"].as_str() == Some(v.version.as_str())] { (v.version) }
                                    }
                                }
                            }
                            div.field {
                                label for="shadow-percent" { "Shadow copies (%)" }
                                input #shadow-percent name="shadow_percent" type="number" min="0" max="100" step="any"
                                    value=(view.traffic["shadow"]["percent"].as_f64().map_or(String::new(), |p| p.to_string()));
                            }
                        }
                        button type="submit" { "Apply split" }
                    }
                }
                section aria-labelledby="rollout-h" {
                    h2 #rollout-h { "Rollout" }
                    (rollout_part(view))
                    div {
                        form #rollout-form data-api=(format!("{api}/rollout")) data-method="POST" data-done="Rollout started" {
                            fieldset {
                                legend { "Start a progressive rollout" }
                                div.field {
                                    label for="candidate" { "Candidate version" }
                                    select #candidate name="candidate" required {
                                        @for v in &ready {
                                            option value=(v.version) selected[candidate.as_ref() == Some(&v.version)] {
                                                (v.version) @if stable.as_ref() == Some(&v.version) { " (stable now)" }
                                            }
                                        }
                                    }
                                }
                                (number("step", "step_weight", "Step (% of traffic)", "10", "1"))
                                (number("max", "max_weight", "Maximum weight before promotion (%)", "50", "1"))
                                div.field {
                                    label for="interval" { "Interval" }
                                    input #interval name="interval" type="text" value="30s" required pattern="[0-9]+(ms|s|m|h)";
                                }
                                (number("max-error-rate", "max_error_rate", "Largest error rate (0–1)", "0.01", "any"))
                                (number("max-p99", "max_p99_latency_ms", "Largest p99 latency (ms, optional)", "", "any"))
                                (number("max-drift-psi", "max_drift_psi", "Largest input drift PSI (optional)", "", "any"))
                                (number("min-requests", "min_requests", "Requests a window needs for a verdict", "100", "1"))
                            }
                            button type="submit" { "Start rollout" }
                        }
                    }
                }
                (latency_part(view))
                (drift_part(view))
            }
        },
    )
}

/// The parts of a model's page that refresh: what `…/live` answers.
pub fn model_live(view: &ModelView) -> Markup {
    html! {
        (versions_part(view))
        (split_part(view))
        (rollout_part(view))
        (latency_part(view))
        (drift_part(view))
    }
}

fn versions_part(view: &ModelView) -> Markup {
    html! {
        section #versions aria-labelledby="versions-h" data-live {
            h2 #versions-h { "Versions" }
            @if let Some(e) = &view.error { p.alert role="alert" { (e) } }
            table {
                caption { "Each version's state, share and the last minute" }
                thead { tr {
                    th scope="col" { "Version" } th scope="col" { "State" } th scope="col" { "Share" }
                    th scope="col" { "Queue" } th scope="col" { "Requests/s" } th scope="col" { "Errors" }
                    th scope="col" { "p50 ms" } th scope="col" { "p99 ms" } th scope="col" { "Drift" }
                    th scope="col" { "Reason" }
                } }
                tbody {
                    @for v in &view.versions {
                        tr {
                            th scope="row" { (v.version) (default_mark(view, v)) }
                            td class=(state_class(v)) { (v.state) }
                            td { (pct(v.share)) @if let Some(p) = v.shadow_percent { " + shadow " (num(p)) "%" } }
                            td { (v.queue_depth) }
                            td { (rate(v.last_minute.per_second)) }
                            td { (pct(v.last_minute.error_rate)) }
                            td { (opt(v.last_minute.p50_ms)) }
                            td { (opt(v.last_minute.p99_ms)) }
                            td { (drift_cell(v)) }
                            td { (v.reason) }
                        }
                    }
                }
            }
        }
    }
}

fn split_part(view: &ModelView) -> Markup {
    let parts: Vec<(String, f64, usize)> = view
        .versions
        .iter()
        .enumerate()
        .filter(|(_, v)| v.share > 0.0)
        .map(|(i, v)| (v.version.clone(), v.share, i))
        .collect();
    let label = format!(
        "Traffic split: {}",
        parts
            .iter()
            .map(|(v, s, _)| format!("version {v} {}", pct(*s)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    html! {
        figure #split data-live {
            (chart::split(&parts, &label))
            figcaption {
                ul.legend {
                    @for (i, v) in view.versions.iter().enumerate() {
                        li data-version=(v.version) data-share=(share_attr(v.share)) {
                            span.swatch data-colour=(i % chart::PALETTE.len()) {}
                            "version " (v.version) ": " (pct(v.share))
                            @if let Some(p) = v.shadow_percent { " (shadow copies of " (num(p)) "%)" }
                        }
                    }
                }
                @if let Some(h) = view.traffic["sticky_header"].as_str() {
                    p { "Callers pinned by their " code { (h) } " header." }
                }
                @if let Some(e) = view.traffic["policy_error"].as_str() {
                    p.alert role="alert" { "Policy error: " (e) }
                }
            }
        }
    }
}

fn rollout_part(view: &ModelView) -> Markup {
    let Some(r) = &view.rollout else {
        return html! {
            div #rollout data-live data-phase="none" {
                p { "No rollout has run for this model since the server started." }
            }
        };
    };
    let checks: Vec<Check> = r
        .history
        .iter()
        .map(|e| Check {
            at: e.at,
            weight: e.weight as f64,
            healthy: e.healthy,
            what: e.what.clone(),
        })
        .collect();
    let last = r.history.iter().rev().find(|e| e.requests.is_some());
    let spec = &r.spec;
    let phase = phase_word(r.phase);
    let running = r.phase == crate::control::rollout::Phase::Progressing;
    let api = format!("/admin/models/{}/rollout", view.name);
    html! {
        div #rollout data-live data-phase=(phase_attr(r.phase)) {
            @if running {
                // In the live part: the button shows only while there is a rollout to abort.
                form #abort-form data-api=(api) data-method="DELETE" data-done="Rollout aborted" {
                    button #abort type="submit" { "Abort rollout" }
                    span.hint { " The stable version gets all the traffic back." }
                }
            }
            p.summary {
                "Candidate " strong { (spec.candidate) } " against stable " strong { (r.stable) } ": "
                span class=(match r.phase { crate::control::rollout::Phase::Promoted => "good", crate::control::rollout::Phase::Progressing => "", _ => "bad" }) { (phase) }
                ", weight " (r.weight) "% (step " (spec.step_weight) "% every " (spec.interval) ", up to " (spec.max_weight) "%), "
                (r.failed_checks) " of " (spec.threshold) " failed checks."
                @if let Some(l) = &r.leader { " Driven by replica " (l) "." }
            }
            figure {
                (chart::timeline(&checks, spec.max_weight as f64, running.then(|| (now(), r.weight as f64)), &format!("Candidate {}'s weight over the rollout, {} steps", spec.candidate, checks.len())))
                figcaption { "Candidate weight per check: green healthy, red failed, grey waiting or a change of phase; dashed: the maximum before promotion." }
            }
            table.gates {
                caption { "Gates at the last check" }
                thead { tr { th scope="col" { "Gate" } th scope="col" { "Threshold" } th scope="col" { "Measured" } } }
                tbody {
                    tr { th scope="row" { "Requests in the window" } td { "≥ " (spec.min_requests) } td { (last.and_then(|e| e.requests).map_or("-".into(), |n| n.to_string())) } }
                    tr { th scope="row" { "Error rate" } td { "≤ " (pct(spec.max_error_rate)) } td { (last.and_then(|e| e.error_rate).map_or("-".into(), pct)) } }
                    @if let Some(max) = spec.max_p99_latency_ms {
                        tr { th scope="row" { "p99 latency" } td { "≤ " (num(max)) " ms" } td { (opt(last.and_then(|e| e.p99_ms))) } }
                    }
                    @if let Some(max) = spec.max_drift_psi {
                        tr { th scope="row" { "Input drift (PSI)" } td { "≤ " (num(max)) } td { (opt(last.and_then(|e| e.drift_psi))) } }
                    }
                }
            }
            table #rollout-steps {
                caption { "Every step" }
                thead { tr {
                    th scope="col" { "Time (UTC)" } th scope="col" { "Weight" } th scope="col" { "Requests" }
                    th scope="col" { "Errors" } th scope="col" { "p99 ms" } th scope="col" { "PSI" } th scope="col" { "What" }
                } }
                tbody {
                    @for e in &r.history {
                        tr {
                            td { (clock(e.at)) } td { (e.weight) "%" }
                            td { (e.requests.map_or(String::new(), |n| n.to_string())) }
                            td { (e.error_rate.map_or(String::new(), pct)) }
                            td { (e.p99_ms.map_or(String::new(), num)) }
                            td { (e.drift_psi.map_or(String::new(), num)) }
                            td { (e.what) }
                        }
                    }
                }
            }
        }
    }
}

fn latency_part(view: &ModelView) -> Markup {
    type Pick = fn(&crate::serving::Window) -> Option<f64>;
    let series = |pick: Pick| -> Vec<chart::Series> {
        view.versions
            .iter()
            .enumerate()
            .filter_map(|(i, v)| {
                let w = v.windows.as_ref()?;
                Some((
                    v.version.clone(),
                    i,
                    w.iter().map(|w| (w.at, pick(w))).collect(),
                ))
            })
            .collect()
    };
    let charts: [(&str, &str, Pick); 3] = [
        ("Requests per second", "/s", |w| {
            Some(w.requests as f64 / w.seconds.max(1e-3))
        }),
        ("p50 latency", "ms", |w| w.p50_ms),
        ("p99 latency", "ms", |w| w.p99_ms),
    ];
    html! {
        section #latency aria-labelledby="latency-h" data-live {
            h2 #latency-h { "Requests, last 5 minutes" }
            ul.legend {
                @for (i, v) in view.versions.iter().enumerate() {
                    li { span.swatch data-colour=(i % chart::PALETTE.len()) {} "version " (v.version) }
                }
            }
            div.multiples {
                @for (title, unit, pick) in charts {
                    figure {
                        (chart::lines(&series(pick), &format!("{title} per version over the last 5 minutes"), unit))
                        figcaption { (title) " (" (unit) ") per 5-second window" }
                    }
                }
            }
        }
    }
}

fn drift_part(view: &ModelView) -> Markup {
    let monitored: Vec<&VersionView> = view.versions.iter().filter(|v| v.drift.is_some()).collect();
    html! {
        section #drift aria-labelledby="drift-h" data-live {
            h2 #drift-h { "Drift against the training data" }
            @if monitored.is_empty() {
                p { "No version has a drift profile (baseline.json; see " code { "switchyard profile" } ")." }
            }
            @for v in monitored {
                @let d = v.drift.as_ref().expect("filtered");
                @let alert = d.alert || d.prediction_alert;
                section.drift-version data-version=(v.version) data-alert=(alert) aria-labelledby=(format!("drift-{}", v.version)) {
                    h3 #(format!("drift-{}", v.version)) { "Version " (v.version) ": " (d.rows) " rows in the window" }
                    @if d.rows < d.min_rows {
                        p { "No verdict yet: a feature counts as drifted once the window holds " (d.min_rows) " rows." }
                    }
                    @if let Some(r) = &d.report {
                        @if d.alert {
                            p.alert role="alert" { "Drift alert: " (pct(r.drifted_share)) " of the input features drifted (PSI ≥ " (num(r.psi_threshold)) "; the alert fires at " (pct(r.share)) ")." }
                        }
                        @if d.prediction_alert {
                            p.alert role="alert" { "Drift alert on predictions: " (pct(r.prediction_drifted_share)) " of the outputs drifted." }
                        }
                        p.legend-line {
                            span.swatch.ref-swatch {} "reference (training data) "
                            span.swatch.live-swatch {} "live window"
                        }
                        // The profile's order, the same for every version, so that
                        // versions compare at a glance; drifted ones stand out in red.
                        div.multiples.small {
                            @for f in &r.features {
                                figure.feature data-feature=(f.feature) data-drifted=(f.drifted) {
                                    @if f.reference.len() < 2 {
                                        p.hint { "One bin: constant in the training data." }
                                    } @else {
                                        (chart::histogram(&f.reference, &f.current, &format!("{}: reference against live, PSI {}", f.feature, num(f.psi))))
                                    }
                                    figcaption {
                                        strong { (f.feature) }
                                        @if matches!(f.side, crate::control::drift::profile::Side::Output) { " (output)" }
                                        br;
                                        span class=(if f.drifted { "bad" } else { "" }) {
                                            "PSI " (num(f.psi))
                                            @if f.drifted { " ≥ " (num(r.psi_threshold)) ": drifted" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn model_href(name: &str) -> String {
    format!("/console/models/{}", name)
}

fn default_mark(view: &ModelView, v: &VersionView) -> Markup {
    html! {
        @if view.default_version.as_deref() == Some(v.version.as_str()) {
            " " span.tag { "default" }
        }
    }
}

fn state_class(v: &VersionView) -> &'static str {
    if v.state == "READY" {
        "good"
    } else {
        "bad"
    }
}

fn drift_cell(v: &VersionView) -> Markup {
    html! {
        @match &v.drift {
            None => "-",
            Some(d) if d.rows < d.min_rows => { (d.rows) " rows" }
            Some(d) if d.alert || d.prediction_alert => span.bad { "alert" @if let Some(p) = d.worst_psi { " (PSI " (num(p)) ")" } },
            Some(d) => span.good { "ok" @if let Some(p) = d.worst_psi { " (PSI " (num(p)) ")" } },
        }
    }
}

fn phase_word(p: crate::control::rollout::Phase) -> &'static str {
    use crate::control::rollout::Phase::*;
    match p {
        Progressing => "progressing",
        Promoted => "promoted",
        RolledBack => "rolled back",
        Aborted => "aborted",
    }
}

fn phase_attr(p: crate::control::rollout::Phase) -> &'static str {
    use crate::control::rollout::Phase::*;
    match p {
        Progressing => "progressing",
        Promoted => "promoted",
        RolledBack => "rolled_back",
        Aborted => "aborted",
    }
}

fn number(id: &str, name: &str, label: &str, value: &str, step: &str) -> Markup {
    html! {
        div.field {
            label for=(id) { (label) }
            input #(id) name=(name) type="number" min="0" step=(step) value=(value);
        }
    }
}

/// Requests per second, to a tenth.
fn rate(x: f64) -> String {
    format!("{x:.1}")
}

/// A share as the `data-share` attribute: a short decimal ("0.7").
fn share_attr(s: f64) -> String {
    let r = (s * 10000.0).round() / 10000.0;
    format!("{r}")
}

/// Seconds since the Unix epoch.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}
