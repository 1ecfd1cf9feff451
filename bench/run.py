#!/usr/bin/env python3
"""wfctl's benchmark suite: what the engine itself costs, next to the work it runs.

    python bench/run.py                      # every scenario, R = 5, every tool installed
    python bench/run.py --quick              # tiny sizes, R = 1 (the CI smoke run)
    python bench/run.py --only chain-command --only floor --repeat 9
    python bench/run.py --tools wfctl,doit --json /tmp/results.json

Scenarios (for wfctl and, when they can be imported, doit and Prefect 3):

  chain-command  a chain of N `true` command steps, N = 100, 1,000
  chain-python   a chain of N in-process no-op steps (`python:` agent), N = 100, 1,000, 10,000
  fanout         200 `true` steps in a parallel step with maxConcurrency 2
  loop           a loop over 10,000 items with an in-process no-op body
  startup        `wfctl --version`, `--help`, `list --json` of 1,000 workflows,
                 `execution --json` of a 10,000-step execution; `python -c pass`
  floor          subprocess.run of `true` with and without a shell, in a row and on
                 2 threads, and a no-op Python call: the cost of the work with no engine

Every measured command is started by a tiny wrapper process (python -I -S) that times it
with time.perf_counter around posix_spawn and os.wait4 and reads its peak RSS from the
rusage wait4 returns.
Each measurement is repeated R times, rounds alternating the tools, and medians are
reported. Each run gets a fresh copy of a prepared WFCTL_HOME (the workflow already
registered with `wfctl create`), so `wfctl execute NAME -q` times the run alone.

The suite itself needs only the standard library (and wfctl for wfctl's rows). doit and
Prefect are optional (`pip install -e '.[bench]'`, or `--peer-python` naming the Python of
another environment that has them); rows of a tool that is not installed say so.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
SCENARIOS = ("chain-command", "chain-python", "fanout", "loop", "startup", "floor")
TOOLS = ("wfctl", "doit", "prefect")

# Sizes: the (full) and the smoke run's (quick).
FULL = {
    "chain-command": [100, 1000],
    "chain-python": [100, 1000, 10000],
    "fanout": 200,
    "fanout-width": 2,
    "loop": 10000,
    "list-workflows": 1000,
    "execution-steps": 10000,
    "noop-calls": 10000,
}
QUICK = {
    "chain-command": [4],
    "chain-python": [4, 12],
    "fanout": 6,
    "fanout-width": 2,
    "loop": 8,
    "list-workflows": 3,
    "execution-steps": 12,
    "noop-calls": 1000,
}

CHEAP_FACTOR = 3  # cheap runs are repeated this many times as often (see Suite.run)
TARGETS_NOTE = "targets apply to the issue's sizes; a --quick run's verdicts are not meaningful"


# -- measuring one child process ---------------------------------------------------------------
@dataclass
class Sample:
    round: int
    wall_s: float
    rss_mb: float
    rc: int
    inner_s: float | None = None
    inner_1_s: float | None = None  # Prefect: the same flow with 1 task, in the same process
    error: str | None = None


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except OSError:
        pass


# The measured command is started by this small wrapper, not by the suite itself: a child's
# ru_maxrss starts at the RSS of the process that spawned it (Linux keeps the high-water mark
# across fork/vfork and exec), so a spawner as big as this script would hide every process
# smaller than itself. The wrapper (python -I -S, a few MB) also does the timing, so its own
# start-up is not counted.
WRAPPER = r"""
import json, os, signal, sys, time
out, cmd = sys.argv[1], sys.argv[2:]
spawn = os.posix_spawn if os.sep in cmd[0] else os.posix_spawnp
start = time.perf_counter()
pid = spawn(cmd[0], cmd, os.environ, setsigdef=(signal.SIGPIPE, signal.SIGXFSZ))
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
with open(out, "w") as handle:
    json.dump({"wall": wall, "maxrss_kb": usage.ru_maxrss, "rc": os.waitstatus_to_exitcode(status)}, handle)
