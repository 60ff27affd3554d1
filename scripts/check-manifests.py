#!/usr/bin/env python3
"""Assertions over the rendered Kubernetes manifests (issue 14), run by scripts/check-manifests.sh.

    check-manifests.py RENDERED_DIR DEFAULTS_TOML TOKENMETER

RENDERED_DIR holds one `<name>.yaml` per rendered kustomization (`base`, `overlays-<x>`,
`install-doc` (the overlay of docs/install.md on the local base), `gateway-example`);
DEFAULTS_TOML is `tokenmeter check-config` without a config (the binary's defaults, so the
default [fields] and limits.max_series are read from the program itself); TOKENMETER is the
binary that checks every TOML file of every rendered ConfigMap.

Checks, each failure named:
- custom resources with a CRD vendored in tests/fixtures/crds are valid against it, strictly
  (unknown fields rejected, as `kubectl apply --validate=strict` does);
- the install: Pod Security labels, no Secret and no priorityClassName in the base (the priority
  class only from its component), the pod security context (uid 0, every capability dropped, no
  privilege escalation, read-only root filesystem, seccomp RuntimeDefault, hostPaths read-only
  but the state's DirectoryOrCreate, no init container), rolling updates of 10%, tolerations
  (every taint, but only the gateway nodes' with components/gateway-nodes), memory
  request/limit against BENCHMARKS.md's measured peak for the default limits.max_series;
- the image: the base's placeholder `ghcr.io/your-org/tokenmeter` tagged with the newest
  release of CHANGELOG.md, replaced by the install doc's overlay;
- the config: the tenants required (no `${MIMIR_TENANT:-...}` default), the listen port the
  container port; every `--config` of the args is a file or directory of a mounted ConfigMap;
  the base config and the drop-ins in hashed ConfigMaps (a change rolls the pods), the price
  table `tokenmeter-prices` unhashed and mounted as a directory (a change reaches the running
  agents), no subPath mount; every TOML file of every ConfigMap passes `tokenmeter
  check-config` (a price file as `pricing.file`);
- the NetworkPolicy (components/network-policy): it selects the DaemonSet's pods, lets in
  only TCP 9464 (the container port) from the monitoring namespace, and lets out DNS and the
  namespaces of the example Secret's Mimir and Loki endpoints;
- the PodMonitor: the release label, only tokenmeter_* kept, instance = node name;
- the gateway example: the EnvoyProxy is attached to the Gateway and logs every key the default
  [fields] and the base config's extra tokens read; token keys are the AIGatewayRoute's
  llmRequestCosts keys; api_key_id is the SecurityPolicy's forwarded client id and
  aim_service_id the header every backendRef sets, both removed from client requests first.
"""
import glob
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from urllib.parse import urlparse

import jsonschema
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
    return cond


def load(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d]


def strict_schema(s):
    """A CRD's structural schema as JSON Schema that rejects unknown fields."""
    if isinstance(s, list):
        return [strict_schema(x) for x in s]
    if not isinstance(s, dict):
        return s
    out = {k: strict_schema(v) for k, v in s.items() if not k.startswith("x-kubernetes-")}
    if "properties" in s and "additionalProperties" not in s \
            and not s.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def vendored_crds():
    crds = {}
    for path in glob.glob(os.path.join(ROOT, "tests/fixtures/crds/*.yaml")):
        for crd in load(path):
            group = crd["spec"]["group"]
            for v in crd["spec"]["versions"]:
                schema = strict_schema(v["schema"]["openAPIV3Schema"])
                schema["properties"]["metadata"] = {"type": "object"}
                crds[(f"{group}/{v['name']}", crd["spec"]["names"]["kind"])] = (schema, path)
    return crds


def validate_crs(name, docs, crds):
    for d in docs:
        key = (d.get("apiVersion"), d.get("kind"))
        if key not in crds:
            # The AI Gateway's resources have no schema anywhere else (neither
            # kubernetes-validate nor @kubernetes-models): without their vendored CRD they would
            # pass unchecked.
            check(not str(key[0]).startswith("aigateway.envoyproxy.io/"),
                  f"{name}: {key[1]} ({key[0]}): no CRD vendored in tests/fixtures/crds")
            continue
        schema, path = crds[key]
        errors = sorted(jsonschema.Draft202012Validator(schema).iter_errors(d), key=str)
        for e in errors:
            where = ".".join(str(p) for p in e.absolute_path)
            failures.append(f"{name}: {d['kind']}/{d['metadata']['name']} against "
                            f"{os.path.relpath(path, ROOT)}: {where}: {e.message}")
        if not errors:
            print(f"INFO {name}: {d['kind']}/{d['metadata']['name']} valid against "
                  f"{os.path.relpath(path, ROOT)} (strict)")


