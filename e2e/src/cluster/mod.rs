//! The cluster suite: the user's whole path on a real Kubernetes, judged by
//! the real API server, kubelet, containerd and kube-proxy (docs/e2e.md).
//!
//! The `quiesce-cluster` binary runs [`scenario::ALL`] in order against the
//! cluster of a kubeconfig, with images named by a registry prefix and a
//! tag; `hack/cluster-e2e.sh` runs it on the local cluster kit, as CI does.
//! The scenarios build on each other (the operator that `helm install`
//! runs reconciles everything after it), so the first failure ends the run.
//! Traffic goes from this machine to the Services' ClusterIPs, through
//! kube-proxy, as a client inside the cluster would send it.

pub mod cli;
pub mod manifests;
pub mod pods;
pub mod report;
pub mod scenario;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::wait::await_condition;
use kube::{Client, Resource};
use quiesce_api::InferenceDeployment;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::client::get_status;
use crate::load::{Load, LoadConfig};
use cli::Tool;

/// Field manager of the suite's own writes.
pub const FIELD_MANAGER: &str = "quiesce-e2e";
/// Label on every namespace the suite creates.
pub const NAMESPACE_LABEL: &str = "quiesce.dev/e2e";
/// Namespace of the Helm release.
pub const RELEASE_NAMESPACE: &str = "quiesce-system";
/// Name of the Helm release.
pub const RELEASE: &str = "quiesce";

/// The images under test: `PREFIX/quiesce-operator:TAG` and its siblings.
#[derive(Clone, Debug)]
pub struct Images {
    /// Registry and path, such as `ghcr.io/quiesce-dev`.
    pub prefix: String,
    /// Tag, such as `0.1.0`.
    pub tag: String,
}

impl Images {
    /// The repository (without tag) of image `name`.
    pub fn repository(&self, name: &str) -> String {
        format!("{}/{name}", self.prefix.trim_end_matches('/'))
    }

    fn image(&self, name: &str) -> String {
        format!("{}:{}", self.repository(name), self.tag)
    }

    /// The operator image.
    pub fn operator(&self) -> String {
        self.image("quiesce-operator")
    }

    /// The sidecar image.
    pub fn sidecar(&self) -> String {
        self.image("quiesce-sidecar")
    }

    /// The simulated engine's image.
    pub fn engine(&self) -> String {
        self.image("quiesce-engine")
    }
}

/// What every scenario uses.
pub struct Suite {
    /// A client of the cluster, with the kubeconfig's (admin) credentials.
    pub client: Client,
    /// kubectl, pointed at the cluster.
    pub kubectl: Tool,
    /// helm, pointed at the cluster.
    pub helm: Tool,
    /// The images under test.
    pub images: Images,
    /// The repository's root (the chart, the examples).
    pub repo: PathBuf,
    /// Every operator pod and its log, followed from the install on.
    pub operator_pods: tokio::sync::OnceCell<pods::PodWatch>,
    /// Whether the suite installed the release (and so may remove it).
    pub installed: std::sync::atomic::AtomicBool,
}

