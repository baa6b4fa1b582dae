//! The tokio side: dialing or accepting, the Noise handshake, and one task per session with a
//! reader and a writer. All decisions are [`State`]'s; this file moves bytes.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use snow::TransportState;
use tokio::io::{AsyncWriteExt as _, BufReader};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::{sleep, timeout};

use crate::key::SyncKey;
use crate::state::{End, Out, State};
use crate::wire::{self, Hello, MAX_FRAME, Msg, Reassembler};

pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
pub(crate) const RETRY: Duration = Duration::from_millis(200);
/// Outgoing messages queued for one session. A bulk is one slot; increments are one each, and
/// a standby that cannot take this many in a row is resynced rather than waited for.
pub(crate) const QUEUE: usize = 8192;
/// Handshakes in progress at once on the accepting side (garbage connections cannot pile up).
const MAX_HANDSHAKES: usize = 4;
/// A standby in a long burst of updates acknowledges at least this often.
const ACK_EVERY: Duration = Duration::from_millis(10);
/// Writer batches frames up to this many bytes per write.
const WRITE_BATCH: usize = 256 * 1024;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) node_name: String,
    pub(crate) partner_name: String,
    pub(crate) listen: SocketAddr,
    pub(crate) partner: SocketAddr,
    pub(crate) key: SyncKey,
    pub(crate) heartbeat: Duration,
    pub(crate) dead_after: Duration,
    pub(crate) state: Mutex<State>,
}

impl Shared {
    /// The state lock. A panic elsewhere while holding it leaves counters and maps that are
    /// still consistent enough to report and serve: keep going rather than poison the daemon.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn hello(&self) -> Hello {
        let (role, epoch) = self.lock().role();
        Hello { node: self.node_name.clone(), role, epoch, version: wire::PROTOCOL_VERSION }
    }
}

