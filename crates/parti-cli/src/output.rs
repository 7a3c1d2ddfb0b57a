//! What the CLI writes: stdout without `println!`'s panic when the reader goes away (`parti
//! status | head`), and errors as one line for stderr. A leaf: depends on nothing in the crate.

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

/// The error and its causes joined with `: `, skipping a cause whose text the previous message
/// already contains (some libraries print their source in their own message).
pub(crate) fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut previous = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if previous.contains(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
        previous = text;
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn repeated_causes_are_printed_once() {
        let inner = std::io::Error::other("refused");
        let e = anyhow::Error::new(inner)
            .context("IO error: refused")
            .context("cannot connect");
        assert_eq!(super::error_chain(&e), "cannot connect: IO error: refused");
    }
}
