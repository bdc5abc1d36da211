//! Task pipelines over the engine, shared by the CLI and the server.

pub mod embed;
pub mod merge;
