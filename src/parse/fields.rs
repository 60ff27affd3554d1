//! The `[fields]` settings: which format lines are read in and which keys override a
//! format's own (docs/formats.md), and the extra token types.
//!
//! Owns: these settings' shape and defaults. The config file holds them (`config` re-exports
//! them); validating their keys is `format`'s (`key_error`). Must not read lines.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// At most this many `[fields.extra_tokens]`; each one is a counter per series.
pub const MAX_EXTRA_TOKENS: usize = 16;

/// How access-log lines are read (docs/formats.md): `format` tells the formats apart line by
/// line (`"auto"`) or pins one; a key set here overrides that field for every format (a key
/// starting with `/` is a JSON Pointer). Unset keys take each format's own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Fields {
    pub format: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input_tokens: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total_tokens: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub service_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<String>,
    /// Counter name (`llm_<name>_tokens_total`) → access-log key.
    pub extra_tokens: BTreeMap<String, String>,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            format: "auto".into(),
            model: None,
            input_tokens: None,
            output_tokens: None,
            total_tokens: None,
            api_key_id: None,
            service_id: None,
            status: None,
            start_time: None,
            duration_ms: None,
            extra_tokens: BTreeMap::new(),
        }
    }
}

/// The extra token types every config has (docs/formats.md): each format maps them where its
/// gateway logs them, and a series of one appears with its first non-zero value.
pub const DEFAULT_EXTRA_TOKENS: [&str; 3] = ["cache_creation_input", "cached_input", "reasoning"];

impl Fields {
    /// The extra token types, in name order: the defaults and those of `[fields.extra_tokens]`.
    pub fn extra_names(&self) -> Vec<String> {
        let mut names: Vec<String> = DEFAULT_EXTRA_TOKENS.iter().map(|s| s.to_string()).collect();
        names.extend(self.extra_tokens.keys().cloned());
        names.sort();
        names.dedup();
        names.truncate(MAX_EXTRA_TOKENS);
        names
    }

    /// `format` as a choice; validation has refused anything else.
    pub fn format_choice(&self) -> super::format::FormatChoice {
        super::format::FormatChoice::parse(&self.format)
            .unwrap_or(super::format::FormatChoice::Auto)
    }
}
