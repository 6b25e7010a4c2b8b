"""The committed device plugin stubs speak the kubelet's v1beta1 wire format: the gRPC paths the kubelet
calls, and every message's field names and numbers (a renumbered field would decode as garbage)."""

from __future__ import annotations

from nodeagent.backends._pb import deviceplugin_grpc, deviceplugin_pb2

KUBELET_FIELDS = {
    "DevicePluginOptions": {"pre_start_required": 1, "get_preferred_allocation_available": 2},
    "RegisterRequest": {"version": 1, "endpoint": 2, "resource_name": 3, "options": 4},
    "Empty": {},
    "ListAndWatchResponse": {"devices": 1},
    "TopologyInfo": {"nodes": 1},
    "NUMANode": {"ID": 1},
    "Device": {"ID": 1, "health": 2, "topology": 3},
    "PreStartContainerRequest": {"devices_ids": 1},
    "PreStartContainerResponse": {},
    "PreferredAllocationRequest": {"container_requests": 1},
    "ContainerPreferredAllocationRequest": {
        "available_deviceIDs": 1,
        "must_include_deviceIDs": 2,
        "allocation_size": 3,
    },
    "PreferredAllocationResponse": {"container_responses": 1},
    "ContainerPreferredAllocationResponse": {"deviceIDs": 1},
    "AllocateRequest": {"container_requests": 1},
    "ContainerAllocateRequest": {"devices_ids": 1},
    "CDIDevice": {"name": 1},
    "AllocateResponse": {"container_responses": 1},
    "ContainerAllocateResponse": {"envs": 1, "mounts": 2, "devices": 3, "annotations": 4, "cdi_devices": 5},
    "Mount": {"container_path": 1, "host_path": 2, "read_only": 3},
    "DeviceSpec": {"container_path": 1, "host_path": 2, "permissions": 3},
}


def test_messages_have_the_kubelets_fields() -> None:
    package = deviceplugin_pb2.DESCRIPTOR
    assert package.package == "v1beta1"
    assert set(package.message_types_by_name) == set(KUBELET_FIELDS)
    for name, fields in KUBELET_FIELDS.items():
        found = {f.name: f.number for f in package.message_types_by_name[name].fields}
        assert found == fields, name


class _Plugin(deviceplugin_grpc.DevicePluginBase):
    async def GetDevicePluginOptions(self, stream: object) -> None: ...
    async def ListAndWatch(self, stream: object) -> None: ...
    async def GetPreferredAllocation(self, stream: object) -> None: ...
    async def Allocate(self, stream: object) -> None: ...
    async def PreStartContainer(self, stream: object) -> None: ...


class _Registration(deviceplugin_grpc.RegistrationBase):
    async def Register(self, stream: object) -> None: ...


def test_the_grpc_paths_are_the_kubelets() -> None:
    plugin = _Plugin().__mapping__()
    assert sorted(plugin) == [
        "/v1beta1.DevicePlugin/Allocate",
        "/v1beta1.DevicePlugin/GetDevicePluginOptions",
        "/v1beta1.DevicePlugin/GetPreferredAllocation",
        "/v1beta1.DevicePlugin/ListAndWatch",
        "/v1beta1.DevicePlugin/PreStartContainer",
    ]
    assert plugin["/v1beta1.DevicePlugin/ListAndWatch"].cardinality.name == "UNARY_STREAM"
    assert list(_Registration().__mapping__()) == ["/v1beta1.Registration/Register"]
