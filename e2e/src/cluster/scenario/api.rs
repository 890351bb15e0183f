//! The real API server judges the CRD: each schema bound and CEL rule
//! rejects its invalid resource with the message `kubectl` shows, the
//! defaults are filled in, `kubectl explain` and `kubectl get` show the
//! descriptions and the columns.

use std::time::Duration;

use anyhow::{Context as _, ensure as check};
use quiesce_api::{
    DisruptionBudgetSpec, DrainSpec, EngineSpec, InferenceDeploymentSpec, RolloutStrategy,
    ServiceSpec,
};
use quiesce_api::{crd, rules};
use serde_json::{Value, json};

use crate::cluster::report::Figures;
use crate::cluster::{Suite, wait_for};

const NAMESPACE: &str = "qe2e-crd";

/// A valid resource: only what has no default.
fn minimal(name: &str) -> Value {
    json!({
        "apiVersion": "quiesce.dev/v1alpha1",
        "kind": "InferenceDeployment",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{"name": "engine", "image": "e"}]}}},
    })
}

/// RFC 7386: `patch` merged into `target`; `null` removes.
fn merge(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(target), Value::Object(patch)) => {
            for (key, value) in patch {
                if value.is_null() {
                    target.remove(key);
                } else {
                    merge(target.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        (target, patch) => *target = patch.clone(),
    }
}

/// One invalid resource: the edit of [`minimal`] and what the user reads.
struct Case {
    name: &'static str,
    edit: Value,
    says: String,
}

fn case(name: &'static str, spec: Value, says: impl Into<String>) -> Case {
    Case {
        name,
        edit: json!({"spec": spec}),
        says: says.into(),
    }
}

/// `field: Invalid value: "object": message`, as a failed CEL rule reads.
fn rule(field: &str, message: &str) -> String {
    format!("{field}: Invalid value: \"object\": {message}")
}

/// The message of the int-or-percent rule on `field`.
fn int_or_percent(field: &str) -> String {
    format!(
        "{field}: Invalid value: \"\": must be a non-negative integer or a percentage such as \"25%\""
    )
}

/// The message of an enum field given `value`, with the values the CRD
/// allows there, in its order.
fn unsupported(field: &str, value: &str) -> String {
    let definition = serde_json::to_value(crd::definition()).expect("the CRD serializes");
    let mut schema = &definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    for name in field.split('.') {
        schema = &schema["properties"][name];
    }
    let allowed: Vec<String> = schema["enum"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|v| v.to_string())
        .collect();
    format!(
        "{field}: Unsupported value: \"{value}\": supported values: {}",
        allowed.join(", ")
    )
}

fn containers(count: usize) -> Value {
    let mut list = vec![json!({"name": "engine", "image": "e"})];
    list.extend((1..count).map(|i| json!({"name": format!("c{i}"), "image": "e"})));
    json!({"spec": {"containers": list}})
}

/// One case per schema bound and per CEL rule of the CRD.
fn cases() -> Vec<Case> {
    let long_name = "a".repeat(64);
    let engine_with = |extra: Value| {
        let mut engine = json!({"name": "engine", "image": "e"});
        merge(&mut engine, &extra);
        json!({"spec": {"containers": [engine]}})
    };
    vec![
        case(
            "replicas-negative",
            json!({"replicas": -1}),
            "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0",
        ),
        case(
            "replicas-too-many",
            json!({"replicas": 10001}),
            "spec.replicas: Invalid value: 10001: spec.replicas in body should be less than or equal to 10000",
        ),
        case(
            "replicas-text",
            json!({"replicas": "two"}),
            "spec.replicas: Invalid value: \"string\": spec.replicas in body must be of type integer: \"string\"",
        ),
        case(
            "unknown-field",
            json!({"drain": {"timeout": 60}}),
            "unknown field \"spec.drain.timeout\"",
        ),
        case(
            "container-name-pattern",
            json!({"engine": {"containerName": "Engine_1"}}),
            "spec.engine.containerName: Invalid value: \"Engine_1\": spec.engine.containerName in body should match '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
        ),
        case(
            "container-name-long",
            json!({"engine": {"containerName": long_name}}),
            "spec.engine.containerName: Too long: may not be more than 63 bytes",
        ),
        case(
            "adapter-unknown",
            json!({"engine": {"adapter": "trt"}}),
            unsupported("spec.engine.adapter", "trt"),
        ),
        case(
            "engine-port",
            json!({"engine": {"port": 0}}),
            "spec.engine.port: Invalid value: 0: spec.engine.port in body should be greater than or equal to 1",
        ),
        case(
            "health-path-relative",
            json!({"engine": {"healthPath": "health"}}),
            "spec.engine.healthPath: Invalid value: \"health\": spec.engine.healthPath in body should match '^/'",
        ),
        case(
            "metrics-path-empty",
            json!({"engine": {"metricsPath": ""}}),
            "spec.engine.metricsPath: Invalid value: \"\": spec.engine.metricsPath in body should be at least 1 chars long",
        ),
        case(
            "startup-timeout-short",
            json!({"engine": {"startupTimeoutSeconds": 5}}),
            "spec.engine.startupTimeoutSeconds: Invalid value: 5: spec.engine.startupTimeoutSeconds in body should be greater than or equal to 10",
        ),
        case(
            "drain-timeout-long",
            json!({"drain": {"timeoutSeconds": 3601}}),
            "spec.drain.timeoutSeconds: Invalid value: 3601: spec.drain.timeoutSeconds in body should be less than or equal to 3600",
        ),
        case(
            "propagation-negative",
            json!({"drain": {"propagationSeconds": -1}}),
            "spec.drain.propagationSeconds: Invalid value: -1: spec.drain.propagationSeconds in body should be greater than or equal to 0",
        ),
        case(
            "abort-grace-long",
            json!({"drain": {"abortGraceSeconds": 301}}),
            "spec.drain.abortGraceSeconds: Invalid value: 301: spec.drain.abortGraceSeconds in body should be less than or equal to 300",
        ),
        case(
            "exit-margin-long",
            json!({"drain": {"exitMarginSeconds": 601}}),
            "spec.drain.exitMarginSeconds: Invalid value: 601: spec.drain.exitMarginSeconds in body should be less than or equal to 600",
        ),
        case(
            "max-surge-fraction",
            json!({"strategy": {"maxSurge": "1.5"}}),
            int_or_percent("spec.strategy.maxSurge"),
        ),
        case(
            "max-unavailable-word",
            json!({"strategy": {"maxUnavailable": "one"}}),
            int_or_percent("spec.strategy.maxUnavailable"),
        ),
        case(
            "service-type",
            json!({"service": {"type": "External"}}),
            unsupported("spec.service.type", "External"),
        ),
        case(
            "scale-in-policy",
            json!({"scaleIn": {"policy": "Idle"}}),
            unsupported("spec.scaleIn.policy", "Idle"),
        ),
        case(
            "service-port",
            json!({"service": {"port": 70000}}),
            "spec.service.port: Invalid value: 70000: spec.service.port in body should be less than or equal to 65535",
        ),
        case(
            "budget-word",
            json!({"disruptionBudget": {"maxUnavailable": "half"}}),
            int_or_percent("spec.disruptionBudget.maxUnavailable"),
        ),
        case(
            "sidecar-image-empty",
            json!({"sidecar": {"image": ""}}),
            "spec.sidecar.image: Invalid value: \"\": spec.sidecar.image in body should be at least 1 chars long",
        ),
        case(
            "sidecar-port",
            json!({"sidecar": {"port": 0}}),
            "spec.sidecar.port: Invalid value: 0: spec.sidecar.port in body should be greater than or equal to 1",
        ),
        case(
            "too-many-containers",
            json!({"template": containers(17)}),
            "spec.template.spec.containers: Too many: 17: must have at most 16 items",
        ),
        case(
            "template-container-name-long",
            json!({"template": {"spec": {"containers": [{"name": "engine", "image": "e"}, {"name": "a".repeat(64), "image": "e"}]}}}),
            "spec.template.spec.containers[1].name: Too long: may not be more than 63 bytes",
        ),
        // The CEL rules, each with the message that says what to fix.
        case(
            "engine-missing",
            json!({"template": {"spec": {"containers": [{"name": "vllm", "image": "e"}]}}}),
            rule(
                "spec.template.spec.containers",
                rules::ENGINE_CONTAINER_PRESENT_MSG,
            ),
        ),
        case(
            "engine-pre-stop",
            json!({"template": engine_with(json!({"lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}}))}),
            rule(
                "spec.template.spec.containers",
                rules::NO_ENGINE_PRESTOP_MSG,
            ),
        ),
        case(
            "template-grace-period",
            json!({"template": {"spec": {"terminationGracePeriodSeconds": 30}}}),
            rule(
                "spec.template.spec.terminationGracePeriodSeconds",
                rules::NO_TEMPLATE_GRACE_PERIOD_MSG,
            ),
        ),
        case(
            "http-without-health-path",
            json!({"engine": {"adapter": "http"}}),
            rule("spec.engine", rules::HTTP_NEEDS_HEALTH_PATH_MSG),
        ),
        case(
            "grace-period-over-an-hour",
            json!({"drain": {"timeoutSeconds": 3600}}),
            rule("spec.drain", rules::GRACE_PERIOD_BOUNDED_MSG),
        ),
        case(
            "rollout-cannot-progress",
            json!({"strategy": {"maxSurge": 0, "maxUnavailable": "0%"}}),
            rule("spec.strategy", rules::ROLLOUT_CAN_PROGRESS_MSG),
        ),
    ]
}

/// Every invalid resource refused with its message, the defaults, explain
/// and the printer columns.
pub async fn crd(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    suite.fresh_namespace(NAMESPACE).await?;

    let cases = cases();
    let mut wrong = Vec::new();
    for case in &cases {
        let mut resource = minimal(case.name);
        merge(&mut resource, &case.edit);
        let output = suite
            .kubectl
            .output(
                &[
                    "create",
                    "--dry-run=server",
                    "-n",
                    NAMESPACE,
                    "-o",
                    "name",
                    "-f",
                    "-",
                ],
                Some(&resource.to_string()),
            )
            .await?;
        if output.status.success() {
            wrong.push(format!("{}: accepted", case.name));
        } else if !output.stderr.contains(&case.says) {
            wrong.push(format!(
                "{}: expected {:?}, kubectl said:\n{}",
                case.name,
                case.says,
                output.stderr.trim()
            ));
        }
    }
    check!(
        wrong.is_empty(),
        "the API server judged differently:\n{}",
        wrong.join("\n")
    );
    figures.add("invalid resources refused with their message", cases.len());

    defaults(suite).await?;
    figures.add(
        "defaults",
        "filled in by the API server, equal to the Rust defaults",
    );
    explain(suite).await?;
    figures.add(
        "kubectl explain inferencedeployment.spec.drain",
        "every field described",
    );
    let header = columns(suite).await?;
    figures.add("kubectl get infd", header);
    suite.delete_namespace(NAMESPACE).await?;
    Ok(figures)
}

/// The defaulted object the API server would store equals the Rust defaults.
async fn defaults(suite: &Suite) -> anyhow::Result<()> {
    let stored = suite
        .kubectl
        .run_with_input(
            &[
                "create",
                "--dry-run=server",
                "-n",
                NAMESPACE,
                "-o",
                "json",
                "-f",
                "-",
            ],
            Some(&minimal("defaults").to_string()),
        )
        .await?;
    let stored: Value = serde_json::from_str(&stored)?;
    let spec = &stored["spec"];
    let expected = [
        ("replicas", json!(1)),
        ("engine", serde_json::to_value(EngineSpec::default())?),
        ("drain", serde_json::to_value(DrainSpec::default())?),
        (
            "strategy",
            serde_json::to_value(RolloutStrategy::default())?,
        ),
        ("service", serde_json::to_value(ServiceSpec::default())?),
        (
            "disruptionBudget",
            serde_json::to_value(DisruptionBudgetSpec::default())?,
        ),
    ];
    for (field, want) in expected {
        check!(
            spec[field] == want,
            "spec.{field} defaulted to {}, the operator's default is {want}",
            spec[field]
        );
    }
    // And the whole defaulted spec is one the operator accepts as it is.
    let spec: InferenceDeploymentSpec = serde_json::from_value(spec.clone())?;
    quiesce_api::rules::validate(&spec)
        .map_err(|v| anyhow::anyhow!("the defaulted spec is invalid for the operator: {v:?}"))?;
    Ok(())
}

/// `kubectl explain` shows each drain field with its description.
async fn explain(suite: &Suite) -> anyhow::Result<()> {
    let shown = suite
        .kubectl
        .run(&["explain", "inferencedeployment.spec.drain"])
        .await?;
    let flat = |text: &str| text.split_whitespace().collect::<Vec<_>>().join(" ");
    let shown_flat = flat(&shown);
    let definition = serde_json::to_value(crd::definition())?;
    let drain = &definition["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        ["properties"]["drain"];
    let mut described = vec![("drain", drain["description"].as_str())];
    let fields = drain["properties"]
        .as_object()
        .context("spec.drain has no fields")?;
    described.extend(
        fields
            .iter()
            .map(|(name, f)| (name.as_str(), f["description"].as_str())),
    );
    for (name, description) in described {
        let description = description.with_context(|| format!("{name} has no description"))?;
        check!(
            shown.contains(name),
            "kubectl explain does not list {name}:\n{shown}"
        );
        check!(
            shown_flat.contains(&flat(description)),
            "kubectl explain does not show the description of {name} ({description:?}):\n{shown}"
        );
    }
    Ok(())
}

/// `kubectl get infd` prints the CRD's columns with the operator's status.
async fn columns(suite: &Suite) -> anyhow::Result<String> {
    let mut resource = minimal("columns");
    merge(&mut resource, &json!({"spec": {"replicas": 0}}));
    suite
        .kubectl
        .run_with_input(
            &["create", "-n", NAMESPACE, "-f", "-"],
            Some(&resource.to_string()),
        )
        .await?;
    let api = suite.api::<quiesce_api::InferenceDeployment>(NAMESPACE);
    wait_for(
        &api,
        "columns",
        Duration::from_secs(30),
        "the operator reports the grace period",
        |r| {
            r.and_then(|r| r.status.as_ref()?.termination_grace_period_seconds)
                .is_some()
        },
    )
    .await?;
    let definition = serde_json::to_value(crd::definition())?;
    let printed = definition["spec"]["versions"][0]["additionalPrinterColumns"]
        .as_array()
        .context("the CRD has no printer columns")?
        .iter()
        .filter(|c| c["priority"].as_i64().unwrap_or(0) == 0)
        .map(|c| c["name"].as_str().unwrap_or_default().to_uppercase());
    let expected: Vec<String> = std::iter::once("NAME".to_owned()).chain(printed).collect();
    let table = suite
        .kubectl
        .run(&["get", "infd", "columns", "-n", NAMESPACE])
        .await?;
    let mut lines = table.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    check!(
        header == expected,
        "kubectl get infd printed {header:?}, expected {expected:?}"
    );
    let row: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    let grace = DrainSpec::default()
        .termination_grace_period_seconds()
        .to_string();
    check!(
        // NAME REPLICAS READY DRAINING DRAIN-TIMEOUT GRACE-PERIOD AGE
        row.get(..6) == Some(&["columns", "0", "0", "0", "120", grace.as_str()][..]),
        "kubectl get infd printed the row {row:?}"
    );
    Ok(format!("{} / {}", header.join(" "), row.join(" ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_messages_list_the_values_of_the_crd() {
        assert_eq!(
            unsupported("spec.service.type", "External"),
            "spec.service.type: Unsupported value: \"External\": supported values: \"ClusterIP\", \"NodePort\", \"LoadBalancer\""
        );
        assert!(unsupported("spec.engine.adapter", "trt").ends_with("\"trtllm\", \"http\""));
    }

    #[test]
    fn an_edit_merges_into_the_minimal_resource_and_null_removes() {
        let mut resource = minimal("x");
        merge(
            &mut resource,
            &json!({"spec": {"replicas": 2, "template": null}}),
        );
        assert_eq!(resource["spec"], json!({"replicas": 2}));
        assert_eq!(resource["metadata"]["name"], "x");
    }

    #[test]
    fn every_cel_rule_of_the_crd_has_a_case_with_its_message() {
        let definition = serde_json::to_string(&crd::definition()).unwrap();
        let said: Vec<String> = cases().into_iter().map(|c| c.says).collect();
        for message in [
            rules::ENGINE_CONTAINER_PRESENT_MSG,
            rules::NO_ENGINE_PRESTOP_MSG,
            rules::NO_TEMPLATE_GRACE_PERIOD_MSG,
            rules::HTTP_NEEDS_HEALTH_PATH_MSG,
            rules::GRACE_PERIOD_BOUNDED_MSG,
            rules::ROLLOUT_CAN_PROGRESS_MSG,
        ] {
            assert!(definition.contains(&serde_json::to_string(message).unwrap()[1..]));
            assert!(
                said.iter().any(|s| s.ends_with(message)),
                "no case for {message:?}"
            );
        }
        let names: std::collections::BTreeSet<&str> = cases().iter().map(|c| c.name).collect();
        assert_eq!(names.len(), cases().len(), "case names are unique");
    }
}
