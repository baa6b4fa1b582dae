//! `vpngw check --host`: what this host must provide for a valid configuration to run, looked
//! at without changing anything: the public address on an interface, UDP 500 and 4500 free on
//! it (and who holds them), `/dev/net/tun`, forwarding, reverse path filtering, the
//! capabilities, and the secret files (readable, private, owned by whoever runs the check).
//!
//! Each finding is a [`Problem`] (the daemon would fail, or not forward) or a warning (it runs,
//! but something may bite), keyed by the configuration key that asks for it
//! (`gateway.public_address`) or by the host's own name for it (`net.ipv4.ip_forward`).

use std::io::ErrorKind;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddrV4, UdpSocket};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::config::{Config, Problem, loose_secret_mode};

/// What the host check found.
#[derive(Debug, Default)]
pub struct Findings {
    pub problems: Vec<Problem>,
    pub warnings: Vec<Problem>,
}

impl Findings {
    fn problem(&mut self, key: &str, value: String, reason: String) {
        self.problems.push(Problem { key: key.into(), value, reason, ..Problem::default() });
    }

    fn warn(&mut self, key: &str, value: String, reason: String) {
        self.warnings.push(Problem { key: key.into(), value, reason, ..Problem::default() });
    }
}

/// Looks at this host for `config` (a valid configuration).
pub fn check(config: &Config) -> Findings {
    let mut f = Findings::default();
    let public = config.gateway.public_address;
    let interfaces = ipv4_interfaces();
    let uplink = interfaces.iter().find(|(_, a)| *a == public).map(|(name, _)| name.clone());
    let bindable = public_address(&mut f, config, uplink.is_some());
    if bindable {
        for port in [500, 4500] {
            port_free(&mut f, public, port);
        }
    }
    tun_device(&mut f);
    forwarding(&mut f);
    rp_filter(&mut f, uplink.as_deref(), &config.gateway.tun);
    capabilities(&mut f);
    for (key, path) in secret_files(config) {
        secret_file(&mut f, &key, &path);
    }
    f
}

fn quoted(a: impl std::fmt::Display) -> String {
    format!("{:?}", a.to_string())
}

/// Every IPv4 address of this host's interfaces (up or not), with its interface.
fn ipv4_interfaces() -> Vec<(String, Ipv4Addr)> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else { return Vec::new() };
    addrs
        .filter_map(|a| {
            let ip = a.address.as_ref()?.as_sockaddr_in()?.ip();
            Some((a.interface_name, ip))
        })
        .collect()
}

fn sysctl(name: &str) -> std::io::Result<String> {
    std::fs::read_to_string(Path::new("/proc/sys").join(name.replace('.', "/"))).map(|s| s.trim().to_string())
}

/// The public address on an interface: a problem unless it is (or, for the standby of a
/// hot-backup pair, unless the kernel lets it be bound before it arrives). Returns whether
/// binding it can be tried.
fn public_address(f: &mut Findings, config: &Config, held: bool) -> bool {
    if held {
        return true;
    }
    let public = config.gateway.public_address;
    let nonlocal = sysctl("net.ipv4.ip_nonlocal_bind").is_ok_and(|v| v == "1");
    let key = "gateway.public_address";
    match (config.ha.is_some(), nonlocal) {
        (true, true) => f.warn(
            key,
            quoted(public),
            "not on an interface of this host now: fine on the standby of a hot-backup pair \
             (net.ipv4.ip_nonlocal_bind = 1 lets it bind the address before keepalived moves it here), \
             not on the active server"
                .into(),
        ),
        (true, false) => f.problem(
            key,
            quoted(public),
            "not on an interface of this host, and net.ipv4.ip_nonlocal_bind is not 1: the standby of a \
             hot-backup pair must bind it before it holds it (sysctl -w net.ipv4.ip_nonlocal_bind=1; \
             docs/high-availability.md)"
                .into(),
        ),
        (false, _) => f.problem(
            key,
            quoted(public),
            "not an address of this host (`ip -4 addr` lists them): vpngw cannot bind UDP 500 and 4500 \
             on it; a typo, or a floating address not attached yet"
                .into(),
        ),
    }
    nonlocal && config.ha.is_some()
}

