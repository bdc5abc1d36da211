//! Concord: an inference sidecar for collaborative editors.
//!
//! One [`runtime::Engine`] per loaded model serves every task in [`tasks`]; the HTTP server in
//! [`server`] and the CLI are thin shells over those task functions.

/// Every binary that links Concord (the CLI, tests, benchmarks) allocates with mimalloc, which
/// keeps freed activation buffers for reuse; glibc returns large ones to the kernel, and each
/// forward pass then page-faults them in again (benches/RESULTS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod eval;
pub mod model;
pub mod runtime;
pub mod server;
pub mod tasks;
pub mod text;
pub mod train;
