//! `--esp-keylog`: every child SA's ESP keys appended to a file in tcpdump's `-E` secrets
//! format, for debugging only (anyone who reads the file can decrypt the traffic).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::PathBuf;

use vpngw_crypto::EncryptionAlgorithm;
use vpngw_ike::ChildSa;

pub struct KeyLog {
    path: PathBuf,
}

impl KeyLog {
    /// Warns that keys are written to `path`: it must not outlive the debugging session.
    pub fn new(path: PathBuf) -> Self {
        tracing::warn!(file = %path.display(), "ESP keys are written to this file (--esp-keylog): for debugging only, remove it when done");
        Self { path }
    }

    /// Appends the child SA's keys, as `tcpdump -E file:FILE` reads them.
    pub fn append(&self, c: &ChildSa) {
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&self.path)
            .and_then(|mut f| f.write_all(lines(c).as_bytes()));
        if let Err(e) = written {
            tracing::warn!(file = %self.path.display(), error = %e, "cannot write the ESP key log");
        }
    }
}

/// The two lines (outbound, inbound) of a child SA.
fn lines(c: &ChildSa) -> String {
    let alg = match c.encryption {
        EncryptionAlgorithm::Des => "des-cbc",
        EncryptionAlgorithm::TripleDes => "3des-cbc",
        EncryptionAlgorithm::Aes128 => "aes128-cbc",
        EncryptionAlgorithm::Aes192 => "aes192-cbc",
        EncryptionAlgorithm::Aes256 => "aes256-cbc",
    };
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    format!(
        "0x{:08x}@{} {alg}-hmac96:0x{}\n0x{:08x}@{} {alg}-hmac96:0x{}\n",
        c.spi_out.get(),
        c.remote.ip(),
        hex(c.keys_out.encryption_key.expose()),
        c.spi_in.get(),
        c.local.ip(),
        hex(c.keys_in.encryption_key.expose()),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)] // tests: a failed unwrap is a failed test

    use std::time::Duration;

    use vpngw_esp::Spi;
    use vpngw_ike::testing::{Pair, configs};

    use super::*;

    #[test]
    fn lines_are_tcpdumps_secrets_format() {
        let (a_cfg, b_cfg) = configs();
        let mut p = Pair::new(a_cfg, b_cfg, 17);
        p.a.initiate(p.now, "to-b").unwrap();
        p.drive(Duration::from_secs(10));
        let mut c = Pair::children(&p.a_events).into_iter().next().expect("a child SA");
        (c.spi_in, c.spi_out) = (Spi::new(0x1a2b), Spi::new(0xc0ff_ee01));
        let text = lines(&c);
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 2);
        assert!(rows[0].starts_with(&format!("0xc0ffee01@{} ", c.remote.ip())), "{text}");
        assert!(rows[1].starts_with(&format!("0x00001a2b@{} ", c.local.ip())), "{text}");
        assert!(rows.iter().all(|l| l.contains("-cbc-hmac96:0x")), "{text}");
    }
}
