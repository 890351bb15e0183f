//! The pod template: the user's template plus the quiesce sidecar, the
//! shared socket volume, the engine's drain hook and probes, and the grace
//! period. docs/pod.md explains every injected field.
//!
//! The names and values below are a contract: the sidecar, the engine SDK
//! and the end-to-end harness rely on them.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PodSecurityContext, PodSpec, PodTemplateSpec, Volume,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use quiesce_protocol::contract::{
    DEFAULT_SIDECAR_PORT, SHARED_GROUP_ID, SHARED_MOUNT_PATH, SHARED_VOLUME_NAME,
    SIDECAR_CONTAINER_NAME,
};

use super::config::RenderConfig;
use super::conflict::{Conflict, RESERVED_ANNOTATION_OVERRIDDEN};
use super::error::RenderError;
use super::labels::{overlay_owned_keys, pod_labels};
use super::sidecar::sidecar_port;
use super::{engine, sidecar};
use crate::InferenceDeploymentSpec;
use crate::drain_plan::DrainPlan;
use crate::rules::{ENGINE_CONTAINER_PRESENT_MSG, Validated, Violation};

/// Size limit of the shared volume (memory-backed: it counts against the
/// pod's memory).
pub const SHARED_VOLUME_SIZE_LIMIT: &str = "64Mi";
/// Pod template annotation: hash of the drain settings.
pub const DRAIN_HASH_ANNOTATION: &str = "quiesce.dev/drain-hash";
/// Pod template annotation: the computed grace period, for people reading
/// the pod.
pub const GRACE_PERIOD_ANNOTATION: &str = "quiesce.dev/termination-grace-period-seconds";

/// Renders the pod template of `spec`'s Deployment for the resource `name`.
///
/// Takes a spec that passed [`crate::rules::validate`]. Returns the
/// template and the user fields that were kept instead of quiesce's (see
/// [`Conflict`]); fails when the template clashes with what quiesce injects
/// so that no valid pod could be made.
pub fn render_pod_template(
    spec: &Validated<'_>,
    name: &str,
    config: &RenderConfig,
) -> Result<(PodTemplateSpec, Vec<Conflict>), RenderError> {
    let mut template = spec.template.clone();
    let pod = template.spec.as_mut().ok_or_else(engine_missing)?;
    let engine_index = pod
        .containers
        .iter()
        .position(|c| c.name == spec.engine.container_name)
        .ok_or_else(engine_missing)?;
    let clashes = find_clashes(pod, engine_index, spec);
    if !clashes.is_empty() {
        return Err(RenderError::Unrenderable(clashes));
    }

    let mut conflicts = engine::instrument_engine(
        &mut pod.containers[engine_index],
        &format!("spec.template.spec.containers[{engine_index}]"),
        spec,
    );
    inject_sidecar(pod, sidecar::sidecar_container(spec, config));
    pod.volumes.get_or_insert_default().push(shared_volume());
    pod.termination_grace_period_seconds = Some(spec.drain_plan().grace_period_seconds);
    share_socket_group(pod);

    let metadata = template.metadata.get_or_insert_default();
    let (labels, label_conflicts) = pod_labels(metadata.labels.as_ref(), name);
    let (annotations, annotation_conflicts) = overlay_owned_keys(
        metadata.annotations.as_ref(),
        drain_annotations(spec.drain_plan()),
        "spec.template.metadata.annotations",
        RESERVED_ANNOTATION_OVERRIDDEN,
    );
    metadata.labels = Some(labels);
    metadata.annotations = Some(annotations);
    conflicts.extend(label_conflicts);
    conflicts.extend(annotation_conflicts);
    Ok((template, conflicts))
}

fn engine_missing() -> RenderError {
    RenderError::Invalid(vec![Violation {
        field: "spec.template.spec.containers".to_owned(),
        message: ENGINE_CONTAINER_PRESENT_MSG.to_owned(),
    }])
}

/// Names and ports quiesce needs that the template already uses: the API
/// server would refuse the pod, or the sidecar could not start.
fn find_clashes(
    pod: &PodSpec,
    engine_index: usize,
    spec: &InferenceDeploymentSpec,
) -> Vec<Violation> {
    let port = sidecar_port(&spec.sidecar);
    let mut clashes = container_clashes(pod, port);
    if spec.engine.port == port {
        clashes.push(violation(
            "spec.sidecar.port".to_owned(),
            format!(
                "port {port} is also spec.engine.port, so the sidecar could not listen: \
                 set spec.sidecar.port to a port no container uses"
            ),
        ));
    }
    clashes.extend(volume_clashes(pod));
    clashes.extend(mount_clashes(&pod.containers[engine_index], engine_index));
    clashes
}

