//! Pods on a real kubelet: the examples that can run here reach Ready, and
//! a rendered pod has the parts quiesce promises and drains through them.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure as check};
use k8s_openapi::api::core::v1::{Container, Pod};
use kube::api::{Api, DeleteParams};
use quiesce_api::InferenceDeployment;
use quiesce_api::render::labels::SELECTOR_LABEL;
use quiesce_protocol::contract::{
    DRAIN_CLIENT_PATH, SHARED_GROUP_ID, SIDECAR_CONTAINER_NAME, SIDECAR_USER_ID,
};
use serde_json::Value;

use super::workload::{SETTLE, drained, gone};
use crate::client::{Ask, Classified, complete};
use crate::cluster::manifests::{self, ENGINE_USER};
use crate::cluster::pods::{PodWatch, is_ready};
use crate::cluster::report::{Figures, seconds};
use crate::cluster::{Suite, wait_for};

/// The engine image the examples name.
const EXAMPLE_ENGINE_IMAGE: &str = "ghcr.io/quiesce-dev/quiesce-engine:0.1.0";

/// Each file of examples/ whose pods can run here (the simulated engine,
/// no GPU, no volume claim) is applied with `kubectl apply` and reaches
/// Ready; the others are listed with what they need.
pub async fn examples(suite: &Suite) -> anyhow::Result<Figures> {
    const NAMESPACE: &str = "qe2e-examples";
    let mut figures = Figures::default();
    suite.fresh_namespace(NAMESPACE).await?;
    let mut files: Vec<_> = std::fs::read_dir(suite.repo.join("examples"))?
        .filter_map(|entry| Some(entry.ok()?.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let api = suite.api::<InferenceDeployment>(NAMESPACE);
    let mut ran = 0;
    for path in files {
        let file = path
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path)?;
        let resource: InferenceDeployment =
            serde_saphyr::from_str(&text).with_context(|| format!("{file} does not parse"))?;
        let needs = needs(&resource);
        if !needs.is_empty() {
            figures.add(&file, format!("not run here: needs {}", needs.join(", ")));
            continue;
        }
        let text = text.replace(EXAMPLE_ENGINE_IMAGE, &suite.images.engine());
        let started = Instant::now();
        suite
            .kubectl
            .run_with_input(&["apply", "-n", NAMESPACE, "-f", "-"], Some(&text))
            .await?;
        let name = resource.metadata.name.clone().unwrap_or_default();
        let replicas = resource.spec.replicas;
        wait_for(&api, &name, SETTLE, &format!("{file} is Ready"), |r| {
            r.is_some_and(|r| {
                r.status.as_ref().is_some_and(|s| {
                    s.observed_generation == r.metadata.generation && s.ready_replicas == replicas
                })
            })
        })
        .await?;
        figures.add(
            &file,
            format!(
                "{replicas} of {replicas} Ready in {}",
                seconds(started.elapsed())
            ),
        );
        ran += 1;
    }
    check!(ran > 0, "no example can run with the simulated engine");
    suite.delete_namespace(NAMESPACE).await?;
    Ok(figures)
}

/// What keeps an example's pods from running on a GPU-less test cluster.
fn needs(resource: &InferenceDeployment) -> Vec<String> {
    let mut needs = Vec::new();
    let Some(pod) = resource.spec.template.spec.as_ref() else {
        return vec!["a pod spec".to_owned()];
    };
    let engine = pod
        .containers
        .iter()
        .find(|c| c.name == resource.spec.engine.container_name);
    let image = engine.and_then(|c| c.image.as_deref()).unwrap_or_default();
    if !image.contains("/quiesce-engine:") {
        needs.push(format!("the image {image}"));
    }
    let devices: BTreeSet<String> = pod
        .containers
        .iter()
        .filter_map(|c| c.resources.as_ref()?.limits.as_ref())
        .flat_map(|limits| limits.keys())
        .filter(|key| key.contains('/'))
        .cloned()
        .collect();
    needs.extend(devices);
    let claims = pod.volumes.iter().flatten().filter_map(|v| {
        let claim = v.persistent_volume_claim.as_ref()?;
        Some(format!("the volume claim {}", claim.claim_name))
    });
    needs.extend(claims);
    needs
}

/// A rendered pod on a real kubelet: native sidecar, preStop hook, grace
/// period, shared group; with the engine and the sidecar as different
/// users, a pod deleted with a request in flight drains it.
pub async fn pod(suite: &Suite) -> anyhow::Result<Figures> {
    const NAMESPACE: &str = "qe2e-pod";
    const NAME: &str = "drain";
    let mut figures = Figures::default();
    suite.fresh_namespace(NAMESPACE).await?;
    suite
        .apply(
            NAMESPACE,
            &manifests::inference_deployment(NAME, 1, &suite.images),
        )
        .await?;
    let pods: Api<Pod> = suite.api(NAMESPACE);
    let selector = format!("{SELECTOR_LABEL}={NAME}");
    let watch = PodWatch::start(pods.clone(), &selector, Some(SIDECAR_CONTAINER_NAME)).await?;
    let ready = watch
        .until(SETTLE, "the pod is Ready", |pods| {
            pods.iter().any(|p| is_ready(&p.pod))
        })
        .await?;
    let record = ready
        .into_iter()
        .find(|p| is_ready(&p.pod))
        .context("no ready pod")?;
    figures.add("pod", shape(&record.pod)?);

    let resource = suite
        .api::<InferenceDeployment>(NAMESPACE)
        .get(NAME)
        .await?;
    let reported = resource
        .status
        .and_then(|s| s.termination_grace_period_seconds);
    let grace = manifests::drain().termination_grace_period_seconds();
    check!(
        reported == Some(grace),
        "the status reports a grace period of {reported:?}, not {grace}"
    );

    let address = suite.service_address(NAMESPACE, NAME).await?;
    // 6 s at 20 ms a token: it outlasts the propagation delay.
    let tokens = 300;
    let completion = Ask::stream("a request in flight when its pod is deleted", tokens);
    let request = tokio::spawn(async move { complete(address, &completion).await });
    in_flight(suite, NAMESPACE, &record.name).await?;
    pods.delete(&record.name, &DeleteParams::default()).await?;
    let finished = request.await?;
    check!(
        finished.outcome == Classified::Completed { tokens },
        "the request in flight ended {:?}",
        finished.outcome
    );
    let names = BTreeSet::from([record.name.clone()]);
    let removed = gone(&watch, &names, "the deleted pod is gone").await?;
    drained(suite, NAMESPACE, &removed).await?;
    let drain_ms = removed[0]
        .drain_elapsed()
        .context("the sidecar logged no drain time")?
        .as_millis() as u64;
    let propagation_ms = manifests::drain().propagation_seconds as u64 * 1000;
    check!(
        drain_ms > propagation_ms,
        "the drain took {drain_ms} ms, no longer than the propagation delay: it did not wait for \
         the request in flight"
    );
    figures.add(
        "deleted with a request in flight",
        format!(
            "request completed ({tokens} tokens), drain ended drained in {drain_ms} ms, pod gone in {}",
            removed[0].termination().map_or("?".to_owned(), seconds)
        ),
    );
    suite.delete_namespace(NAMESPACE).await?;
    Ok(figures)
}

/// Checks the parts quiesce renders into `pod`; describes them.
fn shape(pod: &Pod) -> anyhow::Result<String> {
    let spec = pod.spec.as_ref().context("a pod without spec")?;
    let sidecar = spec
        .init_containers
        .iter()
        .flatten()
        .next()
        .filter(|c| c.name == SIDECAR_CONTAINER_NAME)
        .context("the first init container is not the sidecar")?;
    check!(
        sidecar.restart_policy.as_deref() == Some("Always"),
        "the sidecar is not a native sidecar (restartPolicy {:?})",
        sidecar.restart_policy
    );
    let engine = spec
        .containers
        .iter()
        .find(|c| c.name == "engine")
        .context("no engine container")?;
    let hook = engine
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref()?.exec.as_ref()?.command.as_ref());
    check!(
        hook.and_then(|c| c.first()).map(String::as_str) == Some(DRAIN_CLIENT_PATH),
        "the engine's preStop hook is {hook:?}"
    );
    let grace = manifests::drain().termination_grace_period_seconds();
    check!(
        spec.termination_grace_period_seconds == Some(grace),
        "the grace period is {:?}, not {grace}",
        spec.termination_grace_period_seconds
    );
    let group = spec.security_context.as_ref().and_then(|s| s.fs_group);
    check!(
        group == Some(SHARED_GROUP_ID),
        "the pod's fsGroup is {group:?}"
    );
    let user = |c: &Container| c.security_context.as_ref().and_then(|s| s.run_as_user);
    check!(
        user(engine) == Some(ENGINE_USER) && user(sidecar) == Some(SIDECAR_USER_ID),
        "the engine runs as {:?} and the sidecar as {:?}",
        user(engine),
        user(sidecar)
    );
    let statuses = pod
        .status
        .as_ref()
        .and_then(|s| s.init_container_statuses.as_ref());
    let started = statuses
        .into_iter()
        .flatten()
        .any(|s| s.name == SIDECAR_CONTAINER_NAME && s.started == Some(true));
    check!(started, "the kubelet does not report the sidecar started");
    Ok(format!(
        "native sidecar, preStop {DRAIN_CLIENT_PATH}, grace {grace} s, fsGroup {SHARED_GROUP_ID}, \
         engine user {ENGINE_USER}, sidecar user {SIDECAR_USER_ID}"
    ))
}

