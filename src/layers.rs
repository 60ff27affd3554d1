//! The crate's modules in import order: a module may use only the modules before it in
//! [`LAYERS`] (and itself). Data flows one way through them — read, decode, parse, count,
//! export — and nothing reaches back up; `docs/design.md` says what each owns.
//!
//! Two placements are deliberate: `decode` comes before `source`, because a file's read
//! position is checkpointed together with its decoder's partial-line state (a CRI line split
//! into partials must not be counted twice after a restart), so the source's cursor holds a
//! decoder; and `config` comes after the stages whose settings it gathers (`endpoint`,
//! `source`, `parse`, `pricing`, `owners`), which own their settings' types and rules.
//!
//! Owns: the order and the test that keeps it. Must not be imported by anything.

/// Every module of `lib.rs`, earliest first.
pub const LAYERS: &[&str] = &[
    // Leaves: no import of the crate.
    "json",
    "timefmt",
    "ratelog",
    "shutdown",
    "endpoint",
    "tsdb",
    // The stages, in the order a line goes through them.
    "decode",
    "source",
    "parse",
    "pricing",
    "owners",
    "config",
    "aggregate",
    "schema",
    "pipeline",
    // What leaves the process.
    "export",
    "backfill",
    "forwarder",
    "health",
    "state",
    "server",
    // The commands.
    "replay",
    "daemon",
    "cli",
    // This module.
    "layers",
];

#[cfg(test)]
mod tests {
    use super::LAYERS;
    use std::path::{Path, PathBuf};

    /// Every `.rs` file under `dir`.
    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            panic!("cannot read {}", dir.display());
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// The crate modules a line of code names (`crate::x`, `crate::{x, y::z}`), comments
    /// left out.
    fn named_modules(line: &str) -> Vec<String> {
        let code = match line.trim_start().starts_with("//") {
            true => "",
            false => line.split(" // ").next().unwrap_or(line),
        };
        let ident = |s: &str| -> String {
            s.trim_start()
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect()
        };
        let mut out = Vec::new();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            match rest.strip_prefix('{') {
                Some(group) => {
                    let group = group.split('}').next().unwrap_or("");
                    out.extend(group.split(',').map(ident).filter(|m| !m.is_empty()));
                }
                None => out.push(ident(rest)),
            }
        }
        out
    }

    #[test]
    fn no_module_imports_one_that_comes_after_it() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        let rank = |m: &str| LAYERS.iter().position(|l| *l == m);
        let mut upward = Vec::new();
        for file in &files {
            let rel = file.strip_prefix(&src).unwrap_or(file);
            let Some(first) = rel.iter().next().and_then(|c| c.to_str()) else {
                continue;
            };
            let module = first.trim_end_matches(".rs");
            // This file names modules in its own tests.
            if module == "lib" || module == "main" || module == "layers" {
                continue;
            }
            let Some(own) = rank(module) else {
                panic!("{} is in no layer: add its module to LAYERS", rel.display());
            };
            let text = std::fs::read_to_string(file).unwrap_or_default();
            for (n, line) in text.lines().enumerate() {
                for used in named_modules(line) {
                    match rank(&used) {
                        Some(r) if r > own => upward.push(format!(
                            "{}:{}: {module} uses {used}",
                            rel.display(),
                            n + 1
                        )),
                        Some(_) => {}
                        None => panic!("{}:{}: crate::{used} is no module", rel.display(), n + 1),
                    }
                }
            }
        }
        assert!(
            upward.is_empty(),
            "imports that run back up:\n{}",
            upward.join("\n")
        );
        assert!(files.len() > 20, "{} files", files.len());
    }

    #[test]
    fn the_layers_are_the_modules_of_lib_rs() {
        let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs"))
            .unwrap_or_default();
        let mut declared: Vec<&str> = lib
            .lines()
            .filter_map(|l| {
                l.trim()
                    .strip_prefix("pub mod ")
                    .or(l.trim().strip_prefix("mod "))
            })
            .map(|l| l.trim_end_matches(';'))
            .collect();
        declared.sort_unstable();
        let mut layers = LAYERS.to_vec();
        layers.sort_unstable();
        assert_eq!(declared, layers);
    }

    #[test]
    fn the_module_reader_sees_every_form_of_import() {
        assert_eq!(named_modules("use crate::parse::Record;"), ["parse"]);
        assert_eq!(
            named_modules("use crate::{config::Fields, json};"),
            ["config", "json"]
        );
        assert_eq!(
            named_modules("    // see crate::daemon"),
            Vec::<String>::new()
        );
        assert_eq!(named_modules("f(); // crate::daemon"), Vec::<String>::new());
        assert_eq!(
            named_modules("let x = crate::timefmt::now_ns() + crate::json::X;"),
            ["timefmt", "json"]
        );
    }
}
