"""Generated protobuf and grpclib code for the gRPC APIs the agent calls and serves (committed; not built at
install): the kubelet's PodResources v1 (``podresources.proto``) and device plugin v1beta1
(``deviceplugin.proto``) subsets, and, for the DRA kubelet plugin, the kubelet's plugin registration v1
(``pluginregistration.proto``), DRA plugin v1 and v1beta1 (``dra_v1.proto``, ``dra_v1beta1.proto``) and DRA
resource health v1alpha1 (``dra_health_v1alpha1.proto``: the DRAResourceHealth stream, behind the alpha
ResourceHealthStatus gate in 1.34) of Kubernetes 1.34.

Regenerate after editing a .proto with the pinned generator (grpcio-tools is a development tool, never a
runtime dependency; 1.85.4 writes protobuf 7.35.1 gencode, which the runtime's protobuf 7.x accepts)::

    python -m venv /tmp/pbgen && /tmp/pbgen/bin/pip install grpcio-tools==1.85.4 grpclib==0.4.9
    PATH=/tmp/pbgen/bin:$PATH /tmp/pbgen/bin/python -m grpc_tools.protoc -I . --python_out=. \
        --grpclib_python_out=. nodeagent/backends/_pb/podresources.proto nodeagent/backends/_pb/deviceplugin.proto \
        nodeagent/backends/_pb/pluginregistration.proto nodeagent/backends/_pb/dra_v1.proto \
        nodeagent/backends/_pb/dra_v1beta1.proto nodeagent/backends/_pb/dra_health_v1alpha1.proto

``tests/backends/test_deviceplugin_pb.py`` and ``tests/backends/test_dra_pb.py`` check the wire names and
field numbers against the kubelet's.
"""
