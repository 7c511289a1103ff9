from setuptools import find_packages, setup

PACKAGE = "nsl_sim"

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
    description=(
        "PyBullet grasping world with the paper's challenge variations (ROS-free library) "
        "and the sim node serving the arm and camera interfaces."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "sim_node = nsl_sim.sim_node:main",
        ],
    },
)