#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("noise: {0}")]
    Noise(#[from] snow::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("hello: {0}")]
    Hello(#[from] wire::WireError),
    #[error("timed out")]
    Timeout,
}

/// The lower-named node: dial the partner whenever there is no session.
pub(crate) async fn dialer(shared: Arc<Shared>, mut shutdown: watch::Receiver<()>) {
    loop {
        let attempt = async {
            let mut stream = timeout(HANDSHAKE_TIMEOUT, TcpStream::connect(shared.partner)).await.ok()?.ok()?;
            let _ = stream.set_nodelay(true);
            establish(&shared, &mut stream, true).await.map(|(id, t, hello)| (stream, id, t, hello))
        };
        let session = tokio::select! {
            s = attempt => s,
            _ = shutdown.changed() => return,
        };
        if let Some((stream, id, transport, hello)) = session {
            let handle = tokio::spawn(run_session(shared.clone(), id, stream, transport, hello, shutdown.clone()));
            shared.lock().set_abort(id, handle.abort_handle());
            tokio::select! {
                _ = handle => {}
                _ = shutdown.changed() => return,
            }
        }
        tokio::select! {
            _ = sleep(RETRY) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// The higher-named node: accept; a new authenticated session replaces the old one.
pub(crate) async fn acceptor(shared: Arc<Shared>, mut shutdown: watch::Receiver<()>) {
    let listener = loop {
        match TcpListener::bind(shared.listen).await {
            Ok(l) => break l,
            Err(e) => {
                tracing::warn!(listen = %shared.listen, error = %e, "sync: cannot listen; retrying");
                tokio::select! {
                    _ = sleep(RETRY) => {}
                    _ = shutdown.changed() => return,
                }
            }
        }
    };
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (mut stream, from) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: do not spin on it.
                tracing::warn!(error = %e, "sync: accept failed");
                sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::warn!(%from, "sync: too many handshakes in progress; connection dropped");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut shutdown = shutdown.clone();
        tokio::spawn(async move {
            let established = tokio::select! {
                e = establish(&shared, &mut stream, false) => e,
                _ = shutdown.changed() => return,
            };
            drop(permit);
            if let Some((id, transport, hello)) = established {
                let handle = tokio::spawn(run_session(shared.clone(), id, stream, transport, hello, shutdown));
                shared.lock().set_abort(id, handle.abort_handle());
            }
        });
    }
}

/// Handshake, then the partner's name; on success the session is installed in the state.
/// Every failure is counted as an authentication failure and changes nothing else.
async fn establish(
    shared: &Shared,
    stream: &mut TcpStream,
    initiator: bool,
) -> Option<(u64, (TransportState, mpsc::Receiver<Out>), Hello)> {
    let ours = shared.hello();
    let result = match timeout(HANDSHAKE_TIMEOUT, handshake(stream, &shared.key, initiator, &ours)).await {
        Ok(r) => r,
        Err(_) => Err(HandshakeError::Timeout),
    };
    let mut state = shared.lock();
    let (transport, theirs, bytes) = match result {
        Ok(ok) => ok,
        Err(e) => {
            state.auth_failure(&e.to_string());
            return None;
        }
    };
    state.on_sent(1, bytes.0);
    state.on_received(1, bytes.1);
    state.check_hello(&shared.partner_name, &theirs).ok()?;
    let (tx, rx) = mpsc::channel(QUEUE);
    let id = state.install(tx, theirs.clone(), (ours.role, ours.epoch));
    Some((id, (transport, rx), theirs))
}

/// NNpsk0: `-> psk, e` then `<- e, ee`, each carrying a Hello. Returns the transport state, the
/// partner's Hello and the bytes (sent, received).
async fn handshake(
    stream: &mut TcpStream,
    key: &SyncKey,
    initiator: bool,
    hello: &Hello,
) -> Result<(TransportState, Hello, (u64, u64)), HandshakeError> {
    let params: snow::params::NoiseParams = wire::NOISE_PARAMS.parse()?;
    let builder = snow::Builder::new(params).psk(0, key.expose())?.prologue(wire::PROLOGUE)?;
    let mut hs = if initiator { builder.build_initiator()? } else { builder.build_responder()? };
    let mine = wire::encode_hello(hello)?;
    let mut noise = vec![0u8; MAX_FRAME];
    let mut received = Vec::new();
    let mut sent = 0u64;
    let mut theirs = None;
    for step in 0..2 {
        if (step == 0) == initiator {
            let n = hs.write_message(&mine, &mut noise)?;
            let mut out = Vec::with_capacity(n + 2);
            wire::frame(&noise[..n], &mut out);
            stream.write_all(&out).await?;
            sent += out.len() as u64;
        } else {
            wire::read_frame(stream, &mut received).await?;
            let n = hs.read_message(&received, &mut noise)?;
            theirs = Some(wire::decode_hello(&noise[..n])?);
        }
    }
    let theirs = theirs.ok_or(HandshakeError::Timeout)?;
    let got = received.len() as u64 + 2;
    Ok((hs.into_transport_mode()?, theirs, (sent, got)))
}

async fn run_session(
    shared: Arc<Shared>,
    id: u64,
    stream: TcpStream,
    (transport, out): (TransportState, mpsc::Receiver<Out>),
    hello: Hello,
    mut shutdown: watch::Receiver<()>,
) {
    tracing::info!(partner = hello.node, role = ?hello.role, epoch = hello.epoch, "sync: session up");
    // One Noise state, two directions with their own cipher and nonce: the lock is held for one
    // encryption or decryption, never across an await.
    let noise = Mutex::new(transport);
    let (rd, wr) = stream.into_split();
    let end = tokio::select! {
        e = reader(&shared, id, rd, &noise) => e,
        e = writer(&shared, wr, &noise, out) => e,
        _ = shutdown.changed() => End::Lost("shut down".into()),
    };
    shared.lock().end(id, end);
}

fn lock_noise(noise: &Mutex<TransportState>) -> MutexGuard<'_, TransportState> {
    noise.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn reader(shared: &Shared, id: u64, rd: OwnedReadHalf, noise: &Mutex<TransportState>) -> End {
    let mut rd = BufReader::with_capacity(4 * MAX_FRAME, rd);
    let mut frame = Vec::with_capacity(MAX_FRAME);
    let mut plain = vec![0u8; MAX_FRAME];
    let mut messages = Reassembler::default();
    let mut last_ack = Instant::now();
    loop {
        match timeout(shared.dead_after, wire::read_frame(&mut rd, &mut frame)).await {
            Err(_) => return End::Lost(format!("partner silent for {:?}", shared.dead_after)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return End::Lost("partner closed the connection".into());
            }
            Ok(Err(e)) => return End::Lost(format!("read: {e}")),
            Ok(Ok(())) => {}
        }
        shared.lock().on_received(0, frame.len() as u64 + 2);
        // Tampered, replayed, reordered or foreign frames all fail here: the receiving nonce is
        // implicit and advances by one per frame.
        let Ok(n) = lock_noise(noise).read_message(&frame, &mut plain) else {
            return End::Rejected("frame failed authentication".into());
        };
        let message = match messages.push(&plain[..n]) {
            Ok(Some(m)) => m,
            Ok(None) => continue,
            Err(e) => return End::Rejected(e.to_string()),
        };
        let msg = match wire::decode(&message) {
            Ok(msg) => msg,
            Err(e) => return End::Rejected(e.to_string()),
        };
        let mut state = shared.lock();
        if let Err(end) = state.on_msg(id, msg) {
            return end;
        }
        // Acknowledge once per burst rather than per message, and at least every ACK_EVERY
        // while a long burst lasts.
        if rd.buffer().is_empty() || last_ack.elapsed() >= ACK_EVERY {
            state.ack_if_due();
            last_ack = Instant::now();
        }
    }
}

/// Encrypts one encoded message as frames appended to `buf`.
fn seal(
    noise: &Mutex<TransportState>,
    bytes: Result<Vec<u8>, wire::WireError>,
    buf: &mut Vec<u8>,
    scratch: &mut [u8],
) -> Result<(), End> {
    let bytes = bytes.map_err(|e| End::Lost(format!("cannot send: {e}")))?;
    let mut noise = lock_noise(noise);
    for chunk in wire::split(&bytes) {
        let n = noise.write_message(&chunk, scratch).map_err(|e| End::Lost(format!("cannot encrypt: {e}")))?;
        wire::frame(&scratch[..n], buf);
    }
    Ok(())
}

struct Writer<'a> {
    shared: &'a Shared,
    wr: OwnedWriteHalf,
    noise: &'a Mutex<TransportState>,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    messages: u64,
}

impl Writer<'_> {
    fn push(&mut self, msg: &Msg) -> Result<(), End> {
        self.push_encoded(wire::encode(msg))
    }

    fn push_encoded(&mut self, bytes: Result<Vec<u8>, wire::WireError>) -> Result<(), End> {
        seal(self.noise, bytes, &mut self.buf, &mut self.scratch)?;
        self.messages += 1;
        Ok(())
    }

    async fn flush(&mut self) -> Result<(), End> {
        if self.buf.is_empty() {
            return Ok(());
        }
        match timeout(self.shared.dead_after, self.wr.write_all(&self.buf)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(End::Lost(format!("write: {e}"))),
            Err(_) => return Err(End::Lost(format!("partner not reading for {:?}", self.shared.dead_after))),
        }
        self.shared.lock().on_sent(self.messages, self.buf.len() as u64);
        self.messages = 0;
        self.buf.clear();
        Ok(())
    }

    async fn item(&mut self, item: Out) -> Result<(), End> {
        match item {
            Out::Msg(msg) => self.push(&msg),
            Out::Put { n, key, body } => self.push_encoded(wire::encode_put(n, &key, &body)),
            Out::Bulk { epoch, n, records } => {
                self.push(&Msg::BulkBegin { epoch, count: records.len() as u64 })?;
                for (key, body) in records {
                    self.push_encoded(wire::encode_put(n, &key, &body))?;
                    if self.buf.len() >= WRITE_BATCH {
                        self.flush().await?;
                    }
                }
                self.push(&Msg::BulkEnd { n })
            }
        }
    }
}

async fn writer(
    shared: &Shared,
    wr: OwnedWriteHalf,
    noise: &Mutex<TransportState>,
    mut out: mpsc::Receiver<Out>,
) -> End {
    let mut w =
        Writer { shared, wr, noise, buf: Vec::with_capacity(WRITE_BATCH), scratch: vec![0; MAX_FRAME], messages: 0 };
    let mut heartbeat = tokio::time::interval(shared.heartbeat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seq = 0u64;
    loop {
        let step = tokio::select! {
            biased;
            item = out.recv() => match item {
                // The state dropped the queue: it ended the session.
                None => return End::Lost("session closed".into()),
                Some(item) => w.item(item).await,
            },
            _ = heartbeat.tick() => {
                seq += 1;
                w.push(&Msg::Heartbeat { seq })
            }
        };
        if let Err(end) = step {
            return end;
        }
        // Take what else is queued into the same write.
        while w.buf.len() < WRITE_BATCH {
            let Ok(item) = out.try_recv() else { break };
            if let Err(end) = w.item(item).await {
                return end;
            }
        }
        if let Err(end) = w.flush().await {
            return end;
        }
    }
}
