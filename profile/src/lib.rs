//! The profile model every pipeline carries (one dictionary-encoded batch
//! per window and profile type), the names of the labels components hand
//! each other, and its conversions to and from pprof and to OTLP profiles:
//! what components exchange, apart from how they are wired (that is
//! `agent-core`'s).
#![warn(missing_docs)]

pub mod labels;
pub mod model;
pub mod otlp;
pub mod pprof;

pub use model::*;
