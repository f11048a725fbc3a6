"""Python bindings generated from ``proto/`` by ``scripts/generate_proto.py``.

Do not edit: regenerate instead. Modules:

- ``mxaccess_gateway_pb2`` / ``_pb2_grpc``: package ``mxaccess_gateway.v1``
- ``mxaccess_worker_pb2`` / ``_pb2_grpc``: package ``mxaccess_worker.v1``
- ``galaxy_repository_pb2`` / ``_pb2_grpc``: package ``galaxy_repository.v1``
"""
