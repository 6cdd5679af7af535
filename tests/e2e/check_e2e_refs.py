#!/usr/bin/env python3
"""Keeps tests/e2e/kind.sh from drifting away from deploy/ where no cluster can run it.

Every manifest path kind.sh applies must exist; every Job, Deployment and Pod it waits for, logs,
execs into or deletes must be defined with that name in the examples or the install; the strings it
expects from the example pod, the seed Job and the report Job must be what those manifests produce;
its namespace and secret value must be those of the examples.

Usage: check_e2e_refs.py KIND_SH EXAMPLES.yaml INSTALL.yaml
"""

import re
import sys
from pathlib import Path

import yaml


def names(docs, kind):
    return {d["metadata"]["name"] for d in docs if d.get("kind") == kind}


def shell_var(script, var):
    found = re.search(rf"(?m)^{var}=(\S+)", script)
    return found.group(1).strip("'\"") if found else None


def main():
    script_path, examples_path, install_path = sys.argv[1:4]
    script = Path(script_path).read_text()
    examples = [d for d in yaml.safe_load_all(Path(examples_path).read_text()) if d]
    install = [d for d in yaml.safe_load_all(Path(install_path).read_text()) if d]
    docs = examples + install
    errors = []

    for path in sorted(set(re.findall(r"\b(deploy/[\w./-]+\.yaml|deploy/overlays/[\w-]+)\b", script))):
        if not Path(path).exists():
            errors.append(f"kind.sh uses {path}, which does not exist")

    refs = (("Job", r"job/([a-z0-9-]+)"), ("Deployment", r"(?:rollout status|exec|logs) deploy/([a-z0-9-]+)"))
    for kind, pattern in refs:
        for name in sorted(set(re.findall(pattern, script))):
            if name not in names(docs, kind):
                errors.append(f"kind.sh waits for {kind} {name}, which no manifest defines")
    pod_refs = re.findall(r"(?:get pod|logs|exec|delete pod) (s3mount-[a-z0-9-]+)", script)
    for name in sorted(set(pod_refs)):
        if name not in names(examples, "Pod"):
            errors.append(f"kind.sh uses pod {name}, which deploy/examples does not define")

    ns = shell_var(script, "demo_ns")
    if ns not in names(examples, "Namespace"):
        errors.append(f"kind.sh's demo_ns {ns} is not a namespace of the examples")
    secrets = [d for d in examples if d.get("kind") == "Secret"]
    secret_values = {v for d in secrets for v in d.get("stringData", {}).values()}
    if shell_var(script, "secret_value") not in secret_values:
        errors.append("kind.sh's secret_value is not a value of the examples' Secret")

    def text_of(kind, name):
        return "\n".join(yaml.safe_dump(d, width=1000) for d in examples
                         if d.get("kind") == kind and d["metadata"]["name"] == name)

    pod = text_of("Pod", "s3mount-example")
    seed = text_of("Job", "minio-seed")
    job = text_of("Job", "s3mount-example-job")
    expected = re.search(r'mc_cat hello.txt\)" = "([^"]+)"', script)
    # What kind.sh greps from the example pod's log, and the file and bytes it expects it to write.
    logged = re.findall(r"logs s3mount-example -c app \| grep -q '([^']+)'", script)
    if not logged:
        errors.append("kind.sh no longer checks the example pod's log")
    written = re.search(r'mc_cat (written-[\w.-]+)\)" = "([^"]+)"', script)
    wants = [("example pod", pod, line.split(": hello")[0]) for line in logged]
    written = written.groups() if written else ["<no write check in kind.sh>"]
    wants += [("example pod", pod, w) for w in written]
    wants += [
        ("seed Job", seed, expected.group(1) if expected else "<no hello.txt expectation in kind.sh>"),
        ("report Job", job, "jobs/"),
        ("report Job", job, "report.txt"),
    ]
    lines = re.search(r"report\.txt \| wc -l\)\" -eq (\d+)", script)
    if lines and f"seq 1 {lines.group(1)}" not in job:
        errors.append(f"kind.sh expects {lines.group(1)} report lines, the report Job does not write them")
    for what, text, want in wants:
        if want not in text:
            errors.append(f"kind.sh expects {want!r} from the {what}, which does not produce it")

    for e in errors:
        print(f"check_e2e_refs: {e}")
    print(f"check_e2e_refs: {len(errors)} problems")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
