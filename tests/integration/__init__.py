"""Integration tests: Vigil services against a real nats-server."""
