//! Hot backup's effects on the engine and the dataplane (`crate::ha` holds the role and the
//! sync channel): what the active sends each sync interval, the takeover that imports the
//! replica, and the step down that drops state without telling the peers.

use std::time::{Duration, Instant, SystemTime};

use vpngw_ike::IkeSaState;
use vpngw_sync::Notice;

use super::Daemon;
use crate::config::{SequenceJump, Start};
use crate::ha::records::{
    self, CONNECTIONS, InboundNumbers, OutboundNumbers, SEQUENCES, Sequences, TUNNEL_PREFIX, auto_jump, unix_ms,
};
use crate::ha::{KeepalivedState, Takeover};
use crate::state::ConnectionState;

impl Daemon {
    /// Every [`crate::ha::presence::POLL`]: follows the public address (takeover or step
    /// down), and on the active, every sync interval, sends what changed.
    pub(super) fn ha_tick(&mut self) {
        let Some(ha) = &self.ha else { return };
        let holds = ha.holds_address();
        match (holds, ha.is_active()) {
            (true, false) => self.ha_take_over(),
            (false, true) => self.ha_step_down(),
            _ => {}
        }
        let Some(ha) = &mut self.ha else { return };
        if ha.track_reset_at.is_some_and(|t| Instant::now() >= t) {
            ha.track_reset_at = None;
            ha.write_track(false);
        }
        if ha.is_active() && ha.last_sync.elapsed() >= ha.config.sync_interval {
            ha.last_sync = Instant::now();
            self.ha_send_changes(false);
        }
    }

    /// keepalived's notify hook: recorded for status, and the address looked at now.
    pub(super) fn ha_notify(&mut self, state: KeepalivedState) {
        if let Some(ha) = &mut self.ha {
            tracing::info!(?state, "keepalived notify");
            ha.keepalived = Some(state);
        }
        self.ha_tick();
    }

    pub(super) fn ha_notice(&mut self, notice: Notice) {
        let partner_role = match &notice {
            Notice::Connected { partner, role, epoch } => {
                tracing::info!(%partner, role = crate::ha::role_word(*role), epoch, "hot backup: partner connected");
                Some(*role)
            }
            Notice::PartnerRole { role, epoch } => {
                tracing::info!(role = crate::ha::role_word(*role), epoch, "hot backup: partner's role");
                Some(*role)
            }
            Notice::BulkDone { records, took } => {
                tracing::info!(records, took_ms = took.as_millis() as u64, "hot backup: bulk sync received");
                None
            }
            Notice::Lost { reason } => {
                tracing::warn!(%reason, "hot backup: partner session lost");
                None
            }
        };
        let Some(ha) = &mut self.ha else { return };
        match partner_role {
            Some(vpngw_sync::Role::Active) if ha.is_active() => {
                tracing::warn!("hot backup: the partner is active too (split brain): each serves what reaches it");
                ha.partner_was_active = true;
            }
            Some(vpngw_sync::Role::Standby) if ha.is_active() && ha.partner_was_active => {
                ha.partner_was_active = false;
                // The partner sent on these same SAs meanwhile, with sequence numbers past
                // ours: the peer would drop ours as replays. New child SAs start afresh.
                self.ha_rekey_all("split brain over");
            }
            _ => {}
        }
    }

    /// New child SAs for every connection that has some (takeover from a stale replica, end of
    /// a split brain).
    fn ha_rekey_all(&mut self, why: &'static str) {
        let now = Instant::now();
        for name in self.ike.endpoint.peer_names() {
            if let Ok(n) = self.ike.endpoint.rekey_connection(now, &name)
                && n > 0
            {
                tracing::warn!(connection = %name, child_sas = n, "hot backup: {why}: rekeying");
            }
        }
    }

    /// Active: the IKE SAs that changed (all of them with `all`), removed ones, the numbers
    /// and the runtime connections, into the sync store.
    pub(super) fn ha_send_changes(&mut self, all: bool) {
        let now = Instant::now();
        let now_ms = unix_ms(SystemTime::now());
        let numbers = self.sa_numbers(now_ms);
        let Some(ha) = &mut self.ha else { return };
        let changed = self.ike.endpoint.take_changed();
        // Exports change nothing in the engine: one view serves the list and the removals.
        let sas = self.ike.endpoint.ike_sa_infos();
        let ids: Vec<_> = if all { sas.iter().map(|s| s.id).collect() } else { changed };
        for id in ids {
            match records::export_tunnel(&self.ike.endpoint, &self.child_sas, id, now, now_ms) {
                Some((key, body)) => {
                    ha.sync.put(key.clone(), body);
                    ha.sent.insert(id, key);
                }
                // Not established (yet, or any more): the partner must not keep an old copy.
                None => {
                    if let Some(key) = ha.sent.remove(&id) {
                        ha.sync.remove(&key);
                    }
                }
            }
        }
        let established: std::collections::BTreeSet<_> =
            sas.iter().filter(|s| s.state == IkeSaState::Established).map(|s| s.id).collect();
        let gone: Vec<_> = ha.sent.keys().filter(|id| !established.contains(id)).copied().collect();
        for id in gone {
            if let Some(key) = ha.sent.remove(&id) {
                ha.sync.remove(&key);
            }
        }
        let numbers = ha.sample(numbers, now);
        if let Ok(body) = serde_json::to_vec(&numbers) {
            ha.sync.put(SEQUENCES.into(), body);
        }
        if let Ok(body) = serde_json::to_vec(self.runtime.tables()) {
            ha.sync.put(CONNECTIONS.into(), body);
        }
    }

