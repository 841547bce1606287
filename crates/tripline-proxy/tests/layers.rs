//! The proxy's modules import each other in one direction only: from the accept loops down
//! through the request path to the endpoints and their connections (docs/architecture.md,
//! "Layers"). This test reads the crate's sources and fails, naming the files and lines, when a
//! change makes two top-level modules depend on each other, directly or around a loop.
//!
//! A dependency is a `crate::<module>` path in a module's code (comments and `#[cfg(test)]`
//! code are left out: a doc link or a test helper is not a layer's dependency). `lib.rs` is the
//! composition root that wires the layers together; what modules use of it (`crate::Shared`,
//! `crate::BoxError`) is not counted. Files inside one top-level module may refer to each
//! other: a layer is a top-level module.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Where module `from` uses module `to`: the first file and line.
type Edges = BTreeMap<String, BTreeMap<String, (PathBuf, usize)>>;

#[test]
fn top_level_modules_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = dependencies(&src);
    assert!(edges.len() > 20, "found only {} modules under {}", edges.len(), src.display());
    let cycles = cycles(&edges);
    let mut report = String::new();
    for cycle in &cycles {
        report.push_str("cycle:\n");
        for pair in cycle.windows(2) {
            let (file, line) = &edges[&pair[0]][&pair[1]];
            report.push_str(&format!("  {} -> {}   ({}:{line})\n", pair[0], pair[1], file.display()));
        }
    }
    assert!(cycles.is_empty(), "modules of tripline-proxy import each other in a circle:\n{report}");
}

/// The parser itself: a cycle planted in sources is found, and what is not code is ignored.
#[test]
fn a_planted_cycle_is_found_and_comments_and_tests_are_not_code() {
    let dir = std::env::temp_dir().join(format!("tripline-layers-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("b")).unwrap();
    std::fs::write(dir.join("lib.rs"), "pub mod a; pub mod b; pub mod c;").unwrap();
    std::fs::write(dir.join("a.rs"), "use crate::{b::{x, y}, Shared};\n// crate::c is a comment\n").unwrap();
    std::fs::write(dir.join("b/mod.rs"), "mod inner;\n").unwrap();
    std::fs::write(
        dir.join("b/inner.rs"),
        "fn f() { crate::c::g() }\n#[cfg(test)]\nmod t { use crate::a; }\n",
    )
    .unwrap();
    std::fs::write(dir.join("c.rs"), "/// See [`crate::b`].\npub fn g() { let _ = crate::a::X; }\n").unwrap();
    let edges = dependencies(&dir);
    let _ = std::fs::remove_dir_all(&dir);
    let names = |m: &str| edges[m].keys().cloned().collect::<Vec<_>>();
    assert_eq!(names("a"), ["b"]);
    assert_eq!(names("b"), ["c"]);
    assert_eq!(names("c"), ["a"]);
    assert_eq!(cycles(&edges), vec![vec!["a".to_string(), "b".into(), "c".into(), "a".into()]]);
}

/// Every top-level module's dependencies on the others.
fn dependencies(src: &Path) -> Edges {
    let mut files = Vec::new();
    collect(src, &mut files);
    let mut edges = Edges::new();
    for file in &files {
        let rel = file.strip_prefix(src).unwrap();
        let top = rel.iter().next().unwrap().to_string_lossy().trim_end_matches(".rs").to_string();
        if top == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(file).unwrap();
        let entry = edges.entry(top.clone()).or_default();
        for (line, used) in uses(&text) {
            if used != top {
                entry.entry(used).or_insert_with(|| (rel.to_path_buf(), line));
            }
        }
    }
    let modules: BTreeSet<String> = edges.keys().cloned().collect();
    for deps in edges.values_mut() {
        deps.retain(|m, _| modules.contains(m));
    }
    edges
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            // A module's `tests/` folder is test code.
            if path.file_name().is_some_and(|n| n != "tests") {
                collect(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The modules a file's code names after `crate::`, with the line of each.
fn uses(text: &str) -> Vec<(usize, String)> {
    let code = text.split("#[cfg(test)]").next().unwrap_or("");
    let mut found = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let line = line.split("//").next().unwrap_or("");
        found.extend(paths_in(line).into_iter().map(|m| (i + 1, m)));
    }
    // A grouped `use crate::{…}` may span lines: read it whole.
    let mut rest = code;
    while let Some(at) = rest.find("crate::{") {
        let line = code[..code.len() - rest.len() + at].lines().count().max(1);
        let group = &rest[at + "crate::{".len()..];
        let end = group.find(';').unwrap_or(group.len());
        found.extend(group_heads(&group[..end]).into_iter().map(|m| (line, m)));
        rest = &group[end..];
    }
    found
}

/// `a` in every `crate::a` of a line.
fn paths_in(line: &str) -> Vec<String> {
    line.match_indices("crate::")
        .filter(|(at, _)| !line[..*at].ends_with(|c: char| c.is_alphanumeric() || c == '_'))
        .map(|(at, m)| ident(&line[at + m.len()..]))
        .filter(|m| !m.is_empty())
        .collect()
}

/// The first segment of each path in a `{…}` group (nested groups belong to their segment).
fn group_heads(group: &str) -> Vec<String> {
    let mut heads = Vec::new();
    let mut depth = 0;
    let mut expect = true;
    for (i, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => expect = true,
            c if expect && depth == 0 && !c.is_whitespace() => {
                expect = false;
                // A module's name; `Shared` and the like are the crate root's items.
                let head = ident(&group[i..]);
                if head.starts_with(|c: char| c.is_lowercase()) && head != "self" {
                    heads.push(head);
                }
            }
            _ => {}
        }
    }
    heads
}

fn ident(s: &str) -> String {
    s.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect()
}

/// Each cycle once, as the path around it (first module repeated at the end).
fn cycles(edges: &Edges) -> Vec<Vec<String>> {
    fn walk(
        node: &str,
        edges: &Edges,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
        found: &mut Vec<Vec<String>>,
    ) {
        if let Some(at) = path.iter().position(|n| n == node) {
            let mut cycle = path[at..].to_vec();
            cycle.push(node.to_string());
            found.push(cycle);
            return;
        }
        if done.contains(node) {
            return;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flat_map(|d| d.keys()) {
            walk(next, edges, path, done, found);
        }
        path.pop();
        done.insert(node.to_string());
    }
    let (mut done, mut found) = (BTreeSet::new(), Vec::new());
    for node in edges.keys() {
        walk(node, edges, &mut Vec::new(), &mut done, &mut found);
    }
    found
}
