//! Which files make the config, and how they combine. `--config` may be given several times,
//! each a file or a directory (its `*.toml` files in name order; links followed, as a
//! Kubernetes ConfigMap mount is made of links; names starting with `.` skipped). Later files
//! override earlier ones key by key: tables merge, any other value (an array included) is
//! replaced whole. So an overlay adds a small drop-in (`[fields]`, `[pricing]`) instead of a
//! copy of the whole file.
//!
//! Owns: listing, reading and parsing the files into one TOML table, and remembering which
//! file set each key, so that an error names the file it came from. Must not interpret any
//! key: that is [`super::Config`]'s.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// The config files the `--config` arguments name, in the order they apply.
pub fn config_files(args: &[PathBuf]) -> Result<Vec<PathBuf>, ConfigError> {
    let mut files = Vec::new();
    for arg in args {
        let meta = std::fs::metadata(arg).map_err(|e| ConfigError {
            file: Some(arg.clone()),
            key: None,
            message: format!("cannot read: {e}"),
        })?;
        if !meta.is_dir() {
            files.push(arg.clone());
            continue;
        }
        let entries = std::fs::read_dir(arg).map_err(|e| ConfigError {
            file: Some(arg.clone()),
            key: None,
            message: format!("cannot list the directory: {e}"),
        })?;
        let mut in_dir = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| ConfigError {
                file: Some(arg.clone()),
                key: None,
                message: format!("cannot list the directory: {e}"),
            })?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with('.') || !name.ends_with(".toml") {
                continue;
            }
            let path = entry.path();
            // Followed: a ConfigMap's keys are links into its `..data` directory.
            if std::fs::metadata(&path).is_ok_and(|m| m.is_file()) {
                in_dir.push(path);
            }
        }
        in_dir.sort();
        files.extend(in_dir);
    }
    Ok(files)
}

/// The merged table of `files` and, for each key path set (`otlp.headers.X-Scope-OrgID`),
/// the file that set it last.
pub struct Merged {
    pub table: toml::Table,
    origin: BTreeMap<String, PathBuf>,
}

impl Merged {
    /// Reads and merges `files` in order.
    pub fn read(files: &[PathBuf]) -> Result<Merged, ConfigError> {
        let mut merged = Merged {
            table: toml::Table::new(),
            origin: BTreeMap::new(),
        };
        for file in files {
            let text = std::fs::read_to_string(file).map_err(|e| ConfigError {
                file: Some(file.clone()),
                key: None,
                message: format!("cannot read: {e}"),
            })?;
            let table = parse(&text).map_err(|mut e| {
                e.file = Some(file.clone());
                e
            })?;
            merge(&mut merged.table, table, "", file, &mut merged.origin);
        }
        Ok(merged)
    }

    /// The file that set `key` (an error's key, such as `loki.redact[1]`), or the nearest
    /// table above it that a file set; with one file, that file.
    pub fn file_of(&self, key: Option<&str>, files: &[PathBuf]) -> Option<PathBuf> {
        if let [only] = files {
            return Some(only.clone());
        }
        let mut key = key?.split('[').next().unwrap_or_default().to_string();
        loop {
            if let Some(file) = self.origin.get(&key) {
                return Some(file.clone());
            }
            let (parent, _) = key.rsplit_once('.')?;
            key = parent.to_string();
        }
    }
}

/// TOML text as a table; a syntax error names its line and column.
pub fn parse(text: &str) -> Result<toml::Table, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let at = e.span().map(|span| {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().unwrap_or("").chars().count() + 1;
            format!(" (line {line}, column {column})")
        });
        ConfigError {
            file: None,
            key: None,
            message: format!(
                "invalid TOML{}: {}",
                at.unwrap_or_default(),
                e.message().trim()
            ),
        }
    })
}

