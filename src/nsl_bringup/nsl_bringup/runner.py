"""Start a node graph as processes with ``--ros-args``, where ROS 2 launch is not installed.

The runner reads the same graph description as the launch files (nsl_bringup.graph). It prefixes
every line a node prints with the node's name, forwards Ctrl-C/SIGTERM to all nodes, restarts a
dying node marked ``respawn`` (as ``ros2 launch`` does) and stops the whole graph when any other
node dies, saying which one and how. It brings managed (lifecycle) nodes to active through their
lifecycle services (``nsl_common.lifecycle``, run as a child with the graph's environment);
one that cannot be activated stops the graph like a death. ``isolate=True`` gives the run its
own ROS_DOMAIN_ID and localhost-only discovery, so parallel runs (tests) do not cross-talk.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from nsl_bringup.graph import NodeSpec, config_dir
from nsl_common import names


LIFECYCLE_TIMEOUT = 120.0
"""Seconds per lifecycle step (the node's start, configure, activate): configure loads and
validates a checkpoint, which takes seconds on a loaded machine."""


def find_executable(package: str, executable: str) -> str:
    """Path of a node executable: an ament install's lib/<package>/, else the venv's bin/."""
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        candidate = Path(prefix) / "lib" / package / executable
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    candidate = Path(sys.executable).parent / executable
    if candidate.is_file():
        return str(candidate)
    found = shutil.which(executable)
    if found:
        return found
    raise FileNotFoundError(
        f"executable '{executable}' of package '{package}' not found (looked in "
        f"AMENT_PREFIX_PATH lib/{package}/, {Path(sys.executable).parent} and PATH); run the "
        "set-up (./nsl) or source your ROS workspace"
    )


def ros_args(spec: NodeSpec, namespace: str, overrides_file: Path) -> list[str]:
    args = ["--ros-args", "-r", f"__node:={spec.name}"]
    if namespace:
        args += ["-r", f"__ns:={'/' + namespace.strip('/')}"]
    args += [
        "--params-file",
        str(config_dir() / spec.params_file),
        "--params-file",
        str(overrides_file),
    ]
    for src, dst in spec.remappings:
        args += ["-r", f"{src}:={dst}"]
    return args


def isolated_environment(domain_id: int | None = None) -> dict[str, str]:
    """ROS variables that keep a run to this machine and its own DDS domain."""
    if domain_id is None:
        domain_id = 1 + os.getpid() % 100
    if not 0 <= domain_id <= 101:
        raise ValueError(f"ROS_DOMAIN_ID must be in 0..101, got {domain_id}")
    return {"ROS_DOMAIN_ID": str(domain_id), "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}


def fastdds_environment() -> dict[str, str]:
    """Return FASTDDS_DEFAULT_PROFILES_FILE set to config/fastdds_shm.xml (empty if missing).

    Its 16 MiB shared-memory segment delivers large images such as 472x472 reliably.
    """
    profile = config_dir() / "fastdds_shm.xml"
    return {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile)} if profile.is_file() else {}


@dataclass
class NodeExit:
    name: str
    returncode: int

    def describe(self) -> str:
        if self.returncode < 0:
            try:
                how = f"killed by {signal.Signals(-self.returncode).name}"
            except ValueError:
                how = f"killed by signal {-self.returncode}"
        else:
            how = f"exited with code {self.returncode}"
        return f"node '{self.name}' {how}"


class GraphRunner:
    """Runs the nodes of a resolved graph as child processes, restarting those marked respawn.

    A respawning node that dies is started again after its ``respawn_delay`` (up to
    ``respawn_max_retries`` times), except when it exits with code 2, a refused configuration
    that a restart cannot mend. Any other death ends :meth:`wait`.
    """

    def __init__(
        self,
        nodes: list[NodeSpec],
        namespace: str = "",
        env: dict[str, str] | None = None,
        output=None,
        cwd: str | Path | None = None,
    ):
        self.nodes = nodes
        self.namespace = namespace
        self.env = {
            **fastdds_environment(),
            **os.environ,
            **(env or {}),
        }  # a user's own profile wins
        self.cwd = str(cwd) if cwd else None
        self.output = output or sys.stdout
        self._specs = {spec.name: spec for spec in nodes}
        self._commands: dict[str, list[str]] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._restarts: dict[str, int] = {spec.name: 0 for spec in nodes}
        self._pumps: list[threading.Thread] = []
        self._tmp = tempfile.TemporaryDirectory(prefix="nsl-graph-")
        self._exited = threading.Condition()
        self._first_exit: NodeExit | None = None
        self._stopping = False
        self._interrupted = False
        self._print_lock = threading.Lock()
        self._width = max((len(spec.name) for spec in nodes), default=0)

    def commands(self) -> dict[str, list[str]]:
        """Return the command line of every node (writing its parameter override file)."""
        cmds = {}
        for spec in self.nodes:
            overrides = Path(self._tmp.name) / f"{spec.name}.overrides.yaml"
            overrides.write_text(yaml.safe_dump({"/**": {"ros__parameters": spec.parameters}}))
            cmds[spec.name] = [
                find_executable(spec.package, spec.executable),
                *ros_args(spec, self.namespace, overrides),
            ]
        return cmds

    def start(self) -> None:
        self._commands = self.commands()
        with self._exited:
            for name in self._commands:
                self._launch(name)

    def _launch(self, name: str) -> None:
        """Start node ``name`` and its output pump (the caller holds ``_exited``)."""
        proc = subprocess.Popen(
            self._commands[name],
            env=self.env,
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        self._procs[name] = proc
        pump = threading.Thread(
            target=self._pump, args=(name, proc), daemon=True, name=f"output-{name}"
        )
        pump.start()
        self._pumps.append(pump)
        if self._specs[name].lifecycle:
            activate = threading.Thread(
                target=self._activate, args=(name, proc), daemon=True, name=f"lifecycle-{name}"
            )
            activate.start()
            self._pumps.append(activate)

    def node_name(self, name: str) -> str:
        """Return the fully qualified name of node ``name`` in this graph."""
        return names.qualified_node_name(self.namespace, name)

    def _activate(self, name: str, proc: subprocess.Popen) -> None:
        """Bring lifecycle node ``name`` to active; a failure while it runs stops the graph."""
        driver = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nsl_common.lifecycle",
                self.node_name(name),
                "active",
                "--timeout",
                str(LIFECYCLE_TIMEOUT),
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        output = threading.Thread(
            target=lambda: [self._say(f"lifecycle {line.rstrip()}") for line in driver.stdout],
            daemon=True,
        )
        output.start()
        while driver.poll() is None:
            try:
                driver.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if proc.poll() is not None or self._stopping:
                    driver.kill()  # the node died or the graph stops: nothing to activate
        output.join(timeout=2)
        with self._exited:
            if driver.returncode != 0 and proc.poll() is None and not self._stopping:
                if self._first_exit is None:
                    self._first_exit = NodeExit(f"{name} (not activated)", driver.returncode)
                self._exited.notify_all()

    def _say(self, text: str) -> None:
        with self._print_lock:
            self.output.write(f"[runner] {text}\n")
            self.output.flush()

    def _pump(self, name: str, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self._print_lock:
                self.output.write(f"[{name:<{self._width}}] {line}")
                self.output.flush()
        proc.wait()
        spec, died = self._specs[name], NodeExit(name, proc.returncode)
        with self._exited:
            restart = (
                spec.respawn
                and not self._stopping
                and proc.returncode != 2
                and self._restarts[name] < spec.respawn_max_retries
            )
            if not restart and self._first_exit is None and not self._stopping:
                self._first_exit = died
            self._exited.notify_all()
        if not restart:
            if spec.respawn and not self._stopping:
                why = "its configuration was refused" if proc.returncode == 2 else "retries spent"
                self._say(f"{died.describe()}; not restarted ({why})")
            return
        self._say(
            f"{died.describe()}; restarting it in {spec.respawn_delay:g} s "
            f"(restart {self._restarts[name] + 1} of at most {spec.respawn_max_retries})"
        )
        with self._exited:
            self._exited.wait_for(lambda: self._stopping, timeout=spec.respawn_delay)
            if self._stopping:
                return
            self._restarts[name] += 1
            self._launch(name)
            self._exited.notify_all()

    def restarts(self, name: str) -> int:
        """Return how often node ``name`` has been restarted."""
        with self._exited:
            return self._restarts[name]

    def wait_for_restart(self, name: str, count: int = 1, timeout: float | None = None) -> bool:
        """Block until node ``name`` has been restarted ``count`` times; False on timeout."""
        with self._exited:
            return self._exited.wait_for(lambda: self._restarts[name] >= count, timeout=timeout)

    def wait(self, timeout: float | None = None) -> NodeExit | None:
        """Block until a node dies for good (returns it), ``interrupt()`` or ``timeout``."""
        with self._exited:
            self._exited.wait_for(
                lambda: self._first_exit is not None or self._interrupted, timeout=timeout
            )
            return self._first_exit

    def interrupt(self) -> None:
        """Wake ``wait()`` (safe from a signal handler's thread)."""
        with self._exited:
            self._interrupted = True
            self._exited.notify_all()

    @property
    def first_exit(self) -> NodeExit | None:
        return self._first_exit

    def pid(self, name: str) -> int:
        """Return the process id of node ``name`` (its current process after a restart)."""
        with self._exited:
            return self._procs[name].pid

    def stop(self, grace: float = 10.0) -> dict[str, int]:
        """SIGINT every node, SIGKILL what is still running after ``grace`` seconds; exit codes."""
        with self._exited:
            self._stopping = True  # no restart starts after this (they check it under the lock)
            self._exited.notify_all()
        for proc in self._procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        codes = {}
        for name, proc in self._procs.items():
            try:
                codes[name] = proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                codes[name] = proc.wait()
                with self._print_lock:
                    self.output.write(
                        f"[runner] node '{name}' did not stop within {grace:.0f} s; killed\n"
                    )
        for pump in list(self._pumps):
            pump.join(timeout=2)
        self._tmp.cleanup()
        return codes

    def __enter__(self) -> "GraphRunner":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_until_interrupted(runner: GraphRunner) -> int:
    """Run a graph in the foreground: Ctrl-C/SIGTERM stop it cleanly.

    A node that dies for good (not respawning, or given up) stops the rest.
    """
    old = {
        s: signal.signal(s, lambda *_: runner.interrupt()) for s in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        runner.start()
        died = runner.wait()
        if died is not None:
            print(f"[runner] {died.describe()}; stopping the graph", file=sys.stderr, flush=True)
        else:
            print("[runner] interrupted; stopping the graph", file=sys.stderr, flush=True)
        runner.stop()
        return 1 if died is not None else 0
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
