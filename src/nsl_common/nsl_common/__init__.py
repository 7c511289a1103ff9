"""Small pieces every NSL node shares: names, QoS, the standard main() and service calls."""
