//! Drift statistics between a reference and a current distribution over the same
//! bins, with Evidently's conventions: empty bins count as 0.0001 for PSI and
//! Jensen–Shannon; KS and Wasserstein come from the binned CDFs.

/// What empty bins count as in PSI and Jensen–Shannon (Evidently's choice).
pub const EMPTY_BIN: f64 = 0.0001;

/// Proportions from counts; all zero when there are none.
pub fn proportions(counts: &[u64]) -> Vec<f64> {
    let n: u64 = counts.iter().sum();
    counts
        .iter()
        .map(|&c| if n == 0 { 0.0 } else { c as f64 / n as f64 })
        .collect()
}

fn filled(p: &[f64]) -> Vec<f64> {
    p.iter()
        .map(|&x| if x == 0.0 { EMPTY_BIN } else { x })
        .collect()
}

/// Population stability index: Σ (c − r) ln(c / r), empty bins filled.
pub fn psi(reference: &[f64], current: &[f64]) -> f64 {
    let (r, c) = (filled(reference), filled(current));
    r.iter().zip(&c).map(|(r, c)| (c - r) * (c / r).ln()).sum()
}

/// Jensen–Shannon distance (natural log, as scipy's default), empty bins filled
/// and both sides normalised.
pub fn jensen_shannon(reference: &[f64], current: &[f64]) -> f64 {
    let norm = |p: Vec<f64>| {
        let s: f64 = p.iter().sum();
        p.into_iter().map(|x| x / s).collect::<Vec<_>>()
    };
    let (r, c) = (norm(filled(reference)), norm(filled(current)));
    let kl = |a: &[f64], m: &[f64]| -> f64 {
        a.iter()
            .zip(m)
            .filter(|(a, _)| **a > 0.0)
            .map(|(a, m)| a * (a / m).ln())
            .sum()
    };
    let m: Vec<f64> = r.iter().zip(&c).map(|(a, b)| (a + b) / 2.0).collect();
    ((kl(&r, &m) + kl(&c, &m)) / 2.0).max(0.0).sqrt()
}

/// Kolmogorov–Smirnov statistic from the binned CDFs.
pub fn ks(reference: &[f64], current: &[f64]) -> f64 {
    let (mut fr, mut fc, mut d) = (0.0f64, 0.0f64, 0.0f64);
    for (r, c) in reference.iter().zip(current) {
        fr += r;
        fc += c;
        d = d.max((fr - fc).abs());
    }
    d
}

/// Wasserstein-1 distance between the two binned distributions, each bin's mass
/// at its centre, divided by the reference's standard deviation.
pub fn wasserstein_normed(reference: &[f64], current: &[f64], centres: &[f64], std: f64) -> f64 {
    let (mut fr, mut fc, mut w) = (0.0, 0.0, 0.0);
    for k in 0..centres.len().saturating_sub(1) {
        fr += reference[k];
        fc += current[k];
        w += (fr - fc).abs() * (centres[k + 1] - centres[k]);
    }
    if std > 0.0 {
        w / std
    } else {
        w
    }
}

/// Pearson's chi-square statistic of current counts against the reference
/// proportions (empty reference categories filled).
pub fn chi_square(reference: &[f64], current_counts: &[u64]) -> f64 {
    let n: u64 = current_counts.iter().sum();
    let r = filled(reference);
    let total: f64 = r.iter().sum();
    r.iter()
        .zip(current_counts)
        .map(|(p, &o)| {
            let e = p / total * n as f64;
            (o as f64 - e).powi(2) / e
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_of_known_distributions() {
        let r = [0.25, 0.25, 0.25, 0.25];
        assert_eq!(psi(&r, &r), 0.0);
        assert_eq!(ks(&r, &r), 0.0);
        assert!(jensen_shannon(&r, &r) < 1e-12);
        let c = [0.5, 0.5, 0.0, 0.0];
        // Σ (c − r) ln(c / r) with the empty bins at 0.0001.
        let want = 2.0 * 0.25 * 2f64.ln() + 2.0 * (0.0001 - 0.25) * (0.0001f64 / 0.25).ln();
        assert!((psi(&r, &c) - want).abs() < 1e-12);
        assert!((ks(&r, &c) - 0.5).abs() < 1e-12);
        // Mass moved two bins over on half the distribution, centres 1 apart.
        let w = wasserstein_normed(&r, &c, &[0.0, 1.0, 2.0, 3.0], 1.0);
        assert!((w - 1.0).abs() < 1e-12, "{w}");
        assert!((chi_square(&r, &[50, 50, 0, 0]) - 100.0).abs() < 1e-9);
    }
}
