"""Generated protobuf and grpclib code for the gRPC APIs the agent calls (committed; not built at install).

Regenerate after editing a .proto (grpcio-tools is a development tool, never a runtime dependency)::

    python -m venv /tmp/pbgen && /tmp/pbgen/bin/pip install grpcio-tools grpclib "protobuf==<runtime version>"
    PATH=/tmp/pbgen/bin:$PATH /tmp/pbgen/bin/python -m grpc_tools.protoc -I . --python_out=. \
        --grpclib_python_out=. nodeagent/backends/_pb/podresources.proto
"""
