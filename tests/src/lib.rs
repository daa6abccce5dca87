//! Shepherd's test kit, used by the cross-component tests in `tests/tests`
//! and by the binaries' own tests:
//!
//! - [`mock`]: a mock LLM provider (OpenAI and Anthropic, JSON and SSE) that
//!   can be told to fail, rate-limit, slow down, stall or cut streams.
//! - [`agent`]: agents on TCP, or on in-process pipes for paused-clock tests.
//! - [`http`]: a small HTTP client.
//! - [`pg`]: a fresh Postgres database per test, dropped afterwards.
//! - [`process`]: real processes, their logs and signals, for binary tests.
//! - [`fixtures`]: valid example policies.
//! - [`fleet_sim`]: many fake agents speaking the real Connect protocol.
//! - [`control_plane`]: an in-process control plane on `127.0.0.1:0` with
//!   clients for it.
//! - [`stores`]: the store engines a suite runs against.
//! - [`net`]: a TCP relay that can be cut, to take a dependency away.
//! - [`otlp`]: an OTLP trace receiver, to see the spans the binaries export.
//! - [`python`]: the official Python SDKs, run against an agent.
//! - [`load`]: steady traffic through an agent, counting what the app saw.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

pub mod agent;
pub mod control_plane;
pub mod fixtures;
pub mod fleet_sim;
pub mod http;
pub mod load;
pub mod mock;
pub mod net;
pub mod otlp;
pub mod pg;
pub mod pki;
pub mod process;
pub mod python;
pub mod stores;
