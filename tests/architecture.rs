//! The relay's layout, checked: `src/relay/` has no import cycle between
//! its files, its folders depend on each other one way only, and at most
//! four files sit at its top level (docs/architecture.md draws the
//! folders). Read from the source text: every `crate::relay::…` path and
//! every `super::…` path outside a file's `#[cfg(test)] mod tests`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module's path below `relay`, e.g. `["channel", "fanout"]`.
type Module = Vec<String>;

/// Every `.rs` file under `dir`, with its module path below `src/relay`.
fn modules(root: &Path, dir: &Path, out: &mut BTreeMap<Module, PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("src/relay is readable")
        .map(|e| e.expect("a directory entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            modules(root, &path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path.strip_prefix(root).expect("below the root");
            let mut parts: Module = rel
                .iter()
                .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "mod") {
                parts.pop();
            }
            out.insert(parts, path);
        }
    }
}

/// The file's text without its trailing unit tests.
fn without_tests(text: &str) -> &str {
    let mut at = 0;
    while let Some(i) = text[at..].find("#[cfg(test)]") {
        let start = at + i;
        let rest = text[start + "#[cfg(test)]".len()..].trim_start();
        if rest.starts_with("mod tests") {
            return &text[..start];
        }
        at = start + 1;
    }
    text
}

/// The module a path names: the longest known prefix of `path`.
fn resolve(known: &BTreeMap<Module, PathBuf>, path: &[String]) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| known.contains_key(m))
}

/// Identifier-and-`::` paths following `prefix` in `text`, brace groups
/// expanded one level (`a::{b, c::d}` gives `a::b` and `a::c::d`).
fn paths_after(text: &str, prefix: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(i) = text[from..].find(prefix) {
        let start = from + i;
        from = start + prefix.len();
        let before = text[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        let rest = &text[from..];
        let head: String = rest
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
            .collect();
        let base: Vec<String> = head
            .split("::")
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let after = &rest[head.len()..];
        if (head.is_empty() || head.ends_with("::")) && after.starts_with('{') {
            let inner = after[1..].split('}').next().unwrap_or("");
            for item in inner.split(',') {
                let item: Vec<String> = item
                    .trim()
                    .split("::")
                    .map(|s| s.split_whitespace().next().unwrap_or("").to_owned())
                    .filter(|s| !s.is_empty() && s != "self")
                    .collect();
                let mut p = base.clone();
                p.extend(item);
                out.push(p);
            }
        } else {
            out.push(base);
        }
    }
    out
}

/// Every file's dependencies on other files of `src/relay`.
fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/relay");
    let mut files = BTreeMap::new();
    modules(&root, &root, &mut files);
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (module, path) in &files {
        let text = std::fs::read_to_string(path).expect("a readable source file");
        let code: String = without_tests(&text)
            .lines()
            .map(|l| l.split("//").next().unwrap_or(""))
            .collect::<Vec<_>>()
            .join("\n");
        // `super` of a file `a/b.rs` is `a`; of `a/b/mod.rs`, also `a`.
        let parent: Module = module[..module.len().saturating_sub(1)].to_vec();
        let mut deps = BTreeSet::new();
        for p in paths_after(&code, "crate::relay::") {
            if let Some(m) = resolve(&files, &p) {
                deps.insert(m);
            }
        }
        for p in paths_after(&code, "super::") {
            let mut full = parent.clone();
            full.extend(p);
            if let Some(m) = resolve(&files, &full) {
                deps.insert(m);
            }
        }
        // A file's own items and its children are not a dependency on
        // something else.
        deps.retain(|d| !d.starts_with(module) && d != module);
        g.insert(module.clone(), deps);
    }
    g
}

/// A cycle in `g`, if there is one (as the list of nodes along it).
fn find_cycle<N: Ord + Clone>(g: &BTreeMap<N, BTreeSet<N>>) -> Option<Vec<N>> {
    fn visit<N: Ord + Clone>(
        n: &N,
        g: &BTreeMap<N, BTreeSet<N>>,
        state: &mut BTreeMap<N, u8>,
        stack: &mut Vec<N>,
    ) -> Option<Vec<N>> {
        state.insert(n.clone(), 1);
        stack.push(n.clone());
        for d in g.get(n).into_iter().flatten() {
            match state.get(d).copied().unwrap_or(0) {
                1 => {
                    let at = stack.iter().position(|s| s == d).unwrap_or(0);
                    let mut cycle = stack[at..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                0 => {
                    if let Some(c) = visit(d, g, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.clone(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in g.keys() {
        if state.get(n).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, g, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

fn names(cycle: &[Module]) -> String {
    cycle
        .iter()
        .map(|m| m.join("::"))
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[test]
fn no_file_of_the_relay_imports_itself_through_others() {
    let g = graph();
    assert!(g.len() > 40, "found only {} files", g.len());
    if let Some(c) = find_cycle(&g) {
        panic!("import cycle: {}", names(&c));
    }
}

#[test]
fn the_relays_folders_depend_one_way() {
    let mut folders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, deps) in graph() {
        // `src/relay/mod.rs` only declares the folders.
        let Some(top) = m.first().cloned() else {
            continue;
        };
        let entry = folders.entry(top.clone()).or_default();
        for d in deps {
            if let Some(first) = d.first().filter(|f| **f != top) {
                entry.insert(first.clone());
            }
        }
    }
    if let Some(c) = find_cycle(&folders) {
        panic!("folders depend on each other: {}", c.join(" -> "));
    }
}

#[test]
fn at_most_four_files_sit_at_the_top_of_src_relay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/relay");
    let loose: Vec<String> = std::fs::read_dir(&root)
        .expect("src/relay is readable")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    assert!(loose.len() <= 4, "loose files: {loose:?}");
}

/// The checker itself finds what it must: a two-file cycle, a cycle
/// through `super::`, a path inside braces, and nothing in unit tests.
#[test]
fn the_checker_sees_cycles_and_ignores_tests() {
    let g: BTreeMap<u8, BTreeSet<u8>> = BTreeMap::from([
        (1, BTreeSet::from([2])),
        (2, BTreeSet::from([3])),
        (3, BTreeSet::from([1])),
        (4, BTreeSet::new()),
    ]);
    assert_eq!(find_cycle(&g), Some(vec![1, 2, 3, 1]));
    let acyclic: BTreeMap<u8, BTreeSet<u8>> =
        BTreeMap::from([(1, BTreeSet::from([2])), (2, BTreeSet::new())]);
    assert_eq!(find_cycle(&acyclic), None);
    let text = "use crate::relay::{state::Relay, net::conn::Conn};\nfn f() { crate::relay::clock::now(); }\n#[cfg(test)]\nmod tests { use crate::relay::http; }";
    let found = paths_after(without_tests(text), "crate::relay::");
    let found: Vec<String> = found.iter().map(|p| p.join("::")).collect();
    assert_eq!(found, ["state::Relay", "net::conn::Conn", "clock::now"]);
}