/// Containers named like the sidecar, and container ports on the sidecar's.
fn container_clashes(pod: &PodSpec, sidecar_port: i32) -> Vec<Violation> {
    let init_containers = pod.init_containers.as_deref().unwrap_or_default();
    let lists = [
        ("containers", &pod.containers[..]),
        ("initContainers", init_containers),
    ];
    let mut clashes = Vec::new();
    for (list, containers) in lists {
        for (i, container) in containers.iter().enumerate() {
            let field = format!("spec.template.spec.{list}[{i}]");
            if container.name == SIDECAR_CONTAINER_NAME {
                clashes.push(violation(
                    format!("{field}.name"),
                    format!(
                        "{SIDECAR_CONTAINER_NAME} is the name of the sidecar quiesce injects: \
                         rename your container"
                    ),
                ));
            }
            for (j, declared) in container.ports.iter().flatten().enumerate() {
                if declared.container_port == sidecar_port {
                    clashes.push(violation(
                        format!("{field}.ports[{j}].containerPort"),
                        format!(
                            "port {sidecar_port} is the sidecar's (spec.sidecar.port, default \
                             {DEFAULT_SIDECAR_PORT}): set spec.sidecar.port to a port no \
                             container uses"
                        ),
                    ));
                }
            }
        }
    }
    clashes
}

fn volume_clashes(pod: &PodSpec) -> Vec<Violation> {
    let volumes = pod.volumes.iter().flatten().enumerate();
    volumes
        .filter(|(_, volume)| volume.name == SHARED_VOLUME_NAME)
        .map(|(i, _)| {
            violation(
                format!("spec.template.spec.volumes[{i}].name"),
                format!(
                    "{SHARED_VOLUME_NAME} is the name of the volume quiesce injects: rename \
                     your volume"
                ),
            )
        })
        .collect()
}

/// A container may not mount two volumes at one path, and without the
/// shared volume the engine could reach neither the socket nor the drain
/// client.
fn mount_clashes(engine: &Container, engine_index: usize) -> Vec<Violation> {
    let mounts = engine.volume_mounts.iter().flatten().enumerate();
    mounts
        .filter(|(_, mount)| mount.mount_path.trim_end_matches('/') == SHARED_MOUNT_PATH)
        .map(|(j, _)| {
            violation(
                format!(
                    "spec.template.spec.containers[{engine_index}].volumeMounts[{j}].mountPath"
                ),
                format!(
                    "{SHARED_MOUNT_PATH} is where quiesce mounts the drain socket in the engine \
                     container: mount your volume elsewhere"
                ),
            )
        })
        .collect()
}

fn violation(field: String, message: String) -> Violation {
    Violation { field, message }
}

/// The sidecar goes first among the init containers: the kubelet starts
/// init containers in order, and the user's may need the socket too.
fn inject_sidecar(pod: &mut PodSpec, sidecar: Container) {
    let user_init_containers = pod.init_containers.take().unwrap_or_default();
    pod.init_containers = Some(
        std::iter::once(sidecar)
            .chain(user_init_containers)
            .collect(),
    );
}

/// Memory-backed: the socket and the copied binary need no disk, and a
/// tmpfs is never shared with another pod.
fn shared_volume() -> Volume {
    Volume {
        name: SHARED_VOLUME_NAME.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".to_owned()),
            size_limit: Some(Quantity(SHARED_VOLUME_SIZE_LIMIT.to_owned())),
        }),
        ..Volume::default()
    }
}

/// The sidecar and the engine run as different users; the socket (mode
/// 0660) is reachable by both only through a group they share. The pod's
/// `fsGroup` is that group: the kubelet adds it to every container's
/// groups and gives the volume to it. A user's own `fsGroup` is kept: it
/// works the same way. `OnRootMismatch` spares large model volumes a
/// recursive chown at every start.
fn share_socket_group(pod: &mut PodSpec) {
    let security = pod
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    if security.fs_group.is_none() {
        security.fs_group = Some(SHARED_GROUP_ID);
        security
            .fs_group_change_policy
            .get_or_insert_with(|| "OnRootMismatch".to_owned());
    }
}

