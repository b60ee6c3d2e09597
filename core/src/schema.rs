//! Config schemas derived from the config structs (JSON Schema, draft
//! 2020-12, `schemars`): one per component type, one for a whole pipeline
//! file (`agent schema`, for editors), and the key paths they hold — what
//! the README's key reference and the conformance tests are checked against.

use std::borrow::Cow;

use schemars::generate::SchemaSettings;
use schemars::{json_schema, JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value};

use crate::component::Kind;
use crate::config::{SendingQueue, ServiceConfig};
use crate::registry::Registry;

/// A duration in a config (`10s`, `1h30m`, humantime's syntax): a string
/// of format `duration` in the schema. Fields use it as
/// `#[schemars(with = "agent_core::schema::DurationText")]`.
pub struct DurationText;

impl JsonSchema for DurationText {
    fn inline_schema() -> bool {
        true
    }

    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "duration",
            "description": "a duration: a number and a unit (ms, s, m, h, d), e.g. 250ms, 10s, 1h30m",
        })
    }
}

/// The schema of `T` with every sub-schema inlined (no `$ref`), so it can
/// be placed inside another document.
pub fn inline_schema_for<T: JsonSchema>() -> Schema {
    let mut schema = SchemaSettings::draft2020_12()
        .with(|s| s.inline_subschemas = true)
        .into_generator()
        .into_root_schema_for::<T>();
    if let Some(object) = schema.as_object_mut() {
        object.remove("$schema");
    }
    schema
}

/// What kind of value a key takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// A whole number.
    Integer,
    /// A duration ([`DurationText`]).
    Duration,
    /// `true` or `false`.
    Bool,
    /// Text, or one of a set of words.
    Text,
    /// A list.
    List,
    /// A map with keys of the user's choosing.
    Map,
    /// Anything else (a plugin's free-form config).
    Other,
}

/// One key of a config: its path (nested keys joined with `::`, as error
/// messages name them) and what it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Key {
    /// `retry_on_failure::max_interval`.
    pub path: String,
    /// What it takes.
    pub kind: KeyKind,
    /// It may be left unset (`null`, or absent from a printed config).
    pub optional: bool,
}

/// Every key of an object schema, depth first (by name within an object);
/// a nested struct contributes its own keys, not itself.
pub fn keys(schema: &Value) -> Vec<Key> {
    let mut out = Vec::new();
    if let Some(object) = schema.as_object() {
        collect_keys(object, "", false, &mut out);
    }
    out
}

fn collect_keys(object: &Map<String, Value>, prefix: &str, optional: bool, out: &mut Vec<Key>) {
    let Some(Value::Object(properties)) = object.get("properties") else {
        return;
    };
    for (name, property) in properties {
        let path = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}::{name}")
        };
        let Some(object) = property.as_object() else {
            continue;
        };
        let (property, nullable) = without_null(object);
        // Below an optional struct, every key may be absent.
        let optional = optional || nullable;
        if property.contains_key("properties") {
            collect_keys(&property, &path, optional, out);
        } else {
            out.push(Key {
                kind: kind_of(&property),
                optional,
                path,
            });
        }
    }
}

/// A value's schema without its `null` alternative, and whether it had
/// one (`Option<String>` is `type: ["string", "null"]`, `Option<Struct>`
/// an `anyOf` with a `null` branch).
fn without_null(object: &Map<String, Value>) -> (Map<String, Value>, bool) {
    if let Some(Value::Array(branches)) = object.get("anyOf") {
        let is_null = |b: &&Value| b.get("type").and_then(Value::as_str) == Some("null");
        let mut rest = branches.iter().filter(|b| !is_null(b));
        if let (Some(Value::Object(only)), None) = (rest.next(), rest.next()) {
            return (only.clone(), branches.iter().any(|b| is_null(&b)));
        }
    }
    let nullable =
        matches!(object.get("type"), Some(Value::Array(ts)) if ts.iter().any(|t| t == "null"));
    (object.clone(), nullable)
}

