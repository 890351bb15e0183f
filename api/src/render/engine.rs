//! What quiesce adds to the engine container: the socket's address, the
//! shared volume, the drain hook, the probes and, for stock engines, the
//! switches the sidecar needs (vLLM's shutdown timeout and load tracking,
//! SGLang's cheap health check). Whatever the user already set there is
//! kept, as a [`Conflict`]; engine flags that blind the sidecar are
//! [`Conflict`]s too.

use k8s_openapi::api::core::v1::{
    Container, EnvVar, ExecAction, LifecycleHandler, Probe, VolumeMount,
};

use super::conflict::{
    Conflict, ENGINE_LIVENESS_PROBE_KEPT, ENGINE_LOG_STATS_DISABLED, ENGINE_METRICS_DISABLED,
    ENGINE_READINESS_PROBE_KEPT, ENGINE_STARTUP_PROBE_KEPT, HEALTH_GENERATION_KEPT,
    LOAD_TRACKING_NOT_PASSED, SHARED_MOUNT_SHADOWED, SHUTDOWN_TIMEOUT_KEPT,
    SHUTDOWN_TIMEOUT_NOT_PASSED, SOCKET_ENV_KEPT,
};
use quiesce_protocol::contract::{
    LIVE_PATH, READY_PATH, SHARED_MOUNT_PATH, SHARED_VOLUME_NAME, SOCKET_ENV, SOCKET_PATH,
};

use super::sidecar::{http_probe, sidecar_port};
use crate::rules::Validated;
use crate::{DrainSpec, EngineAdapter, EngineSpec, InferenceDeploymentSpec};

/// vLLM's flag that serves `/load`: HTTP requests in flight until their
/// answer is fully sent, which its gauges do not count.
pub const VLLM_LOAD_TRACKING_FLAG: &str = "--enable-server-load-tracking";
/// vLLM's flag that removes the gauges the adapter reads.
pub const VLLM_DISABLE_LOG_STATS_FLAG: &str = "--disable-log-stats";
/// SGLang's flag that serves `/metrics`, the only place its grammar queue
/// shows.
pub const SGLANG_ENABLE_METRICS_FLAG: &str = "--enable-metrics";
/// SGLang's variable that makes `/health` generate a token and answer after
/// at least a second (default true); quiesce sets it to false.
pub const SGLANG_HEALTH_GENERATION_ENV: &str = "SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION";
/// vLLM's flag for how long it drains by itself after SIGTERM.
pub const VLLM_SHUTDOWN_TIMEOUT_FLAG: &str = "--shutdown-timeout";

/// Period of quiesce's startup probe on the engine: the pod becomes ready
/// within a second of its engine, so a rollout does not wait for nothing
/// between pods. The sidecar answers it in microseconds.
pub const STARTUP_PROBE_PERIOD_SECONDS: i32 = 1;

/// Startup probe failures allowed: enough periods to cover
/// `startupTimeoutSeconds`, rounded up.
pub fn startup_failure_threshold(engine: &EngineSpec) -> i32 {
    let timeout = engine.startup_timeout_seconds.max(1);
    (timeout + STARTUP_PROBE_PERIOD_SECONDS - 1) / STARTUP_PROBE_PERIOD_SECONDS
}

