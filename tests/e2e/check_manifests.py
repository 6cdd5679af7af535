#!/usr/bin/env python3
"""Checks that the rendered deploy/ overlays agree with the webhook binary and with issue 5/6.

The webhook side is read from the real binary (`s3mount-webhook --help`: every flag the
Deployment passes must exist, and defaults the Deployment relies on are taken from there) and
from its sources (the HTTP routes). The manifest side is the `kubectl kustomize` output of each
overlay. `--self-test` breaks the manifests in known ways and fails unless every break is caught.

Usage: check_manifests.py --webhook-bin BIN --webhook-src DIR [--self-test] NAME=RENDERED.yaml...
"""

import argparse
import copy
import re
import subprocess
import sys
from pathlib import Path

import yaml

SERVICE_DNS_FORMS = ["{s}", "{s}.{n}", "{s}.{n}.svc", "{s}.{n}.svc.cluster.local"]


class Webhook:
    """What the webhook binary and its sources say."""

    def __init__(self, binary, src_dir):
        self.help = subprocess.run([binary, "--help"], check=True, capture_output=True, text=True).stdout
        self.flags = set(re.findall(r"(?m)^\s+(?:-\w, )?(--[a-z0-9-]+)", self.help))
        if "--listen" not in self.flags:
            raise SystemExit(f"cannot read the flags of {binary}: no --listen in its --help")
        sources = "\n".join(p.read_text() for p in Path(src_dir).rglob("*.rs"))
        self.routes = set(re.findall(r'\.route\(\s*"([^"]+)"', sources))
        # The admission path is the route that --listen's help says it serves ("serving POST /mutate").
        listen_help = self.block("--listen") or ""
        self.admission_paths = {p for p in re.findall(r"POST (/[\w/-]+)", listen_help) if p in self.routes}

    def block(self, flag):
        """The --help text of one flag."""
        found = re.search(rf"(?ms)^\s+(?:-\w, )?{re.escape(flag)}\b(.*?)(?=^\s+(?:-\w, )?--|\Z)", self.help)
        return found.group(1) if found else None

    def default(self, flag):
        """The `[default: X]` clap prints for `flag`, or None."""
        block = self.block(flag)
        if block is None:
            return None
        found = re.search(r"\[default: ([^\]]+)\]", block)
        return found.group(1).strip() if found else None


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind, errors, where):
    found = by_kind(docs, kind)
    if len(found) != 1:
        errors.append(f"{where}: expected exactly one {kind}, found {len(found)}")
        return None
    return found[0]


