//! From a `PodTemplateSpec` to the processes a local kubelet starts: which
//! binary each container image stands for, its command line and
//! environment, its probes and preStop hook, with the pod's volumes and
//! ports translated to the host.
//!
//! Pure: the same template, images, volume root and port map always give the
//! same plan, so the translation is unit-tested without starting anything.
//!
//! The translation, and why:
//! - An `emptyDir` is a directory of the pod's own (deleted with the pod).
//!   Every string of `command`, `args`, `env` and the preStop command that
//!   names a path under a container's `volumeMounts[].mountPath` is
//!   rewritten to the same path under that directory: the processes share
//!   one filesystem, so a path is the only thing that tells pods apart.
//! - A pod has a network namespace of its own; here the pods share the
//!   host's loopback, so every port the pod uses (container ports, probe
//!   ports, `0.0.0.0:PORT`-style listen addresses) gets a free host port of
//!   its own through a [`PortMap`], and listen addresses become
//!   `127.0.0.1:<host port>`.
//! - An image is a binary: [`Images`] maps an image repository (tag and
//!   digest ignored) to a local executable, which stands for the image's
//!   entrypoint; `command` replaces it as in Kubernetes.
//!
//! What a local runner cannot honour is refused with an error that names the
//! field, rather than silently ignored: volumes other than `emptyDir`, env
//! `valueFrom`, probes and hooks other than `httpGet` / `exec`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, PodSpec, PodTemplateSpec, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Kubernetes' default `terminationGracePeriodSeconds`.
pub const DEFAULT_GRACE_PERIOD_SECONDS: i64 = 30;

/// Why a template cannot be run locally.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// The template has no `spec`.
    #[error("the pod template has no spec")]
    NoSpec,
    /// No local binary stands for a container's image.
    #[error(
        "container {container}: no local binary stands for image {image:?} (known repositories: \
         {known}); map it with Images::with"
    )]
    UnknownImage {
        /// The container.
        container: String,
        /// Its image.
        image: String,
        /// The repositories that are mapped.
        known: String,
    },
    /// A field the local runner cannot honour.
    #[error("{field}: {message}")]
    Unsupported {
        /// Where in the template.
        field: String,
        /// What is not supported and what to do.
        message: String,
    },
}

fn unsupported(field: impl Into<String>, message: impl Into<String>) -> PlanError {
    PlanError::Unsupported {
        field: field.into(),
        message: message.into(),
    }
}

/// Which local executable stands for which container image.
#[derive(Clone, Debug, Default)]
pub struct Images {
    binaries: BTreeMap<String, PathBuf>,
}

impl Images {
    /// No image known.
    pub fn new() -> Self {
        Self::default()
    }

    /// Maps the image repository of `image` (its tag or digest is ignored)
    /// to `binary`.
    pub fn with(mut self, image: &str, binary: impl Into<PathBuf>) -> Self {
        self.binaries
            .insert(repository(image).to_owned(), binary.into());
        self
    }

    /// The binary that stands for `image`, if any.
    pub fn binary(&self, image: &str) -> Option<&Path> {
        self.binaries.get(repository(image)).map(PathBuf::as_path)
    }

    fn known(&self) -> String {
        let names: Vec<&str> = self.binaries.keys().map(String::as_str).collect();
        names.join(", ")
    }
}

/// `registry/name` of an image reference, without `:tag` or `@digest`.
pub fn repository(image: &str) -> &str {
    let image = image.split_once('@').map_or(image, |(name, _)| name);
    // A ':' after the last '/' starts the tag; one before it is a registry port.
    let last_slash = image.rfind('/').map_or(0, |i| i + 1);
    match image[last_slash..].find(':') {
        Some(colon) => &image[..last_slash + colon],
        None => image,
    }
}

/// The pod's ports (as containers see them) and the host port standing for
/// each: the pod's network namespace, flattened onto the host's loopback.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortMap {
    ports: BTreeMap<i32, u16>,
}

