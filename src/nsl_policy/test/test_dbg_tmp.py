import dbg_conf_tmp  # noqa
from test_policy_node import *  # noqa
