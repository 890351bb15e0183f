//! The three ways a pod can be shut down that the demo compares, as pod
//! templates, and the scenario they run in.
//!
//! - `stock`: no sidecar, no preStop hook; the engine aborts every request
//!   on SIGTERM (`--shutdown-timeout 0`, vLLM's default); Kubernetes'
//!   default grace period (30 s, time-scaled).
//! - `fixed-sleep`: the KServe / llm-d recipe: a preStop `sleep 15` so that
//!   load balancers catch up before SIGTERM, then the engine drains by
//!   itself for a hand-picked `--shutdown-timeout` (30 s), with a
//!   hand-computed grace period (15 + 30 + 5 = 50 s); all time-scaled.
//! - `quiesce`: the pod the operator renders from an InferenceDeployment
//!   (sidecar, drain client preStop, computed grace period).
//!
//! The two baselines get the same engine, the same engine flags and the
//! same probe timings as the rendered pod (their probes ask the engine's
//! `/health`, as vLLM users do), so that only termination differs.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use quiesce_api::render::{RenderConfig, render_pod_template};
use quiesce_api::{InferenceDeploymentSpec, ScaleInPolicy};
use serde_json::json;

use quiesce_e2e::balancer::{BalancerConfig, Policy};
use quiesce_e2e::load::LoadConfig;
use quiesce_e2e::pod::ENGINE_IMAGE;

/// The engine's container port.
pub const ENGINE_PORT: i32 = 8000;
/// The engine container's name.
pub const ENGINE_CONTAINER: &str = "engine";
/// The engine's health endpoint, which the baselines probe.
pub const HEALTH_PATH: &str = "/health";

/// The default request lengths: 70% short chat turns (0.4–1.2 s at 20 ms
/// per token), 25% medium answers (2–6 s), 5% long generations (10–20 s:
/// the README's 90-second stream, time-compressed five times).
pub const DEFAULT_LENGTHS: &str = "70:20-60,25:100-300,5:500-1000";

/// A way to shut pods down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// SIGTERM aborts everything.
    Stock,
    /// preStop sleep, then the engine's own bounded drain.
    FixedSleep,
    /// quiesce's rendered pod.
    Quiesce,
}

impl Strategy {
    /// The three, in the order the demo runs them.
    pub const ALL: [Strategy; 3] = [Self::Stock, Self::FixedSleep, Self::Quiesce];

    /// Its name in output and flags.
    pub fn name(self) -> &'static str {
        match self {
            Self::Stock => "stock",
            Self::FixedSleep => "fixed-sleep",
            Self::Quiesce => "quiesce",
        }
    }

    /// Parses a name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// The fixed-sleep recipe in real-world seconds, before the time scale.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FixedSleepRecipe {
    /// preStop `sleep`.
    pub sleep_seconds: f64,
    /// The engine's `--shutdown-timeout`.
    pub shutdown_timeout_seconds: f64,
    /// `terminationGracePeriodSeconds`.
    pub grace_seconds: f64,
}

impl Default for FixedSleepRecipe {
    fn default() -> Self {
        Self {
            sleep_seconds: 15.0,
            shutdown_timeout_seconds: 30.0,
            grace_seconds: 50.0,
        }
    }
}

/// Everything a comparison run needs to know.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// Replicas of each strategy's deployment.
    pub replicas: usize,
    /// Endpoint propagation delay, in the balancer and in quiesce's
    /// `drain.propagationSeconds` (whole seconds: the API takes whole
    /// seconds).
    pub propagation_seconds: u32,
    /// quiesce's `drain.timeoutSeconds`.
    pub drain_timeout_seconds: u32,
    /// quiesce's `drain.abortGraceSeconds`.
    pub abort_grace_seconds: u32,
    /// quiesce's `drain.exitMarginSeconds`.
    pub exit_margin_seconds: u32,
    /// The engine's time per output token.
    pub token_interval: Duration,
    /// The engine's model load time.
    pub engine_startup: Duration,
    /// The load.
    pub load: LoadConfig,
    /// Demo seconds per real-world second, applied to the baselines'
    /// published numbers (the fixed-sleep recipe, Kubernetes' default
    /// grace period).
    pub time_scale: f64,
    /// The fixed-sleep recipe, real-world seconds.
    pub recipe: FixedSleepRecipe,
    /// Kubernetes' default grace period, real-world seconds (stock).
    pub stock_grace_seconds: f64,
    /// Retry a 503 with `Retry-After` once on another pod.
    pub retry_rejected: bool,
    /// Retry a refused connection once on another pod.
    pub retry_refused: bool,
    /// How the balancer picks a pod.
    pub policy: Policy,
}

