#!/usr/bin/env bash
# Checks the Helm chart charts/quiesce with the real Helm engine, offline:
#
#   - the chart's copy of the CRD is byte-identical to crds/;
#   - `helm lint --strict` passes (Kubernetes 1.29 and 1.33);
#   - the chart renders with several value sets, each with the objects,
#     flags and RBAC rules it should have (the operator's flags are checked
#     against `quiesce-operator run --help`, the rules against
#     docs/operator.md);
#   - bad values are refused, by the schema or the templates, with a message
#     that names the value;
#   - every rendered manifest, the CRD and the objects the operator renders
#     for each file in examples/ validate strictly against the Kubernetes
#     1.29 and 1.33 schemas.
#
# It needs python3 (3.10 or newer) and PyPI, nothing else: Helm comes from
# helm-python-sdk (a binding to libhelm_c, Helm's Go SDK as a C library) and
# the schemas from kubernetes-validate, both pinned in
# hack/requirements-chart.txt and installed into a virtualenv
# (CHART_VENV, default .venv-chart in the repository root; reused while the
# requirements are unchanged).
#
# The operator binary: $QUIESCE_OPERATOR if set, else target/debug/quiesce-operator
# if built, else `cargo run -q -p quiesce-operator --`.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

fail() { echo "check-chart: $*" >&2; exit 1; }

venv=${CHART_VENV:-$repo/.venv-chart}
requirements=hack/requirements-chart.txt
python=${PYTHON:-python3}
command -v "$python" >/dev/null || fail "$python not found: install Python 3.10 or newer (apt-get install python3)"

# --- the virtualenv -----------------------------------------------------------
stamp="$venv/.requirements-chart.sha256"
wanted=$(sha256sum "$requirements" | cut -d' ' -f1)
if [[ ! -x "$venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$wanted" ]]; then
    echo "check-chart: installing $requirements into $venv"
    rm -rf "$venv"
    if "$python" -m venv "$venv" 2>/dev/null; then
        pip=("$venv/bin/python" -m pip)
    else
        # Debian's python3 has no ensurepip without python3-venv: make the
        # environment without pip and install into it with the system's pip
        # (pip >= 22.3 has --python).
        rm -rf "$venv"
        "$python" -m venv --without-pip "$venv" ||
            fail "cannot create a virtualenv in $venv: apt-get install python3-venv"
        "$python" -m pip --version >/dev/null 2>&1 ||
            fail "no pip: apt-get install python3-venv (or python3-pip)"
        pip=("$python" -m pip --python "$venv/bin/python")
    fi
    "${pip[@]}" install --quiet --disable-pip-version-check --no-input \
        -r "$requirements" || fail "pip install -r $requirements failed (see above)"
    echo "$wanted" >"$stamp"
fi

# --- the operator binary --------------------------------------------------------
if [[ -n "${QUIESCE_OPERATOR:-}" ]]; then
    operator=("$QUIESCE_OPERATOR")
elif [[ -x target/debug/quiesce-operator ]]; then
    operator=("$repo/target/debug/quiesce-operator")
else
    operator=(cargo run -q -p quiesce-operator --)
fi
export QUIESCE_OPERATOR_CMD
QUIESCE_OPERATOR_CMD=$(printf '%q ' "${operator[@]}")

exec "$venv/bin/python" - "$repo" <<'PY'
"""The checks; see the top of hack/check-chart.sh."""
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time

import helm_python as helm
import kubernetes_validate
import yaml

REPO = sys.argv[1]
CHART = os.path.join(REPO, "charts/quiesce")
CRD = "crds/inferencedeployments.quiesce.dev.yaml"
CHART_CRD = "charts/quiesce/" + CRD
RELEASE, NAMESPACE = "quiesce", "quiesce-system"
KUBE_VERSIONS = ["1.29", "1.33"]
# Custom resources of other projects: kubernetes-validate has no schema.
NOT_VALIDATED = {("monitoring.coreos.com/v1", "ServiceMonitor"):
                 "a Prometheus Operator CRD, not a Kubernetes API"}
Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
OPERATOR = shlex.split(os.environ["QUIESCE_OPERATOR_CMD"])

started = time.monotonic()
passed = []
failures = []
skipped = []


def ok(what):
    passed.append(what)


