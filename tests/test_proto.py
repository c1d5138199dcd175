"""The committed generated modules match agent.proto, and import as part of the package."""
from __future__ import annotations

import shutil
from pathlib import Path

import marlctl.proto
import pytest
from marlctl.proto import build

PROTO_DIR = Path(marlctl.proto.__file__).parent


def test_generated_modules_are_up_to_date(tmp_path):
    pytest.importorskip("grpc_tools")
    shutil.copy(PROTO_DIR / "agent.proto", tmp_path / "agent.proto")
    written = build.build(tmp_path)
    assert {p.name for p in written} == {"agent_pb2.py", "agent_pb2.pyi", "agent_pb2_grpc.py"}
    for path in written:
        assert path.read_text() == (PROTO_DIR / path.name).read_text(), \
            f"{path.name} is stale: run `python -m marlctl.proto.build` and commit the result"
    assert "from marlctl.proto import agent_pb2 as agent__pb2" in (tmp_path / "agent_pb2_grpc.py").read_text()


def test_service_contract():
    from marlctl.proto import agent_pb2

    service = agent_pb2.DESCRIPTOR.services_by_name["AgentService"]
    assert service.full_name == "marlctl.agent.v1.AgentService"
    methods = {m.name: (m.input_type.name, m.output_type.name) for m in service.methods}
    assert methods == {"Episode": ("Observation", "Decision"), "Decide": ("DecideRequest", "Decision"),
                       "Episodes": ("ObservationBatch", "DecisionBatch"), "GetSpec": ("GetSpecRequest", "AgentSpec")}
    assert all(f.is_packed for f in agent_pb2.ObservationBatch.DESCRIPTOR.fields)
    assert all(f.is_packed for f in agent_pb2.DecisionBatch.DESCRIPTOR.fields if f.name not in ("error", "timing"))
    obs = agent_pb2.Observation.DESCRIPTOR.fields_by_name
    assert obs["obs"].is_packed and obs["avail_actions"].is_packed