impl Default for Scenario {
    /// The demo's defaults: a time-compressed world (documented in
    /// docs/demo.md) where long generations take 10–20 s.
    fn default() -> Self {
        Self {
            replicas: 3,
            propagation_seconds: 2,
            drain_timeout_seconds: 22,
            abort_grace_seconds: 1,
            exit_margin_seconds: 2,
            token_interval: Duration::from_millis(20),
            engine_startup: Duration::from_secs(1),
            load: LoadConfig {
                rate: 10.0,
                concurrency: 64,
                lengths: DEFAULT_LENGTHS.parse().expect("the default mix parses"),
                seed: 1,
                retries: 0,
            },
            time_scale: 0.2,
            recipe: FixedSleepRecipe::default(),
            stock_grace_seconds: 30.0,
            retry_rejected: true,
            retry_refused: false,
            policy: Policy::RoundRobin,
        }
    }
}

impl Scenario {
    /// The balancer's settings.
    pub fn balancer(&self) -> BalancerConfig {
        BalancerConfig {
            propagation: Duration::from_secs(u64::from(self.propagation_seconds)),
            retry_rejected: self.retry_rejected,
            retry_refused: self.retry_refused,
            policy: self.policy,
        }
    }

    /// The longest request of the mix, generating without pause.
    pub fn longest_request(&self) -> Duration {
        self.token_interval * self.load.lengths.longest()
    }

    fn scaled(&self, real_seconds: f64) -> f64 {
        real_seconds * self.time_scale
    }

    /// The fixed-sleep preStop sleep, in demo seconds.
    pub fn fixed_sleep(&self) -> f64 {
        self.scaled(self.recipe.sleep_seconds)
    }

    /// The fixed-sleep engine's `--shutdown-timeout`, in demo seconds.
    pub fn fixed_shutdown_timeout(&self) -> f64 {
        self.scaled(self.recipe.shutdown_timeout_seconds)
    }

    /// The fixed-sleep grace period (whole seconds, as the API takes).
    pub fn fixed_grace_seconds(&self) -> i64 {
        self.scaled(self.recipe.grace_seconds).ceil() as i64
    }

    /// The stock grace period (whole seconds).
    pub fn stock_grace_seconds(&self) -> i64 {
        self.scaled(self.stock_grace_seconds).ceil() as i64
    }

    /// quiesce's grace period: the operator's formula.
    pub fn quiesce_grace_seconds(&self) -> i64 {
        self.inference_deployment()
            .map(|spec| spec.drain.termination_grace_period_seconds())
            .unwrap_or_default()
    }

    /// One line per strategy: its exact termination settings.
    pub fn describe(&self, strategy: Strategy) -> String {
        match strategy {
            Strategy::Stock => format!(
                "no sidecar, no preStop; engine --shutdown-timeout 0 (aborts on SIGTERM); grace {} s",
                self.stock_grace_seconds()
            ),
            Strategy::FixedSleep => format!(
                "no sidecar; preStop sleep {}; engine --shutdown-timeout {}; grace {} s",
                seconds(self.fixed_sleep()),
                seconds(self.fixed_shutdown_timeout()),
                self.fixed_grace_seconds()
            ),
            Strategy::Quiesce => format!(
                "rendered pod: sidecar, preStop drain (propagation {} s, timeout {} s, abort grace \
                 {} s); grace {} s",
                self.propagation_seconds,
                self.drain_timeout_seconds,
                self.abort_grace_seconds,
                self.quiesce_grace_seconds()
            ),
        }
    }

    /// The simulated engine's flags, common to every strategy.
    fn engine_args(&self) -> Vec<String> {
        vec![
            "--listen".into(),
            format!("0.0.0.0:{ENGINE_PORT}"),
            "--startup-seconds".into(),
            seconds(self.engine_startup.as_secs_f64()),
            "--token-interval-ms".into(),
            seconds(self.token_interval.as_secs_f64() * 1000.0),
            "--workers".into(),
            "1".into(),
        ]
    }

    /// The InferenceDeployment the demo applies, as a user would write it.
    pub fn inference_deployment(&self) -> Result<InferenceDeploymentSpec, String> {
        let spec = json!({
            "replicas": self.replicas,
            "template": {
                "metadata": {"labels": {"app": "demo"}},
                "spec": {"containers": [{
                    "name": ENGINE_CONTAINER,
                    "image": ENGINE_IMAGE,
                    "args": self.engine_args(),
                    "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
                }]},
            },
            "engine": {"port": ENGINE_PORT},
            "drain": {
                "propagationSeconds": self.propagation_seconds,
                "timeoutSeconds": self.drain_timeout_seconds,
                "abortGraceSeconds": self.abort_grace_seconds,
                "exitMarginSeconds": self.exit_margin_seconds,
            },
            "strategy": {"maxSurge": 1, "maxUnavailable": 0},
        });
        serde_json::from_value(spec).map_err(|e| format!("building the InferenceDeployment: {e}"))
    }