impl PortMap {
    /// A map from explicit pairs (container port, host port).
    pub fn from_pairs(pairs: impl IntoIterator<Item = (i32, u16)>) -> Self {
        Self {
            ports: pairs.into_iter().collect(),
        }
    }

    /// Picks a free loopback port for each of `ports`. The listeners are
    /// held until every port is picked, so the ports differ; they are then
    /// released for the pod's processes to bind. (Another process could
    /// take one in between; the container would then fail to start, and the
    /// pod reports it.)
    pub fn allocate(ports: &BTreeSet<i32>) -> std::io::Result<Self> {
        let mut held = Vec::with_capacity(ports.len());
        let mut map = BTreeMap::new();
        for &port in ports {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
            map.insert(port, listener.local_addr()?.port());
            held.push(listener);
        }
        Ok(Self { ports: map })
    }

    /// The host port standing for the pod's `port`.
    pub fn host_port(&self, port: i32) -> Option<u16> {
        self.ports.get(&port).copied()
    }

    /// The loopback address standing for the pod's `port`.
    pub fn address(&self, port: i32) -> Option<SocketAddr> {
        self.host_port(port)
            .map(|p| SocketAddr::from((Ipv4Addr::LOCALHOST, p)))
    }
}

/// Everything needed to run one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlan {
    /// Native sidecars (`initContainers` with `restartPolicy: Always`), in
    /// order: each starts once the previous one has started.
    pub sidecars: Vec<ContainerPlan>,
    /// Plain init containers, run one after the other to completion.
    pub init_containers: Vec<ContainerPlan>,
    /// The main containers, started together after the init containers.
    pub containers: Vec<ContainerPlan>,
    /// `terminationGracePeriodSeconds`.
    pub grace_period: Duration,
    /// Host directory of each volume, by volume name.
    pub volumes: BTreeMap<String, PathBuf>,
}

/// One container, translated.
#[derive(Clone, Debug, PartialEq)]
pub struct ContainerPlan {
    /// The container's name.
    pub name: String,
    /// The executable: the image's binary, or `command[0]` (resolved to a
    /// host path when it names a mounted file or the image's binary).
    pub program: PathBuf,
    /// Its arguments (`command[1..]` then `args`), rewritten.
    pub args: Vec<String>,
    /// Its environment (`env`), rewritten. The process gets only these and
    /// the host's `PATH`, as a container gets only its own environment.
    pub env: Vec<(String, String)>,
    /// `startupProbe`.
    pub startup_probe: Option<ProbePlan>,
    /// `readinessProbe`.
    pub readiness_probe: Option<ProbePlan>,
    /// `livenessProbe`.
    pub liveness_probe: Option<ProbePlan>,
    /// `lifecycle.preStop.exec.command`, rewritten: the program and its
    /// arguments.
    pub pre_stop: Option<(PathBuf, Vec<String>)>,
}

/// An `httpGet` probe with its timing, as the kubelet runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePlan {
    /// The HTTP path.
    pub path: String,
    /// Where to send it on the host.
    pub address: SocketAddr,
    /// `initialDelaySeconds`.
    pub initial_delay: Duration,
    /// `periodSeconds`.
    pub period: Duration,
    /// `timeoutSeconds`.
    pub timeout: Duration,
    /// `successThreshold`.
    pub success_threshold: u32,
    /// `failureThreshold`.
    pub failure_threshold: u32,
}

