//! Where a problem is in the file: its key path (`connection[0].ike.dh_group`) looked up in a
//! second, span-keeping parse of the same text (`toml::de::DeTable`), and the name of the
//! connection it is in. The walker stays on `toml::Table`; this runs once per load, after it.

use std::collections::BTreeMap;

use toml::de::{DeTable, DeValue};
use toml::{Table, Value};

use super::walker::{Position, Problem, valid_name};

/// The line and column (from 1) of byte `offset` in `text`.
pub fn position(text: &str, offset: usize) -> Position {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before.get(line_start..).map_or(0, |l| l.chars().count()) + 1;
    Position { line, column }
}

/// One step of a key path: a key of a table, or an index into an array.
#[derive(Debug, PartialEq, Eq)]
enum Step<'k> {
    Key(&'k str),
    Index(usize),
}

/// `connection[0].local_subnets[1]` -> connection, 0, local_subnets, 1. None for a key the
/// walker would not write (an index that is not a number).
fn steps(key: &str) -> Option<Vec<Step<'_>>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let (name, mut rest) = part.split_once('[').map_or((part, ""), |(n, r)| (n, r));
        out.push(Step::Key(name));
        while !rest.is_empty() {
            let (index, after) = rest.split_once(']')?;
            out.push(Step::Index(index.parse().ok()?));
            rest = after.strip_prefix('[').unwrap_or(after);
        }
    }
    Some(out)
}

/// Where `key` is: the value's start, or the key's own when `at_key` (an unknown key points at
/// itself, not at its value); for a key that is not in the file (a required one), where the
/// nearest enclosing table or array is.
fn span_of(root: &DeTable<'_>, key: &str, at_key: bool) -> Option<usize> {
    let steps = steps(key)?;
    let mut best = None;
    let mut table = Some(root);
    let mut current: Option<&DeValue<'_>> = None;
    for (i, step) in steps.iter().enumerate() {
        let last = i + 1 == steps.len();
        match step {
            Step::Key(name) => {
                let t = table?;
                let (k, v) = t.get_key_value(*name)?;
                best = Some(if last && at_key { k.span().start } else { v.span().start });
                current = Some(v.get_ref());
            }
            Step::Index(n) => {
                let item = current.and_then(DeValue::as_array).and_then(|a| a.get(*n))?;
                best = Some(item.span().start);
                current = Some(item.get_ref());
            }
        }
        table = current.and_then(DeValue::as_table);
        // Deeper steps that are missing keep the best found so far.
        if !last && table.is_none() && !matches!(steps.get(i + 1), Some(Step::Index(_))) {
            break;
        }
    }
    best
}

/// The key path `key` as far as it is in the file: the whole, or its nearest ancestor.
fn nearest(root: &DeTable<'_>, key: &str, at_key: bool) -> Option<usize> {
    let mut k = key;
    loop {
        if let Some(s) = span_of(root, k, at_key && k.len() == key.len()) {
            return Some(s);
        }
        let cut = k.rfind(['.', '['])?;
        k = &k[..cut];
    }
}

/// Each `[[connection]]`'s name by its index, when it is valid and no other connection of the
/// file has it (a duplicate is named by its index).
pub fn connection_names(root: &Table) -> BTreeMap<usize, String> {
    let Some(Value::Array(list)) = root.get("connection") else { return BTreeMap::new() };
    let names: Vec<Option<&str>> =
        list.iter().map(|c| c.get("name").and_then(Value::as_str).filter(|n| valid_name(n))).collect();
    (names.iter().enumerate())
        .filter_map(|(i, n)| n.filter(|n| names.iter().filter(|m| **m == Some(*n)).count() == 1).map(|n| (i, n.into())))
        .collect()
}

/// The connection index a key is under: `connection[3].ike` -> 3.
fn connection_index(key: &str) -> Option<usize> {
    key.strip_prefix("connection[")?.split_once(']')?.0.parse().ok()
}

/// Gives each problem its connection's name and its position in `text` (the file `root` was
/// parsed from). Problems whose key is not in the file keep no position.
pub fn locate(text: &str, root: &Table, problems: &mut [Problem]) {
    let names = connection_names(root);
    let spanned = DeTable::parse(text).ok();
    for p in problems {
        if p.connection.is_none() {
            p.connection = connection_index(&p.key).and_then(|i| names.get(&i).cloned());
        }
        if p.at.is_none()
            && let Some(table) = &spanned
        {
            p.at = nearest(table.get_ref(), &p.key, p.value.is_empty()).map(|offset| position(text, offset));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "[gateway]\npublic_address = \"198.51.100.1\"\n\n[[connection]]\nname = \"a\"\n\
                        local_subnets = [\"10.1.0.0/24\", \"10.1.1.1/24\"]\n[connection.ike]\n  dh_group = \"dh3\"\n\n\
                        [[connection]]\nname = \"a\"\ncolour = 1\n";

    fn at(key: &str, at_key: bool) -> Option<(usize, usize)> {
        let t = DeTable::parse(TEXT).unwrap();
        nearest(t.get_ref(), key, at_key).map(|o| position(TEXT, o)).map(|p| (p.line, p.column))
    }

    #[test]
    fn keys_are_found_where_they_are_written() {
        assert_eq!(at("gateway.public_address", false), Some((2, 18)));
        assert_eq!(at("connection[0].ike.dh_group", false), Some((8, 14)));
        assert_eq!(at("connection[0].ike.dh_group", true), Some((8, 3)));
        assert_eq!(at("connection[0].local_subnets[1]", false), Some((6, 33)));
        assert_eq!(at("connection[1].colour", true), Some((12, 1)));
        // Not in the file: the nearest enclosing part that is.
        let missing = at("connection[1].remote_address", false).unwrap();
        assert!(missing.0 >= 10, "{missing:?}");
        assert_eq!(at("gateway.control_socket", false).map(|p| p.0), at("gateway", false).map(|p| p.0));
        assert_eq!(at("nothing.here", false), None);
    }

    #[test]
    fn connections_are_named_only_by_names_of_their_own() {
        let root: Table = TEXT.replacen("name = \"a\"", "name = \"b\"", 1).parse().unwrap();
        assert_eq!(connection_names(&root), BTreeMap::from([(0, "b".to_string()), (1, "a".to_string())]));
        let root: Table = TEXT.parse().unwrap();
        assert!(connection_names(&root).is_empty(), "a duplicate name names neither");
        let mut p = [Problem { key: "connection[0].ike.dh_group".into(), ..Problem::default() }];
        let root: Table = TEXT.replacen("name = \"a\"", "name = \"to-branch\"", 1).parse().unwrap();
        locate(&TEXT.replacen("name = \"a\"", "name = \"to-branch\"", 1), &root, &mut p);
        assert_eq!(p[0].shown_key(), "connection \"to-branch\".ike.dh_group");
        assert_eq!(p[0].at, Some(Position { line: 8, column: 3 }));
    }
}
