//! Several models side by side, each with its own engine; the first one is the default.

use super::Engine;

#[derive(Clone)]
pub struct Models {
    engines: Vec<Engine>,
}

impl Models {
    /// `engines` must not be empty; the first is used when a request names no model.
    pub fn new(engines: Vec<Engine>) -> Option<Self> {
        (!engines.is_empty()).then_some(Self { engines })
    }

    pub fn default_engine(&self) -> &Engine {
        &self.engines[0]
    }

    /// Finds a model by its id (`org/name` or the folder it was loaded from) or by its last
    /// path segment (`all-MiniLM-L6-v2`).
    pub fn get(&self, name: Option<&str>) -> Option<&Engine> {
        let Some(name) = name else { return Some(self.default_engine()) };
        self.engines.iter().find(|e| e.info().id == name).or_else(|| {
            self.engines.iter().find(|e| e.info().id.trim_end_matches('/').rsplit('/').next() == Some(name))
        })
    }

    pub fn all(&self) -> &[Engine] {
        &self.engines
    }
}
