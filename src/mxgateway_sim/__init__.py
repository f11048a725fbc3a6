"""``mxgw-sim``: a real gRPC MXAccess Gateway with a simulated MXAccess runtime."""
