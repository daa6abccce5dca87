//! One agent's Connect stream.
//!
//! The agent says hello (who it is, its labels, the snapshot it runs); the
//! session joins the group of its labels and sends the group's snapshot
//! whenever it differs from what the agent runs. Outgoing, at most one
//! message waits in the stream's queue and only the latest snapshot is kept
//! beyond it, so a slow agent costs memory for one snapshot and never holds
//! up another. Incoming ACKs, NACKs and reports update the agent's record
//! and the telemetry sums.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::SystemTime;

use chrono::Utc;
use shepherd_proto::v1;
use shepherd_proto::v1::agent_message::Kind;
use shepherd_proto::validate::{check_agent_id, check_label};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tokio::time::Instant;
use tonic::{Status, Streaming};
use tracing::{debug, info, warn};

use super::Fleet;
use super::snapshots::{Built, Labels};
use crate::store::AgentRecord;
use crate::tls::PeerNames;

/// Longest NACK reason kept.
const MAX_REASON: usize = 1024;
/// Most labels an agent may have.
const MAX_LABELS: usize = 32;

pub type Outbound = mpsc::Sender<Result<v1::ControlMessage, Status>>;

/// Checks a hello, naming the field and the rule.
pub fn check_hello(hello: &v1::Hello) -> Result<(), Status> {
    check_agent_id(&hello.agent_id)
        .map_err(|rule| Status::invalid_argument(format!("hello.agent_id: {rule}")))?;
    if hello.hostname.len() > 255 {
        return Err(Status::invalid_argument(
            "hello.hostname: at most 255 characters",
        ));
    }
    if hello.build_version.len() > 64 {
        return Err(Status::invalid_argument(
            "hello.build_version: at most 64 characters",
        ));
    }
    if hello.labels.len() > MAX_LABELS {
        return Err(Status::invalid_argument(format!(
            "hello.labels: at most {MAX_LABELS} labels"
        )));
    }
    for (k, v) in &hello.labels {
        check_label(k, v)
            .map_err(|rule| Status::invalid_argument(format!("hello.labels[{k:?}]: {rule}")))?;
    }
    Ok(())
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// What the agent runs, or was last offered.
#[derive(Clone, Copy)]
struct Held {
    version: u64,
    hash: u64,
}

/// Whether `built` should go to an agent holding `held`: only a different
/// set, and never an older one (a replica that has not caught up yet waits).
/// The same set under another version is not sent: a snapshot's version
/// only says which writes it includes, and the agent's own label is as true
/// (so a reconnect storm costs no snapshot transfers).
fn worth_sending(built: &Built, held: Held) -> bool {
    built.hash != held.hash && built.version >= held.version
}

/// Runs one agent's stream until it ends, the agent connects again
/// elsewhere on this replica, or the replica stops.
pub async fn run(
    fleet: Arc<Fleet>,
    mut inbound: Streaming<v1::AgentMessage>,
    out: Outbound,
    admission: OwnedSemaphorePermit,
    identity: Option<Arc<PeerNames>>,
) {
    let mut admission = Some(admission);
    let hello = match tokio::time::timeout(fleet.options.hello_timeout, inbound.message()).await {
        Ok(Ok(Some(v1::AgentMessage {
            kind: Some(Kind::Hello(hello)),
        }))) => hello,
        Ok(Ok(Some(_))) => {
            let _ = out
                .send(Err(Status::failed_precondition(
                    "the first message on a Connect stream must be hello",
                )))
                .await;
            return;
        }
        Ok(Ok(None)) | Ok(Err(_)) => return,
        Err(_) => {
            let _ = out
                .send(Err(Status::deadline_exceeded(
                    "no hello within the hello timeout",
                )))
                .await;
            return;
        }
    };
    if let Err(status) = check_hello(&hello) {
        let _ = out.send(Err(status)).await;
        return;
    }
    if let Some(names) = identity
        && !names.contains(&hello.agent_id)
    {
        warn!(agent = %hello.agent_id, certificate_names = ?names.0, "agent refused: its id is not a name of its client certificate");
        let _ = out
            .send(Err(Status::permission_denied(format!(
                "hello.agent_id {:?} is not a name of the client certificate (its DNS and URI names: {}); \
                 an agent may only connect as an id its certificate names",
                hello.agent_id,
                if names.0.is_empty() {
                    "none".to_string()
                } else {
                    names.0.join(", ")
                }
            ))))
            .await;
        return;
    }
    let session = fleet.next_session();
    let agent_id = hello.agent_id.clone();
    let labels: Labels = hello.labels.clone();
    let now = Utc::now();
    let cancel = fleet.agents.connect(AgentRecord {
        agent_id: agent_id.clone(),
        hostname: hello.hostname.clone(),
        labels: labels.clone(),
        build_version: hello.build_version.clone(),
        replica: fleet.options.replica.clone(),
        session,
        connected: true,
        since: now,
        applied_version: i64::try_from(hello.snapshot_version).unwrap_or(i64::MAX),
        nack_version: 0,
        nack_reason: String::new(),
        last_report_time: None,
        reports_lost: 0,
    });
    info!(agent = %agent_id, hostname = %hello.hostname, version = hello.snapshot_version, "agent connected");

    let mut group = tokio::select! {
        group = fleet.snapshots.join(&labels) => group,
        () = fleet.stopping.cancelled() => {
            let _ = out.send(Err(shutting_down())).await;
            fleet.agents.disconnect(&agent_id, session, Utc::now());
            return;
        }
    };
    let mut offered = Held {
        version: hello.snapshot_version,
        hash: hello.snapshot_hash,
    };
    // The last snapshot sent and when, for the ACK lag.
    let mut sent: Option<(u64, Instant)> = None;
    let mut pending: Option<Arc<Built>> = {
        let built = group.borrow_and_update().clone();
        worth_sending(&built, offered).then_some(built)
    };
    if pending.is_none() {
        // Nothing to hand over: the agent's turn ends now.
        admission = None;
    }
    let mut report_requests = fleet.report_requests();
    report_requests.borrow_and_update();
    let end = loop {
        tokio::select! {
            changed = report_requests.changed() => {
                if changed.is_err() {
                    break Some(shutting_down());
                }
                report_requests.borrow_and_update();
                // Best effort: a full stream means the agent is busy with
                // a snapshot, and it reports on its own soon anyway.
                let _ = out.try_send(Ok(v1::ControlMessage {
                    kind: Some(v1::control_message::Kind::ReportNow(v1::ReportNow {})),
                }));
            }
            () = cancel.cancelled() => {
                break Some(if fleet.stopping.is_cancelled() {
                    shutting_down()
                } else {
                    Status::aborted("a newer stream of this agent id replaced this one")
                });
            }
            changed = group.changed(), if pending.is_none() => {
                if changed.is_err() {
                    break Some(shutting_down());
                }
                let built = group.borrow_and_update().clone();
                if worth_sending(&built, offered) {
                    pending = Some(built);
                }
            }
            slot = out.reserve(), if pending.is_some() => {
                let Ok(slot) = slot else { break None };
                if let Some(built) = pending.take() {
                    debug!(agent = %agent_id, version = built.version, "sending snapshot");
                    offered = Held { version: built.version, hash: built.hash };
                    slot.send(Ok(built.message.clone()));
                    fleet.counters.snapshots_sent.fetch_add(1, Ordering::Relaxed);
                    sent = Some((built.version, Instant::now()));
                    admission = None;
                }
            }
            message = inbound.message() => match message {
                Ok(Some(m)) => handle(&fleet, &agent_id, session, m, &mut sent),
                Ok(None) => break None,
                Err(status) => {
                    debug!(agent = %agent_id, %status, "agent stream failed");
                    break None;
                }
            },
        }
    };
    drop(admission);
    if let Some(status) = end {
        let _ = out.try_send(Err(status));
    }
    fleet.agents.disconnect(&agent_id, session, Utc::now());
    info!(agent = %agent_id, "agent disconnected");
}

fn shutting_down() -> Status {
    Status::unavailable("control plane replica shutting down; reconnect to another")
}

fn handle(
    fleet: &Fleet,
    agent_id: &str,
    session: i64,
    message: v1::AgentMessage,
    sent: &mut Option<(u64, Instant)>,
) {
    let counters = &fleet.counters;
    match message.kind {
        Some(Kind::Ack(ack)) => {
            counters.acks.fetch_add(1, Ordering::Relaxed);
            if let Some((version, at)) = *sent
                && ack.version >= version
            {
                counters.ack_lag.record(at.elapsed());
                *sent = None;
            }
            debug!(agent = %agent_id, version = ack.version, "snapshot applied");
            fleet.agents.update(agent_id, session, |r| {
                r.applied_version = i64::try_from(ack.version).unwrap_or(i64::MAX);
                // A refusal of an older snapshot is history now.
                if r.nack_version <= r.applied_version {
                    r.nack_version = 0;
                    r.nack_reason.clear();
                }
            });
        }
        Some(Kind::Nack(nack)) => {
            counters.nacks.fetch_add(1, Ordering::Relaxed);
            if sent.is_some_and(|(version, _)| nack.version >= version) {
                *sent = None;
            }
            let reason = truncate(nack.reason, MAX_REASON);
            warn!(agent = %agent_id, version = nack.version, %reason, "agent refused a snapshot; it keeps its previous one");
            fleet.agents.update(agent_id, session, |r| {
                r.nack_version = i64::try_from(nack.version).unwrap_or(i64::MAX);
                r.nack_reason = reason;
            });
        }
        Some(Kind::Report(report)) => {
            counters.reports.fetch_add(1, Ordering::Relaxed);
            match fleet.telemetry.absorb(&report, SystemTime::now()) {
                Ok(()) if report.urgent => {
                    counters.urgent_reports.fetch_add(1, Ordering::Relaxed);
                    fleet.urgent_report();
                    fleet.ask_for_reports();
                }
                Ok(()) if report.requested => fleet.urgent_report(),
                Ok(()) => {}
                Err(e) => {
                    counters.reports_refused.fetch_add(1, Ordering::Relaxed);
                    warn!(agent = %agent_id, error = %e, "telemetry report refused");
                }
            }
            let lost = i64::try_from(report.reports_lost).unwrap_or(i64::MAX);
            fleet.agents.update(agent_id, session, |r| {
                if lost > r.reports_lost {
                    warn!(agent = %agent_id, lost = lost - r.reports_lost, "agent dropped telemetry reports while the control plane was out of reach");
                }
                r.last_report_time = Some(Utc::now());
                r.reports_lost = r.reports_lost.max(lost);
            });
        }
        Some(Kind::Hello(_)) => {
            warn!(agent = %agent_id, "second hello on a stream ignored");
        }
        None => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(version: u64, hash: u64) -> Built {
        Built {
            version,
            hash,
            message: v1::ControlMessage::default(),
        }
    }

    /// A different set goes out unless it is older; the same set never.
    #[test]
    fn sends_only_what_moves_the_agent_forward() {
        let held = Held {
            version: 5,
            hash: 1,
        };
        assert!(worth_sending(&built(5, 2), held));
        assert!(worth_sending(&built(6, 2), held));
        assert!(!worth_sending(&built(4, 2), held));
        assert!(!worth_sending(&built(5, 1), held));
        assert!(!worth_sending(&built(6, 1), held));
    }

    /// Hellos are checked field by field.
    #[test]
    fn checks_hello() {
        let mut hello = v1::Hello {
            agent_id: "pod-1".into(),
            ..Default::default()
        };
        assert!(check_hello(&hello).is_ok());
        hello.agent_id = "bad id".into();
        assert!(
            check_hello(&hello)
                .unwrap_err()
                .message()
                .starts_with("hello.agent_id")
        );
        hello.agent_id = "pod-1".into();
        hello.labels.insert("-bad".into(), "x".into());
        assert!(
            check_hello(&hello)
                .unwrap_err()
                .message()
                .starts_with("hello.labels[\"-bad\"]")
        );
    }
}
