"""Start each server on loopback in turn, drive it with wrk, stop it, print one Markdown table.

Run it through bench/run.sh, which installs wrk and bench/.venv first (`bench/run.sh --help`).
Servers alternate in rounds (A B C ... A B C ...) and medians are reported, so one noisy
moment on a small machine does not decide a row.
"""
import argparse
import http.client
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
APPS = os.path.join(BENCH, "apps")
VENV_BIN = os.path.dirname(sys.executable)
sys.path.insert(0, APPS)
from content import HEALTH_BODY  # noqa: E402  (the apps folder is on the path only now)

PATHS = ["/", "/healthcheck", "/logo.png"]
REFERENCE, CEILING = "2017", "uvicorn-asgi"
OPT_IN = ["template-2w", "cherrypy-floor"]  # run only when named in --servers
# Shown side by side, but not among the targets for the template (they came later).
COMPARED_ONLY = ["flask-granian", "fastapi-uvicorn"]
# gunicorn's gthread worker gets as many threads as the template's pool (THREAD_POOL=100), so both
# can hold the same number of slow requests at once: the property the template keeps its pool for.
GTHREADS = 100


NOTES = """\
- req/s, p50, p99, RSS: medians over rounds; RSS is the server's whole process group after that row's load.
- socket errors c/r/w/t: connect/read/write/timeout from the worst round; a timeout is an answer slower
  than wrk's `--timeout` and is left out of p50/p99. non-2xx: answers ≥ 400 as wrk counts them (each
  path is first checked to answer 200 with the right body). × 2017 and × ceiling: req/s ratios at the
  same path and connections.
- k instr/req: thousands of CPU instructions (user and kernel, all of the server's processes, via
  `perf stat`) per answered request, median over rounds. It measures work per request and hardly
  moves with other load on the machine, unlike req/s; "–" where perf cannot count.
- template: `python run.py` as shipped (HOST=127.0.0.1, ADMIN_PORT=0). 2017: `cherrypy.quickstart`,
  `server.thread_pool` 100, all else default (access log to the screen, autoreload on); its health
  answer is at `/healthcheck/` (the bare path answers 301). http.server: `ThreadingHTTPServer` with
  `BaseHTTPRequestHandler` defaults (HTTP/1.0, backlog 5). flask-dev: `flask run`. gunicorn: 1 worker,
  sync, or gthread with %d threads (the template's pool size). waitress: `waitress-serve` defaults
  (4 threads). flask-granian: the same Flask app under `granian --interface wsgi`, 1 worker, granian's
  defaults (1 Rust runtime thread, 512 blocking threads for Python, no access log). fastapi-uvicorn: a
  FastAPI app (`async def` handlers) under `uvicorn --workers 1`, uvicorn's defaults: httptools + uvloop
  (picked when installed, as by `uvicorn[standard]`), access log on like the template's. These two are
  shown, not targets. uvicorn-asgi: httptools + uvloop, no access log, no framework. cherrypy-floor (opt-in):
  the template's server with no per-request extras (no access log, headers, gzip, encode), the least
  any CherryPy configuration costs here.""" % GTHREADS