def problem(what):
    failures.append(what)


def run_operator(*args):
    result = subprocess.run(OPERATOR + list(args), cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(OPERATOR + list(args))}` exited {result.returncode}: "
                           f"{result.stderr.strip()}")
    return result.stdout


def name_of(obj):
    ns = obj.get("metadata", {}).get("namespace")
    name = obj.get("metadata", {}).get("name")
    return f"{obj.get('kind')} {ns + '/' if ns else ''}{name}"


def validate(obj, source):
    """Strict validation against every Kubernetes version we support: True
    when valid, False when not (reported), None when skipped."""
    key = (obj.get("apiVersion"), obj.get("kind"))
    if key in NOT_VALIDATED:
        skipped.append(f"{source}: {name_of(obj)} not validated: {NOT_VALIDATED[key]}")
        return None
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            problem(f"{source}: {name_of(obj)} is invalid for Kubernetes {version} at "
                    f"{path or '(root)'}: {e.message}")
            return False
        except kubernetes_validate.SchemaNotFoundError as e:
            problem(f"{source}: {name_of(obj)}: {e.message} (add it to NOT_VALIDATED in "
                    "hack/check-chart.sh only if it is not a Kubernetes API)")
            return False
    return True


def validate_all(objects, source):
    results = [validate(obj, source) for obj in objects]
    valid = results.count(True)
    if False not in results and valid:
        ok(f"{source}: {valid} manifest(s) valid (strict) for Kubernetes {', '.join(KUBE_VERSIONS)}")


# --- 1. the CRD copy -----------------------------------------------------------
with open(os.path.join(REPO, CRD), "rb") as f:
    crd_bytes = f.read()
try:
    with open(os.path.join(REPO, CHART_CRD), "rb") as f:
        chart_crd_bytes = f.read()
except FileNotFoundError:
    chart_crd_bytes = None
if chart_crd_bytes != crd_bytes:
    problem(f"{CHART_CRD} {'is missing' if chart_crd_bytes is None else 'differs from ' + CRD}: "
            f"cp {CRD} {CHART_CRD}")
else:
    ok(f"{CHART_CRD} is identical to {CRD}")
extra = sorted(set(os.listdir(os.path.join(CHART, "crds"))) - {os.path.basename(CRD)})
if extra:
    problem(f"charts/quiesce/crds/ holds files that crds/ does not generate: {extra}")

# --- 2. lint -----------------------------------------------------------------------
for version in KUBE_VERSIONS:
    report = helm.lint(CHART, strict=True, namespace=NAMESPACE, kube_version=f"v{version}.0")
    findings = [m for m in report["messages"] if m["severity"] >= 2] + \
        [{"path": "", "error": e} for e in report["errors"]]
    for m in findings:
        problem(f"helm lint --strict (Kubernetes {version}): {m['path']}: {m['error']}")
    if not findings:
        infos = "; ".join(m["error"] for m in report["messages"])
        ok(f"helm lint --strict (Kubernetes {version})" + (f" [info: {infos}]" if infos else ""))

# --- 3. the operator's flags and RBAC rules, from their sources --------------------
try:
    help_text = run_operator("run", "--help")
except (RuntimeError, OSError) as e:
    sys.exit(f"check-chart: cannot run the operator for its flags: {e}")
known_flags = set(re.findall(r"(--[a-z][a-z-]+)", help_text))

# The first ```yaml block under "## RBAC" of docs/operator.md: its ClusterRole
# and its (Lease) Role are the rules the chart must grant, no more, no less.
try:
    with open(os.path.join(REPO, "docs/operator.md")) as f:
        doc = f.read()
    rbac_section = doc.split("\n## RBAC", 1)[1]
    rbac_yaml = rbac_section.split("```yaml", 1)[1].split("```", 1)[0]
    doc_objects = [o for o in yaml.load_all(rbac_yaml, Loader=Loader) if o]
    doc_rules = {o["kind"]: o["rules"] for o in doc_objects if o["kind"] in ("ClusterRole", "Role")}
    assert set(doc_rules) == {"ClusterRole", "Role"}
except (IndexError, AssertionError, KeyError, yaml.YAMLError) as e:
    sys.exit("check-chart: cannot read the RBAC rules from docs/operator.md: expected a ```yaml "
             f"block with a ClusterRole and a Role under '## RBAC' ({e!r})")