"""


def measure(cmd: list[str], env: dict[str, str], cwd: Path, timeout: float) -> tuple[float, float, int, str]:
    """Run `cmd`; return (wall seconds, peak RSS MB, exit code, stderr tail when it failed).

    Wall time is spawn to exit; peak RSS is `ru_maxrss` of the rusage wait4 returns for the
    command: the largest resident set of the command or of any descendant it waited for (a
    maximum, not a sum).
    """
    with tempfile.TemporaryFile() as errors, tempfile.TemporaryDirectory() as scratch:
        result = Path(scratch) / "measure.json"
        proc = subprocess.Popen(
            [sys.executable, "-I", "-S", "-c", WRAPPER, str(result), *cmd],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=errors,
            start_new_session=True,  # one process group: a timeout kills the command's whole tree
        )
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            proc.wait()
            timed_out = True
        try:
            measured = json.loads(result.read_text())
            wall, rss, rc = measured["wall"], measured["maxrss_kb"] / 1024.0, measured["rc"]
        except (OSError, ValueError, KeyError):
            wall, rss, rc = float("nan"), float("nan"), proc.returncode or -1
        tail = ""
        if rc != 0 or timed_out:
            rc = rc or -signal.SIGKILL
            errors.seek(0)
            tail = errors.read()[-3000:].decode("utf-8", "replace")
            if timed_out:
                tail = f"killed after the {timeout:.0f} s timeout\n" + tail
    return wall, rss, rc, tail


def run_checked(cmd: list[str], env: dict[str, str], cwd: Path, what: str, timeout: float) -> str:
    """An untimed set-up command; its stdout, or an exception naming what failed."""
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {done.returncode}): {' '.join(map(str, cmd))}\n{done.stderr[-3000:]}")
    return done.stdout


# -- cases -------------------------------------------------------------------------------------
@dataclass
class Case:
    """One command measured R times."""

    scenario: str
    tool: str  # wfctl, doit, prefect, python (floors and `python -c pass`)
    label: str
    n: int
    command: Callable[[Path, Path], tuple[list[str], dict[str, str], Path]]  # (case dir, run dir)
    setup: Callable[[Path], None] | None = None
    inner: bool = False  # the child writes {"seconds": s} to <run dir>/inner.json
    order: int = 0
    samples: list[Sample] = field(default_factory=list)
    setup_error: str | None = None
    display: str = ""

    @property
    def key(self) -> str:
        return f"{self.scenario}|{self.tool}|{self.label}|{self.n}"

    def ok_samples(self) -> list[Sample]:
        return [s for s in self.samples if s.rc == 0]

    def median(self, attr: str) -> float | None:
        values = [getattr(s, attr) for s in self.ok_samples() if getattr(s, attr) is not None]
        return statistics.median(values) if values else None


class Suite:
    def __init__(self, options: argparse.Namespace) -> None:
        self.options = options
        self.sizes = QUICK if options.quick else FULL
        self.factor = 1 if options.quick else CHEAP_FACTOR
        self.work = Path(tempfile.mkdtemp(prefix="wfctl-bench-"))
        self.cases: list[Case] = []
        self.wfctl = resolve_wfctl(options.wfctl)
        self.peer_python = options.peer_python or sys.executable
        self.available: dict[str, str | None] = {}  # tool -> version, None when not installed
        self.not_installed: dict[str, str] = {}
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("WFCTL_", "PREFECT_"))}
        self.base_env.pop("PYTHONPATH", None)
        self.load_at_start = os.getloadavg() if hasattr(os, "getloadavg") else None
        self.commit_at_start = source_commit()

    # -- tools -------------------------------------------------------------------------------
    def detect_tools(self) -> None:
        for tool in self.options.tools:
            if tool == "wfctl":
                try:
                    out = run_checked(self.wfctl + ["--version"], self.base_env, self.work, "wfctl --version", 60)
                    self.available["wfctl"] = out.strip().removeprefix("wfctl ").strip()
                except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
                    raise SystemExit(f"bench: cannot run wfctl ({' '.join(self.wfctl)}): {err}")
                continue
            module = {"doit": "doit", "prefect": "prefect"}[tool]
            probe = subprocess.run(
                [self.peer_python, "-c", f"import importlib.metadata as m, {module}; print(m.version({module!r}))"],
                capture_output=True,
                text=True,
                env=self.base_env,
                cwd=self.work,
            )
            if probe.returncode == 0:
                self.available[tool] = probe.stdout.strip()
            else:
                self.available[tool] = None
                self.not_installed[tool] = f"not importable by {self.peer_python}"

    def peer_script(self, name: str) -> list[str]:
        """The console script `name` next to the peer Python, else `python -m name`."""
        script = Path(self.peer_python).parent / name
        if script.exists():
            return [str(script)]
        return [self.peer_python, "-m", name]

    # -- environments --------------------------------------------------------------------------
    def wfctl_env(self, home: Path, config: Path) -> dict[str, str]:
        env = dict(self.base_env)
        # wfctl runs from compiled bytecode, as an installed package does: an editable
        # install under PYTHONDONTWRITEBYTECODE would compile every module on every run
        # (~70 ms). The bytecode goes to a private cache, never into the source tree.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(self.work / "pycache")
        env["WFCTL_HOME"] = str(home)
        env["WFCTL_CONFIG"] = str(config)
        env["PYTHONPATH"] = str(BENCH_DIR)  # noop_agent
        env["NO_COLOR"] = "1"
        return env

    def prefect_env(self, home: Path) -> dict[str, str]:
        env = dict(self.base_env)
        env.update(
            PREFECT_HOME=str(home),
            PREFECT_LOGGING_LEVEL="WARNING",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
            PYTHONPATH=str(BENCH_DIR),
        )
        return env

    # -- building the cases ----------------------------------------------------------------
    def add(self, case: Case) -> Case:
        case.order = len(self.cases)
        self.cases.append(case)
        return case

    def wfctl_run_case(self, scenario: str, label: str, n: int, definition: dict) -> Case:
        name = definition["name"]

        def setup(case_dir: Path) -> None:
            path = case_dir / f"{name}.json"
            path.write_text(json.dumps(definition, separators=(",", ":")), encoding="utf-8")
            env = self.wfctl_env(case_dir / "home", case_dir / "config.toml")
            run_checked(self.wfctl + ["create", str(path)], env, case_dir, f"wfctl create {path.name}", 600)

        def command(case_dir: Path, run_dir: Path):
            home = run_dir / "home"
            shutil.copytree(case_dir / "home", home, symlinks=True)
            return self.wfctl + ["execute", name, "-q"], self.wfctl_env(home, case_dir / "config.toml"), run_dir

        return self.add(Case(scenario, "wfctl", label, n, command, setup, display=f"wfctl execute {name} -q"))

    def doit_run_case(self, scenario: str, label: str, n: int, kind: str, chain: bool, jobs: int = 1) -> Case:
        def setup(case_dir: Path) -> None:
            (case_dir / "dodo.py").write_text(DODO.format(n=n, kind=kind, chain=chain), encoding="utf-8")

        extra = ["-n", str(jobs), "-P", "thread"] if jobs > 1 else []

        def command(case_dir: Path, run_dir: Path):
            cmd = self.peer_script("doit") + ["-f", str(case_dir / "dodo.py"), "--backend", "json",
                                              "--db-file", str(run_dir / "doit-db.json")] + extra
            return cmd, dict(self.base_env), run_dir

        display = "doit -f dodo.py --backend json" + (f" -n {jobs} -P thread" if jobs > 1 else "")
        return self.add(Case(scenario, "doit", label, n, command, setup, display=display))

    def prefect_run_case(self, scenario: str, label: str, n: int, kind: str) -> Case:
        shared = self.work / "prefect"

        def setup(case_dir: Path) -> None:
            # once per session: the flow script and a Prefect home whose database exists,
            # as on a machine where Prefect has run before
            if (shared / "ready").exists():
                return
            shared.mkdir(exist_ok=True)
            (shared / "flow.py").write_text(PREFECT_FLOW, encoding="utf-8")
            run_checked([self.peer_python, str(shared / "flow.py"), "noop", "1", str(shared / "warm.json")],
                        self.prefect_env(shared / "prefect-home"), shared, "Prefect warm-up flow", 900)
            (shared / "ready").touch()

        def command(case_dir: Path, run_dir: Path):
            home = run_dir / "prefect-home"
            shutil.copytree(shared / "prefect-home", home, symlinks=True)
            cmd = [self.peer_python, str(shared / "flow.py"), kind, str(n), str(run_dir / "inner.json")]
            return cmd, self.prefect_env(home), run_dir

        return self.add(Case(scenario, "prefect", label, n, command, setup, inner=True,
                             display=f"python flow.py {kind} N"))

    def floor_case(self, label: str, kind: str, n: int) -> Case:
        def command(case_dir: Path, run_dir: Path):
            return [sys.executable, str(BENCH_DIR / "floor.py"), kind, str(n), str(run_dir / "inner.json")], \
                dict(self.base_env), run_dir

        return self.add(Case("floor", "python", label, n, command, inner=True, display=f"python bench/floor.py {kind} {n}"))

    def build(self) -> None:
        selected = self.options.only or list(SCENARIOS)
        s = self.sizes
        tools = [t for t in self.options.tools]
        noop_agents = {"noop": {"python": "noop_agent:noop"}}

        def chain(name: str, n: int, python: bool) -> dict:
            step = {"agent": "noop"} if python else {"run": "true"}
            definition: dict[str, Any] = {"name": name, "steps": [{"id": f"s{i}", **step} for i in range(n)]}
            if python:
                definition["agents"] = noop_agents
            return definition

        for scenario in selected:
            if scenario in ("chain-command", "chain-python"):
                python = scenario == "chain-python"
                label = "chain python no-op" if python else "chain `true`"
                for n in [1] + s[scenario]:
                    for tool in tools:
                        if tool == "wfctl":
                            self.wfctl_run_case(scenario, label, n, chain(f"{scenario}-{n}", n, python))
                        elif tool == "doit":
                            self.doit_run_case(scenario, label, n, "py" if python else "cmd", chain=True)
                        elif tool == "prefect":
                            self.prefect_run_case(scenario, label, n, "noop" if python else "cmd")
            elif scenario == "fanout":
                width = s["fanout-width"]
                label = f"parallel `true`, {width} at once"
                for n in (1, s["fanout"]):
                    for tool in tools:
                        if tool == "wfctl":
                            definition = {"name": f"fanout-{n}", "steps": [{
                                "id": "fan", "type": "parallel", "maxConcurrency": width,
                                "steps": [{"id": f"s{i}", "run": "true"} for i in range(n)]}]}
                            self.wfctl_run_case(scenario, label, n, definition)
                        elif tool == "doit":
                            self.doit_run_case(scenario, label, n, "cmd", chain=False, jobs=width)
                        elif tool == "prefect" and n > 1:  # its start-up is the chains' N = 1 row
                            self.prefect_run_case(scenario, label, n, f"fanout{width}")
            elif scenario == "loop":
                label = "loop, python no-op body"
                for n in (1, s["loop"]):
                    for tool in tools:
                        if tool == "wfctl":
                            definition = {"name": f"loop-{n}", "agents": noop_agents, "steps": [{
                                "id": "each", "type": "loop", "items": n, "step": {"id": "body", "agent": "noop"}}]}
                            self.wfctl_run_case(scenario, label, n, definition)
                        elif tool == "doit":
                            self.doit_run_case(scenario, label, n, "py", chain=False)
                        elif tool == "prefect" and n > 1:
                            self.prefect_run_case(scenario, label, n, "loop")
            elif scenario == "startup":
                self.build_startup(tools)
        # the floors: always those the ratios need, all of them when `floor` is selected
        want_all = "floor" in selected
        cmd_sizes = s["chain-command"]
        if want_all or "chain-command" in selected:
            for n in cmd_sizes:
                self.floor_case("subprocess.run(\"true\", shell=True)", "shell", n)
        if want_all:
            self.floor_case("subprocess.run([\"true\"])", "exec", max(cmd_sizes))
        if want_all or "fanout" in selected:
            self.floor_case("shell=True on 2 threads", "shell-2t", s["fanout"])
        if want_all:
            self.floor_case("[\"true\"] on 2 threads", "exec-2t", s["fanout"])
        if want_all or "chain-python" in selected or "loop" in selected:
            self.floor_case("no-op Python call", "noop-call", s["noop-calls"])

    def build_startup(self, tools: list[str]) -> None:
        s = self.sizes
        self.add(Case("startup", "python", "python -c pass", 0,
                      lambda c, r: ([sys.executable, "-c", "pass"], dict(self.base_env), r), display="python -c pass"))
        for tool in tools:
            if tool == "wfctl":
                for args in (["--version"], ["--help"]):
                    self.add(Case("startup", "wfctl", "wfctl " + " ".join(args), 0,
                                  lambda c, r, a=args: (self.wfctl + a, self.wfctl_env(r / "home", r / "config.toml"), r),
                                  display="wfctl " + " ".join(args)))
                count = s["list-workflows"]

                def setup_list(case_dir: Path, count: int = count) -> None:
                    env = self.wfctl_env(case_dir / "home", case_dir / "config.toml")
                    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(BENCH_DIR)])
                    code = (
                        "import sys\nfrom wfctl import api\n"
                        "for i in range(int(sys.argv[1])):\n"
                        "    api.create({'name': f'wf-{i:05d}', 'description': 'bench', 'category': 'bench',"
                        " 'steps': [{'id': 'a', 'run': 'true'}, {'id': 'b', 'run': 'true'}]})\n"
                    )
                    run_checked([self.wfctl_python(), "-c", code, str(count)], env, case_dir,
                                f"registering {count} workflows", 1800)

                self.add(Case("startup", "wfctl", f"wfctl list --json ({count} workflows)", count,
                              lambda c, r: (self.wfctl + ["list", "--json"], self.wfctl_env(c / "home", c / "config.toml"), r),
                              setup=setup_list, display="wfctl list --json"))
                steps = s["execution-steps"]
                holder: dict[str, str] = {}

                def setup_execution(case_dir: Path, steps: int = steps) -> None:
                    definition = {"name": "big", "agents": {"noop": {"python": "noop_agent:noop"}},
                                  "steps": [{"id": f"s{i}", "agent": "noop"} for i in range(steps)]}
                    path = case_dir / "big.json"
                    path.write_text(json.dumps(definition, separators=(",", ":")), encoding="utf-8")
                    env = self.wfctl_env(case_dir / "home", case_dir / "config.toml")
                    out = run_checked(self.wfctl + ["execute", str(path), "-q"], env, case_dir,
                                      f"a {steps}-step run", 1800)
                    found = re.findall(r"exec_[0-9a-z]+", out)
                    if not found:
                        raise RuntimeError(f"no execution id in the output of wfctl execute: {out!r}")
                    holder["id"] = found[-1]

                self.add(Case("startup", "wfctl", f"wfctl execution --json ({steps} steps)", steps,
                              lambda c, r: (self.wfctl + ["execution", holder["id"], "--json"],
                                            self.wfctl_env(c / "home", c / "config.toml"), r),
                              setup=setup_execution, display="wfctl execution EXEC --json"))
            elif tool == "doit":
                for args in (["--version"], ["help"]):
                    self.add(Case("startup", "doit", "doit " + " ".join(args), 0,
                                  lambda c, r, a=args: (self.peer_script("doit") + a, dict(self.base_env), r),
                                  display="doit " + " ".join(args)))
                count = s["list-workflows"]

                def setup_doit_list(case_dir: Path, count: int = count) -> None:
                    (case_dir / "dodo.py").write_text(DODO.format(n=count, kind="cmd", chain=False), encoding="utf-8")

                self.add(Case("startup", "doit", f"doit list --all ({count} tasks)", count,
                              lambda c, r: (self.peer_script("doit") + ["-f", str(c / "dodo.py"), "list", "--all",
                                                                          "--backend", "json", "--db-file",
                                                                          str(r / "doit-db.json")], dict(self.base_env), r),
                              setup=setup_doit_list, display="doit list --all"))
            elif tool == "prefect":
                for args in (["--version"], ["--help"]):
                    self.add(Case("startup", "prefect", "prefect " + " ".join(args), 0,
                                  lambda c, r, a=args: (self.peer_script("prefect") + a, self.prefect_env(r / "ph"), r),
                                  display="prefect " + " ".join(args)))

    def wfctl_python(self) -> str:
        """The Python that runs the wfctl command (from its shebang), else this one."""
        first = Path(self.wfctl[0])
        if first.name.startswith("python"):
            return str(first)
        try:
            line = first.read_bytes()[:200].split(b"\n", 1)[0].decode()
        except OSError:
            return sys.executable
        if line.startswith("#!") and "python" in line:
            return line[2:].strip().split()[0]
        return sys.executable

    # -- running -------------------------------------------------------------------------------
    def warm_bytecode(self) -> None:
        """Compile wfctl's modules into the private bytecode cache before anything is timed."""
        env = self.wfctl_env(self.work / "warm-home", self.work / "warm-config.toml")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(BENCH_DIR)])
        code = "import compileall, os, wfctl; compileall.compile_dir(os.path.dirname(wfctl.__file__), quiet=1)"
        try:
            run_checked([self.wfctl_python(), "-c", code], env, self.work, "compiling wfctl's modules", 300)
        except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
            progress(f"bench: could not precompile wfctl ({err}); its first runs compile it")

    def run(self) -> None:
        self.warm_bytecode()
        runnable = [c for c in self.cases if c.tool in ("wfctl", "python") or self.available.get(c.tool)]
        for case in runnable:
            case_dir = self.work / f"case{case.order:03d}"
            case_dir.mkdir()
            if case.setup:
                progress(f"set-up: {case.scenario} {case.tool} {case.label} N={case.n}")
                try:
                    case.setup(case_dir)
                except Exception as err:  # a peer that cannot run is reported, not fatal
                    case.setup_error = str(err)
                    progress(f"  set-up FAILED: {str(err)[:500]}")
        runnable = [c for c in runnable if not c.setup_error]
        # Cheap runs (start-up commands, floors, runs of at most 100 steps: the 1-step runs
        # every per-step figure subtracts above all) are repeated CHEAP_FACTOR times as often:
        # their noise, divided by N, is what limits the per-step figures.
        factor = self.factor
        self.rounds = self.options.repeat * factor
        for r in range(self.rounds):
            # alternate the tools run by run: within each (scenario, label, N) group, rotate the order
            groups: dict[tuple, list[Case]] = {}
            for case in runnable:
                if r % factor and not self.cheap(case):
                    continue
                groups.setdefault((case.scenario, case.label if case.scenario in ("startup", "floor") else "", case.n), []).append(case)
            for group in groups.values():
                shift = r % len(group)
                for case in group[shift:] + group[:shift]:
                    self.run_once(case, r)

    @staticmethod
    def cheap(case: Case) -> bool:
        return case.tool != "prefect" and (case.scenario in ("startup", "floor") or case.n <= 100)

    def run_once(self, case: Case, r: int) -> None:
        case_dir = self.work / f"case{case.order:03d}"
        run_dir = case_dir / f"run{r}"
        run_dir.mkdir()
        try:
            cmd, env, cwd = case.command(case_dir, run_dir)
            wall, rss, rc, tail = measure(cmd, env, cwd, self.options.timeout)
            inner = inner_1 = None
            if rc == 0 and case.inner:
                try:
                    timing = json.loads((run_dir / "inner.json").read_text())
                    inner, inner_1 = timing["seconds"], timing.get("seconds_1")
                except (OSError, ValueError, KeyError) as err:
                    rc, tail = 1, f"no inner timing: {err}"
            sample = Sample(r, wall, rss, rc, inner, inner_1, tail or None)
        except Exception as err:
            sample = Sample(r, float("nan"), float("nan"), -1, error=f"{type(err).__name__}: {err}")
        case.samples.append(sample)
        status = f"{sample.wall_s:.3f} s, {sample.rss_mb:.0f} MB" if sample.rc == 0 else f"FAILED (exit {sample.rc})"
        progress(f"[{r + 1}/{self.rounds}] {case.scenario} {case.tool} {case.label} N={case.n}: {status}")
        if sample.rc != 0 and sample.error:
            progress("  " + sample.error.strip().replace("\n", "\n  ")[-1500:])
        shutil.rmtree(run_dir, ignore_errors=True)

    # -- results ---------------------------------------------------------------------------------
    def find(self, scenario: str, tool: str, n: int, label: str | None = None) -> Case | None:
        for case in self.cases:
            if case.scenario == scenario and case.tool == tool and case.n == n and (label is None or case.label == label):
                return case
        return None

    def floor_per_step(self, kind_label: str, n: int) -> float | None:
        case = self.find("floor", "python", n, kind_label)
        if case is None or case.median("inner_s") is None:
            return None
        return case.median("inner_s") / n * 1000.0

    def per_step_ms(self, case: Case) -> float | None:
        """Engine cost per step: (median wall − median wall of the 1-step run) / (N − 1).

        Prefect's is (the body of its N-task flow − the body of its 1-task flow) / (N − 1),
        timed inside the flows of one process after warm-up flows: its server start varies by
        seconds and cannot be subtracted across processes, and a whole flow call ends on a
        tick of about a second.
        """
        if case.n <= 1:
            return None
        if case.tool == "prefect":
            differences = [s.inner_s - s.inner_1_s for s in case.ok_samples()
                           if s.inner_s is not None and s.inner_1_s is not None]
            return statistics.median(differences) / (case.n - 1) * 1000.0 if differences else None
        base = self.find(case.scenario, case.tool, 1, case.label)
        wall, base_wall = case.median("wall_s"), base.median("wall_s") if base else None
        if wall is None or base_wall is None:
            return None
        return (wall - base_wall) / (case.n - 1) * 1000.0

    def rows(self) -> list[dict]:
        rows: list[dict] = []
        python_pass = self.find("startup", "python", 0, "python -c pass")
        pass_wall = python_pass.median("wall_s") if python_pass else None
        selected = self.options.only or list(SCENARIOS)
        order = [s for s in SCENARIOS if s in selected or s == "floor"]
        # not-installed tools get one row per scenario and size
        for scenario in order:
            scenario_cases = [c for c in self.cases if c.scenario == scenario]
            for case in scenario_cases:
                row: dict[str, Any] = {
                    "scenario": scenario, "label": case.label, "tool": case.tool,
                    "version": self.available.get(case.tool) if case.tool != "python" else platform.python_version(),
                    "n": case.n, "command": case.display, "samples": len(case.ok_samples()),
                    "wall_s": case.median("wall_s"), "per_step_ms": None, "ratio": None,
                    "ratio_to": None, "rss_mb": case.median("rss_mb"), "status": "ok",
                }
                if case.tool in self.not_installed:
                    row["status"] = "not installed"
                elif case.setup_error:
                    row["status"] = "set-up failed"
                    row["error"] = case.setup_error[-2000:]
                elif not case.ok_samples():
                    row["status"] = "failed"
                    row["error"] = next((s.error for s in case.samples if s.error), None)
                elif len(case.ok_samples()) < len(case.samples):
                    row["status"] = f"{len(case.samples) - len(case.ok_samples())} failed runs"
                if row["status"] in ("ok",) or row["status"].endswith("failed runs"):
                    if scenario == "floor":
                        inner = case.median("inner_s")
                        row["per_step_ms"] = inner / case.n * 1000.0 if inner is not None else None
                    elif scenario == "startup":
                        if pass_wall and case.tool != "python" and row["wall_s"] is not None:
                            row["ratio"] = row["wall_s"] / pass_wall
                            row["ratio_to"] = "python -c pass"
                    else:
                        row["per_step_ms"] = self.per_step_ms(case)
                        floor = None
                        if scenario == "chain-command" and case.n > 1:
                            floor = self.floor_per_step('subprocess.run("true", shell=True)', case.n)
                            row["ratio_to"] = "shell floor, same N"
                        elif scenario == "fanout" and case.n > 1:
                            floor = self.floor_per_step("shell=True on 2 threads", self.sizes["fanout"])
                            row["ratio_to"] = "2-thread shell floor"
                        if floor and row["per_step_ms"] is not None:
                            row["ratio"] = row["per_step_ms"] / floor
                row["target"], row["met"] = "", None
                rows.append(row)
        self.apply_targets(rows)
        return rows

    def apply_targets(self, rows: list[dict]) -> None:
        s = self.sizes
        self.targets: list[dict] = []

        def row_of(scenario: str, n: int, label: str | None = None) -> dict | None:
            for row in rows:
                if row["scenario"] == scenario and row["tool"] == "wfctl" and row["n"] == n and (label is None or row["label"].startswith(label)):
                    return row
            return None

        def target(row: dict | None, name: str, value: float | None, limit: float, unit: str, text: str) -> None:
            met = None if value is None else value <= limit
            self.targets.append({"target": name, "value": value, "limit": limit, "unit": unit, "met": met,
                                 "factor": (value / limit) if value is not None and limit else None})
            if row is not None:
                row["target"] = (row["target"] + "; " if row["target"] else "") + text
                row["met"] = met if row["met"] is None else (row["met"] and met if met is not None else row["met"])

        big_cmd = max(s["chain-command"])
        row = row_of("chain-command", big_cmd)
        if row:
            target(row, f"{big_cmd} `true` steps: per-step cost / shell floor", row["ratio"], 1.25, "×", "≤ 1.25× floor")
        big_py, small_py = max(s["chain-python"]), min(s["chain-python"])
        row = row_of("chain-python", big_py)
        if row:
            target(row, f"in-process step at N = {big_py}", row["per_step_ms"], 0.05, "ms", "≤ 0.05 ms/step")
            small = row_of("chain-python", small_py)
            growth = None
            if small and small["per_step_ms"] and row["per_step_ms"] is not None:
                growth = row["per_step_ms"] / small["per_step_ms"]
            row["growth"] = growth
            target(row, f"growth: per-step at N = {big_py} / at N = {small_py} (in-process chain)", growth, 1.2, "×",
                   "growth ≤ 1.2× N=" + str(small_py))
            target(row, f"peak RSS of the {big_py}-step chain", row["rss_mb"], 80.0, "MB", "RSS ≤ 80 MB")
        row = row_of("loop", s["loop"])
        if row:
            target(row, f"peak RSS of the {s['loop']}-item loop", row["rss_mb"], 80.0, "MB", "RSS ≤ 80 MB")
        row = row_of("fanout", s["fanout"])
        if row:
            target(row, f"fan-out {s['fanout']} × {s['fanout-width']}: per-step cost / 2-thread floor", row["ratio"],
                   1.3, "×", "≤ 1.3× floor")
        for label in ("wfctl --version", "wfctl --help"):
            row = row_of("startup", 0, label)
            if row:
                target(row, f"`{label}` / `python -c pass`", row["ratio"], 7.0, "×", "≤ 7× python")
        row = row_of("startup", s["execution-steps"], "wfctl execution --json")
        if row:
            target(row, f"`wfctl execution --json` of a {s['execution-steps']}-step run", row["wall_s"], 0.2, "s", "≤ 200 ms")

    def machine(self) -> dict:
        info: dict[str, Any] = {
            "hostname": socket.gethostname(),
            "platform": platform.platform(),
            "machine": platform.machine(),
            "cpu_model": None,
            "cpu_count": os.cpu_count(),
            "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "memory_gb": None,
            "python": sys.version.split()[0],
            "python_executable": sys.executable,
            "wfctl_command": self.wfctl,
            "peer_python": self.peer_python,
            "versions": dict(self.available),
        }
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    info["memory_gb"] = round(int(line.split()[1]) / 1024 / 1024, 1)
                    break
        except OSError:
            pass
        # the code measured: a commit that changed during the run mixes two versions
        info["wfctl_commit_at_start"] = self.commit_at_start
        info["wfctl_commit_at_end"] = source_commit()
        # other work on the machine skews every number: the load averages say how much there was
        info["loadavg_at_start"] = self.load_at_start
        info["loadavg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
        return info


def source_commit() -> dict | None:
    """The checkout's commit and the tree of its src/ (with "+changes" when src/ differs
    from it): a run whose src tree changed measured two versions of wfctl."""
    def git(*args: str) -> str | None:
        done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, timeout=10)
        return done.stdout.strip() if done.returncode == 0 else None

    try:
        head, tree = git("rev-parse", "--short", "HEAD"), git("rev-parse", "--short", "HEAD:src")
        if head is None:
            return None
        dirty = git("status", "--porcelain", "--", "src")
        return {"commit": head, "src": f"{tree}{'+changes' if dirty else ''}"}
    except (OSError, subprocess.SubprocessError):
        return None