/// Adds quiesce's parts to the engine container, whose path is `field`.
pub(super) fn instrument_engine(
    engine: &mut Container,
    field: &str,
    spec: &Validated<'_>,
) -> Vec<Conflict> {
    let mut conflicts = Vec::new();
    set_socket_env(engine, field, &mut conflicts);
    mount_shared_volume(engine, field, &mut conflicts);
    install_pre_stop(engine, &spec.drain_plan().pre_stop);
    install_probes(engine, field, spec, &mut conflicts);
    match spec.engine.adapter {
        EngineAdapter::Vllm => {
            pass_vllm_shutdown_timeout(engine, field, &spec.drain, &mut conflicts);
            pass_vllm_load_tracking(engine, field, &mut conflicts);
            warn_without(
                engine,
                field,
                &mut conflicts,
                FlagWanted {
                    flag: VLLM_DISABLE_LOG_STATS_FLAG,
                    wanted: false,
                    reason: ENGINE_LOG_STATS_DISABLED,
                    cost: "vLLM then exports no vllm:num_requests_running or \
                           vllm:num_requests_waiting, so the sidecar cannot see its work and \
                           every drain waits for spec.drain.timeoutSeconds; remove it",
                },
            );
        }
        EngineAdapter::Sglang => {
            set_cheap_sglang_health(engine, field, &mut conflicts);
            warn_without(
                engine,
                field,
                &mut conflicts,
                FlagWanted {
                    flag: SGLANG_ENABLE_METRICS_FLAG,
                    wanted: true,
                    reason: ENGINE_METRICS_DISABLED,
                    cost: "without it SGLang serves no /metrics, where alone its grammar queue \
                           shows, so the sidecar cannot see all of its work and every drain \
                           waits for spec.drain.timeoutSeconds; add it to the engine's arguments",
                },
            );
        }
        EngineAdapter::Protocol | EngineAdapter::Trtllm | EngineAdapter::Http => {}
    }
    conflicts
}

/// Whether `flag` is one of the words of the engine's command or arguments
/// (or inside a shell script there).
fn mentions(engine: &Container, flag: &str) -> Option<&'static str> {
    let mentions_flag =
        |words: &Option<Vec<String>>| words.iter().flatten().any(|word| word.contains(flag));
    if mentions_flag(&engine.command) {
        Some("command")
    } else if mentions_flag(&engine.args) {
        Some("args")
    } else {
        None
    }
}

/// An engine flag the sidecar depends on, present (`wanted`) or absent.
struct FlagWanted {
    flag: &'static str,
    wanted: bool,
    reason: &'static str,
    cost: &'static str,
}

/// Warns when the engine's command line has (or lacks) a flag that blinds
/// the sidecar. Such switches are the user's to choose: quiesce says what
/// they cost rather than change them.
fn warn_without(engine: &Container, field: &str, conflicts: &mut Vec<Conflict>, want: FlagWanted) {
    let found = mentions(engine, want.flag);
    if found.is_some() == want.wanted {
        return;
    }
    let (place, what) = match found {
        Some(place) => (place, format!("the engine runs with {}", want.flag)),
        None => ("args", format!("the engine runs without {}", want.flag)),
    };
    conflicts.push(Conflict::new(
        want.reason,
        format!("{field}.{place}"),
        format!("{what}: {}", want.cost),
    ));
}

/// vLLM's `/load` counts HTTP requests until their answer is fully sent,
/// which its gauges (engine queues only) miss: without it a drain could end
/// while the last chunks of a stream are still being written.
fn pass_vllm_load_tracking(engine: &mut Container, field: &str, conflicts: &mut Vec<Conflict>) {
    if mentions(engine, VLLM_LOAD_TRACKING_FLAG).is_some() {
        return;
    }
    if runs_through_a_shell(engine) {
        conflicts.push(Conflict::new(
            LOAD_TRACKING_NOT_PASSED,
            format!("{field}.command"),
            format!(
                "the engine runs through a shell, where an added argument would not reach \
                 vLLM, so quiesce did not add {VLLM_LOAD_TRACKING_FLAG}: the sidecar does not \
                 see requests whose answer is still being sent, and a drain may end before \
                 their last chunks; add {VLLM_LOAD_TRACKING_FLAG} to your script"
            ),
        ));
    } else {
        engine
            .args
            .get_or_insert_default()
            .push(VLLM_LOAD_TRACKING_FLAG.to_owned());
    }
}

