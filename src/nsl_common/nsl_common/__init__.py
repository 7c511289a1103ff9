"""Small pieces every NSL node shares: the standard main() of a node and service calls from a thread."""
