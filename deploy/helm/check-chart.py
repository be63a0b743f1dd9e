#!/usr/bin/env python3
"""Checks the Helm chart helm/posternity-dispatch against the dispatchd binary (`make helm-check`).

For the default values and every values file under the chart's ci/ folder it runs `helm lint`
and `helm template`, then checks the rendered manifests. The configuration each pod would run
with is not guessed: the rendered dispatchd.toml and the pod's environment (fieldRefs resolved
to a pod name, Secrets to placeholders) are handed to `dispatchd check-config`, and its answer
is what the probes, grace periods, autoscalers and the topics Job are compared with. Then it
renders values that the chart must refuse and checks that it does, naming the culprit.

Usage: check-chart.py --helm .cache/bin/helm --dispatchd target/debug/dispatchd CHART_DIR
"""

import argparse
import base64
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

RELEASE = "dispatch"
NAMESPACE = "dispatch"
# A helm built with `go install` lacks the ldflags that set its default Kubernetes version
# (it would claim 1.20, which the chart's kubeVersion refuses): name one explicitly.
KUBE_VERSION = "1.30.0"
ROLES = ("fanout", "sender", "api")
# The fan-out is a StatefulSet on purpose (stable pod names are its transactional ids).
ROLE_KINDS = {"fanout": "StatefulSet", "sender": "Deployment", "api": "Deployment"}

# Values the chart must refuse: (why, --set arguments, a part of the expected message).
REFUSED = [
    ("sender max above delivery partitions",
     ["sender.autoscaling.maxReplicas=25"], "sender.autoscaling.maxReplicas (25) exceeds"),
    ("fan-out max above domain partitions (KEDA)",
     ["autoscaling.keda.enabled=true", "fanout.autoscaling.maxReplicas=13"],
     "fanout.autoscaling.maxReplicas (13) exceeds"),
    ("static sender replicas above partitions",
     ["sender.autoscaling.enabled=false", "sender.replicas=30"], "sender.replicas (30) exceeds"),
    ("sender grace not beyond the drain deadline",
     ["sender.terminationGracePeriodSeconds=25"], "sender.terminationGracePeriodSeconds"),
    ("fan-out grace below the transaction timeout",
     ["fanout.terminationGracePeriodSeconds=30"], "fanout.terminationGracePeriodSeconds"),
    ("API grace not beyond the request timeout",
     ["api.terminationGracePeriodSeconds=30"], "api.terminationGracePeriodSeconds"),
    ("one transactional id for every fan-out pod",
     ["config.fanout.transactional_id=shared"], "config.fanout.transactional_id"),
    ("sender scaled to zero by KEDA",
     ["autoscaling.keda.enabled=true", "sender.autoscaling.minReplicas=0"],
     "sender.autoscaling.minReplicas must be at least 1"),
    ("KEDA with a domain topic pattern",
     ["autoscaling.keda.enabled=true", "config.fanout.domain_topic_pattern=^posternity"],
     "config.fanout.domain_topic_pattern"),
    ("an API without tokens",
     ["api.generateToken=false"], "no tokens"),
    ("tokens in the ConfigMap",
     ["config.api.tokens_file=/x"], "config.api.tokens"),
    ("a metrics listener the probes do not know",
     ["config.metrics.listen=127.0.0.1:9464"], "config.metrics.listen"),
]


class Check:
    """Collects the failures of one rendering."""

    def __init__(self, label):
        self.label = label
        self.failures = []
        self.passed = 0

    def expect(self, condition, message):
        if condition:
            self.passed += 1
        else:
            self.failures.append(message)
        return condition


def run(command, env=None):
    return subprocess.run(command, capture_output=True, text=True, env=env)


# --- dispatchd check-config: the configuration as the binary sees it -------------------------