DOC_LEASE_NAME = "quiesce-operator"


def normalise(rules, lease_name=None):
    out = []
    for rule in rules:
        rule = dict(rule)
        if lease_name and rule.get("resourceNames") == [lease_name]:
            rule["resourceNames"] = ["LEASE"]
        out.append({k: sorted(v) for k, v in rule.items()})
    return sorted(out, key=repr)


def rules_diff(rendered, documented):
    """'' when equal, else the rules only one side has."""
    extra = [r for r in rendered if r not in documented]
    missing = [r for r in documented if r not in rendered]
    if not extra and not missing:
        return ""
    return f" (the chart's extra rules: {extra}; docs/operator.md's missing ones: {missing})"


# --- 4. rendering --------------------------------------------------------------------
def render(chart, values, namespace=NAMESPACE):
    manifests = chart.render(values, name=RELEASE, namespace=namespace, is_install=True)
    objects, notes = [], None
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for obj in yaml.load_all(text, Loader=Loader):
            if obj:
                objects.append(obj)
    return objects, notes


RESTRICTED = {
    "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
    "runAsNonRoot": True, "runAsUser": 65532, "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
LABELS = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/version",
          "app.kubernetes.io/component", "app.kubernetes.io/part-of",
          "app.kubernetes.io/managed-by", "helm.sh/chart"]


def check_common(case, objects, notes):
    """What holds for every value set."""
    kinds = [o["kind"] for o in objects]
    if not notes or "quiesce" not in notes:
        problem(f"{case}: NOTES.txt rendered empty")
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        missing = [l for l in LABELS if l not in labels]
        if missing:
            problem(f"{case}: {name_of(obj)} lacks the labels {missing}")
        if labels.get("app.kubernetes.io/managed-by") == "quiesce-operator":
            problem(f"{case}: {name_of(obj)} is labelled managed-by=quiesce-operator, "
                    "which the operator would take for one of its own objects")
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    if len(deployments) != 1:
        problem(f"{case}: expected one Deployment, got {kinds}")
        return None
    dep = deployments[0]
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    for flag in [a for a in args if a.startswith("--")]:
        if flag not in known_flags:
            problem(f"{case}: the Deployment passes {flag}, which `quiesce-operator run "
                    "--help` does not list")
    sc = container.get("securityContext", {})
    wrong = {k: sc.get(k) for k, v in RESTRICTED.items() if sc.get(k) != v}
    if wrong or pod.get("securityContext", {}).get("runAsNonRoot") is not True:
        problem(f"{case}: the operator container is not 'restricted': {wrong}")
    if pod.get("terminationGracePeriodSeconds", 30) < 30:
        problem(f"{case}: terminationGracePeriodSeconds < 30 (the operator needs 20 s + 5 s)")
    probes = (container.get("livenessProbe", {}).get("httpGet", {}).get("path"),
              container.get("readinessProbe", {}).get("httpGet", {}).get("path"))
    if probes != ("/healthz", "/readyz"):
        problem(f"{case}: probes are {probes}, expected /healthz and /readyz")
    env = {e["name"]: e for e in container.get("env", [])}
    if env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") != "metadata.name":
        problem(f"{case}: POD_NAME is not set from metadata.name")
    if pod.get("automountServiceAccountToken") is not True:
        problem(f"{case}: automountServiceAccountToken is not true")
    return dep


def flag_value(args, flag):
    return args[args.index(flag) + 1] if flag in args else None


def find(objects, kind, name=None):
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


