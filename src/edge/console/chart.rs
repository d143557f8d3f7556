//! The console's pictures, drawn as inline SVG on the server: a split bar,
//! reference-against-live histograms, lines over the last minutes, and a
//! rollout's weight over time. No script draws anything.

use maud::{html, Markup};

use crate::core::human::{clock, pct};

/// Okabe and Ito's palette: told apart with every common colour blindness,
/// and each dark enough on white for its text and lines.
pub const PALETTE: [&str; 6] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#8A6D00", "#56B4E9",
];

/// The colour of the `i`-th version of a model (by position, stable across pages).
pub fn colour(i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

/// A horizontal bar split between versions: `(version, share, colour index)`.
pub fn split(parts: &[(String, f64, usize)], label: &str) -> Markup {
    // About the width it is drawn at, so that its labels keep their shape.
    let (w, h) = (1100.0, 28.0);
    let mut x = 0.0;
    let bars: Vec<(f64, f64, &String, f64, usize)> = parts
        .iter()
        .map(|(version, share, i)| {
            let width = share.clamp(0.0, 1.0) * w;
            x += width;
            (x - width, width, version, *share, *i)
        })
        .collect();
    html! {
        svg class="split" viewBox=(format!("0 0 {w} {h}")) preserveAspectRatio="none"
            role="img" aria-label=(label) {
            title { (label) }
            @for (x, width, version, share, i) in bars {
                rect x=(fmt(x)) y="0" width=(fmt(width)) height=(fmt(h)) fill=(colour(i)) {
                    title { "version " (version) ": " (pct(share)) }
                }
            }
        }
    }
}

/// One feature's binned proportions: reference (grey) against live.
pub fn histogram(reference: &[f64], live: &[f64], label: &str) -> Markup {
    let bins = reference.len().max(live.len()).max(1);
    let (w, h, pad) = (200.0, 70.0, 2.0);
    let top = reference
        .iter()
        .chain(live)
        .copied()
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let slot = (w - pad * 2.0) / bins as f64;
    let bar = slot * 0.42;
    let y = |p: f64| h - 12.0 - (p / top) * (h - 16.0);
    html! {
        svg viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            title { (label) }
            line x1="0" x2=(fmt(w)) y1=(fmt(h - 12.0)) y2=(fmt(h - 12.0)) class="axis" {}
            @for i in 0..bins {
                @let x0 = pad + slot * i as f64;
                @if let Some(p) = reference.get(i) {
                    rect class="ref" x=(fmt(x0)) y=(fmt(y(*p))) width=(fmt(bar))
                        height=(fmt(h - 12.0 - y(*p))) {}
                }
                @if let Some(p) = live.get(i) {
                    rect class="live" x=(fmt(x0 + bar)) y=(fmt(y(*p))) width=(fmt(bar))
                        height=(fmt(h - 12.0 - y(*p))) {}
                }
            }
            text x="0" y=(fmt(h - 1.0)) class="tick" { "bin 1" }
            text x=(fmt(w)) y=(fmt(h - 1.0)) class="tick end" { "bin " (bins) }
        }
    }
}

/// One version's line: its name, its colour index, and `(t, value)` points,
/// `t` in seconds since the Unix epoch, `None` a gap.
pub type Series = (String, usize, Vec<(f64, Option<f64>)>);

/// Lines over the last five minutes, one per version.
pub fn lines(series: &[Series], label: &str, unit: &str) -> Markup {
    let (w, h, left, bottom) = (320.0, 130.0, 44.0, 18.0);
    let points: Vec<(f64, f64)> = series
        .iter()
        .flat_map(|(_, _, s)| s.iter().filter_map(|(t, v)| v.map(|v| (*t, v))))
        .collect();
    let t1 = series
        .iter()
        .flat_map(|(_, _, s)| s.iter().map(|(t, _)| *t))
        .fold(f64::MIN, f64::max);
    let t0 = t1 - 300.0;
    let top = nice(points.iter().map(|p| p.1).fold(0.0, f64::max));
    let x = |t: f64| left + (t - t0) / 300.0 * (w - left - 4.0);
    let y = |v: f64| (h - bottom) - v / top * (h - bottom - 8.0);
    html! {
        svg viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            title { (label) }
            line class="axis" x1=(fmt(left)) x2=(fmt(w)) y1=(fmt(h - bottom)) y2=(fmt(h - bottom)) {}
            line class="grid" x1=(fmt(left)) x2=(fmt(w)) y1=(fmt(y(top))) y2=(fmt(y(top))) {}
            text class="tick end" x=(fmt(left - 4.0)) y=(fmt(y(top) + 4.0)) { (short(top)) " " (unit) }
            text class="tick end" x=(fmt(left - 4.0)) y=(fmt(h - bottom + 4.0)) { "0" }
            text class="tick" x=(fmt(left)) y=(fmt(h - 3.0)) { "−5 min" }
            text class="tick end" x=(fmt(w)) y=(fmt(h - 3.0)) { "now" }
            @if points.is_empty() {
                text class="tick" x=(fmt(left + 10.0)) y=(fmt(h / 2.0)) { "no requests in the last 5 minutes" }
            }
            @for (version, i, s) in series {
                @for run in runs(s) {
                    @if run.len() == 1 {
                        circle cx=(fmt(x(run[0].0))) cy=(fmt(y(run[0].1))) r="2" fill=(colour(*i)) {
                            title { "version " (version) }
                        }
                    } @else {
                        polyline fill="none" stroke=(colour(*i)) stroke-width="2"
                            points=(run.iter().map(|(t, v)| format!("{},{}", fmt(x(*t)), fmt(y(*v)))).collect::<Vec<_>>().join(" ")) {
                            title { "version " (version) }
                        }
                    }
                }
            }
        }
    }
}

