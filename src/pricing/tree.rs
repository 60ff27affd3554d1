//! The token-type tree: `input` and `output` under `total`, the extra types placed by
//! `included_in`, checked for unknown names and cycles.
//!
//! Owns: the type names and their indexes, each type's parent, and the errors of
//! `included_in` and `[fields.extra_tokens]`. Must not: know rates or entries.

use std::collections::BTreeMap;

use super::{PricingError, BUILTIN_TYPES, INPUT, MAX_TYPES, OUTPUT, TOTAL};

#[derive(Debug, Clone, Default)]
pub(super) struct TypeTree {
    pub(super) names: Vec<String>,
    /// The type whose count includes this one's; `None` for a root.
    pub(super) parent: Vec<Option<usize>>,
}

impl TypeTree {
    pub(super) fn build(
        included_in: &BTreeMap<String, String>,
        extra_types: &[String],
        included_in_key: &str,
    ) -> Result<TypeTree, PricingError> {
        let mut names: Vec<String> = BUILTIN_TYPES.iter().map(|s| s.to_string()).collect();
        for extra in extra_types {
            if names.contains(extra) {
                return Err(PricingError {
                    key: format!("fields.extra_tokens.{extra}"),
                    message: format!(
                        "token type {extra:?} is defined twice (input, output and total are built in)"
                    ),
                });
            }
            names.push(extra.clone());
        }
        if names.len() > MAX_TYPES {
            return Err(PricingError {
                key: "fields.extra_tokens".into(),
                message: format!(
                    "pricing supports at most {} extra token types",
                    MAX_TYPES - 3
                ),
            });
        }
        let mut tree = TypeTree {
            parent: vec![None; names.len()],
            names,
        };
        tree.parent[INPUT] = Some(TOTAL);
        tree.parent[OUTPUT] = Some(TOTAL);
        for (child, parent) in included_in {
            let key = format!("{included_in_key}.{child}");
            if BUILTIN_TYPES.contains(&child.as_str()) {
                return Err(PricingError {
                    key,
                    message: format!(
                        "{child:?} cannot be placed: input and output are part of total, and total is part of nothing"
                    ),
                });
            }
            // docs/spend.md: keys naming a type that [fields.extra_tokens] does not define are ignored
            // (the default names cache and reasoning types a deployment may not collect).
            let Some(child_index) = tree.index(child) else {
                continue;
            };
            let Some(parent_index) = tree.index(parent) else {
                return Err(PricingError {
                    key,
                    message: format!(
                        "unknown token type {parent:?}; known types: {}",
                        tree.names.join(", ")
                    ),
                });
            };
            tree.parent[child_index] = Some(parent_index);
        }
        // Only extras can be in a cycle (the built-ins' parents are fixed); a cycle is found
        // from its lowest-indexed member first, which makes the reported key deterministic.
        for start in TOTAL + 1..tree.names.len() {
            let mut path = vec![start];
            let mut current = tree.parent[start];
            while let Some(p) = current {
                path.push(p);
                if p == start {
                    let chain: Vec<&str> = path.iter().map(|&i| tree.names[i].as_str()).collect();
                    return Err(PricingError {
                        key: format!("{included_in_key}.{}", tree.names[start]),
                        message: format!("included_in has a cycle: {}", chain.join(" -> ")),
                    });
                }
                if path.len() > tree.names.len() {
                    break; // a cycle not through `start`: reported from its own member
                }
                current = tree.parent[p];
            }
        }
        Ok(tree)
    }

    pub(super) fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// Ancestors of `i`, nearest first. The tree is acyclic once built.
    pub(super) fn ancestors(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        std::iter::successors(self.parent.get(i).copied().flatten(), move |&a| {
            self.parent.get(a).copied().flatten()
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::pricing::test_support::*;

    #[test]
    fn included_in_errors_name_the_key() {
        // (included_in, the extra token types defined, the key named, the message or None
        // when only the key is checked)
        let cases: [(&str, &[&str], &str, Option<&str>); 5] = [
            ("input = \"total\"", &[], "input", None),
            (
                "cached_input = \"inptu\"",
                &["cached_input"],
                "cached_input",
                Some(
                    "unknown token type \"inptu\"; known types: input, output, total, cached_input",
                ),
            ),
            (
                "a = \"b\", b = \"a\"",
                &["a", "b"],
                "a",
                Some("included_in has a cycle: a -> b -> a"),
            ),
            (
                "c = \"c\"",
                &["a", "c"],
                "c",
                Some("included_in has a cycle: c -> c"),
            ),
            // b -> c -> d -> c: found from c, not from b.
            (
                "b = \"c\", c = \"d\", d = \"c\"",
                &["b", "c", "d"],
                "c",
                Some("included_in has a cycle: c -> d -> c"),
            ),
        ];
        for (included_in, extras, key, message) in cases {
            let e = rejected(
                &format!("[pricing]\nincluded_in = {{ {included_in} }}\n"),
                extras,
            );
            assert_eq!(e.key, format!("pricing.included_in.{key}"), "{included_in}");
            if let Some(message) = message {
                assert_eq!(e.message, message, "{included_in}");
            }
        }
    }

    #[test]
    fn included_in_keys_of_undefined_types_are_ignored() {
        // The default names cached_input, cache_creation_input and reasoning; none defined.
        compile(
            SPEND_EXAMPLE.replace(", cached_input = 0.075", "").as_str(),
            &[],
        )
        .unwrap();
        compile("[pricing]\nincluded_in = { nothing = \"nowhere\" }\n", &[]).unwrap();
    }
}
