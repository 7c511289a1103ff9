from glob import glob

from setuptools import find_packages, setup

PACKAGE = "nsl_policy"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    package_data={PACKAGE: ["checkpoints/*.safetensors"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
        ("share/" + PACKAGE + "/checkpoints", glob(PACKAGE + "/checkpoints/*.safetensors")),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="NSL developers",
    maintainer_email="nsl@example.com",
    description=(
        "QT-Opt Q-network, CEM action selection and checkpoint format (ROS-free) and the "
        "policy node that runs grasp episodes and hot-swaps checkpoints."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "policy_node = nsl_policy.policy_node:main",
        ],
    },
)
