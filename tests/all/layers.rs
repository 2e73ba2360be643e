//! The host's layers, checked from its source: every module uses only the
//! modules `lib.rs` lists after it (so no two modules depend on each other
//! in a circle), and axum, async-nats and wasmtime appear only where
//! `lib.rs` says.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The modules of `lib.rs`'s `# Layout`, top to bottom: the first
/// backticked name of each entry.
fn layout() -> Vec<String> {
    let lib = std::fs::read_to_string(src().join("lib.rs")).unwrap();
    let section = lib
        .split("//! # Layout")
        .nth(1)
        .and_then(|rest| rest.split("//! # ").next())
        .expect("lib.rs has a `# Layout` section");
    section
        .lines()
        .filter_map(|line| line.strip_prefix("//! - "))
        .map(|entry| {
            let name = entry
                .split('`')
                .nth(1)
                .expect("each entry names its module");
            name.to_owned()
        })
        .collect()
}

/// Every `.rs` file under `dir`, with the top-level module it belongs to.
fn sources(dir: &Path, top: Option<&str>, out: &mut Vec<(String, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let module = top.map_or(name.clone(), str::to_owned);
        if path.is_dir() {
            sources(&path, Some(&module), out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push((module, path));
        }
    }
}

/// The code of a file, without comments (doc links are not dependencies).
fn code(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| line.split("//").next().unwrap_or_default())
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level modules `code` names through `crate::`, grouped imports
/// (`use crate::{a, b::c}`) included.
fn uses(code: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Split the group at its top-level commas; each piece starts
            // with the module it names.
            let mut depth = 0;
            let mut pieces = vec![String::new()];
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => pieces.push(String::new()),
                    _ => {}
                }
                if let Some(piece) = pieces.last_mut() {
                    piece.push(c);
                }
            }
            for piece in pieces {
                let name: String = piece
                    .trim_start_matches(|c: char| c == ',' || c.is_whitespace())
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    found.insert(name);
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            found.insert(name);
        }
    }
    found
}

#[test]
fn each_module_uses_only_the_layers_below_it() {
    let layout = layout();
    let mut files = Vec::new();
    sources(&src(), None, &mut files);
    let modules: BTreeSet<String> = files
        .iter()
        .map(|(module, _)| module.clone())
        // The crate root, and the `opbox` binary (a user of the library).
        .filter(|m| m != "lib" && m != "bin")
        .collect();
    let listed: BTreeSet<String> = layout.iter().cloned().collect();
    assert_eq!(modules, listed, "lib.rs's layout lists every module, once");
    let rank = |m: &str| layout.iter().position(|l| l == m);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for (module, path) in &files {
        let Some(own) = rank(module) else { continue };
        for used in uses(&code(path)) {
            match rank(&used) {
                Some(other) if other != own => {
                    graph
                        .entry(module.clone())
                        .or_default()
                        .insert(used.clone());
                    if other < own {
                        upward.push(format!("{} uses `{used}`", path.display()));
                    }
                }
                _ => {}
            }
        }
    }
    assert!(
        upward.is_empty(),
        "modules reaching up the layout:\n{}\nthe graph: {graph:#?}",
        upward.join("\n")
    );
}

#[test]
fn axum_only_in_the_gateway_nats_only_in_the_cluster_and_wasmtime_only_in_runtime_and_capabilities()
{
    let mut files = Vec::new();
    sources(&src(), None, &mut files);
    let rules: [(&[&str], &[&str]); 3] = [
        (&["axum::"], &["gateway"]),
        (&["async_nats::"], &["cluster"]),
        (
            &["wasmtime::", "wasmtime_wasi::", "wasmtime_wasi_http::"],
            &["runtime", "capabilities"],
        ),
    ];
    let mut strays = Vec::new();
    for (module, path) in &files {
        let code = code(path);
        for (crates, allowed) in rules {
            for krate in crates {
                if code.contains(krate) && !allowed.contains(&module.as_str()) {
                    strays.push(format!("{} uses {krate}", path.display()));
                }
            }
        }
    }
    assert!(strays.is_empty(), "{}", strays.join("\n"));
}

#[test]
fn grouped_imports_are_read_as_several_uses() {
    let found = uses(
        "use crate::{call::{CallError, Identity}, registry, net::Guard};\nlet x = crate::tenants::get();",
    );
    let expected: BTreeSet<String> = ["call", "registry", "net", "tenants"]
        .map(String::from)
        .into();
    assert_eq!(found, expected);
}
