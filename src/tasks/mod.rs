//! Task pipelines over the engine, shared by the CLI and the server.

pub mod embed;
pub mod factcheck;
pub mod intent;
pub mod live;
pub mod merge;
pub mod moderate;
pub mod nli;

/// A request a task refuses, with a stable code for the API (the server answers it with 422).
#[derive(Debug, thiserror::Error)]
#[error("{code}: {message}")]
pub struct InvalidRequest {
    pub code: &'static str,
    pub message: String,
}

impl InvalidRequest {
    pub fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }
}

/// Refuses `text` over `max_chars` characters with `code`; `name` says which text it was.
pub fn check_chars(code: &'static str, name: &str, text: &str, max_chars: usize) -> Result<(), InvalidRequest> {
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(InvalidRequest::new(code, format!("{name} has {chars} characters; the limit is {max_chars}")));
    }
    Ok(())
}