/// SGLang's `/health` generates a token and answers after at least a
/// second unless told otherwise; the sidecar polls it every second.
fn set_cheap_sglang_health(engine: &mut Container, field: &str, conflicts: &mut Vec<Conflict>) {
    let env = engine.env.get_or_insert_default();
    match env
        .iter()
        .position(|var| var.name == SGLANG_HEALTH_GENERATION_ENV)
    {
        None => env.push(EnvVar {
            name: SGLANG_HEALTH_GENERATION_ENV.to_owned(),
            value: Some("false".to_owned()),
            ..EnvVar::default()
        }),
        Some(i) if env[i].value.as_deref() == Some("false") => {}
        Some(i) => conflicts.push(Conflict::new(
            HEALTH_GENERATION_KEPT,
            format!("{field}.env[{i}]"),
            format!(
                "the engine container sets {SGLANG_HEALTH_GENERATION_ENV} itself, so quiesce's \
                 false was not set: every look of the sidecar at /health makes SGLang generate \
                 a token and takes over a second; set it to false"
            ),
        )),
    }
}

fn set_socket_env(engine: &mut Container, field: &str, conflicts: &mut Vec<Conflict>) {
    let env = engine.env.get_or_insert_default();
    match env.iter().position(|var| var.name == SOCKET_ENV) {
        None => env.push(EnvVar {
            name: SOCKET_ENV.to_owned(),
            value: Some(SOCKET_PATH.to_owned()),
            ..EnvVar::default()
        }),
        Some(i) if env[i].value.as_deref() == Some(SOCKET_PATH) && env[i].value_from.is_none() => {}
        Some(i) => conflicts.push(Conflict::new(
            SOCKET_ENV_KEPT,
            format!("{field}.env[{i}]"),
            format!(
                "the engine container sets {SOCKET_ENV} itself, so quiesce's value \
                 {SOCKET_PATH} was not set: an engine that speaks the drain protocol will not \
                 find the sidecar there; remove it from the engine container"
            ),
        )),
    }
}

/// Read-only: the engine connects to the socket and runs the drain client,
/// but has no business changing either.
fn mount_shared_volume(engine: &mut Container, field: &str, conflicts: &mut Vec<Conflict>) {
    let mounts = engine.volume_mounts.get_or_insert_default();
    let inside = format!("{SHARED_MOUNT_PATH}/");
    for (j, mount) in mounts.iter().enumerate() {
        if mount.mount_path.starts_with(&inside) {
            conflicts.push(Conflict::new(
                SHARED_MOUNT_SHADOWED,
                format!("{field}.volumeMounts[{j}].mountPath"),
                format!(
                    "the engine container mounts {} inside quiesce's {SHARED_MOUNT_PATH}: it \
                     may hide the socket or the drain client from the engine, and then the \
                     preStop hook fails and the pod stops without draining; mount it elsewhere",
                    mount.mount_path
                ),
            ));
        }
    }
    mounts.push(VolumeMount {
        name: SHARED_VOLUME_NAME.to_owned(),
        mount_path: SHARED_MOUNT_PATH.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    });
}

/// An exec hook over the socket rather than an httpGet hook: httpGet goes
/// through the pod IP, so anyone in the cluster could drain the pod. The
/// rules reject a user preStop on the engine, so there is none to keep.
fn install_pre_stop(engine: &mut Container, command: &[String]) {
    engine.lifecycle.get_or_insert_default().pre_stop = Some(LifecycleHandler {
        exec: Some(ExecAction {
            command: Some(command.to_vec()),
        }),
        ..LifecycleHandler::default()
    });
}

/// One of the engine's probes: quiesce's version and what is lost when the
/// user's own is kept instead.
struct ProbeSlot {
    field: &'static str,
    reason: &'static str,
    ours: Probe,
    cost: String,
}