fn kind_of(object: &Map<String, Value>) -> KeyKind {
    let types: Vec<&str> = match object.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .filter(|t| *t != "null")
            .collect(),
        _ => Vec::new(),
    };
    match types.as_slice() {
        ["integer"] => KeyKind::Integer,
        ["boolean"] => KeyKind::Bool,
        ["string"] if object.get("format").and_then(Value::as_str) == Some("duration") => {
            KeyKind::Duration
        }
        ["string"] => KeyKind::Text,
        ["array"] => KeyKind::List,
        ["object"] => KeyKind::Map,
        [] if object.contains_key("enum") || object.contains_key("oneOf") => KeyKind::Text,
        _ => KeyKind::Other,
    }
}

/// The schema of a whole pipeline file for the components `registry`
/// holds: under `receivers`, `processors` and `exporters`, an id
/// (`type` or `type/name`) takes its type's config (exporters with their
/// `sending_queue`); `service` takes the service config.
pub fn pipeline_schema(registry: &Registry) -> Value {
    let mut sections = Map::new();
    for kind in [Kind::Receiver, Kind::Processor, Kind::Exporter] {
        let mut by_id = Map::new();
        for factory in registry.factories().filter(|f| f.kind() == kind) {
            let pattern = format!("^{}(/.+)?$", regex::escape(factory.type_name()));
            // `metadata:` with nothing after it takes the defaults.
            by_id.insert(
                pattern,
                serde_json::json!({"anyOf": [factory.config_schema().to_value(), {"type": "null"}]}),
            );
        }
        sections.insert(
            kind.section().to_owned(),
            serde_json::json!({
                "type": ["object", "null"],
                "patternProperties": by_id,
                "additionalProperties": false,
            }),
        );
    }
    let mut service = inline_schema_for::<ServiceConfig>().to_value();
    // Its default is the host name of whoever runs `agent schema`.
    if let Some(node) = service
        .pointer_mut("/properties/node")
        .and_then(Value::as_object_mut)
    {
        node.remove("default");
    }
    sections.insert("service".to_owned(), service);
    serde_json::json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "agent pipeline config",
        "type": "object",
        "properties": sections,
        "additionalProperties": false,
    })
}

/// The schema of an exporter's config: its own keys and the service's
/// `sending_queue`.
pub fn with_sending_queue(mut schema: Schema) -> Schema {
    if let Some(Value::Object(properties)) =
        schema.as_object_mut().and_then(|o| o.get_mut("properties"))
    {
        properties.insert(
            "sending_queue".to_owned(),
            inline_schema_for::<SendingQueue>().to_value(),
        );
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Inner {
        #[schemars(with = "DurationText")]
        wait: std::time::Duration,
        limit: Option<u32>,
    }

    #[derive(serde::Deserialize, JsonSchema)]
    #[allow(dead_code)]
    struct Outer {
        name: String,
        on: bool,
        inner: Inner,
        maybe: Option<Inner>,
        labels: std::collections::BTreeMap<String, String>,
        list: Vec<String>,
    }

    #[test]
    fn keys_are_paths_to_leaves_with_their_kinds() {
        let keys: Vec<(String, KeyKind, bool)> = keys(inline_schema_for::<Outer>().as_value())
            .into_iter()
            .map(|k| (k.path, k.kind, k.optional))
            .collect();
        let expected = [
            ("inner::limit", KeyKind::Integer, true),
            ("inner::wait", KeyKind::Duration, false),
            ("labels", KeyKind::Map, false),
            ("list", KeyKind::List, false),
            ("maybe::limit", KeyKind::Integer, true),
            ("maybe::wait", KeyKind::Duration, true),
            ("name", KeyKind::Text, false),
            ("on", KeyKind::Bool, false),
        ];
        assert_eq!(
            keys,
            expected.map(|(p, k, o)| (p.to_owned(), k, o)).to_vec(),
            "{:#}",
            inline_schema_for::<Outer>().to_value()
        );
    }
}
