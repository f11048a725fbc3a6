"""``python -m mxgateway_cli``: the same as ``mxgw-py``."""

from mxgateway_cli.main import run

run()
