//! ESP seal/open per suite and packet size, one core, with the ceiling in the same run.
//!
//! - `seal`: one packet at a time (`OutboundSa::seal_in_place`): sequence, IV, padding, serial
//!   CBC, HMAC.
//! - `seal_batch8`, `seal_batch32`, `seal_batch64`: 8, 32 or 64 packets of one SA per call
//!   (`seal_batch`): multi-buffer CBC (AES: 8-30 lanes; bitsliced DES: 64).
//! - `open`: one packet (`InboundSa::open_in_place`): replay check, HMAC verify, parallel CBC
//!   decryption, trailer checks, replay commit.
//! - `ceiling_seal` / `ceiling_open`: the raw transforms over the same bytes with the same crates
//!   (CBC encrypt + HMAC; HMAC + CBC decrypt of freshly sealed packets, as `open` gets them),
//!   nothing else. The printed ratios are engine /
//!   ceiling: what the ESP framing costs. For DES and 3DES the ceiling is the `des` crate block
//!   by block (serial CBC both ways), so the ratio also shows what the bitsliced DES gains.
//! - `des_lanes`: 3DES multi-buffer encryption of n one-block packets, per block, against one
//!   serial block: where the bitsliced pass starts to pay (`MIN_LANES` in vpngw-crypto).
//!
//! Run: `make bench` (or `cargo bench -p vpngw-benches --bench esp`); `VPNGW_BENCH_QUICK=1` for a
//! shorter run.
#![allow(clippy::unwrap_used, clippy::expect_used)] // benchmark setup: a failure aborts the run

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput};
use vpngw_benches::{criterion_dir, gbit_per_s, median_ns, mpps};
use vpngw_crypto::{
    CbcCipher, CbcJob, EncryptionAlgorithm as E, FastRng, IntegrityAlgorithm as I, IntegrityKey, SecretBytes,
};
use vpngw_esp::{InboundSa, NextHeader, OutboundSa, SaKeys, SealPacket, Spi};

const SUITES: [(&str, E, I); 6] = [
    ("des-md5", E::Des, I::HmacMd5_96),
    ("3des-md5", E::TripleDes, I::HmacMd5_96),
    ("3des-sha1", E::TripleDes, I::HmacSha1_96),
    ("aes128-md5", E::Aes128, I::HmacMd5_96),
    ("aes128-sha1", E::Aes128, I::HmacSha1_96),
    ("aes256-sha1", E::Aes256, I::HmacSha1_96),
];
const SIZES: [usize; 3] = [64, 512, 1400];
/// Packets of one SA per `seal_batch` call.
const BATCHES: [usize; 3] = [8, 32, 64];
const HEADROOM: usize = 64;

fn keys(e: E, i: I) -> SaKeys {
    SaKeys {
        encryption: e,
        encryption_key: SecretBytes::new((0..e.spec().key_len as u8).map(|b| b.wrapping_mul(17) ^ 0xa5).collect()),
        integrity: i,
        integrity_key: SecretBytes::new((0..i.spec().key_len as u8).collect()),
    }
}

fn packet_buf(size: usize) -> Vec<u8> {
    let mut b = vec![0u8; HEADROOM + size + 64];
    b[HEADROOM] = 0x45;
    b
}

