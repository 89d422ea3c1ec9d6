"""The ``vigil`` command line: parser (``main``), operator intents, status, events, endpoints and
``vigil up``. It talks to the cluster only through the bus, like any other client."""
