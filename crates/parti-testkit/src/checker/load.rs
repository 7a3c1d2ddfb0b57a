//! Reading JSON-lines logs (`--ownership-log`, `--process-log`, …) written by processes that may
//! have been killed mid-write.

use std::path::Path;

use serde::de::DeserializeOwned;

use crate::TestkitError;

/// The records of one JSON-lines file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JsonlFile<T> {
    /// Every complete record, in file order.
    pub records: Vec<T>,
    /// Whether the last line was cut short (the writer was killed mid-write) and skipped.
    pub truncated_tail: bool,
}

/// Reads one JSON object per line of `path`, skipping blank lines and a last line cut short.
///
/// Any other line that does not decode is an error naming the file and the line.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use parti_testkit::checker::{read_jsonl, SentRecord};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("sent.jsonl");
/// std::fs::write(&path, "{\"atNs\":1,\"partition\":\"p\",\"seq\":1}\n{\"atNs\":2,\"par")?;
/// let sent: Vec<SentRecord> = read_jsonl(&path)?;
/// assert_eq!(sent.len(), 1);
/// # Ok(())
/// # }
/// ```
pub fn read_jsonl<T: DeserializeOwned>(path: &Path) -> Result<Vec<T>, TestkitError> {
    load_jsonl(path).map(|file| file.records)
}

/// Like [`read_jsonl`], and also says whether a cut-short last line was skipped.
pub fn load_jsonl<T: DeserializeOwned>(path: &Path) -> Result<JsonlFile<T>, TestkitError> {
    let bytes = std::fs::read(path)
        .map_err(|source| TestkitError::io(format!("reading {}", path.display()), source))?;
    parse_jsonl(&bytes).map_err(|(line, source)| TestkitError::Jsonl {
        path: path.to_owned(),
        line,
        source,
    })
}

/// Decodes `bytes` line by line; on failure, the 1-based line number and the error.
pub(super) fn parse_jsonl<T: DeserializeOwned>(
    bytes: &[u8],
) -> Result<JsonlFile<T>, (usize, serde_json::Error)> {
    let ends_complete = bytes.last().is_none_or(|&last| last == b'\n');
    let lines: Vec<&[u8]> = bytes.split(|&byte| byte == b'\n').collect();
    let last = lines.len().saturating_sub(1);
    let mut file = JsonlFile {
        records: Vec::with_capacity(lines.len()),
        truncated_tail: false,
    };
    for (index, line) in lines.into_iter().enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        match serde_json::from_slice(line) {
            Ok(record) => file.records.push(record),
            Err(_) if index == last && !ends_complete => file.truncated_tail = true,
            Err(error) => return Err((index.saturating_add(1), error)),
        }
    }
    Ok(file)
}
