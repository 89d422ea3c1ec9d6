"""Vigil's wire types: every message on the bus and every stored record, as msgspec Structs.

No I/O here. Messages are JSON on the wire so ``nats sub 'vigil.>'`` is readable; every tagged
union uses explicit, stable tags (never the class name). Evolve only by adding fields with defaults;
never rename or remove one. Records and messages ignore unknown fields (an older reader reads a
newer writer's record), operator input does not: see schemas/README.md.
"""