fn install_probes(
    engine: &mut Container,
    field: &str,
    spec: &InferenceDeploymentSpec,
    conflicts: &mut Vec<Conflict>,
) {
    let [readiness, liveness, startup] = engine_probes(spec);
    let slots = [
        (&mut engine.readiness_probe, readiness),
        (&mut engine.liveness_probe, liveness),
        (&mut engine.startup_probe, startup),
    ];
    for (slot, probe) in slots {
        if slot.is_none() {
            *slot = Some(probe.ours);
        } else {
            conflicts.push(Conflict::new(
                probe.reason,
                format!("{field}.{}", probe.field),
                format!(
                    "the engine container has its own {}, which is kept, so quiesce's was not \
                     installed: {}; remove yours to get quiesce's",
                    probe.field, probe.cost
                ),
            ));
        }
    }
}

/// All three ask the sidecar, which knows the engine's phase: the engine
/// itself needs no health endpoint.
fn engine_probes(spec: &InferenceDeploymentSpec) -> [ProbeSlot; 3] {
    let port = sidecar_port(&spec.sidecar);
    let startup_timeout = spec.engine.startup_timeout_seconds;
    [
        ProbeSlot {
            field: "readinessProbe",
            reason: ENGINE_READINESS_PROBE_KEPT,
            // Every second, unready after one failure: the drain turns
            // /ready to 503 at once, and the endpoint must stop serving
            // well within the propagation delay; a new pod is Ready within
            // a second of its startup probe.
            ours: Probe {
                period_seconds: Some(1),
                failure_threshold: Some(1),
                success_threshold: Some(1),
                timeout_seconds: Some(1),
                ..http_probe(READY_PATH, port)
            },
            cost: format!(
                "readiness no longer follows the sidecar's :{port}{READY_PATH}, so the pod does \
                 not turn unready when its drain starts (load balancers that use terminating \
                 endpoints keep sending it requests) nor when the sidecar loses the engine"
            ),
        },
        ProbeSlot {
            field: "livenessProbe",
            reason: ENGINE_LIVENESS_PROBE_KEPT,
            // Three misses 10 s apart: a busy engine is not a dead one.
            ours: Probe {
                period_seconds: Some(10),
                failure_threshold: Some(3),
                timeout_seconds: Some(2),
                ..http_probe(LIVE_PATH, port)
            },
            cost: format!(
                "the kubelet restarts the engine on your probe's verdict instead of the \
                 sidecar's :{port}{LIVE_PATH}, which stays healthy while a drain makes progress; \
                 make sure yours passes while the engine drains"
            ),
        },
        ProbeSlot {
            field: "startupProbe",
            reason: ENGINE_STARTUP_PROBE_KEPT,
            // Liveness only starts once this passes: model loading takes
            // minutes and must not count as a hang.
            ours: Probe {
                period_seconds: Some(STARTUP_PROBE_PERIOD_SECONDS),
                failure_threshold: Some(startup_failure_threshold(&spec.engine)),
                ..http_probe(READY_PATH, port)
            },
            cost: format!(
                "spec.engine.startupTimeoutSeconds ({startup_timeout}s) has no effect: your \
                 probe decides how long the engine may load before the kubelet restarts it"
            ),
        },
    ]
}