/// Waits until the sidecar of `pod` reports a request in flight, read from
/// its /status through the API server's pod proxy.
async fn in_flight(suite: &Suite, namespace: &str, pod: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let request = http::Request::get(format!(
            "/api/v1/namespaces/{namespace}/pods/{pod}:9090/proxy/status"
        ))
        .body(Vec::new())?;
        let status: Value = serde_json::from_str(&suite.client.request_text(request).await?)?;
        if status["in_flight"].as_u64().unwrap_or(0) >= 1 {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the sidecar of {pod} never reported the request in flight: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn example(file: &str) -> InferenceDeployment {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/");
        serde_saphyr::from_str(&std::fs::read_to_string(format!("{path}{file}")).unwrap()).unwrap()
    }

    #[test]
    fn only_the_examples_of_the_simulated_engine_run_without_gpus() {
        assert!(needs(&example("minimal.yaml")).is_empty());
        let vllm = needs(&example("vllm.yaml"));
        assert!(vllm.iter().any(|n| n == "nvidia.com/gpu"), "{vllm:?}");
        assert!(
            vllm.iter().any(|n| n.starts_with("the image vllm/")),
            "{vllm:?}"
        );
        assert!(
            vllm.iter().any(|n| n == "the volume claim hf-cache"),
            "{vllm:?}"
        );
        assert!(!needs(&example("http.yaml")).is_empty());
    }
}