/// Every port number the pod uses: declared container ports, probe ports
/// given as numbers, and ports of listen addresses in command lines and
/// environments (`0.0.0.0:8000`, `127.0.0.1:8000`, `localhost:8000`,
/// `[::]:8000`).
pub fn pod_ports(template: &PodTemplateSpec) -> BTreeSet<i32> {
    let mut ports = BTreeSet::new();
    let Some(pod) = &template.spec else {
        return ports;
    };
    for container in all_containers(pod) {
        ports.extend(
            container
                .ports
                .iter()
                .flatten()
                .map(|port| port.container_port),
        );
        let probes = [
            &container.startup_probe,
            &container.readiness_probe,
            &container.liveness_probe,
        ];
        for probe in probes.into_iter().flatten() {
            if let Some(IntOrString::Int(port)) = probe.http_get.as_ref().map(|get| &get.port) {
                ports.insert(*port);
            }
        }
        for text in container_strings(container) {
            ports.extend(address_ports(text).into_iter().map(|(_, _, port)| port));
        }
    }
    ports
}

/// Translates `template` for a pod whose volumes live under `volume_root`
/// and whose ports are `ports` (see [`pod_ports`] and
/// [`PortMap::allocate`]).
pub fn plan_pod(
    template: &PodTemplateSpec,
    images: &Images,
    volume_root: &Path,
    ports: &PortMap,
) -> Result<PodPlan, PlanError> {
    let pod = template.spec.as_ref().ok_or(PlanError::NoSpec)?;
    let volumes = plan_volumes(pod, volume_root)?;
    let mut sidecars = Vec::new();
    let mut init_containers = Vec::new();
    for (i, container) in pod.init_containers.iter().flatten().enumerate() {
        let field = format!("spec.initContainers[{i}]");
        let plan = plan_container(container, &field, images, &volumes, ports)?;
        match container.restart_policy.as_deref() {
            Some("Always") => sidecars.push(plan),
            None => {
                if plan.pre_stop.is_some() || plan.readiness_probe.is_some() {
                    return Err(unsupported(
                        field,
                        "a plain init container may not have a preStop hook or probes",
                    ));
                }
                init_containers.push(plan);
            }
            Some(other) => {
                return Err(unsupported(
                    format!("{field}.restartPolicy"),
                    format!("{other:?}: only Always (a native sidecar) is allowed"),
                ));
            }
        }
    }
    let containers = pod
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| plan_container(c, &format!("spec.containers[{i}]"), images, &volumes, ports))
        .collect::<Result<Vec<_>, _>>()?;
    let grace = pod
        .termination_grace_period_seconds
        .unwrap_or(DEFAULT_GRACE_PERIOD_SECONDS);
    let grace = u64::try_from(grace).map_err(|_| {
        unsupported(
            "spec.terminationGracePeriodSeconds",
            format!("{grace} is negative"),
        )
    })?;
    Ok(PodPlan {
        sidecars,
        init_containers,
        containers,
        grace_period: Duration::from_secs(grace),
        volumes,
    })
}

fn all_containers(pod: &PodSpec) -> impl Iterator<Item = &Container> {
    pod.init_containers
        .iter()
        .flatten()
        .chain(pod.containers.iter())
}

/// The strings of a container that may hold paths or addresses.
fn container_strings(container: &Container) -> impl Iterator<Item = &str> {
    let pre_stop = container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
        .and_then(|h| h.exec.as_ref())
        .and_then(|e| e.command.as_ref());
    container
        .command
        .iter()
        .flatten()
        .chain(container.args.iter().flatten())
        .chain(
            container
                .env
                .iter()
                .flatten()
                .filter_map(|e| e.value.as_ref()),
        )
        .chain(pre_stop.into_iter().flatten())
        .map(String::as_str)
}

fn plan_volumes(pod: &PodSpec, root: &Path) -> Result<BTreeMap<String, PathBuf>, PlanError> {
    let mut volumes = BTreeMap::new();
    for (i, volume) in pod.volumes.iter().flatten().enumerate() {
        if volume.empty_dir.is_none() {
            return Err(unsupported(
                format!("spec.volumes[{i}]"),
                format!(
                    "volume {:?} is not an emptyDir; the local runner has only emptyDir volumes",
                    volume.name
                ),
            ));
        }
        volumes.insert(volume.name.clone(), root.join(&volume.name));
    }
    Ok(volumes)
}