def find(docs, kind, name=None):
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


def mib(quantity):
    m = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    if not m:
        raise SystemExit(f"memory quantity {quantity!r}: expected <n>Mi or <n>Gi")
    return int(m[1]) * (1024 if m[2] == "Gi" else 1)


def benchmark_peak_mib(max_series):
    """The peak RSS BENCHMARKS.md measured with OTLP and Loki on at `max_series` series (this
    build's row of the "Memory per series with exports on" table)."""
    with open(os.path.join(ROOT, "BENCHMARKS.md")) as f:
        text = f.read()
    series = f"{max_series:,}"
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 6 and cells[0] == series and cells[1] == "OTLP + Loki" \
                and cells[2] == "this one":
            m = re.search(r"([\d.]+) MiB", cells[5])
            if m:
                return float(m[1])
    raise SystemExit(f"BENCHMARKS.md: no 'OTLP + Loki | this one' row for {series} series")


def check_install(name, docs, defaults):
    ns = find(docs, "Namespace", "tokenmeter")
    if check(len(ns) == 1, f"{name}: one Namespace tokenmeter"):
        labels = ns[0]["metadata"].get("labels", {})
        for mode in ("enforce", "audit", "warn"):
            check(labels.get(f"pod-security.kubernetes.io/{mode}") == "privileged",
                  f"{name}: Namespace label pod-security.kubernetes.io/{mode}=privileged")
            check(f"pod-security.kubernetes.io/{mode}-version" in labels,
                  f"{name}: Namespace label pod-security.kubernetes.io/{mode}-version")
    secrets = find(docs, "Secret")
    if name == "overlays-example-secret":
        check([s["metadata"]["name"] for s in secrets] == ["tokenmeter-backends"],
              f"{name}: the example Secret tokenmeter-backends")
    else:
        check(not secrets, f"{name}: no Secret (the user creates tokenmeter-backends)")

    ds = find(docs, "DaemonSet", "tokenmeter")
    if not check(len(ds) == 1, f"{name}: one DaemonSet tokenmeter"):
        return
    ds = ds[0]
    pod = ds["spec"]["template"]["spec"]
    if name == "overlays-priority-class":
        check(pod.get("priorityClassName") == "tokenmeter-agent",
              f"{name}: priorityClassName tokenmeter-agent")
        check(find(docs, "PriorityClass", "tokenmeter-agent"), f"{name}: the PriorityClass")
    else:
        check("priorityClassName" not in pod, f"{name}: no priorityClassName")
    strategy = ds["spec"]["updateStrategy"]
    check(strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
          f"{name}: RollingUpdate with maxUnavailable 10%, got {strategy}")
    tolerations = pod.get("tolerations", [])
    if name == "overlays-gateway-nodes":
        check(not any(t.get("operator") == "Exists" and "key" not in t for t in tolerations),
              f"{name}: no toleration of every taint (`operator: Exists` without a key), "
              f"got {tolerations}")
        check(tolerations and all(t.get("key") and t.get("effect") for t in tolerations),
              f"{name}: tolerations name their taint's key and effect, got {tolerations}")
        selector = pod.get("nodeSelector", {})
        check(len(selector) > 1 and selector.get("kubernetes.io/os") == "linux",
              f"{name}: a nodeSelector for the gateway nodes, Linux kept, got {selector}")
    else:
        check(tolerations == [{"operator": "Exists"}],
              f"{name}: tolerates every taint (runs on every node)")
        check(pod.get("nodeSelector") == {"kubernetes.io/os": "linux"},
              f"{name}: every Linux node (nodeSelector kubernetes.io/os: linux only), "
              f"got {pod.get('nodeSelector')}")
    check("initContainers" not in pod, f"{name}: no init container")
    psc = pod.get("securityContext", {})
    check(psc.get("runAsUser") == 0 and psc.get("runAsGroup") == 0
          and psc.get("runAsNonRoot") is False,
          f"{name}: pod runs as uid/gid 0 (the logs' owner), got {psc}")
    check(psc.get("seccompProfile") == {"type": "RuntimeDefault"},
          f"{name}: seccomp RuntimeDefault")
    check("supplementalGroups" not in psc, f"{name}: no supplementalGroups")
    containers = pod["containers"]
    check(len(containers) == 1, f"{name}: one container")
    c = containers[0]
    sc = c.get("securityContext", {})
    check(sc.get("allowPrivilegeEscalation") is False, f"{name}: allowPrivilegeEscalation false")
    check(sc.get("readOnlyRootFilesystem") is True, f"{name}: readOnlyRootFilesystem true")
    check(sc.get("privileged") is False, f"{name}: privileged false")
    check(sc.get("capabilities") == {"drop": ["ALL"]},
          f"{name}: capabilities drop ALL and add none, got {sc.get('capabilities')}")
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    for vname, v in volumes.items():
        if "hostPath" not in v:
            continue
        if v["hostPath"]["path"] == "/var/lib/tokenmeter":
            check(v["hostPath"].get("type") == "DirectoryOrCreate",
                  f"{name}: state hostPath type DirectoryOrCreate")
            check(mounts[vname]["mountPath"] == "/var/lib/tokenmeter", f"{name}: state mount")
        else:
            check(mounts.get(vname, {}).get("readOnly") is True,
                  f"{name}: hostPath {v['hostPath']['path']} mounted read-only")
    check(volumes.get("pods", {}).get("hostPath", {}).get("path") == "/var/log/pods",
          f"{name}: /var/log/pods mounted")
    check({p["httpGet"]["path"] for p in (c.get("livenessProbe"), c.get("startupProbe")) if p}
          == {"/healthz"}, f"{name}: liveness and startup probes on /healthz")
    check(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz",
          f"{name}: readiness probe on /readyz")

    check_image(name, c)
    check_config_mounts(name, docs, pod, c)
    cms = [d for d in find(docs, "ConfigMap")
           if d["metadata"]["name"] == volumes.get("config", {}).get("configMap", {}).get("name")]
    if check(len(cms) == 1, f"{name}: the DaemonSet's volume `config` mounts a ConfigMap of the "
             f"rendering"):
        cm = cms[0]
        check(re.fullmatch(r"tokenmeter-[a-z0-9]{10}", cm["metadata"]["name"]) is not None,
              f"{name}: ConfigMap name carries the content hash, got {cm['metadata']['name']}")
        config = tomllib.loads(cm["data"]["tokenmeter.toml"])
        check_base_config(name, cm["data"]["tokenmeter.toml"], config, c)
        max_series = config.get("limits", {}).get("max_series", defaults["limits"]["max_series"])
        check(max_series == defaults["limits"]["max_series"],
              f"{name}: the ConfigMap keeps the default limits.max_series the resources are sized for")
        peak = benchmark_peak_mib(defaults["limits"]["max_series"])
        res = c["resources"]
        request, limit = mib(res["requests"]["memory"]), mib(res["limits"]["memory"])
        check(request >= peak, f"{name}: memory request {request} MiB >= measured peak {peak} MiB")
        check(limit >= 2 * peak,
              f"{name}: memory limit {limit} MiB >= 2 x measured peak {peak} MiB (headroom)")

    pms = find(docs, "PodMonitor")
    if name == "overlays-podmonitor" and check(len(pms) == 1, f"{name}: one PodMonitor"):
        pm = pms[0]
        check(pm["metadata"].get("labels", {}).get("release"), f"{name}: PodMonitor release label")
        ep = pm["spec"]["podMetricsEndpoints"][0]
        check(ep.get("metricRelabelings") == [
            {"action": "keep", "sourceLabels": ["__name__"], "regex": "tokenmeter_.*"}],
            f"{name}: only tokenmeter_* kept, got {ep.get('metricRelabelings')}")
        check({"action": "replace", "sourceLabels": ["__meta_kubernetes_pod_node_name"],
               "targetLabel": "instance"} in ep.get("relabelings", []),
              f"{name}: instance = node name")
    elif name != "overlays-podmonitor":
        check(not pms, f"{name}: no PodMonitor (opt-in: its CRD may be missing)")
    nps = find(docs, "NetworkPolicy")
    if name == "overlays-network-policy":
        if check(len(nps) == 1, f"{name}: one NetworkPolicy"):
            check_network_policy(name, nps[0], ds, c)
    else:
        check(not nps, f"{name}: no NetworkPolicy (opt-in: it needs adapting to the cluster)")
    return config if cms else None


