"""A bus that lets no one in: credentials, permissions and certificates for Vigil's NATS.

``vigil secure init DIR`` writes everything a cluster needs (see ``bundle``): an nkey per role,
a nats-server authorization block granting each role only its subjects (``permissions``), and a
CA with a server certificate (``pki``). The server enforces all of it; Vigil's own code only
presents the credentials (``vigil.core.credentials``). docs/security.md is the operator's guide.
"""