def arg_value(args, flag):
    for a in args:
        if a == flag:
            return True
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def port_of(addr):
    return int(str(addr).rsplit(":", 1)[1])


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check(name, docs, wh):
    """Returns the list of problems of one rendered overlay."""
    errors = []
    err = errors.append
    dep = one(docs, "Deployment", errors, name)
    mwc = one(docs, "MutatingWebhookConfiguration", errors, name)
    if dep is None or mwc is None:
        return errors
    ns = dep["metadata"].get("namespace")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    labels = pod["metadata"].get("labels", {})
    containers = [c for c in spec["containers"] if c["name"] == "webhook"]
    if len(containers) != 1:
        return errors + [f"{name}: Deployment has no container named webhook"]
    c = containers[0]
    args = c.get("args", [])

    # Every flag passed exists in the binary.
    for a in args:
        flag = a.split("=", 1)[0]
        if flag.startswith("--") and flag not in wh.flags:
            err(f"{name}: Deployment passes {flag}, which s3mount-webhook --help does not list")

    listen = arg_value(args, "--listen") or wh.default("--listen")
    health = arg_value(args, "--health-listen") or wh.default("--health-listen")
    label = arg_value(args, "--opt-in-label") or wh.default("--opt-in-label")
    ports = {p.get("name"): p["containerPort"] for p in c.get("ports", [])}
    if listen is None or port_of(listen) not in ports.values():
        err(f"{name}: the HTTPS listen address {listen} has no matching containerPort ({ports})")
    if health is None or port_of(health) not in ports.values():
        err(f"{name}: the health address {health} has no matching containerPort ({ports})")

    # Service -> container port -> --listen, and the webhook's clientConfig.
    cc = mwc["webhooks"][0].get("clientConfig", {}).get("service", {}) if mwc.get("webhooks") else {}
    services = [s for s in by_kind(docs, "Service") if s["metadata"]["name"] == cc.get("name")]
    if not services:
        err(f"{name}: clientConfig.service {cc.get('name')} is not a Service of the manifests")
    else:
        svc = services[0]
        if svc["metadata"].get("namespace") != cc.get("namespace") or cc.get("namespace") != ns:
            err(f"{name}: clientConfig namespace {cc.get('namespace')} is not the Service/Deployment "
                f"namespace {ns}")
        if not selects(svc["spec"].get("selector"), labels):
            err(f"{name}: Service {svc['metadata']['name']} does not select the webhook pods")
        match = [p for p in svc["spec"]["ports"] if p["port"] == cc.get("port", 443)]
        if not match:
            err(f"{name}: clientConfig port {cc.get('port', 443)} is not a port of the Service")
        else:
            target = match[0].get("targetPort", match[0]["port"])
            target = ports.get(target, target)
            if listen is not None and target != port_of(listen):
                err(f"{name}: the Service sends port {cc.get('port', 443)} to {target}, "
                    f"the webhook listens on {listen}")
    if cc.get("path") not in wh.admission_paths:
        err(f"{name}: clientConfig path {cc.get('path')} is not the webhook's admission route "
            f"({sorted(wh.admission_paths)} of {sorted(wh.routes)})")

    # The webhook entry itself.
    for hook in mwc.get("webhooks", []):
        hn = f"{name}: webhook {hook.get('name')}"
        if "v1" not in hook.get("admissionReviewVersions", []):
            err(f"{hn}: admissionReviewVersions lacks v1")
        rules = hook.get("rules", [])
        if rules != [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                      "resources": ["pods"], "scope": "Namespaced"}]:
            err(f"{hn}: rules must be exactly pods CREATE, got {rules}")
        if hook.get("sideEffects") != "None":
            err(f"{hn}: sideEffects must be None")
        if not 1 <= hook.get("timeoutSeconds", 10) <= 5:
            err(f"{hn}: timeoutSeconds must be at most 5, got {hook.get('timeoutSeconds', 10)}")
        if hook.get("failurePolicy") != "Fail":
            err(f"{hn}: failurePolicy must be Fail (the documented default)")
        if hook.get("reinvocationPolicy") != "IfNeeded":
            err(f"{hn}: reinvocationPolicy must be IfNeeded")
        exprs = hook.get("namespaceSelector", {}).get("matchExpressions", [])
        key, value = (label.split("=", 1) + [""])[:2] if label else (None, None)
        if not any(e["key"] == key and e["operator"] == "In" and e.get("values") == [value] for e in exprs):
            err(f"{hn}: namespaceSelector does not require the webhook's opt-in label {label}")
        excluded = {v for e in exprs if e["key"] == "kubernetes.io/metadata.name" and e["operator"] == "NotIn"
                    for v in e.get("values", [])}
        for must in ("kube-system", ns):
            if must not in excluded:
                err(f"{hn}: namespaceSelector does not exclude namespace {must}")

    # Hardening of the webhook pods.
    if dep["spec"].get("replicas", 1) < 2:
        err(f"{name}: Deployment needs at least 2 replicas")
    spread = spec.get("topologySpreadConstraints", [])
    if not any(t.get("topologyKey") == "kubernetes.io/hostname" for t in spread):
        err(f"{name}: replicas are not spread across nodes")
    psc, csc = spec.get("securityContext", {}), c.get("securityContext", {})
    if not (psc.get("runAsNonRoot") or csc.get("runAsNonRoot")):
        err(f"{name}: webhook does not run as non-root")
    if (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        err(f"{name}: webhook seccomp profile is not RuntimeDefault")
    if csc.get("readOnlyRootFilesystem") is not True:
        err(f"{name}: webhook root filesystem is not read-only")
    if csc.get("allowPrivilegeEscalation") is not False or csc.get("privileged"):
        err(f"{name}: webhook may escalate privileges")
    if csc.get("capabilities", {}).get("drop") != ["ALL"] or csc.get("capabilities", {}).get("add"):
        err(f"{name}: webhook does not drop all capabilities")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        secret = volumes.get(m["name"], {}).get("secret")
        if secret is None:
            continue
        mode = secret.get("defaultMode", 0o644)
        if not (mode & 0o004 or (mode & 0o040 and psc.get("fsGroup") is not None)):
            err(f"{name}: the non-root webhook cannot read Secret volume {m['name']} (mode {mode:o}, "
                f"fsGroup {psc.get('fsGroup')})")
    res = c.get("resources", {})
    if not (res.get("requests", {}).get("cpu") and res.get("requests", {}).get("memory")
            and res.get("limits", {}).get("memory")):
        err(f"{name}: webhook lacks cpu/memory requests or a memory limit")
    for probe, path in (("livenessProbe", "/livez"), ("readinessProbe", "/readyz")):
        got = c.get(probe, {}).get("httpGet", {})
        port = ports.get(got.get("port"), got.get("port"))
        if got.get("path") != path or health is None or port != port_of(health):
            err(f"{name}: {probe} must GET {path} on the health port {health}, got {got}")
    pdbs = [p for p in by_kind(docs, "PodDisruptionBudget")
            if selects(p["spec"]["selector"].get("matchLabels"), labels)]
    if not pdbs or pdbs[0]["spec"].get("minAvailable", 0) < 1:
        err(f"{name}: no PodDisruptionBudget keeps a webhook replica available")
    nps = [p for p in by_kind(docs, "NetworkPolicy")
           if selects(p["spec"]["podSelector"].get("matchLabels"), labels)]
    if not nps:
        err(f"{name}: no NetworkPolicy selects the webhook pods")
    elif listen is not None and not any(
        pp.get("port") in (port_of(listen), "https")
        for r in nps[0]["spec"].get("ingress", [])
        for pp in r.get("ports", [])
    ):
        err(f"{name}: the NetworkPolicy does not admit the HTTPS port")

    # RBAC: nothing broad.
    for role in by_kind(docs, "ClusterRole") + by_kind(docs, "Role"):
        for rule in role.get("rules", []):
            rn = f"{name}: {role['kind']} {role['metadata']['name']}"
            if any("*" in rule.get(field, []) for field in ("verbs", "resources", "apiGroups")):
                err(f"{rn}: wildcard rule {rule}")
            if "secrets" in rule.get("resources", []):
                if role["kind"] == "ClusterRole":
                    err(f"{rn}: cluster-wide access to secrets")
                if set(rule["verbs"]) - {"create"} and not rule.get("resourceNames"):
                    err(f"{rn}: secrets access not limited by resourceNames")
            if "mutatingwebhookconfigurations" in rule.get("resources", []):
                if rule.get("resourceNames") != [mwc["metadata"]["name"]]:
                    err(f"{rn}: MutatingWebhookConfiguration access not limited to {mwc['metadata']['name']}")
            if "pods" in rule.get("resources", []):
                err(f"{rn}: the webhook must not need access to pods")

    # Self-signed: the names it converges on are the manifests' names, and RBAC grants them.
    if arg_value(args, "--self-signed"):
        roles = by_kind(docs, "Role") + by_kind(docs, "ClusterRole")
        rules = [r for role in roles for r in role.get("rules", [])]
        if arg_value(args, "--webhook-configuration") != mwc["metadata"]["name"]:
            err(f"{name}: --webhook-configuration is not {mwc['metadata']['name']}")
        secret = arg_value(args, "--self-signed-secret")
        if not any("secrets" in r.get("resources", []) and secret in r.get("resourceNames", [])
                   for r in rules):
            err(f"{name}: no Role grants the --self-signed-secret {secret}")
        if not any("mutatingwebhookconfigurations" in r.get("resources", []) and "patch" in r["verbs"]
                   for r in rules):
            err(f"{name}: no ClusterRole lets the webhook patch the caBundle")
        if arg_value(args, "--service-name") != cc.get("name"):
            err(f"{name}: --service-name is not the Service {cc.get('name')}")

    # cert-manager: the certificate names the Service and the cainjector points at it.
    inject = mwc["metadata"].get("annotations", {}).get("cert-manager.io/inject-ca-from")
    if by_kind(docs, "Certificate") or inject:
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = {volumes[m["name"]].get("secret", {}).get("secretName") for m in c.get("volumeMounts", [])
                   if m["name"] in volumes}
        certs = [x for x in by_kind(docs, "Certificate")
                 if f"{x['metadata'].get('namespace')}/{x['metadata']['name']}" == inject]
        if not certs:
            err(f"{name}: cert-manager.io/inject-ca-from {inject} names no Certificate of the manifests")
        else:
            cert = certs[0]["spec"]
            want = [f.format(s=cc.get("name"), n=ns) for f in SERVICE_DNS_FORMS]
            missing = [d for d in want if d not in cert.get("dnsNames", [])]
            if missing:
                err(f"{name}: serving Certificate lacks dnsNames {missing}")
            if cert.get("secretName") not in mounted:
                err(f"{name}: the webhook does not mount the Certificate's Secret {cert.get('secretName')}")
    return errors


def self_test(rendered, wh):
    """Each break must be caught; returns the list of breaks that were not."""

    def hook(docs):
        return by_kind(docs, "MutatingWebhookConfiguration")[0]["webhooks"][0]

    def container(docs):
        return by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"]["containers"][0]

    breaks = {
        "path /mutat": lambda d: hook(d)["clientConfig"]["service"].__setitem__("path", "/mutat"),
        "port 444": lambda d: hook(d)["clientConfig"]["service"].__setitem__("port", 444),
        "label s3.mount/injected": lambda d: hook(d)["namespaceSelector"]["matchExpressions"][0].__setitem__(
            "key", "s3.mount/injected"),
        "own namespace not excluded": lambda d: hook(d)["namespaceSelector"]["matchExpressions"].pop(),
        "failurePolicy Ignore": lambda d: hook(d).__setitem__("failurePolicy", "Ignore"),
        "timeout 30": lambda d: hook(d).__setitem__("timeoutSeconds", 30),
        "listen 9443": lambda d: container(d).__setitem__("args", [
            a if not a.startswith("--listen=") else "--listen=0.0.0.0:9443" for a in container(d)["args"]]),
        "unknown flag": lambda d: container(d)["args"].append("--no-such-flag"),
        "writable root": lambda d: container(d)["securityContext"].__setitem__(
            "readOnlyRootFilesystem", False),
        "one replica": lambda d: by_kind(d, "Deployment")[0]["spec"].__setitem__("replicas", 1),
        "wildcard RBAC": lambda d: by_kind(d, "ClusterRole")[0]["rules"].append(
            {"apiGroups": [""], "resources": ["*"], "verbs": ["get"]}),
    }
    def cert_dns(docs):
        certs = [c for c in by_kind(docs, "Certificate") if c["spec"].get("dnsNames")]
        if not certs:
            return False
        certs[-1]["spec"]["dnsNames"].pop(2)
        return True

    def self_signed_secret(docs):
        args = container(docs)["args"]
        if "--self-signed" not in args:
            return False
        args[:] = [a if not a.startswith("--self-signed-secret=") else "--self-signed-secret=other"
                   for a in args]
        return True

    def unreadable_secret(docs):
        volumes = by_kind(docs, "Deployment")[0]["spec"]["template"]["spec"].get("volumes", [])
        secrets = [v["secret"] for v in volumes if "secret" in v]
        for secret in secrets:
            secret["defaultMode"] = 0o400
        return bool(secrets)

    breaks["secret volume unreadable"] = unreadable_secret
    breaks["path /livez (a route, not the admission one)"] = (
        lambda d: hook(d)["clientConfig"]["service"].__setitem__("path", "/livez"))
    breaks["certificate without svc.ns.svc"] = cert_dns
    breaks["self-signed secret not granted"] = self_signed_secret
    missed = []
    for overlay, docs in rendered.items():
        # A break is caught when it adds a problem, so the self-test means something even while the
        # unbroken manifests have problems of their own.
        baseline = set(check(overlay, docs, wh))
        for what, brk in breaks.items():
            broken = copy.deepcopy(docs)
            if brk(broken) is False:
                continue
            if not set(check(overlay, broken, wh)) - baseline:
                missed.append(f"{overlay}: {what}")
    return missed


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--webhook-bin", required=True)
    ap.add_argument("--webhook-src", required=True)
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("rendered", nargs="+", metavar="NAME=FILE")
    opts = ap.parse_args()
    wh = Webhook(opts.webhook_bin, opts.webhook_src)
    rendered = {}
    for item in opts.rendered:
        name, _, path = item.partition("=")
        rendered[name] = [d for d in yaml.safe_load_all(Path(path).read_text()) if d]
    errors = [e for name, docs in rendered.items() for e in check(name, docs, wh)]
    for e in errors:
        print(f"check_manifests: {e}")
    if opts.self_test:
        missed = self_test(rendered, wh)
        for m in missed:
            print(f"check_manifests: self-test: break not caught: {m}")
        errors += missed
    checked = len(rendered)
    print(f"check_manifests: {checked} overlays, {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
