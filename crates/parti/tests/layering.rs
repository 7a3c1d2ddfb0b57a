//! No import circles between modules, in the library and in the CLI: a module that uses
//! another must not be used by it (directly or through others), at the level of the crate's
//! top modules and of the modules inside each of them. The few circles that remain are listed
//! in [`ALLOWED`] with the reason; a new one fails this test.
//!
//! Read from the source text: module declarations are followed from the crate root (test-only
//! modules are skipped), and a module uses another when a line of it that is not a comment
//! names `crate::other…` or `super::other…`.

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

/// The code of `source` without comments and without its `#[cfg(test)] mod tests { … }`.
fn code(source: &str) -> String {
    let body = source
        .split("#[cfg(test)]\nmod tests")
        .next()
        .unwrap_or_default();
    body.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The module paths named after `prefix` (`crate::` or `super::`) in `code`.
fn named_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    for (i, _) in code.match_indices(prefix) {
        let before = code[..i].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        let rest = &code[i + prefix.len()..];
        let end = rest
            .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        let segments: Vec<&str> = rest[..end].split("::").filter(|s| !s.is_empty()).collect();
        if !segments.is_empty() {
            out.push(segments);
        }
    }
    out
}

/// Uses between modules, each cut to `depth` segments; a module's use of its own ancestors or
/// descendants is not counted.
fn edges(modules: &[(Vec<String>, String)], depth: usize) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<Vec<String>> = modules.iter().map(|(p, _)| p.clone()).collect();
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, file) in modules {
        if path.is_empty() {
            continue;
        }
        let code = code(&std::fs::read_to_string(file).unwrap());
        let mut targets: Vec<Vec<String>> = named_after(&code, "crate::")
            .into_iter()
            .map(|s| s.iter().map(|s| (*s).to_owned()).collect())
            .collect();
        let parent = &path[..path.len() - 1];
        for s in named_after(&code, "super::") {
            let mut t = parent.to_vec();
            t.extend(s.iter().map(|s| (*s).to_owned()));
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
        for depth in [1, 2] {
            for circle in circles(&edges(&modules, depth)) {
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