/// UDP `port` on `address`: bound for a moment (and let go) to see that nobody holds it.
fn port_free(f: &mut Findings, address: Ipv4Addr, port: u16) {
    let key = "gateway.public_address";
    let err = match UdpSocket::bind(SocketAddrV4::new(address, port)) {
        Ok(_) => return,
        Err(e) => e,
    };
    match err.kind() {
        ErrorKind::AddrInUse => match udp_holder(address, port) {
            Some((pid, name)) if name == "vpngw" => f.warn(
                key,
                quoted(address),
                format!(
                    "UDP {port} on it is held by vpngw (pid {pid}): a vpngw runs already with this address \
                     (fine if it is this configuration's daemon; a second one would not start)"
                ),
            ),
            Some((pid, name)) => f.problem(
                key,
                quoted(address),
                format!(
                    "UDP {port} on it is held by {name} (pid {pid}): vpngw would not start; stop it (another \
                     IKE daemon: systemctl disable --now strongswan), or use another address"
                ),
            ),
            None => f.problem(
                key,
                quoted(address),
                format!(
                    "UDP {port} on it is in use, by a process this check cannot name: vpngw would not start \
                     (ss -ulpn 'sport = :{port}' names it)"
                ),
            ),
        },
        ErrorKind::PermissionDenied => f.problem(
            key,
            quoted(address),
            format!(
                "cannot bind UDP {port} on it: {err} (a privileged port: run vpngw, and this check, as root or \
                 with CAP_NET_BIND_SERVICE)"
            ),
        ),
        // Not an address of this host: said already.
        ErrorKind::AddrNotAvailable => {}
        _ => f.problem(key, quoted(address), format!("cannot bind UDP {port} on it: {err}")),
    }
}

/// The process holding UDP `port` on `address` (or on every address): its pid and name, when
/// /proc shows it to us.
fn udp_holder(address: Ipv4Addr, port: u16) -> Option<(u32, String)> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/udp", "/proc/net/udp6"] {
        if let Ok(text) = std::fs::read_to_string(table) {
            inodes.extend(bound_inodes(&text, address, port));
        }
    }
    if inodes.is_empty() {
        return None;
    }
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else { continue };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && wanted.iter().any(|w| target.as_os_str() == w.as_str())
            {
                let name = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
                return Some((pid, name.trim().to_string()));
            }
        }
    }
    None
}

/// The inodes of the sockets in a /proc/net/udp or udp6 table bound to `port` on `address`
/// or on the wildcard address (which holds every address).
fn bound_inodes(table: &str, address: Ipv4Addr, port: u16) -> Vec<u64> {
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (addr, p) = fields.get(1)?.split_once(':')?;
            let inode = fields.get(9)?.parse().ok()?;
            (u16::from_str_radix(p, 16).ok()? == port && holds_address(addr, address)?).then_some(inode)
        })
        .collect()
}

/// Whether a local address as /proc/net/udp{,6} writes it (the kernel's words in native byte
/// order, in hex) is `address` or the wildcard.
fn holds_address(hex: &str, address: Ipv4Addr) -> Option<bool> {
    let words: Option<Vec<[u8; 4]>> = (0..hex.len() / 8)
        .map(|i| hex.get(i * 8..i * 8 + 8).and_then(|w| u32::from_str_radix(w, 16).ok()).map(u32::to_ne_bytes))
        .collect();
    match words?.as_slice() {
        [a] => {
            let a = Ipv4Addr::from(*a);
            Some(a == address || a.is_unspecified())
        }
        [a, b, c, d] => {
            let bytes: Vec<u8> = [a, b, c, d].into_iter().flatten().copied().collect();
            let bytes: [u8; 16] = bytes.try_into().ok()?;
            let a = Ipv6Addr::from(bytes);
            Some(a.is_unspecified() || a.to_ipv4_mapped() == Some(address))
        }
        _ => None,
    }
}

