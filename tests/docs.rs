//! The documentation stays true to the repository: the protocol copy in
//! `docs/` equals the project's reference, every relative link in the README
//! and `docs/*.md` reaches a file, and the README stays short.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Most lines the README may have: it is for users, the reference is in `docs/`.
const README_MAX_LINES: usize = 250;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Markdown files whose links are checked: the README and `docs/*.md`.
fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![repo().join("README.md")];
    let docs = fs::read_dir(repo().join("docs")).expect("docs/ is readable");
    for entry in docs {
        let path = entry.expect("docs/ entry is readable").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    files
}

/// The targets of the inline links and images in `text` (`[x](target)`,
/// `![x](target)`), outside fenced code blocks and inline code spans.
fn link_targets(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut fenced = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        // Inline code spans may hold brackets that are no link.
        let prose: String = line
            .split('`')
            .enumerate()
            .filter(|(i, _)| i % 2 == 0)
            .map(|(_, part)| part)
            .collect::<Vec<_>>()
            .join(" ");
        let mut rest = prose.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(end) = after.find(')') else { break };
            let target = after[..end].split_whitespace().next().unwrap_or("");
            targets.push(target.to_string());
            rest = &after[end..];
        }
    }
    targets
}

/// Whether `target` names a file of this repository (not a web address, a
/// mail address or an anchor in the same page).
fn is_relative(target: &str) -> bool {
    !(target.is_empty()
        || target.starts_with('#')
        || target.contains("://")
        || target.starts_with("mailto:"))
}

#[test]
fn protocol_copy_equals_the_shared_reference() {
    let shared = repo()
        .parent()
        .expect("the repository has a parent directory")
        .join("shared/PROTOCOL.md");
    let reference = fs::read(&shared)
        .unwrap_or_else(|e| panic!("{} is the protocol's reference: {e}", shared.display()));
    let copy = fs::read(repo().join("docs/PROTOCOL.md")).expect("docs/PROTOCOL.md exists");
    assert!(
        reference == copy,
        "docs/PROTOCOL.md differs from {}: copy it again (cp ../shared/PROTOCOL.md docs/)",
        shared.display()
    );
}

#[test]
fn every_relative_link_reaches_a_file() {
    let mut dangling = Vec::new();
    let mut checked = 0;
    for file in markdown_files() {
        let text = fs::read_to_string(&file).expect("Markdown file is readable");
        let dir = file.parent().unwrap_or(Path::new("."));
        for target in link_targets(&text) {
            if !is_relative(&target) {
                continue;
            }
            let path = target.split('#').next().unwrap_or("");
            checked += 1;
            let resolved = dir.join(path);
            if !resolved.exists() {
                dangling.push(format!("{} -> {target}", file.display()));
            }
        }
    }
    assert!(
        dangling.is_empty(),
        "links to no file:\n{}",
        dangling.join("\n")
    );
    // The README links into docs/: a parser that found nothing checked nothing.
    assert!(checked >= 10, "only {checked} relative links found");
}

#[test]
fn link_parser_finds_links_and_skips_code() {
    let text = "see [the protocol](../shared/PROTOCOL.md) and `[x](y)`\n\
                ```\n[in](code.md)\n```\n![a chart](charts/a.svg \"title\") [web](https://x.example)";
    assert_eq!(
        link_targets(text),
        ["../shared/PROTOCOL.md", "charts/a.svg", "https://x.example"]
    );
    assert!(!is_relative("https://x.example") && !is_relative("#options"));
    assert!(is_relative("docs/cli.md#demo"));
}

#[test]
fn no_link_leaves_the_repository() {
    // The old README linked ../shared/PROTOCOL.md: a clone has no such file.
    for file in markdown_files() {
        let text = fs::read_to_string(&file).expect("Markdown file is readable");
        let dir = file.parent().unwrap_or(Path::new("."));
        for target in link_targets(&text).into_iter().filter(|t| is_relative(t)) {
            let path = target.split('#').next().unwrap_or("");
            let resolved = dir.join(path);
            if !resolved.exists() {
                // every_relative_link_reaches_a_file names it.
                continue;
            }
            let inside = resolved
                .canonicalize()
                .map(|p| p.starts_with(repo().canonicalize().expect("repository path")))
                .unwrap_or(false);
            assert!(
                inside,
                "{} links outside the repository: {target}",
                file.display()
            );
        }
    }
}

#[test]
fn readme_is_short() {
    let text = fs::read_to_string(repo().join("README.md")).expect("README.md exists");
    let lines = text.lines().count();
    assert!(
        lines <= README_MAX_LINES,
        "README.md has {lines} lines, at most {README_MAX_LINES}: move reference to docs/"
    );
}

/// The long flags `bitstream-relay --help` lists, without clap's own.
fn help_flags() -> BTreeSet<String> {
    let out = Command::new(env!("CARGO_BIN_EXE_bitstream-relay"))
        .arg("--help")
        .output()
        .expect("the relay binary runs");
    assert!(out.status.success(), "--help fails: {out:?}");
    let help = String::from_utf8(out.stdout).expect("--help is UTF-8");
    help.lines()
        .filter_map(|line| {
            // `-h, --help` or `--addr <ADDR>`; descriptions do not start with `-`.
            let line = line.trim_start();
            if !line.starts_with('-') {
                return None;
            }
            let line = &line[line.find("--")? + 2..];
            let name: String = line
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect();
            (!name.is_empty()).then(|| format!("--{name}"))
        })
        .filter(|f| f != "--help" && f != "--version")
        .collect()
}

#[test]
fn options_md_covers_every_flag_and_only_real_ones() {
    let flags = help_flags();
    assert!(
        flags.contains("--max-receivers") && flags.len() > 40,
        "{flags:?}"
    );
    let options = fs::read_to_string(repo().join("docs/options.md")).expect("docs/options.md");
    let missing: Vec<_> = flags
        .iter()
        .filter(|f| !options.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "--help lists flags docs/options.md does not: {missing:?}"
    );
    // Every flag the table documents exists.
    let mut rows = 0;
    for row in options.lines().filter(|l| l.starts_with("| `--")) {
        rows += 1;
        let first_cell = row.split('|').nth(1).unwrap_or("");
        for flag in first_cell.split('`').filter(|s| s.starts_with("--")) {
            assert!(
                flags.contains(flag),
                "docs/options.md documents {flag}, --help has no such flag"
            );
        }
    }
    assert!(rows > 40, "only {rows} option rows in docs/options.md");
}

#[test]
fn readme_quick_start_is_the_relay_and_the_ci_command() {
    let readme = fs::read_to_string(repo().join("README.md")).expect("README.md exists");
    let start = readme
        .split("## Quick start")
        .nth(1)
        .expect("README.md has a Quick start section");
    let commands: Vec<&str> = start
        .lines()
        .skip_while(|l| !l.starts_with("    "))
        .take_while(|l| l.starts_with("    "))
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .collect();
    assert_eq!(commands, ["cargo run --release", "bash .ci/run"]);
    // CI runs the same script, and it runs the whole workspace's tests.
    let ci = fs::read_to_string(repo().join(".ci/run")).expect(".ci/run exists");
    assert!(
        ci.contains("cargo test --workspace"),
        ".ci/run no longer runs cargo test --workspace"
    );
    // The URLs the README tells a user to open are on the default address.
    let config = fs::read_to_string(repo().join("src/relay/config.rs")).expect("config.rs");
    assert!(config.contains(r#"default_value = "127.0.0.1:9100""#));
    assert!(start.contains("http://127.0.0.1:9100/?channel="));
}
