//! How numbers and times read to people: the console and the `switchyard`
//! verbs print them the same way.

use std::time::{Duration, UNIX_EPOCH};

/// Four significant digits, no exponent for everyday sizes, no trailing zeros.
pub fn num(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return format!("{}", if x == 0.0 { 0.0 } else { x });
    }
    let magnitude = x.abs().log10().floor() as i32;
    if !(-4..=6).contains(&magnitude) {
        return format!("{x:.3e}");
    }
    let decimals = (3 - magnitude).max(0) as usize;
    let s = format!("{x:.decimals$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// An optional number, `-` when absent.
pub fn opt(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), num)
}

/// A share (0 to 1) as a percentage.
pub fn pct(share: f64) -> String {
    format!("{}%", num(share * 100.0))
}

/// `HH:MM:SS` (UTC) of seconds since the Unix epoch; `?` for a time no
/// calendar shows (event times come from stores other replicas write).
pub fn clock(at: f64) -> String {
    // The last second of year 9999: humantime formats no later one.
    const LAST: f64 = 253_402_300_799.0;
    match Duration::try_from_secs_f64(at)
        .ok()
        .filter(|_| at <= LAST)
        .and_then(|d| UNIX_EPOCH.checked_add(d))
    {
        Some(t) => {
            let stamp = humantime::format_rfc3339_seconds(t).to_string();
            stamp.get(11..19).unwrap_or(&stamp).to_string()
        }
        None => "?".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_keep_four_significant_digits() {
        assert_eq!(num(0.123456), "0.1235");
        assert_eq!(num(1234.5678), "1235");
        assert_eq!(num(90.0), "90");
        assert_eq!(num(-0.0), "0");
        assert_eq!(num(1e-7), "1.000e-7");
        assert_eq!(pct(0.1), "10%");
        assert_eq!(opt(None), "-");
    }

    #[test]
    fn clocks_of_any_stored_time_never_panic() {
        assert_eq!(clock(30.0), "00:00:30");
        for at in [
            f64::MAX,
            -1.0,
            f64::NAN,
            f64::INFINITY,
            1e300,
            253_402_300_800.0,
        ] {
            assert_eq!(clock(at), "?", "{at}");
        }
    }
}