fn tun_device(f: &mut Findings) {
    let key = "/dev/net/tun";
    match std::fs::OpenOptions::new().read(true).write(true).open(key) {
        Ok(_) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => f.problem(
            key,
            String::new(),
            "missing: vpngw cannot create its TUN device (gateway.tun); on a host `modprobe tun`, in a \
             container pass the device (--device /dev/net/tun)"
                .into(),
        ),
        Err(e) => f.problem(
            key,
            String::new(),
            format!("cannot open it: {e} (vpngw needs it, read-write, for its TUN device)"),
        ),
    }
}

fn forwarding(f: &mut Findings) {
    let key = "net.ipv4.ip_forward";
    match sysctl(key) {
        Ok(v) if v == "1" => {}
        Ok(v) => f.problem(
            key,
            v,
            "the kernel does not forward: packets between the protected network and the tunnel are dropped; \
             sysctl -w net.ipv4.ip_forward=1, and persist it in /etc/sysctl.d/"
                .into(),
        ),
        Err(e) => f.warn(key, String::new(), format!("cannot read /proc/sys/net/ipv4/ip_forward: {e}")),
    }
}

/// Strict reverse path filtering (1) on the uplink or the TUN device: a warning (it works while
/// routing is symmetric). The kernel uses the higher of `conf.all` and the interface's value;
/// a TUN device not created yet gets `conf.default`'s.
fn rp_filter(f: &mut Findings, uplink: Option<&str>, tun: &str) {
    let read = |iface: &str| sysctl(&format!("net.ipv4.conf.{iface}.rp_filter")).ok()?.parse::<u8>().ok();
    let all = read("all").unwrap_or(0);
    let tun_exists = Path::new("/proc/sys/net/ipv4/conf").join(tun).exists();
    let mut looked = Vec::new();
    if let Some(u) = uplink {
        looked.push((u.to_string(), u.to_string(), format!("the uplink {u}")));
    }
    if tun_exists {
        looked.push((tun.to_string(), tun.to_string(), format!("the TUN device {tun}")));
    } else {
        looked.push((
            "default".into(),
            tun.to_string(),
            format!("the TUN device {tun} (conf.default: it is created later)"),
        ));
    }
    for (conf, iface, what) in looked {
        let own = read(&conf).unwrap_or(0);
        if all.max(own) != 1 {
            continue;
        }
        let (key, fix) = if own == 1 {
            (format!("net.ipv4.conf.{conf}.rp_filter"), format!("sysctl -w net.ipv4.conf.{conf}.rp_filter=2"))
        } else {
            (
                "net.ipv4.conf.all.rp_filter".to_string(),
                format!("sysctl -w net.ipv4.conf.{conf}.rp_filter=2 (conf.all = 1 needs 2 there, not 0)"),
            )
        };
        f.warn(
            &key,
            "1".into(),
            format!(
                "strict reverse path filtering on {what}: the kernel drops a packet arriving on {iface} unless \
                 its route back to the source leaves through {iface}; fine while routing is symmetric, but \
                 decrypted packets vanish when a route sends a remote subnet elsewhere (docs/troubleshooting.md, \
                 rp_filter). Loose mode: {fix}"
            ),
        );
    }
}

/// `CapEff` of /proc/self/status.
fn effective_capabilities(status: &str) -> Option<u64> {
    let hex = status.lines().find_map(|l| l.strip_prefix("CapEff:"))?.trim();
    u64::from_str_radix(hex, 16).ok()
}

fn capabilities(f: &mut Findings) {
    let Some(caps) = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| effective_capabilities(&s)) else {
        return;
    };
    let missing: Vec<&str> = [
        (10, "CAP_NET_BIND_SERVICE (UDP 500)"),
        (12, "CAP_NET_ADMIN (the TUN device and its routes)"),
        (13, "CAP_NET_RAW (raw ESP)"),
    ]
    .into_iter()
    .filter(|(bit, _)| caps & (1 << bit) == 0)
    .map(|(_, what)| what)
    .collect();
    if !missing.is_empty() {
        f.problem(
            "capabilities",
            String::new(),
            format!(
                "this process lacks {}: run vpngw (and this check) as root or with them (the unit of \
                 deploy/systemd/ grants them; containers: --cap-add)",
                missing.join(", ")
            ),
        );
    }
}

