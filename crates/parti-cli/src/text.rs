//! Plain-text building blocks shared by every human-readable output: short ages and aligned
//! tables. A leaf: depends on nothing in the crate.

use std::fmt::Write as _;

/// A duration in milliseconds, short: `0.4s`, `12s`, `3m04s`, `2h05m`.
pub(crate) fn age(ms: u64) -> String {
    let secs = ms / 1000;
    match secs {
        0..10 => format!("{}.{}s", secs, (ms % 1000) / 100),
        10..60 => format!("{secs}s"),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        _ => format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60),
    }
}

/// Left-aligned columns separated by two spaces; trailing spaces trimmed.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&headers).chain(rows) {
        let mut line = String::new();
        for (cell, width) in row.iter().zip(&widths) {
            let _ = write!(line, "{cell:<width$}  ");
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_are_short() {
        assert_eq!(age(0), "0.0s");
        assert_eq!(age(1_450), "1.4s");
        assert_eq!(age(12_000), "12s");
        assert_eq!(age(184_000), "3m04s");
        assert_eq!(age(7_500_000), "2h05m");
    }

    #[test]
    fn columns_are_aligned() {
        let text = table(
            &["A", "LONG"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(text, "A    LONG\nxyz  1\nq    22\n");
    }
}
