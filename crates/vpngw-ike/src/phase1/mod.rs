//! Phase 1: main mode ([`main_mode`]) or aggressive mode ([`aggressive`]) with pre-shared keys,
//! as consuming typestates. [`Phase1`] is the IKE SA's phase 1 in whichever waiting state it
//! is; a finished step hands over [`Phase1Done`], the only way to the keys of an established
//! IKE SA.

mod aggressive;
mod auth;
mod main_mode;

pub(crate) use auth::{Failed, Phase1Done};

use self::aggressive::Aggressive;
use self::auth::Step;
use self::main_mode::MainMode;
use crate::config::ExchangeMode;
use crate::dh_work::DhResult;
use crate::event::IkeSaState;
use crate::exchange::{Ctx, ProtocolError, Received};
use crate::message::{Link, MessageCrypto};
use crate::proposal::Phase1Choice;

/// A phase 1 under way, waiting for the peer's next message.
pub(crate) enum Phase1 {
    Main(MainMode),
    Aggressive(Aggressive),
}

/// What a phase 1 message led to.
pub(crate) enum Phase1Outcome {
    Waiting(Box<Phase1>),
    Done(Box<Phase1Done>),
}

impl Phase1 {
    /// Sends our first message to the peer of `link` (its initiator cookie is set).
    pub fn initiate(ctx: &mut Ctx<'_>, link: &mut Link, initial_contact: bool) -> Self {
        match link.mode {
            ExchangeMode::Main => Self::Main(MainMode::initiate(ctx, link, initial_contact)),
            ExchangeMode::Aggressive => Self::Aggressive(Aggressive::initiate(ctx, link)),
        }
    }

    /// Answers the peer's first message (both cookies of `link` are set).
    pub fn respond(ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Self, Failed> {
        match link.mode {
            ExchangeMode::Main => Ok(Self::Main(MainMode::respond(ctx, link, rx)?)),
            ExchangeMode::Aggressive => Ok(Self::Aggressive(Aggressive::respond(ctx, link, rx)?)),
        }
    }

    /// The peer's next phase 1 message.
    pub fn handle(self, ctx: &mut Ctx<'_>, link: &mut Link, rx: &Received<'_>) -> Result<Phase1Outcome, Failed> {
        let step = match self {
            Self::Main(m) => m.handle(ctx, link, rx)?.map(Self::Main),
            Self::Aggressive(a) => a.handle(ctx, link, rx)?.map(Self::Aggressive),
        };
        Ok(match step {
            Step::Next(next) => Phase1Outcome::Waiting(Box::new(next)),
            Step::Done(done) => Phase1Outcome::Done(done),
        })
    }

    /// The result of the Diffie-Hellman work this phase 1 waits for (`dh_work.rs`).
    pub fn on_dh_done(self, ctx: &mut Ctx<'_>, link: &mut Link, result: DhResult) -> Result<Phase1Outcome, Failed> {
        let step = match self {
            Self::Main(m) => m.on_dh_done(ctx, link, result)?.map(Self::Main),
            // Aggressive mode computes in place: it never waits for work.
            aggressive @ Self::Aggressive(_) => Step::Next(aggressive),
        };
        Ok(match step {
            Step::Next(next) => Phase1Outcome::Waiting(Box::new(next)),
            Step::Done(done) => Phase1Outcome::Done(done),
        })
    }

    /// Waiting for Diffie-Hellman work: the peer's messages are not taken meanwhile.
    pub fn is_computing(&self) -> bool {
        matches!(self, Self::Main(m) if m.is_computing())
    }

    /// The keys, once derived (the last messages of phase 1 are encrypted).
    pub fn crypto(&self) -> Option<&MessageCrypto> {
        match self {
            Self::Main(m) => m.crypto(),
            Self::Aggressive(a) => a.crypto(),
        }
    }

    /// The proposal chosen, once known.
    pub fn choice(&self) -> Option<&Phase1Choice> {
        match self {
            Self::Main(m) => m.choice(),
            Self::Aggressive(a) => a.choice(),
        }
    }

    /// As responder, the peer's next message makes us compute Diffie-Hellman (main mode's
    /// third; aggressive mode's first is the one that created the SA).
    pub fn awaits_ke(&self) -> bool {
        matches!(self, Self::Main(m) if m.awaits_ke())
    }

    /// Our main mode message 5 waits for its answer.
    pub fn awaits_mm6(&self) -> bool {
        matches!(self, Self::Main(m) if m.awaits_mm6())
    }

    /// What giving up on the peer's answer means here.
    pub fn no_answer(&self, link: &Link, tries: u32) -> ProtocolError {
        use crate::event::FailReason;
        let first = match self {
            Self::Main(m) => m.awaits_first_reply(),
            Self::Aggressive(a) => a.awaits_first_reply(),
        };
        if self.awaits_mm6() {
            ProtocolError::unannounced(
                FailReason::AuthenticationFailed,
                "no answer to main mode message 5: likely pre-shared key mismatch (or the peer does not accept our identity)",
            )
        } else if first {
            ProtocolError::unannounced(
                FailReason::PeerUnreachable,
                format!("no answer from {} after {} retransmissions", link.remote, tries),
            )
        } else {
            ProtocolError::unannounced(
                FailReason::PeerUnreachable,
                format!("peer {} stopped answering during phase 1", link.remote),
            )
        }
    }

    /// Where the IKE SA stands, for status displays.
    pub fn state(&self) -> IkeSaState {
        match self {
            Self::Main(_) => IkeSaState::NegotiatingMain,
            Self::Aggressive(_) => IkeSaState::NegotiatingAggressive,
        }
    }
}
