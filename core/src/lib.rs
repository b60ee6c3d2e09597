//! Core of the agent: the profile model, the component traits and registry,
//! config loading, the pipeline runtime, the agent's own metrics, and the
//! pprof and OTLP conversions.
#![warn(missing_docs)]

pub mod bounds;
pub mod component;
pub mod config;
pub mod file_id;
pub mod model;
pub mod otlp;
pub mod panics;
pub mod pprof;
pub mod registry;
pub mod schema;
pub mod secret;
pub mod selector;
pub mod service;
pub mod stderr_tail;
pub mod telemetry;

pub use async_trait::async_trait;
pub use component::*;
pub use model::*;
pub use registry::Registry;
pub use secret::{Endpoint, Secret};
pub use telemetry::Telemetry;