/// `over` into `base`: a table into a table merges key by key, anything else replaces.
fn merge(
    base: &mut toml::Table,
    over: toml::Table,
    prefix: &str,
    file: &Path,
    origin: &mut BTreeMap<String, PathBuf>,
) {
    for (k, v) in over {
        let path = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(into)), toml::Value::Table(from)) => {
                origin.insert(path.clone(), file.to_path_buf());
                merge(into, from, &path, file, origin);
            }
            (_, v) => {
                // Every key below a replaced value now comes from this file.
                origin.retain(|key, _| !key.starts_with(&format!("{path}.")));
                record(&v, &path, file, origin);
                base.insert(k, v);
            }
        }
    }
}

fn record(v: &toml::Value, path: &str, file: &Path, origin: &mut BTreeMap<String, PathBuf>) {
    origin.insert(path.to_string(), file.to_path_buf());
    if let toml::Value::Table(t) = v {
        for (k, item) in t {
            record(item, &format!("{path}.{k}"), file, origin);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn later_files_override_earlier_keys_tables_merge_and_arrays_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let base = write(
            dir.path(),
            "base.toml",
            "state_dir = \"/a\"\n[source]\ninclude = [\"/x/*.log\", \"/y/*.log\"]\nstart_at = \"end\"\n[otlp]\nendpoint = \"http://m\"\nheaders = { A = \"1\", B = \"2\" }\n",
        );
        let over = write(
            dir.path(),
            "over.toml",
            "[source]\ninclude = [\"/z/*.log\"]\n[otlp.headers]\nB = \"3\"\n",
        );
        let merged = Merged::read(&[base.clone(), over.clone()]).unwrap();
        let want: toml::Table = toml::from_str(
            "state_dir = \"/a\"\n[source]\ninclude = [\"/z/*.log\"]\nstart_at = \"end\"\n[otlp]\nendpoint = \"http://m\"\nheaders = { A = \"1\", B = \"3\" }\n",
        )
        .unwrap();
        assert_eq!(merged.table, want);
        let files = [base.clone(), over.clone()];
        let of = |key: &str| merged.file_of(Some(key), &files);
        assert_eq!(of("source.include[0]"), Some(over.clone()));
        assert_eq!(of("source.start_at"), Some(base.clone()));
        assert_eq!(of("otlp.headers.B"), Some(over.clone()));
        assert_eq!(of("otlp.headers.A"), Some(base.clone()));
        assert_eq!(of("otlp.endpoint"), Some(base.clone()));
        assert_eq!(of("nowhere"), None);
    }

    #[test]
    fn a_directory_gives_its_toml_files_in_name_order_through_links() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("conf.d");
        let data = conf.join("..data");
        std::fs::create_dir_all(&data).unwrap();
        write(&data, "20-fields.toml", "[fields]\n");
        // As a ConfigMap mount: the keys are links into `..data`.
        std::os::unix::fs::symlink("..data/20-fields.toml", conf.join("20-fields.toml")).unwrap();
        write(&conf, "10-base.toml", "");
        write(&conf, "notes.txt", "");
        write(&conf, ".hidden.toml", "");
        let lone = write(dir.path(), "main.toml", "");
        let files = config_files(&[lone.clone(), conf.clone()]).unwrap();
        assert_eq!(
            files,
            vec![lone, conf.join("10-base.toml"), conf.join("20-fields.toml")]
        );
        let e = config_files(&[dir.path().join("missing.toml")]).unwrap_err();
        assert!(e.to_string().contains("missing.toml"), "{e}");
    }

    #[test]
    fn a_syntax_error_names_its_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let good = write(dir.path(), "a.toml", "[source]\n");
        let bad = write(
            dir.path(),
            "b.toml",
            "[otlp]\nendpoint = \"x\"\ninterval = 15s\n",
        );
        let e = Merged::read(&[good, bad.clone()]).err().unwrap();
        assert_eq!(e.file.as_deref(), Some(bad.as_path()));
        // `interval = 15s`: the 15 is a number, the `s` after it (column 14) the error.
        assert!(e.message.contains("line 3, column 14"), "{e}");
    }
}