fn bench_suite(c: &mut Criterion, name: &str, e: E, i: I) {
    let k = keys(e, i);
    let mut group = c.benchmark_group(name);
    for size in SIZES {
        group.throughput(Throughput::Bytes(size as u64));
        let out = OutboundSa::new(Spi::new(1), &k).unwrap();
        let mut rng = FastRng::from_os().unwrap();
        let mut buf = packet_buf(size);
        group.bench_function(BenchmarkId::new("seal", size), |b| {
            b.iter(|| out.seal_in_place(&mut rng, black_box(&mut buf), HEADROOM..HEADROOM + size, NextHeader::IPV4))
        });

        for batch in BATCHES {
            let out = OutboundSa::new(Spi::new(1), &k).unwrap();
            let mut bufs: Vec<Vec<u8>> = (0..batch).map(|_| packet_buf(size)).collect();
            group.throughput(Throughput::Bytes((size * batch) as u64));
            group.bench_function(BenchmarkId::new(format!("seal_batch{batch}"), size), |b| {
                b.iter(|| {
                    let mut packets: Vec<SealPacket<'_>> = bufs
                        .iter_mut()
                        .map(|buf| SealPacket::new(buf, HEADROOM..HEADROOM + size, NextHeader::IPV4))
                        .collect();
                    out.seal_batch(&mut rng, black_box(&mut packets));
                })
            });
        }
        group.throughput(Throughput::Bytes(size as u64));

        // open: every iteration needs a fresh sequence number, so packets are sealed in the
        // (untimed) setup.
        let out = OutboundSa::new(Spi::new(2), &k).unwrap();
        let inb = InboundSa::new(Spi::new(2), &k, 1024).unwrap();
        group.bench_function(BenchmarkId::new("open", size), |b| {
            b.iter_batched_ref(
                || {
                    let mut buf = packet_buf(size);
                    let sealed =
                        out.seal_in_place(&mut rng, &mut buf, HEADROOM..HEADROOM + size, NextHeader::IPV4).unwrap();
                    buf[sealed.range].to_vec()
                },
                |esp| inb.open_in_place(esp).unwrap(),
                BatchSize::SmallInput,
            )
        });

        // The ceiling: the same crates over the same number of bytes, nothing else.
        let cipher = CbcCipher::new(e, k.encryption_key.expose()).unwrap();
        let integrity = IntegrityKey::new(i, k.integrity_key.expose()).unwrap();
        let block = e.spec().block_len;
        let enc_len = (size + 2).next_multiple_of(block);
        let auth_len = 8 + e.spec().iv_len + enc_len;
        let iv = vec![7u8; block];
        let mut data = vec![0x45u8; auth_len];
        let mut icv = [0u8; 12];
        let serial = SerialCeiling::new(e, k.encryption_key.expose());
        group.bench_function(BenchmarkId::new("ceiling_seal", size), |b| {
            b.iter(|| {
                match &serial {
                    Some(s) => s.encrypt(&iv, black_box(&mut data[auth_len - enc_len..])),
                    None => cipher.encrypt(&iv, black_box(&mut data[auth_len - enc_len..])).unwrap(),
                }
                integrity.sign(black_box(&data), &mut icv);
            })
        });
        // Fresh packets from the same setup as `open`, so both see the same cache state.
        let ceiling_out = OutboundSa::new(Spi::new(3), &k).unwrap();
        group.bench_function(BenchmarkId::new("ceiling_open", size), |b| {
            b.iter_batched_ref(
                || {
                    let mut buf = packet_buf(size);
                    let sealed = ceiling_out
                        .seal_in_place(&mut rng, &mut buf, HEADROOM..HEADROOM + size, NextHeader::IPV4)
                        .unwrap();
                    buf[sealed.range].to_vec()
                },
                |esp| {
                    let (authenticated, icv) = esp.split_at_mut(auth_len);
                    black_box(integrity.verify(authenticated, icv));
                    let (iv, ciphertext) = authenticated[8..].split_at_mut(block);
                    match &serial {
                        Some(s) => s.decrypt(iv, ciphertext),
                        None => cipher.decrypt(iv, ciphertext).unwrap(),
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The `des` crate through the `cbc` crate, block by block: the DES/3DES ceiling.
#[allow(clippy::large_enum_variant)] // one per benchmark, on the stack
enum SerialCeiling {
    Des(des::Des),
    TripleDes(des::TdesEde3),
}

impl SerialCeiling {
    fn new(e: E, key: &[u8]) -> Option<Self> {
        use des::cipher::KeyInit;
        match e {
            E::Des => Some(Self::Des(des::Des::new_from_slice(key).unwrap())),
            E::TripleDes => Some(Self::TripleDes(des::TdesEde3::new_from_slice(key).unwrap())),
            _ => None,
        }
    }

    fn encrypt(&self, iv: &[u8], data: &mut [u8]) {
        use cbc::cipher::{BlockModeEncrypt, InnerIvInit};
        let iv = iv.try_into().unwrap();
        let (blocks, _) = des::cipher::Array::slice_as_chunks_mut(data);
        match self {
            Self::Des(c) => cbc::Encryptor::<&des::Des>::inner_iv_init(c, iv).encrypt_blocks(blocks),
            Self::TripleDes(c) => cbc::Encryptor::<&des::TdesEde3>::inner_iv_init(c, iv).encrypt_blocks(blocks),
        }
    }

    fn decrypt(&self, iv: &[u8], data: &mut [u8]) {
        use cbc::cipher::{BlockModeDecrypt, InnerIvInit};
        let iv = iv.try_into().unwrap();
        let (blocks, _) = des::cipher::Array::slice_as_chunks_mut(data);
        match self {
            Self::Des(c) => cbc::Decryptor::<&des::Des>::inner_iv_init(c, iv).decrypt_blocks(blocks),
            Self::TripleDes(c) => cbc::Decryptor::<&des::TdesEde3>::inner_iv_init(c, iv).decrypt_blocks(blocks),
        }
    }
}

const LANE_COUNTS: [usize; 8] = [1, 2, 4, 6, 8, 16, 32, 64];

/// 3DES multi-buffer encryption of n one-block packets (the bitsliced pass from MIN_LANES on),
/// against the `des` crate's single block.
fn bench_des_lanes(c: &mut Criterion) {
    let key: Vec<u8> = (0..24u8).map(|b| b.wrapping_mul(29) ^ 0x3c).collect();
    let cipher = CbcCipher::new(E::TripleDes, &key).unwrap();
    let serial = SerialCeiling::new(E::TripleDes, &key).unwrap();
    let mut group = c.benchmark_group("des_lanes");
    let iv = [9u8; 8];
    let mut one = [0u8; 8];
    group.bench_function("serial", |b| b.iter(|| serial.encrypt(&iv, black_box(&mut one))));
    for n in LANE_COUNTS {
        let mut bufs = vec![[0u8; 8]; n];
        group.bench_function(BenchmarkId::new("multi", n), |b| {
            b.iter(|| {
                let mut jobs: Vec<CbcJob<'_>> = bufs.iter_mut().map(|d| CbcJob { iv: &iv, data: d }).collect();
                cipher.encrypt_multi(black_box(&mut jobs)).unwrap();
            })
        });
    }
    group.finish();
}

fn report_des_lanes() {
    let Some(serial) = median_ns("des_lanes", "serial", "") else { return };
    let cells: Vec<String> = LANE_COUNTS
        .iter()
        .filter_map(|n| {
            median_ns("des_lanes", "multi", &n.to_string()).map(|t| format!("{n}: {:.2}", serial / (t / *n as f64)))
        })
        .collect();
    println!("\n3DES multi-buffer, one-block packets, speed per block relative to one serial block ({serial:.0} ns):");
    println!("  {}", cells.join("  "));
}

fn report() {
    println!("\nESP engine, one core, median per packet (criterion results in {})", criterion_dir().display());
    let head = [
        "seal",
        "Mpps",
        "/ceil",
        "batch8",
        "/ceil",
        "batch32",
        "/ceil",
        "batch64",
        "/ceil",
        "open",
        "Mpps",
        "/ceil",
        "ceil seal",
        "ceil open",
    ];
    let unit = ["Gbit/s", "", "", "Gbit/s", "", "Gbit/s", "", "Gbit/s", "", "Gbit/s", "", "", "Gbit/s", "Gbit/s"];
    for row in [head, unit] {
        let cells: Vec<String> = row.iter().map(|c| format!("{c:>10}")).collect();
        println!(
            "{:<12} {:>5} |{}",
            if row == head { "suite" } else { "" },
            if row == head { "bytes" } else { "" },
            cells.join("")
        );
    }
    for (name, _, _) in SUITES {
        for size in SIZES {
            let p = size.to_string();
            let get = |f: &str| median_ns(name, f, &p);
            let (Some(seal), Some(b8), Some(b32), Some(b64), Some(open), Some(cs), Some(co)) = (
                get("seal"),
                get("seal_batch8").map(|t| t / 8.0),
                get("seal_batch32").map(|t| t / 32.0),
                get("seal_batch64").map(|t| t / 64.0),
                get("open"),
                get("ceiling_seal"),
                get("ceiling_open"),
            ) else {
                continue;
            };
            let cells = [
                format!("{:.3}", gbit_per_s(size, seal)),
                format!("{:.3}", mpps(seal)),
                format!("{:.2}", cs / seal),
                format!("{:.3}", gbit_per_s(size, b8)),
                format!("{:.2}", cs / b8),
                format!("{:.3}", gbit_per_s(size, b32)),
                format!("{:.2}", cs / b32),
                format!("{:.3}", gbit_per_s(size, b64)),
                format!("{:.2}", cs / b64),
                format!("{:.3}", gbit_per_s(size, open)),
                format!("{:.3}", mpps(open)),
                format!("{:.2}", co / open),
                format!("{:.3}", gbit_per_s(size, cs)),
                format!("{:.3}", gbit_per_s(size, co)),
            ];
            let cells: Vec<String> = cells.iter().map(|c| format!("{c:>10}")).collect();
            println!("{name:<12} {size:>5} |{}", cells.join(""));
        }
    }
    println!("/ceil = ceiling time / engine time per packet: 1.00 means the ESP framing costs nothing beyond");
    println!("the raw crypto; above 1.00 for batches means multi-buffer CBC beats the serial ceiling.");
}

fn main() {
    let quick = std::env::var_os("VPNGW_BENCH_QUICK").is_some();
    let mut c = Criterion::default()
        .output_directory(&criterion_dir())
        .sample_size(if quick { 10 } else { 30 })
        .warm_up_time(Duration::from_millis(if quick { 200 } else { 500 }))
        .measurement_time(Duration::from_millis(if quick { 500 } else { 1500 }))
        .configure_from_args();
    for (name, e, i) in SUITES {
        bench_suite(&mut c, name, e, i);
    }
    bench_des_lanes(&mut c);
    c.final_summary();
    report();
    report_des_lanes();
}
