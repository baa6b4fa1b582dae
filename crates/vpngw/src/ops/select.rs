//! Which connections a read shows (issue 20: thousands of tunnels): filters by state and by a
//! glob on the name, and pages in name order with a cursor (`after`: the last name of the page
//! before). `vpngw status`, `vpngw connection list` and the API's `GET /status` and `GET
//! /connections` send a [`Selection`]; the daemon applies it ([`select`]) before it builds
//! any connection's view, so a page of 20 out of 5,000 builds 20 views.
//!
//! The cursor is a name, not an offset: a connection added or removed between two pages moves
//! nothing else, and a cursor naming a connection deleted meanwhile still says where to go on.

use serde::{Deserialize, Serialize};

use crate::state::ConnectionState;

/// The largest `limit` taken. Not a cap on what a read returns (without `limit` it returns
/// every connection, as before paging existed): the bound of what the parameter accepts.
pub const MAX_LIMIT: usize = 100_000;

/// The longest name pattern (as the longest connection name).
const MAX_PATTERN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SelectError {
    #[error("{0:?} is not a connection state (up, connecting, down)")]
    State(String),
    #[error(
        "{0:?} is not a name pattern: 1-64 letters, digits, '-', '_', '.', and the wildcards '*' (any run of characters) and '?' (one character)"
    )]
    Pattern(String),
    #[error("{0:?} is not a connection name (1-64 letters, digits, '-', '_' and '.')")]
    After(String),
    #[error("{0:?} is not a number of connections from 0 to {MAX_LIMIT}")]
    Limit(String),
}

/// A glob on connection names: `*` any run of characters (also none), `?` one character,
/// anything else itself. Connection names hold neither wildcard, so a pattern without one
/// matches that name only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NamePattern(String);

