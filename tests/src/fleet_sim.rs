//! Lightweight fake agents speaking the real Connect protocol, many from one
//! process: each says hello, ACKs every snapshot it gets and can send
//! telemetry reports. Used by the storm test and the fleet benchmark.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use shepherd_proto::v1;
use shepherd_proto::v1::agent_message::Kind;
use shepherd_proto::v1::agent_service_client::AgentServiceClient;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

/// What a simulated agent has seen.
#[derive(Debug, Default)]
pub struct SimState {
    /// Highest snapshot version ACKed.
    pub acked: AtomicU64,
}

/// One simulated agent's stream.
pub struct SimAgent {
    pub id: String,
    pub state: Arc<SimState>,
    tx: mpsc::Sender<v1::AgentMessage>,
    /// Versions as they are ACKed, with the time, for latency figures.
    pub acks: watch::Receiver<(u64, Option<Instant>)>,
    /// How many times the control plane asked for a report at once.
    pub report_requests: watch::Receiver<u64>,
    task: tokio::task::JoinHandle<Result<(), tonic::Status>>,
}

impl SimAgent {
    /// Connects over `channel` (shared by many agents) with `token`; the
    /// agent ACKs every snapshot until dropped.
    pub async fn connect(
        channel: Channel,
        token: Option<&str>,
        id: String,
        labels: BTreeMap<String, String>,
    ) -> Result<SimAgent, tonic::Status> {
        let mut client = AgentServiceClient::new(channel);
        let (tx, rx) = mpsc::channel(4);
        tx.send(v1::AgentMessage {
            kind: Some(Kind::Hello(v1::Hello {
                agent_id: id.clone(),
                hostname: "sim".into(),
                labels,
                build_version: "sim".into(),
                snapshot_version: 0,
                snapshot_hash: 0,
            })),
        })
        .await
        .map_err(|_| tonic::Status::internal("closed"))?;
        let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
        if let Some(t) = token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let mut inbound = client.connect(request).await?.into_inner();
        let state = Arc::new(SimState::default());
        let (ack_tx, acks) = watch::channel((0, None));
        let (asked_tx, report_requests) = watch::channel(0);
        let task = tokio::spawn({
            let (tx, state) = (tx.clone(), state.clone());
            async move {
                while let Some(message) = inbound.message().await? {
                    if let Some(v1::control_message::Kind::ReportNow(_)) = message.kind {
                        asked_tx.send_modify(|n| *n += 1);
                    }
                    if let Some(v1::control_message::Kind::Snapshot(s)) = message.kind {
                        let _ = tx
                            .send(v1::AgentMessage {
                                kind: Some(Kind::Ack(v1::Ack { version: s.version })),
                            })
                            .await;
                        state.acked.fetch_max(s.version, Ordering::Relaxed);
                        ack_tx.send_replace((s.version, Some(Instant::now())));
                    }
                }
                Ok(())
            }
        });
        Ok(SimAgent {
            id,
            state,
            tx,
            acks,
            report_requests,
            task,
        })
    }

    /// Waits until a snapshot of at least `version` is ACKed; returns when
    /// it arrived.
    pub async fn acked(&mut self, version: u64) -> Instant {
        let seen = self.acks.wait_for(|(v, _)| *v >= version).await.map(|r| *r);
        match seen {
            Ok((_, Some(at))) => at,
            _ => panic!("agent {} stream ended before version {version}", self.id),
        }
    }

    /// Sends a telemetry report.
    pub async fn report(&self, report: v1::TelemetryReport) -> bool {
        self.tx
            .send(v1::AgentMessage {
                kind: Some(Kind::Report(report)),
            })
            .await
            .is_ok()
    }

    /// Waits for the control plane to end the stream; its status, if any.
    pub async fn wait_closed(&mut self) -> Result<(), tonic::Status> {
        (&mut self.task)
            .await
            .unwrap_or_else(|e| Err(tonic::Status::internal(e.to_string())))
    }

    /// Ends the stream.
    pub fn close(self) {
        self.task.abort();
    }
}
