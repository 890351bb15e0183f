//! `quiesce-operator render`, `check` and `crd` as a user runs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use quiesce_api::crd;

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn operator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiesce-operator"))
        .args(args)
        .current_dir(repo_root())
        .env_remove("QUIESCE_SIDECAR_IMAGE")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// Writes `yaml` to a file of its own for one test.
fn manifest(test: &str, yaml: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{test}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

const DEMO: &str = "
apiVersion: quiesce.dev/v1alpha1
kind: InferenceDeployment
metadata:
  name: demo
spec:
  template:
    spec:
      containers:
      - name: engine
        image: engine:1
";

#[test]
fn render_prints_exactly_the_golden_objects() {
    let output = operator(&["render", "-f", "examples/minimal.yaml"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert_eq!(text(&output.stderr), "");
    let golden = std::fs::read_to_string(repo_root().join("api/tests/golden/minimal.yaml"));
    assert_eq!(text(&output.stdout), golden.unwrap());
}

#[test]
fn render_takes_the_sidecar_image_from_the_flag() {
    let output = operator(&[
        "render",
        "-f",
        "examples/minimal.yaml",
        "--sidecar-image",
        "registry.local/quiesce-sidecar:dev",
    ]);
    assert!(output.status.success());
    assert!(text(&output.stdout).contains("image: registry.local/quiesce-sidecar:dev\n"));
}

#[test]
fn render_warns_about_conflicts_on_stderr() {
    let yaml = format!("{DEMO}        readinessProbe: {{tcpSocket: {{port: 8000}}}}\n");
    let path = manifest("render_warns_about_conflicts_on_stderr", &yaml);
    let output = operator(&["render", "-f", path.to_str().unwrap()]);
    assert!(output.status.success());
    let stderr = text(&output.stderr);
    assert!(
        stderr.starts_with(
            "warning: spec.template.spec.containers[0].readinessProbe: the engine container has its own readinessProbe"
        ),
        "{stderr}"
    );
    assert!(
        stderr.trim_end().ends_with("(EngineReadinessProbeKept)"),
        "{stderr}"
    );
    assert!(text(&output.stdout).contains("tcpSocket"));
}

#[test]
fn render_refuses_an_invalid_resource() {
    let yaml = format!("{DEMO}  replicas: -1\n  drain: {{timeoutSeconds: 3600}}\n");
    let path = manifest("render_refuses_an_invalid_resource", &yaml);
    let output = operator(&["render", "-f", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(text(&output.stdout), "", "no half-rendered objects");
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("the InferenceDeployment is invalid:"),
        "{stderr}"
    );
    assert!(
        stderr.contains("  - spec.replicas: must be between 0 and 10000, got -1"),
        "{stderr}"
    );
    assert!(stderr.contains("  - spec.drain: "), "{stderr}");
}

#[test]
fn render_refuses_a_template_that_clashes_with_the_sidecar() {
    let yaml = format!("{DEMO}      - name: quiesce-sidecar\n        image: mine:1\n");
    let path = manifest("render_refuses_a_template_that_clashes", &yaml);
    let output = operator(&["render", "-f", path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(1));
    let stderr = text(&output.stderr);
    assert!(
        stderr.contains("spec.template.spec.containers[1].name"),
        "{stderr}"
    );
}

#[test]
fn render_reports_an_unreadable_file() {
    let output = operator(&["render", "-f", "examples/no-such-file.yaml"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(text(&output.stderr).contains("cannot read examples/no-such-file.yaml"));
}

#[test]
fn crd_and_check_still_work() {
    let output = operator(&["crd"]);
    assert!(output.status.success());
    assert_eq!(text(&output.stdout), crd::to_yaml());

    let output = operator(&["check", "-f", "examples/full.yaml"]);
    assert!(output.status.success(), "{}", text(&output.stderr));
    assert!(text(&output.stdout).contains("terminationGracePeriodSeconds: 210"));
}
