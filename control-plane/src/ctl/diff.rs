//! Line diffs for showing spec changes (`sidestreamctl diff`, `apply`), by the
//! `similar` crate: Myers' algorithm in O((n + m) · d) time and linear memory,
//! so two maximal release policies (64 rules × 1,024 values, ~130,000 lines
//! each when pretty-printed) diff in milliseconds where a full LCS table
//! would need tens of gigabytes.

use similar::{ChangeTag, TextDiff};

/// One line of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line<'a> {
    /// In both.
    Same(&'a str),
    /// Only in the old text.
    Removed(&'a str),
    /// Only in the new text.
    Added(&'a str),
}

/// The line diff of `old` and `new` (lines without their line ending).
pub fn diff_lines<'a>(old: &'a str, new: &'a str) -> Vec<Line<'a>> {
    TextDiff::from_lines(old, new)
        .iter_all_changes()
        .map(|change| {
            let text = change.value();
            let text = text
                .strip_suffix('\n')
                .map(|t| t.strip_suffix('\r').unwrap_or(t))
                .unwrap_or(text);
            match change.tag() {
                ChangeTag::Equal => Line::Same(text),
                ChangeTag::Delete => Line::Removed(text),
                ChangeTag::Insert => Line::Added(text),
            }
        })
        .collect()
}

/// The diff as text: "  same", "- removed", "+ added", indented by `indent`.
/// A missing final line ending is no change.
pub fn render(old: &str, new: &str, indent: &str) -> String {
    fn terminated(text: &str) -> std::borrow::Cow<'_, str> {
        if text.is_empty() || text.ends_with('\n') {
            text.into()
        } else {
            format!("{text}\n").into()
        }
    }
    let (old, new) = (terminated(old), terminated(new));
    let mut out = String::new();
    for line in diff_lines(&old, &new) {
        let (mark, text) = match line {
            Line::Same(t) => (' ', t),
            Line::Removed(t) => ('-', t),
            Line::Added(t) => ('+', t),
        };
        out.push_str(indent);
        out.push(mark);
        out.push(' ');
        out.push_str(text);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use sidestream_core::config::{parse_spec_value, Kind};

    #[test]
    fn shows_changed_lines() {
        let lines = diff_lines("a\nb\nc\n", "a\nx\nc\nd\n");
        assert_eq!(
            lines,
            vec![
                Line::Same("a"),
                Line::Removed("b"),
                Line::Added("x"),
                Line::Same("c"),
                Line::Added("d"),
            ]
        );
        assert_eq!(render("", "n", ""), "+ n\n");
        assert_eq!(render("a", "a\n", ""), "  a\n");
    }

    /// The largest release policy validation accepts: 64 rules, each listing
    /// 1,024 values, 16 groups.
    fn maximal_release_policy(tag: &str) -> Value {
        let groups: Vec<String> = (0..16).map(|g| format!("group-{g}")).collect();
        let rules: Vec<Value> = (0..64)
            .map(|r| {
                let values: Vec<String> = (0..1024).map(|v| format!("{tag}-{r}-{v}")).collect();
                json!({"type": "header", "name": format!("x-rule-{r}"), "in": values, "group": groups[r % 16]})
            })
            .collect();
        json!({"groups": groups, "defaultGroup": "group-0", "rules": rules})
    }

    #[test]
    fn diffs_two_maximal_release_policies() {
        let old_spec = maximal_release_policy("old");
        let mut new_spec = old_spec.clone();
        // Change one value in every rule.
        for r in 0..64 {
            new_spec["rules"][r]["in"][r * 16] = json!(format!("new-{r}"));
        }
        for spec in [&old_spec, &new_spec] {
            parse_spec_value(Kind::Release, "biggest", spec.clone())
                .unwrap_or_else(|e| panic!("the maximal policy must be valid: {e}"));
        }
        let old = serde_json::to_string_pretty(&old_spec).unwrap();
        let new = serde_json::to_string_pretty(&new_spec).unwrap();
        assert!(old.lines().count() > 64 * 1024);
        let lines = diff_lines(&old, &new);
        let removed: Vec<&str> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Removed(t) => Some(t.trim()),
                _ => None,
            })
            .collect();
        let added: Vec<&str> = lines
            .iter()
            .filter_map(|l| match l {
                Line::Added(t) => Some(t.trim()),
                _ => None,
            })
            .collect();
        assert_eq!(removed.len(), 64, "one removed line per rule");
        assert_eq!(added.len(), 64, "one added line per rule");
        assert_eq!(removed[5], "\"old-5-80\",");
        assert_eq!(added[5], "\"new-5\",");
        let same = lines.iter().filter(|l| matches!(l, Line::Same(_))).count();
        assert_eq!(same + removed.len(), old.lines().count());
    }
}
