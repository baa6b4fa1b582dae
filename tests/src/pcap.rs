//! A minimal pcap writer (the classic libpcap format) for raw IPv4 packets.

use std::io::{self, Write};

/// LINKTYPE_RAW: each record is an IP packet without a link-layer header.
const LINKTYPE_RAW: u32 = 101;

#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    tick: u32,
}

impl<W: Write> PcapWriter<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&0xa1b2_c3d4u32.to_le_bytes())?;
        out.write_all(&2u16.to_le_bytes())?;
        out.write_all(&4u16.to_le_bytes())?;
        out.write_all(&0i32.to_le_bytes())?;
        out.write_all(&0u32.to_le_bytes())?;
        out.write_all(&65535u32.to_le_bytes())?;
        out.write_all(&LINKTYPE_RAW.to_le_bytes())?;
        Ok(Self { out, tick: 0 })
    }

    /// Appends one packet, timestamped one millisecond after the previous one.
    pub fn write_packet(&mut self, packet: &[u8]) -> io::Result<()> {
        self.tick += 1;
        let len = u32::try_from(packet.len()).map_err(|_| io::Error::other("packet too large"))?;
        self.out.write_all(&1_700_000_000u32.to_le_bytes())?;
        self.out.write_all(&(self.tick * 1000).to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(&len.to_le_bytes())?;
        self.out.write_all(packet)
    }

    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}
