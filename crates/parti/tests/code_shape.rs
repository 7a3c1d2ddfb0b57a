//! Checks over the source text that keep the crate's shape deliberate (no compiler JSON is
//! available offline, so both read the code as text; module declarations are followed from the
//! crate root).
//!
//! **The public surface.** Every item a user can name from outside (top-level items of the
//! public modules, and the re-exports) is listed in `tests/public_api.txt`, and
//! [`the_public_items_are_the_listed_ones`] fails when the code and the list differ. A change
//! to the surface is then a change to that file too, visible in review. To accept one:
//! `PARTI_BLESS=1 cargo nextest run -p parti --test code_shape`, and look at the diff of
//! `public_api.txt`. An item counts when its declaration starts a line with `pub ` (not
//! `pub(crate)`); methods and fields are not listed, their types are. An item behind a cargo
//! feature is listed as `[feature] …`.
//!
//! **No import circles** between modules, in the library and in the CLI: a module that uses
//! another must not be used by it (directly or through others), at the level of the crate's
//! top modules and of the modules inside each of them. The few circles that remain are listed
//! in [`ALLOWED`] with the reason; a new one fails
//! [`modules_do_not_use_each_other_in_circles`]. A module uses another when a line of it that
//! is not a comment names `crate::other…` or `super::other…`; test-only modules are skipped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Circles kept on purpose, each with why.
const ALLOWED: &[(&str, &[&str], &str)] = &[
    (
        "parti",
        &["config::compat", "config::filter"],
        "the two halves of loading Go Parti's files: the filter takes the Go keys out while \
         deserialising (asking compat which keys are Go's), compat then applies them",
    ),
    (
        "parti",
        &["controller::compat", "controller::handoff"],
        "a hand-off plan depends on each worker's standing (compat), and a worker's fence is \
         judged on the hand-off's view of the members",
    ),
];

/// The file of module `name` declared in `parent`.
fn module_file(parent: &Path, name: &str) -> PathBuf {
    let dir = match parent.file_name().and_then(|f| f.to_str()) {
        Some("lib.rs" | "mod.rs" | "main.rs") => parent.parent().unwrap().to_path_buf(),
        _ => parent.with_extension(""),
    };
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        dir.join(name).join("mod.rs")
    }
}

/// Every module file reachable from `root` outside test-only declarations, with its path
/// (`["controller", "planner"]`).
fn modules(root: &Path) -> Vec<(Vec<String>, String)> {
    let mut out = Vec::new();
    let mut todo = vec![(Vec::new(), root.to_path_buf())];
    while let Some((path, file)) = todo.pop() {
        let source = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{file:?}: {e}"));
        let mut test_only = false;
        for line in source.lines() {
            let trimmed = line.trim_start();
            if trimmed.starts_with("#[cfg(test)]") || trimmed.starts_with("#[cfg(all(test") {
                test_only = true;
                continue;
            }
            if trimmed.starts_with("#[") || trimmed.starts_with("//") {
                continue;
            }
            let declared = line
                .strip_prefix("pub mod ")
                .or_else(|| line.strip_prefix("pub(crate) mod "))
                .or_else(|| line.strip_prefix("mod "))
                .and_then(|rest| rest.strip_suffix(';'));
            if let Some(name) = declared
                && !test_only
            {
                let mut child = path.clone();
                child.push(name.to_owned());
                todo.push((child, module_file(&file, name)));
            }
            test_only = false;
        }
        out.push((path, file.to_string_lossy().into_owned()));
    }
    out
}

/// The code of `source` without comments and without its `#[cfg(test)] mod tests { … }` (an
/// inline test module comes last in this code base; `mod tests;` declares a file, skipped by
/// [`modules`]).
fn code(source: &str) -> String {
    let body = source
        .split("#[cfg(test)]\nmod tests {")
        .next()
        .unwrap_or_default();
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The paths named after `prefix` (`crate::` or `super::`) in `code`, a group
/// (`super::{a, b::c}`) giving one path per member.
fn named_after(code: &str, prefix: &str) -> Vec<Vec<String>> {
    let is_path = |c: char| c.is_alphanumeric() || c == '_' || c == ':';
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(is_path) {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let end = rest.find(|c: char| !is_path(c)).unwrap_or(rest.len());
        let head: Vec<String> = rest[..end]
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if rest[end..].starts_with('{') {
            // A group: split its members at the top level of the braces.
            let mut depth = 0;
            let mut member = String::new();
            let mut members = Vec::new();
            for c in rest[end + 1..].chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => members.push(std::mem::take(&mut member)),
                    _ => {}
                }
                if depth == 0 && is_path(c) {
                    member.push(c);
                } else if depth == 0
                    && c.is_whitespace()
                    && !member.is_empty()
                    && !member.ends_with(':')
                {
                    // `a as b`: keep the path only.
                    member.push(' ');
                }
            }
            members.push(member);
            for m in members {
                let path = m.split_whitespace().next().unwrap_or_default();
                let mut full = head.clone();
                full.extend(
                    path.split("::")
                        .filter(|s| !s.is_empty() && *s != "self")
                        .map(str::to_owned),
                );
                if !full.is_empty() {
                    out.push(full);
                }
            }
        } else if !head.is_empty() {
            out.push(head);
        }
    }
    out
}

