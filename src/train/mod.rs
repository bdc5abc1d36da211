//! Training of Concord's own small models (scorers and heads over the shared encoder).

pub mod finetune;
pub mod intent;
pub mod logistic;
pub mod merge;
pub mod moderation;
pub mod nli;
pub mod nli_pair;
