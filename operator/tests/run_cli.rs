//! `quiesce-operator run` as a process, against a small fake API server on
//! the loopback interface: start-up, the admin endpoints, leader election on
//! a Lease, and the graceful shutdown on SIGTERM.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use nix::sys::signal::Signal;
use quiesce_testkit::hostile::assault;
use quiesce_testkit::http;
use quiesce_testkit::process::Process;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const LEASE_PATH: &str = "/apis/coordination.k8s.io/v1/namespaces/default/leases/quiesce-operator";

/// What the fake API server knows and saw.
#[derive(Default)]
struct Cluster {
    /// Whether the CRD is installed.
    crd: bool,
    /// The Lease, once created.
    lease: Option<Value>,
    /// `METHOD path?query` of every request.
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Cluster>>;

/// Lists are empty, watches stay open without events, the Lease is stored.
async fn api_server(
    State(cluster): State<Shared>,
    method: Method,
    uri: Uri,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    let query = uri.query().unwrap_or_default().to_owned();
    let mut cluster = cluster.lock().unwrap();
    cluster.requests.push(format!("{method} {path}?{query}"));
    if path.starts_with("/apis/coordination.k8s.io/") {
        return lease(&mut cluster, &method, &path, &body);
    }
    if path.contains("/inferencedeployments") && !cluster.crd {
        return status(
            404,
            "NotFound",
            "the server could not find the requested resource",
        );
    }
    if query.contains("watch=true") {
        // An open watch with no events.
        let stream = futures::stream::pending::<Result<Bytes, Infallible>>();
        return Response::new(Body::from_stream(stream));
    }
    let list = json!({"apiVersion": "v1", "kind": "List", "metadata": {"resourceVersion": "1"}, "items": []});
    axum::Json(list).into_response()
}

fn lease(cluster: &mut Cluster, method: &Method, path: &str, body: &[u8]) -> Response {
    let body: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    match (method.as_str(), cluster.lease.as_mut()) {
        ("GET", Some(lease)) if path == LEASE_PATH => axum::Json(lease.clone()).into_response(),
        ("GET", None) => status(404, "NotFound", "leases \"quiesce-operator\" not found"),
        ("POST", None) => {
            let mut lease = body;
            lease["metadata"]["resourceVersion"] = json!("1");
            lease["metadata"]["namespace"] = json!("default");
            cluster.lease = Some(lease.clone());
            (StatusCode::CREATED, axum::Json(lease)).into_response()
        }
        ("PATCH", Some(lease)) if path == LEASE_PATH => {
            // Good enough for apply and strategic merge patches of a flat
            // spec: set the given fields, remove the nulls.
            let spec = lease["spec"].as_object().cloned().unwrap_or_default();
            let mut spec: BTreeMap<String, Value> = spec.into_iter().collect();
            for (key, value) in body["spec"].as_object().cloned().unwrap_or_default() {
                if value.is_null() {
                    spec.remove(&key);
                } else {
                    spec.insert(key, value);
                }
            }
            lease["spec"] = json!(spec);
            axum::Json(lease.clone()).into_response()
        }
        _ => status(400, "BadRequest", "unexpected lease request"),
    }
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "message": message, "code": code});
    (StatusCode::from_u16(code).unwrap(), axum::Json(body)).into_response()
}

/// Starts the fake API server; returns its address.
async fn start_api_server(cluster: Shared) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let app = Router::new().fallback(api_server).with_state(cluster);
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