def release_version():
    """The newest release of CHANGELOG.md (`## [x.y.z] - date`)."""
    with open(os.path.join(ROOT, "CHANGELOG.md"), encoding="utf-8") as f:
        for line in f:
            m = re.match(r"## \[(\d+\.\d+\.\d+)\]", line)
            if m:
                return m[1]
    raise SystemExit("CHANGELOG.md: no `## [x.y.z]` release heading")


PLACEHOLDER_IMAGE = "ghcr.io/your-org/tokenmeter"


def check_image(name, c):
    version = release_version()
    image = c.get("image", "")
    repo, _, tag = image.rpartition(":")
    check(tag == version, f"{name}: image tag {tag!r} is the newest release of CHANGELOG.md "
          f"({version})")
    if name == "install-doc":
        check(repo != PLACEHOLDER_IMAGE and repo != "tokenmeter",
              f"{name}: the overlay of docs/install.md replaces the image, got {image}")
    else:
        check(repo == PLACEHOLDER_IMAGE,
              f"{name}: image {PLACEHOLDER_IMAGE}:<release> (the base's images: entry), got {image}")


def check_base_config(name, text, config, c):
    """The base config: tenants without a default, the listen port the container's."""
    for section, var in (("otlp", "MIMIR_TENANT"), ("loki", "LOKI_TENANT")):
        tenant = config.get(section, {}).get("headers", {}).get("X-Scope-OrgID")
        check(tenant == "${" + var + "}",
              f"{name}: {section}.headers X-Scope-OrgID is ${{{var}}} with no default (an unset "
              f"tenant stops the agent instead of writing to a default tenant), got {tenant!r}")
    check("anonymous" not in text, f"{name}: the base config names no `anonymous` tenant")
    listen = config.get("server", {}).get("listen", "")
    port = int(listen.rpartition(":")[2]) if listen else None
    ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
    check(port == ports.get("http-metrics"),
          f"{name}: server.listen {listen!r} is on the container port http-metrics "
          f"({ports.get('http-metrics')})")


