"""The real Kuka arm behind NSL's arm interface, via MoveIt 2.

The interface is the services arm/reset_episode and arm/execute_step.
"""
