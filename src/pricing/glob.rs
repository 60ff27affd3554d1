//! Glob matching of the price patterns over label values (`*` matches any run, even empty;
//! every other character is literal), precompiled for the common shapes.
//!
//! Owns: what a `model` or `service_id` pattern matches. Must not: know entries or their
//! order (that is [`super::table`]).

/// Whether `text` matches `pattern`: case-sensitive, `*` matches any run of characters (`/`,
/// `.` and `:` included, and none), every other character — `?` and `[` too — only itself.
/// Linear backtracking to the last `*` only, so at most O(len(pattern) × len(text)) steps.
pub fn glob_matches(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    // Where the last `*` was and where in `text` its current match ends.
    let mut last_star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match p.get(pi) {
            Some(b'*') => {
                last_star = Some((pi, ti));
                pi += 1;
            }
            Some(&c) if c == t[ti] => {
                pi += 1;
                ti += 1;
            }
            _ => match last_star {
                // Let that `*` swallow one more byte and retry the rest.
                Some((star_pi, star_ti)) => {
                    last_star = Some((star_pi, star_ti + 1));
                    pi = star_pi + 1;
                    ti = star_ti + 1;
                }
                None => return false,
            },
        }
    }
    p.get(pi..).unwrap_or_default().iter().all(|&c| c == b'*')
}

/// A compiled price pattern: the common shapes skip the general matcher.
#[derive(Debug, Clone)]
pub(super) enum Glob {
    Any,
    Exact(String),
    Prefix(String),
    Pattern(String),
}

impl Glob {
    pub(super) fn new(pattern: &str) -> Glob {
        if !pattern.is_empty() && pattern.bytes().all(|c| c == b'*') {
            return Glob::Any;
        }
        match pattern.find('*') {
            None => Glob::Exact(pattern.to_string()),
            Some(at) if at + 1 == pattern.len() => Glob::Prefix(pattern[..at].to_string()),
            Some(_) => Glob::Pattern(pattern.to_string()),
        }
    }

    pub(super) fn matches(&self, text: &str) -> bool {
        match self {
            Glob::Any => true,
            Glob::Exact(s) => s == text,
            Glob::Prefix(s) => text.starts_with(s.as_str()),
            Glob::Pattern(p) => glob_matches(p, text),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn star_matches_slashes_dots_colons_and_nothing() {
        assert!(glob_matches("*", ""));
        assert!(glob_matches("", ""));
        assert!(!glob_matches("", "a"));
        assert!(glob_matches("gpt-4o*", "gpt-4o"));
        assert!(glob_matches("gpt-4o*", "gpt-4o-mini-2024-07-18"));
        assert!(!glob_matches("gpt-4o*", "gpt-4"));
        assert!(glob_matches("*llama*", "meta/llama-3.1:8b"));
        assert!(glob_matches("*/*:*", "meta/llama-3.1:8b"));
        assert!(glob_matches("meta/*.1:8b", "meta/llama-3.1:8b"));
        assert!(glob_matches("a*b*c", "abc"));
        assert!(!glob_matches("a*b*c", "acb"));
        assert!(!glob_matches("GPT*", "gpt-4"));
        assert!(glob_matches("ü*r", "über"));
        // Adversarial for naive backtracking: fails fast.
        assert!(!glob_matches("a*a*a*a*a*a*a*b", &"a".repeat(10_000)));
    }

    #[test]
    fn question_mark_and_brackets_are_literal() {
        assert!(!glob_matches("gpt?", "gpt4"));
        assert!(glob_matches("gpt?", "gpt?"));
        assert!(!glob_matches("[ab]", "a"));
        assert!(glob_matches("[ab]*", "[ab]-x"));
        assert!(!glob_matches("\\*", "x"));
    }

    /// Plain recursive glob semantics, exponential but obviously right on short inputs.
    fn reference_glob(p: &[u8], t: &[u8]) -> bool {
        match p.split_first() {
            None => t.is_empty(),
            Some((b'*', rest)) => (0..=t.len()).any(|k| reference_glob(rest, &t[k..])),
            Some((c, rest)) => t.first() == Some(c) && reference_glob(rest, &t[1..]),
        }
    }

    proptest! {
        #[test]
        fn glob_agrees_with_the_recursive_definition(
            pattern in "[ab/.*]{0,8}", text in "[ab/.]{0,10}"
        ) {
            let expected = reference_glob(pattern.as_bytes(), text.as_bytes());
            prop_assert_eq!(glob_matches(&pattern, &text), expected);
            prop_assert_eq!(Glob::new(&pattern).matches(&text), expected);
        }
    }
}
