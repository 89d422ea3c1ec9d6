"""The test harness that tests and benchmarks share (like nats.py's own test helpers): a real
nats-server of our own (``server``), one event recorder with deadlines (``events``), one client
that probes an address from the lab's client namespace (``probe``), and a JSON-lines reader for
helper processes (``lines``). Nothing here fakes a part of Vigil: it starts and watches the real
thing. It ships with the package so that operators can script rehearsals with it too."""
