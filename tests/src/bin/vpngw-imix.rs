//! `vpngw-imix`: an IMIX UDP stream for `make bench-e2e` (iperf3 sends one size per stream).
//!
//! ```text
//! vpngw-imix recv --bind 0.0.0.0:5203 --seconds 12        # prints a JSON report, then exits
//! vpngw-imix send --to 10.2.0.10:5203 --seconds 5 [--sizes 64,576,1500] [--weights 7,4,1]
//! ```
//!
//! Sizes are IP packet sizes (IPv4 20 + UDP 8 + payload): 64/576/1500 bytes in a 7:4:1 packet
//! ratio by default, as the "simple IMIX". The sender sends the pattern (the sizes interleaved,
//! not in blocks) as fast as one `send` per datagram goes, like `iperf3 -u -b 0`, for the given
//! time, and reports what it sent. The receiver counts datagrams and bytes by size from the
//! first datagram to the last one (it stops after 1 s without traffic, or at `--seconds`), and
//! reports the rate over that span: what crossed the path. Each datagram carries a sequence
//! number, so the receiver also counts gaps (lost or reordered datagrams).
#![allow(clippy::print_stdout, clippy::print_stderr)] // a command-line tool

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// IPv4 header 20 + UDP header 8: what an IP size carries beyond the UDP payload.
const HEADERS: usize = 28;
/// The payload starts with a sequence number (8 bytes): the smallest payload this tool sends.
const MIN_PAYLOAD: usize = 8;

fn usage(why: &str) -> ExitCode {
    eprintln!(
        "vpngw-imix: {why}\nusage: vpngw-imix recv --bind ADDR:PORT [--seconds S]\n       \
         vpngw-imix send --to ADDR:PORT [--seconds S] [--sizes 64,576,1500] [--weights 7,4,1]"
    );
    ExitCode::from(2)
}

fn list(text: &str) -> Option<Vec<usize>> {
    text.split(',').map(|v| v.trim().parse().ok()).collect()
}

