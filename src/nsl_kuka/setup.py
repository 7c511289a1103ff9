from setuptools import find_packages, setup

PACKAGE = "nsl_kuka"

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test"]),
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + PACKAGE]),
        ("share/" + PACKAGE, ["package.xml"]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    maintainer="NSL developers",
    maintainer_email="nsl@example.com",
    description="The real Kuka arm behind NSL's arm interface, through MoveIt 2 (moveit_py).",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "kuka_arm_node = nsl_kuka.kuka_arm_node:main",
        ],
    },
)
