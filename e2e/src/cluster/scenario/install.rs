//! `helm install`, `helm upgrade` and `helm uninstall` of the chart with
//! the real helm CLI, and the proof of least privilege: an operator that
//! ran every scenario under the chart's RBAC and never logged Forbidden.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure as check};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::Resource;
use std::sync::atomic::Ordering;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::wait::Condition;
use kube::runtime::wait::conditions::is_crd_established;
use serde_json::json;

use crate::cluster::pods::{PodWatch, is_ready};
use crate::cluster::report::{Figures, seconds};
use crate::cluster::{NAMESPACE_LABEL, RELEASE, RELEASE_NAMESPACE, Suite, wait_for};

/// The CRD the chart installs.
pub const CRD: &str = "inferencedeployments.quiesce.dev";
/// The operator's Deployment, ServiceAccount, roles and Lease, for a release
/// named `quiesce`.
pub const OPERATOR: &str = "quiesce-operator";
/// The leader election Lease.
pub const LEASE: &str = OPERATOR;
/// The operator's pods.
pub const OPERATOR_SELECTOR: &str = "app.kubernetes.io/name=quiesce,app.kubernetes.io/instance=quiesce,app.kubernetes.io/component=operator";

/// `--set` flags that point the chart at the images under test, then
/// `extra`.
pub fn values(suite: &Suite, extra: &[&str]) -> Vec<String> {
    let images = &suite.images;
    let mut args = Vec::new();
    for (key, value) in [
        ("image.repository", images.repository("quiesce-operator")),
        ("image.tag", images.tag.clone()),
        (
            "sidecar.image.repository",
            images.repository("quiesce-sidecar"),
        ),
        ("sidecar.image.tag", images.tag.clone()),
    ] {
        args.push("--set".to_owned());
        args.push(format!("{key}={value}"));
    }
    for value in extra {
        args.push("--set".to_owned());
        args.push((*value).to_owned());
    }
    args
}

/// Runs `helm COMMAND quiesce charts/quiesce -n quiesce-system ...`.
pub async fn helm_release(
    suite: &Suite,
    command: &str,
    flags: &[String],
) -> anyhow::Result<String> {
    let chart = suite.repo.join("charts/quiesce");
    let chart = chart.to_str().context("the chart's path is not UTF-8")?;
    let mut args = vec![command, RELEASE, chart, "-n", RELEASE_NAMESPACE];
    args.extend(["--wait", "--timeout", "180s"]);
    args.extend(flags.iter().map(String::as_str));
    suite.helm.run(&args).await
}

/// The watch that follows every operator pod's log for the whole run.
pub async fn operator_pods(suite: &Suite) -> anyhow::Result<&PodWatch> {
    suite
        .operator_pods
        .get_or_try_init(|| {
            PodWatch::start(
                suite.api(RELEASE_NAMESPACE),
                OPERATOR_SELECTOR,
                Some("operator"),
            )
        })
        .await
}

