//! The public surface of the crate, kept deliberate: every item a user can name from outside
//! (top-level items of the public modules, and the re-exports) is listed in
//! `tests/public_api.txt`, and this test fails when the code and the list differ. A change to
//! the surface is then a change to that file too, visible in review.
//!
//! To accept a change: `PARTI_BLESS=1 cargo nextest run -p parti --test public_api`, and look
//! at the diff of `public_api.txt`.
//!
//! The list is read from the source text (no compiler JSON is available offline): module
//! declarations are followed from `lib.rs` through `pub mod` only, and an item counts when its
//! declaration starts a line with `pub ` (not `pub(crate)`). Methods and fields are not listed;
//! their types are. An item behind a cargo feature is listed as `[feature] …`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// The source file of module `name` declared in `parent` (a `mod.rs`, `lib.rs` or `x.rs`).
fn module_file(parent: &Path, name: &str) -> PathBuf {
    let dir = match parent.file_name().and_then(|f| f.to_str()) {
        Some("lib.rs" | "mod.rs") => parent.parent().unwrap().to_path_buf(),
        _ => parent.with_extension(""),
    };
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        dir.join(name).join("mod.rs")
    }
}

/// The statements of `source` that start a line with `pub ` (joined to one line each), in
/// order, each with the cargo feature it is declared under (`#[cfg(feature = "…")]` or
/// `#[cfg(any(test, feature = "…"))]` just above it), if any.
fn pub_statements(source: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut feature: Option<String> = None;
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("#[cfg(") {
            feature = if line.starts_with("#[cfg(doctest)]") {
                Some("doctest".to_owned())
            } else {
                line.split("feature = \"")
                    .nth(1)
                    .and_then(|rest| rest.split('"').next())
                    .map(str::to_owned)
            };
            continue;
        }
        if line.starts_with("#[") || line.starts_with("///") {
            continue;
        }
        let gate = feature.take();
        if !line.starts_with("pub ") {
            continue;
        }
        let mut statement = line.trim_end().to_owned();
        // A `pub use` may run over several lines, up to its `;`.
        if statement.starts_with("pub use") {
            while !statement.ends_with(';') {
                let Some(next) = lines.next() else { break };
                statement.push(' ');
                statement.push_str(next.trim());
            }
            statement = statement.replace("{ ", "{").replace(", }", "}");
        }
        out.push((gate, statement));
    }
    out
}

/// What one statement declares: `kind name`, or the whole `use` line.
fn item(statement: &str) -> String {
    if let Some(rest) = statement.strip_prefix("pub use ") {
        return format!("use {}", rest.trim_end_matches(';'));
    }
    let words: Vec<&str> = statement
        .split(|c: char| c.is_whitespace() || matches!(c, '(' | '<' | ':' | '{' | ';' | '='))
        .filter(|w| !w.is_empty())
        .collect();
    // pub [async|const|unsafe]* kind name
    let mut i = 1;
    while matches!(words.get(i), Some(&("async" | "unsafe" | "extern")))
        || (words.get(i) == Some(&"const") && words.get(i + 1) == Some(&"fn"))
    {
        i += 1;
    }
    match (words.get(i), words.get(i + 1)) {
        (Some(kind), Some(name)) => format!("{kind} {name}"),
        _ => statement.to_owned(),
    }
}

/// Lists the public items of the module at `path` (in `file`); `gate` is the feature the
/// module itself needs, if any. Items behind a feature are listed as `[feature] …`.
fn collect(path: &str, file: &Path, gate: Option<&str>, out: &mut BTreeSet<String>) {
    let source = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
    for (feature, statement) in pub_statements(&source) {
        let feature = feature.as_deref().or(gate);
        let tag = feature.map(|f| format!("[{f}] ")).unwrap_or_default();
        let item = item(&statement);
        if let Some(name) = item.strip_prefix("mod ") {
            out.insert(format!("{tag}{path} mod {name}"));
            collect(
                &format!("{path}::{name}"),
                &module_file(file, name),
                feature,
                out,
            );
        } else {
            out.insert(format!("{tag}{path} {item}"));
        }
    }
}

#[test]
fn the_public_items_are_the_listed_ones() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut items = BTreeSet::new();
    collect("parti", &root.join("src/lib.rs"), None, &mut items);
    let found: String = items.iter().map(|i| format!("{i}\n")).collect();
    let listed_path = root.join("tests/public_api.txt");
    if std::env::var_os("PARTI_BLESS").is_some() {
        std::fs::write(&listed_path, &found).unwrap();
        return;
    }
    let listed = std::fs::read_to_string(&listed_path).unwrap_or_default();
    let listed: BTreeSet<&str> = listed.lines().collect();
    let found: BTreeSet<&str> = found.lines().collect();
    let added: Vec<&&str> = found.difference(&listed).collect();
    let removed: Vec<&&str> = listed.difference(&found).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "the public surface changed; if on purpose, run with PARTI_BLESS=1 and review \
         tests/public_api.txt\n  added: {added:#?}\n  removed: {removed:#?}"
    );
}
