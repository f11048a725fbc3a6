"""Keep gRPC core's own log lines (``WRONG_VERSION_NUMBER``, ``Socket closed``...) off the
terminal: ``mxgw-py`` reports every failure itself, once, in words (or as one JSON document
under ``--json``). gRPC reads these variables when it is first imported, so this module is
imported by ``mxgateway_cli.main`` before anything imports ``grpc``. A value the user set
is kept (``GRPC_VERBOSITY=debug mxgw-py ...`` still shows gRPC's logs).
"""

from __future__ import annotations

import os

__all__: list[str] = []

os.environ.setdefault("GRPC_VERBOSITY", "NONE")
os.environ.setdefault("GRPC_TRACE", "")
