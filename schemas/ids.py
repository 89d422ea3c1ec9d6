"""Identifiers, as NewTypes so a node name is never passed where a group name is expected."""

from typing import NewType

NodeName = NewType("NodeName", str)
GroupName = NewType("GroupName", str)
Epoch = NewType("Epoch", int)