/// The sizes interleaved by weight: each round takes every size whose share is still behind,
/// so 7:4:1 of a, b, c gives a b a b a c a b a b a a rather than seven a's in a row.
fn pattern(sizes: &[usize], weights: &[usize]) -> Vec<usize> {
    let total: usize = weights.iter().sum();
    let mut taken = vec![0usize; sizes.len()];
    let mut out = Vec::with_capacity(total);
    for step in 1..=total {
        for (i, &w) in weights.iter().enumerate() {
            // Due: this size's share of the first `step` packets exceeds what it has had.
            if out.len() < step && taken[i] * total < w * step {
                taken[i] += 1;
                out.push(sizes[i]);
            }
        }
    }
    out
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let seconds = match value("--seconds").map(|s| s.parse::<f64>()) {
        None => 5.0,
        Some(Ok(s)) if s > 0.0 => s,
        Some(_) => return usage("--seconds: a positive number"),
    };
    let duration = Duration::from_secs_f64(seconds);
    match args.get(1).map(String::as_str) {
        Some("send") => {
            let Some(to) = value("--to").and_then(|t| t.parse::<SocketAddr>().ok()) else {
                return usage("--to ADDR:PORT");
            };
            let Some(sizes) = list(&value("--sizes").unwrap_or_else(|| "64,576,1500".into())) else {
                return usage("--sizes: numbers");
            };
            let Some(weights) = list(&value("--weights").unwrap_or_else(|| "7,4,1".into())) else {
                return usage("--weights: numbers");
            };
            if sizes.len() != weights.len()
                || sizes.iter().any(|s| !(HEADERS + MIN_PAYLOAD..=65_535).contains(s))
                || weights.iter().sum::<usize>() == 0
            {
                return usage("as many weights as sizes; sizes 36..=65535");
            }
            match send(to, &pattern(&sizes, &weights), duration) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vpngw-imix: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Some("recv") => {
            let Some(bind) = value("--bind").and_then(|t| t.parse::<SocketAddr>().ok()) else {
                return usage("--bind ADDR:PORT");
            };
            match recv(bind, duration) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("vpngw-imix: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => usage("send or recv"),
    }
}

fn send(to: SocketAddr, pattern: &[usize], duration: Duration) -> std::io::Result<()> {
    let socket = UdpSocket::bind(SocketAddr::from(([0, 0, 0, 0], 0)))?;
    socket.connect(to)?;
    let largest = pattern.iter().max().copied().unwrap_or(0);
    let mut payload = vec![0u8; largest - HEADERS];
    let (mut packets, mut bytes, mut errors) = (0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut seq = 0u64;
    'send: loop {
        for &size in pattern {
            payload[..MIN_PAYLOAD].copy_from_slice(&seq.to_be_bytes());
            seq += 1;
            match socket.send(&payload[..size - HEADERS]) {
                Ok(_) => {
                    packets += 1;
                    bytes += size as u64;
                }
                // A full queue on the way (ENOBUFS) or an ICMP error: counted, and on.
                Err(_) => errors += 1,
            }
        }
        // The clock is read once per pattern round (12 packets), not per packet.
        if started.elapsed() >= duration {
            break 'send;
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"sent_packets\": {packets}, \"sent_ip_bytes\": {bytes}, \"errors\": {errors}, \"seconds\": {secs:.3}, \
         \"pps\": {:.0}, \"ip_mbps\": {:.1}}}",
        packets as f64 / secs,
        bytes as f64 * 8.0 / secs / 1e6
    );
    Ok(())
}

fn recv(bind: SocketAddr, limit: Duration) -> std::io::Result<()> {
    let socket = UdpSocket::bind(bind)?;
    // Timeouts only to notice the end; the receive loop itself blocks.
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut buf = vec![0u8; 65_536];
    let mut by_size: Vec<(usize, u64)> = Vec::new();
    let (mut packets, mut bytes, mut gaps, mut next_seq) = (0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    let (mut first, mut last) = (None::<Instant>, started);
    while started.elapsed() < limit {
        let len = match socket.recv(&mut buf) {
            Ok(len) => len,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if first.is_some() {
                    break; // a second of silence after traffic: the sender is done
                }
                continue;
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        let size = len + HEADERS;
        packets += 1;
        bytes += size as u64;
        match by_size.iter_mut().find(|(s, _)| *s == size) {
            Some((_, n)) => *n += 1,
            None => by_size.push((size, 1)),
        }
        if let Some(seq) = buf.get(..MIN_PAYLOAD).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes) {
            if seq != next_seq {
                gaps += 1;
            }
            next_seq = seq.wrapping_add(1);
        }
    }
    by_size.sort_unstable();
    let span = first.map_or(0.0, |f| last.duration_since(f).as_secs_f64());
    let per_second = |v: u64| if span > 0.0 { v as f64 / span } else { 0.0 };
    let sizes: Vec<String> = by_size.iter().map(|(s, n)| format!("\"{s}\": {n}")).collect();
    println!(
        "{{\"packets\": {packets}, \"ip_bytes\": {bytes}, \"gaps\": {gaps}, \"seconds\": {span:.3}, \"pps\": {:.0}, \
         \"ip_mbps\": {:.1}, \"by_size\": {{{}}}}}",
        per_second(packets),
        per_second(bytes) * 8.0 / 1e6,
        sizes.join(", ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::pattern;

    #[test]
    fn the_pattern_interleaves_the_sizes_by_weight() {
        let p = pattern(&[64, 576, 1500], &[7, 4, 1]);
        assert_eq!(p.len(), 12);
        assert_eq!(p.iter().filter(|&&s| s == 64).count(), 7);
        assert_eq!(p.iter().filter(|&&s| s == 576).count(), 4);
        assert_eq!(p.iter().filter(|&&s| s == 1500).count(), 1);
        assert!(p.windows(3).all(|w| w.iter().any(|&s| s != 64)), "{p:?}");
    }
}