/// `helm install` with the images under test: the CRD comes from the
/// chart's crds/, the operator becomes Ready in the cluster.
pub async fn helm_install(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    let status = suite
        .helm
        .output(&["status", RELEASE, "-n", RELEASE_NAMESPACE], None)
        .await?;
    if status.status.success() {
        bail!(
            "a release {RELEASE} is already installed in {RELEASE_NAMESPACE}: the suite installs \
             and uninstalls its own, so run it on a cluster without quiesce, or remove that one \
             first (helm uninstall {RELEASE} -n {RELEASE_NAMESPACE})"
        );
    }
    let crds: Api<CustomResourceDefinition> = Api::all(suite.client.clone());
    let crd_existed = crds.get_opt(CRD).await?.is_some();

    let namespaces: Api<Namespace> = Api::all(suite.client.clone());
    let namespace_existed = namespaces.get_opt(RELEASE_NAMESPACE).await?.is_some();
    let started = Instant::now();
    let mut flags = values(suite, &[]);
    flags.push("--create-namespace".to_owned());
    helm_release(suite, "install", &flags).await?;
    suite.installed.store(true, Ordering::Relaxed);
    figures.add("helm install --wait", seconds(started.elapsed()));
    if !namespace_existed {
        // Made by the install: the suite's to delete when it is done.
        let label = json!({"metadata": {"labels": {NAMESPACE_LABEL: "true"}}});
        namespaces
            .patch(
                RELEASE_NAMESPACE,
                &PatchParams::default(),
                &Patch::Merge(&label),
            )
            .await?;
    }

    wait_for(
        &crds,
        CRD,
        Duration::from_secs(30),
        "the CRD is established",
        |crd| crd.is_some_and(|c| is_crd_established().matches_object(Some(c))),
    )
    .await?;
    let crd = crds.get(CRD).await?;
    let managers: Vec<String> = crd
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|m| m.manager.clone())
        .collect();
    if crd_existed {
        figures.add(
            "CRD",
            "kept from an earlier install (Helm never replaces one)",
        );
    } else {
        check!(
            managers.iter().any(|m| m == "helm"),
            "the CRD was not created by Helm: its managers are {managers:?}"
        );
        figures.add("CRD", "created by Helm from charts/quiesce/crds/");
    }

    let pods = operator_pods(suite).await?;
    let ready = pods
        .until(
            Duration::from_secs(60),
            "an operator pod is Ready",
            |pods| pods.iter().any(|p| p.gone.is_none() && is_ready(&p.pod)),
        )
        .await?;
    let image = ready
        .iter()
        .find_map(|p| p.pod.spec.as_ref()?.containers.first()?.image.clone())
        .unwrap_or_default();
    check!(
        image == suite.images.operator(),
        "the operator runs {image}, not the image under test {}",
        suite.images.operator()
    );
    figures.add("operator", format!("Ready in the cluster, image {image}"));
    Ok(figures)
}

/// Least privilege, then `helm uninstall`: the chart's objects go, the CRD
/// (and with it every InferenceDeployment) stays.
pub async fn uninstall(suite: &Suite) -> anyhow::Result<Figures> {
    let mut figures = Figures::default();
    let pods = operator_pods(suite).await?.pods();
    check!(!pods.is_empty(), "no operator pod was ever seen");
    let lines: usize = pods.iter().map(|p| p.log.len()).sum();
    let forbidden: Vec<String> = pods
        .iter()
        .flat_map(|p| p.log.iter())
        .filter(|line| line.to_lowercase().contains("forbidden"))
        .take(5)
        .cloned()
        .collect();
    check!(
        forbidden.is_empty(),
        "the operator was refused by the API server under the chart's RBAC:\n{}",
        forbidden.join("\n")
    );
    figures.add(
        "operator log",
        format!("{lines} lines from {} pods, none Forbidden", pods.len()),
    );

    suite
        .helm
        .run(&["uninstall", RELEASE, "-n", RELEASE_NAMESPACE, "--wait"])
        .await?;
    let namespace = RELEASE_NAMESPACE;
    let left = [
        present(&suite.api::<Deployment>(namespace), OPERATOR).await?,
        present(&suite.api::<ServiceAccount>(namespace), OPERATOR).await?,
        present(
            &suite.api::<Service>(namespace),
            &format!("{OPERATOR}-metrics"),
        )
        .await?,
        present(
            &suite.api::<Role>(namespace),
            &format!("{OPERATOR}-leader-election"),
        )
        .await?,
        present(
            &suite.api::<RoleBinding>(namespace),
            &format!("{OPERATOR}-leader-election"),
        )
        .await?,
        present(&Api::<ClusterRole>::all(suite.client.clone()), OPERATOR).await?,
        present(
            &Api::<ClusterRoleBinding>::all(suite.client.clone()),
            OPERATOR,
        )
        .await?,
    ];
    let left: Vec<String> = left.into_iter().flatten().collect();
    check!(left.is_empty(), "helm uninstall left {left:?}");
    let crds: Api<CustomResourceDefinition> = Api::all(suite.client.clone());
    if crds.get_opt(CRD).await?.is_none() {
        bail!("helm uninstall deleted the CRD, and with it every InferenceDeployment");
    }
    figures.add(
        "helm uninstall",
        "removed the operator and its RBAC; the CRD stays",
    );
    Ok(figures)
}

/// `Some("Kind name")` when the object exists.
async fn present<K>(api: &Api<K>, name: &str) -> anyhow::Result<Option<String>>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    <K as Resource>::DynamicType: Default,
{
    let kind = K::kind(&Default::default()).into_owned();
    Ok(api.get_opt(name).await?.map(|_| format!("{kind} {name}")))
}