fn plan_container(
    container: &Container,
    field: &str,
    images: &Images,
    volumes: &BTreeMap<String, PathBuf>,
    ports: &PortMap,
) -> Result<ContainerPlan, PlanError> {
    let mut mounts = Vec::new();
    for (j, mount) in container.volume_mounts.iter().flatten().enumerate() {
        let host = volumes.get(&mount.name).ok_or_else(|| {
            unsupported(
                format!("{field}.volumeMounts[{j}]"),
                format!("volume {:?} is not defined in spec.volumes", mount.name),
            )
        })?;
        let host = match mount.sub_path.as_deref() {
            Some(sub) if !sub.is_empty() => host.join(sub),
            _ => host.clone(),
        };
        mounts.push(Mount {
            path: mount.mount_path.trim_end_matches('/').to_owned(),
            host,
        });
    }
    let rewrite = |text: &str| rewrite(text, &mounts, ports);
    let image = container.image.as_deref().unwrap_or_default();
    let image_binary = images.binary(image);
    let resolve = |word: &str| resolve_program(word, &mounts, image_binary);

    let (program, mut args) = match container.command.as_deref() {
        Some([first, rest @ ..]) => (resolve(first), rest.iter().map(|a| rewrite(a)).collect()),
        _ => {
            let binary = image_binary.ok_or_else(|| PlanError::UnknownImage {
                container: container.name.clone(),
                image: image.to_owned(),
                known: images.known(),
            })?;
            (binary.to_owned(), Vec::new())
        }
    };
    args.extend(container.args.iter().flatten().map(|a| rewrite(a)));

    let mut env = Vec::new();
    for (j, var) in container.env.iter().flatten().enumerate() {
        if var.value_from.is_some() {
            return Err(unsupported(
                format!("{field}.env[{j}].valueFrom"),
                "the local runner has no API server to read it from; give a value",
            ));
        }
        env.push((
            var.name.clone(),
            rewrite(var.value.as_deref().unwrap_or_default()),
        ));
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        return Err(unsupported(
            format!("{field}.envFrom"),
            "the local runner has no ConfigMaps or Secrets; use env",
        ));
    }

    let probe = |probe: &Option<Probe>, name: &str| {
        probe
            .as_ref()
            .map(|p| plan_probe(p, &format!("{field}.{name}"), container, ports))
            .transpose()
    };
    let pre_stop = match container
        .lifecycle
        .as_ref()
        .and_then(|l| l.pre_stop.as_ref())
    {
        None => None,
        Some(hook) => {
            let command = hook.exec.as_ref().and_then(|e| e.command.as_deref());
            match command {
                Some([first, rest @ ..]) => {
                    Some((resolve(first), rest.iter().map(|a| rewrite(a)).collect()))
                }
                _ => {
                    return Err(unsupported(
                        format!("{field}.lifecycle.preStop"),
                        "only an exec hook with a command is supported",
                    ));
                }
            }
        }
    };
    Ok(ContainerPlan {
        name: container.name.clone(),
        program,
        args,
        env,
        startup_probe: probe(&container.startup_probe, "startupProbe")?,
        readiness_probe: probe(&container.readiness_probe, "readinessProbe")?,
        liveness_probe: probe(&container.liveness_probe, "livenessProbe")?,
        pre_stop,
    })
}

