"""The runtime's tag namespace: what the simulated MXAccess can add and advise.

The Galaxy Repository layer builds a :class:`TagCatalog` from the deployed attributes of the
Galaxy; the simulated runtime only reads it. Keeping this seam small lets either side be
replaced (a real ZB database, or a real MXAccess backend that needs no catalog at all).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class TagInfo:
    """One deployed attribute, as the runtime needs it."""

    tag_name: str
    """Tag name of the owning object (``Tank01``)."""
    attribute_name: str
    """Attribute name, possibly dotted (``Level`` or ``Level.HiHi.Limit``)."""
    full_tag_reference: str
    """``tag_name.attribute_name``; arrays are read whole as ``full_tag_reference[]``."""
    mx_data_type: int
    """COM MxDataType (1 Boolean, 2 Integer, 3 Float, 4 Double, 5 String, 6 Time, 7 Elapsed...)."""
    is_array: bool
    """True for array attributes."""
    array_dimension: int
    """Element count of an array attribute (0 for scalars)."""
    security_classification: int
    """MxSecurityClassification (0 FreeAccess, 1 Operate, 2 SecuredWrite, 3 VerifiedWrite,
    4 Tune, 5 Configure, 6 ViewOnly)."""
    mx_attribute_category: int
    """MxAttributeCategory (4..11 writeable kinds, 2 Calculated, 13 SystemInternal...)."""
    is_historized: bool
    """True when historized."""
    is_alarm: bool
    """True when an alarm watches the attribute."""


class TagCatalog(Protocol):
    """Read-only view of the deployed tag namespace."""

    @property
    def version(self) -> int:
        """Changes whenever the deployed namespace changes (a redeploy)."""
        ...

    def lookup(self, full_tag_reference: str) -> TagInfo | None:
        """The attribute with this reference (case-insensitive, no ``[]`` suffix), or None."""
        ...

    def all_tags(self) -> list[TagInfo]:
        """Every deployed attribute, in a stable order."""
        ...