    /// The pod template of `strategy`.
    pub fn template(&self, strategy: Strategy) -> Result<PodTemplateSpec, String> {
        let rendered = self.rendered()?;
        match strategy {
            Strategy::Quiesce => Ok(rendered),
            Strategy::Stock => self.baseline(
                &rendered,
                vec!["--shutdown-timeout".into(), "0".into()],
                None,
                self.stock_grace_seconds(),
            ),
            Strategy::FixedSleep => self.baseline(
                &rendered,
                vec![
                    "--shutdown-timeout".into(),
                    seconds(self.fixed_shutdown_timeout()),
                ],
                Some(vec!["sleep".into(), seconds(self.fixed_sleep())]),
                self.fixed_grace_seconds(),
            ),
        }
    }

    /// quiesce's pod: validated and rendered by the operator's own pure
    /// builder, with nothing of the user's overridden.
    fn rendered(&self) -> Result<PodTemplateSpec, String> {
        let spec = self.inference_deployment()?;
        let spec = quiesce_api::rules::validate(&spec).map_err(|violations| {
            let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
            format!(
                "the demo's InferenceDeployment is invalid: {}",
                list.join("; ")
            )
        })?;
        let (template, conflicts) = render_pod_template(&spec, "quiesce", &RenderConfig::default())
            .map_err(|e| e.to_string())?;
        if !conflicts.is_empty() {
            let list: Vec<String> = conflicts.iter().map(|c| c.message.clone()).collect();
            return Err(format!("rendering reported conflicts: {}", list.join("; ")));
        }
        Ok(template)
    }

    /// A hand-built pod: just the engine, with the rendered engine's probe
    /// timings pointed at its own `/health`.
    fn baseline(
        &self,
        rendered: &PodTemplateSpec,
        extra_args: Vec<String>,
        pre_stop: Option<Vec<String>>,
        grace_seconds: i64,
    ) -> Result<PodTemplateSpec, String> {
        let rendered_engine = rendered
            .spec
            .as_ref()
            .and_then(|s| s.containers.iter().find(|c| c.name == ENGINE_CONTAINER))
            .ok_or("the rendered pod has no engine container")?;
        let health = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe.clone().map(|mut probe| {
                if let Some(get) = probe.http_get.as_mut() {
                    get.path = Some(HEALTH_PATH.to_owned());
                    get.port = IntOrString::Int(ENGINE_PORT);
                }
                probe
            })
        };
        let mut args = self.engine_args();
        args.extend(extra_args);
        let mut engine: Container = serde_json::from_value(json!({
            "name": ENGINE_CONTAINER,
            "image": ENGINE_IMAGE,
            "args": args,
            "ports": [{"name": "http", "containerPort": ENGINE_PORT}],
        }))
        .map_err(|e| e.to_string())?;
        engine.startup_probe = health(&rendered_engine.startup_probe);
        engine.readiness_probe = health(&rendered_engine.readiness_probe);
        engine.liveness_probe = health(&rendered_engine.liveness_probe);
        if let Some(command) = pre_stop {
            engine.lifecycle = Some(
                serde_json::from_value(json!({"preStop": {"exec": {"command": command}}}))
                    .map_err(|e| e.to_string())?,
            );
        }
        let template = json!({
            "metadata": {"labels": {"app": "demo"}},
            "spec": {
                "containers": [engine],
                "terminationGracePeriodSeconds": grace_seconds,
            },
        });
        serde_json::from_value(template).map_err(|e| e.to_string())
    }
}

/// A number of seconds as a flag value: `3`, `0.5`, `1.25`.
pub fn seconds(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() {
        "0".to_owned()
    } else {
        text.to_owned()
    }
}