fn plan_probe(
    probe: &Probe,
    field: &str,
    container: &Container,
    ports: &PortMap,
) -> Result<ProbePlan, PlanError> {
    let get = probe
        .http_get
        .as_ref()
        .ok_or_else(|| unsupported(field, "only httpGet probes are supported"))?;
    let port = match &get.port {
        IntOrString::Int(port) => *port,
        // A named port is looked up among the container's own ports, as the
        // kubelet does.
        IntOrString::String(name) => container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .map(|p| p.container_port)
            .ok_or_else(|| {
                unsupported(
                    format!("{field}.httpGet.port"),
                    format!("the container has no port named {name:?}"),
                )
            })?,
    };
    let address = ports.address(port).ok_or_else(|| {
        unsupported(
            format!("{field}.httpGet.port"),
            format!("port {port} has no host port in the pod's port map"),
        )
    })?;
    let seconds = |value: Option<i32>, default: i32| {
        Duration::from_secs(u64::try_from(value.unwrap_or(default)).unwrap_or(0))
    };
    let count = |value: Option<i32>, default: i32| {
        u32::try_from(value.unwrap_or(default)).unwrap_or(1).max(1)
    };
    // Kubernetes' defaults for probe fields.
    Ok(ProbePlan {
        path: get.path.clone().unwrap_or_else(|| "/".to_owned()),
        address,
        initial_delay: seconds(probe.initial_delay_seconds, 0),
        period: seconds(probe.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: seconds(probe.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: count(probe.success_threshold, 1),
        failure_threshold: count(probe.failure_threshold, 3),
    })
}

/// A volume mount: the path the container sees, and the host directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    /// `mountPath`, without a trailing `/`.
    pub path: String,
    /// The host directory standing for it.
    pub host: PathBuf,
}

/// `command[0]` or a preStop program: a mounted file becomes its host path;
/// the image's own binary, named by its file name or any path ending in
/// it, becomes the local binary; anything else is left to the host's `PATH`
/// (`sleep`, `sh`).
fn resolve_program(word: &str, mounts: &[Mount], image_binary: Option<&Path>) -> PathBuf {
    let rewritten = rewrite_paths(word, mounts);
    if rewritten != word {
        return PathBuf::from(rewritten);
    }
    if let Some(binary) = image_binary
        && Path::new(word).file_name().is_some()
        && Path::new(word).file_name() == binary.file_name()
    {
        return binary.to_owned();
    }
    PathBuf::from(word)
}

/// Rewrites the paths under the mounts and the listen addresses of `text`.
pub fn rewrite(text: &str, mounts: &[Mount], ports: &PortMap) -> String {
    rewrite_addresses(&rewrite_paths(text, mounts), ports)
}

fn is_path_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

/// Replaces every whole-path occurrence of a mount path (at a path boundary
/// on both sides: `--socket=/run/quiesce/x` yes, `/opt/run/quiesce` or
/// `/run/quiescent` no) by its host directory. Longer mount paths win, so a
/// mount nested inside another is honoured.
pub fn rewrite_paths(text: &str, mounts: &[Mount]) -> String {
    let mut sorted: Vec<&Mount> = mounts.iter().filter(|m| !m.path.is_empty()).collect();
    sorted.sort_by_key(|m| std::cmp::Reverse(m.path.len()));
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    'scan: while i < text.len() {
        let before_ok = text[..i]
            .chars()
            .next_back()
            .is_none_or(|c| !is_path_char(c));
        if before_ok {
            for mount in &sorted {
                if text[i..].starts_with(&mount.path) {
                    let end = i + mount.path.len();
                    let after_ok = text[end..]
                        .chars()
                        .next()
                        .is_none_or(|c| c == '/' || !is_path_char(c));
                    if after_ok {
                        out.push_str(&mount.host.to_string_lossy());
                        i = end;
                        continue 'scan;
                    }
                }
            }
        }
        let c = text[i..].chars().next().expect("i is on a char boundary");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Hosts that mean "this pod" in a listen or connect address.
const POD_HOSTS: [&str; 4] = ["0.0.0.0:", "127.0.0.1:", "localhost:", "[::]:"];

/// `(start, end, port)` of every pod-local address with a port in `text`.
fn address_ports(text: &str) -> Vec<(usize, usize, i32)> {
    let mut found = Vec::new();
    for host in POD_HOSTS {
        for (start, _) in text.match_indices(host) {
            // "10.0.0.0:80" contains "0.0.0.0:" but is another host.
            let boundary = text[..start]
                .chars()
                .next_back()
                .is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '.'));
            let digits_start = start + host.len();
            let digits = text[digits_start..]
                .bytes()
                .take_while(u8::is_ascii_digit)
                .count();
            if boundary && digits > 0 {
                let end = digits_start + digits;
                if let Ok(port) = text[digits_start..end].parse() {
                    found.push((start, end, port));
                }
            }
        }
    }
    found.sort_unstable();
    found
}

