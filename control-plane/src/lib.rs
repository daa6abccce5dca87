//! The Shepherd control plane: keeps rollout policies durably and serves them
//! over gRPC.
//!
//! - [`policy`]: policies as the control plane holds them (validated specs,
//!   revisions).
//! - [`store`]: the [`store::Store`] trait with Postgres and SQLite
//!   implementations and their migrations.
//! - [`api`]: the gRPC services and the one place domain errors become
//!   `tonic::Status`.
//! - [`analysis`]: gate checks over the fleet's telemetry windows.
//! - [`rollout`]: the rollout state machine and the leader's analysis loop.
//! - [`fleet`]: agents on their Connect streams: snapshots down, ACK/NACK
//!   and telemetry up.
//! - [`auth`]: bearer tokens for operators and agents.
//! - [`metrics`]: Prometheus metrics on the admin listener.
//! - [`server`]: assembles the gRPC server (services, health, reflection,
//!   limits) and runs it until shutdown.
//! - [`config`]: command-line flags and environment variables.

pub mod analysis;
pub mod api;
pub mod auth;
pub mod config;
pub mod fleet;
pub mod metrics;
pub mod policy;
pub mod reload;
pub mod rollout;
pub mod sequential;
pub mod server;
pub mod store;
pub mod tls;
