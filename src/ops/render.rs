//! How the verbs print: `-o table` for people (colour only on a terminal),
//! `-o json` and `-o yaml` for scripts, and the small text pictures (bars,
//! histograms) the tables carry.

use comfy_table::{presets, Cell, Color, ContentArrangement, Table};
use serde_json::Value;

/// `-o`: what a verb prints.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    Json,
    Yaml,
}

/// Whether stdout is a terminal: tables fit its width, `--watch` redraws in place.
pub fn terminal() -> bool {
    use std::io::IsTerminal;
    std::io::stdout().is_terminal()
}

/// Whether to colour: on a terminal, unless `NO_COLOR` is set.
pub fn colour() -> bool {
    terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// `cell` in `colour` where colour is wanted.
fn paint(cell: Cell, colour: Color) -> Cell {
    if self::colour() {
        cell.fg(colour)
    } else {
        cell
    }
}

/// A table with the project's look: no frame, a header, wrapped to the terminal.
pub fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(presets::NOTHING)
        .set_content_arrangement(ContentArrangement::Dynamic);
    t.set_header(header.iter().map(|h| paint(Cell::new(h), Color::Cyan)));
    t
}

/// A word that says good or bad, green or red on a terminal.
pub fn verdict(text: impl Into<String>, good: bool) -> Cell {
    paint(
        Cell::new(text.into()),
        if good { Color::Green } else { Color::Red },
    )
}

/// Before a `--watch` frame: on a terminal, home and clear, so the picture
/// redraws in place.
pub fn frame_start(format: Format) {
    if format == Format::Table && terminal() {
        emit("\x1b[H\x1b[2J");
    }
}

/// After a `--watch` frame: where frames cannot redraw (a pipe, a file), a
/// blank line between tables.
pub fn frame_end(format: Format) {
    if format == Format::Table && !terminal() {
        emit("\n");
    }
}

/// Writes `text` to stdout; a reader that went away (`| head`) ends the
/// verb quietly, as it ends `cat`, rather than in a panic.
pub fn emit(text: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("switchyard: cannot write the answer: {e}");
        std::process::exit(1);
    }
}

/// Prints `value` as JSON or YAML; `false` for `-o table` (the verb draws it).
pub fn structured(format: Format, value: &Value) -> bool {
    match format {
        Format::Table => false,
        Format::Json => {
            emit(&format!(
                "{}\n",
                serde_json::to_string_pretty(value).expect("plain data")
            ));
            true
        }
        Format::Yaml => {
            emit(&yaml(value));
            true
        }
    }
}

/// `value` as a YAML document.
pub fn yaml(value: &Value) -> String {
    fn convert(v: &Value) -> yaml_rust2::Yaml {
        use yaml_rust2::Yaml;
        match v {
            Value::Null => Yaml::Null,
            Value::Bool(b) => Yaml::Boolean(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Yaml::Integer(i),
                None => Yaml::Real(n.to_string()),
            },
            Value::String(s) => Yaml::String(s.clone()),
            Value::Array(a) => Yaml::Array(a.iter().map(convert).collect()),
            Value::Object(o) => Yaml::Hash(
                o.iter()
                    .map(|(k, v)| (Yaml::String(k.clone()), convert(v)))
                    .collect(),
            ),
        }
    }
    let mut out = String::new();
    yaml_rust2::YamlEmitter::new(&mut out)
        .dump(&convert(value))
        .expect("writes to a string");
    out.push('\n');
    out
}

/// `share` (0 to 1) as a bar `width` cells wide, eighths included.
pub fn bar(share: f64, width: usize) -> String {
    const PARTS: [char; 8] = [' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉'];
    let eighths = (share.clamp(0.0, 1.0) * (width * 8) as f64).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    if eighths % 8 > 0 {
        s.push(PARTS[eighths % 8]);
    }
    let used = s.chars().count();
    s.push_str(&"·".repeat(width.saturating_sub(used)));
    s
}

/// Proportions as one line of block heights, scaled to `top` (the larger
/// of the two distributions compared, so they read against each other).
pub fn histogram(props: &[f64], top: f64) -> String {
    const LEVELS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    props
        .iter()
        .map(|p| {
            if top <= 0.0 {
                ' '
            } else {
                let level = (p / top * 8.0).round() as usize;
                // A bin that holds anything shows, however little.
                LEVELS[level.clamp(usize::from(*p > 0.0), 8)]
            }
        })
        .collect()
}

pub use switchyard::core::human::{num, opt, pct};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bars_fill_in_eighths_and_keep_their_width() {
        assert_eq!(bar(0.0, 4), "····");
        assert_eq!(bar(1.0, 4), "████");
        assert_eq!(bar(0.5, 4), "██··");
        assert_eq!(bar(0.5 + 1.0 / 32.0, 4), "██▏·");
        assert_eq!(bar(7.0, 3).chars().count(), 3);
    }

    #[test]
    fn histograms_scale_to_the_top_and_show_every_filled_bin() {
        assert_eq!(histogram(&[0.0, 0.001, 0.5, 1.0], 1.0), " ▁▄█");
        assert_eq!(histogram(&[0.2, 0.2], 0.0), "  ");
    }

    #[test]
    fn yaml_keeps_types_and_order() {
        // "n" is quoted: YAML 1.1 readers take a bare n for false.
        let v = serde_json::json!({"b": 1, "a": [true, 0.5, "x"], "n": null});
        assert_eq!(
            yaml(&v),
            "---\nb: 1\na:\n  - true\n  - 0.5\n  - x\n\"n\": ~\n"
        );
    }
}
