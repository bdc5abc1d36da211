//! Task pipelines over the engine, shared by the CLI and the server.

pub mod embed;
pub mod factcheck;
pub mod intent;
pub mod live;
pub mod merge;
pub mod moderate;
pub mod nli;
