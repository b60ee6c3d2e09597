//! The set of component factories compiled into this binary.

use std::any::Any;

use serde_yaml::Value;

use crate::component::*;
use crate::config::ConfigError;

/// A component config after parsing, defaults and validation.
pub struct ParsedConfig {
    typed: Box<dyn Any + Send + Sync>,
    /// The config with every default filled in, for `print-config`.
    pub effective: Value,
}

impl ParsedConfig {
    /// The typed config, when it is a `T`.
    pub fn typed<T: Any>(&self) -> Option<&T> {
        self.typed.downcast_ref()
    }
}

/// A factory with its config type erased, so factories of every type and
/// kind live in one registry.
pub trait DynFactory: Send + Sync {
    /// Receiver, processor or exporter.
    fn kind(&self) -> Kind;
    /// Config type name.
    fn type_name(&self) -> &'static str;
    /// Stability.
    fn stability(&self) -> Stability;
    /// One-line description.
    fn description(&self) -> &'static str;
    /// The default config, as YAML.
    fn default_config(&self) -> Value;
    /// The config's JSON Schema (an exporter's with its `sending_queue`).
    fn config_schema(&self) -> schemars::Schema;
    /// Old key names still accepted, `(old, new)`.
    fn renamed_keys(&self) -> &'static [(&'static str, &'static str)];
    /// Parses and validates `value` (null = defaults); errors carry `path`.
    fn parse(&self, value: &Value, path: &str) -> Result<ParsedConfig, Vec<ConfigError>>;
    /// Builds an instance from a config this factory parsed.
    fn build(&self, config: &ParsedConfig, ctx: &BuildContext)
        -> Result<Component, ComponentError>;
}

struct Erased<F>(F);

impl<F: Factory> DynFactory for Erased<F> {
    fn kind(&self) -> Kind {
        <F::Output as IntoComponent>::KIND
    }

    fn type_name(&self) -> &'static str {
        F::TYPE
    }

    fn stability(&self) -> Stability {
        F::STABILITY
    }

    fn description(&self) -> &'static str {
        F::DESCRIPTION
    }

    fn default_config(&self) -> Value {
        serde_yaml::to_value(F::Config::default()).unwrap_or(Value::Null)
    }

    fn renamed_keys(&self) -> &'static [(&'static str, &'static str)] {
        F::Config::RENAMED_KEYS
    }

    fn config_schema(&self) -> schemars::Schema {
        let schema = crate::schema::inline_schema_for::<F::Config>();
        match self.kind() {
            Kind::Exporter => crate::schema::with_sending_queue(schema),
            _ => schema,
        }
    }

    fn parse(&self, value: &Value, path: &str) -> Result<ParsedConfig, Vec<ConfigError>> {
        let value = match value {
            Value::Null => Value::Mapping(Default::default()),
            v @ Value::Mapping(_) => v.clone(),
            _ => {
                return Err(vec![ConfigError::new(
                    path,
                    "expected a mapping of settings (or nothing, for the defaults)",
                )])
            }
        };
        let config: F::Config = crate::config::deserialize_at(value, path).map_err(|e| vec![e])?;
        let problems = config.validate();
        if !problems.is_empty() {
            return Err(problems
                .into_iter()
                .map(|p| ConfigError::new(crate::config::join_path(path, &p.field), p.message))
                .collect());
        }
        let effective = serde_yaml::to_value(&config).unwrap_or(Value::Null);
        Ok(ParsedConfig {
            typed: Box::new(config),
            effective,
        })
    }

    fn build(
        &self,
        config: &ParsedConfig,
        ctx: &BuildContext,
    ) -> Result<Component, ComponentError> {
        let typed = config
            .typed
            .downcast_ref::<F::Config>()
            .ok_or("config was parsed by another factory")?;
        Ok(self.0.create(typed.clone(), ctx)?.into_component())
    }
}

/// A component type this product has but this binary was built without.
#[derive(Clone, Debug)]
pub struct AbsentComponent {
    /// Its kind.
    pub kind: Kind,
    /// Its type name.
    pub type_name: &'static str,
    /// Why it is absent (e.g. "enable Cargo feature `exporter-file`").
    pub reason: &'static str,
}

/// The compiled-in factories, and the known types that are not compiled in.
#[derive(Default)]
pub struct Registry {
    factories: Vec<Box<dyn DynFactory>>,
    absent: Vec<AbsentComponent>,
}

impl Registry {
    /// Adds a factory.
    pub fn register<F: Factory>(&mut self, factory: F) {
        self.factories.push(Box::new(Erased(factory)));
    }

    /// Records a known component type that this build lacks, so configs and
    /// flags naming it get a precise error.
    pub fn absent(&mut self, kind: Kind, type_name: &'static str, reason: &'static str) {
        self.absent.push(AbsentComponent {
            kind,
            type_name,
            reason,
        });
    }

    /// The factory of `kind` named `type_name`.
    pub fn get(&self, kind: Kind, type_name: &str) -> Option<&dyn DynFactory> {
        self.factories
            .iter()
            .find(|f| f.kind() == kind && f.type_name() == type_name)
            .map(|f| f.as_ref())
    }

    /// Why `type_name` of `kind` is not in this build, if it is a known type.
    pub fn absent_reason(&self, kind: Kind, type_name: &str) -> Option<&AbsentComponent> {
        self.absent
            .iter()
            .find(|a| a.kind == kind && a.type_name == type_name)
    }

    /// Every compiled-in factory, in registration order.
    pub fn factories(&self) -> impl Iterator<Item = &dyn DynFactory> {
        self.factories.iter().map(|f| f.as_ref())
    }

    /// Type names of `kind` compiled in.
    pub fn type_names(&self, kind: Kind) -> Vec<&'static str> {
        self.factories
            .iter()
            .filter(|f| f.kind() == kind)
            .map(|f| f.type_name())
            .collect()
    }
}