fn kubeconfig(test: &str, api: SocketAddr) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}-kubeconfig.yaml"));
    let text = format!(
        "apiVersion: v1
kind: Config
clusters: [{{name: fake, cluster: {{server: 'http://{api}'}}}}]
users: [{{name: fake, user: {{}}}}]
contexts: [{{name: fake, context: {{cluster: fake, user: fake, namespace: default}}}}]
current-context: fake
"
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

struct Operator {
    process: Process,
    admin: SocketAddr,
}

impl Operator {
    fn start(test: &str, api: SocketAddr, extra: &[&str]) -> Self {
        let admin = free_port();
        let process = Process::spawn(
            "quiesce-operator",
            Command::new(env!("CARGO_BIN_EXE_quiesce-operator"))
                .arg("run")
                .args(["--admin-listen", &admin.to_string()])
                .args(extra)
                .env("KUBECONFIG", kubeconfig(test, api))
                .env("POD_NAME", "operator-0")
                .env("RUST_LOG", "info")
                .env_remove("KUBERNETES_SERVICE_HOST"),
        )
        .unwrap();
        Self { process, admin }
    }

    fn log(&self) -> String {
        self.process.logs()
    }

    /// Polls `path` on the admin server until it answers 200 with a body
    /// that `accept`s.
    async fn until(&self, path: &str, accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(reply) = http::get(self.admin, path).await
                && reply.status == 200
                && accept(&reply.text())
            {
                return reply.text();
            }
            assert!(
                Instant::now() < deadline,
                "{path} never answered as expected:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn eventually(what: &str, operator: &Operator, check: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} never happened:\n{}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_the_controller_serves_admin_and_stops_on_sigterm() {
    let cluster = Shared::default();
    cluster.lock().unwrap().crd = true;
    let api = start_api_server(cluster.clone()).await;
    let mut operator = Operator::start("run-plain", api, &["--log-format", "json"]);

    operator.until("/readyz", |_| true).await;
    let healthz = operator.until("/healthz", |_| true).await;
    assert_eq!(healthz, "ok\n");
    // Without election this instance leads from the start.
    let metrics = operator
        .until("/metrics", |r| {
            r.lines().any(|l| l == "quiesce_operator_leader 1")
        })
        .await;
    assert!(metrics.contains("quiesce_operator_reconciles_total{result=\"applied\"} 0"));

    // The controller watches our objects only, by label.
    eventually("a labelled watch of Deployments", &operator, || {
        cluster.lock().unwrap().requests.iter().any(|r| {
            r.starts_with("GET /apis/apps/v1/deployments?")
                && r.contains("watch=true")
                && r.contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dquiesce-operator")
        })
    })
    .await;

    operator.process.signal(Signal::SIGTERM);
    let exit = operator.process.expect_exit(Duration::from_secs(15)).await;
    let log = operator.log();
    assert!(exit.success(), "{exit}:\n{log}");
    assert!(log.contains("\"message\":\"stopped\""), "{log}");
    assert!(
        log.lines().all(|line| line.starts_with('{')),
        "JSON logs:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leads_through_a_lease_and_releases_it_on_sigterm() {
    let cluster = Shared::default();
    cluster.lock().unwrap().crd = true;
    let api = start_api_server(cluster.clone()).await;
    let mut operator = Operator::start("run-leader", api, &["--leader-elect"]);

    operator.until("/readyz", |_| true).await;
    operator
        .until("/metrics", |r| {
            r.lines().any(|l| l == "quiesce_operator_leader 1")
        })
        .await;
    let holder = |cluster: &Shared| {
        let cluster = cluster.lock().unwrap();
        cluster
            .lease
            .as_ref()
            .map(|lease| lease["spec"]["holderIdentity"].clone())
    };
    assert_eq!(holder(&cluster), Some(json!("operator-0")));

    operator.process.signal(Signal::SIGTERM);
    let exit = operator.process.expect_exit(Duration::from_secs(15)).await;
    assert!(exit.success(), "{exit}:\n{}", operator.log());
    assert_eq!(
        holder(&cluster),
        Some(Value::Null),
        "the Lease is released for a standby to take over:\n{}",
        operator.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refuses_to_start_without_the_crd() {
    let cluster = Shared::default();
    let api = start_api_server(cluster).await;
    let mut operator = Operator::start("run-no-crd", api, &[]);
    let exit = operator.process.expect_exit(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(1));
    let log = operator.log();
    assert!(
        log.contains(
            "the InferenceDeployment CRD is not installed: kubectl apply --server-side -f crds/"
        ),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_server_stays_bounded_under_hostile_http() {
    let cluster = Shared::default();
    cluster.lock().unwrap().crd = true;
    let api = start_api_server(cluster).await;
    let operator = Operator::start("run-hostile", api, &[]);
    operator.until("/readyz", |_| true).await;
    let seen = assault(operator.process.pid(), operator.admin, "/healthz", 3000).await;
    eprintln!("the operator's admin server under hostile HTTP: {seen}");
    // Within the server's 256 connections, the chart's 256 MiB memory
    // limit, and the kubelet's 1 s probe timeout.
    assert!(seen.fds_max <= seen.fds_before + 256 + 8, "{seen}");
    assert!(seen.rss_max < 256 * 1024, "{seen}");
    assert!(seen.probe_max < Duration::from_secs(1), "{seen}");
    operator.until("/readyz", |_| true).await;
}

#[test]
fn run_lists_its_flags() {
    let output = Command::new(env!("CARGO_BIN_EXE_quiesce-operator"))
        .args(["run", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for flag in [
        "--namespace",
        "--sidecar-image",
        "--leader-elect",
        "--lease-name",
        "--lease-namespace",
        "--admin-listen",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} missing:\n{help}");
    }
}