HASHED = re.compile(r"(.+)-[a-z0-9]{10}")


def check_config_mounts(name, docs, pod, c):
    """Every --config of the args lies in a mounted ConfigMap; which ConfigMaps are hashed."""
    args = c.get("args", [])
    check(args[:3] == ["run", "--config", "/etc/tokenmeter/tokenmeter.toml"],
          f"{name}: args start with run --config /etc/tokenmeter/tokenmeter.toml, got {args}")
    cms = {d["metadata"]["name"]: d for d in find(docs, "ConfigMap")}
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = c.get("volumeMounts", [])
    for m in mounts:
        check("subPath" not in m and "subPathExpr" not in m,
              f"{name}: mount {m['mountPath']} has no subPath (a subPath mount never sees a "
              f"ConfigMap change)")
    configs = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    check(len(configs) == args.count("--config") and all(not a.startswith("-") for a in configs),
          f"{name}: every --config has a path, got {args}")
    for path in configs:
        found = None
        for m in mounts:
            if path == m["mountPath"] or os.path.dirname(path) == m["mountPath"]:
                found = m
        if not check(found, f"{name}: --config {path} is in a mounted volume"):
            continue
        cm_name = volumes.get(found["name"], {}).get("configMap", {}).get("name")
        if not check(cm_name in cms, f"{name}: --config {path}: volume {found['name']} is a "
                     f"ConfigMap of the rendering, got {cm_name}"):
            continue
        check(found.get("readOnly") is True, f"{name}: {found['mountPath']} mounted read-only")
        if path != found["mountPath"]:
            check(os.path.basename(path) in cms[cm_name].get("data", {}),
                  f"{name}: --config {path}: ConfigMap {cm_name} has the key "
                  f"{os.path.basename(path)}")
        else:
            check(any(k.endswith(".toml") for k in cms[cm_name].get("data", {})),
                  f"{name}: --config {path}: ConfigMap {cm_name} holds *.toml files")
    # Read at start (a change must roll the pods): hashed. Re-read live (the price table):
    # unhashed, or every price change would restart every agent.
    for cm_name, cm in cms.items():
        if cm_name == "tokenmeter-prices":
            continue
        check(HASHED.fullmatch(cm_name),
              f"{name}: ConfigMap {cm_name} carries the content hash (a change rolls the pods)")
    if name == "overlays-prices" or "tokenmeter-prices" in cms \
            or any(v.get("configMap", {}).get("name") == "tokenmeter-prices"
                   for v in volumes.values()):
        check_prices(name, cms, volumes, mounts)


