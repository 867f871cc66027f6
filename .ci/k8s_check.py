"""Checks the Kubernetes manifests in k8s/ against Kubernetes and against the real server.

1. Every resource validates in strict mode (unknown fields fail) with the PyPI package kubernetes-validate.
2. The pod's settings fit together: probes and ports resolve, the grace period covers preStop + drain + shutdown.
3. The real server (`python run.py`, with the manifest's environment) answers 200 on every probe path and port,
   each within the probe's timeoutSeconds, and on the ELB health-check path of the Service; after SIGTERM
   readiness turns 503 while liveness stays 200.
4. Self-test: copies of the manifests with a wrong probe path, a wrong port or an unknown field must fail.

Usage: python .ci/k8s_check.py [k8s-dir]   (run by .ci/k8s-check.sh inside a venv with the pinned tools)
Prints one PASS/FAIL line per check and ends with `N passed, N failed`; exits 1 on any failure.
"""
import glob
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

import kubernetes_validate
import yaml

KUBERNETES_VERSION = "1.37.0"  # The newest the pinned kubernetes-validate knows; bump both together.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START_DEADLINE = 30  # Seconds the server gets to start and turn ready.
DEFAULT_PORTS = {"PORT": 8080, "ADMIN_PORT": 8081}  # The server's defaults when the manifest sets none.
ALB_HEALTHCHECK = "alb.ingress.kubernetes.io/healthcheck-path"
ALB_HEALTHCHECK_PORT = "alb.ingress.kubernetes.io/healthcheck-port"

results = {"passed": 0, "failed": 0}


def report(ok, what, why=""):
    results["passed" if ok else "failed"] += 1
    print(("PASS " if ok else "FAIL ") + what + ("" if ok or not why else ": " + why), flush=True)
    return ok


def load(manifest_dir):
    """(file, resource) pairs from every YAML file; empty documents are skipped like kubectl does."""
    files = sorted(glob.glob(os.path.join(manifest_dir, "*.yaml")) + glob.glob(os.path.join(manifest_dir, "*.yml")))
    report(bool(files), "manifests found in %s" % manifest_dir, "no *.yaml files")
    resources = []
    for path in files:
        try:
            with open(path) as f:
                docs = [d for d in yaml.safe_load_all(f) if d]
        except yaml.YAMLError as e:
            report(False, "%s parses as YAML" % path, str(e).replace("\n", " "))
            continue
        report(bool(docs), "%s holds resources" % path, "no resource in the file")
        resources += [(os.path.basename(path), d) for d in docs]
    return resources


def validate(resources):
    for name, res in resources:
        what = "%s %s/%s validates against Kubernetes %s (strict)" % (
            name, res.get("kind"), res.get("metadata", {}).get("name"), KUBERNETES_VERSION)
        try:
            kubernetes_validate.validate(res, KUBERNETES_VERSION, strict=True)
            report(True, what)
        except kubernetes_validate.ValidationError as e:
            report(False, what, "%s: %s" % (".".join(str(p) for p in e.path), e.message))
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError) as e:
            # The command-line tool only warns here (exit 0): a misspelt kind or apiVersion would pass unchecked.
            report(False, what, e.message)
        except Exception as e:  # A resource without kind/apiVersion, an unsupported version...
            report(False, what, "%s: %s" % (type(e).__name__, getattr(e, "message", e)))


def pod_specs(resources):
    """(name, pod template labels, pod spec) for every workload."""
    for _, res in resources:
        spec = res.get("spec") or {}
        if res.get("kind") == "Pod":
            yield res["metadata"]["name"], res["metadata"].get("labels", {}), spec
        elif "template" in spec:
            tmpl = spec["template"]
            yield res["metadata"]["name"], tmpl.get("metadata", {}).get("labels", {}), tmpl.get("spec", {})


def env_of(container):
    return {e["name"]: str(e.get("value", "")) for e in container.get("env", []) if "value" in e}


def server_ports(env):
    """{container port number: 'PORT' or 'ADMIN_PORT'}: the ports the server listens on with this environment."""
    ports = {}
    for var, default in DEFAULT_PORTS.items():
        number = int(env.get(var, default))
        if number:  # ADMIN_PORT=0 turns the admin listener off.
            ports[number] = var
    return ports


def resolve(port, container):
    """A probe's or Service's port (a name or a number) -> the container port number, or None."""
    for p in container.get("ports", []):
        if port in (p.get("name"), p["containerPort"]):
            return p["containerPort"]
    return port if isinstance(port, int) else None


def probes(name, container):
    """(label, httpGet-or-tcpSocket dict, timeoutSeconds) for every probe and HTTP lifecycle hook."""
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        probe = container.get(kind)
        if not probe:
            report(False, "%s has a %s" % (name, kind), "missing")
            continue
        missing = [k for k in ("timeoutSeconds", "periodSeconds", "failureThreshold") if k not in probe]
        report(not missing, "%s %s sets its timing explicitly" % (name, kind),
               "missing " + ", ".join(missing))
        yield kind, probe, probe.get("timeoutSeconds", 1)
    for hook, handler in (container.get("lifecycle") or {}).items():
        if "httpGet" in handler or "tcpSocket" in handler:
            yield hook, handler, 1


