"""The robot install path: the workspace built with colcon into an install tree.

A ROS 2 machine builds the packages with ``colcon build`` and finds them through the ament
index, not through the editable venv the rest of the suite uses. This builds every package of
src/ (nsl_msgs with CMake against the current ROS prefix, the ament_python packages with
setup.py) into a temporary ``--merge-install`` tree and checks what ``ros2 launch`` and
``ros2 run`` look up there: each package's ament index entry, share/<package>/ with package.xml,
launch/ and config/, and lib/<package>/<executable> for every console script and graph node.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from ament_index_python.packages import get_package_share_directory, get_packages_with_prefixes
from nsl_bringup.graph import GRAPHS, resolve

pytestmark = pytest.mark.system

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
# The graph arguments that select each variant of the node set (sim or robot arm).
GRAPH_VARIANTS = ({"sim": "true"}, {"sim": "false"})


def workspace_packages() -> dict[str, str]:
    """Map every package of src/ (a folder with a package.xml) to its build type."""
    packages = {}
    for manifest in sorted(SRC.glob("*/package.xml")):
        root = ET.parse(manifest).getroot()
        build_type = root.findtext("export/build_type", default="ament_cmake").strip()
        packages[root.findtext("name").strip()] = build_type
    return packages


def console_scripts(setup_py: Path) -> list[str]:
    """Return the console_scripts a setup.py declares (read from its literal entry_points)."""
    for node in ast.walk(ast.parse(setup_py.read_text())):
        if not isinstance(node, ast.Dict):
            continue
        for key, value in zip(node.keys, node.values):
            if isinstance(key, ast.Constant) and key.value == "console_scripts":
                scripts = ast.literal_eval(value)
                return [entry.split("=", 1)[0].strip() for entry in scripts]
    return []


def find_colcon() -> str | None:
    """Return colcon next to this interpreter (the venv) or on PATH."""
    beside = Path(sys.executable).parent / "colcon"
    return str(beside) if beside.is_file() else shutil.which("colcon")


@pytest.fixture(scope="module")
def install(tmp_path_factory) -> Path:
    """Build the workspace with colcon into a temporary install tree; return the tree."""
    colcon = find_colcon()
    if colcon is None:
        pytest.skip("colcon is not installed: run tools/setup_env.py (requirements/colcon.txt)")
    prefix = os.environ.get("AMENT_PREFIX_PATH")
    if not prefix:
        pytest.skip("no ROS 2 prefix: run through ./nsl test or source a ROS 2 install")
    work = tmp_path_factory.mktemp("colcon")
    env = {
        **os.environ,
        # nsl_msgs's CMake finds ament and rosidl in the ROS prefix (the venv or /opt/ros)
        "CMAKE_PREFIX_PATH": os.environ.get("CMAKE_PREFIX_PATH", prefix),
        "COLCON_HOME": str(work / "colcon_home"),  # no user colcon defaults
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    cmd = [
        colcon,
        "--log-base",
        str(work / "log"),
        "build",
        "--merge-install",
        "--base-paths",
        str(SRC),
        "--build-base",
        str(work / "build"),
        "--install-base",
        str(work / "install"),
        "--cmake-args",
        f"-DPython3_EXECUTABLE={sys.executable}",
        "-DBUILD_TESTING=OFF",
    ]
    out = subprocess.run(
        cmd, cwd=work, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    if out.returncode != 0:
        pytest.fail(
            f"colcon build failed ({out.returncode}):\n{out.stdout[-6000:]}\n{out.stderr[-4000:]}",
            pytrace=False,
        )
    return work / "install"


def test_workspace_has_the_packages_the_product_names() -> None:
    # Discovery must find the packages; an empty src/ would make every check below vacuous.
    packages = workspace_packages()
    assert {"nsl_msgs", "nsl_bringup", "nsl_sim", "nsl_policy"} <= set(packages)
    assert packages["nsl_msgs"] == "ament_cmake"
    assert packages["nsl_bringup"] == "ament_python"


def test_every_package_is_in_the_ament_index(install: Path, monkeypatch) -> None:
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(install))
    found = get_packages_with_prefixes()
    for package in workspace_packages():
        marker = install / "share" / "ament_index" / "resource_index" / "packages" / package
        assert marker.is_file(), f"{package} has no ament index entry"
        assert found.get(package) == str(install), f"{package} not found in the install tree"
        share = Path(get_package_share_directory(package))
        assert (share / "package.xml").is_file(), f"{package}: no share/{package}/package.xml"


def test_launch_and_config_files_are_installed(install: Path) -> None:
    for package in workspace_packages():
        source, share = SRC / package, install / "share" / package
        launch_files = sorted(p.name for p in (source / "launch").glob("*.launch.py"))
        installed = sorted(p.name for p in (share / "launch").glob("*.launch.py"))
        assert installed == launch_files, f"{package}: launch files in share/{package}/launch"
        # config/ at the package root or inside its Python package, as setup.py picks it up
        for config in (source / "config", source / package / "config"):
            for f in sorted(config.glob("*")) if config.is_dir() else []:
                if f.suffix in (".yaml", ".xml"):
                    assert (share / "config" / f.name).is_file(), (
                        f"{package}: {f.name} missing from share/{package}/config"
                    )


def test_every_console_script_is_a_ros2_run_executable(install: Path) -> None:
    checked = 0
    for package, build_type in workspace_packages().items():
        if build_type != "ament_python":
            continue
        for executable in console_scripts(SRC / package / "setup.py"):
            path = install / "lib" / package / executable
            assert path.is_file() and os.access(path, os.X_OK), (
                f"`ros2 run {package} {executable}` would not find lib/{package}/{executable}"
            )
            checked += 1
    assert checked >= 6, "fewer console scripts than the product's nodes: did discovery break?"


def test_every_graph_node_and_params_file_is_installed(install: Path) -> None:
    config = install / "share" / "nsl_bringup" / "config"
    for graph in GRAPHS:
        for variant in GRAPH_VARIANTS:
            arguments = {k: v for k, v in variant.items() if k in GRAPHS[graph].defaults()}
            _, nodes = resolve(graph, arguments)
            for spec in nodes:
                path = install / "lib" / spec.package / spec.executable
                assert path.is_file() and os.access(path, os.X_OK), (
                    f"graph {graph}: `ros2 launch` would not find {spec.package}/{spec.executable}"
                )
                assert (config / spec.params_file).is_file(), (
                    f"graph {graph}: {spec.params_file} missing from share/nsl_bringup/config"
                )


def test_interfaces_are_installed(install: Path) -> None:
    share = install / "share" / "nsl_msgs"
    for kind in ("msg", "srv"):
        for definition in sorted((SRC / "nsl_msgs" / kind).glob(f"*.{kind}")):
            assert (share / kind / definition.name).is_file(), f"{definition.name} not installed"
    site = install / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    assert (site / "nsl_msgs" / "msg" / "__init__.py").is_file(), "nsl_msgs Python module missing"
