"""The real Kuka arm behind NSL's arm interface (arm/reset_episode, arm/execute_step), via MoveIt 2."""
