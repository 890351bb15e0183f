//! Tests of the generated CRD: it is current, structural, complete, and its
//! schema (bounds and CEL rules, evaluated here as the API server would)
//! rejects the invalid resources users actually write.

use std::collections::HashMap;
use std::path::Path;
use std::sync::LazyLock;

use kube::core::cel::cel::Program;
use kube::core::cel::cel::common::ast::Expr;
use kube::core::cel::{Validator, apply_defaults};
use quiesce_api::{InferenceDeployment, InferenceDeploymentSpec};
use quiesce_api::{crd, rules};
use serde_json::{Value, json};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn crd_json() -> Value {
    serde_json::to_value(crd::definition()).unwrap()
}

fn version(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]
}

fn openapi_schema() -> Value {
    static SCHEMA: LazyLock<Value> =
        LazyLock::new(|| version(&crd_json())["schema"]["openAPIV3Schema"].clone());
    SCHEMA.clone()
}

fn example(name: &str) -> Value {
    let text = std::fs::read_to_string(repo_root().join("examples").join(name)).unwrap();
    serde_saphyr::from_str(&text).unwrap()
}

/// Everything the API server would say about `object`: schema violations
/// (types, bounds, patterns, enums) and failed CEL rules, after defaulting.
fn api_server_errors(object: &Value) -> Vec<String> {
    let schema = openapi_schema();
    let defaulted = apply_defaults(&schema, object);
    static VALIDATOR: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
        jsonschema::validator_for(&openapi_schema()).expect("the CRD schema compiles")
    });
    let mut errors: Vec<String> = VALIDATOR
        .iter_errors(&defaulted)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect();
    if let Err(failed) = Validator::new().validate(&schema, &defaulted, None) {
        errors.extend(failed.iter().map(|e| e.to_string()));
    }
    errors
}

/// What the operator's own validation says about `object`.
fn operator_errors(object: &Value) -> Vec<String> {
    match serde_json::from_value::<InferenceDeployment>(object.clone()) {
        Err(e) => vec![format!("does not deserialize: {e}")],
        Ok(resource) => match rules::validate(&resource.spec) {
            Ok(_) => vec![],
            Err(violations) => violations.iter().map(ToString::to_string).collect(),
        },
    }
}

#[test]
fn committed_crds_are_current() {
    // crds/ for kubectl, and the Helm chart's copy, which Helm installs.
    let chart_copy = format!("charts/quiesce/{}", crd::CRD_PATH);
    for path in [crd::CRD_PATH, chart_copy.as_str()] {
        let committed = std::fs::read_to_string(repo_root().join(path)).unwrap_or_default();
        assert!(
            committed == crd::to_yaml(),
            "{path} is stale: regenerate it with\n\n    cargo run -p quiesce-operator -- crd > {path}\n"
        );
    }
}

#[test]
fn crd_has_names_subresources_and_printer_columns() {
    let crd = crd_json();
    assert_eq!(crd["spec"]["group"], "quiesce.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["infd"]));
    let version = version(&crd);
    assert_eq!(version["name"], "v1alpha1");
    assert_eq!(version["subresources"]["status"], json!({}));
    assert_eq!(
        version["subresources"]["scale"],
        json!({
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        })
    );
    let columns: Vec<&str> = version["additionalPrinterColumns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for wanted in [
        "Replicas",
        "Ready",
        "Draining",
        "Drain-Timeout",
        "Grace-Period",
        "Age",
    ] {
        assert!(
            columns.contains(&wanted),
            "no {wanted} column in {columns:?}"
        );
    }
}

/// A structural schema (what apiextensions/v1 requires): every node says its
/// type, and nothing hides behind a reference or a combinator.
#[test]
fn schema_is_structural() {
    fn walk(path: &str, node: &Value, problems: &mut Vec<String>) {
        let Some(map) = node.as_object() else { return };
        let typed = map.contains_key("type")
            || map.contains_key("x-kubernetes-int-or-string")
            || map.contains_key("x-kubernetes-preserve-unknown-fields");
        if !typed {
            problems.push(format!("{path}: no type"));
        }
        for forbidden in ["$ref", "allOf", "oneOf", "anyOf", "not"] {
            if map.contains_key(forbidden) {
                problems.push(format!("{path}: uses {forbidden}"));
            }
        }
        if let Some(props) = map.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                walk(&format!("{path}.{name}"), child, problems);
            }
        }
        if let Some(items) = map.get("items") {
            walk(&format!("{path}[]"), items, problems);
        }
        if let Some(extra @ Value::Object(_)) = map.get("additionalProperties") {
            walk(&format!("{path}{{}}"), extra, problems);
        }
    }
    let mut problems = vec![];
    walk("", &openapi_schema(), &mut problems);
    assert!(
        problems.is_empty(),
        "not structural:\n{}",
        problems.join("\n")
    );
}

