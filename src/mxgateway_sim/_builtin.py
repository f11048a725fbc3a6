"""A small in-memory tag catalog: the fallback namespace when no Galaxy database is used.

It describes a tiny plant (one tank, one pump, one line) with attributes of every common
MX data type, an array, and each security classification the runtime treats specially.
"""

from __future__ import annotations

from collections.abc import Iterable

from mxgateway_sim._catalog import TagInfo
from mxgateway_sim._domain import (
    MX_BOOLEAN,
    MX_DOUBLE,
    MX_ELAPSED_TIME,
    MX_FLOAT,
    MX_INTEGER,
    MX_STRING,
    MX_TIME,
)

# MxAttributeCategory values used below.
_WRITEABLE_USC = 8
_CALCULATED = 2


class InMemoryCatalog:
    """A :class:`~mxgateway_sim._catalog.TagCatalog` over a fixed list of attributes."""

    def __init__(self, tags: Iterable[TagInfo], version: int = 1) -> None:
        self._tags = list(tags)
        self._by_ref = {t.full_tag_reference.lower(): t for t in self._tags}
        self._version = version

    @property
    def version(self) -> int:
        """Never changes: this catalog is not redeployed."""
        return self._version

    def lookup(self, full_tag_reference: str) -> TagInfo | None:
        """Case-insensitive lookup without the ``[]`` suffix."""
        return self._by_ref.get(full_tag_reference.lower())

    def all_tags(self) -> list[TagInfo]:
        """Every attribute in definition order."""
        return list(self._tags)

    def object_tag_names(self) -> list[str]:
        """Tag names of the objects that own the attributes."""
        return list(dict.fromkeys(t.tag_name for t in self._tags))


def tag(
    tag_name: str,
    attribute: str,
    data_type: int,
    *,
    security: int = 1,
    category: int = _WRITEABLE_USC,
    array: int = 0,
    historized: bool = False,
    alarm: bool = False,
) -> TagInfo:
    """Build one :class:`TagInfo` with the defaults of a writeable Operate UDA."""
    return TagInfo(
        tag_name=tag_name,
        attribute_name=attribute,
        full_tag_reference=f"{tag_name}.{attribute}",
        mx_data_type=data_type,
        is_array=array > 0,
        array_dimension=array,
        security_classification=security,
        mx_attribute_category=category,
        is_historized=historized,
        is_alarm=alarm,
    )


def builtin_catalog() -> InMemoryCatalog:
    """The demo plant used when no Galaxy database is wired in."""
    return InMemoryCatalog(
        [
            tag("Tank01", "Level", MX_DOUBLE, category=_CALCULATED, historized=True),
            tag("Tank01", "Temperature", MX_FLOAT, category=_CALCULATED, historized=True),
            tag("Tank01", "LevelSetpoint", MX_DOUBLE),
            tag("Tank01", "HighLevelAlarm", MX_BOOLEAN, category=_CALCULATED, alarm=True),
            tag("Tank01", "Description", MX_STRING, security=0),
            tag("Tank01", "ProductCodes", MX_STRING, array=5),
            tag("Tank01", "LevelHistory", MX_DOUBLE, array=10, category=_CALCULATED),
            tag("Pump01", "Running", MX_BOOLEAN, category=_CALCULATED),
            tag("Pump01", "Speed", MX_DOUBLE, category=_CALCULATED),
            tag("Pump01", "SpeedSetpoint", MX_DOUBLE, security=2),
            tag("Pump01", "StartCount", MX_INTEGER, category=_CALCULATED),
            tag("Pump01", "Mode", MX_STRING),
            tag("Pump01", "Interlock", MX_BOOLEAN, security=3),
            tag("Pump01", "SerialNumber", MX_STRING, security=6),
            tag("Pump01", "LastStart", MX_TIME),
            tag("Pump01", "RunTime", MX_ELAPSED_TIME, category=_CALCULATED),
            tag("Line01", "BatchCount", MX_INTEGER),
            tag("Line01", "State", MX_STRING, category=_CALCULATED),
            tag("Line01", "Recipe", MX_STRING),
            tag("Line01", "Enabled", MX_BOOLEAN),
            tag("Line01", "Ratio", MX_FLOAT, security=4),
            tag("Line01", "Counter", MX_INTEGER, category=_CALCULATED),
            tag("Line01", "Setpoints", MX_INTEGER, array=4),
        ]
    )
