//! Hand-written parts of the generated schema: bounds that let the API
//! server accept CEL rules, and list semantics the derive cannot express.

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde_json::json;

use crate::limits::{MAX_CONTAINER_NAME_LEN, MAX_CONTAINERS};

/// `PodTemplateSpec` with `spec.containers` and container names bounded.
///
/// The root CEL rules iterate the containers and compare their names; a real
/// API server refuses such rules ("estimated rule cost exceeds budget") unless
/// both the list and the strings have a maximum size.
pub fn bounded_pod_template(generator: &mut SchemaGenerator) -> Schema {
    let mut schema = PodTemplateSpec::json_schema(generator);
    let containers = schema
        .pointer_mut("/properties/spec/properties/containers")
        .and_then(|v| v.as_object_mut())
        .expect("PodTemplateSpec schema has spec.containers");
    containers.insert("maxItems".into(), json!(MAX_CONTAINERS));
    let name = containers
        .get_mut("items")
        .and_then(|items| items.pointer_mut("/properties/name"))
        .and_then(|v| v.as_object_mut())
        .expect("Container schema has a name");
    name.insert("maxLength".into(), json!(MAX_CONTAINER_NAME_LEN));
    schema
}

/// A count or a percentage, as in a Deployment's rolling update parameters.
///
/// The rule avoids `type()`, which client-side CEL cannot evaluate: a string
/// passes only as a percentage, and `self == int(string(self))` holds only for
/// an integer (CEL equality across types is false).
pub fn int_or_percent(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "x-kubernetes-int-or-string": true,
        "x-kubernetes-validations": [{
            "rule": "string(self).matches('^[0-9]{1,3}%$') || (string(self).matches('^[0-9]{1,9}$') && self == int(string(self)))",
            "message": "must be a non-negative integer or a percentage such as \"25%\""
        }]
    })
}

/// Standard conditions, keyed by type so that server-side apply merges them
/// and a type appears at most once.
pub fn condition_list(generator: &mut SchemaGenerator) -> Schema {
    let item = generator.subschema_for::<Condition>();
    json_schema!({
        "type": "array",
        "items": item,
        "x-kubernetes-list-type": "map",
        "x-kubernetes-list-map-keys": ["type"]
    })
}