def check_prices(name, cms, volumes, mounts):
    if not check("tokenmeter-prices" in cms,
                 f"{name}: the price table is the ConfigMap tokenmeter-prices, with no name hash, "
                 f"got {sorted(cms)}"):
        return
    vol = [v for v in volumes.values() if v.get("configMap", {}).get("name") == "tokenmeter-prices"]
    if not check(len(vol) == 1, f"{name}: one volume of ConfigMap tokenmeter-prices"):
        return
    mount = [m for m in mounts if m["name"] == vol[0]["name"]]
    if not check(len(mount) == 1, f"{name}: tokenmeter-prices mounted once"):
        return
    files = [tomllib.loads(text).get("pricing", {}).get("file")
             for cm in cms.values() for key, text in cm.get("data", {}).items()
             if key.endswith(".toml") and cm["metadata"]["name"] != "tokenmeter-prices"]
    files = [f for f in files if f]
    check(len(files) == 1 and os.path.dirname(files[0]) == mount[0]["mountPath"]
          and os.path.basename(files[0]) in cms["tokenmeter-prices"]["data"],
          f"{name}: pricing.file {files} is a key of tokenmeter-prices in its mount "
          f"{mount[0]['mountPath']}")
    if name == "overlays-prices":
        with open(os.path.join(ROOT, "config/pricing.example.toml"), encoding="utf-8") as f:
            check(cms["tokenmeter-prices"]["data"].get("prices.toml") == f.read(),
                  f"{name}: prices.toml is config/pricing.example.toml")


def check_network_policy(name, np, ds, c):
    spec = np["spec"]
    labels = ds["spec"]["template"]["metadata"]["labels"]
    selector = spec.get("podSelector", {})
    check(np["metadata"].get("namespace") == ds["metadata"]["namespace"],
          f"{name}: NetworkPolicy in the DaemonSet's namespace")
    check(selector.get("matchLabels") and set(selector) == {"matchLabels"}
          and all(labels.get(k) == v for k, v in selector["matchLabels"].items()),
          f"{name}: NetworkPolicy selects the DaemonSet's pods, got {selector}")
    check(set(spec.get("policyTypes", [])) == {"Ingress", "Egress"},
          f"{name}: NetworkPolicy restricts ingress and egress")
    port = {p["name"]: p["containerPort"] for p in c.get("ports", [])}.get("http-metrics")
    ingress = spec.get("ingress", [])
    check(ingress == [{
        "from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
        "ports": [{"protocol": "TCP", "port": port}]}],
        f"{name}: ingress only to TCP {port} and only from the monitoring namespace, got {ingress}")
    egress = spec.get("egress", [])
    dns = [r for r in egress if {"protocol": "UDP", "port": 53} in r.get("ports", [])
           and {"protocol": "TCP", "port": 53} in r.get("ports", [])]
    check(len(dns) == 1 and all(t.get("podSelector") for t in dns[0].get("to", [])),
          f"{name}: egress to the cluster DNS pods on 53/UDP and 53/TCP")
    allowed = {t.get("namespaceSelector", {}).get("matchLabels", {})
               .get("kubernetes.io/metadata.name") for r in egress for t in r.get("to", [])}
    check(all(r.get("to") for r in egress), f"{name}: every egress rule names where it goes")
    # The example Secret's endpoints (<service>.<namespace>.svc) must be reachable.
    secret = load(os.path.join(ROOT, "config/kubernetes/components/example-secret/secret.yaml"))[0]
    for key in ("MIMIR_OTLP_ENDPOINT", "LOKI_PUSH_ENDPOINT"):
        host = urlparse(secret["stringData"][key]).hostname or ""
        parts = host.split(".")
        ns = parts[1] if len(parts) > 2 and parts[2] == "svc" else None
        check(ns in allowed, f"{name}: egress allows namespace {ns} of the example {key} {host}")


