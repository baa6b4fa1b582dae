//! Routes to the remote protected networks, pointing into the TUN device, kept in step with the
//! configuration over netlink (rtnetlink). Removing the TUN device (at exit) removes them too.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use rtnetlink::RouteMessageBuilder;

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("netlink: {0}")]
    Netlink(String),
    #[error("no interface {0}")]
    NoInterface(String),
}

pub struct Routes {
    handle: rtnetlink::Handle,
    ifindex: u32,
    installed: BTreeSet<(Ipv4Addr, u8)>,
}

impl std::fmt::Debug for Routes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Routes").field("ifindex", &self.ifindex).field("installed", &self.installed).finish()
    }
}

impl Routes {
    pub fn new(interface: &str) -> Result<Self, RouteError> {
        let ifindex =
            nix::net::if_::if_nametoindex(interface).map_err(|_| RouteError::NoInterface(interface.into()))?;
        let (connection, handle, _) = rtnetlink::new_connection().map_err(|e| RouteError::Netlink(e.to_string()))?;
        tokio::spawn(connection);
        Ok(Self { handle, ifindex, installed: BTreeSet::new() })
    }

    /// Installs missing routes and removes ones no longer wanted.
    pub async fn sync(&mut self, wanted: &BTreeSet<(Ipv4Addr, u8)>) -> Result<(), RouteError> {
        let mut errors = Vec::new();
        for (addr, len) in wanted.difference(&self.installed.clone()) {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(*addr, *len)
                .output_interface(self.ifindex)
                .build();
            match self.handle.route().add(msg).replace().execute().await {
                Ok(()) => {
                    tracing::info!(route = %format!("{addr}/{len}"), "route via the tunnel device installed");
                    self.installed.insert((*addr, *len));
                }
                Err(e) => errors.push(format!("{addr}/{len}: {e}")),
            }
        }
        for (addr, len) in self.installed.clone().difference(wanted) {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(*addr, *len)
                .output_interface(self.ifindex)
                .build();
            if let Err(e) = self.handle.route().del(msg).execute().await {
                errors.push(format!("removing {addr}/{len}: {e}"));
            }
            self.installed.remove(&(*addr, *len));
        }
        if errors.is_empty() { Ok(()) } else { Err(RouteError::Netlink(errors.join("; "))) }
    }
}
