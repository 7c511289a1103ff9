from glob import glob

from setuptools import find_packages, setup

PACKAGE = "nsl_bringup"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={PACKAGE: ["config/*.yaml", "config/*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/launch", glob("launch/*.launch.py")),
        (
            "share/" + PACKAGE + "/config",
            glob(PACKAGE + "/config/*.yaml") + glob(PACKAGE + "/config/*.xml"),
        ),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="NSL developers",
    maintainer_email="nsl@example.com",
    description=(
        "NSL node graphs (one description for launch files and the process runner), "
        "launch files, parameter files and the nsl command-line tool."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "nsl = nsl_bringup.cli:main",
        ],
    },
)
