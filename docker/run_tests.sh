#!/bin/bash
# The image's test command: the pytest suite, then each launch_testing test with `launch_test`.
#
# pytest comes from requirements/python.txt (pytest 9). The pytest plugins the ROS packages
# install (launch_testing's, launch_testing_ros's) declare the `path` hook argument pytest 9
# removed, and pytest stops at plugin load ("Argument(s) {'path'} are declared in the hookimpl
# but can not be found in the hookspec"). So plugin autoload is off and the suite's own plugins
# are named; the files that define generate_test_description() run under `launch_test`, which
# needs no pytest plugin.
set -euo pipefail
cd /ws/src/nsl
mapfile -t launch_tests < <(grep -rl --include='test_*.py' '^def generate_test_description' src test)
ignores=()
for f in "${launch_tests[@]}"; do ignores+=("--ignore=$f"); done
status=0
PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 python3 -m pytest -p pytest_timeout -p _hypothesis_pytestplugin \
    "${ignores[@]}" "$@" || status=$?
for f in "${launch_tests[@]}"; do
    echo "== launch_test $f"
    launch_test "$f" || status=$?
done
exit "$status"