    /// Every installed SA's numbers now.
    fn sa_numbers(&self, at_unix_ms: u64) -> Sequences {
        let table = self.child_sas.table();
        let mut s = Sequences { at_unix_ms, ..Default::default() };
        for o in table.outbound_all() {
            s.outbound.insert(
                o.sa.spi(),
                OutboundNumbers {
                    last_sequence: o.sa.sequence_used(),
                    peak_rate_pps: 0,
                    packets: o.counters.packets(),
                    bytes: o.counters.bytes(),
                },
            );
        }
        for i in table.inbound_all() {
            s.inbound.insert(
                i.sa.spi(),
                InboundNumbers {
                    highest: i.sa.replay_window().highest(),
                    packets: i.counters.packets(),
                    bytes: i.counters.bytes(),
                },
            );
        }
        s
    }

    /// The public address arrived: the replica becomes this server's state, and this server
    /// answers the peers from now on.
    fn ha_take_over(&mut self) {
        let started = Instant::now();
        let Some(ha) = &mut self.ha else { return };
        let replica = ha.sync.replica();
        // How long the replica went without word from the active: a crash stops the word only
        // about as long ago as VRRP took to notice; much longer means the sync link was down
        // and child SAs may have been rekeyed since (see below).
        let silent = ha.stats().lag.unwrap_or(Duration::MAX);
        let stale = !replica.complete || silent > ha.config.partner_timeout.saturating_mul(2);
        let epoch = ha.next_epoch().max(replica.epoch + 1);
        let (sync_interval, jump_policy) = (ha.config.sync_interval, ha.config.sequence_jump);
        // Whatever this server negotiated on its own meanwhile (split brain) gives way.
        self.ha_drop_state();
        let now_ms = unix_ms(SystemTime::now());
        let numbers: Sequences =
            replica.records.get(SEQUENCES).and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        let since_sync = Duration::from_millis(now_ms.saturating_sub(numbers.at_unix_ms));
        let mut report = Takeover {
            at_unix_ms: now_ms,
            took_ms: 0,
            ike_sas: 0,
            child_sas: 0,
            refused: Vec::new(),
            replica_complete: replica.complete,
            replica_epoch: replica.epoch,
            replica_stale: stale,
        };
        let now = Instant::now();
        for (key, body) in replica.records.range(TUNNEL_PREFIX.to_string()..) {
            if !key.starts_with(TUNNEL_PREFIX) {
                break;
            }
            let jump = |peak| match jump_policy {
                SequenceJump::Fixed(n) => n,
                SequenceJump::Auto => auto_jump(peak, since_sync, sync_interval, SequenceJump::AUTO_FLOOR),
            };
            let imported =
                records::import_tunnel(body, &numbers, jump, now, now_ms, &mut self.ike.endpoint, &mut self.child_sas)
                    .map_err(|why| format!("{key}: {why}"));
            match imported {
                Ok(children) => {
                    report.ike_sas += 1;
                    report.child_sas += children;
                }
                Err(why) => report.refused.push(why),
            }
        }
        if let Some(ha) = &mut self.ha {
            ha.prepare_active(epoch);
            ha.takeovers += 1;
        }
        // The new store starts from everything this server now holds; then the partner is
        // told (a standby partner gets it all in one bulk, never an empty one first).
        self.ha_send_changes(true);
        if let Some(ha) = &self.ha {
            ha.announce_role();
        }
        if let Some(dp) = &self.dataplane {
            dp.release_pending();
        }
        if stale {
            // The peer may have replaced child SAs the replica does not know: new keys for
            // every imported tunnel (quick modes on the imported IKE SAs; one that the peer no
            // longer has fails and the connection negotiates anew).
            self.ha_rekey_all("the replica was stale");
        }
        let now = Instant::now();
        // Connections the replica did not cover negotiate now.
        let sas = self.ike.endpoint.ike_sa_infos();
        for c in self.config.connections.clone() {
            if c.start == Start::Active
                && ConnectionState::of(&sas, &c.peer.name, c.peer.subnets.len()) == ConnectionState::Down
            {
                self.initiate(now, &c.peer.name);
            }
        }
        report.took_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        for why in &report.refused {
            tracing::warn!(reason = %why, "hot backup: a synced IKE SA was not imported: it negotiates anew");
        }
        tracing::info!(
            ike_sas = report.ike_sas,
            child_sas = report.child_sas,
            refused = report.refused.len(),
            replica_complete = report.replica_complete,
            replica_stale = report.replica_stale,
            took_ms = report.took_ms,
            epoch,
            "hot backup: took over as active"
        );
        if let Some(ha) = &mut self.ha {
            ha.last_takeover = Some(report);
        }
        self.publish_pending = true;
    }

