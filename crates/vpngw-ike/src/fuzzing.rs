//! What one fuzz input does, shared by the `cargo fuzz` targets in `fuzz/` and the tests that
//! replay their corpora (`tests/fuzz_corpus.rs`), so both run the same code (feature `testing`).
//!
//! Every function here takes arbitrary bytes, must never panic, and checks the bounds that hold
//! for any input (a panic is the fuzzer's finding).

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use vpngw_crypto::FastRng;

use crate::testing::{A_ADDR, B_ADDR, Pair, configs, engine_config};
use crate::wire::{HEADER_LEN, IsakmpHeader, encode_payloads, parse_payloads};
use crate::{DpdAction, DpdPolicy, Endpoint, Event, PeerConfig, Phase2Policy};

/// ISAKMP decoding: the header, then the payload chain after it (as a cleartext message, and as
/// a decrypted one whose padding follows the chain). A chain that parses encodes back to a chain
/// that parses to the same payloads.
pub fn wire(data: &[u8]) {
    let Ok(header) = IsakmpHeader::parse(data) else { return };
    // `parse` checked HEADER_LEN <= length <= data.len().
    let body = &data[HEADER_LEN..header.length as usize];
    let mut again = Vec::new();
    header.encode(&mut again);
    again.extend_from_slice(body);
    assert_eq!(IsakmpHeader::parse(&again).as_ref(), Ok(&header), "a parsed header encodes to the same header");
    for allow_trailing in [false, true] {
        let Ok(chain) = parse_payloads(header.next_payload, body, allow_trailing) else { continue };
        assert!(chain.end <= body.len());
        let payloads: Vec<_> = chain.payloads.iter().map(|p| p.payload.clone()).collect();
        for p in &chain.payloads {
            assert!(p.range.end <= chain.end && p.body_range().start <= p.range.end);
        }
        let first = payloads.first().map_or(crate::wire::PayloadType::NONE, |p| p.kind());
        let encoded = encode_payloads(&payloads);
        let again = parse_payloads(first, &encoded, false)
            .map(|c| c.payloads.into_iter().map(|p| p.payload).collect::<Vec<_>>());
        assert_eq!(again.as_ref(), Ok(&payloads), "a parsed chain encodes to the same payloads");
    }
}

/// The fuzzed endpoint's connection: the standard pair's, with dead peer detection and PFS so
/// that more of the engine is reachable. The seed corpus comes from a [`Pair`] of these.
pub fn endpoint_configs() -> (PeerConfig, PeerConfig) {
    let (mut a, mut b) = configs();
    for c in [&mut a, &mut b] {
        c.dpd = Some(DpdPolicy { timeout: Duration::from_secs(30), action: DpdAction::Restart });
        c.phase2 = Phase2Policy { pfs: Some(c.phase1.dh_group), ..c.phase2.clone() };
    }
    (a, b)
}

/// The RNG seed of [`Pair::new`] for the seed corpus; A's RNG takes it, B's `SEED + 1000`
/// (as `Pair::new` does), so a fuzzed endpoint draws the same cookies, nonces and DH keys as
/// the recorded one and the recorded answers stay valid.
pub const SEED: u64 = 16;

/// One step of an endpoint input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// A datagram from the peer, to port 500 (or 4500 with `nat_t`, without the non-ESP marker).
    Datagram { nat_t: bool, data: Vec<u8> },
    /// The clock moves on this many seconds, then the endpoint's timers run.
    Wait(u16),
}

/// At most this many steps of an input are run (time per input stays bounded).
pub const MAX_STEPS: usize = 64;

/// The byte form of steps: a tag byte, then for a datagram (tag < 0x80; bit 0: port 4500) a
/// 16-bit big-endian length and the bytes (cut short at the input's end), for a wait (tag >=
/// 0x80) 16-bit big-endian seconds. Any bytes decode.
pub fn decode_steps(mut data: &[u8]) -> Vec<Step> {
    let mut steps = Vec::new();
    while let [tag, a, b, rest @ ..] = data
        && steps.len() < MAX_STEPS
    {
        let n = u16::from_be_bytes([*a, *b]);
        if tag & 0x80 == 0 {
            let (bytes, rest) = rest.split_at(usize::from(n).min(rest.len()));
            steps.push(Step::Datagram { nat_t: tag & 1 == 1, data: bytes.to_vec() });
            data = rest;
        } else {
            steps.push(Step::Wait(n));
            data = rest;
        }
    }
    steps
}