CASES = {
    "defaults": {},
    "watchNamespace": {"watchNamespace": "ml"},
    "watchNamespace = release namespace": {"watchNamespace": NAMESPACE},
    "replicas 2 + leader election": {"replicas": 2, "leaderElection": {"enabled": True, "leaseName": "q-lease"}},
    "metrics service + serviceMonitor": {"metrics": {"service": {"enabled": True},
                                                     "serviceMonitor": {"enabled": True, "labels": {"release": "prom"},
                                                                        "scrapeTimeout": "10s"}}},
    "no leader election, no metrics Service": {"leaderElection": {"enabled": False}, "metrics": {"service": {"enabled": False}}},
    "existing ServiceAccount, no RBAC": {"serviceAccount": {"create": False, "name": "ops"}, "rbac": {"create": False}},
    "networkPolicy in two namespaces": {"networkPolicy": {"enabled": True, "namespaces": ["ml", "llm"], "sidecarFrom": [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}]}},
    "networkPolicy in watchNamespace, port 9191": {"watchNamespace": "ml", "networkPolicy": {"enabled": True, "sidecarPort": 9191}},
    "every option": {
        "image": {"tag": "dev", "pullPolicy": "Always", "digest": "sha256:" + "a" * 64},
        "sidecar": {"image": {"repository": "registry.local:5000/q/sidecar", "tag": "dev"}},
        "imagePullSecrets": [{"name": "regcred"}], "logFormat": "text", "logLevel": "debug",
        "adminPort": 9443, "podLabels": {"team": "ml"}, "podAnnotations": {"a": "b"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "quiesce"}}}],
        "priorityClassName": "system-cluster-critical", "terminationGracePeriodSeconds": 60,
        "extraEnv": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": 1, "memory": "512Mi"}},
        "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::1:role/q"}},
        "metrics": {"service": {"port": 9000, "annotations": {"prometheus.io/scrape": "true"}}},
        "fullnameOverride": "qop",
    },
}

# Bad values, and a piece of the message that must name what is wrong.
BAD = [
    ({"replicas": 0}, "/replicas"),
    ({"replicas": "2"}, "/replicas"),
    ({"replica": 2}, "'replica' not allowed"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"logFormat": "yaml"}, "/logFormat"),
    ({"watchNamespace": "Bad_Namespace"}, "/watchNamespace"),
    ({"terminationGracePeriodSeconds": 10}, "/terminationGracePeriodSeconds"),
    ({"adminPort": 80}, "/adminPort"),
    ({"leaderElection": {"enabled": "yes"}}, "/leaderElection/enabled"),
    ({"metrics": {"serviceMonitor": {"enabled": True, "interval": "thirty"}}}, "/metrics/serviceMonitor/interval"),
    ({"resources": {"limits": {"memory": "lots"}}}, "/resources/limits/memory"),
    ({"replicas": 2, "leaderElection": {"enabled": False}}, "Set leaderElection.enabled=true"),
    ({"metrics": {"service": {"enabled": False}, "serviceMonitor": {"enabled": True}}},
     "needs metrics.service.enabled"),
    ({"serviceAccount": {"create": False}}, "serviceAccount.name is required"),
    ({"networkPolicy": {"enabled": True}}, "networkPolicy.enabled needs networkPolicy.namespaces"),
    ({"networkPolicy": {"sidecarPort": 0}}, "/networkPolicy/sidecarPort"),
]

