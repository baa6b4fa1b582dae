//! The wire: application messages, how they are serialized, split into Noise-sized chunks and
//! framed on the TCP stream. Sans-IO except [`read_frame`], which reads one frame from any
//! `AsyncRead`.
//!
//! Stream layout: `len: u16 (big endian) | noise message (len bytes)`. Each transport message
//! decrypts to one chunk: `flag: u8 | data`, flag [`MORE`] when the message continues in the next
//! chunk, [`LAST`] when it ends there. A message is postcard-encoded [`Msg`], at most
//! [`MAX_MESSAGE`] bytes.

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt as _};

use crate::Role;

/// Protocol version carried in [`Hello`]; also part of the Noise prologue.
pub const PROTOCOL_VERSION: u16 = 1;
/// Mixed into the handshake hash: a peer speaking another protocol or version fails the handshake.
pub const PROLOGUE: &[u8] = b"vpngw-sync/1";
pub const NOISE_PARAMS: &str = "Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s";

/// Largest Noise message (snow's and the spec's limit, and what a u16 length can say).
pub const MAX_FRAME: usize = 65535;
/// ChaChaPoly tag appended to every transport message.
pub const TAG_LEN: usize = 16;
/// Data bytes in one chunk: a frame's plaintext less the flag byte.
pub const MAX_CHUNK_DATA: usize = MAX_FRAME - TAG_LEN - 1;
/// Largest application message. Far above any record the daemon writes (a tunnel is a few KB),
/// low enough that a hostile or broken peer cannot make us buffer without bound.
pub const MAX_MESSAGE: usize = 16 << 20;

pub const MORE: u8 = 0;
pub const LAST: u8 = 1;

/// First payload of each handshake message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub node: String,
    pub role: Role,
    pub epoch: u64,
    pub version: u16,
}

/// Everything said after the handshake. `n` on updates is the sender's update number within the
/// session (1, 2, ...); a bulk counts as one update, numbered by its `BulkEnd`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Msg {
    Hello(Hello),
    Role {
        role: Role,
        epoch: u64,
    },
    BulkBegin {
        epoch: u64,
        count: u64,
    },
    Put {
        n: u64,
        key: String,
        body: Vec<u8>,
    },
    Remove {
        n: u64,
        key: String,
    },
    BulkEnd {
        n: u64,
    },
    Heartbeat {
        seq: u64,
    },
    /// The receiver applied every update up to and including number `n`.
    Ack {
        n: u64,
    },
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("message of {0} bytes is over the {MAX_MESSAGE}-byte limit")]
    TooLarge(usize),
    #[error("empty chunk")]
    EmptyChunk,
    #[error("unknown chunk flag {0}")]
    BadFlag(u8),
    #[error("message does not decode: {0}")]
    Decode(String),
    #[error("message does not encode: {0}")]
    Encode(String),
}

pub fn encode(msg: &Msg) -> Result<Vec<u8>, WireError> {
    encode_any(msg)
}

/// `Msg::Put` without owning the body (the store shares it). Same bytes as [`encode`] gives.
pub fn encode_put(n: u64, key: &str, body: &[u8]) -> Result<Vec<u8>, WireError> {
    encode_any(&MsgRef::Put { n, key, body })
}

/// Borrowing twin of [`Msg`] for encoding: the variants up to `Put` in the same order, so serde
/// gives them the same indices (checked by a test).
#[derive(Serialize)]
enum MsgRef<'a> {
    #[allow(dead_code)]
    Hello(&'a Hello),
    #[allow(dead_code)]
    Role {
        role: Role,
        epoch: u64,
    },
    #[allow(dead_code)]
    BulkBegin {
        epoch: u64,
        count: u64,
    },
    Put {
        n: u64,
        key: &'a str,
        body: &'a [u8],
    },
}

