//! Rendering the examples: the user's fields survive, the injected parts
//! meet the "restricted" Pod Security Standard, and the objects agree on
//! their selector.

use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use quiesce_api::InferenceDeployment;
use quiesce_api::render::labels::selector_labels;
use quiesce_api::render::{RenderConfig, Rendered, render};
use quiesce_protocol::contract::{SHARED_VOLUME_NAME, SIDECAR_CONTAINER_NAME};
use serde_json::{Map, Value};

fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "yaml"))
        .collect();
    paths.sort();
    paths
}

fn example(name: &str) -> InferenceDeployment {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    serde_saphyr::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn render_default(resource: &InferenceDeployment) -> Rendered {
    render(resource, &RenderConfig::default()).unwrap()
}

fn json<T: serde::Serialize>(value: &T) -> Value {
    serde_json::to_value(value).unwrap()
}

fn object(value: &Value) -> &Map<String, Value> {
    value.as_object().unwrap()
}

fn list(value: &Value) -> &[Value] {
    value.as_array().map(Vec::as_slice).unwrap_or_default()
}

fn rendered_template(rendered: &Rendered) -> PodTemplateSpec {
    rendered.deployment.spec.clone().unwrap().template
}

/// Every example renders, and none of them trips a conflict: they are what
/// users copy.
#[test]
fn every_example_renders_without_conflicts() {
    let paths = examples();
    assert!(paths.len() >= 5, "{paths:?}");
    for path in paths {
        let resource: InferenceDeployment =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let rendered = render(&resource, &RenderConfig::default())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(rendered.conflicts, [], "{}", path.display());
    }
}

/// Every field of the user's template reaches the pod bit for bit; quiesce
/// only appends to the lists it shares with the user.
#[test]
fn the_users_fields_survive_in_full_yaml() {
    let resource = example("full.yaml");
    let user = json(&resource.spec.template);
    let rendered = json(&rendered_template(&render_default(&resource)));
    // Values, not maps: a missing field reads as null and fails the
    // comparison with its name instead of panicking.
    let (user_pod, pod) = (object(&user["spec"]), &rendered["spec"]);

    // The example must exercise what this test promises.
    for field in [
        "affinity",
        "containers",
        "imagePullSecrets",
        "initContainers",
        "nodeSelector",
        "priorityClassName",
        "securityContext",
        "serviceAccountName",
        "tolerations",
        "volumes",
    ] {
        assert!(user_pod.contains_key(field), "full.yaml should set {field}");
    }

    for (field, value) in user_pod {
        match field.as_str() {
            "containers" => assert_containers_survive(list(value), list(&pod[field]), "vllm"),
            "initContainers" => {
                let rendered = list(&pod[field]);
                assert_eq!(rendered[0]["name"], SIDECAR_CONTAINER_NAME);
                assert_eq!(&rendered[1..], list(value), "initContainers");
            }
            "volumes" => {
                let rendered = list(&pod[field]);
                assert_eq!(&rendered[..rendered.len() - 1], list(value), "volumes");
                assert_eq!(rendered.last().unwrap()["name"], SHARED_VOLUME_NAME);
            }
            "securityContext" => assert_keys_survive(value, &pod[field], field),
            _ => assert_eq!(&pod[field], value, "spec.template.spec.{field}"),
        }
    }
    for part in ["labels", "annotations"] {
        assert_keys_survive(&user["metadata"][part], &rendered["metadata"][part], part);
    }
}

/// Containers other than the engine are untouched; the engine keeps every
/// field and the start of every list quiesce appends to.
fn assert_containers_survive(user: &[Value], rendered: &[Value], engine: &str) {
    assert_eq!(user.len(), rendered.len());
    for (theirs, ours) in user.iter().zip(rendered) {
        if theirs["name"] != engine {
            assert_eq!(ours, theirs, "container {}", theirs["name"]);
            continue;
        }
        for (field, value) in object(theirs) {
            match field.as_str() {
                "args" | "env" | "volumeMounts" => {
                    let appended = list(&ours[field]);
                    assert_eq!(
                        &appended[..list(value).len()],
                        list(value),
                        "engine {field}"
                    );
                }
                _ => assert_eq!(&ours[field], value, "engine {field}"),
            }
        }
    }
}

fn assert_keys_survive(user: &Value, rendered: &Value, what: &str) {
    for (key, value) in object(user) {
        assert_eq!(&rendered[key], value, "{what}.{key}");
    }
}

/// The injected sidecar passes the "restricted" Pod Security Standard, so
/// quiesce never makes a namespace's pods inadmissible.
/// <https://kubernetes.io/docs/concepts/security/pod-security-standards/#restricted>
#[test]
fn the_injected_sidecar_meets_the_restricted_pod_security_standard() {
    for path in examples() {
        let resource: InferenceDeployment =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let template = rendered_template(&render_default(&resource));
        let pod = template.spec.unwrap();
        let sidecar: &Container = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(sidecar.name, SIDECAR_CONTAINER_NAME);
        assert_restricted(sidecar);

        // Volume types: the injected volume is an emptyDir, never a hostPath.
        let volume = pod.volumes.as_ref().unwrap().last().unwrap();
        assert_eq!(volume.name, SHARED_VOLUME_NAME);
        assert!(volume.empty_dir.is_some());
        assert_eq!(
            json(volume).as_object().unwrap().len(),
            2,
            "name and emptyDir only"
        );
    }
}

fn assert_restricted(container: &Container) {
    let security = container.security_context.clone().unwrap();
    // Privilege escalation: must be false.
    assert_eq!(security.allow_privilege_escalation, Some(false));
    // Running as non-root, and not as user 0.
    assert_eq!(security.run_as_non_root, Some(true));
    assert!(security.run_as_user.is_some_and(|uid| uid != 0));
    // Capabilities: drop ALL, add nothing but NET_BIND_SERVICE.
    let capabilities = security.capabilities.unwrap();
    assert!(capabilities.drop.unwrap().contains(&"ALL".to_owned()));
    assert!(
        capabilities
            .add
            .unwrap_or_default()
            .iter()
            .all(|c| c == "NET_BIND_SERVICE")
    );
    // Seccomp: RuntimeDefault or Localhost.
    let seccomp = security.seccomp_profile.unwrap();
    assert!(matches!(
        seccomp.type_.as_str(),
        "RuntimeDefault" | "Localhost"
    ));
    // Baseline: not privileged, default /proc, no SELinux or AppArmor
    // override, no Windows host process.
    assert_ne!(security.privileged, Some(true));
    assert!(matches!(
        security.proc_mount.as_deref(),
        None | Some("Default")
    ));
    assert_eq!(security.se_linux_options, None);
    assert_eq!(security.app_armor_profile, None);
    assert_eq!(security.windows_options, None);
    // Host ports: none.
    for port in container.ports.iter().flatten() {
        assert_eq!(port.host_port, None);
    }
    // And beyond the standard: a read-only root filesystem.
    assert_eq!(security.read_only_root_filesystem, Some(true));
}

/// The Deployment, the Service and the budget select the same pods, with a
/// selector that depends on the resource's name only.
#[test]
fn objects_agree_on_one_immutable_selector() {
    for path in examples() {
        let resource: InferenceDeployment =
            serde_saphyr::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let name = resource.metadata.name.clone().unwrap();
        let rendered = render_default(&resource);
        let expected = selector_labels(&name);
        let deployment = rendered.deployment.spec.clone().unwrap();
        assert_eq!(deployment.selector.match_labels.as_ref(), Some(&expected));
        assert_eq!(deployment.selector.match_expressions, None);
        let pod_labels = deployment.template.metadata.unwrap().labels.unwrap();
        for (key, value) in &expected {
            assert_eq!(pod_labels.get(key), Some(value), "{}", path.display());
        }
        if let Some(service) = rendered.service {
            assert_eq!(service.spec.unwrap().selector.as_ref(), Some(&expected));
        }
        if let Some(budget) = rendered.pod_disruption_budget {
            let selector = budget.spec.unwrap().selector.unwrap();
            assert_eq!(selector.match_labels.as_ref(), Some(&expected));
        }
    }
}