def check_grace_period(name, spec, container, env):
    """Kubernetes sends SIGKILL at terminationGracePeriodSeconds, counted from deletion, preStop included."""
    pre_stop = ((container.get("lifecycle") or {}).get("preStop") or {}).get("sleep", {}).get("seconds", 0)
    drain, shutdown = int(env.get("DRAIN_SECONDS", 0)), env.get("SHUTDOWN_TIMEOUT")
    grace = spec.get("terminationGracePeriodSeconds", 30)
    if shutdown is None:
        return report(False, "%s sets SHUTDOWN_TIMEOUT" % name, "needed to check the grace period")
    need = pre_stop + drain + int(shutdown)
    report(grace >= need, "%s grace period %d s >= preStop %d + DRAIN_SECONDS %d + SHUTDOWN_TIMEOUT %s = %d s" % (
        name, grace, pre_stop, drain, shutdown, need), "requests in flight would be killed")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, headers, timeout):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def poll(port, path, headers, timeout, deadline, alive):
    """GET until the answer is no longer 503 (starting) and the port accepts; then time one more GET."""
    while alive():
        try:
            status, _ = get(port, path, headers, timeout)
            if status != 503 or time.monotonic() > deadline:
                break
        except OSError as e:
            if time.monotonic() > deadline:
                return None, 0, "%s: %s" % (type(e).__name__, e)
        time.sleep(0.1)
    else:
        return None, 0, "the server exited"
    start = time.monotonic()
    try:
        status, _ = get(port, path, headers, timeout)
    except OSError as e:
        return None, time.monotonic() - start, "%s: %s" % (type(e).__name__, e)
    return status, time.monotonic() - start, ""


def check_against_server(name, labels, container, services):
    env = env_of(container)
    listening = server_ports(env)  # Manifest port number -> the variable that sets it.
    for p in container.get("ports", []):
        report(p["containerPort"] in listening, "%s containerPort %s (%s) is a port the server listens on" % (
            name, p["containerPort"], p.get("name", "unnamed")), "the server listens on %s" % sorted(listening))
    targets = []  # (label, manifest port, path or None for TCP, headers, timeout)
    for label, probe, timeout in probes(name, container):
        handler = probe.get("httpGet") or probe.get("tcpSocket")
        if handler is None:
            report(False, "%s %s can be checked" % (name, label), "only httpGet and tcpSocket are checked")
            continue
        if probe.get("httpGet", {}).get("scheme", "HTTP") != "HTTP":
            report(False, "%s %s uses plain HTTP" % (name, label), "the server speaks no TLS")
            continue
        headers = {h["name"]: h["value"] for h in handler.get("httpHeaders", [])}
        targets.append((label, handler["port"], handler.get("path") if "httpGet" in probe else None, headers, timeout))
    for svc in services:
        selector = svc["spec"].get("selector", {})
        if not selector or any(labels.get(k) != v for k, v in selector.items()):
            continue
        for sp in svc["spec"].get("ports", []):
            number = resolve(sp.get("targetPort", sp["port"]), container)
            report(listening.get(number) == "PORT", "Service %s port %s goes to the main port" % (
                svc["metadata"]["name"], sp["port"]),
                "targetPort %r is %s" % (sp.get("targetPort"), listening.get(number, "not a server port")))
            annotations = svc["metadata"].get("annotations", {})
            path = annotations.get(ALB_HEALTHCHECK)
            if path:  # The ALB health-checks the traffic port unless the annotation names another.
                check_port = annotations.get(ALB_HEALTHCHECK_PORT, "traffic-port")
                check_port = number if check_port == "traffic-port" else int(check_port)
                targets.append(("Service %s ELB health check" % svc["metadata"]["name"], check_port, path, {}, 2))

    real = {number: free_port() for number in listening}  # Manifest port -> a free loopback port for this run.
    run_env = {**os.environ, **env, "HOST": "127.0.0.1", "PYTHONDONTWRITEBYTECODE": "1"}
    for number, var in listening.items():
        run_env[var] = str(real[number])
    log = tempfile.TemporaryFile()
    server = subprocess.Popen([sys.executable, "run.py"], cwd=ROOT, env=run_env, stdout=log, stderr=subprocess.STDOUT,
                              stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + START_DEADLINE
        for label, port, path, headers, timeout in targets:
            number = resolve(port, container)
            what = "%s %s %s on port %r" % (name, label, path or "(TCP)", port)
            if number not in listening:
                report(False, what, "port %r is not one the server listens on %s" % (port, sorted(listening)))
                continue
            if path is None:
                try:
                    socket.create_connection(("127.0.0.1", real[number]), timeout=timeout).close()
                    report(True, what)
                except OSError as e:
                    report(False, what, str(e))
                continue
            status, took, error = poll(real[number], path, headers, timeout, deadline,
                                        lambda: server.poll() is None)
            report(status == 200 and took < timeout, what + " answers 200 within %s s" % timeout,
                   error or "got %s in %.3f s" % (status, took))
        if int(env.get("DRAIN_SECONDS", 0)) and server.poll() is None:
            check_draining(name, server, [(label, real[resolve(port, container)], path, headers, timeout)
                                          for label, port, path, headers, timeout in targets
                                          if path and resolve(port, container) in real
                                          and not label.startswith(("startup", "pre", "post"))])
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)  # Not a drain test: the manifest's DRAIN_SECONDS would only slow CI.
        server.wait(10)
        if results["failed"]:
            log.seek(0)
            tail = log.read().decode(errors="replace").strip().splitlines()[-15:]
            print("  server output (exit %s):\n    " % server.returncode + "\n    ".join(tail), flush=True)
        log.close()


