//! A hostile peer for tests: an engine whose outgoing payloads a test rewrites before they are
//! hashed and encrypted, so that the victim sees authentic messages (valid HASH, right keys)
//! carrying whatever the test chose: zero or huge lifetimes, short or long nonces, reserved
//! SPIs, unknown notifies, more attributes than anyone sends.
//!
//! The rewrite happens in `encode_payloads`, which both the HASH computations and the message
//! encoder call: a rewrite that depends only on the payloads it is given (a pure function)
//! yields the same bytes in both, so the HASH matches. It applies only inside [`as_hostile`]
//! on the current thread: the victim, driven on the same thread outside it, encodes normally.

use std::cell::{Cell, RefCell};

use crate::wire::Payload;

/// A rewrite of a payload chain: `None` leaves it as it is. Must be a pure function of its
/// input (see the module's doc).
pub type Rewrite = Box<dyn Fn(&[Payload]) -> Option<Vec<Payload>>>;

thread_local! {
    static REWRITE: RefCell<Option<Rewrite>> = const { RefCell::new(None) };
    static ACTIVE: Cell<bool> = const { Cell::new(false) };
}

/// Sets (or with `None` clears) the rewrite for this thread.
pub fn set_rewrite(rewrite: Option<Rewrite>) {
    REWRITE.with(|r| *r.borrow_mut() = rewrite);
}

/// Runs `f` as the hostile engine: its payloads are rewritten.
pub fn as_hostile<R>(f: impl FnOnce() -> R) -> R {
    let before = ACTIVE.with(|a| a.replace(true));
    let out = f();
    ACTIVE.with(|a| a.set(before));
    out
}

/// The chain to encode: rewritten when a hostile engine is encoding.
pub(crate) fn rewrite(payloads: &[Payload]) -> Option<Vec<Payload>> {
    if !ACTIVE.with(Cell::get) {
        return None;
    }
    REWRITE.with(|r| r.borrow().as_ref().and_then(|f| f(payloads)))
}
