from setuptools import find_packages, setup

PACKAGE = "nsl_experiment"

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
        "The simulated Never Stop Learning study (ROS-free): config sections, cache, units of "
        "work, stages and report."
    ),
    license="Apache-2.0",
)
