"""The committed DRA stubs speak the 1.34 kubelet's wire format: the gRPC paths it calls (plugin registration v1,
DRAPlugin v1 and v1beta1, DRAResourceHealth v1alpha1), and every message's field names and numbers (a renumbered
field decodes as garbage)."""

from __future__ import annotations

from typing import Any

import pytest

from nodeagent.backends._pb import (
    dra_health_v1alpha1_grpc,
    dra_health_v1alpha1_pb2,
    dra_v1_grpc,
    dra_v1_pb2,
    dra_v1beta1_grpc,
    dra_v1beta1_pb2,
    pluginregistration_grpc,
    pluginregistration_pb2,
)

DRA_FIELDS = {
    "NodePrepareResourcesRequest": {"claims": 1},
    "NodePrepareResourcesResponse": {"claims": 1},
    "NodePrepareResourceResponse": {"devices": 1, "error": 2},
    "Device": {"request_names": 1, "pool_name": 2, "device_name": 3, "cdi_device_ids": 4},
    "NodeUnprepareResourcesRequest": {"claims": 1},
    "NodeUnprepareResourcesResponse": {"claims": 1},
    "NodeUnprepareResourceResponse": {"error": 1},
    "Claim": {"namespace": 1, "uid": 2, "name": 3},
}
REGISTRATION_FIELDS = {
    "PluginInfo": {"type": 1, "name": 2, "endpoint": 3, "supported_versions": 4},
    "RegistrationStatus": {"plugin_registered": 1, "error": 2},
    "RegistrationStatusResponse": {},
    "InfoRequest": {},
}
HEALTH_FIELDS = {
    "NodeWatchResourcesRequest": {},
    "DeviceIdentifier": {"pool_name": 1, "device_name": 2},
    "DeviceHealth": {"device": 1, "health": 2, "last_updated_time": 3},
    "NodeWatchResourcesResponse": {"devices": 1},
}


def _fields(package: Any) -> dict[str, dict[str, int]]:
    return {name: {f.name: f.number for f in message.fields} for name, message in package.message_types_by_name.items()}


@pytest.mark.parametrize(
    ("module", "package"),
    [(dra_v1_pb2, "k8s.io.kubelet.pkg.apis.dra.v1"), (dra_v1beta1_pb2, "k8s.io.kubelet.pkg.apis.dra.v1beta1")],
)
def test_dra_messages_have_the_kubelets_fields(module: Any, package: str) -> None:
    assert module.DESCRIPTOR.package == package
    assert _fields(module.DESCRIPTOR) == DRA_FIELDS
    claims = module.DESCRIPTOR.message_types_by_name["NodePrepareResourcesResponse"].fields_by_name["claims"]
    assert claims.message_type.GetOptions().map_entry  # map<string, NodePrepareResourceResponse>


def test_registration_messages_have_the_kubelets_fields() -> None:
    assert pluginregistration_pb2.DESCRIPTOR.package == "pluginregistration"
    assert _fields(pluginregistration_pb2.DESCRIPTOR) == REGISTRATION_FIELDS


class _Dra(dra_v1_grpc.DRAPluginBase):
    async def NodePrepareResources(self, stream: object) -> None: ...
    async def NodeUnprepareResources(self, stream: object) -> None: ...


class _DraBeta(dra_v1beta1_grpc.DRAPluginBase):
    async def NodePrepareResources(self, stream: object) -> None: ...
    async def NodeUnprepareResources(self, stream: object) -> None: ...


class _Health(dra_health_v1alpha1_grpc.DRAResourceHealthBase):
    async def NodeWatchResources(self, stream: object) -> None: ...


class _Registration(pluginregistration_grpc.RegistrationBase):
    async def GetInfo(self, stream: object) -> None: ...
    async def NotifyRegistrationStatus(self, stream: object) -> None: ...


def test_the_grpc_paths_are_the_kubelets() -> None:
    assert sorted(_Dra().__mapping__()) == [
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodePrepareResources",
        "/k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin/NodeUnprepareResources",
    ]
    assert sorted(_DraBeta().__mapping__()) == [
        "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodePrepareResources",
        "/k8s.io.kubelet.pkg.apis.dra.v1beta1.DRAPlugin/NodeUnprepareResources",
    ]
    assert sorted(_Registration().__mapping__()) == [
        "/pluginregistration.Registration/GetInfo",
        "/pluginregistration.Registration/NotifyRegistrationStatus",
    ]
    assert sorted(_Health().__mapping__()) == ["/v1alpha1.DRAResourceHealth/NodeWatchResources"]


def test_health_messages_have_the_kubelets_fields_and_enum() -> None:
    assert dra_health_v1alpha1_pb2.DESCRIPTOR.package == "v1alpha1"
    assert _fields(dra_health_v1alpha1_pb2.DESCRIPTOR) == HEALTH_FIELDS
    status = dra_health_v1alpha1_pb2.DESCRIPTOR.enum_types_by_name["HealthStatus"]
    assert {v.name: v.number for v in status.values} == {"UNKNOWN": 0, "HEALTHY": 1, "UNHEALTHY": 2}
    (handler,) = _Health().__mapping__().values()
    assert handler.cardinality.name == "UNARY_STREAM"
