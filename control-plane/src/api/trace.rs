//! A span per gRPC call (when tracing is on), continuing the caller's trace
//! from its `traceparent` metadata, with the gRPC status of the answer.
//! Agents' Connect streams (hours long), health checks and reflection are
//! not traced.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tracing::field::Empty;
use tracing::{Instrument, Span};

/// A service whose calls get a span each.
#[derive(Debug, Clone)]
pub struct Traced<S>(pub S);

fn span_of<B>(req: &http::Request<B>) -> Span {
    let path = req.uri().path();
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    if service == "shepherd.v1.AgentService" || service.starts_with("grpc.") {
        return Span::none();
    }
    let span = tracing::info_span!(
        target: "shepherd::trace",
        "rpc",
        otel.name = path.trim_start_matches('/'),
        otel.kind = "server",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = Empty,
    );
    shepherd_observe::continue_trace(&span, req.headers());
    span
}

impl<S, B, RB> tower::Service<http::Request<B>> for Traced<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let span = span_of(&req);
        let future = self.0.call(req);
        if span.is_disabled() {
            return Box::pin(future);
        }
        Box::pin(async move {
            let result = future.instrument(span.clone()).await;
            if let Ok(resp) = &result {
                // An error answer carries its status in the headers
                // (trailers-only); a success, in trailers after the body.
                let code = resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .unwrap_or(0);
                span.record("rpc.grpc.status_code", code);
                if code != 0 {
                    span.record("otel.status_code", "error");
                }
            }
            result
        })
    }
}