    /// The public address is gone: the other server serves the peers now. Everything is
    /// dropped without a Delete (a Delete would take the tunnels from the new active too).
    fn ha_step_down(&mut self) {
        tracing::warn!("hot backup: the public address left this server: standing by (state dropped, peers not told)");
        self.ha_drop_state();
        if let Some(ha) = &mut self.ha {
            ha.become_standby();
        }
        self.publish_pending = true;
    }

    /// A fresh engine with the same connections, and no SA in the dataplane.
    fn ha_drop_state(&mut self) {
        self.ike
            .reset_endpoint(super::engine_config(&self.config), self.config.connections.iter().map(|c| c.peer.clone()));
        for c in &self.config.connections {
            self.child_sas.withdraw_connection(&c.peer.name);
            self.retries.cancel(&c.peer.name);
        }
    }

    /// Standby: the runtime connections the active announced are applied here too (so the
    /// replica's tunnels find their connections at a takeover). Once a second.
    pub(super) async fn ha_follow_connections(&mut self) {
        let Some(ha) = &self.ha else { return };
        if ha.is_active() {
            return;
        }
        let Some(body) = ha.sync.replica_record(CONNECTIONS) else { return };
        let Ok(tables) = serde_json::from_slice::<records::RuntimeTables>(&body) else { return };
        if &tables == self.runtime.tables() {
            return;
        }
        let names: Vec<String> = self.runtime.tables().keys().cloned().collect();
        for name in names.iter().filter(|n| !tables.contains_key(*n)) {
            let _ = self.command(crate::ops::control::Request::DeleteConnection { name: name.clone() }).await;
        }
        for (name, table) in tables {
            if self.runtime.tables().get(&name) == Some(&table) {
                continue;
            }
            let Ok(body) = serde_json::to_value(&table) else { continue };
            let answer = self
                .command(crate::ops::control::Request::PutConnection { name: name.clone(), connection: body })
                .await;
            if !answer.ok {
                tracing::warn!(connection = %name, error = ?answer.error, "hot backup: the active's runtime connection is refused here");
            }
        }
    }
}

/// How long a handover waits for the standby to acknowledge the last changes, and then for
/// keepalived to move the address.
const HANDOVER_SYNC: Duration = Duration::from_millis(500);
const HANDOVER_MOVE: Duration = Duration::from_secs(3);
/// After a handover, how long the track file stays at 1 once the address has left.
const TRACK_RESET_DELAY: Duration = Duration::from_millis(300);

impl Daemon {
    /// A graceful switchover (SIGTERM of the active, `vpngw ha handover`): the last changes go
    /// to the standby and are acknowledged, then keepalived is told to give the role up (the
    /// track file), and the address leaves; this server then stands by. Refused (Err, and
    /// nothing changes) unless the partner is a connected standby in sync.
    pub(super) async fn ha_hand_over(&mut self, stopping: bool) -> Result<String, String> {
        let Some(ha) = &self.ha else { return Err("no [ha] section: nothing to hand over to".into()) };
        if !ha.is_active() {
            return Err("this server is not the active one".into());
        }
        let s = ha.stats();
        if !(s.connected && s.partner_role == Some(vpngw_sync::Role::Standby) && s.in_sync) {
            return Err(format!(
                "the partner {} is not a connected standby in sync (connected {}, in sync {}): not handing over",
                ha.config.partner_name, s.connected, s.in_sync
            ));
        }
        self.ha_send_changes(false);
        let deadline = Instant::now() + HANDOVER_SYNC;
        loop {
            let lag = self.ha.as_ref().and_then(|h| h.stats().lag);
            if lag == Some(Duration::ZERO) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the standby did not acknowledge the last changes within {HANDOVER_SYNC:?}"));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let Some(ha) = &self.ha else { return Err("no [ha]".into()) };
        ha.write_track(true);
        let deadline = Instant::now() + HANDOVER_MOVE;
        while ha.holds_address() {
            if Instant::now() > deadline {
                ha.write_track(false);
                return Err(format!(
                    "keepalived did not move the address within {HANDOVER_MOVE:?} (is track_file {} in its configuration?)",
                    ha.config.track_file.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        self.ha_step_down();
        if !stopping && let Some(ha) = &mut self.ha {
            // Staying up as the standby: keepalived may give the role back when the partner
            // fails (its FAULT ends; nopreempt keeps it the backup until then). Not at once:
            // keepalived runs its notify scripts without waiting, and a FAULT and a BACKUP a
            // few milliseconds apart can reach us (and the operator's log) in reverse order.
            ha.track_reset_at = Some(Instant::now() + TRACK_RESET_DELAY);
        }
        Ok("handed over: the partner is active".into())
    }
}