impl NamePattern {
    pub fn parse(text: &str) -> Result<Self, SelectError> {
        let ok = !text.is_empty()
            && text.len() <= MAX_PATTERN
            && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.*?".contains(c));
        if ok { Ok(Self(text.to_string())) } else { Err(SelectError::Pattern(text.to_string())) }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `name` matches: the classic greedy match with one backtrack point (the last
    /// `*`), linear in practice and at most pattern x name steps (64 x 64).
    pub fn matches(&self, name: &str) -> bool {
        let (p, n) = (self.0.as_bytes(), name.as_bytes());
        let (mut i, mut j) = (0, 0);
        let mut star: Option<(usize, usize)> = None;
        while j < n.len() {
            match p.get(i) {
                Some(b'*') => {
                    star = Some((i, j));
                    i += 1;
                }
                Some(&c) if c == b'?' || c == n[j] => {
                    i += 1;
                    j += 1;
                }
                _ => match star {
                    // The last `*` takes one more character and the rest is tried again.
                    Some((si, sj)) => {
                        star = Some((si, sj + 1));
                        i = si + 1;
                        j = sj + 1;
                    }
                    None => return false,
                },
            }
        }
        p[i.min(p.len())..].iter().all(|&c| c == b'*')
    }
}

impl TryFrom<String> for NamePattern {
    type Error = SelectError;

    fn try_from(text: String) -> Result<Self, SelectError> {
        Self::parse(&text)
    }
}

impl From<NamePattern> for String {
    fn from(p: NamePattern) -> Self {
        p.0
    }
}

/// A state as a filter takes it: the word status shows.
pub fn parse_state(word: &str) -> Result<ConnectionState, SelectError> {
    ConnectionState::ALL.into_iter().find(|s| s.as_str() == word).ok_or_else(|| SelectError::State(word.to_string()))
}

/// The cursor: a connection name (it need not exist any more).
pub fn parse_after(text: &str) -> Result<String, SelectError> {
    let ok =
        !text.is_empty() && text.len() <= 64 && text.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok { Ok(text.to_string()) } else { Err(SelectError::After(text.to_string())) }
}

/// A page size: 0 to [`MAX_LIMIT`]; 0 counts without listing.
pub fn parse_limit(text: &str) -> Result<usize, SelectError> {
    // Digits only: no sign, no space (usize's parser takes a leading '+').
    match text.parse::<usize>() {
        Ok(n) if n <= MAX_LIMIT && text.bytes().all(|b| b.is_ascii_digit()) => Ok(n),
        _ => Err(SelectError::Limit(text.to_string())),
    }
}

/// Which connections a read shows. The default is every connection, in name order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Only connections in one of these states (empty: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub states: Vec<ConnectionState>,
    /// Only connections whose name matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<NamePattern>,
    /// Only the connection of exactly this name (`status NAME`, the API's path); no wildcards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Only connections whose names sort after this one (byte order): the next page's cursor.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// At most this many (none: all); 0 only counts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

impl Selection {
    /// The connection named `name` only.
    pub fn exactly(name: &str) -> Self {
        Self { exact: Some(name.to_string()), ..Self::default() }
    }

    /// Whether it narrows or pages anything (the plain "everything" does not).
    pub fn is_everything(&self) -> bool {
        *self == Self::default()
    }
}

/// How many connections are in each state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateCounts {
    pub up: usize,
    pub connecting: usize,
    pub down: usize,
}

impl StateCounts {
    fn add(&mut self, state: ConnectionState) {
        match state {
            ConnectionState::Up => self.up += 1,
            ConnectionState::Connecting => self.connecting += 1,
            ConnectionState::Down => self.down += 1,
        }
    }
}

/// What a selection found, beside the page itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Page {
    /// The connections that match the filters (state, name), on every page: the cursor and the
    /// limit do not change it.
    pub matched: usize,
    /// Of those, how many in each state.
    pub by_state: StateCounts,
    /// The last name of this page when more match after it: `after` for the next page. Absent
    /// on the last page (and with `limit` 0, which lists nothing to go on from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// The items `selection` picks, in name order, and the page's numbers. `state_of` is asked
/// once per item that passes the name filters (the counts need every match's state).
pub fn select<'a, T>(
    items: &'a [T],
    name_of: impl Fn(&T) -> &str,
    state_of: impl Fn(&T) -> ConnectionState,
    selection: &Selection,
) -> (Vec<&'a T>, Page) {
    let mut page = Page::default();
    let mut listed: Vec<&T> = Vec::new();
    for item in items {
        let name = name_of(item);
        if selection.exact.as_deref().is_some_and(|e| e != name)
            || selection.name.as_ref().is_some_and(|p| !p.matches(name))
        {
            continue;
        }
        let state = state_of(item);
        if !selection.states.is_empty() && !selection.states.contains(&state) {
            continue;
        }
        page.matched += 1;
        page.by_state.add(state);
        if selection.after.as_deref().is_none_or(|after| name > after) {
            listed.push(item);
        }
    }
    // Names are unique: the order is total, so pages never overlap or skip.
    listed.sort_unstable_by(|a, b| name_of(a).cmp(name_of(b)));
    if let Some(limit) = selection.limit
        && listed.len() > limit
    {
        listed.truncate(limit);
        page.next_after = listed.last().map(|last| name_of(last).to_string());
    }
    (listed, page)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use super::*;
    use ConnectionState::{Connecting, Down, Up};

    fn pattern(p: &str) -> NamePattern {
        NamePattern::parse(p).unwrap()
    }

    #[test]
    fn patterns_match_as_shell_globs_and_refuse_what_no_name_holds() {
        for (p, name, want) in [
            ("branch-*", "branch-1", true),
            ("branch-*", "branch-", true),
            ("branch-*", "branch", false),
            ("branch-*", "xbranch-1", false),
            ("*-east", "branch-7-east", true),
            ("*-east", "branch-7-west", false),
            ("b?", "b1", true),
            ("b?", "b", false),
            ("b?", "b12", false),
            ("*", "anything", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a*a*a", "aaaa", true),
            ("*a", "bbbab", false),
            ("**", "x", true),
            ("to-right", "to-right", true),
            ("to-right", "to-right2", false),
            ("to.right", "toxright", false),
        ] {
            assert_eq!(pattern(p).matches(name), want, "{p} ~ {name}");
        }
        let too_long = "a".repeat(65);
        for bad in ["", "branch 1", "branch/1", "[ab]", "ä", too_long.as_str()] {
            assert_eq!(NamePattern::parse(bad), Err(SelectError::Pattern(bad.to_string())), "{bad:?}");
        }
        // Over the control socket, too: a pattern that does not parse is refused.
        assert!(serde_json::from_str::<NamePattern>("\"a b\"").is_err());
        assert_eq!(serde_json::from_str::<NamePattern>("\"b*\"").unwrap(), pattern("b*"));
    }

    #[test]
    fn states_limits_and_cursors_parse_or_say_why_not() {
        assert_eq!(parse_state("up"), Ok(Up));
        assert_eq!(parse_state("connecting"), Ok(Connecting));
        assert_eq!(parse_state("established"), Err(SelectError::State("established".into())));
        assert_eq!(parse_limit("0"), Ok(0));
        assert_eq!(parse_limit("100000"), Ok(MAX_LIMIT));
        for bad in ["", "-1", "+5", "1.5", "100001", "99999999999999999999999", "ten"] {
            assert_eq!(parse_limit(bad), Err(SelectError::Limit(bad.into())), "{bad:?}");
        }
        assert_eq!(parse_after("branch-0020"), Ok("branch-0020".into()));
        for bad in ["", "branch-*", "a b"] {
            assert_eq!(parse_after(bad), Err(SelectError::After(bad.into())), "{bad:?}");
        }
    }

    /// (name, state) in the configuration's order, which is not the names' order.
    const ITEMS: [(&str, ConnectionState); 6] = [
        ("branch-3", Down),
        ("hq", Up),
        ("branch-1", Up),
        ("branch-10", Connecting),
        ("branch-2", Down),
        ("lab", Down),
    ];

    fn run(selection: &Selection) -> (Vec<&'static str>, Page) {
        let (items, page) = select(&ITEMS, |i| i.0, |i| i.1, selection);
        (items.into_iter().map(|i| i.0).collect(), page)
    }

    fn counts(up: usize, connecting: usize, down: usize) -> StateCounts {
        StateCounts { up, connecting, down }
    }

    #[test]
    fn everything_comes_in_name_order_with_the_counts() {
        let (names, page) = run(&Selection::default());
        assert_eq!(names, ["branch-1", "branch-10", "branch-2", "branch-3", "hq", "lab"]);
        assert_eq!(page, Page { matched: 6, by_state: counts(2, 1, 3), next_after: None });
    }

    #[test]
    fn filters_combine_and_count_what_they_match() {
        let down_branches = Selection { states: vec![Down], name: Some(pattern("branch-*")), ..Selection::default() };
        let (names, page) = run(&down_branches);
        assert_eq!(names, ["branch-2", "branch-3"]);
        assert_eq!(page, Page { matched: 2, by_state: counts(0, 0, 2), next_after: None });
        let (names, page) = run(&Selection { states: vec![Up, Connecting], ..Selection::default() });
        assert_eq!((names, page.by_state), (vec!["branch-1", "branch-10", "hq"], counts(2, 1, 0)));
        // Nothing matches: an empty page, counted as such (not an error).
        let (names, page) = run(&Selection { name: Some(pattern("nope*")), ..Selection::default() });
        assert!(names.is_empty());
        assert_eq!(page, Page::default());
        // Exact: that name only, whatever it holds (no wildcards).
        assert_eq!(run(&Selection::exactly("hq")).0, ["hq"]);
        assert!(run(&Selection::exactly("h*")).0.is_empty());
    }

    #[test]
    fn pages_follow_the_cursor_to_the_end_without_overlap() {
        let mut selection = Selection { limit: Some(4), ..Selection::default() };
        let (names, page) = run(&selection);
        assert_eq!(names, ["branch-1", "branch-10", "branch-2", "branch-3"]);
        assert_eq!(page.next_after.as_deref(), Some("branch-3"));
        assert_eq!(page.matched, 6, "the total on every page");
        selection.after = page.next_after;
        let (names, page) = run(&selection);
        assert_eq!(names, ["hq", "lab"]);
        assert_eq!((page.matched, page.next_after), (6, None), "the last page");
        // A page that ends exactly at the last match says there is no more.
        let (names, page) = run(&Selection { limit: Some(2), after: Some("branch-3".into()), ..Selection::default() });
        assert_eq!((names, page.next_after), (vec!["hq", "lab"], None));
    }

    #[test]
    fn cursor_edges_past_the_end_deleted_and_limit_zero() {
        // Past the last name: an empty page, still with the total.
        let (names, page) = run(&Selection { after: Some("zz".into()), ..Selection::default() });
        assert!(names.is_empty());
        assert_eq!((page.matched, page.next_after), (6, None));
        // A cursor naming a connection that is gone: the page goes on after where it was.
        let (names, _) = run(&Selection { after: Some("branch-25".into()), limit: Some(1), ..Selection::default() });
        assert_eq!(names, ["branch-3"]);
        // limit 0: only the counts, and no cursor (there is no last name to go on from).
        let (names, page) = run(&Selection { limit: Some(0), states: vec![Down], ..Selection::default() });
        assert!(names.is_empty());
        assert_eq!(page, Page { matched: 3, by_state: counts(0, 0, 3), next_after: None });
        // A limit larger than what matched: everything, no next page.
        let (names, page) = run(&Selection { limit: Some(MAX_LIMIT), ..Selection::default() });
        assert_eq!((names.len(), page.next_after), (6, None));
    }

    #[test]
    fn the_state_is_asked_only_for_names_that_match() {
        let asked = std::cell::Cell::new(0);
        let selection = Selection { name: Some(pattern("branch-1*")), ..Selection::default() };
        let (names, _) = select(
            &ITEMS,
            |i| i.0,
            |i| {
                asked.set(asked.get() + 1);
                i.1
            },
            &selection,
        );
        assert_eq!((names.len(), asked.get()), (2, 2));
    }

    #[test]
    fn a_selection_travels_over_the_control_socket_and_everything_is_the_default() {
        let s = Selection {
            states: vec![Down, Connecting],
            name: Some(pattern("branch-*")),
            exact: None,
            after: Some("branch-0020".into()),
            limit: Some(20),
        };
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"{"states":["down","connecting"],"name":"branch-*","after":"branch-0020","limit":20}"#);
        assert_eq!(serde_json::from_str::<Selection>(&json).unwrap(), s);
        assert_eq!(serde_json::from_str::<Selection>("{}").unwrap(), Selection::default());
        assert!(Selection::default().is_everything() && !s.is_everything());
    }
}