/// `kubectl explain` teaches the API only if every field has a description.
#[test]
fn every_field_has_a_description() {
    fn walk(path: &str, node: &Value, missing: &mut Vec<String>) {
        let Some(map) = node.as_object() else { return };
        if let Some(props) = map.get("properties").and_then(Value::as_object) {
            for (name, child) in props {
                let child_path = format!("{path}.{name}");
                let described = child
                    .get("description")
                    .and_then(Value::as_str)
                    .is_some_and(|d| !d.trim().is_empty());
                // apiVersion, kind and metadata are described by Kubernetes itself.
                if !described
                    && !matches!(child_path.as_str(), ".apiVersion" | ".kind" | ".metadata")
                {
                    missing.push(child_path.clone());
                }
                walk(&child_path, child, missing);
            }
        }
        if let Some(items) = map.get("items") {
            walk(&format!("{path}[]"), items, missing);
        }
    }
    let mut missing = vec![];
    walk("", &openapi_schema(), &mut missing);
    assert!(
        missing.is_empty(),
        "fields without a description:\n{}",
        missing.join("\n")
    );
}

/// Collects the CEL rules of a schema with the node each one is attached to.
fn rules_with_nodes(node: &Value, out: &mut Vec<(Value, String, Option<String>)>) {
    let Some(map) = node.as_object() else { return };
    for rule in map
        .get("x-kubernetes-validations")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        out.push((
            node.clone(),
            rule["rule"].as_str().unwrap().to_owned(),
            rule.get("message")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ));
    }
    for key in ["properties"] {
        if let Some(props) = map.get(key).and_then(Value::as_object) {
            props
                .values()
                .for_each(|child| rules_with_nodes(child, out));
        }
    }
    if let Some(items) = map.get("items") {
        rules_with_nodes(items, out);
    }
}

#[test]
fn every_rule_has_an_actionable_message() {
    let mut found = vec![];
    rules_with_nodes(&openapi_schema(), &mut found);
    assert!(
        found.len() >= 6,
        "expected the CEL rules, found {}",
        found.len()
    );
    for (_, rule, message) in found {
        let message = message.unwrap_or_default();
        assert!(
            message.len() > 20,
            "rule {rule:?} has no useful message: {message:?}"
        );
    }
}

