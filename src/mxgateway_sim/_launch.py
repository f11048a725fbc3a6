"""Console-script entry points of the simulator's programs (``mxgw-sim``, ``mxgw-gateway``).

They set the server's gRPC core settings (:mod:`mxgateway_sim._grpcenv`) before anything
loads gRPC, then run :mod:`mxgateway_sim.cli`. This module and the package's ``__init__``
import nothing that loads gRPC.
"""

from __future__ import annotations

from typing import NoReturn

from mxgateway_sim._grpcenv import apply_server_experiments

__all__ = ["run", "run_gateway"]


def run() -> NoReturn:
    """``mxgw-sim``."""
    apply_server_experiments()
    from mxgateway_sim import cli

    cli.run()


def run_gateway() -> NoReturn:
    """``mxgw-gateway``."""
    apply_server_experiments()
    from mxgateway_sim import cli

    cli.run_gateway()
