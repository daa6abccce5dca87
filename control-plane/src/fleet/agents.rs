//! The agents connected to this replica, as records kept current in memory
//! and written to the store in batches (every flush interval), so the whole
//! fleet is visible from any replica. A record is never lost: one that fails
//! to be written stays pending for the next flush.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use tokio_util::sync::CancellationToken;

use super::lock;
use crate::store::AgentRecord;

struct Entry {
    record: AgentRecord,
    /// Changed since it was last written.
    dirty: bool,
    /// Cancels the session (a newer stream of the same agent replaces it).
    cancel: CancellationToken,
}

/// This replica's agents (connected, or disconnected and not yet written).
#[derive(Default)]
pub struct AgentTable {
    entries: Mutex<HashMap<String, Entry>>,
}

impl AgentTable {
    /// A stream of `record.agent_id` began: its record replaces any earlier
    /// one and an earlier session of the same agent here is cancelled.
    /// Returns the token that cancels this session.
    pub fn connect(&self, record: AgentRecord) -> CancellationToken {
        let cancel = CancellationToken::new();
        let previous = lock(&self.entries).insert(
            record.agent_id.clone(),
            Entry {
                record,
                dirty: true,
                cancel: cancel.clone(),
            },
        );
        if let Some(previous) = previous {
            previous.cancel.cancel();
        }
        cancel
    }

    /// Changes the record of a session, if it is still the agent's current
    /// one here.
    pub fn update(&self, agent_id: &str, session: i64, change: impl FnOnce(&mut AgentRecord)) {
        let mut entries = lock(&self.entries);
        if let Some(e) = entries.get_mut(agent_id)
            && e.record.session == session
        {
            change(&mut e.record);
            e.dirty = true;
        }
    }

    /// A session ended at `now`.
    pub fn disconnect(&self, agent_id: &str, session: i64, now: DateTime<Utc>) {
        self.update(agent_id, session, |r| {
            r.connected = false;
            r.since = now;
        });
    }

    /// Records changed since the last flush, marked clean; call
    /// [`AgentTable::flushed`] or [`AgentTable::unflushed`] with them after.
    pub fn take_dirty(&self) -> Vec<AgentRecord> {
        let mut entries = lock(&self.entries);
        entries
            .values_mut()
            .filter(|e| e.dirty)
            .map(|e| {
                e.dirty = false;
                e.record.clone()
            })
            .collect()
    }

    /// The records were written: disconnected ones no longer need memory.
    pub fn flushed(&self, written: &[AgentRecord]) {
        let mut entries = lock(&self.entries);
        for r in written.iter().filter(|r| !r.connected) {
            if entries
                .get(&r.agent_id)
                .is_some_and(|e| !e.dirty && e.record.session == r.session && !e.record.connected)
            {
                entries.remove(&r.agent_id);
            }
        }
    }

    /// The records could not be written: they stay pending.
    pub fn unflushed(&self, records: &[AgentRecord]) {
        let mut entries = lock(&self.entries);
        for r in records {
            if let Some(e) = entries.get_mut(&r.agent_id)
                && e.record.session == r.session
            {
                e.dirty = true;
            }
        }
    }

    /// Copies of every record held here.
    pub fn records(&self) -> HashMap<String, AgentRecord> {
        lock(&self.entries)
            .iter()
            .map(|(k, e)| (k.clone(), e.record.clone()))
            .collect()
    }

    /// Cancels every session (shutdown).
    pub fn cancel_all(&self) {
        for e in lock(&self.entries).values() {
            e.cancel.cancel();
        }
    }
}
