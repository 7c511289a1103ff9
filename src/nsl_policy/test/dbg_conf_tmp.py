import time, pytest
import test_policy_node as t
orig_load = t.FakeRobot.load
def load(self, path, timeout=30.0):
    t0=time.monotonic(); ok=self.load_client.wait_for_service(timeout_sec=timeout); print("WFS", ok, time.monotonic()-t0, flush=True)
    t0=time.monotonic(); r=orig_load(self, path, timeout); print("CALL", time.monotonic()-t0, flush=True); return r
t.FakeRobot.load = load
orig_pub = t.FakeRobot.publish_image
def pub(self):
    t0=time.monotonic(); orig_pub(self); print("PUB", time.monotonic()-t0, flush=True)
t.FakeRobot.publish_image = pub