impl Suite {
    /// The API of `K` in `namespace`.
    pub fn api<K>(&self, namespace: &str) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), namespace)
    }

    /// Creates `name` afresh, deleting what is left of an earlier run.
    pub async fn fresh_namespace(&self, name: &str) -> anyhow::Result<()> {
        self.delete_namespace(name).await?;
        let namespace: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": {NAMESPACE_LABEL: "true"}},
        }))?;
        let api: Api<Namespace> = Api::all(self.client.clone());
        api.create(&PostParams::default(), &namespace)
            .await
            .with_context(|| format!("cannot create namespace {name}"))?;
        Ok(())
    }

    /// Deletes namespace `name` and waits until it is gone. Its workloads go
    /// first, and their pods drain: a namespace controller that finds pods
    /// still terminating waits out their whole grace period before it looks
    /// again.
    pub async fn delete_namespace(&self, name: &str) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        if api.get_opt(name).await?.is_none() {
            return Ok(());
        }
        let everything = ListParams::default();
        let background = DeleteParams::background();
        self.api::<InferenceDeployment>(name)
            .delete_collection(&background, &everything)
            .await?;
        self.api::<Deployment>(name)
            .delete_collection(&background, &everything)
            .await?;
        let pods = self.api::<Pod>(name);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
        while !pods.list(&everything).await?.items.is_empty() {
            if tokio::time::Instant::now() > deadline {
                bail!("the pods of namespace {name} did not go within 180 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => return Ok(()),
            Err(error) => return Err(error).context(format!("cannot delete namespace {name}")),
        }
        // Pods drain on the way out: up to their grace period.
        wait_gone(
            &api,
            name,
            Duration::from_secs(180),
            "the namespace is gone",
        )
        .await
    }

    /// Server-side applies `object` in `namespace` as the suite.
    pub async fn apply<K>(&self, namespace: &str, object: &K) -> anyhow::Result<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug,
        <K as Resource>::DynamicType: Default,
    {
        let name = object
            .meta()
            .name
            .clone()
            .context("an object to apply needs a name")?;
        let api = self.api::<K>(namespace);
        let params = PatchParams::apply(FIELD_MANAGER).force();
        api.patch(&name, &params, &Patch::Apply(object))
            .await
            .with_context(|| {
                format!(
                    "cannot apply {} {namespace}/{name}",
                    K::kind(&Default::default())
                )
            })
    }

    /// The ClusterIP address of Service `name`, once something behind it
    /// answers `/health`.
    pub async fn service_address(&self, namespace: &str, name: &str) -> anyhow::Result<SocketAddr> {
        let service = self.api::<Service>(namespace).get(name).await?;
        let spec = service.spec.context("a Service without spec")?;
        let ip: IpAddr = spec
            .cluster_ip
            .as_deref()
            .context("the Service has no ClusterIP")?
            .parse()
            .context("the Service's ClusterIP is not an address")?;
        let port = spec
            .ports
            .iter()
            .flatten()
            .next()
            .context("the Service has no port")?
            .port;
        let address = SocketAddr::new(ip, u16::try_from(port)?);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while get_status(address, "/health", Duration::from_secs(2)).await != Some(200) {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "Service {namespace}/{name} at {address} does not answer from this machine: \
                     the suite sends its traffic to ClusterIPs, so run it where they are routed \
                     (a node, the local kit, or a route to the Service range; docs/e2e.md)"
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(address)
    }

    /// The events with `reason` in `namespace`.
    pub async fn events(&self, namespace: &str, reason: &str) -> anyhow::Result<Vec<Event>> {
        let params = ListParams::default().fields(&format!("reason={reason}"));
        Ok(self.api::<Event>(namespace).list(&params).await?.items)
    }
}

/// Waits until `condition` holds for object `name` of `api` (`None`: it does
/// not exist); fails after `within` saying that `what` did not happen.
pub async fn wait_for<K>(
    api: &Api<K>,
    name: &str,
    within: Duration,
    what: &str,
    condition: impl Fn(Option<&K>) -> bool,
) -> anyhow::Result<Option<K>>
where
    K: Clone + std::fmt::Debug + Send + Serialize + DeserializeOwned + Resource + 'static,
    <K as Resource>::DynamicType: Default,
{
    let condition = move |object: Option<&K>| condition(object);
    let waiting = await_condition(api.clone(), name, condition);
    match tokio::time::timeout(within, waiting).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            // The status says why; the rest of the object rarely does.
            let now = match api.get_opt(name).await {
                Ok(Some(object)) => serde_json::to_value(&object)
                    .map(|o| format!("status {}", o["status"]))
                    .unwrap_or_default(),
                Ok(None) => "absent".to_owned(),
                Err(error) => error.to_string(),
            };
            let kind = K::kind(&Default::default()).into_owned();
            bail!("{what} did not happen within {within:?} ({kind} {name}: {now})")
        }
    }
}

/// Waits until object `name` of `api` is gone; fails after `within`
/// saying that `what` did not happen.
pub async fn wait_gone<K>(
    api: &Api<K>,
    name: &str,
    within: Duration,
    what: &str,
) -> anyhow::Result<()>
where
    K: Clone + std::fmt::Debug + Send + Serialize + DeserializeOwned + Resource + 'static,
    <K as Resource>::DynamicType: Default,
{
    wait_for(api, name, within, what, |object| object.is_none())
        .await
        .map(drop)
}

/// Streaming load for the suite: about 8 requests a second of 25 to 300
/// tokens (0.5 to 6 s each), each verified to the last byte; a 503 is
/// retried by the client, as client libraries do.
pub fn start_load(target: SocketAddr, seed: u64) -> Load {
    Load::start(
        target,
        LoadConfig {
            rate: 8.0,
            concurrency: 64,
            lengths: "60:25-75,30:100-200,10:250-300"
                .parse()
                .expect("the suite's length mix parses"),
            seed,
            retries: 3,
        },
    )
}