with helm.Chart.load(CHART) as chart:
    if [c["name"] for c in chart.crds] != [CRD]:
        problem(f"the chart's CRDs are {[c['name'] for c in chart.crds]}, expected [{CRD}]")

    for case, values in CASES.items():
        try:
            objects, notes = render(chart, values)
        except (helm.HelmError, yaml.YAMLError) as e:
            problem(f"render '{case}': {e}")
            continue
        lint = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version="v1.33.0")
        for m in [m for m in lint["messages"] if m["severity"] >= 2]:
            problem(f"helm lint '{case}': {m['path']}: {m['error']}")
        dep = check_common(case, objects, notes)
        if dep is None:
            continue
        args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
        kinds = sorted(o["kind"] for o in objects)
        merged = chart.merge_values(values)
        expect = []  # (condition, message)
        le = merged["leaderElection"]["enabled"]
        lease = flag_value(args, "--lease-name")
        expect.append((("--leader-elect" in args) == le, f"--leader-elect is {'missing' if le else 'passed'}"))
        if le:
            roles = find(objects, "Role", f"{dep['metadata']['name']}-leader-election")
            expect.append((flag_value(args, "--lease-namespace") == NAMESPACE, "--lease-namespace is not the release namespace"))
            if merged["rbac"]["create"]:
                expect.append((len(roles) == 1 and roles[0]["metadata"]["namespace"] == NAMESPACE,
                               "no leader-election Role in the release namespace"))
                if roles:
                    diff = rules_diff(normalise(roles[0]["rules"], lease), normalise(doc_rules["Role"], DOC_LEASE_NAME))
                    expect.append((not diff, f"the Lease Role's rules differ from docs/operator.md{diff}"))
            expect.append((dep["spec"]["strategy"]["type"] == "RollingUpdate", "strategy is not RollingUpdate"))
        else:
            expect.append((dep["spec"]["strategy"]["type"] == "Recreate", "without leader election the strategy must be Recreate"))
            expect.append((not any("leader-election" in o["metadata"]["name"] for o in objects), "a Lease Role without leader election"))
        watch = merged["watchNamespace"]
        expect.append((flag_value(args, "--namespace") == (watch or None), f"--namespace is {flag_value(args, '--namespace')}, expected {watch or 'none'}"))
        if merged["rbac"]["create"]:
            role_kind = "Role" if watch else "ClusterRole"
            other = "ClusterRole" if watch else None
            main = find(objects, role_kind, dep["metadata"]["name"])
            expect.append((len(main) == 1, f"no {role_kind} {dep['metadata']['name']}"))
            if main:
                expect.append((main[0]["metadata"].get("namespace") == (watch or None), f"the {role_kind} is in the wrong namespace"))
                diff = rules_diff(normalise(main[0]["rules"]), normalise(doc_rules["ClusterRole"]))
                expect.append((not diff, f"the {role_kind}'s rules differ from docs/operator.md{diff}"))
            binding = find(objects, role_kind + "Binding", dep["metadata"]["name"])
            expect.append((len(binding) == 1 and binding[0]["subjects"][0]["namespace"] == NAMESPACE,
                           f"no {role_kind}Binding to the release namespace's ServiceAccount"))
            if other:
                expect.append((not find(objects, other) and not find(objects, "ClusterRoleBinding"),
                               "cluster-wide RBAC with watchNamespace set"))
        else:
            expect.append((not [k for k in kinds if k in ("Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding")],
                           "RBAC objects with rbac.create=false"))
        sa = dep["spec"]["template"]["spec"]["serviceAccountName"]
        expect.append((bool(find(objects, "ServiceAccount", sa)) == merged["serviceAccount"]["create"],
                       f"ServiceAccount {sa} rendered: {bool(find(objects, 'ServiceAccount', sa))}"))
        replicas = merged["replicas"]
        pdb = find(objects, "PodDisruptionBudget")
        expect.append((bool(pdb) == (replicas > 1), f"PodDisruptionBudget with {replicas} replica(s): {bool(pdb)}"))
        svc = find(objects, "Service")
        expect.append((bool(svc) == merged["metrics"]["service"]["enabled"], "metrics Service presence"))
        sm = find(objects, "ServiceMonitor")
        expect.append((bool(sm) == merged["metrics"]["serviceMonitor"]["enabled"], "ServiceMonitor presence"))
        if svc and sm:
            sel = sm[0]["spec"]["selector"]["matchLabels"]
            expect.append((all(svc[0]["metadata"]["labels"].get(k) == v for k, v in sel.items()),
                           "the ServiceMonitor does not select the metrics Service"))
            expect.append((sm[0]["spec"]["endpoints"][0]["port"] == svc[0]["spec"]["ports"][0]["name"],
                           "the ServiceMonitor's port is not the Service's"))
        policies = find(objects, "NetworkPolicy")
        np = merged["networkPolicy"]
        if np["enabled"]:
            wanted = np["namespaces"] or [watch]
            expect.append((sorted(p["metadata"]["namespace"] for p in policies) == sorted(wanted),
                           f"NetworkPolicies in {[p['metadata']['namespace'] for p in policies]}, expected {wanted}"))
            sidecar_port = np["sidecarPort"]
            for policy in policies:
                guarded, rest = policy["spec"]["ingress"]
                peers = guarded["from"]
                expect.append((guarded["ports"] == [{"protocol": "TCP", "port": sidecar_port}]
                               and peers[0]["podSelector"]["matchLabels"] == dep["spec"]["selector"]["matchLabels"]
                               and peers[0]["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": NAMESPACE}
                               and peers[1:] == np["sidecarFrom"],
                               "the sidecar port is not limited to the operator's pods and sidecarFrom"))
                open_tcp = set()
                for r in rest["ports"]:
                    if r["protocol"] == "TCP":
                        open_tcp.update(range(r["port"], r["endPort"] + 1))
                expect.append((open_tcp == set(range(1, 65536)) - {sidecar_port} and "from" not in rest,
                               "every TCP port but the sidecar's is not open to all"))
        else:
            expect.append((not policies, "a NetworkPolicy with networkPolicy.enabled=false"))
        port = merged["adminPort"]
        expect.append((flag_value(args, "--admin-listen") == f"0.0.0.0:{port}"
                       and dep["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"] == port,
                       f"--admin-listen or the container port is not adminPort {port}"))
        image = dep["spec"]["template"]["spec"]["containers"][0]["image"]
        if not values.get("image"):
            expect.append((image == f"ghcr.io/quiesce-dev/quiesce-operator:{chart.metadata['appVersion']}",
                           f"default image is {image}"))
        for cond, message in expect:
            if not cond:
                problem(f"render '{case}': {message}")
        if all(c for c, _ in expect):
            ok(f"render '{case}': {', '.join(kinds)}")
        validate_all(objects, f"validate '{case}'")

    for values, needle in BAD:
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            problem(f"bad values {values} were accepted")
        except helm.HelmError as e:
            message = str(e)
            if needle not in message:
                problem(f"bad values {values} were refused, but the message does not say "
                        f"'{needle}': {message}")
            else:
                first = [l.strip() for l in message.splitlines() if needle in l][0]
                ok(f"refused {values}: {first}")

    # --- 5. every value is documented in docs/install.md ----------------------------
    try:
        with open(os.path.join(REPO, "docs/install.md")) as f:
            values_section = f.read().split("\n## Values", 1)[1].split("\n## ", 1)[0]
    except (OSError, IndexError):
        values_section = ""
    documented = re.findall(r"^\| `([^`]+)` \|", values_section, re.M)
    undocumented = []

    def walk(tree, prefix=""):
        for key, value in tree.items():
            path = prefix + key
            if path in documented:
                continue
            if isinstance(value, dict) and value:
                walk(value, path + ".")
            else:
                undocumented.append(path)

    walk(chart.values)
    stale = [d for d in documented if d.split(".")[0] not in chart.values]
    if not documented:
        problem("docs/install.md has no '## Values' table")
    elif undocumented or stale:
        problem(f"the values table of docs/install.md lacks {undocumented} and lists unknown {stale}")
    else:
        ok(f"docs/install.md documents every value ({len(documented)} rows)")

