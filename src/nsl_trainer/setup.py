from setuptools import find_packages, setup

PACKAGE = "nsl_trainer"

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
    description="Offline QT-Opt pre-training, fine-tuning and continual learning (ROS-free) "
    "and the trainer node with the fine-tune service.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "trainer_node = nsl_trainer.trainer_node:main",
        ],
    },
)