/// Lists and strings that a rule iterates over inside a comprehension, but
/// whose size the schema does not bound. A real API server refuses such rules
/// ("estimated rule cost exceeds budget by factor of more than 100x").
fn unbounded_in_rule(node: &Value, rule: &str) -> Vec<String> {
    fn resolve<'a>(
        expr: &Expr,
        self_node: &'a Value,
        vars: &HashMap<String, &'a Value>,
    ) -> Option<&'a Value> {
        match expr {
            Expr::Ident(name) if name == "self" => Some(self_node),
            Expr::Ident(name) => vars.get(name).copied(),
            Expr::Select(select) => resolve(&select.operand.expr, self_node, vars)?
                .get("properties")?
                .get(&select.field),
            _ => None,
        }
    }
    fn walk<'a>(
        expr: &Expr,
        self_node: &'a Value,
        vars: &HashMap<String, &'a Value>,
        in_loop: bool,
        problems: &mut Vec<String>,
    ) {
        match expr {
            Expr::Comprehension(comp) => {
                walk(&comp.iter_range.expr, self_node, vars, in_loop, problems);
                let Some(list) = resolve(&comp.iter_range.expr, self_node, vars) else {
                    problems.push(format!(
                        "cannot resolve the list iterated as {:?}",
                        comp.iter_var
                    ));
                    return;
                };
                if list.get("maxItems").is_none() {
                    problems.push(format!(
                        "list iterated as {:?} has no maxItems",
                        comp.iter_var
                    ));
                }
                let mut inner = vars.clone();
                if let Some(items) = list.get("items") {
                    inner.insert(comp.iter_var.clone(), items);
                }
                for part in [&comp.loop_cond, &comp.loop_step, &comp.result] {
                    walk(&part.expr, self_node, &inner, true, problems);
                }
            }
            Expr::Select(select) => {
                let unbounded_string = in_loop
                    && !select.test
                    && resolve(expr, self_node, vars).is_some_and(|target| {
                        target["type"] == "string" && target.get("maxLength").is_none()
                    });
                if unbounded_string {
                    problems.push(format!(
                        "string .{} compared in a loop has no maxLength",
                        select.field
                    ));
                }
                walk(&select.operand.expr, self_node, vars, in_loop, problems);
            }
            Expr::Call(call) => {
                if let Some(target) = &call.target {
                    walk(&target.expr, self_node, vars, in_loop, problems);
                }
                for arg in &call.args {
                    walk(&arg.expr, self_node, vars, in_loop, problems);
                }
            }
            _ => {}
        }
    }
    let program =
        Program::compile(rule).unwrap_or_else(|e| panic!("rule {rule:?} does not compile: {e}"));
    let mut problems = vec![];
    walk(
        &program.expression().expr,
        node,
        &HashMap::new(),
        false,
        &mut problems,
    );
    problems
}

#[test]
fn rules_only_walk_bounded_lists_and_strings() {
    let mut found = vec![];
    rules_with_nodes(&openapi_schema(), &mut found);
    for (node, rule, _) in found {
        let problems = unbounded_in_rule(&node, &rule);
        assert!(
            problems.is_empty(),
            "rule {rule:?}: {}",
            problems.join("; ")
        );
    }
}

/// The guard above must be able to fail: without the patched bounds it
/// reports both the list and the string.
#[test]
fn bounds_guard_catches_unbounded_containers() {
    let mut schema = openapi_schema();
    let containers = schema
        .pointer_mut("/properties/spec/properties/template/properties/spec/properties/containers")
        .unwrap();
    containers.as_object_mut().unwrap().remove("maxItems");
    containers["items"]["properties"]["name"]
        .as_object_mut()
        .unwrap()
        .remove("maxLength");
    let problems = unbounded_in_rule(&schema, rules::ENGINE_CONTAINER_PRESENT);
    assert_eq!(problems.len(), 2, "{problems:?}");
}

#[test]
fn examples_are_valid_for_the_api_server_and_the_operator() {
    for name in [
        "minimal.yaml",
        "full.yaml",
        "vllm.yaml",
        "sglang.yaml",
        "http.yaml",
    ] {
        let object = example(name);
        assert_eq!(api_server_errors(&object), Vec::<String>::new(), "{name}");
        assert_eq!(operator_errors(&object), Vec::<String>::new(), "{name}");
    }
}

/// The schema's defaults and the Rust defaults must agree, or the operator
/// would act on values the user never sees in `kubectl get -o yaml`.
#[test]
fn schema_defaults_match_rust_defaults() {
    let minimal = example("minimal.yaml");
    let schema_defaulted = apply_defaults(&openapi_schema(), &minimal);
    let from_schema: InferenceDeploymentSpec =
        serde_json::from_value(schema_defaulted["spec"].clone()).unwrap();
    let from_serde: InferenceDeploymentSpec =
        serde_json::from_value(minimal["spec"].clone()).unwrap();
    assert_eq!(from_schema, from_serde);
    // And the defaulted object carries every default explicitly.
    let spec = &schema_defaulted["spec"];
    assert_eq!(spec["replicas"], 1);
    assert_eq!(spec["engine"]["containerName"], "engine");
    assert_eq!(spec["engine"]["adapter"], "protocol");
    assert_eq!(spec["drain"]["timeoutSeconds"], 120);
    assert_eq!(spec["drain"]["propagationSeconds"], 5);
    assert_eq!(spec["strategy"]["maxSurge"], 1);
    assert_eq!(spec["strategy"]["maxUnavailable"], 0);
    assert_eq!(spec["service"]["enabled"], true);
}

