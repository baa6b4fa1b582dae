//! Whether this host holds the public (virtual) address now: the role's ground truth. keepalived
//! adds the address to the server it elects and removes it from the other; peers' IKE and ESP
//! reach only the holder. Read from the kernel's interface addresses (a netlink dump through
//! getifaddrs), polled by the daemon's loop every [`POLL`], and at once when keepalived's notify
//! hook (`vpngw ha notify`) says the role changed.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

/// How often the loop looks: the takeover waits at most this long after the address arrives.
pub const POLL: Duration = Duration::from_millis(10);

/// Whether `address` is configured on one of this host's interfaces (that is up or not: the
/// kernel delivers to a local address either way).
pub fn holds(address: Ipv4Addr) -> std::io::Result<bool> {
    let addrs = nix::ifaddrs::getifaddrs().map_err(std::io::Error::from)?;
    Ok(addrs
        .filter_map(|a| a.address)
        .filter_map(|s| s.as_sockaddr_in().map(|sin| IpAddr::V4(sin.ip())))
        .any(|ip| ip == IpAddr::V4(address)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_held_and_a_documentation_address_is_not() {
        assert!(holds(Ipv4Addr::LOCALHOST).unwrap());
        assert!(!holds(Ipv4Addr::new(203, 0, 113, 254)).unwrap());
    }
}