def check_config_files(rendered, binary):
    """Every TOML file of every rendered ConfigMap, checked by the binary: configs and
    drop-ins as --config (with pricing.file pointing at the rendered price table), price
    tables as pricing.file."""
    seen = set()
    env = {k: v for k, v in os.environ.items()
           if k not in ("MIMIR_OTLP_ENDPOINT", "LOKI_PUSH_ENDPOINT", "TOKENMETER_CONFIG")}
    env.update(MIMIR_TENANT="check-manifests", LOKI_TENANT="check-manifests")
    with tempfile.TemporaryDirectory() as tmp:
        for path in sorted(glob.glob(os.path.join(rendered, "*.yaml"))):
            name = os.path.basename(path)[:-5]
            cms = {d["metadata"]["name"]: d for d in load(path) if d["kind"] == "ConfigMap"}
            prices = cms.get("tokenmeter-prices", {}).get("data", {})
            price_file = os.path.join(tmp, f"{name}-prices.toml")
            if "prices.toml" in prices:
                with open(price_file, "w", encoding="utf-8") as f:
                    f.write(prices["prices.toml"])
            for cm_name, cm in cms.items():
                for key, text in cm.get("data", {}).items():
                    if not key.endswith(".toml") or (cm_name, key, text) in seen:
                        continue
                    seen.add((cm_name, key, text))
                    if cm_name == "tokenmeter-prices":
                        text = f'[pricing]\ncurrency = "USD"\nfile = "{price_file}"\n'
                    else:
                        text = text.replace('"/etc/tokenmeter/prices/prices.toml"',
                                            f'"{price_file}"')
                    conf = os.path.join(tmp, "check.toml")
                    with open(conf, "w", encoding="utf-8") as f:
                        f.write(text)
                    r = subprocess.run([binary, "check-config", "--config", conf], env=env,
                                       capture_output=True, text=True)
                    if check(r.returncode == 0, f"{name}: ConfigMap {cm_name} {key}: check-config "
                             f"failed: {r.stderr.strip()}"):
                        print(f"INFO {name}: ConfigMap {cm_name} {key}: check-config passes")
        # The tenant is required: without it the base config is refused, naming the variable.
        with open(os.path.join(ROOT, "config/kubernetes/base/tokenmeter.toml")) as f:
            base = f.read()
        for var in ("MIMIR_TENANT", "LOKI_TENANT"):
            conf = os.path.join(tmp, "check.toml")
            with open(conf, "w", encoding="utf-8") as f:
                f.write(base)
            without = {k: v for k, v in env.items() if k != var}
            r = subprocess.run([binary, "check-config", "--config", conf], env=without,
                               capture_output=True, text=True)
            check(r.returncode == 2 and f"environment variable {var} is not set" in r.stderr,
                  f"base config without {var}: refused (exit 2) naming it, got exit "
                  f"{r.returncode}: {r.stderr.strip()}")


def header_of(value):
    m = re.fullmatch(r"%REQ\(([A-Za-z0-9-]+)\)%", value)
    return m[1].lower() if m else None


