//! Prometheus-style series selectors: `{comm="nginx",pid!="1",exe=~"py.*"}`.

use regex::{Regex, RegexBuilder};

use agent_core::model::LabelSet;

/// How a matcher compares.
#[derive(Clone, Debug)]
pub enum MatchOp {
    /// `=`
    Equal(String),
    /// `!=`
    NotEqual(String),
    /// `=~` (fully anchored)
    Regex(Regex),
    /// `!~` (fully anchored)
    NotRegex(Regex),
}

/// One `name op "value"` matcher. A missing label matches as the empty string.
#[derive(Clone, Debug)]
pub struct Matcher {
    /// Label name.
    pub name: String,
    /// Comparison.
    pub op: MatchOp,
}

impl Matcher {
    /// True when `labels` satisfy this matcher.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        let value = labels.get(&self.name).unwrap_or("");
        match &self.op {
            MatchOp::Equal(v) => value == v,
            MatchOp::NotEqual(v) => value != v,
            MatchOp::Regex(r) => r.is_match(value),
            MatchOp::NotRegex(r) => !r.is_match(value),
        }
    }
}

/// The longest selector parsed, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// The most matchers in one selector.
pub const MAX_MATCHERS: usize = 32;
/// Memory one compiled regex (and its lazy DFA) may take: a selector from
/// a stranger (the HTTP view) must not cost gigabytes.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// A parsed selector: every matcher must hold.
#[derive(Clone, Debug, Default)]
pub struct Selector(pub Vec<Matcher>);

impl Selector {
    /// True when every matcher holds.
    pub fn matches(&self, labels: &LabelSet) -> bool {
        self.0.iter().all(|m| m.matches(labels))
    }

    /// Parses `{name="value", ...}`; an empty string or `{}` selects everything.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::default());
        }
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(format!(
                "the selector is {} bytes long, more than the limit of {MAX_SELECTOR_BYTES}",
                text.len()
            ));
        }
        let inner = text
            .strip_prefix('{')
            .and_then(|t| t.strip_suffix('}'))
            .ok_or_else(|| format!("`{text}` is not a selector like {{comm=\"nginx\"}}"))?;
        let mut matchers = Vec::new();
        let mut rest = inner.trim_start();
        while !rest.is_empty() {
            let name_len = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            let name = &rest[..name_len];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                return Err(format!("expected a label name at `{rest}`"));
            }
            rest = rest[name_len..].trim_start();
            let (op, after) = ["=~", "!~", "!=", "="]
                .iter()
                .find_map(|op| rest.strip_prefix(op).map(|r| (*op, r)))
                .ok_or_else(|| format!("expected =, !=, =~ or !~ after `{name}`"))?;
            let (value, after) = quoted(after.trim_start())?;
            let anchored = || {
                RegexBuilder::new(&format!("^(?:{value})$"))
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .build()
                    .map_err(|e| format!("bad regex for `{name}`: {e}"))
            };
            let op = match op {
                "=" => MatchOp::Equal(value),
                "!=" => MatchOp::NotEqual(value),
                "=~" => MatchOp::Regex(anchored()?),
                _ => MatchOp::NotRegex(anchored()?),
            };
            if matchers.len() == MAX_MATCHERS {
                return Err(format!("more than {MAX_MATCHERS} matchers"));
            }
            matchers.push(Matcher {
                name: name.to_owned(),
                op,
            });
            rest = after.trim_start();
            rest = match rest.strip_prefix(',') {
                Some(r) => r.trim_start(),
                None if rest.is_empty() => rest,
                None => return Err(format!("expected `,` or `}}` at `{rest}`")),
            };
        }
        Ok(Self(matchers))
    }
}

/// A double-quoted string with `\"` and `\\` escapes; returns it and the rest.
fn quoted(text: &str) -> Result<(String, &str), String> {
    let body = text
        .strip_prefix('"')
        .ok_or_else(|| format!("expected a quoted value at `{text}`"))?;
    let mut value = String::new();
    let mut chars = body.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Ok((value, &body[i + 1..])),
            '\\' => match chars.next() {
                Some((_, 'n')) => value.push('\n'),
                Some((_, c)) => value.push(c),
                None => break,
            },
            c => value.push(c),
        }
    }
    Err(format!("unterminated value at `{text}`"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operator() {
        let labels = LabelSet::new([("comm", "nginx"), ("pid", "1234")]);
        for (selector, expected) in [
            ("", true),
            ("{}", true),
            (r#"{comm="nginx"}"#, true),
            (r#"{comm="nginx",pid="1234"}"#, true),
            (r#"{ comm = "nginx" , pid != "1" }"#, true),
            (r#"{comm!="nginx"}"#, false),
            (r#"{comm=~"ng.*"}"#, true),
            (r#"{comm=~"ng"}"#, false), // anchored
            (r#"{comm!~"ng.*"}"#, false),
            (r#"{missing=""}"#, true),
            (r#"{missing!=""}"#, false),
            (r#"{comm="say \"hi\""}"#, false),
        ] {
            let s = Selector::parse(selector).unwrap_or_else(|e| panic!("{selector}: {e}"));
            assert_eq!(s.matches(&labels), expected, "{selector}");
        }
    }

    #[test]
    fn errors_say_where() {
        for bad in [
            "comm=\"x\"",
            "{comm}",
            "{comm=x}",
            "{comm=\"x\" pid=\"1\"}",
            "{comm=~\"(\"}",
            "{comm=\"x}",
            "{1a=\"x\"}",
        ] {
            assert!(Selector::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn selectors_from_strangers_are_bounded() {
        // Nested repetitions compile to more than the regex size limit.
        let huge = Selector::parse(r#"{comm=~"((a{100}){100}){100}"}"#).unwrap_err();
        assert!(huge.contains("bad regex for `comm`"), "{huge}");
        let many: Vec<String> = (0..=MAX_MATCHERS).map(|i| format!("l{i}=\"x\"")).collect();
        let err = Selector::parse(&format!("{{{}}}", many.join(","))).unwrap_err();
        assert!(err.contains("more than 32 matchers"), "{err}");
        assert!(Selector::parse(&format!("{{{}}}", many[..MAX_MATCHERS].join(","))).is_ok());
        let long = format!("{{comm=\"{}\"}}", "x".repeat(MAX_SELECTOR_BYTES));
        assert!(Selector::parse(&long)
            .unwrap_err()
            .contains("limit of 4096"));
    }
}