/// The inverse of [`decode_steps`] (seed corpora are written with it).
pub fn encode_steps(steps: &[Step]) -> Vec<u8> {
    let mut out = Vec::new();
    for s in steps {
        match s {
            Step::Datagram { nat_t, data } => {
                out.push(u8::from(*nat_t));
                out.extend_from_slice(&(data.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
                out.extend_from_slice(&data[..data.len().min(usize::from(u16::MAX))]);
            }
            Step::Wait(secs) => {
                out.push(0x80);
                out.extend_from_slice(&secs.to_be_bytes());
            }
        }
    }
    out
}

/// What an endpoint input led to (the replay tests check that seeds get far).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub ike_established: usize,
    pub child_established: usize,
    pub transmits: usize,
}

/// At most this many datagrams are sent in answer to one step: one datagram or one timer run
/// makes a bounded amount of output (answers, retransmissions, deletes).
pub const MAX_TRANSMITS_PER_STEP: usize = 64;

/// The endpoint as responder (B, waiting for A) or as initiator (A, which has sent its first
/// message to B), fed `data` as [`Step`]s from the peer's address on a virtual clock.
pub fn endpoint(initiator: bool, data: &[u8]) -> Outcome {
    let (a_cfg, b_cfg) = endpoint_configs();
    let (cfg, seed, local_ip, remote_ip) =
        if initiator { (a_cfg, SEED, A_ADDR, B_ADDR) } else { (b_cfg, SEED + 1000, B_ADDR, A_ADDR) };
    let name = cfg.name.clone();
    let mut ep = Endpoint::new(engine_config(), FastRng::from_seed_for_tests(seed));
    let added = ep.add_peer(cfg);
    assert!(added.is_ok(), "the fuzzed configuration is valid");
    let mut now = Instant::now();
    let mut outcome = Outcome::default();
    let mut made = 0usize; // steps and initiations: each may create an IKE SA or two
    if initiator {
        assert!(ep.initiate(now, &name).is_ok());
        made += 1;
        drain(&mut ep, &mut outcome);
    }
    let at = |ip, port| SocketAddr::new(IpAddr::V4(ip), port);
    for step in decode_steps(data) {
        match step {
            Step::Datagram { nat_t, data } => {
                let port = if nat_t { crate::NAT_T_PORT } else { crate::IKE_PORT };
                ep.handle(now, at(local_ip, port), at(remote_ip, port), &data);
            }
            Step::Wait(secs) => {
                now += Duration::from_secs(u64::from(secs));
                ep.handle_timeout(now);
            }
        }
        made += 1;
        drain(&mut ep, &mut outcome);
        // Without caps on half-open SAs yet (issue 16), the bound is one or two per step.
        assert!(ep.ike_sas().len() <= 2 * made, "{} IKE SAs after {made} steps", ep.ike_sas().len());
    }
    outcome
}

fn drain(ep: &mut Endpoint, outcome: &mut Outcome) {
    let mut sent = 0;
    while let Some(t) = ep.poll_transmit() {
        sent += 1;
        assert!(t.payload.len() <= usize::from(u16::MAX), "a datagram of {} bytes", t.payload.len());
    }
    assert!(sent <= MAX_TRANSMITS_PER_STEP, "{sent} datagrams sent for one step");
    outcome.transmits += sent;
    while let Some(e) = ep.poll_event() {
        match e {
            Event::IkeSaEstablished { .. } => outcome.ike_established += 1,
            Event::ChildSaEstablished { .. } => outcome.child_established += 1,
            _ => {}
        }
    }
}

/// Seed inputs for [`endpoint`] (responder, initiator): the datagrams each side received in an
/// in-memory negotiation of [`endpoint_configs`] (main mode, quick mode), then dead peer
/// detection, with the waits between them.
pub fn seed_inputs() -> (Vec<u8>, Vec<u8>) {
    let (a, b) = endpoint_configs();
    let mut p = Pair::new(a, b, SEED);
    let start = p.now;
    let initiated = p.a.initiate(p.now, "to-b");
    assert!(initiated.is_ok());
    // Then a dead peer detection exchange (probes after 10 s of silence).
    let mut to_b = Vec::new();
    let mut to_a = Vec::new();
    let mut last = start;
    let mut seen = 0;
    for secs in [0u64, 15] {
        p.drive_until(Duration::from_secs(secs));
        for (a_to_b, _, dst, data) in &p.wire[seen..] {
            let step = Step::Datagram { nat_t: dst.port() == crate::NAT_T_PORT, data: data.clone() };
            if *a_to_b { to_b.push(step) } else { to_a.push(step) }
        }
        seen = p.wire.len();
        let wait = u16::try_from(p.now.duration_since(last).as_secs()).unwrap_or(u16::MAX);
        last = p.now;
        to_b.push(Step::Wait(wait));
        to_a.push(Step::Wait(wait));
    }
    (encode_steps(&to_b), encode_steps(&to_a))
}