/// Every file of the configuration that holds a secret, with its key.
fn secret_files(config: &Config) -> Vec<(String, PathBuf)> {
    let mut files: Vec<(String, PathBuf)> = (config.connections.iter().enumerate())
        .filter_map(|(i, c)| Some((format!("connection[{i}].pre_shared_key_file"), c.psk_file.clone()?)))
        .collect();
    if let Some(api) = &config.api {
        files.push(("api.token_file".into(), api.token_file.clone()));
        if let Some(tls) = &api.tls {
            files.push(("api.tls_key_file".into(), tls.key_file.clone()));
        }
    }
    if let Some(ha) = &config.ha {
        files.push(("ha.key_file".into(), ha.key_file.clone()));
    }
    files
}

/// The effective user id of this process (`Uid:` of /proc/self/status).
fn effective_uid(status: &str) -> Option<u32> {
    status.lines().find_map(|l| l.strip_prefix("Uid:"))?.split_whitespace().nth(1)?.parse().ok()
}

/// A file holding a secret: readable by us, by nobody else, and ours.
fn secret_file(f: &mut Findings, key: &str, path: &Path) {
    let value = quoted(path.display());
    let file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) => return f.problem(key, value, format!("cannot read {}: {e}", path.display())),
    };
    let Ok(meta) = file.metadata() else { return };
    if let Some(reason) = loose_secret_mode(path, &meta) {
        f.problem(key, value.clone(), reason);
    }
    let me = std::fs::read_to_string("/proc/self/status").ok().and_then(|s| effective_uid(&s));
    if let Some(me) = me
        && meta.uid() != me
    {
        f.warn(
            key,
            value,
            format!(
                "{} is owned by uid {}, not by uid {me}, who runs this check: its owner can change the key \
                 (chown {me} {})",
                path.display(),
                meta.uid(),
                path.display()
            ),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_tables_name_the_sockets_on_a_port_of_an_address_or_every_address() {
        let a = Ipv4Addr::new(198, 51, 100, 1);
        let word = |ip: Ipv4Addr| format!("{:08X}", u32::from_ne_bytes(ip.octets()));
        let v4 = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             1: {}:01F4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 111 2 0\n\
             2: {}:01F4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 222 2 0\n\
             3: {}:1194 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 333 2 0\n\
             4: {}:01F4 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 444 2 0\n",
            word(a),
            word(Ipv4Addr::new(192, 0, 2, 1)),
            word(Ipv4Addr::UNSPECIFIED),
            word(Ipv4Addr::UNSPECIFIED),
        );
        assert_eq!(bound_inodes(&v4, a, 500), [111, 444]);
        assert_eq!(bound_inodes(&v4, a, 4500), [333]);
        let mapped = a.to_ipv6_mapped();
        let words: String = mapped
            .octets()
            .chunks(4)
            .map(|c| format!("{:08X}", u32::from_ne_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let v6 = format!(
            "header\n 0: {words}:01F4 00000000000000000000000000000000:0000 07 0:0 0:0 0 0 0 555 2 0\n \
             1: 00000000000000000000000000000000:1194 00000000000000000000000000000000:0000 07 0:0 0:0 0 0 0 666 2 0\n"
        );
        assert_eq!(bound_inodes(&v6, a, 500), [555]);
        assert_eq!(bound_inodes(&v6, Ipv4Addr::new(192, 0, 2, 9), 4500), [666]);
    }

    #[test]
    fn capabilities_and_uid_come_from_the_status_file() {
        let status = "Name:\tvpngw\nUid:\t1000\t0\t0\t0\nCapEff:\t0000000000003400\n";
        assert_eq!(effective_uid(status), Some(0));
        let caps = effective_capabilities(status).unwrap();
        assert!(caps & (1 << 10) != 0 && caps & (1 << 12) != 0 && caps & (1 << 13) != 0);
        assert_eq!(effective_capabilities("Name:\tx\n"), None);
    }
}