TOKEN = re.compile(r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<punct>[{}\[\](),])|(?P<atom>[^\s{}\[\](),"]+))')


def rust_string(literal):
    body = literal[1:-1]
    body = re.sub(r"\\u\{([0-9a-fA-F]+)\}", lambda m: chr(int(m.group(1), 16)), body)
    escapes = {"n": "\n", "t": "\t", "r": "\r", "0": "\0", '"': '"', "'": "'", "\\": "\\"}
    return re.sub(r"\\(.)", lambda m: escapes.get(m.group(1), m.group(1)), body)


def parse_debug(text):
    """Parses Rust `{:#?}` output (structs, maps, lists, Some/None, tuple structs) into Python
    values; struct and tuple-struct names are dropped."""
    tokens = []
    position = 0
    while position < len(text):
        match = TOKEN.match(text, position)
        if not match or match.end() == position:
            if text[position:].strip() == "":
                break
            raise ValueError(f"cannot read check-config output at {text[position:position + 40]!r}")
        position = match.end()
        kind = match.lastgroup
        tokens.append((kind, match.group(kind)))
    index = 0

    def peek():
        return tokens[index] if index < len(tokens) else (None, None)

    def take():
        nonlocal index
        index += 1
        return tokens[index - 1]

    def skip_comma():
        if peek() == ("punct", ","):
            take()

    def value():
        kind, text = take()
        if kind == "str":
            return rust_string(text)
        if text == "[":
            items = []
            while peek() != ("punct", "]"):
                items.append(value())
                skip_comma()
            take()
            return items
        if text == "{":
            entries = {}
            while peek() != ("punct", "}"):
                key = value()
                take()  # the ":" between a map's key and value
                entries[key] = value()
                skip_comma()
            take()
            return entries
        if kind == "atom":
            following = peek()
            if following == ("punct", "{"):
                take()
                fields = {}
                while peek() != ("punct", "}"):
                    _, name = take()
                    fields[name.rstrip(":")] = value()
                    skip_comma()
                take()
                return fields
            if following == ("punct", "("):
                take()
                items = []
                while peek() != ("punct", ")"):
                    items.append(value())
                    skip_comma()
                take()
                return items[0] if len(items) == 1 else items
            if text == "None":
                return None
            if text in ("true", "false"):
                return text == "true"
            if re.fullmatch(r"-?\d+", text):
                return int(text)
            return text
        raise ValueError(f"unexpected {text!r} in check-config output")

    return value()


def effective_config(dispatchd, toml_text, env):
    """`dispatchd check-config` on the rendered file with exactly the pod's environment."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as file:
        file.write(toml_text)
        path = file.name
    try:
        result = run([dispatchd, "--config", path, "check-config"],
                     env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env})
    finally:
        os.unlink(path)
    if result.returncode != 0:
        return None, (result.stderr or result.stdout).strip()
    return parse_debug(result.stdout), None


def resolve_env(container, pod_name):
    """The container's environment as the kubelet would set it: fieldRefs, `$(VAR)` references
    to earlier variables, Secrets as recognisable placeholders."""
    env = {}
    for entry in container.get("env") or []:
        name = entry["name"]
        if "value" in entry:
            env[name] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)),
                               str(entry["value"]))
        elif "fieldRef" in entry.get("valueFrom", {}):
            field = entry["valueFrom"]["fieldRef"]["fieldPath"]
            env[name] = {"metadata.name": pod_name, "metadata.namespace": NAMESPACE}.get(field, "x")
        elif "secretKeyRef" in entry.get("valueFrom", {}):
            ref = entry["valueFrom"]["secretKeyRef"]
            env[name] = f"secret-{ref['name']}-{ref['key']}"
        else:
            env[name] = "x"
    return env


# --- the checks -------------------------------------------------------------------------------

def expectations(values_file):
    """`# expect: Kind=N ...` lines of a ci values file."""
    wanted = {}
    if values_file:
        for line in Path(values_file).read_text().splitlines():
            if line.startswith("# expect:"):
                for pair in line.split(":", 1)[1].split():
                    kind, count = pair.split("=")
                    wanted[kind] = int(count)
    return wanted


def port_of(container, port):
    if isinstance(port, int):
        return port
    return next((p["containerPort"] for p in container.get("ports", []) if p.get("name") == port), None)


def matches(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def listen_port(address):
    return int(str(address).rsplit(":", 1)[1])


def normalize_servers(servers):
    return ",".join(part.strip() for part in str(servers).split(","))


def check_rendering(check, docs, dispatchd, wanted):
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], []).append(doc)
    config_maps = {d["metadata"]["name"]: d for d in by_kind.get("ConfigMap", [])}

    def component(doc):
        return doc["metadata"].get("labels", {}).get("app.kubernetes.io/component")

    def config_text(pod_spec, container):
        args = container.get("args", [])
        if not check.expect("--config" in args, f"{container['name']}: no --config argument"):
            return None
        path = args[args.index("--config") + 1]
        directory, file_name = path.rsplit("/", 1)
        mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == directory), None)
        volume = mount and next((v for v in pod_spec.get("volumes", []) if v["name"] == mount["name"]), None)
        config_map = volume and config_maps.get(volume.get("configMap", {}).get("name"))
        if not check.expect(config_map and file_name in config_map["data"],
                            f"{container['name']}: {path} is not a mounted ConfigMap key"):
            return None
        return config_map["data"][file_name]

    for kind, count in wanted.items():
        check.expect(len(by_kind.get(kind, [])) == count,
                     f"expected {count} {kind}, rendered {len(by_kind.get(kind, []))}")

    # Every role, as the binary sees its configuration.
    workloads, effective = {}, {}
    for role in ROLES:
        found = [d for d in by_kind.get(ROLE_KINDS[role], []) if component(d) == role]
        if not check.expect(len(found) == 1, f"{role}: expected one {ROLE_KINDS[role]}, found {len(found)}"):
            continue
        workload = workloads[role] = found[0]
        pod = workload["spec"]["template"]
        spec = pod["spec"]
        container = spec["containers"][0]
        name = workload["metadata"]["name"]
        check.expect(container.get("args", [])[-1:] == [role], f"{role}: container does not run `{role}`")
        check.expect(matches(workload["spec"]["selector"]["matchLabels"], pod["metadata"]["labels"]),
                     f"{role}: selector does not match its pod labels")
        text = config_text(spec, container)
        if text is None:
            continue
        config, error = effective_config(dispatchd, text, resolve_env(container, f"{name}-0"))
        if not check.expect(config is not None, f"{role}: dispatchd check-config refused: {error}"):
            continue
        effective[role] = config

        # Secrets passed as librdkafka settings reach the binary next to the file's settings.
        from_file = tomllib.loads(text).get("kafka", {}).get("librdkafka", {})
        secret_vars = [e for e in container.get("env", []) if e["name"].startswith("KAFKA_SECRET_")]
        librdkafka = config["kafka"]["librdkafka"]
        check.expect(set(from_file) <= set(librdkafka) and len(set(librdkafka) - set(from_file)) == len(secret_vars),
                     f"{role}: librdkafka settings {sorted(librdkafka)} are not the file's {sorted(from_file)} plus {len(secret_vars)} from Secrets")

        metrics_port = listen_port(config["metrics"]["listen"])
        check.expect(not str(config["metrics"]["listen"]).startswith("127."),
                     f"{role}: metrics.listen {config['metrics']['listen']} is loopback: unreachable for probes")
        for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
            http = container.get(probe, {}).get("httpGet", {})
            check.expect(http.get("path") == path, f"{role}: {probe} is not GET {path}")
            check.expect(port_of(container, http.get("port")) == metrics_port,
                         f"{role}: {probe} port is not metrics.listen's {metrics_port}")

        grace_ms = int(spec.get("terminationGracePeriodSeconds", 30)) * 1000
        if role == "sender":
            check.expect(grace_ms > config["sender"]["drain_timeout_ms"],
                         f"sender: grace {grace_ms} ms does not exceed drain_timeout_ms {config['sender']['drain_timeout_ms']}")
        if role == "fanout":
            check.expect(grace_ms >= config["fanout"]["transaction_timeout_ms"],
                         f"fanout: grace {grace_ms} ms below transaction_timeout_ms")
            other, _ = effective_config(dispatchd, text, resolve_env(container, f"{name}-1"))
            ids = (config["fanout"]["transactional_id"], other and other["fanout"]["transactional_id"])
            check.expect(ids[0] and f"{name}-0" in ids[0] and ids[0] != ids[1],
                         f"fanout: transactional ids {ids} are not per pod")
        if role == "api":
            check.expect(grace_ms > config["api"]["request_timeout_ms"], "api: grace not beyond request_timeout_ms")
            api_port = listen_port(config["api"]["listen"])
            check.expect(port_of(container, "http") == api_port, f"api: containerPort http is not {api_port}")
            check_tokens(check, by_kind, spec, container, config["api"]["tokens_file"])

        security = container.get("securityContext", {})
        check.expect(spec.get("securityContext", {}).get("runAsNonRoot") or security.get("runAsNonRoot"),
                     f"{role}: not runAsNonRoot")
        check.expect(security.get("readOnlyRootFilesystem") is True, f"{role}: root filesystem writable")
        check.expect(security.get("allowPrivilegeEscalation") is False, f"{role}: privilege escalation allowed")
        check.expect(container.get("resources", {}).get("requests"), f"{role}: no resource requests")

    # One layout for every process: the roles and the Job must agree on everything that names or
    # sizes a topic or a group, or the Job creates topics the roles do not look for.
    def layout(config):
        return {
            "kafka": {k: config["kafka"][k] for k in ("bootstrap_servers", "topic_prefix")},
            "topics": config["topics"],
            "retry": config["retry"]["delays"],
            "fanout": {k: config["fanout"][k] for k in ("group_id", "domain_topics", "domain_topic_pattern")},
            "sender": config["sender"]["group_id"],
        }

    jobs = [j for j in by_kind.get("Job", []) if "topics" in j["spec"]["template"]["spec"]["containers"][0].get("args", [])]
    if check.expect(len(jobs) == 1, f"expected one `topics ensure` Job, found {len(jobs)}"):
        job = jobs[0]
        hooks = job["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(",")
        check.expect({"pre-install", "pre-upgrade"} <= set(hooks), f"topics Job hooks are {hooks}")
        job_spec = job["spec"]["template"]["spec"]
        job_container = job_spec["containers"][0]
        check.expect(job_container["args"][-2:] == ["topics", "ensure"] or job_container["args"][-3:-1] == ["topics", "ensure"],
                     f"topics Job args {job_container['args']}")
        text = config_text(job_spec, job_container)
        mount = next(m for m in job_container["volumeMounts"] if m["name"] == "config")
        job_map = next(v for v in job_spec["volumes"] if v["name"] == mount["name"])["configMap"]["name"]
        annotations = config_maps.get(job_map, {}).get("metadata", {}).get("annotations", {})
        check.expect("pre-install" in annotations.get("helm.sh/hook", "")
                     and int(annotations.get("helm.sh/hook-weight", "0")) < int(job["metadata"]["annotations"].get("helm.sh/hook-weight", "0")),
                     "the Job's ConfigMap is not a hook created before the Job (hooks run before the release's objects exist)")
        if text is not None:
            job_config, error = effective_config(dispatchd, text, resolve_env(job_container, "topics"))
            if check.expect(job_config is not None, f"topics Job: check-config refused: {error}"):
                for role, config in effective.items():
                    check.expect(layout(config) == layout(job_config),
                                 f"{role}: topic layout differs from the topics Job's: {layout(config)} vs {layout(job_config)}")

    # Autoscaling: lag triggers exactly on what the roles consume, bounded by the partitions.
    scaled = {d["spec"]["scaleTargetRef"]["name"]: d for d in by_kind.get("ScaledObject", [])}
    hpas = {d["spec"]["scaleTargetRef"]["name"]: d for d in by_kind.get("HorizontalPodAutoscaler", [])}
    for role in ("fanout", "sender"):
        if role not in workloads or role not in effective:
            continue
        config, workload = effective[role], workloads[role]
        name = workload["metadata"]["name"]
        prefix = config["kafka"]["topic_prefix"]
        partitions = config["topics"]["domain_partitions" if role == "fanout" else "delivery_partitions"]
        if role == "fanout":
            group = config["fanout"]["group_id"]
            topics = {prefix + t for t in config["fanout"]["domain_topics"]}
        else:
            group = config["sender"]["group_id"]
            topics = {prefix + "dispatch.deliveries"} | {f"{prefix}dispatch.deliveries.{lane}" for lane in config["topics"]["lanes"]}
        check.expect(not (name in scaled and name in hpas), f"{role}: both a ScaledObject and an HPA")
        if name in scaled or name in hpas:
            check.expect("replicas" not in workload["spec"], f"{role}: autoscaled but spec.replicas is set (upgrades would reset it)")
        if name in scaled:
            so = scaled[name]["spec"]
            check.expect(so["scaleTargetRef"].get("kind") == workload["kind"], f"{role}: ScaledObject targets kind {so['scaleTargetRef'].get('kind')}")
            triggers = so["triggers"]
            check.expect(all(t["type"] == "kafka" for t in triggers), f"{role}: non-kafka trigger")
            trigger_topics = {t["metadata"]["topic"] for t in triggers}
            check.expect(trigger_topics == topics, f"{role}: trigger topics {sorted(trigger_topics)} != consumed {sorted(topics)}")
            check.expect(not any(".dispatch.retry." in "." + t for t in trigger_topics),
                         f"{role}: a retry tier is a trigger (its lag is expected)")
            for trigger in triggers:
                meta = trigger["metadata"]
                check.expect(meta["consumerGroup"] == group, f"{role}: trigger group {meta['consumerGroup']} != {group}")
                check.expect(normalize_servers(meta["bootstrapServers"]) == normalize_servers(config["kafka"]["bootstrap_servers"]),
                             f"{role}: trigger brokers {meta['bootstrapServers']} != {config['kafka']['bootstrap_servers']}")
                check.expect(meta.get("allowIdleConsumers") == "false", f"{role}: idle consumers allowed")
                check.expect(all(isinstance(v, str) for v in meta.values()), f"{role}: trigger metadata values must be strings")
            check.expect(so["maxReplicaCount"] <= partitions, f"{role}: maxReplicaCount {so['maxReplicaCount']} > {partitions} partitions")
            if role == "sender":
                check.expect(so["minReplicaCount"] >= 1, "sender: can scale to zero (retry tiers would never be read)")
        elif name in hpas:
            check.expect(hpas[name]["spec"]["maxReplicas"] <= partitions,
                         f"{role}: HPA maxReplicas {hpas[name]['spec']['maxReplicas']} > {partitions} partitions")
        else:
            check.expect(workload["spec"].get("replicas", 1) <= partitions,
                         f"{role}: replicas {workload['spec'].get('replicas')} > {partitions} partitions")

    # Services, disruption budgets and the ServiceMonitor reach the pods they are meant for.
    pods = {role: w["spec"]["template"]["metadata"]["labels"] for role, w in workloads.items()}
    services = by_kind.get("Service", [])
    api_services = [s for s in services if component(s) == "api" and s["spec"].get("clusterIP") != "None"]
    if check.expect(len(api_services) == 1, "no API Service") and "api" in pods:
        check.expect(matches(api_services[0]["spec"]["selector"], pods["api"]), "API Service selects no API pod")
        check.expect(api_services[0]["spec"]["ports"][0]["targetPort"] == "http", "API Service does not target the http port")
    metrics_services = [s for s in services if s["metadata"]["labels"].get("posternity.io/metrics") == "true"]
    for role, labels in pods.items():
        check.expect(any(matches(s["spec"]["selector"], labels) for s in metrics_services), f"{role}: no metrics Service")
    if "fanout" in workloads:
        check.expect(any(s["metadata"]["name"] == workloads["fanout"]["spec"]["serviceName"] for s in services),
                     "fanout: the StatefulSet's serviceName is not rendered")
    for pdb in by_kind.get("PodDisruptionBudget", []):
        check.expect(any(matches(pdb["spec"]["selector"]["matchLabels"], labels) for labels in pods.values()),
                     f"PodDisruptionBudget {pdb['metadata']['name']} selects no pod")
    for monitor in by_kind.get("ServiceMonitor", []):
        selected = [s for s in services if matches(monitor["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
        check.expect(len(selected) == 3, f"ServiceMonitor selects {len(selected)} Services, not the three metrics Services")
        check.expect(monitor["spec"]["endpoints"][0]["port"] == "metrics", "ServiceMonitor port is not `metrics`")


def check_tokens(check, by_kind, spec, container, tokens_file):
    directory, file_name = tokens_file.rsplit("/", 1)
    mount = next((m for m in container.get("volumeMounts", []) if m["mountPath"] == directory), None)
    volume = mount and next((v for v in spec.get("volumes", []) if v["name"] == mount["name"]), None)
    secret = volume and volume.get("secret")
    if not check.expect(secret and any(i["path"] == file_name for i in secret.get("items", [])),
                        f"api: tokens_file {tokens_file} is not a mounted Secret key"):
        return
    key = next(i["key"] for i in secret["items"] if i["path"] == file_name)
    rendered = [s for s in by_kind.get("Secret", []) if s["metadata"]["name"] == secret["secretName"]]
    if rendered:  # not rendered: an existing Secret managed outside the chart
        text = base64.b64decode(rendered[0]["data"][key]).decode()
        tokens = json.loads(text) if file_name.endswith(".json") else tomllib.loads(text)
        check.expect(tokens.get("tokens") and all(t.get("token") for t in tokens["tokens"]),
                     "api: the tokens Secret holds no usable token")


def summary(docs):
    """kind: names, in a stable order."""
    names = {}
    for doc in docs:
        names.setdefault(doc["kind"], []).append(doc["metadata"]["name"])
    return "\n".join(f"    {kind} ({len(n)}): {', '.join(sorted(n))}" for kind, n in sorted(names.items()))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--helm", required=True)
    parser.add_argument("--dispatchd", required=True)
    parser.add_argument("chart")
    args = parser.parse_args()
    chart = Path(args.chart)
    values_files = [None] + sorted(str(p) for p in (chart / "ci").glob("*.yaml"))
    failed = False

    for values_file in values_files:
        label = values_file or "default values"
        extra = ["-f", values_file] if values_file else []
        lint = run([args.helm, "lint", str(chart), "--strict", "--kube-version", KUBE_VERSION, *extra])
        lint_line = next((l for l in lint.stdout.splitlines() if "chart(s) linted" in l), lint.stdout.strip())
        print(f"== {label}\n  helm lint --strict: {'ok' if lint.returncode == 0 else 'FAILED'} ({lint_line})")
        if lint.returncode != 0:
            print(lint.stdout + lint.stderr)
            failed = True
            continue
        rendered = run([args.helm, "template", RELEASE, str(chart), "-n", NAMESPACE,
                        "--kube-version", KUBE_VERSION, *extra])
        if rendered.returncode != 0:
            print(f"  helm template: FAILED\n{rendered.stderr}")
            failed = True
            continue
        docs = [d for d in yaml.safe_load_all(rendered.stdout) if d]
        print(f"  helm template: {len(docs)} objects\n{summary(docs)}")
        check = Check(label)
        check_rendering(check, docs, args.dispatchd, expectations(values_file))
        print(f"  checks: {check.passed} passed, {len(check.failures)} failed")
        for failure in check.failures:
            print(f"    FAIL {failure}")
        failed |= bool(check.failures)

    print("== values the chart must refuse")
    for why, sets, message in REFUSED:
        result = run([args.helm, "template", RELEASE, str(chart), "-n", NAMESPACE,
                      "--kube-version", KUBE_VERSION, *[a for s in sets for a in ("--set", s)]])
        refused = result.returncode != 0 and message in result.stderr
        print(f"  {'refused' if refused else 'FAIL not refused'}: {why} ({' '.join(sets)})")
        if not refused:
            print("    " + (result.stderr.strip() or "rendered without error"))
            failed = True

    print("helm-check: " + ("FAILED" if failed else "passed"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
