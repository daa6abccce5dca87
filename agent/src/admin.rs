//! The admin listener: `/healthz` (the process is up), `/readyz` (a policy
//! snapshot is loaded and the agent is not shutting down), `/metrics`
//! (Prometheus text format) and `/shadow/mismatches` (the latest sampled
//! shadow mismatches, JSON, newest first).

use std::sync::Arc;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use shepherd_observe::admin::{PLAIN, text};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::Agent;

/// Answers one admin request.
pub fn respond(agent: &Agent, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, PLAIN, "ok\n"),
        "/readyz" => match agent.readiness() {
            Ok(()) => text(StatusCode::OK, PLAIN, "ready\n"),
            Err(why) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                PLAIN,
                format!("not ready: {why}\n"),
            ),
        },
        "/metrics" => text(
            StatusCode::OK,
            shepherd_proto::prometheus::CONTENT_TYPE,
            agent.render_metrics(),
        ),
        "/shadow/mismatches" => text(
            StatusCode::OK,
            "application/json",
            serde_json::to_string(&agent.registry.samples.list()).unwrap_or_else(|_| "[]".into()),
        ),
        _ => text(
            StatusCode::NOT_FOUND,
            PLAIN,
            "not found: try /healthz, /readyz, /metrics or /shadow/mismatches\n",
        ),
    }
}

/// Serves the admin endpoints until `shutdown`.
pub async fn serve(listener: TcpListener, agent: Arc<Agent>, shutdown: CancellationToken) {
    shepherd_observe::admin::serve(
        listener,
        move |req| {
            let resp = respond(&agent, &req);
            async move { resp }
        },
        shutdown,
    )
    .await;
}