fn encode_any<T: Serialize>(msg: &T) -> Result<Vec<u8>, WireError> {
    let bytes = postcard::to_allocvec(msg).map_err(|e| WireError::Encode(e.to_string()))?;
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes one whole message; trailing bytes are an error, so each message has one encoding.
pub fn decode(bytes: &[u8]) -> Result<Msg, WireError> {
    if bytes.len() > MAX_MESSAGE {
        return Err(WireError::TooLarge(bytes.len()));
    }
    match postcard::take_from_bytes::<Msg>(bytes) {
        Ok((msg, [])) => Ok(msg),
        Ok((_, rest)) => Err(WireError::Decode(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(WireError::Decode(e.to_string())),
    }
}

pub fn encode_hello(hello: &Hello) -> Result<Vec<u8>, WireError> {
    postcard::to_allocvec(hello).map_err(|e| WireError::Encode(e.to_string()))
}

pub fn decode_hello(bytes: &[u8]) -> Result<Hello, WireError> {
    match postcard::take_from_bytes::<Hello>(bytes) {
        Ok((hello, [])) => Ok(hello),
        Ok((_, rest)) => Err(WireError::Decode(format!("{} trailing bytes", rest.len()))),
        Err(e) => Err(WireError::Decode(e.to_string())),
    }
}

/// The chunk plaintexts of one encoded message, in order; an empty message is one `LAST` chunk.
pub fn split(message: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let count = message.len().div_ceil(MAX_CHUNK_DATA).max(1);
    (0..count).map(move |i| {
        let data = &message[i * MAX_CHUNK_DATA..((i + 1) * MAX_CHUNK_DATA).min(message.len())];
        let mut chunk = Vec::with_capacity(1 + data.len());
        chunk.push(if i + 1 == count { LAST } else { MORE });
        chunk.extend_from_slice(data);
        chunk
    })
}

/// Joins chunks back into messages, refusing to grow past [`MAX_MESSAGE`].
#[derive(Debug, Default)]
pub struct Reassembler {
    buf: Vec<u8>,
}

impl Reassembler {
    /// `Ok(Some(message))` when `chunk` ends a message, `Ok(None)` when more is to come.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Option<Vec<u8>>, WireError> {
        let (&flag, data) = chunk.split_first().ok_or(WireError::EmptyChunk)?;
        if flag != MORE && flag != LAST {
            return Err(WireError::BadFlag(flag));
        }
        let total = self.buf.len() + data.len();
        if total > MAX_MESSAGE {
            return Err(WireError::TooLarge(total));
        }
        self.buf.extend_from_slice(data);
        Ok((flag == LAST).then(|| std::mem::take(&mut self.buf)))
    }

    /// Bytes of an unfinished message held (a session that ends here applied none of them).
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Prefixes one Noise message with its length.
pub fn frame(noise_message: &[u8], out: &mut Vec<u8>) {
    debug_assert!(noise_message.len() <= MAX_FRAME);
    out.extend_from_slice(&(noise_message.len() as u16).to_be_bytes());
    out.extend_from_slice(noise_message);
}

/// Reads one frame into `buf` (resized to the frame). A stream that ends inside a frame is an
/// `UnexpectedEof` error; one that ends between frames too (the caller tells them apart by
/// whether it expected more).
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await?;
    buf.resize(usize::from(u16::from_be_bytes(len)), 0);
    r.read_exact(buf).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn join(chunks: impl Iterator<Item = Vec<u8>>) -> Result<Vec<Vec<u8>>, WireError> {
        let mut r = Reassembler::default();
        let mut out = Vec::new();
        for c in chunks {
            assert!(c.len() + TAG_LEN <= MAX_FRAME, "chunk of {} does not fit a frame", c.len());
            if let Some(m) = r.push(&c)? {
                out.push(m);
            }
        }
        assert_eq!(r.pending(), 0);
        Ok(out)
    }

    #[test]
    fn a_200k_record_splits_and_joins() {
        let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7) as u8).collect();
        let msg = Msg::Put { n: 9, key: "tunnel/0011223344556677-8899aabbccddeeff".into(), body };
        let bytes = encode(&msg).unwrap();
        let chunks: Vec<_> = split(&bytes).collect();
        assert_eq!(chunks.len(), 4);
        assert!(chunks[..3].iter().all(|c| c[0] == MORE && c.len() == MAX_CHUNK_DATA + 1));
        assert_eq!(chunks[3][0], LAST);
        let joined = join(chunks.into_iter()).unwrap();
        assert_eq!(joined.len(), 1);
        assert_eq!(decode(&joined[0]).unwrap(), msg);
    }

    #[test]
    fn borrowed_put_encodes_like_owned() {
        let body = vec![1, 2, 3, 200];
        let owned = encode(&Msg::Put { n: 300, key: "sequences".into(), body: body.clone() }).unwrap();
        assert_eq!(encode_put(300, "sequences", &body).unwrap(), owned);
        assert_eq!(decode(&owned).unwrap(), Msg::Put { n: 300, key: "sequences".into(), body });
    }

    #[test]
    fn exact_multiples_and_empty() {
        for len in [0, 1, MAX_CHUNK_DATA - 1, MAX_CHUNK_DATA, MAX_CHUNK_DATA + 1, 2 * MAX_CHUNK_DATA] {
            let data = vec![0xA5; len];
            let chunks: Vec<_> = split(&data).collect();
            assert_eq!(chunks.len(), len.div_ceil(MAX_CHUNK_DATA).max(1), "len {len}");
            assert_eq!(join(chunks.into_iter()).unwrap(), vec![data]);
        }
    }

    #[test]
    fn oversized_and_malformed_chunks_are_errors() {
        let mut r = Reassembler::default();
        let big = vec![MORE; MAX_CHUNK_DATA + 1];
        let mut err = None;
        for _ in 0..(MAX_MESSAGE / MAX_CHUNK_DATA + 2) {
            if let Err(e) = r.push(&big) {
                err = Some(e);
                break;
            }
        }
        assert!(matches!(err, Some(WireError::TooLarge(_))), "{err:?}");
        assert_eq!(Reassembler::default().push(&[]), Err(WireError::EmptyChunk));
        assert_eq!(Reassembler::default().push(&[7, 1, 2]), Err(WireError::BadFlag(7)));
        assert!(matches!(decode(&vec![0; MAX_MESSAGE + 1]), Err(WireError::TooLarge(_))));
    }

    #[test]
    fn truncated_input_is_an_error() {
        let msg = Msg::Put { n: 1, key: "connections".into(), body: vec![1; 300] };
        let bytes = encode(&msg).unwrap();
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(decode(&longer).is_err());

        let mut framed = Vec::new();
        frame(&[1, 2, 3, 4, 5], &mut framed);
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut buf = Vec::new();
            let mut whole = &framed[..];
            read_frame(&mut whole, &mut buf).await.unwrap();
            assert_eq!(buf, [1, 2, 3, 4, 5]);
            for cut in 0..framed.len() {
                let mut part = &framed[..cut];
                let e = read_frame(&mut part, &mut buf).await.unwrap_err();
                assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof);
            }
        });
    }

    proptest! {
        #[test]
        fn split_join_roundtrip(len in 0usize..300_000, seed: u8) {
            let data: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect();
            prop_assert_eq!(join(split(&data)).unwrap(), vec![data]);
        }

        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
            let _ = decode_hello(&bytes);
            let _ = Reassembler::default().push(&bytes);
        }

        #[test]
        fn messages_roundtrip(key in "[a-z/0-9-]{0,60}", body in proptest::collection::vec(any::<u8>(), 0..3000), n: u64) {
            for msg in [
                Msg::Put { n, key: key.clone(), body: body.clone() },
                Msg::Remove { n, key: key.clone() },
                Msg::BulkBegin { epoch: n, count: body.len() as u64 },
                Msg::Ack { n },
                Msg::Role { role: Role::Standby, epoch: n },
            ] {
                prop_assert_eq!(decode(&encode(&msg).unwrap()).unwrap(), msg);
            }
        }
    }
}
