//! Shepherd's test kit, used by the cross-component tests in `tests/tests`
//! and by the binaries' own tests:
//!
//! - [`pg`]: a fresh Postgres database per test, dropped afterwards.
//! - [`fixtures`]: valid example policies.
//! - [`control_plane`]: an in-process control plane on `127.0.0.1:0` with
//!   clients for it.
//! - [`stores`]: the store engines a suite runs against.
//! - [`net`]: a TCP relay that can be cut, to take a dependency away.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stderr)]

pub mod control_plane;
pub mod fixtures;
pub mod net;
pub mod pg;
pub mod stores;
