"""``mxgw-py``: the command-line client of the MXAccess Gateway."""