/// Applies `edit` to the minimal example and expects both the API server's
/// view and the operator's to reject it, each saying `expected`.
fn assert_rejected(case: &str, edit: impl Fn(&mut Value), expected: &str) {
    let mut object = example("minimal.yaml");
    edit(&mut object);
    let server = api_server_errors(&object);
    assert!(
        server.iter().any(|e| e.contains(expected)),
        "{case}: the schema should reject it with {expected:?}, said {server:?}"
    );
    let operator = operator_errors(&object);
    assert!(
        operator.iter().any(|e| e.contains(expected)),
        "{case}: the operator should reject it with {expected:?}, said {operator:?}"
    );
}

#[test]
fn negative_and_oversized_durations_are_rejected() {
    let fields = [
        ("timeoutSeconds", 3601),
        ("propagationSeconds", 301),
        ("abortGraceSeconds", 301),
        ("exitMarginSeconds", 601),
    ];
    for (field, too_large) in fields {
        assert_rejected(
            &format!("negative {field}"),
            |o| o["spec"]["drain"][field] = json!(-1),
            "-1",
        );
        assert_rejected(
            &format!("oversized {field}"),
            |o| o["spec"]["drain"][field] = json!(too_large),
            &too_large.to_string(),
        );
    }
    assert_rejected(
        "startup timeout too short",
        |o| o["spec"]["engine"]["startupTimeoutSeconds"] = json!(1),
        "1",
    );
}

#[test]
fn grace_period_over_the_maximum_is_rejected() {
    // Each duration within its own bound, the sum over 3600.
    assert_rejected(
        "grace period 3601 s",
        |o| {
            o["spec"]["drain"] = json!({
                "timeoutSeconds": 3300, "propagationSeconds": 100,
                "abortGraceSeconds": 100, "exitMarginSeconds": 101,
            })
        },
        rules::GRACE_PERIOD_BOUNDED_MSG,
    );
    // Exactly at the maximum is fine.
    let mut object = example("minimal.yaml");
    object["spec"]["drain"] = json!({
        "timeoutSeconds": 3300, "propagationSeconds": 100,
        "abortGraceSeconds": 100, "exitMarginSeconds": 100,
    });
    assert_eq!(api_server_errors(&object), Vec::<String>::new());
    assert_eq!(operator_errors(&object), Vec::<String>::new());
}

#[test]
fn missing_engine_container_is_rejected() {
    assert_rejected(
        "engine container renamed",
        |o| o["spec"]["template"]["spec"]["containers"][0]["name"] = json!("server"),
        rules::ENGINE_CONTAINER_PRESENT_MSG,
    );
    assert_rejected(
        "containerName names no container",
        |o| o["spec"]["engine"] = json!({"containerName": "vllm"}),
        rules::ENGINE_CONTAINER_PRESENT_MSG,
    );
    assert_rejected(
        "no pod spec at all",
        |o| o["spec"]["template"] = json!({"metadata": {"labels": {"a": "b"}}}),
        rules::ENGINE_CONTAINER_PRESENT_MSG,
    );
}