def server_specs(port):
    """name -> how to start it on `port`; every one serves `/`, `/healthcheck` and `/logo.png`."""
    def venv(tool, *args):
        return [os.path.join(VENV_BIN, tool), *args]
    listen = "127.0.0.1:%d" % port
    flask_app = "flask_app:app"
    return {
        # This template as shipped; the admin listener is off so only the main port is measured.
        "template": dict(cmd=[sys.executable, "run.py"], cwd=ROOT,
                         env={"PORT": str(port), "HOST": "127.0.0.1", "ADMIN_PORT": "0"}),
        # Opt-in (not in the default list): the template with two server processes sharing the port.
        "template-2w": dict(cmd=[sys.executable, "run.py"], cwd=ROOT,
                            env={"PORT": str(port), "HOST": "127.0.0.1", "ADMIN_PORT": "0", "WORKERS": "2"}),
        # Opt-in: the template's server with none of its per-request extras; what CherryPy costs at least.
        "cherrypy-floor": dict(cmd=[sys.executable, "cherrypy_floor.py", str(port)]),
        # The 2017 blog template: its sub-handler answers 200 only at /healthcheck/ (else a 301).
        REFERENCE: dict(cmd=[sys.executable, "cherrypy_2017.py", str(port)],
                        paths={"/healthcheck": "/healthcheck/"}),
        "http.server": dict(cmd=[sys.executable, "stdlib_server.py", str(port)]),
        "flask-dev": dict(cmd=[sys.executable, "-m", "flask", "--app", flask_app, "run",
                               "--host", "127.0.0.1", "--port", str(port)]),
        "gunicorn-sync": dict(cmd=venv("gunicorn", "--workers", "1", "--bind", listen, flask_app)),
        "gunicorn-gthread": dict(cmd=venv("gunicorn", "--workers", "1", "--worker-class", "gthread",
                                          "--threads", str(GTHREADS), "--bind", listen, flask_app)),
        "waitress": dict(cmd=venv("waitress-serve", "--listen=" + listen, flask_app)),
        # The same Flask app on granian's Rust HTTP server; its defaults give 512 threads for Python.
        "flask-granian": dict(cmd=venv("granian", "--interface", "wsgi", "--workers", "1",
                                       "--host", "127.0.0.1", "--port", str(port), flask_app)),
        # FastAPI as its docs deploy it: uvicorn's defaults, so httptools, uvloop and the access log.
        "fastapi-uvicorn": dict(cmd=venv("uvicorn", "--workers", "1", "--host", "127.0.0.1",
                                         "--port", str(port), "fastapi_app:app")),
        # The ceiling: uvicorn at its fastest (httptools + uvloop, no access log) and no framework.
        CEILING: dict(cmd=venv("uvicorn", "--host", "127.0.0.1", "--port", str(port),
                               "--no-access-log", "--log-level", "warning", "asgi_app:app")),
    }


class Server:
    """One running server in its own process group, so stopping it stops its workers too."""

    def __init__(self, name, spec, port, logdir):
        self.name, self.port = name, port
        self.paths = spec.get("paths", {})
        self.log = open(os.path.join(logdir, name + ".log"), "ab")
        env = dict(os.environ, PYTHONPATH=APPS, **spec.get("env", {}))
        self.started = time.monotonic()
        self.proc = subprocess.Popen(spec["cmd"], cwd=spec.get("cwd", APPS), env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True)

    def url_path(self, path):
        return self.paths.get(path, path)

    def get(self, path, timeout=2.0):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", self.url_path(path))
            resp = conn.getresponse()
            return resp.status, resp.getheader("Content-Type", ""), resp.read()
        finally:
            conn.close()

    def wait_healthy(self, limit=30.0):
        """Seconds from process start to the first 200 on /healthcheck."""
        while time.monotonic() - self.started < limit:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s before answering" % (self.name, self.proc.returncode))
            try:
                if self.get("/healthcheck", timeout=1.0)[0] == 200:
                    return time.monotonic() - self.started
            except OSError:
                pass
            time.sleep(0.005)
        raise RuntimeError("%s did not answer 200 on /healthcheck within %ss" % (self.name, limit))

    def wait_all_ready(self, in_a_row=20, limit=10.0):
        """With several processes on one port (WORKERS, SO_REUSEPORT) the first 200 comes from
        one of them: wait until fresh connections get 200 `in_a_row` times before loading."""
        deadline, ok = time.monotonic() + limit, 0
        while ok < in_a_row and time.monotonic() < deadline:
            ok = ok + 1 if self.get("/healthcheck")[0] == 200 else 0
            time.sleep(0 if ok else 0.01)

    def check(self):
        """Each path answers 200 with the expected kind of body, before any load."""
        problems = []
        for path, ok in (("/", lambda t, b: t.startswith("text/html") and b"<html" in b.lower()),
                         ("/healthcheck", lambda t, b: b == HEALTH_BODY),
                         ("/logo.png", lambda t, b: t == "image/png" and b.startswith(b"\x89PNG"))):
            status, ctype, body = self.get(path)
            if status != 200 or not ok(ctype, body):
                problems.append("%s -> %s %s %r" % (path, status, ctype, body[:40]))
        return problems

    def pids(self):
        """Every process in the server's group (gunicorn's master and worker, WORKERS=N)."""
        group = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.getpgid(int(pid)) == self.proc.pid:
                    group.append(pid)
            except OSError:
                pass
        return group

    def rss_mb(self):
        """Resident memory of the server's whole process group."""
        total_kb = 0
        for pid in self.pids():
            try:
                with open("/proc/%s/status" % pid) as f:
                    total_kb += next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
            except (OSError, StopIteration):
                pass
        return total_kb / 1024.0

    def stop(self):
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=5)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                pass
        try:  # whatever is left of the group (a stuck worker) goes now
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.log.close()

    def log_tail(self):
        with open(self.log.name, "rb") as f:
            return f.read()[-1500:].decode("utf-8", "replace")