def check_draining(name, server, targets):
    """After SIGTERM, while DRAIN_SECONDS run: readiness 503 (balancers deregister the pod), liveness still 200
    (the kubelet keeps running liveness probes during the grace period and would kill a pod that fails them)."""
    os.kill(server.pid, signal.SIGTERM)
    for label, port, path, headers, timeout in targets:
        want = 503 if label.startswith("readiness") or "health check" in label else 200
        deadline, status = time.monotonic() + 2, None
        while time.monotonic() < deadline and status != want:
            try:
                status, _ = get(port, path, headers, timeout)
            except OSError as e:
                status = "%s: %s" % (type(e).__name__, e)
            time.sleep(0.05)
        report(status == want, "%s while draining after SIGTERM: %s %s answers %s" % (name, label, path, want),
               "got %s" % status)


def self_test(manifest_dir):
    """Break a copy of the manifests three ways: each must fail the check with a FAIL line that names the break."""
    breaks = [
        # (what, text in the manifests, its broken form, the word the FAIL line must name)
        ("a probe path the server does not answer", "path: /healthcheck/live", "path: /healthz", "/healthz"),
        ("a probe port the server does not listen on", "port: admin", "port: 9999", "9999"),
        ("an unknown field", "failureThreshold: 30", "failureThreshhold: 30", "failureThreshhold"),
    ]
    for what, old, new, culprit in breaks:
        with tempfile.TemporaryDirectory() as tmp:
            changed = False
            for path in glob.glob(os.path.join(manifest_dir, "*.y*ml")):
                with open(path) as f:
                    text = f.read()
                changed |= old in text
                with open(os.path.join(tmp, os.path.basename(path)), "w") as f:
                    f.write(text.replace(old, new, 1))
            if not changed:
                report(False, "self-test: %s is caught" % what, "%r not found in the manifests" % old)
                continue
            child = subprocess.Popen([sys.executable, __file__, "--no-self-test", tmp], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
            try:
                out, _ = child.communicate(timeout=2 * START_DEADLINE + 30)
            finally:
                if child.poll() is None:  # Time-out or SIGTERM: the child stops its own server on SIGTERM.
                    os.killpg(child.pid, signal.SIGTERM)
                    child.wait(10)
            failed = [line for line in out.splitlines() if line.startswith("FAIL") and culprit in line]
            report(child.returncode != 0 and bool(failed), "self-test: %s is caught" % what,
                   "exit %s, no FAIL line naming %r" % (child.returncode, culprit))
            if failed:
                print("  (it said: %s)" % failed[0], flush=True)


def main(argv):
    self_testing = "--no-self-test" not in argv
    args = [a for a in argv if not a.startswith("--")]
    manifest_dir = args[0] if args else os.path.join(ROOT, "k8s")
    resources = load(manifest_dir)
    validate(resources)
    services = [r for _, r in resources if r.get("kind") == "Service"]
    for name, labels, spec in pod_specs(resources):
        for container in spec.get("containers", []):
            where = "%s/%s" % (name, container["name"])
            check_grace_period(where, spec, container, env_of(container))
            check_against_server(where, labels, container, services)
    if self_testing:
        self_test(manifest_dir)
    print("%d passed, %d failed" % (results["passed"], results["failed"]), flush=True)
    return 1 if results["failed"] or not results["passed"] else 0


if __name__ == "__main__":
    # A time-out's SIGTERM unwinds like an exception, so every `finally` stops the servers this check started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit("FAIL k8s check stopped by SIGTERM"))
    try:
        sys.exit(main(sys.argv[1:]))
    except Exception as error:  # A manifest shaped in a way this check did not expect: say so, never pass.
        report(False, "k8s check ran to the end", "%s: %s" % (type(error).__name__, error))
        print("%d passed, %d failed" % (results["passed"], results["failed"]), flush=True)
        raise