def check_gateway(docs, defaults, base_config):
    name = "gateway-example"
    ep = find(docs, "EnvoyProxy")
    gw = find(docs, "Gateway")
    route = find(docs, "AIGatewayRoute")
    sp = find(docs, "SecurityPolicy")
    ctp = find(docs, "ClientTrafficPolicy")
    if not all(check(len(x) == 1, f"{name}: one {k}") for k, x in
               [("EnvoyProxy", ep), ("Gateway", gw), ("AIGatewayRoute", route),
                ("SecurityPolicy", sp), ("ClientTrafficPolicy", ctp)]):
        return
    ep, gw, route, sp, ctp = ep[0], gw[0], route[0], sp[0], ctp[0]
    ref = gw["spec"].get("infrastructure", {}).get("parametersRef", {})
    check(ref == {"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy",
                  "name": ep["metadata"]["name"]}
          and gw["metadata"]["namespace"] == ep["metadata"]["namespace"],
          f"{name}: the Gateway's infrastructure.parametersRef attaches the EnvoyProxy")
    for policy in (sp, ctp):
        check({"group": "gateway.networking.k8s.io", "kind": "Gateway",
               "name": gw["metadata"]["name"]} in policy["spec"]["targetRefs"],
              f"{name}: {policy['kind']} targets the Gateway")
    settings = ep["spec"]["telemetry"]["accessLog"]["settings"]
    check(len(settings) == 1, f"{name}: one access-log setting")
    log = settings[0]["format"]["json"]
    # The example logs the keys the AI Gateway's docs recommend (the `gen_ai` format): each base
    # field's first key, and the cache counts the route's llmRequestCosts produce.
    gen_ai = format_keys(defaults["__text__"], "gen_ai")
    wanted = {k: v for k, v in gen_ai.items() if not k.startswith("extra_tokens.")}
    wanted.update({k: gen_ai[k] for k in ("extra_tokens.cached_input",
                                          "extra_tokens.cache_creation_input")})
    wanted.update({f"extra_tokens.{k}": v for k, v in
                   base_config.get("fields", {}).get("extra_tokens", {}).items()})
    # Which field each token metadata key of the AI Gateway counts.
    metadata_field = {"llm_input_token": "input_tokens", "llm_output_token": "output_tokens",
                      "llm_total_token": "total_tokens",
                      "llm_cached_input_token": "extra_tokens.cached_input",
                      "llm_cache_creation_input_token": "extra_tokens.cache_creation_input",
                      "llm_reasoning_token": "extra_tokens.reasoning"}
    for field, key in sorted(wanted.items()):
        check(key in log, f"{name}: the access log has `{key}` (fields.{field})")
    costs = {c["metadataKey"] for c in route["spec"]["llmRequestCosts"]}
    logged = set()
    for key, value in log.items():
        m = re.fullmatch(r"%DYNAMIC_METADATA\(io\.envoy\.ai_gateway:(\w+)\)%", value)
        if m and m[1].startswith("llm_"):
            logged.add(m[1])
            check(gen_ai.get(metadata_field.get(m[1], "")) == key,
                  f"{name}: log key {key} holds metadata {m[1]}, read as "
                  f"{metadata_field.get(m[1], '(no field)')}")
    check(logged == costs, f"{name}: logged token metadata {sorted(logged)} == the route's "
          f"llmRequestCosts keys {sorted(costs)}")
    removed = {h.lower() for h in ctp["spec"]["headers"]["earlyRequestHeaders"]["remove"]}
    api_key_header = header_of(log.get(wanted["api_key_id"], ""))
    check(api_key_header == sp["spec"]["apiKeyAuth"]["forwardClientIDHeader"].lower(),
          f"{name}: api_key_id is the SecurityPolicy's forwardClientIDHeader")
    service_header = header_of(log.get(wanted["service_id"], ""))
    for rule in route["spec"]["rules"]:
        for b in rule["backendRefs"]:
            sets = {s["name"].lower() for s in b.get("headerMutation", {}).get("set", [])}
            check(service_header in sets,
                  f"{name}: backendRef {b['name']} sets {service_header} (service_id)")
    for h in (api_key_header, service_header):
        check(h in removed, f"{name}: client-sent {h} removed (earlyRequestHeaders)")


def format_keys(defaults_text, fmt):
    """{field: first key} of format `fmt`, from the mapping `check-config` prints after the config
    (comment lines `# <format>` then `#   <field> = <key> | <key>`)."""
    keys, inside = {}, False
    for line in defaults_text.splitlines():
        head = re.fullmatch(r"# (\w+)", line)
        if head:
            inside = head[1] == fmt
            continue
        row = re.fullmatch(r"#   (\S+)\s+= (.*)", line)
        if inside and row and not row[2].startswith("("):
            keys[row[1]] = row[2].split(" | ")[0].split(" (")[0]
    if not keys:
        raise SystemExit(f"check-config printed no mapping of the {fmt} format")
    return keys


def main():
    rendered, defaults_path, binary = sys.argv[1], sys.argv[2], sys.argv[3]
    with open(defaults_path, encoding="utf-8") as f:
        defaults_text = f.read()
    defaults = tomllib.loads(defaults_text)
    defaults["__text__"] = defaults_text  # the formats' mapping is in its comments
    crds = vendored_crds()
    base_config = None
    names = sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(rendered, "*.yaml")))
    check("base" in names and "gateway-example" in names, "base and gateway-example rendered")
    for name in names:
        docs = load(os.path.join(rendered, f"{name}.yaml"))
        validate_crs(name, docs, crds)
        if name in ("base", "install-doc") or name.startswith("overlays-"):
            config = check_install(name, docs, defaults)
            if name == "base":
                base_config = config
    if base_config is not None and "gateway-example" in names:
        check_gateway(load(os.path.join(rendered, "gateway-example.yaml")), defaults, base_config)
    check("install-doc" in names, "the overlay of docs/install.md rendered")
    check_config_files(rendered, binary)
    for f in failures:
        print(f"FAIL {f}")
    print(f"manifest assertions over {len(names)} renderings: {len(failures)} failed")
    sys.exit(1 if failures else 0)


main()