def perf_counts_instructions():
    """Whether `perf stat` can count CPU instructions here (some VMs and containers have no counters)."""
    if not shutil.which("perf"):
        return False
    out = subprocess.run(["perf", "stat", "-x,", "-e", "instructions", "--", "true"], capture_output=True, text=True)
    return out.returncode == 0 and bool(re.match(r"\d+,", (out.stderr.strip().splitlines() or [""])[-1]))


class InstructionCount:
    """CPU instructions (user and kernel) the server's processes execute while it runs, via perf.
    Unlike req/s, the count per request hardly moves when other work slows the machine down."""

    def __init__(self, pids):
        self.proc = subprocess.Popen(["perf", "stat", "-x,", "-e", "instructions", "-p", ",".join(pids)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(0.1)  # perf attaches to every thread before the load starts

    def stop(self):
        """The count so far, or None if perf could not count."""
        self.proc.send_signal(signal.SIGINT)
        err = self.proc.communicate(timeout=10)[1]
        match = re.search(r"^(\d+),[^,]*,instructions", err, re.M)
        return int(match.group(1)) if match else None


def wrk(url, conns, args):
    """One wrk run; returns wrk's summary (see report.lua)."""
    out = subprocess.run(["wrk", "-t%d" % min(args.threads, conns), "-c%d" % conns, "-d%ds" % args.duration,
                          "--timeout", "%ds" % args.timeout, "-s", os.path.join(BENCH, "report.lua"), url],
                         capture_output=True, text=True, timeout=args.duration + 60)
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError("wrk failed on %s: %s %s" % (url, out.stdout[-500:], out.stderr[-500:]))
    run = json.loads(lines[-1])
    run["rps"] = run["requests"] / (run["duration_us"] / 1e6)
    return run


def visit(name, spec, port, args, logdir, results):
    """One round for one server: start, time to healthy, check, load every path and level, stop."""
    server = Server(name, spec, port, logdir)
    try:
        startup = server.wait_healthy()
        server.wait_all_ready()
        problems = server.check()
        if problems:
            raise RuntimeError("%s serves the wrong thing: %s" % (name, "; ".join(problems)))
        results.setdefault((name, "startup"), []).append(startup)
        if not args.smoke:  # a short warm-up so first-request imports are not measured
            wrk("http://127.0.0.1:%d/" % port, args.conns[0], argparse.Namespace(**dict(vars(args), duration=1)))
        for conns in args.conns:
            for path in args.paths:
                counter = InstructionCount(server.pids()) if args.count_instructions else None
                try:
                    run = wrk("http://127.0.0.1:%d%s" % (port, server.url_path(path)), conns, args)
                finally:
                    instructions = counter and counter.stop()
                if instructions and run["requests"]:
                    run["kinstr"] = instructions / run["requests"] / 1e3
                run["rss_mb"] = server.rss_mb()
                results.setdefault((name, path, conns), []).append(run)
                time.sleep(0.3)  # let closed connections drain before the next level
    except Exception:
        sys.stderr.write("--- last lines of %s's log ---\n%s\n" % (name, server.log_tail()))
        raise
    finally:
        server.stop()


def median(runs, key):
    return statistics.median(r[key] for r in runs)


def table(args, results):
    """The Markdown table: medians over rounds; socket errors and non-2xx from the worst round."""
    rows = ["| path | conns | server | req/s | × 2017 | × ceiling | p50 ms | p99 ms "
            "| socket errors c/r/w/t | non-2xx | k instr/req | start-up ms | RSS MB |",
            "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|"]
    for path in args.paths:
        for conns in args.conns:
            ref = results.get((REFERENCE, path, conns))
            top = results.get((CEILING, path, conns))
            for name in args.servers:
                runs = results.get((name, path, conns))
                if not runs:
                    continue
                rps = median(runs, "rps")
                worst = max(runs, key=lambda r: r["connect"] + r["read"] + r["write"] + r["timeout"])
                # wrk reports 0 when every answer was a timeout: say "over the timeout" instead.
                ms = lambda key: "%.1f" % (median(runs, key) / 1e3) if median(runs, key) else "> %d000" % args.timeout
                counted = [r["kinstr"] for r in runs if "kinstr" in r]
                rows.append("| `%s` | %d | %s | %.0f | %s | %s | %s | %s | %d/%d/%d/%d | %d | %s | %.0f | %.0f |" % (
                    path, conns, name, rps,
                    "%.2f" % (rps / median(ref, "rps")) if ref else "–",
                    "%.2f" % (rps / median(top, "rps")) if top else "–",
                    ms("p50_us"), ms("p99_us"),
                    worst["connect"], worst["read"], worst["write"], worst["timeout"],
                    max(r["status"] for r in runs),
                    "%.0f" % statistics.median(counted) if counted else "–",
                    statistics.median(results[(name, "startup")]) * 1e3, median(runs, "rss_mb")))
    return "\n".join(rows)


def targets(args, results):
    """The issue's targets for the template, as plain lines (information only, unless --strict)."""
    lines, missed = [], 0

    def say(ok, text):
        nonlocal missed
        missed += not ok
        lines.append("- [%s] %s" % ("x" if ok else " ", text))
    get = lambda name, path, conns: results.get((name, path, conns))
    if ("template", "startup") not in results:
        return lines, 0
    if get("template", "/", 100):
        p99 = median(get("template", "/", 100), "p99_us") / 1e3
        say(p99 < 100, "p99 on `/` at 100 connections below 100 ms: %.1f ms" % p99)
    for conns in (c for c in args.conns if c >= 100):
        errs = sum(max(r["connect"] + r["read"] + r["write"] + r["timeout"] for r in get("template", p, conns))
                   for p in args.paths)
        say(errs == 0, "no socket errors or timeouts at %d connections: %d" % (conns, errs))
    # Opt-in rows are ours; COMPARED_ONLY rows are for reading side by side.
    peers = [n for n in args.servers if n not in ["template", CEILING] + OPT_IN + COMPARED_ONLY]
    for path in args.paths:
        for conns in args.conns:
            mine = median(get("template", path, conns), "rps")
            for peer in peers:
                if get(peer, path, conns):
                    need = 2.0 if peer == REFERENCE else 1.0
                    theirs = median(get(peer, path, conns), "rps")
                    if mine < need * theirs or args.verbose_targets:
                        say(mine >= need * theirs, "`%s` at %d: %.0f req/s vs %s %.0f (need ≥ %.0f×)" % (
                            path, conns, mine, peer, theirs, need))
    startup = statistics.median(results[("template", "startup")])
    say(startup < 1.0, "start-up to first healthy answer under 1 s: %.0f ms" % (startup * 1e3))
    return lines, missed


def profile(args, port, logdir):
    """py-spy samples the first chosen server while wrk drives it; prints its top functions."""
    name, conns, path = args.servers[0], args.conns[0], args.paths[0]
    server = Server(name, server_specs(port)[name], port, logdir)
    raw = os.path.join(logdir, "profile.txt")
    load = None
    try:
        server.wait_healthy()
        url = "http://127.0.0.1:%d%s" % (port, server.url_path(path))
        load = subprocess.Popen(["wrk", "-t%d" % args.threads, "-c%d" % conns, "-d%ds" % (args.duration + 2),
                                 "--timeout", "%ds" % args.timeout, "-s", os.path.join(BENCH, "report.lua"), url],
                                stdout=subprocess.PIPE, text=True)
        time.sleep(1)  # sample the steady state, not wrk's connection burst
        # --subprocesses follows workers if the server forks; --nonblocking reads stacks without
        # pausing 100 threads per sample (which halved throughput and the sample count); --gil keeps
        # only the thread holding the GIL (the serial Python work), not the 100 waiting for it.
        subprocess.run([os.path.join(VENV_BIN, "py-spy"), "record", "--pid", str(server.proc.pid),
                        "--duration", str(args.duration), "--rate", "200", "--format", "raw",
                        "--output", raw, "--subprocesses", "--nonblocking"] + ([] if args.all_threads else ["--gil"]),
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        run = json.loads(load.communicate()[0].splitlines()[-1])
    finally:
        if load and load.poll() is None:
            load.kill()
        server.stop()
    own, total, package, samples = {}, {}, {}, 0
    for line in open(raw):
        stack, _, count = line.rstrip().rpartition(" ")
        # "func (file.py:123)" -> "func (file.py)"; py-spy's "process N: cmd" root frames are dropped.
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";") if not f.startswith("process ")]
        if not frames:  # a sample that caught no Python frame
            continue
        samples += int(count)
        own[frames[-1]] = own.get(frames[-1], 0) + int(count)
        where = re.sub(r"^.*\((.*)\)$", r"\1", frames[-1]).split("/")[0]  # "cherrypy", "logging", ...
        package[where] = package.get(where, 0) + int(count)
        for frame in set(frames):
            total[frame] = total.get(frame, 0) + int(count)
    print("py-spy on `%s`%s: %d samples in %d s while wrk -c%d drove `%s` at %.0f req/s (p99 %.0f ms)\n" % (
        name, "" if args.all_threads else " (GIL holder only)", samples, args.duration, conns, path,
        run["requests"] / (run["duration_us"] / 1e6), run["p99_us"] / 1e3))
    for title, counts in (("own time (the function itself)", own), ("total time (with what it calls)", total),
                          ("own time by package or file", package)):
        print("| %% samples, %s | function (file) |\n|---:|---|" % title)
        for frame, n in sorted(counts.items(), key=lambda kv: -kv[1])[:args.top]:
            print("| %.1f | `%s` |" % (100.0 * n / max(samples, 1), frame))
        print()


def machine_line():
    model = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split(" [")[0]
    return "%d cores (nproc), %s, Python %s, Linux %s, %s; load average %.1f before the run, %.1f after" % (
        os.cpu_count(), model, platform.python_version(), platform.release(), wrk_version.strip(),
        LOAD_BEFORE, os.getloadavg()[0])


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run.sh", description=__doc__.splitlines()[0])
    p.add_argument("--servers", help="comma-separated, from: %s (default: all but %s; with --smoke: all)" % (
                       ", ".join(server_specs(0)), ", ".join(OPT_IN)))
    p.add_argument("--conns", default="10,100,1000", help="concurrent connections, comma-separated")
    p.add_argument("--paths", default=",".join(PATHS), help="comma-separated paths")
    p.add_argument("--duration", type=int, default=3, help="seconds per wrk run (default 3: longer than "
                   "--timeout, so a starved connection shows up as a timeout)")
    p.add_argument("--rounds", type=int, default=3, help="rounds over all servers (default 3)")
    p.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    p.add_argument("--timeout", type=int, default=1, help="seconds after which wrk counts a response as a "
                   "timeout (default 1: Kubernetes' default probe timeout)")
    p.add_argument("--base-port", type=int, default=18200, help="first port; each server gets its own")
    p.add_argument("--json", help="also write every raw wrk result to this file")
    p.add_argument("--smoke", action="store_true", help="seconds-long check that every server runs: "
                   "1 round, 10 connections, 1 s, no thresholds")
    p.add_argument("--profile", action="store_true", help="py-spy the first server under load instead "
                   "(bench/profile.sh)")
    p.add_argument("--all-threads", action="store_true", help="with --profile: sample every thread, "
                   "waiting ones too (default: only the GIL holder)")
    p.add_argument("--top", type=int, default=15, help="with --profile: functions to list")
    p.add_argument("--strict", action="store_true", help="exit 1 when the template misses a target")
    p.add_argument("--verbose-targets", action="store_true", help="list met throughput targets too")
    args = p.parse_args(argv)
    if args.servers is None:  # the smoke run checks the opt-in rows still start, too
        args.servers = ",".join(n for n in server_specs(0) if args.smoke or n not in OPT_IN)
    if args.smoke:
        args.conns, args.duration, args.rounds = "10", 1, 1
    args.servers = [s for s in args.servers.split(",") if s]
    args.conns = [int(c) for c in str(args.conns).split(",")]
    args.paths = args.paths.split(",")
    unknown = set(args.servers) - set(server_specs(0))
    if unknown:
        p.error("unknown servers: %s" % ", ".join(sorted(unknown)))
    if not os.path.exists(os.path.join(ROOT, "run.py")):
        print("note: no run.py at the project root yet; the template rows are skipped", file=sys.stderr)
        args.servers = [s for s in args.servers if not s.startswith("template") and s != "cherrypy-floor"]
    if not args.servers:
        p.error("no server to run")
    args.count_instructions = perf_counts_instructions()
    return args


def main(argv):
    global LOAD_BEFORE
    LOAD_BEFORE = os.getloadavg()[0]  # other work on the machine makes every figure lower
    args = parse_args(argv)
    # SIGTERM and SIGHUP unwind like Ctrl-C, so the `finally` below stops the server in flight.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda *_: sys.exit(130))
    ports = {name: args.base_port + i for i, name in enumerate(server_specs(0))}
    logdir = tempfile.mkdtemp(prefix="bench-logs-")
    results, began = {}, time.monotonic()
    try:
        if args.profile:
            return profile(args, ports[args.servers[0]], logdir)
        for rnd in range(1, args.rounds + 1):
            for name in args.servers:
                print("round %d/%d: %s" % (rnd, args.rounds, name), file=sys.stderr, flush=True)
                visit(name, server_specs(ports[name])[name], ports[name], args, logdir, results)
    finally:
        shutil.rmtree(logdir, ignore_errors=True)
    elapsed = time.monotonic() - began
    print("Command: `bench/run.sh %s`  " % " ".join(argv))
    print("Machine: %s  " % machine_line())
    print("Took %.0f s: %d round(s) × %d server(s), wrk -t%d -d%ds --timeout %ds per row and round; "
          "medians over rounds, errors from the worst round.\n" % (
              elapsed, args.rounds, len(args.servers), args.threads, args.duration, args.timeout))
    print(table(args, results))
    print("\n" + NOTES)
    lines, missed = targets(args, results)
    if lines and not args.smoke:
        print("\nTemplate against the issue's targets:\n" + "\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"|".join(map(str, k)): v for k, v in results.items()}, f, indent=1)
    return 1 if (args.strict and missed) else 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:  # the servers were already stopped by the `finally` blocks
        sys.exit("interrupted")