/// The crate root's re-exports: name → the path it names (`Result` → `error::Result`).
fn root_reexports(root: &Path) -> BTreeMap<String, Vec<String>> {
    let source = std::fs::read_to_string(root).unwrap();
    let mut out = BTreeMap::new();
    for path in named_after(&source.replace("pub use ", "pub use crate::"), "crate::") {
        if let Some(name) = path.last() {
            out.insert(name.clone(), path.clone());
        }
    }
    out
}

/// Uses between modules, each cut to `depth` segments; a module's use of its own ancestors or
/// descendants is not counted.
fn edges(
    modules: &[(Vec<String>, String)],
    reexports: &BTreeMap<String, Vec<String>>,
    depth: usize,
) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(p, _)| p.clone()).collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, file) in modules {
        if path.is_empty() {
            continue;
        }
        let code = code(&std::fs::read_to_string(file).unwrap());
        // `crate::Name` of a root re-export names the module it comes from.
        let mut targets: Vec<Vec<String>> = named_after(&code, "crate::")
            .into_iter()
            .map(|t| match (t.len(), reexports.get(&t[0])) {
                (1.., Some(source)) if !known.contains(&t[..1]) => {
                    let mut full = source.clone();
                    full.extend(t[1..].iter().cloned());
                    full
                }
                _ => t,
            })
            .collect();
        let parent = &path[..path.len() - 1];
        for s in named_after(&code, "super::") {
            let mut t = parent.to_vec();
            t.extend(s);
            targets.push(t);
        }
        let from = path.iter().take(depth).cloned().collect::<Vec<_>>();
        for target in targets {
            // Keep the longest prefix that is a module.
            let module: Vec<String> = (1..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|p| known.contains(p))
                .unwrap_or_default();
            let to: Vec<String> = module.into_iter().take(depth).collect();
            if to.is_empty() || to.starts_with(&from) || from.starts_with(&to) {
                continue;
            }
            out.entry(from.join("::"))
                .or_default()
                .insert(to.join("::"));
        }
    }
    out
}

/// The strongly connected components of more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let lw = self.low[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on.contains(w) {
                    let iw = self.index[w];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    component.insert(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.out.push(component);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.out
}

#[test]
fn modules_do_not_use_each_other_in_circles() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let crates = [
        ("parti", here.join("src/lib.rs")),
        ("parti-cli", here.join("../parti-cli/src/main.rs")),
    ];
    let mut unexpected = Vec::new();
    for (name, root) in crates {
        let modules = modules(&root);
        assert!(modules.len() > 5, "{name}: no modules found from {root:?}");
        let reexports = root_reexports(&root);
        for depth in [1, 2, 3] {
            for circle in circles(&edges(&modules, &reexports, depth)) {
                let allowed = ALLOWED.iter().any(|(c, members, _)| {
                    *c == name
                        && members
                            .iter()
                            .map(|m| (*m).to_owned())
                            .collect::<BTreeSet<_>>()
                            == circle
                });
                if !allowed {
                    unexpected.push(format!("{name}: {circle:?}"));
                }
            }
        }
    }
    assert!(
        unexpected.is_empty(),
        "modules that use each other in a circle (break it, or add it to ALLOWED with why):\n{}",
        unexpected.join("\n")
    );
}

#[test]
fn a_circle_is_found() {
    let edges: BTreeMap<String, BTreeSet<String>> = [
        ("a", vec!["b"]),
        ("b", vec!["c"]),
        ("c", vec!["a"]),
        ("d", vec!["a"]),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.into_iter().map(str::to_owned).collect()))
    .collect();
    let found = circles(&edges);
    assert_eq!(found.len(), 1);
    assert_eq!(
        found[0],
        ["a", "b", "c"].into_iter().map(str::to_owned).collect()
    );
}

// ---- the public surface ----

/// The statements of `source` that start a line with `pub ` (joined to one line each), in
/// order, each with the cargo feature it is declared under (`#[cfg(feature = "…")]` or
/// `#[cfg(any(test, feature = "…"))]` just above it), if any.
fn pub_statements(source: &str) -> Vec<(Option<String>, String)> {
    let mut out = Vec::new();
    let mut feature: Option<String> = None;
    let mut lines = source.lines();
    while let Some(line) = lines.next() {
        if line.starts_with("#[cfg(") {
            feature = if line.contains("not(") {
                // The declaration for when the feature is off (private, or a fallback).
                None
            } else if line.starts_with("#[cfg(doctest)]") {
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
    if std::env::var("PARTI_BLESS").is_ok_and(|v| v == "1") {
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

#[test]
fn a_group_names_each_member() {
    let found = named_after(
        "use crate::{a::B, c as d, e::{f, g}, self};\nlet x = super::h::i(1);",
        "crate::",
    );
    let want: Vec<Vec<String>> = vec![
        vec!["a".into(), "B".into()],
        vec!["c".into()],
        vec!["e".into()],
    ];
    assert_eq!(found, want);
    assert_eq!(
        named_after("super::h::i(1)", "super::"),
        vec![vec!["h".to_owned(), "i".to_owned()]]
    );
}