/// One rollout check as the timeline draws it.
pub struct Check {
    pub at: f64,
    pub weight: f64,
    /// `Some(true)`: healthy; `Some(false)`: failed; `None`: a note or no verdict.
    pub healthy: Option<bool>,
    pub what: String,
}

/// A rollout's candidate weight over time, each check a dot (green
/// healthy, red failed, grey waiting), the maximum weight dashed; while it
/// runs (`now`: the time and the weight in force), that weight holds to the
/// right edge.
pub fn timeline(checks: &[Check], max_weight: f64, now: Option<(f64, f64)>, label: &str) -> Markup {
    let (w, h, left, bottom) = (1100.0, 170.0, 40.0, 18.0);
    let t0 = checks.first().map_or(0.0, |c| c.at);
    let last = checks.last().map_or(1.0, |c| c.at);
    let t1 = now.map_or(last, |n| n.0).max(last).max(t0 + 1.0);
    let x = |t: f64| left + (t - t0) / (t1 - t0) * (w - left - 10.0);
    let y = |p: f64| (h - bottom) - p / 100.0 * (h - bottom - 8.0);
    let mut path = String::new();
    // A check records the weight its window had: that weight held from the
    // check before it up to it.
    for (k, c) in checks.iter().enumerate() {
        if k == 0 {
            path.push_str(&format!("M{},{}", fmt(x(c.at)), fmt(y(c.weight))));
        } else {
            path.push_str(&format!(" V{} H{}", fmt(y(c.weight)), fmt(x(c.at))));
        }
    }
    if let Some((_, weight)) = now.filter(|_| !checks.is_empty()) {
        path.push_str(&format!(" V{} H{}", fmt(y(weight)), fmt(x(t1))));
    }
    html! {
        svg #rollout-timeline viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            title { (label) }
            @for p in [0.0, 50.0, 100.0] {
                line class="grid" x1=(fmt(left)) x2=(fmt(w)) y1=(fmt(y(p))) y2=(fmt(y(p))) {}
                text class="tick end" x=(fmt(left - 4.0)) y=(fmt(y(p) + 4.0)) { (p) "%" }
            }
            text class="tick" x=(fmt(left)) y=(fmt(h - 3.0)) { (clock(t0)) }
            text class="tick end" x=(fmt(w - 10.0)) y=(fmt(h - 3.0)) { @if now.is_some() { "now " } (clock(t1)) }
            line class="max" x1=(fmt(left)) x2=(fmt(w)) y1=(fmt(y(max_weight))) y2=(fmt(y(max_weight))) {}
            path class="weight" d=(path) fill="none" {}
            @for c in checks {
                circle class=(match c.healthy { Some(true) => "ok", Some(false) => "fail", None => "note" })
                    cx=(fmt(x(c.at))) cy=(fmt(y(c.weight))) r="4" {
                    title { (c.what) }
                }
            }
        }
    }
}

/// Consecutive points that have values.
fn runs(s: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
    for (t, v) in s {
        match v {
            Some(v) => out.last_mut().expect("one at least").push((*t, *v)),
            None if out.last().is_some_and(|r| !r.is_empty()) => out.push(Vec::new()),
            None => {}
        }
    }
    out.retain(|r| !r.is_empty());
    out
}

/// The axis top: 1, 2 or 5 times a power of ten at or above `v`.
fn nice(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * p)
        .find(|t| *t >= v)
        .unwrap_or(10.0 * p)
}

/// A coordinate, to a tenth of a unit.
fn fmt(v: f64) -> String {
    format!("{:.1}", if v.is_finite() { v } else { 0.0 })
}

fn short(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{}", (v * 100.0).round() / 100.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axis_tops_are_round_and_cover_the_data() {
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(nice(0.7), 1.0);
        assert_eq!(nice(1.3), 2.0);
        assert_eq!(nice(37.0), 50.0);
        assert_eq!(nice(501.0), 1000.0);
    }

    #[test]
    fn a_series_breaks_where_values_are_missing() {
        let s = [
            (1.0, Some(1.0)),
            (2.0, None),
            (3.0, Some(3.0)),
            (4.0, Some(4.0)),
        ];
        assert_eq!(
            runs(&s),
            vec![vec![(1.0, 1.0)], vec![(3.0, 3.0), (4.0, 4.0)]]
        );
    }

    #[test]
    fn names_from_files_are_escaped_in_the_pictures() {
        let svg = histogram(&[0.5, 0.5], &[1.0, 0.0], "<script>x</script>").into_string();
        assert!(
            !svg.contains("<script>") && svg.contains("&lt;script&gt;"),
            "{svg}"
        );
        let svg = split(&[("1\"><b".into(), 1.0, 0)], "split").into_string();
        assert!(!svg.contains("\"><b"), "{svg}");
    }
}
