//! The pipeline: component traits and registry, config loading, the
//! service that runs receivers, processors and exporters, and the agent's
//! own metrics. The profile model and its conversions live in
//! `agent-profile`, re-exported here for components.
#![warn(missing_docs)]

pub mod bounds;
pub mod component;
pub mod config;
pub mod panics;
pub mod registry;
pub mod schema;
pub mod secret;
pub mod service;
pub mod stats;
pub mod stderr_tail;
pub mod telemetry;

pub use agent_profile::{labels, model, otlp, pprof};
pub use async_trait::async_trait;
pub use component::*;
pub use model::*;
pub use registry::Registry;
pub use secret::{Endpoint, Secret};
pub use telemetry::Telemetry;