# --- 6. the packaged chart carries the CRD as a file ----------------------------------
with tempfile.TemporaryDirectory() as tmp:
    archive = helm.package(CHART, destination=tmp)
    with helm.Chart.load(archive) as packaged:
        crds = packaged.crds
        if len(crds) == 1 and crds[0]["data"].encode() == crd_bytes:
            ok(f"helm package: {os.path.basename(archive)} carries the CRD unchanged")
        else:
            problem("helm package: the archive's CRD differs from crds/")

# --- 7. the CRD and the operator's rendered examples -----------------------------------
crd = yaml.load(crd_bytes, Loader=Loader)
validate_all([crd], CRD)
examples = sorted(f for f in os.listdir(os.path.join(REPO, "examples")) if f.endswith((".yaml", ".yml")))
if not examples:
    problem("examples/ holds no YAML file")
for example in examples:
    source = f"render -f examples/{example}"
    try:
        out = run_operator("render", "-f", f"examples/{example}")
    except RuntimeError as e:
        problem(str(e))
        continue
    objects = [o for o in yaml.load_all(out, Loader=Loader) if o]
    if not objects:
        problem(f"{source} printed no object")
    validate_all(objects, source)

# --- summary ------------------------------------------------------------------------------
print(f"check-chart: Helm SDK {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), "
      f"kubernetes-validate {kubernetes_validate.__version__}, "
      f"operator `{' '.join(OPERATOR)}`")
for line in passed:
    print(f"  ok    {line}")
for line in skipped:
    print(f"  skip  {line}")
print(f"check-chart: {time.monotonic() - started:.1f}s")
if failures:
    print(f"check-chart: {len(failures)} problem(s):", file=sys.stderr)
    for line in failures:
        print(f"  FAIL  {line}", file=sys.stderr)
print(f"check-chart: {len(passed)} passed, {len(failures)} failed")
sys.exit(1 if failures else 0)
PY