/// The name of a scale-in run under `policy`, in tables and lanes.
pub fn scale_in_name(policy: ScaleInPolicy) -> &'static str {
    match policy {
        ScaleInPolicy::IdleFirst => "scale-in IdleFirst",
        ScaleInPolicy::Default => "scale-in Default",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiesce_e2e::pod::plan::{Images, PortMap, plan_pod, pod_ports};
    use std::path::Path;

    fn images() -> Images {
        Images::new()
            .with(
                quiesce_api::render::DEFAULT_SIDECAR_IMAGE,
                "/bin/quiesce-sidecar",
            )
            .with(ENGINE_IMAGE, "/bin/quiesce-engine")
    }

    #[test]
    fn seconds_print_as_flag_values() {
        assert_eq!(seconds(3.0), "3");
        assert_eq!(seconds(0.5), "0.5");
        assert_eq!(seconds(0.0), "0");
        assert_eq!(seconds(20.0), "20");
        assert_eq!(seconds(1.25), "1.25");
    }

    #[test]
    fn the_rendered_pod_runs_locally_with_host_paths_and_ports() {
        let scenario = Scenario::default();
        let template = scenario.template(Strategy::Quiesce).unwrap();
        let ports = pod_ports(&template);
        assert_eq!(ports, [ENGINE_PORT, 9090].into());
        let map = PortMap::from_pairs([(ENGINE_PORT, 50001), (9090, 50002)]);
        let plan = plan_pod(&template, &images(), Path::new("/tmp/p"), &map).unwrap();
        assert_eq!(plan.grace_period, Duration::from_secs(2 + 22 + 1 + 2));

        let sidecar = &plan.sidecars[0];
        assert_eq!(sidecar.program, Path::new("/bin/quiesce-sidecar"));
        let args = sidecar.args.join(" ");
        assert!(
            args.contains("--socket /tmp/p/quiesce/quiesce.sock"),
            "{args}"
        );
        assert!(args.contains("--listen 127.0.0.1:50002"), "{args}");
        assert!(args.contains("--install-dir /tmp/p/quiesce/bin"), "{args}");
        assert_eq!(
            sidecar.startup_probe.as_ref().unwrap().address.port(),
            50002
        );

        let engine = &plan.containers[0];
        assert_eq!(engine.program, Path::new("/bin/quiesce-engine"));
        assert!(engine.args.join(" ").contains("--listen 127.0.0.1:50001"));
        assert!(engine.env.contains(&(
            "QUIESCE_SOCKET".to_owned(),
            "/tmp/p/quiesce/quiesce.sock".to_owned()
        )));
        let (program, args) = engine.pre_stop.as_ref().unwrap();
        assert_eq!(program, Path::new("/tmp/p/quiesce/bin/quiesce-sidecar"));
        assert_eq!(
            args[..3],
            ["drain", "--socket", "/tmp/p/quiesce/quiesce.sock"]
        );
        let ready = engine.readiness_probe.as_ref().unwrap();
        assert_eq!(
            (ready.path.as_str(), ready.address.port()),
            ("/ready", 50002)
        );
        assert_eq!(ready.period, Duration::from_secs(1));
    }

    #[test]
    fn baselines_have_the_rendered_probe_timings_on_health_and_their_own_shutdown() {
        let scenario = Scenario::default();
        let map = PortMap::from_pairs([(ENGINE_PORT, 50001)]);
        let quiesce = scenario.template(Strategy::Quiesce).unwrap();
        let rendered = &quiesce.spec.as_ref().unwrap().containers[0];

        let stock = scenario.template(Strategy::Stock).unwrap();
        let plan = plan_pod(&stock, &images(), Path::new("/p"), &map).unwrap();
        assert!(plan.sidecars.is_empty());
        let engine = &plan.containers[0];
        assert!(engine.pre_stop.is_none());
        assert!(engine.args.join(" ").ends_with("--shutdown-timeout 0"));
        assert_eq!(plan.grace_period, Duration::from_secs(6));
        let ready = engine.readiness_probe.as_ref().unwrap();
        assert_eq!(
            (ready.path.as_str(), ready.address.port()),
            (HEALTH_PATH, 50001)
        );
        let spec = stock.spec.as_ref().unwrap();
        assert_eq!(
            spec.containers[0]
                .readiness_probe
                .as_ref()
                .unwrap()
                .period_seconds,
            rendered.readiness_probe.as_ref().unwrap().period_seconds
        );
        assert_eq!(
            spec.containers[0]
                .startup_probe
                .as_ref()
                .unwrap()
                .failure_threshold,
            rendered.startup_probe.as_ref().unwrap().failure_threshold
        );

        let fixed = scenario.template(Strategy::FixedSleep).unwrap();
        let plan = plan_pod(&fixed, &images(), Path::new("/p"), &map).unwrap();
        let engine = &plan.containers[0];
        assert_eq!(
            engine.pre_stop,
            Some(("sleep".into(), vec!["3".to_owned()]))
        );
        assert!(engine.args.join(" ").ends_with("--shutdown-timeout 6"));
        assert_eq!(plan.grace_period, Duration::from_secs(10));
    }
}
