"""ONNX export: parity with PyTorch over real episodes, metadata, manifest, and refusal of bad model files."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from marlctl.agents import onnx_io
from marlctl.agents.errors import ModelError
from marlctl.agents.export import ExportConfig, export_team, record_episodes, verify_agent
from marlctl.serving.errors import ModelDirError
from marlctl.serving.model import load_agent_model, read_manifest
from serving_helpers import ENV_ID, make_bundle, write_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory):
    run = write_checkpoint(tmp_path_factory.mktemp("run"))
    out = tmp_path_factory.mktemp("model")
    result = export_team(run, out, config=ExportConfig(verify_episodes=2))
    return run, out, result


def test_parity_over_real_episodes_is_reported_and_tight(exported):
    _, _, result = exported
    assert result.source == "env"  # recorded from the real hallway env, not synthetic
    assert len(result.agents) == 2
    for check in result.agents:
        assert check.steps > 2
        assert check.max_abs_diff_scores < 1e-5 and check.max_abs_diff_hidden < 1e-5
        assert check.action_agreement == 1.0 and check.real_disagreements == 0
    v = result.manifest["verification"]
    assert v["episodes"] == 2 and v["max_abs_diff_scores"] < 1e-5 and v["tolerance"] == 1e-4


def test_manifest_lists_files_with_hashes(exported):
    run, out, _ = exported
    m = read_manifest(out)
    assert m["format"] == "marlctl.model" and m["version"] == 1
    assert (m["env_id"], m["algorithm"], m["kind"], m["n_agents"], m["obs_dim"], m["n_actions"]) == \
        (ENV_ID, "qtran-base", "q", 2, 10, 2)
    assert m["source_checkpoint"] == str(run / "checkpoints" / "latest.pt")
    assert m["source_sha256"] == onnx_io.sha256_file(run / "checkpoints" / "latest.pt")
    for i, entry in enumerate(m["agents"]):
        assert entry["file"] == f"agent_{i}.onnx"
        assert entry["sha256"] == onnx_io.sha256_file(out / entry["file"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staged leftovers


def test_onnx_files_carry_metadata_and_contract_signature(exported):
    _, out, _ = exported
    for i in range(2):
        model = onnx.load(str(out / f"agent_{i}.onnx"))
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        assert meta["format"] == onnx_io.ONNX_FORMAT and meta["format_version"] == "1"
        assert meta["agent_index"] == str(i) and meta["env_id"] == ENV_ID and meta["algorithm"] == "qtran-base"
        assert (meta["obs_dim"], meta["n_actions"], meta["hidden_dim"]) == ("10", "2", "32")
        assert len(meta["source_sha256"]) == 64
        assert [x.name for x in model.graph.input] == list(onnx_io.INPUT_NAMES)
        assert [x.name for x in model.graph.output] == list(onnx_io.OUTPUT_NAMES)
        elem = {x.name: x.type.tensor_type.elem_type for x in [*model.graph.input, *model.graph.output]}
        assert elem == {"obs": onnx.TensorProto.FLOAT, "prev_action": onnx.TensorProto.INT64,
                        "avail_actions": onnx.TensorProto.BOOL, "hidden": onnx.TensorProto.FLOAT,
                        "action": onnx.TensorProto.INT64, "scores": onnx.TensorProto.FLOAT,
                        "hidden_out": onnx.TensorProto.FLOAT}
        assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == onnx_io.BATCH_DIM


def test_verification_detects_a_graph_that_differs_from_the_network(exported):
    _, out, _ = exported
    net = make_bundle(seed=0).net
    same = verify_agent(net, 0, out / "agent_0.onnx", record_episodes(ENV_ID, 2, 10, 2, ExportConfig(verify_episodes=1)), 1e-4)
    assert same.max_abs_diff_scores < 1e-5
    with torch.no_grad():
        net.head.bias.add_(0.01)
    other = verify_agent(net, 0, out / "agent_0.onnx", record_episodes(ENV_ID, 2, 10, 2, ExportConfig(verify_episodes=1)), 1e-4)
    assert other.max_abs_diff_scores > 5e-3


def copy_model(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for p in src.iterdir():
        (dst / p.name).write_bytes(p.read_bytes())
    return dst


def test_tampered_truncated_and_malformed_models_are_refused(exported, tmp_path):
    _, out, _ = exported
    assert load_agent_model(out, 0).provider == "CPUExecutionProvider"

    tampered = copy_model(out, tmp_path / "tampered")
    data = bytearray((tampered / "agent_0.onnx").read_bytes())
    data[-10] ^= 0xFF
    (tampered / "agent_0.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelDirError, match="sha256 .* does not match"):
        load_agent_model(tampered, 0)
    load_agent_model(tampered, 1)  # the untouched agent still loads

    truncated = copy_model(out, tmp_path / "truncated")
    (truncated / "agent_1.onnx").write_bytes((out / "agent_1.onnx").read_bytes()[:1000])
    with pytest.raises(ModelDirError, match="truncated"):
        load_agent_model(truncated, 1)

    bad = copy_model(out, tmp_path / "badmanifest")
    m = json.loads((bad / "manifest.json").read_text())
    m["version"] = 99
    del m["obs_dim"]
    (bad / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelDirError, match="missing key 'obs_dim'"):
        load_agent_model(bad, 0)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(ModelDirError, match="not valid JSON"):
        load_agent_model(bad, 0)
    with pytest.raises(ModelDirError, match="not found"):
        load_agent_model(tmp_path, 0)
    with pytest.raises(ModelDirError, match=r"agents 0\.\.1"):
        load_agent_model(out, 2)


def test_failed_export_leaves_the_model_dir_as_it_was(exported, tmp_path):
    _, out, _ = exported
    target = copy_model(out, tmp_path / "keep")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    wrong = make_bundle(seed=1)
    wrong.env_id = "matrix:qtran"  # network built for hallway (obs 10) cannot act in matrix:qtran (obs 1)
    with pytest.raises(ModelError, match="matrix:qtran has 2 x 1 x 3"):
        export_team(wrong, target)
    with pytest.raises(ModelError, match="opset 5 not supported"):
        export_team(make_bundle(), target, opset=5)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    with pytest.raises(ModelError):
        export_team(wrong, tmp_path / "new" / "model")
    assert not (tmp_path / "new" / "model").exists()


@pytest.mark.parametrize("opset", [13, 21])
def test_opset_range_ends_export_and_verify(opset, tmp_path):
    result = export_team(make_bundle(seed=2), tmp_path, opset=opset,
                         config=ExportConfig(verify_episodes=1, verify_max_steps=10))
    assert result.manifest["opset"] == opset
    assert onnx.load(str(tmp_path / "agent_0.onnx")).opset_import[0].version == opset
    a, q, _ = load_agent_model(tmp_path, 0).infer(np.zeros((3, 10), np.float32), np.array([-1, 0, 1]),
                                                 np.ones((3, 2), bool), np.zeros((3, 32), np.float32))
    assert a.shape == (3,) and q.shape == (3, 2)


def test_feed_forward_agent_keeps_the_contract_hidden_input(tmp_path: Path):
    """A feed-forward agent never reads ``hidden``; the tracer prunes it, export must put it back."""
    import onnxruntime as ort
    from marlctl.agents.recurrent import AgentNet, AgentNetConfig
    from marlctl.envs import env_spec
    from serving_helpers import BundleStandIn

    spec = env_spec("matrix:qtran")
    torch.manual_seed(0)
    net = AgentNet(AgentNetConfig(obs_dim=spec.obs_dim, n_actions=spec.n_actions, n_agents=spec.n_agents,
                                  hidden_dim=16, recurrent=False)).eval()
    bundle = BundleStandIn(net, "q", "qtran-base", "matrix:qtran", 10, "/runs/ff/checkpoints/latest.pt", "cd" * 32)
    result = export_team(bundle, tmp_path / "model", config=ExportConfig(verify_episodes=2))
    assert all(c.action_agreement == 1.0 for c in result.agents)
    sess = ort.InferenceSession(str(tmp_path / "model" / "agent_0.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == list(onnx_io.INPUT_NAMES)
    obs = np.ones((3, spec.obs_dim), np.float32)
    feeds = {"obs": obs, "prev_action": np.full(3, -1, np.int64),
             "avail_actions": np.ones((3, spec.n_actions), bool), "hidden": np.zeros((3, 16), np.float32)}
    action, scores, hidden_out = sess.run(None, feeds)
    with torch.no_grad():
        expect, _ = net(torch.from_numpy(obs), torch.full((3,), -1), torch.zeros(3, dtype=torch.int64),
                        torch.zeros(3, 16))
    np.testing.assert_allclose(scores, expect.numpy(), atol=1e-5)


def test_agent_with_a_two_layer_head_round_trips_and_exports(tmp_path: Path):
    """``head_layers = 2`` (an MLP head, e.g. TAD-PPO's distilled actor): the checkpoint entry rebuilds the same
    network, the exported graph matches it on real episodes, and a head size outside {1, 2} is refused."""
    from marlctl.agents.bundle import agent_net_from_entry, make_agent_bundle_entry
    from marlctl.agents.recurrent import AgentNet, AgentNetConfig
    from marlctl.envs import env_spec
    from serving_helpers import BundleStandIn

    spec = env_spec(ENV_ID)
    torch.manual_seed(0)
    net = AgentNet(AgentNetConfig(obs_dim=spec.obs_dim, n_actions=spec.n_actions, n_agents=spec.n_agents,
                                  hidden_dim=16, head_layers=2)).eval()
    assert isinstance(net.head, torch.nn.Sequential) and net.head_out is net.head[-1]
    rebuilt, _ = agent_net_from_entry(make_agent_bundle_entry(net, "actor"), "test")
    obs, prev, ids, h = torch.randn(4, spec.obs_dim), torch.tensor([-1, 0, 1, 0]), torch.zeros(4, dtype=torch.long), \
        torch.randn(4, 16)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(obs, prev, ids, h)[0], net(obs, prev, ids, h)[0])
    bundle = BundleStandIn(net, "actor", "tad-ppo", ENV_ID, 10, "/runs/mlp/checkpoints/latest.pt", "ab" * 32)
    result = export_team(bundle, tmp_path / "model", config=ExportConfig(verify_episodes=2))
    assert result.source == "env" and all(c.action_agreement == 1.0 for c in result.agents)
    assert max(c.max_abs_diff_scores for c in result.agents) < 1e-4
    with pytest.raises(ValueError, match="head_layers must be 1"):
        AgentNetConfig(obs_dim=3, n_actions=2, n_agents=2, head_layers=3)
