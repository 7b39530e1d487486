//! What the client prints: plain tables for people, JSON for scripts, on a buffered stdout
//! (a closed pipe ends the command quietly, see [`super::CliError`]).

use std::io::{BufWriter, Stdout, Write};
use std::time::{Duration, UNIX_EPOCH};

use comfy_table::{presets, CellAlignment, Table};
use serde_json::Value;

use super::{CliError, CliResult};

pub struct Output {
    pub json: bool,
    stdout: BufWriter<Stdout>,
}

impl Output {
    pub fn new(json: bool) -> Output {
        Output {
            json,
            stdout: BufWriter::new(std::io::stdout()),
        }
    }

    /// A whole JSON document (lists, details), pretty-printed.
    pub fn document(&mut self, value: &Value) -> CliResult<()> {
        serde_json::to_writer_pretty(&mut self.stdout, value)
            .map_err(|error| CliError::io("writing to stdout")(error.into()))?;
        self.bytes(b"\n")
    }

    /// One JSON object on its own line (messages).
    pub fn json_line(&mut self, value: &impl serde::Serialize) -> CliResult<()> {
        serde_json::to_writer(&mut self.stdout, value)
            .map_err(|error| CliError::io("writing to stdout")(error.into()))?;
        self.bytes(b"\n")
    }

    pub fn line(&mut self, text: &str) -> CliResult<()> {
        self.bytes(text.as_bytes())?;
        self.bytes(b"\n")
    }

    pub fn bytes(&mut self, bytes: &[u8]) -> CliResult<()> {
        self.stdout
            .write_all(bytes)
            .map_err(CliError::io("writing to stdout"))
    }

    pub fn table(&mut self, table: &Table) -> CliResult<()> {
        for line in table.lines() {
            // The borderless preset pads every cell; the line's own edges need none.
            self.line(line.trim_end())?;
        }
        Ok(())
    }

    pub fn flush(&mut self) -> CliResult<()> {
        self.stdout
            .flush()
            .map_err(CliError::io("writing to stdout"))
    }
}

/// A borderless table with upper-case headers, numbers aligned right.
pub fn table(headers: &[&str], numeric: &[usize]) -> Table {
    let mut table = Table::new();
    table.load_style(presets::NOTHING);
    table.set_header(headers.iter().map(|h| h.to_uppercase()));
    for &index in numeric {
        if let Some(column) = table.column_mut(index) {
            column.set_cell_alignment(CellAlignment::Right);
        }
    }
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    table
}

/// Bytes for people: `1.5 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A timestamp in ms since the epoch as RFC 3339 UTC (negative: none).
pub fn human_time_ms(timestamp_ms: i64) -> String {
    if timestamp_ms < 0 {
        return "-".into();
    }
    let time = UNIX_EPOCH + Duration::from_millis(timestamp_ms as u64);
    humantime::format_rfc3339_millis(time).to_string()
}

/// At most `chars` characters of `text` on one line, marked when cut.
pub fn shorten(text: &str, chars: usize) -> String {
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() <= chars {
        return one_line;
    }
    let mut cut: String = one_line.chars().take(chars.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

pub fn or_dash(value: Option<impl ToString>) -> String {
    value.map_or_else(|| "-".to_string(), |v| v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_and_times_read_well() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
        assert_eq!(human_time_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(human_time_ms(-1), "-");
    }

    #[test]
    fn long_or_multi_line_text_is_cut_to_one_line() {
        assert_eq!(shorten("a\nb", 10), "a b");
        assert_eq!(shorten("abcdef", 4), "abc…");
        assert_eq!(shorten("abcd", 4), "abcd");
    }

    #[test]
    fn tables_have_upper_case_headers_and_no_borders() {
        let mut t = table(&["name", "size"], &[1]);
        t.add_row(vec!["orders", "10"]);
        let text: Vec<String> = t.lines().map(|l| l.trim_end().to_string()).collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].starts_with("NAME"), "{text:?}");
        assert!(text[1].starts_with("orders"), "{text:?}");
        assert!(
            !text.iter().any(|l| l.contains('|') || l.contains('+')),
            "{text:?}"
        );
    }
}
