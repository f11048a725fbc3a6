"""The simulator's loggers escape caller text: see :mod:`mxgateway._logsafe` (shared with the
library and the COM runtime; this name is kept for the simulator's modules)."""

from mxgateway._logsafe import SafeFieldsFilter, escape_log_text, get_logger

__all__ = ["SafeFieldsFilter", "escape_log_text", "get_logger"]