def resolve_wfctl(given: str | None) -> list[str]:
    if given:
        return given.split()
    beside = Path(sys.executable).parent / "wfctl"
    if beside.exists():
        return [str(beside)]
    found = shutil.which("wfctl")
    if found:
        return [found]
    return [sys.executable, "-m", "wfctl"]


def progress(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


# -- the peers' programs ----------------------------------------------------------------------
DODO = '''\
"""Generated by wfctl's bench/run.py: {n} tasks, kind {kind}, chained {chain}."""
N = {n}
KIND = "{kind}"
CHAIN = {chain}
DOIT_CONFIG = {{"verbosity": 0}}


def noop():
    return None


def task_s():
    for i in range(N):
        task = {{"name": str(i), "actions": ["true"] if KIND == "cmd" else [(noop,)], "verbosity": 0}}
        if CHAIN and i:
            task["task_dep"] = ["s:%d" % (i - 1)]
        yield task
'''

PREFECT_FLOW = '''\
"""Generated by wfctl's bench/run.py. python flow.py KIND N OUT.json

Runs warm-up flows (the first starts Prefect's temporary server), then the flow of this
KIND with 1 task and with N tasks, and writes the time of each flow's body (its tasks,
timed inside the flow) and of each whole flow call to OUT.json. The bodies are what is
compared: a whole flow call ends on a tick of about a second (1.07 s, 2.07 s, 4.07 s, ...),
which hides the cost of up to a few hundred tasks.
"""
import json
import subprocess
import sys
import time

from prefect import flow, task
from prefect.task_runners import ThreadPoolTaskRunner


@task
def cmd(i):
    subprocess.run("true", shell=True, check=True)


@task
def noop(i):
    return None


@flow
def chain(kind: str, n: int) -> float:
    step = cmd if kind == "cmd" else noop
    start = time.perf_counter()
    for i in range(n):
        step(i)
    return time.perf_counter() - start


@flow
def loop(n: int) -> float:
    start = time.perf_counter()
    for item in range(n):
        noop(item)
    return time.perf_counter() - start


@flow(task_runner=ThreadPoolTaskRunner(max_workers=2))
def fanout2(n: int) -> float:
    start = time.perf_counter()
    futures = cmd.map(range(n))
    for future in futures:
        future.result()
    return time.perf_counter() - start


def timed(kind, n):
    """(time of the flow's body, time of the whole flow call)"""
    start = time.perf_counter()
    if kind in ("cmd", "noop"):
        body = chain(kind, n)
    elif kind == "loop":
        body = loop(n)
    elif kind == "fanout2":
        body = fanout2(n)
    else:
        raise SystemExit("unknown kind " + kind)
    return body, time.perf_counter() - start


if __name__ == "__main__":
    kind, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    chain("noop", 1)  # starts the temporary server
    timed(kind, 1)  # the first flow of a kind pays its first-use costs: not measured
    one, one_flow = timed(kind, 1)
    body, whole = timed(kind, n) if n > 1 else (one, one_flow)
    with open(out, "w") as handle:
        json.dump({"seconds": body, "seconds_1": one, "flow_seconds": whole, "flow_seconds_1": one_flow, "n": n}, handle)
'''


# -- output ------------------------------------------------------------------------------------
def fmt(value: float | None, spec: str) -> str:
    if value is None:
        return "—"
    if spec == ".3f" and 0 < abs(value) < 0.001:
        return format(value, ".1e")
    return format(value, spec)


def render_table(rows: list[dict]) -> str:
    header = ["scenario", "tool", "N", "wall s (median)", "per-step ms", "× floor", "peak RSS MB", "target", "met?"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for row in rows:
        tool = row["tool"] if not row.get("version") else f"{row['tool']} {row['version']}"
        if row["status"] in ("not installed", "set-up failed", "failed"):
            cells = [row["label"], tool, str(row["n"] or ""), row["status"], "", "", "", row["target"], ""]
        else:
            met = "" if row["met"] is None else ("yes" if row["met"] else "NO")
            ratio = fmt(row["ratio"], ".2f") + ("×" if row["ratio"] is not None else "")
            per_step = fmt(row["per_step_ms"], ".3f") if row["n"] > 1 and row["scenario"] != "startup" else "—"
            wall = fmt(row["wall_s"], ".3f")
            if row["status"] != "ok":
                wall += f" ({row['status']})"
            cells = [row["label"], tool, f"{row['n']:,}" if row["n"] else "", wall, per_step, ratio,
                     fmt(row["rss_mb"], ".0f"), row["target"], met]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


NOTES = """\
Notes: medians of {repeat} runs per row ({cheap} for runs of at most 100 steps, start-up
commands and floors, whose noise limits the per-step figures), tools alternated run by run. Wall time is the whole
process (spawn to exit). Per-step ms = (wall of the N-step run − wall of the 1-step run of the
same kind in the same session) / (N − 1): the engine's start-up is the N = 1 row. Prefect's
per-step is (its N-task flow's body − its 1-task flow's body) / (N − 1), timed inside the flows
of one process after warm-up flows (its temporary server start, seconds long and variable,
cannot be subtracted across processes, and a flow call ends on a ~1 s tick); its N = 1 rows
show that start-up. Floors (scenario
floor) time the N operations inside the process; × floor = per-step / floor per-step at the
same N (`true` chains: subprocess.run("true", shell=True) in a row; fan-out: the same on a
2-thread pool). In-process steps are reported in absolute ms (their floor, a no-op call, is
~0). Start-up rows: × = wall / wall of `python -c pass`. Peak RSS: ru_maxrss from wait4 (in a
small wrapper that spawns and times the command), the largest single process of the tree. doit runs with --backend json (this Python has no gdbm,
and doit's default dbm backend falls back to the slow dbm.dumb). Every wfctl run starts from
a fresh copy of a WFCTL_HOME in which the workflow is already registered, and runs from
compiled bytecode (a private PYTHONPYCACHEPREFIX, filled before timing) as an installed wfctl does."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes and R = 1 (the CI smoke run)")
    parser.add_argument("--only", action="append", choices=SCENARIOS, metavar="SCENARIO",
                        help=f"run only this scenario (repeatable): {', '.join(SCENARIOS)}")
    parser.add_argument("--repeat", type=int, default=None, help="runs per measurement (default 5; 1 with --quick)")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated: wfctl,doit,prefect (default: all)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (default bench/results/<date>-<host>.json)")
    parser.add_argument("--wfctl", default=None, help="the wfctl command (default: wfctl beside this Python, else on PATH)")
    parser.add_argument("--peer-python", default=os.environ.get("WFCTL_BENCH_PEER_PYTHON"),
                        help="the Python that has doit and Prefect (default: this one; env WFCTL_BENCH_PEER_PYTHON)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before one run is killed (default 1800)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary work directory")
    options = parser.parse_args(argv)
    options.tools = [t.strip() for t in options.tools.split(",") if t.strip()]
    unknown = [t for t in options.tools if t not in TOOLS]
    if unknown:
        parser.error(f"unknown tool(s): {', '.join(unknown)}; choose from {', '.join(TOOLS)}")
    if "wfctl" not in options.tools:
        options.tools.insert(0, "wfctl")
    if options.repeat is None:
        options.repeat = 1 if options.quick else 5
    if options.repeat < 1:
        parser.error("--repeat must be at least 1")

    suite = Suite(options)
    started = _dt.datetime.now(_dt.timezone.utc)
    t0 = time.perf_counter()
    try:
        suite.detect_tools()
        for tool, why in suite.not_installed.items():
            progress(f"{tool}: not installed ({why})")
        suite.build()
        suite.run()
        rows = suite.rows()
    finally:
        if not options.keep:
            shutil.rmtree(suite.work, ignore_errors=True)
        else:
            progress(f"work directory kept: {suite.work}")
    elapsed = time.perf_counter() - t0

    table = render_table(rows)
    print(table)
    print()
    print(NOTES.format(repeat=options.repeat, cheap=options.repeat * suite.factor))
    print()
    print("Targets (wfctl)" + (f" — {TARGETS_NOTE}" if options.quick else "") + ":")
    for t in suite.targets:
        if t["value"] is None:
            verdict = "not measured"
        else:
            verdict = "met" if t["met"] else f"MISSED ({t['factor']:.2f}× the limit)"
        value = fmt(t["value"], ".3f" if t["unit"] in ("ms", "s") else ".2f")
        print(f"- {t['target']}: {value} {t['unit']} (limit {t['limit']:g} {t['unit']}): {verdict}")

    machine = suite.machine()
    scenarios: dict[str, dict] = {}
    selected = options.only or list(SCENARIOS)
    for name in SCENARIOS:
        if name not in selected and not any(c.scenario == name for c in suite.cases):
            continue
        scenarios[name] = {
            "rows": [r for r in rows if r["scenario"] == name],
            "cases": [
                {
                    "tool": c.tool, "label": c.label, "n": c.n, "command": c.display,
                    "setup_error": c.setup_error,
                    "samples": [s.__dict__ for s in c.samples],
                }
                for c in suite.cases if c.scenario == name
            ],
        }
    document = {
        "generatedBy": "bench/run.py",
        "argv": sys.argv[1:] if argv is None else argv,
        "startedAt": started.isoformat(timespec="seconds"),
        "durationSeconds": round(elapsed, 1),
        "quick": options.quick,
        "repeat": options.repeat,
        "tools": options.tools,
        "sizes": suite.sizes,
        "machine": machine,
        "notes": NOTES.format(repeat=options.repeat, cheap=options.repeat * suite.factor).replace("\n", " "),
        "targets": suite.targets,
        "table": table,
        "scenarios": scenarios,
    }
    path = options.json
    if path is None:
        host = re.sub(r"[^A-Za-z0-9_.-]+", "-", socket.gethostname())[:40] or "host"
        path = BENCH_DIR / "results" / f"{started:%Y-%m-%d}-{host}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n", encoding="utf-8")
    print(f"\nResults: {path} ({elapsed:.0f} s)")
    before, after = machine["wfctl_commit_at_start"], machine["wfctl_commit_at_end"]
    if before and after and before["src"] != after["src"]:
        print(f"Warning: src/ changed during the run ({before['commit']} → {after['commit']}): "
              "the rows mix two versions of wfctl.")

    own_failures = [r for r in rows if r["tool"] in ("wfctl", "python") and r["status"] not in ("ok",)]
    if own_failures:
        progress("bench: some wfctl or floor measurements failed: " +
                 ", ".join(f"{r['scenario']} {r['label']} N={r['n']}" for r in own_failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