fn drain_annotations(plan: &DrainPlan) -> BTreeMap<String, String> {
    BTreeMap::from([
        (DRAIN_HASH_ANNOTATION.to_owned(), plan.hash.clone()),
        (
            GRACE_PERIOD_ANNOTATION.to_owned(),
            plan.grace_period_seconds.to_string(),
        ),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::fixtures::*;

    #[test]
    fn grace_period_is_the_sum_of_the_drain_phases() {
        let (template, _) = render_pod(MINIMAL);
        assert_eq!(
            pod_spec(&template).termination_grace_period_seconds,
            Some(140)
        );

        let custom = format!(
            "{MINIMAL}drain: {{propagationSeconds: 7, timeoutSeconds: 600, abortGraceSeconds: 3, exitMarginSeconds: 30}}\n"
        );
        let (template, _) = render_pod(&custom);
        assert_eq!(
            pod_spec(&template).termination_grace_period_seconds,
            Some(640)
        );
        let annotations = template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations[GRACE_PERIOD_ANNOTATION], "640");
    }

    #[test]
    fn drain_hash_annotation_ignores_everything_but_the_drain() {
        let annotation = |yaml: &str| {
            let (template, _) = render_pod(yaml);
            template.metadata.unwrap().annotations.unwrap()[DRAIN_HASH_ANNOTATION].clone()
        };
        let base = annotation(MINIMAL);
        assert_eq!(
            base,
            crate::drain_plan::drain_hash(&crate::DrainSpec::default())
        );
        let others = [
            "replicas: 7\n",
            "engine: {port: 9000, startupTimeoutSeconds: 60}\n",
            "sidecar: {image: other:2, port: 9191}\n",
            "service: {enabled: false}\n",
            "strategy: {maxSurge: 2, maxUnavailable: 1}\n",
        ];
        for other in others {
            assert_eq!(annotation(&format!("{MINIMAL}{other}")), base, "{other}");
        }
        let drain = format!("{MINIMAL}drain: {{timeoutSeconds: 121}}\n");
        assert_ne!(annotation(&drain), base);
    }

    #[test]
    fn user_annotations_are_kept_and_ours_win() {
        let (template, conflicts) = render_pod(
            "
template:
  metadata:
    annotations:
      prometheus.io/scrape: 'true'
      quiesce.dev/drain-hash: stale
  spec:
    containers:
    - name: engine
",
        );
        let annotations = template.metadata.unwrap().annotations.unwrap();
        assert_eq!(annotations["prometheus.io/scrape"], "true");
        assert_eq!(
            annotations[DRAIN_HASH_ANNOTATION],
            crate::drain_plan::drain_hash(&crate::DrainSpec::default())
        );
        assert_eq!(reasons(&conflicts), [RESERVED_ANNOTATION_OVERRIDDEN]);
    }

    #[test]
    fn pod_labels_carry_the_selector_and_keep_the_users() {
        let (template, conflicts) = render_pod(
            "
template:
  metadata:
    labels: {model: llama, app.kubernetes.io/component: gpu}
  spec:
    containers:
    - name: engine
",
        );
        let labels = template.metadata.unwrap().labels.unwrap();
        assert_eq!(labels["model"], "llama");
        assert_eq!(labels["quiesce.dev/inference-deployment"], "demo");
        assert_eq!(labels["app.kubernetes.io/component"], "inference-engine");
        assert_eq!(reasons(&conflicts), ["ReservedLabelOverridden"]);
    }

    #[test]
    fn the_shared_volume_is_appended_to_the_users() {
        let (template, _) = render_pod(
            "
template:
  spec:
    containers:
    - name: engine
    volumes:
    - name: models
      emptyDir: {}
",
        );
        let volumes = pod_spec(&template).volumes.as_deref().unwrap();
        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[0].name, "models");
        assert_eq!(volumes[1], shared_volume());
        let empty_dir = volumes[1].empty_dir.as_ref().unwrap();
        assert_eq!(empty_dir.medium.as_deref(), Some("Memory"));
        assert_eq!(empty_dir.size_limit, Some(Quantity("64Mi".to_owned())));
    }

    #[test]
    fn the_sidecar_comes_before_the_users_init_containers() {
        let (template, _) = render_pod(
            "
template:
  spec:
    initContainers:
    - name: fetch
    - name: warm
    containers:
    - name: engine
",
        );
        let names: Vec<&str> = pod_spec(&template)
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, [SIDECAR_CONTAINER_NAME, "fetch", "warm"]);
    }

    #[test]
    fn fs_group_is_added_when_the_user_has_none() {
        let (template, _) = render_pod(
            "
template:
  spec:
    securityContext:
      runAsNonRoot: true
      seccompProfile: {type: RuntimeDefault}
    containers:
    - name: engine
",
        );
        let security = pod_spec(&template).security_context.clone().unwrap();
        assert_eq!(security.fs_group, Some(SHARED_GROUP_ID));
        assert_eq!(
            security.fs_group_change_policy.as_deref(),
            Some("OnRootMismatch")
        );
        assert_eq!(security.run_as_non_root, Some(true));
        assert_eq!(security.seccomp_profile.unwrap().type_, "RuntimeDefault");

        let (template, _) = render_pod(MINIMAL);
        let security = pod_spec(&template).security_context.clone().unwrap();
        assert_eq!(security.fs_group, Some(65532));
    }

    #[test]
    fn a_users_fs_group_and_change_policy_are_kept() {
        let (template, conflicts) = render_pod(
            "
template:
  spec:
    securityContext: {fsGroup: 1000}
    containers:
    - name: engine
",
        );
        let security = pod_spec(&template).security_context.clone().unwrap();
        assert_eq!(security.fs_group, Some(1000));
        assert_eq!(security.fs_group_change_policy, None);
        assert!(conflicts.is_empty());

        let (template, _) = render_pod(
            "
template:
  spec:
    securityContext: {fsGroupChangePolicy: Always}
    containers:
    - name: engine
",
        );
        let security = pod_spec(&template).security_context.clone().unwrap();
        assert_eq!(security.fs_group, Some(SHARED_GROUP_ID));
        assert_eq!(security.fs_group_change_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn a_minimal_template_renders_without_conflicts() {
        let (_, conflicts) = render_pod(MINIMAL);
        assert_eq!(conflicts, []);
    }

    #[test]
    fn containers_named_like_the_sidecar_cannot_be_rendered() {
        let in_containers = "
template:
  spec:
    containers:
    - name: engine
    - name: quiesce-sidecar
";
        let in_init_containers = "
template:
  spec:
    initContainers:
    - name: quiesce-sidecar
    containers:
    - name: engine
";
        for (yaml, field) in [
            (in_containers, "spec.template.spec.containers[1].name"),
            (
                in_init_containers,
                "spec.template.spec.initContainers[0].name",
            ),
        ] {
            let error = try_render_pod(yaml).unwrap_err();
            assert!(matches!(error, RenderError::Unrenderable(_)), "{error}");
            assert_eq!(error_fields(&error), [field]);
            assert!(
                error.to_string().contains("rename your container"),
                "{error}"
            );
        }
    }

    #[test]
    fn a_volume_named_like_the_shared_volume_cannot_be_rendered() {
        let error = try_render_pod(
            "
template:
  spec:
    containers:
    - name: engine
    volumes:
    - name: data
    - name: quiesce
",
        )
        .unwrap_err();
        assert_eq!(error_fields(&error), ["spec.template.spec.volumes[1].name"]);
    }

    #[test]
    fn an_engine_mount_at_the_shared_path_cannot_be_rendered() {
        for path in ["/run/quiesce", "/run/quiesce/"] {
            let error = try_render_pod(&format!(
                "
template:
  spec:
    containers:
    - name: engine
      volumeMounts:
      - {{name: run, mountPath: {path}}}
"
            ))
            .unwrap_err();
            assert_eq!(
                error_fields(&error),
                ["spec.template.spec.containers[0].volumeMounts[0].mountPath"]
            );
        }
        // Another container's filesystem is its own business.
        let (_, conflicts) = render_pod(
            "
template:
  spec:
    containers:
    - name: engine
    - name: proxy
      volumeMounts:
      - {name: run, mountPath: /run/quiesce}
",
        );
        assert!(conflicts.is_empty());
    }

    #[test]
    fn a_port_the_sidecar_needs_cannot_be_rendered() {
        let error = try_render_pod(
            "
template:
  spec:
    containers:
    - name: engine
    - name: exporter
      ports:
      - containerPort: 8080
      - containerPort: 9090
",
        )
        .unwrap_err();
        assert_eq!(
            error_fields(&error),
            ["spec.template.spec.containers[1].ports[1].containerPort"]
        );
        let error = try_render_pod(&format!("{MINIMAL}engine: {{port: 9090}}\n")).unwrap_err();
        assert_eq!(error_fields(&error), ["spec.sidecar.port"]);
        // Moving the sidecar away fixes it.
        let fixed = format!("{MINIMAL}engine: {{port: 9090}}\nsidecar: {{port: 9191}}\n");
        assert!(try_render_pod(&fixed).is_ok());
    }

    #[test]
    fn every_clash_is_reported_at_once() {
        let error = try_render_pod(
            "
template:
  spec:
    containers:
    - name: engine
      ports: [{containerPort: 9090}]
    - name: quiesce-sidecar
    volumes:
    - name: quiesce
",
        )
        .unwrap_err();
        assert_eq!(error.violations().len(), 3, "{error}");
    }
}
