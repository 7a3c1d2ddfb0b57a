//! Writing to stdout without `println!`'s panic when the reader goes away (`parti status | head`).

use std::io::Write as _;

/// Writes `text` to stdout and flushes. A closed pipe is not an error: the reader has what it
/// wanted.
pub(crate) fn print(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::Error::new(e).context("cannot write to stdout"))
        }
        _ => Ok(()),
    }
}

/// Writes one line, best effort: a worker keeps working when nobody reads its output.
pub(crate) fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}