#[test]
fn engine_prestop_and_template_grace_period_are_rejected() {
    assert_rejected(
        "engine preStop",
        |o| {
            o["spec"]["template"]["spec"]["containers"][0]["lifecycle"] =
                json!({"preStop": {"exec": {"command": ["sleep", "15"]}}})
        },
        rules::NO_ENGINE_PRESTOP_MSG,
    );
    // Found by the generated resources below: a second container of the
    // engine's name with a preStop passed the Rust rules, not the CEL.
    assert_rejected(
        "a second engine container with a preStop",
        |o| {
            let containers = o["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .unwrap();
            let mut twin = containers[0].clone();
            twin["lifecycle"] = json!({"preStop": {"exec": {"command": ["sleep", "15"]}}});
            containers.push(twin);
        },
        rules::NO_ENGINE_PRESTOP_MSG,
    );
    assert_rejected(
        "template grace period",
        |o| o["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] = json!(30),
        rules::NO_TEMPLATE_GRACE_PERIOD_MSG,
    );
    // A preStop on another container is the user's business.
    let mut object = example("minimal.yaml");
    object["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "proxy", "image": "envoy", "lifecycle": {"preStop": {"exec": {"command": ["sleep", "5"]}}}}));
    assert_eq!(api_server_errors(&object), Vec::<String>::new());
    assert_eq!(operator_errors(&object), Vec::<String>::new());
}

#[test]
fn other_invalid_fields_are_rejected() {
    assert_rejected(
        "rollout that cannot progress",
        |o| o["spec"]["strategy"] = json!({"maxSurge": 0, "maxUnavailable": "0%"}),
        rules::ROLLOUT_CAN_PROGRESS_MSG,
    );
    assert_rejected(
        "bad percentage",
        |o| o["spec"]["disruptionBudget"] = json!({"maxUnavailable": "half"}),
        "percentage",
    );
    assert_rejected(
        "http adapter without health path",
        |o| o["spec"]["engine"]["adapter"] = json!("http"),
        rules::HTTP_NEEDS_HEALTH_PATH_MSG,
    );
    assert_rejected(
        "negative replicas",
        |o| o["spec"]["replicas"] = json!(-1),
        "-1",
    );
    assert_rejected(
        "17 containers",
        |o| {
            let containers = o["spec"]["template"]["spec"]["containers"]
                .as_array_mut()
                .unwrap();
            for i in 0..16 {
                containers.push(json!({"name": format!("c{i}"), "image": "busybox"}));
            }
        },
        "16",
    );
}

#[test]
fn counts_and_percentages() {
    for good in [json!(0), json!(3), json!("25%"), json!("100%")] {
        let mut object = example("minimal.yaml");
        object["spec"]["disruptionBudget"] = json!({"maxUnavailable": good});
        assert_eq!(api_server_errors(&object), Vec::<String>::new(), "{good}");
        assert_eq!(operator_errors(&object), Vec::<String>::new(), "{good}");
    }
    for bad in [
        json!(-1),
        json!("5"),
        json!("-5%"),
        json!("1000%"),
        json!("half"),
    ] {
        assert_rejected(
            &format!("maxUnavailable {bad}"),
            |o| o["spec"]["disruptionBudget"] = json!({"maxUnavailable": bad}),
            "percentage",
        );
    }
}

mod generated {
    //! The Rust rules and the CRD's schema and CEL, on resources generated
    //! around every bound: both accept a resource, or both refuse it.

    use proptest::prelude::*;
    use quiesce_api::limits::{self, Bound};
    use serde_json::{Value, json};

    /// Values at, beside and between a bound's ends, inside most often.
    fn around(bound: Bound) -> impl Strategy<Value = i32> {
        let (min, max) = (bound.min, bound.max);
        prop_oneof![
            1 => Just(min - 1),
            1 => Just(min),
            1 => Just(max),
            1 => Just(max + 1),
            32 => min..=max,
        ]
    }

    fn count_or_percent() -> impl Strategy<Value = Value> {
        prop_oneof![
            6 => (0..5i32).prop_map(|n| json!(n)),
            1 => Just(json!(-1)),
            4 => prop::sample::select(vec!["0%", "25%", "100%"]).prop_map(|s| json!(s)),
            1 => prop::sample::select(vec!["1000%", "5", "%", "x%", "-5%"]).prop_map(|s| json!(s)),
        ]
    }

    fn http_path() -> impl Strategy<Value = Option<String>> {
        let long = |n: usize| format!("/{}", "p".repeat(n - 1));
        let max = limits::MAX_HTTP_PATH_LEN as usize;
        prop::option::of(prop_oneof![
            8 => prop::sample::select(vec!["/health".to_owned(), "/".to_owned(), long(max)]),
            1 => prop::sample::select(vec!["health".to_owned(), String::new(), long(max + 1)]),
        ])
    }

    fn container_name() -> impl Strategy<Value = String> {
        let max = limits::MAX_CONTAINER_NAME_LEN as usize;
        prop_oneof![
            8 => prop::sample::select(vec!["engine".to_owned(), "vllm".to_owned(), "e".repeat(max)]),
            1 => prop::sample::select(vec![
                "Engine".to_owned(),
                "-engine".to_owned(),
                "engine-".to_owned(),
                "e".repeat(max + 1),
            ]),
        ]
    }

    fn container(name: String, pre_stop: bool) -> Value {
        let mut container = json!({"name": name, "image": "engine:1"});
        if pre_stop {
            container["lifecycle"] = json!({"preStop": {"exec": {"command": ["sleep", "5"]}}});
        }
        container
    }

    prop_compose! {
        fn resource()(
            replicas in around(limits::REPLICAS),
            port in around(limits::ENGINE_PORT),
            startup in around(limits::STARTUP_TIMEOUT),
            drain in (
                around(limits::PROPAGATION),
                around(limits::DRAIN_TIMEOUT),
                around(limits::ABORT_GRACE),
                around(limits::EXIT_MARGIN),
            ),
            service_port in prop::option::of(around(limits::SERVICE_PORT)),
            sidecar_port in prop::option::of(around(limits::SIDECAR_PORT)),
            engine_name in container_name(),
            adapter in prop::sample::select(vec!["protocol", "vllm", "sglang", "trtllm", "http"]),
            health_path in http_path(),
            metrics_path in http_path(),
            rollout in (count_or_percent(), count_or_percent()),
            budget in count_or_percent(),
            others in prop::collection::vec((container_name(), prop::bool::weighted(0.2)), 0..3),
            engine_container in prop::option::weighted(0.9, prop::bool::weighted(0.1)),
            grace in prop::option::weighted(0.1, 0..100i64),
        ) -> Value {
            let (propagation, timeout, abort_grace, exit_margin) = drain;
            let mut engine = json!({
                "containerName": engine_name, "adapter": adapter, "port": port,
                "startupTimeoutSeconds": startup,
            });
            if let Some(path) = health_path {
                engine["healthPath"] = json!(path);
            }
            if let Some(path) = metrics_path {
                engine["metricsPath"] = json!(path);
            }
            let mut containers: Vec<Value> =
                others.into_iter().map(|(name, hook)| container(name, hook)).collect();
            if let Some(pre_stop) = engine_container {
                containers.push(container(engine_name.clone(), pre_stop));
            }
            let mut pod = json!({"containers": containers});
            if let Some(grace) = grace {
                pod["terminationGracePeriodSeconds"] = json!(grace);
            }
            let mut spec = json!({
                "replicas": replicas,
                "template": {"spec": pod},
                "engine": engine,
                "drain": {
                    "propagationSeconds": propagation, "timeoutSeconds": timeout,
                    "abortGraceSeconds": abort_grace, "exitMarginSeconds": exit_margin,
                },
                "strategy": {"maxSurge": rollout.0, "maxUnavailable": rollout.1},
                "disruptionBudget": {"maxUnavailable": budget},
                "service": {},
                "sidecar": {},
            });
            if let Some(port) = service_port {
                spec["service"]["port"] = json!(port);
            }
            if let Some(port) = sidecar_port {
                spec["sidecar"]["port"] = json!(port);
            }
            json!({
                "apiVersion": "quiesce.dev/v1alpha1",
                "kind": "InferenceDeployment",
                "metadata": {"name": "generated", "namespace": "ml"},
                "spec": spec,
            })
        }
    }

    /// 2,000 resources, shrunk to the smallest disagreement if there is
    /// one. Enough of them must pass, and enough fail, for the agreement to
    /// mean something.
    #[test]
    fn the_rust_rules_and_the_crd_agree() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let config = ProptestConfig {
            cases: 2000,
            failure_persistence: None,
            ..ProptestConfig::default()
        };
        let (accepted, refused) = (AtomicU32::new(0), AtomicU32::new(0));
        let result = proptest::test_runner::TestRunner::new(config).run(&resource(), |object| {
            let server = super::api_server_errors(&object);
            let operator = super::operator_errors(&object);
            prop_assert_eq!(
                server.is_empty(),
                operator.is_empty(),
                "the API server says {:?}\nthe operator says {:?}\nof {:#}",
                server,
                operator,
                object
            );
            let outcome = if server.is_empty() {
                &accepted
            } else {
                &refused
            };
            outcome.fetch_add(1, Ordering::Relaxed);
            Ok(())
        });
        if let Err(failure) = result {
            panic!("{failure}");
        }
        let (accepted, refused) = (accepted.into_inner(), refused.into_inner());
        assert!(
            accepted >= 200 && refused >= 200,
            "{accepted} accepted, {refused} refused"
        );
        eprintln!("{accepted} accepted and {refused} refused alike");
    }
}