/// Rewrites `0.0.0.0:PORT` (and the loopback forms) to `127.0.0.1:<host
/// port>` for every port of the map; other ports are left alone.
pub fn rewrite_addresses(text: &str, ports: &PortMap) -> String {
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    for (start, end, port) in address_ports(text) {
        if start < copied {
            continue;
        }
        if let Some(host_port) = ports.host_port(port) {
            out.push_str(&text[copied..start]);
            out.push_str(&format!("127.0.0.1:{host_port}"));
            copied = end;
        }
    }
    out.push_str(&text[copied..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{
        EmptyDirVolumeSource, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler, Volume,
    };

    fn mounts() -> Vec<Mount> {
        vec![Mount {
            path: "/run/quiesce".into(),
            host: PathBuf::from("/tmp/p1/quiesce"),
        }]
    }

    #[test]
    fn repositories_drop_tags_and_digests_but_keep_registry_ports() {
        assert_eq!(repository("ghcr.io/q/engine:0.1.0"), "ghcr.io/q/engine");
        assert_eq!(repository("ghcr.io/q/engine@sha256:ab"), "ghcr.io/q/engine");
        assert_eq!(
            repository("localhost:5000/engine:1"),
            "localhost:5000/engine"
        );
        assert_eq!(repository("localhost:5000/engine"), "localhost:5000/engine");
        assert_eq!(repository("busybox"), "busybox");
    }

    #[test]
    fn paths_are_rewritten_at_path_boundaries_only() {
        let m = mounts();
        assert_eq!(
            rewrite_paths("/run/quiesce/quiesce.sock", &m),
            "/tmp/p1/quiesce/quiesce.sock"
        );
        assert_eq!(rewrite_paths("/run/quiesce", &m), "/tmp/p1/quiesce");
        assert_eq!(
            rewrite_paths("--socket=/run/quiesce/s", &m),
            "--socket=/tmp/p1/quiesce/s"
        );
        assert_eq!(
            rewrite_paths("/opt/run/quiesce/s", &m),
            "/opt/run/quiesce/s"
        );
        assert_eq!(rewrite_paths("/run/quiescent", &m), "/run/quiescent");
        assert_eq!(rewrite_paths("/run/other", &m), "/run/other");
        assert_eq!(
            rewrite_paths("a /run/quiesce b /run/quiesce/x", &m),
            "a /tmp/p1/quiesce b /tmp/p1/quiesce/x"
        );
    }

    #[test]
    fn nested_mounts_take_the_longest_path() {
        let m = vec![
            Mount {
                path: "/data".into(),
                host: "/h/data".into(),
            },
            Mount {
                path: "/data/cache".into(),
                host: "/h/cache".into(),
            },
        ];
        assert_eq!(rewrite_paths("/data/cache/x", &m), "/h/cache/x");
        assert_eq!(rewrite_paths("/data/x", &m), "/h/data/x");
    }

    #[test]
    fn listen_addresses_go_to_the_pods_host_ports() {
        let ports = PortMap::from_pairs([(9090, 41001), (8000, 41002)]);
        assert_eq!(rewrite_addresses("0.0.0.0:9090", &ports), "127.0.0.1:41001");
        assert_eq!(
            rewrite_addresses("http://127.0.0.1:8000/health", &ports),
            "http://127.0.0.1:41002/health"
        );
        assert_eq!(
            rewrite_addresses("localhost:8000", &ports),
            "127.0.0.1:41002"
        );
        assert_eq!(rewrite_addresses("[::]:9090", &ports), "127.0.0.1:41001");
        // Unknown ports, longer numbers and other hosts stay as they are.
        assert_eq!(rewrite_addresses("0.0.0.0:7000", &ports), "0.0.0.0:7000");
        assert_eq!(rewrite_addresses("0.0.0.0:90901", &ports), "0.0.0.0:90901");
        assert_eq!(rewrite_addresses("10.0.0.0:9090", &ports), "10.0.0.0:9090");
        assert_eq!(
            rewrite_addresses("--listen=0.0.0.0:9090 --x 0.0.0.0:8000", &ports),
            "--listen=127.0.0.1:41001 --x 127.0.0.1:41002"
        );
    }

    fn http_probe(path: &str, port: IntOrString, period: i32) -> Probe {
        Probe {
            http_get: Some(HTTPGetAction {
                path: Some(path.into()),
                port,
                ..Default::default()
            }),
            period_seconds: Some(period),
            ..Default::default()
        }
    }

    fn template() -> PodTemplateSpec {
        let sidecar = Container {
            name: "side".into(),
            image: Some("ghcr.io/q/side:1".into()),
            args: Some(vec![
                "serve".into(),
                "--socket".into(),
                "/run/quiesce/q.sock".into(),
                "--listen".into(),
                "0.0.0.0:9090".into(),
            ]),
            restart_policy: Some("Always".into()),
            startup_probe: Some(http_probe("/live", IntOrString::Int(9090), 1)),
            volume_mounts: Some(vec![k8s_openapi::api::core::v1::VolumeMount {
                name: "shared".into(),
                mount_path: "/run/quiesce".into(),
                ..Default::default()
            }]),
            ..Default::default()
        };
        let engine = Container {
            name: "engine".into(),
            image: Some("ghcr.io/q/engine:1".into()),
            args: Some(vec!["--listen".into(), "0.0.0.0:8000".into()]),
            env: Some(vec![k8s_openapi::api::core::v1::EnvVar {
                name: "SOCK".into(),
                value: Some("/run/quiesce/q.sock".into()),
                ..Default::default()
            }]),
            ports: Some(vec![k8s_openapi::api::core::v1::ContainerPort {
                name: Some("http".into()),
                container_port: 8000,
                ..Default::default()
            }]),
            readiness_probe: Some(http_probe("/ready", IntOrString::Int(9090), 2)),
            liveness_probe: Some(http_probe(
                "/health",
                IntOrString::String("http".into()),
                10,
            )),
            lifecycle: Some(Lifecycle {
                pre_stop: Some(LifecycleHandler {
                    exec: Some(ExecAction {
                        command: Some(vec![
                            "/run/quiesce/bin/side".into(),
                            "drain".into(),
                            "--socket".into(),
                            "/run/quiesce/q.sock".into(),
                        ]),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            volume_mounts: Some(vec![k8s_openapi::api::core::v1::VolumeMount {
                name: "shared".into(),
                mount_path: "/run/quiesce".into(),
                read_only: Some(true),
                ..Default::default()
            }]),
            ..Default::default()
        };
        PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                init_containers: Some(vec![sidecar]),
                containers: vec![engine],
                volumes: Some(vec![Volume {
                    name: "shared".into(),
                    empty_dir: Some(EmptyDirVolumeSource::default()),
                    ..Default::default()
                }]),
                termination_grace_period_seconds: Some(17),
                ..Default::default()
            }),
        }
    }

    fn images() -> Images {
        Images::new()
            .with("ghcr.io/q/side:latest", "/bin/side")
            .with("ghcr.io/q/engine", "/bin/engine")
    }

    #[test]
    fn a_template_becomes_a_plan_with_host_paths_and_ports() {
        let t = template();
        assert_eq!(pod_ports(&t), BTreeSet::from([8000, 9090]));
        let ports = PortMap::from_pairs([(8000, 40001), (9090, 40002)]);
        let plan = plan_pod(&t, &images(), Path::new("/tmp/pod"), &ports).unwrap();

        assert_eq!(plan.grace_period, Duration::from_secs(17));
        assert_eq!(plan.volumes["shared"], PathBuf::from("/tmp/pod/shared"));
        assert!(plan.init_containers.is_empty());
        let side = &plan.sidecars[0];
        assert_eq!(side.program, PathBuf::from("/bin/side"));
        assert_eq!(
            side.args,
            [
                "serve",
                "--socket",
                "/tmp/pod/shared/q.sock",
                "--listen",
                "127.0.0.1:40002"
            ]
        );
        let startup = side.startup_probe.as_ref().unwrap();
        assert_eq!(startup.address, "127.0.0.1:40002".parse().unwrap());
        assert_eq!(startup.period, Duration::from_secs(1));
        assert_eq!(startup.failure_threshold, 3);

        let engine = &plan.containers[0];
        assert_eq!(engine.program, PathBuf::from("/bin/engine"));
        assert_eq!(engine.args, ["--listen", "127.0.0.1:40001"]);
        assert_eq!(
            engine.env,
            [("SOCK".to_owned(), "/tmp/pod/shared/q.sock".to_owned())]
        );
        let ready = engine.readiness_probe.as_ref().unwrap();
        assert_eq!(
            (ready.path.as_str(), ready.address.port()),
            ("/ready", 40002)
        );
        // A named port resolves through the container's own ports.
        assert_eq!(
            engine.liveness_probe.as_ref().unwrap().address.port(),
            40001
        );
        let (program, args) = engine.pre_stop.as_ref().unwrap();
        assert_eq!(program, &PathBuf::from("/tmp/pod/shared/bin/side"));
        assert_eq!(args, &["drain", "--socket", "/tmp/pod/shared/q.sock"]);
    }

    #[test]
    fn commands_replace_the_entrypoint_and_resolve_like_a_container() {
        let mut t = template();
        let pod = t.spec.as_mut().unwrap();
        pod.containers[0].command = Some(vec!["/usr/bin/engine".into(), "--x".into()]);
        pod.containers[0].lifecycle.as_mut().unwrap().pre_stop = Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(vec!["sleep".into(), "3".into()]),
            }),
            ..Default::default()
        });
        let ports = PortMap::from_pairs([(8000, 1), (9090, 2)]);
        let plan = plan_pod(&t, &images(), Path::new("/p"), &ports).unwrap();
        let engine = &plan.containers[0];
        assert_eq!(engine.program, PathBuf::from("/bin/engine"));
        assert_eq!(engine.args, ["--x", "--listen", "127.0.0.1:1"]);
        assert_eq!(
            engine.pre_stop,
            Some((PathBuf::from("sleep"), vec!["3".to_owned()]))
        );
    }

    #[test]
    fn what_cannot_run_locally_is_refused_by_field() {
        let ports = PortMap::from_pairs([(8000, 1), (9090, 2)]);
        let mut t = template();
        t.spec.as_mut().unwrap().containers[0].image = Some("ghcr.io/q/other:1".into());
        t.spec.as_mut().unwrap().containers[0].command = None;
        let err = plan_pod(&t, &images(), Path::new("/p"), &ports).unwrap_err();
        assert!(matches!(err, PlanError::UnknownImage { .. }), "{err}");

        let mut t = template();
        t.spec.as_mut().unwrap().volumes.as_mut().unwrap()[0].empty_dir = None;
        let err = plan_pod(&t, &images(), Path::new("/p"), &ports).unwrap_err();
        assert!(err.to_string().starts_with("spec.volumes[0]"), "{err}");

        let mut t = template();
        t.spec.as_mut().unwrap().containers[0].readiness_probe = Some(Probe::default());
        let err = plan_pod(&t, &images(), Path::new("/p"), &ports).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spec.containers[0].readinessProbe"),
            "{err}"
        );
    }
}
