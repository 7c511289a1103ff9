from setuptools import find_packages, setup

PACKAGE = "nsl_collector"

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
        "Grasp-episode recording to rosbag2 (MCAP) datasets, the dataset library (ROS-free) "
        "and the collector node."
    ),
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "collector_node = nsl_collector.collector_node:main",
        ],
    },
)
