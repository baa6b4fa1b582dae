//! What the engine's output means for the gateway: its events (child SAs published or
//! withdrawn, retries, history) and its transmits, in that order; and what the dataplane asks
//! of it.

use std::time::{Duration, Instant};

use vpngw_dataplane::ToControl;
use vpngw_ike::{ChildSa, DeleteReason, Event, FailReason};

use super::Daemon;
use crate::config::Start;

impl Daemon {
    /// Acts on the engine's events, then sends what it queued. Events go first: a Delete
    /// leaves only after its SA is out of the table and every worker has let go of it, so no
    /// packet is sealed with a deleted SA's keys after the peer was told.
    pub(super) async fn flush(&mut self) {
        let transmits = self.ike.take_transmits();
        let mut removed = false;
        while let Some(e) = self.ike.endpoint.poll_event() {
            removed |= matches!(e, Event::ChildSaDeleted { .. });
            self.event(e);
        }
        if removed && let Some(dp) = &self.dataplane {
            dp.quiesce(Duration::from_millis(200));
        }
        self.ike.send(transmits).await;
        // Handling events may have queued more (a retry initiating at once).
        self.ike.run_due_timers();
    }

    pub(super) fn on_dataplane(&mut self, m: ToControl) {
        match m {
            ToControl::Ike { from, data } => self.ike.on_natt_datagram(from, &data),
            ToControl::Acquire { connection } => {
                // At most once a second per subnet pair (the dataplane's pending queue
                // throttles): phase 1 if there is no IKE SA, else the quick modes missing.
                let on_traffic = self.connection(&connection).is_some_and(|c| c.start == Start::OnTraffic);
                if on_traffic {
                    let has_sa = self.ike.endpoint.ike_sa_infos().iter().any(|s| s.peer == *connection);
                    if !has_sa {
                        tracing::info!(connection = %connection, "traffic for the tunnel: negotiating");
                    }
                    self.initiate(Instant::now(), &connection);
                }
            }
            ToControl::RekeyDue { spi_out } => {
                let endpoint = &self.ike.endpoint;
                let connection = endpoint
                    .ike_sa_infos()
                    .iter()
                    .find(|s| s.children.iter().any(|c| c.spi_out == spi_out))
                    .map(|s| s.peer.clone())
                    .unwrap_or_default();
                tracing::info!(%connection, %spi_out, "outbound SA near its sequence-number limit: rekeying");
                self.ike.endpoint.rekey_child(Instant::now(), spi_out);
            }
        }
    }

    fn event(&mut self, e: Event) {
        match e {
            Event::IkeSaEstablished {
                peer,
                role,
                mode,
                remote,
                encryption,
                hash,
                dh_group,
                lifetime_seconds,
                nat_detected,
                ..
            } => {
                tracing::info!(event = "ike_sa_established", connection = %peer, %role, %mode, %remote, encryption = %encryption, authentication = %hash, dh_group = %dh_group, lifetime_seconds, nat_detected, "IKE SA established");
            }
            Event::ChildSaEstablished { peer, child, .. } => self.child_sa_established(&peer, &child),
            Event::ChildSaActive { peer, spi_in, spi_out } => {
                tracing::debug!(connection = %peer, %spi_in, %spi_out, "child SA sending");
                if self.child_sas.activate(spi_out)
                    && let Some(dp) = &self.dataplane
                {
                    dp.release_pending();
                }
            }
            Event::ChildSaDeleted { peer, spi_in, spi_out, reason } => {
                tracing::info!(event = "child_sa_deleted", connection = %peer, %spi_in, %spi_out, %reason, "child SA deleted");
                self.child_sas.deleted(spi_in, spi_out);
                if reason == DeleteReason::Rekeyed {
                    self.history.rekeyed(&peer);
                }
                if !matches!(reason, DeleteReason::Local | DeleteReason::Rekeyed | DeleteReason::Reauthenticated) {
                    self.schedule_retry(&peer);
                }
            }
            Event::IkeSaDeleted { peer, reason, .. } => {
                tracing::info!(event = "ike_sa_deleted", connection = %peer, %reason, "IKE SA deleted");
                match reason {
                    DeleteReason::DeadPeer => self.history.dpd_timeout(&peer),
                    DeleteReason::Reauthenticated => self.history.reauthenticated(&peer),
                    _ => {}
                }
                if !matches!(reason, DeleteReason::Local | DeleteReason::Reauthenticated) {
                    self.schedule_retry(&peer);
                }
            }
            Event::NegotiationFailed { peer, remote, reason, detail, logged } => {
                self.negotiation_failed(peer, remote, reason, detail, logged)
            }
        }
    }

    fn child_sa_established(&mut self, peer: &str, child: &ChildSa) {
        tracing::info!(
            event = "child_sa_established",
            connection = %peer,
            spi_in = %child.spi_in,
            spi_out = %child.spi_out,
            selectors = %child.selectors,
            encryption = %child.encryption,
            authentication = %child.integrity.name(),
            pfs = %child.pfs.map_or("disable".to_string(), |g| g.name().to_string()),
            lifetime_seconds = child.lifetime_seconds,
            encapsulation = %child.encapsulation,
            quick_mode = %child.role,
            "child SA established"
        );
        self.retries.cancel(peer);
        self.child_sas.established(peer, child);
    }

    fn negotiation_failed(
        &mut self,
        peer: Option<String>,
        remote: std::net::SocketAddr,
        reason: FailReason,
        detail: String,
        logged: bool,
    ) {
        let known = peer.as_deref().filter(|p| self.connection(p).is_some());
        let name = peer.clone().unwrap_or_else(|| format!("(unknown peer {})", remote.ip()));
        self.history.negotiation_failed(logged, known, &name, remote, reason, detail);
        if let Some(p) = peer {
            self.schedule_retry(&p);
        }
    }
}