/// vLLM drains by itself after SIGTERM for `--shutdown-timeout` seconds, then
/// aborts explicitly (its default, 0, aborts at once). The drain proper runs
/// in the preStop hook, so SIGTERM leaves vLLM only the abort grace and the
/// exit margin: a longer timeout would let the kubelet's SIGKILL cut streams
/// that vLLM should have aborted (see docs/pod.md).
fn pass_vllm_shutdown_timeout(
    engine: &mut Container,
    field: &str,
    drain: &DrainSpec,
    conflicts: &mut Vec<Conflict>,
) {
    let ours = format!("{VLLM_SHUTDOWN_TIMEOUT_FLAG}={}", drain.abort_grace_seconds);
    if let Some(place) = mentions(engine, VLLM_SHUTDOWN_TIMEOUT_FLAG) {
        conflicts.push(Conflict::new(
            SHUTDOWN_TIMEOUT_KEPT,
            format!("{field}.{place}"),
            format!(
                "the engine already passes {VLLM_SHUTDOWN_TIMEOUT_FLAG}, which is kept, so \
                 quiesce did not add {ours}: after SIGTERM vLLM waits your value instead of \
                 spec.drain.abortGraceSeconds before it aborts; remove yours to get quiesce's"
            ),
        ));
    } else if runs_through_a_shell(engine) {
        conflicts.push(Conflict::new(
            SHUTDOWN_TIMEOUT_NOT_PASSED,
            format!("{field}.command"),
            format!(
                "the engine runs through a shell, where an added argument would not reach \
                 vLLM, so quiesce did not add {ours}: vLLM aborts in-flight requests as soon as \
                 it gets SIGTERM; add {ours} to your script"
            ),
        ));
    } else {
        engine.args.get_or_insert_default().push(ours);
    }
}

