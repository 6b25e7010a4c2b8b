"""Generated protobuf and grpclib code for the gRPC APIs the agent calls and serves (committed; not built at
install): the kubelet's PodResources v1 (``podresources.proto``) and device plugin v1beta1
(``deviceplugin.proto``) subsets.

Regenerate after editing a .proto with the pinned generator (grpcio-tools is a development tool, never a
runtime dependency; 1.85.4 writes protobuf 7.35.1 gencode, which the runtime's protobuf 7.x accepts)::

    python -m venv /tmp/pbgen && /tmp/pbgen/bin/pip install grpcio-tools==1.85.4 grpclib==0.4.9
    PATH=/tmp/pbgen/bin:$PATH /tmp/pbgen/bin/python -m grpc_tools.protoc -I . --python_out=. \
        --grpclib_python_out=. nodeagent/backends/_pb/podresources.proto nodeagent/backends/_pb/deviceplugin.proto

``tests/backends/test_deviceplugin_pb.py`` checks the device plugin's wire names and field numbers against
the kubelet's.
"""
