//! Typed states as the daemon reads them from the engine's snapshot (`Endpoint::ike_sas`), each
//! rendering to the one word that status text, JSON, metrics and the API show.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;

use vpngw_ike::{ChildSaState, IkeSaInfo, IkeSaState};

/// A connection as `vpngw status` shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConnectionState {
    /// An established IKE SA and an active child SA for each subnet pair.
    Up,
    /// An IKE SA exists, but not all of that yet.
    Connecting,
    /// No IKE SA.
    Down,
}

impl ConnectionState {
    /// Every state, in the order counts show them.
    pub const ALL: [ConnectionState; 3] = [Self::Up, Self::Connecting, Self::Down];

    /// The connection `name` with `subnet_pairs` subnet pairs, among the engine's IKE SAs.
    pub fn of<S: Borrow<IkeSaInfo>>(sas: &[S], name: &str, subnet_pairs: usize) -> Self {
        if connection_up(sas, name, subnet_pairs) {
            Self::Up
        } else if sas.iter().any(|s| s.borrow().peer == name) {
            Self::Connecting
        } else {
            Self::Down
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Up => "up",
            Self::Connecting => "connecting",
            Self::Down => "down",
        }
    }
}

impl std::fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a connection's IKE SA is, as the metrics label it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IkeProgress {
    #[default]
    None,
    Negotiating,
    Established,
}

impl IkeProgress {
    pub const ALL: [IkeProgress; 3] = [Self::None, Self::Negotiating, Self::Established];

    /// Of the connection's current IKE SA ([`current_ike_sa`]).
    pub fn of(current: Option<&IkeSaInfo>) -> Self {
        match current {
            None => Self::None,
            Some(s) if s.state == IkeSaState::Established => Self::Established,
            Some(_) => Self::Negotiating,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Negotiating => "negotiating",
            Self::Established => "established",
        }
    }
}

/// The IKE SA status and metrics show for a connection: the newest established one, else the
/// newest negotiating one.
pub fn current_ike_sa<'a, S: Borrow<IkeSaInfo>>(sas: &'a [S], name: &str) -> Option<&'a IkeSaInfo> {
    sas.iter().map(Borrow::borrow).filter(|s| s.peer == name).max_by_key(|s| (s.established_at.is_some(), s.id))
}

/// Whether a connection is up: an established IKE SA and an active child SA for each of its
/// subnet pairs, among the engine's IKE SAs (`Endpoint::ike_sas`).
pub fn connection_up<S: Borrow<IkeSaInfo>>(sas: &[S], name: &str, subnet_pairs: usize) -> bool {
    let sas = sas.iter().map(Borrow::borrow);
    let established = sas.clone().any(|s: &IkeSaInfo| s.peer == name && s.state == IkeSaState::Established);
    let active = sas
        .filter(|s| s.peer == name)
        .flat_map(|s| s.children.iter())
        .filter(|c| c.state == ChildSaState::Active)
        .count();
    established && active >= subnet_pairs
}

/// A child SA's state in JSON: its word (`ChildSaState::as_str`).
pub mod child_sa_state_serde {
    use super::*;

    pub fn serialize<S: Serializer>(state: &ChildSaState, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(state.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ChildSaState, D::Error> {
        let word = String::deserialize(d)?;
        [ChildSaState::Installing, ChildSaState::Active, ChildSaState::Replaced]
            .into_iter()
            .find(|s| s.as_str() == word)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown child SA state {word:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_render_to_the_words_status_and_metrics_always_showed() {
        let words: Vec<String> = [ConnectionState::Up, ConnectionState::Connecting, ConnectionState::Down]
            .iter()
            .map(|s| serde_json::to_string(s).unwrap_or_default())
            .collect();
        assert_eq!(words, ["\"up\"", "\"connecting\"", "\"down\""]);
        assert_eq!(ConnectionState::Connecting.to_string(), "connecting");
        let back: ConnectionState = serde_json::from_str("\"down\"").unwrap_or(ConnectionState::Up);
        assert_eq!(back, ConnectionState::Down);
        assert_eq!(IkeProgress::ALL.map(IkeProgress::as_str), ["none", "negotiating", "established"]);

        #[derive(Serialize, Deserialize, PartialEq, Debug)]
        struct Child {
            #[serde(with = "child_sa_state_serde")]
            state: ChildSaState,
        }
        for (state, word) in [
            (ChildSaState::Installing, "installing"),
            (ChildSaState::Active, "active"),
            (ChildSaState::Replaced, "replaced"),
        ] {
            let json = serde_json::to_string(&Child { state }).unwrap_or_default();
            assert_eq!(json, format!("{{\"state\":\"{word}\"}}"));
            assert_eq!(serde_json::from_str::<Child>(&json).ok(), Some(Child { state }));
        }
        assert!(serde_json::from_str::<Child>("{\"state\":\"gone\"}").is_err());
    }
}
