//! Concord: an inference sidecar for collaborative editors.
//!
//! One [`runtime::Engine`] per loaded model serves every task in [`tasks`]; the HTTP server in
//! [`server`] and the CLI are thin shells over those task functions.

pub mod eval;
pub mod model;
pub mod runtime;
pub mod server;
pub mod tasks;
pub mod text;
pub mod train;