/// `sh -c "vllm serve ..."`: arguments after the script become the script's
/// `$0`, `$1`, not vLLM's.
fn runs_through_a_shell(engine: &Container) -> bool {
    let program = engine.command.iter().flatten().next();
    program.is_some_and(|program| {
        let base = program.rsplit('/').next().unwrap_or(program);
        matches!(base, "sh" | "bash" | "dash" | "ash" | "zsh" | "ksh")
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::*;
    use crate::render::conflict::ALL_REASONS;
    use crate::render::fixtures::*;

    fn engine_of(yaml: &str) -> (Container, Vec<Conflict>) {
        let (template, conflicts) = render_pod(yaml);
        (container(&template, "engine").clone(), conflicts)
    }

    fn vllm(container_yaml: &str) -> String {
        format!(
            "
engine: {{adapter: vllm}}
drain: {{timeoutSeconds: 300, abortGraceSeconds: 7}}
template:
  spec:
    containers:
    - name: engine
      image: vllm/vllm-openai:v0.23.0
{container_yaml}"
        )
    }

    #[test]
    fn pre_stop_runs_the_drain_client_with_the_drain_settings() {
        let (engine, _) = engine_of(&format!(
            "{MINIMAL}drain: {{propagationSeconds: 7, timeoutSeconds: 600, abortGraceSeconds: 3}}\n"
        ));
        let pre_stop = engine.lifecycle.unwrap().pre_stop.unwrap();
        assert_eq!(pre_stop.http_get, None);
        assert_eq!(
            pre_stop.exec.unwrap().command.unwrap(),
            [
                "/run/quiesce/bin/quiesce-sidecar",
                "drain",
                "--socket",
                "/run/quiesce/quiesce.sock",
                "--propagation-seconds",
                "7",
                "--timeout-seconds",
                "600",
                "--abort-grace-seconds",
                "3",
            ]
        );
    }

    #[test]
    fn a_users_post_start_hook_is_kept() {
        let (engine, _) = engine_of(
            "
template:
  spec:
    containers:
    - name: engine
      lifecycle:
        postStart: {exec: {command: [touch, /tmp/started]}}
",
        );
        let lifecycle = engine.lifecycle.unwrap();
        assert!(lifecycle.post_start.is_some());
        assert!(lifecycle.pre_stop.is_some());
    }

    #[test]
    fn the_socket_env_is_appended_to_the_users() {
        let (engine, conflicts) = engine_of(
            "
template:
  spec:
    containers:
    - name: engine
      env: [{name: HF_HOME, value: /models}]
",
        );
        let env = engine.env.unwrap();
        assert_eq!(env[0].name, "HF_HOME");
        assert_eq!(env[1].name, "QUIESCE_SOCKET");
        assert_eq!(env[1].value.as_deref(), Some("/run/quiesce/quiesce.sock"));
        assert!(conflicts.is_empty());
    }

    #[test]
    fn a_users_socket_env_is_kept() {
        let same = "
template:
  spec:
    containers:
    - name: engine
      env: [{name: QUIESCE_SOCKET, value: /run/quiesce/quiesce.sock}]
";
        let (engine, conflicts) = engine_of(same);
        assert_eq!(engine.env.unwrap().len(), 1, "no duplicate");
        assert!(conflicts.is_empty(), "the same value is no conflict");

        let other = same.replace("/run/quiesce/quiesce.sock", "/tmp/mine.sock");
        let (engine, conflicts) = engine_of(&other);
        let env = engine.env.unwrap();
        assert_eq!(env.len(), 1);
        assert_eq!(env[0].value.as_deref(), Some("/tmp/mine.sock"));
        assert_eq!(reasons(&conflicts), [SOCKET_ENV_KEPT]);
        assert_eq!(
            conflicts[0].field,
            "spec.template.spec.containers[0].env[0]"
        );

        let from_secret = "
template:
  spec:
    containers:
    - name: engine
      env: [{name: QUIESCE_SOCKET, valueFrom: {secretKeyRef: {name: s, key: k}}}]
";
        let (_, conflicts) = engine_of(from_secret);
        assert_eq!(reasons(&conflicts), [SOCKET_ENV_KEPT]);
    }

    #[test]
    fn the_engine_mounts_the_shared_volume_read_only() {
        let (engine, _) = engine_of(MINIMAL);
        let mounts = engine.volume_mounts.unwrap();
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].name, "quiesce");
        assert_eq!(mounts[0].mount_path, "/run/quiesce");
        assert_eq!(mounts[0].read_only, Some(true));
    }

    #[test]
    fn a_mount_inside_the_shared_path_is_a_conflict() {
        let (engine, conflicts) = engine_of(
            "
template:
  spec:
    containers:
    - name: engine
      volumeMounts:
      - {name: models, mountPath: /models}
      - {name: bin, mountPath: /run/quiesce/bin}
",
        );
        assert_eq!(engine.volume_mounts.unwrap().len(), 3);
        assert_eq!(reasons(&conflicts), [SHARED_MOUNT_SHADOWED]);
        assert_eq!(
            conflicts[0].field,
            "spec.template.spec.containers[0].volumeMounts[1].mountPath"
        );
    }

    #[test]
    fn probes_ask_the_sidecar() {
        let (engine, _) = engine_of(&format!("{MINIMAL}sidecar: {{port: 9191}}\n"));
        let readiness = engine.readiness_probe.unwrap();
        let get = readiness.http_get.clone().unwrap();
        assert_eq!(
            (get.path.as_deref(), get.port),
            (Some("/ready"), IntOrString::Int(9191))
        );
        assert_eq!(readiness.period_seconds, Some(1));
        assert_eq!(readiness.failure_threshold, Some(1));
        assert_eq!(readiness.success_threshold, Some(1));
        assert_eq!(readiness.timeout_seconds, Some(1));

        let liveness = engine.liveness_probe.unwrap();
        let get = liveness.http_get.clone().unwrap();
        assert_eq!(
            (get.path.as_deref(), get.port),
            (Some("/live"), IntOrString::Int(9191))
        );
        assert_eq!(liveness.period_seconds, Some(10));
        assert_eq!(liveness.failure_threshold, Some(3));
        assert_eq!(liveness.timeout_seconds, Some(2));

        let startup = engine.startup_probe.unwrap();
        let get = startup.http_get.clone().unwrap();
        assert_eq!(
            (get.path.as_deref(), get.port),
            (Some("/ready"), IntOrString::Int(9191))
        );
        assert_eq!(startup.period_seconds, Some(1));
        assert_eq!(startup.failure_threshold, Some(1800), "1800 s / 1 s");
    }

    #[test]
    fn the_startup_probe_covers_the_startup_timeout() {
        for (timeout, threshold) in [(10, 10), (11, 11), (600, 600), (7200, 7200)] {
            let engine = EngineSpec {
                startup_timeout_seconds: timeout,
                ..EngineSpec::default()
            };
            let threshold_seconds =
                startup_failure_threshold(&engine) * STARTUP_PROBE_PERIOD_SECONDS;
            assert_eq!(startup_failure_threshold(&engine), threshold, "{timeout}");
            assert_eq!(threshold_seconds, timeout);
        }
    }

    #[test]
    fn a_users_probes_are_kept_each_with_a_conflict() {
        let probes = [
            ("readinessProbe", ENGINE_READINESS_PROBE_KEPT),
            ("livenessProbe", ENGINE_LIVENESS_PROBE_KEPT),
            ("startupProbe", ENGINE_STARTUP_PROBE_KEPT),
        ];
        for (probe, reason) in probes {
            let (engine, conflicts) = engine_of(&format!(
                "
template:
  spec:
    containers:
    - name: engine
      {probe}: {{tcpSocket: {{port: 8000}}, periodSeconds: 42}}
"
            ));
            let kept = match probe {
                "readinessProbe" => engine.readiness_probe,
                "livenessProbe" => engine.liveness_probe,
                _ => engine.startup_probe,
            };
            assert_eq!(kept.unwrap().period_seconds, Some(42), "{probe} kept");
            assert_eq!(reasons(&conflicts), [reason]);
            assert_eq!(
                conflicts[0].field,
                format!("spec.template.spec.containers[0].{probe}")
            );
            assert!(conflicts[0].message.contains("was not installed"));
        }
    }

    #[test]
    fn the_engine_is_found_by_name_among_other_containers() {
        let (template, conflicts) = render_pod(
            "
engine: {containerName: server}
template:
  spec:
    containers:
    - name: proxy
      readinessProbe: {tcpSocket: {port: 15000}}
    - name: server
      readinessProbe: {tcpSocket: {port: 8000}}
",
        );
        let proxy = container(&template, "proxy");
        assert_eq!(proxy.lifecycle, None);
        assert_eq!(proxy.env, None);
        assert!(proxy.readiness_probe.as_ref().unwrap().tcp_socket.is_some());
        assert_eq!(
            conflicts[0].field,
            "spec.template.spec.containers[1].readinessProbe"
        );
        assert!(container(&template, "server").lifecycle.is_some());
    }

    #[test]
    fn vllm_gets_the_abort_grace_as_its_shutdown_timeout_and_load_tracking() {
        let (engine, conflicts) = engine_of(&vllm("      args: [--model=m]\n"));
        assert_eq!(
            engine.args.unwrap(),
            [
                "--model=m",
                "--shutdown-timeout=7",
                "--enable-server-load-tracking"
            ]
        );
        assert!(conflicts.is_empty());

        let (engine, _) = engine_of(&vllm(""));
        assert_eq!(
            engine.args.unwrap(),
            ["--shutdown-timeout=7", "--enable-server-load-tracking"]
        );
        let (engine, _) = engine_of(&vllm("      args: [--enable-server-load-tracking]\n"));
        assert_eq!(
            engine.args.unwrap(),
            ["--enable-server-load-tracking", "--shutdown-timeout=7"],
            "given once, not twice"
        );
    }

    #[test]
    fn engine_flags_that_blind_the_sidecar_are_warned_about() {
        let (engine, conflicts) =
            engine_of(&vllm("      args: [--model=m, --disable-log-stats]\n"));
        assert_eq!(reasons(&conflicts), [ENGINE_LOG_STATS_DISABLED]);
        assert_eq!(conflicts[0].field, "spec.template.spec.containers[0].args");
        assert!(
            conflicts[0].message.contains("every drain waits"),
            "{}",
            conflicts[0]
        );
        assert!(
            engine
                .args
                .unwrap()
                .contains(&"--disable-log-stats".to_owned()),
            "kept"
        );

        let sglang = |args: &str| {
            format!(
                "engine: {{adapter: sglang}}\ntemplate:\n  spec:\n    containers:\n    - name: engine\n      image: lmsysorg/sglang:v0.5.5\n{args}"
            )
        };
        let (engine, conflicts) = engine_of(&sglang("      args: [--model-path=m]\n"));
        assert_eq!(reasons(&conflicts), [ENGINE_METRICS_DISABLED]);
        assert!(
            conflicts[0].message.contains("--enable-metrics"),
            "{}",
            conflicts[0]
        );
        let env = engine.env.unwrap();
        let health = env
            .iter()
            .find(|v| v.name == SGLANG_HEALTH_GENERATION_ENV)
            .unwrap();
        assert_eq!(health.value.as_deref(), Some("false"));

        let (_, conflicts) = engine_of(&sglang("      args: [--model-path=m, --enable-metrics]\n"));
        assert!(conflicts.is_empty(), "{conflicts:?}");
        let (_, conflicts) = engine_of(&sglang(&format!(
            "      args: [--enable-metrics]\n      env: [{{name: {SGLANG_HEALTH_GENERATION_ENV}, value: 'true'}}]\n"
        )));
        assert_eq!(reasons(&conflicts), [HEALTH_GENERATION_KEPT]);
    }

    #[test]
    fn a_users_shutdown_timeout_is_kept() {
        for (container_yaml, place) in [
            ("      args: [--model=m, --shutdown-timeout=30]\n", "args"),
            ("      args: [--shutdown-timeout, '30']\n", "args"),
            (
                "      command: [vllm, serve, --shutdown-timeout=30]\n",
                "command",
            ),
        ] {
            let (engine, conflicts) = engine_of(&vllm(container_yaml));
            let words: Vec<String> = engine
                .command
                .into_iter()
                .chain(engine.args)
                .flatten()
                .collect();
            assert!(
                !words.contains(&"--shutdown-timeout=300".to_owned()),
                "{words:?}"
            );
            assert_eq!(reasons(&conflicts), [SHUTDOWN_TIMEOUT_KEPT]);
            assert_eq!(
                conflicts[0].field,
                format!("spec.template.spec.containers[0].{place}")
            );
        }
    }

    #[test]
    fn vllm_behind_a_shell_gets_no_flag_and_a_conflict() {
        let (engine, conflicts) =
            engine_of(&vllm("      command: [/bin/sh, -c, 'vllm serve m']\n"));
        assert_eq!(engine.args, None);
        assert_eq!(
            reasons(&conflicts),
            [SHUTDOWN_TIMEOUT_NOT_PASSED, LOAD_TRACKING_NOT_PASSED]
        );
        assert!(conflicts[0].message.contains("--shutdown-timeout=7"));
        assert!(
            conflicts[1]
                .message
                .contains("--enable-server-load-tracking")
        );
    }

    #[test]
    fn other_adapters_get_no_shutdown_flag() {
        for adapter in ["protocol", "sglang", "trtllm", "http"] {
            let (engine, _) = engine_of(&format!(
                "engine: {{adapter: {adapter}, healthPath: /health}}\n{MINIMAL}"
            ));
            assert_eq!(engine.args, None, "{adapter}");
        }
    }

    #[test]
    fn conflict_reasons_come_from_the_documented_list() {
        let (_, conflicts) = render_pod(&vllm(
            "      args: [--shutdown-timeout=1]
      env: [{name: QUIESCE_SOCKET, value: /x}]
      readinessProbe: {tcpSocket: {port: 1}}
      livenessProbe: {tcpSocket: {port: 1}}
      startupProbe: {tcpSocket: {port: 1}}
      volumeMounts: [{name: x, mountPath: /run/quiesce/x}]
",
        ));
        assert_eq!(conflicts.len(), 6, "{conflicts:#?}");
        for conflict in &conflicts {
            assert!(ALL_REASONS.contains(&conflict.reason), "{conflict}");
        }
    }
}
