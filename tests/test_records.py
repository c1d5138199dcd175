"""Episode records (round trip, atomic write, corrupt/foreign files refused) and the runner's statistics."""
from __future__ import annotations

import gzip
import json
import math

import numpy as np
import pytest
from marlctl.serving.errors import ServingError
from marlctl.serving.records import (
    RECORD_SUFFIX,
    EpisodeRecord,
    Fallback,
    Outcome,
    RecordError,
    find_records,
    load_record,
    save_record,
)
from marlctl.serving.stats import (
    mean_t_interval,
    percentiles,
    summarize,
    summarize_records,
    t_quantile_975,
    wilson_interval,
)

SPEC = {"env_id": "matrix:qtran", "n_agents": 2, "obs_dim": 3, "state_dim": 3, "n_actions": 3,
        "episode_limit": 4, "fully_observable": True, "has_won": False, "action_names": []}


def _record(obs: bool = True) -> EpisodeRecord:
    rng = np.random.default_rng(0)
    t = 3
    lat = rng.uniform(0.1, 2.0, (t, 2))
    lat[1, 0] = math.nan
    return EpisodeRecord(
        env_id="matrix:qtran", env_spec=dict(SPEC), seed=7, episode_index=2,
        actions_TN=np.array([[0, 0], [1, 2], [2, 1]]), rewards_T=np.array([8.0, -12.0, 0.125]),
        outcome=Outcome(episode_return=-3.875, won=False, score=-3.875, length=t, terminated=True,
                        truncated=False, degraded=True),
        latency_ms_TN=lat, fallbacks=[Fallback(step=1, agent=0, reason="timeout", action=1)],
        reconnects=[(2, 0)], source={"kind": "run", "agents": ["127.0.0.1:1", "127.0.0.1:2"]},
        obs_TNO=rng.standard_normal((t, 2, 3)).astype(np.float32) if obs else None,
        avail_TNA=np.ones((t, 2, 3), dtype=bool) if obs else None,
    )


def test_round_trip_is_exact_and_atomic(tmp_path):
    rec = _record()
    path = save_record(rec, tmp_path / "recs")
    assert path.name.endswith(RECORD_SUFFIX)
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp file left behind
    back = load_record(path, expect_env="matrix:qtran")
    np.testing.assert_array_equal(back.actions_TN, rec.actions_TN)
    np.testing.assert_array_equal(back.rewards_T, rec.rewards_T)
    np.testing.assert_array_equal(back.obs_TNO, rec.obs_TNO)  # float32 survives JSON exactly
    np.testing.assert_array_equal(back.avail_TNA, rec.avail_TNA)
    assert np.isnan(back.latency_ms_TN[1, 0]) and np.allclose(back.latency_ms_TN[0], rec.latency_ms_TN[0], atol=1e-4)
    assert back.outcome == rec.outcome and back.outcome["return"] == -3.875
    assert back.fallbacks == rec.fallbacks and back.reconnects == [(2, 0)]
    assert (back.seed, back.episode_index, back.source) == (7, 2, rec.source)
    header = json.loads(gzip.decompress(path.read_bytes()))
    assert (header["format"], header["version"]) == ("marlctl.episode", 1)
    (path.parent / f".tmp-crashed{RECORD_SUFFIX}").write_bytes(b"partial")  # a writer killed mid-write
    assert find_records([path.parent]) == [path]


def test_record_without_observations(tmp_path):
    back = load_record(save_record(_record(obs=False), tmp_path))
    assert back.obs_TNO is None and back.avail_TNA is None


def _write(path, doc) -> None:
    path.write_bytes(gzip.compress(json.dumps(doc).encode()))


@pytest.mark.parametrize("damage", ["truncated", "not_gzip", "not_json", "format", "version", "actions",
                                    "length", "missing"])
def test_corrupt_records_are_refused(tmp_path, damage):
    path = save_record(_record(), tmp_path)
    doc = json.loads(gzip.decompress(path.read_bytes()))
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "not_gzip":
        path.write_bytes(b"hello, not a record")
    elif damage == "not_json":
        path.write_bytes(gzip.compress(b"{not json"))
    elif damage == "format":
        _write(path, doc | {"format": "something.else"})
    elif damage == "version":
        _write(path, doc | {"version": 99})
    elif damage == "actions":
        _write(path, doc | {"actions": [[0, 0], [1, 7], [2, 1]]})
    elif damage == "length":
        _write(path, doc | {"rewards": [1.0]})
    elif damage == "missing":
        doc.pop("seed")
        _write(path, doc)
    with pytest.raises(RecordError) as err:
        load_record(path)
    assert str(path) in str(err.value) and isinstance(err.value, ServingError)


def test_record_from_another_env_and_missing_file_are_refused(tmp_path):
    path = save_record(_record(), tmp_path)
    with pytest.raises(RecordError, match="from env 'matrix:qtran', not 'smax:3m'"):
        load_record(path, expect_env="smax:3m")
    with pytest.raises(RecordError, match="not found"):
        load_record(tmp_path / "nope.episode.json.gz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecordError, match="no episode records"):
        find_records([tmp_path / "empty"])


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4) and hi == pytest.approx(0.9433, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo, hi = wilson_interval(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(3, 2)


def test_t_interval_matches_student_t():
    for df, t in ((1, 12.7062), (9, 2.2622), (30, 2.0423), (60, 2.0003), (120, 1.9799), (1000, 1.9623)):
        assert t_quantile_975(df) == pytest.approx(t, abs=2e-4)
    mean, lo, hi = mean_t_interval([1.0, 2.0, 3.0, 4.0])
    half = 3.1824 * np.std([1, 2, 3, 4], ddof=1) / 2
    assert (mean, lo, hi) == pytest.approx((2.5, 2.5 - half, 2.5 + half), abs=1e-3)
    assert mean_t_interval([5.0]) == (5.0, 5.0, 5.0)
    assert all(math.isnan(v) for v in mean_t_interval([]))


def test_summary_and_percentiles():
    assert percentiles(np.arange(101.0), (50, 99)) == [50.0, 99.0]
    s = summarize([8.0, 8.0, 0.0], [True, True, False], [1, 1, 1], aborted=1, degraded=1,
                  latencies_ms={0: [1.0, 2.0, 3.0], 1: []}, fallbacks={(1, "timeout"): 2})
    assert (s.episodes, s.wins, s.aborted, s.degraded) == (3, 2, 1, 1)
    assert s.win_rate == pytest.approx(2 / 3) and s.mean_return == pytest.approx(16 / 3)
    assert s.latency_ms[0] == (2.0, pytest.approx(2.98)) and math.isnan(s.latency_ms[1][0])
    assert s.to_dict()["fallbacks"] == [{"agent": 1, "reason": "timeout", "count": 2}]
    assert s.time_outs == 0 and s.to_dict()["time_outs"] == 0  # none given: none ended at the limit
    cut = summarize([1.0, 0.0, 0.0], [True, False, False], [3, 60, 60], truncated=[False, True, False])
    assert cut.time_outs == 1 and cut.wins == 1
    with pytest.raises(ValueError, match="truncated"):
        summarize([1.0], [True], [3], truncated=[False, True])
    empty = summarize([], [], [], aborted=2).to_dict()
    assert empty["win_rate"] is None and empty["return_ci"] == [None, None] and empty["aborted"] == 2
    json.dumps(empty, allow_nan=False)


def _played(env_id: str, seed: int) -> EpisodeRecord:
    """An episode of ``env_id`` played with seeded random available actions, as a record."""
    from marlctl.envs import make_env

    env = make_env(env_id)
    rng = np.random.default_rng(seed)
    ts = env.reset(seed)
    actions, rewards = [], []
    while not ts.done:
        joint = np.array([rng.choice(np.flatnonzero(a)) for a in ts.avail])
        ts = env.step(joint)
        actions.append(joint)
        rewards.append(ts.reward)
    env.close()
    n = env.spec.n_agents
    return EpisodeRecord(
        env_id=env_id, env_spec=env.spec.to_dict(), seed=seed, episode_index=0,
        actions_TN=np.array(actions), rewards_T=np.array(rewards, dtype=np.float64),
        outcome=Outcome(episode_return=float(np.sum(rewards)), won=bool(ts.info["won"]), score=float(ts.info["score"]),
                        length=len(actions), terminated=ts.terminated, truncated=ts.truncated, degraded=False),
        latency_ms_TN=np.zeros((len(actions), n)),
    )


def test_summary_counts_the_episodes_cut_at_the_limit():
    """Records of real episodes: a fixed-length game's are all cut at its limit; a matrix game's never are."""
    fixed = summarize_records([_played("predator_prey_qtran:limit=12", seed=s) for s in range(3)])
    assert (fixed.episodes, fixed.time_outs, fixed.wins) == (3, 3, 0)
    one_shot = summarize_records([_played("matrix:qtran", seed=s) for s in range(3)])
    assert (one_shot.episodes, one_shot.time_outs) == (3, 0)


def test_replay_matches_a_true_record_and_catches_doctored_ones(tmp_path):
    import subprocess
    import sys

    from marlctl.serving.replay import replay_record

    env_id = "predator_prey:agents=2,prey=1,grid=4,limit=30,punishment=0.5"
    rec = _played(env_id, seed=4)
    assert rec.outcome.length >= 3
    result, frames = replay_record(rec, render=True)
    assert result.match and result.replayed_return == rec.outcome.episode_return and len(frames) == rec.outcome.length + 1
    doctored_reward = _played(env_id, seed=4)
    doctored_reward.rewards_T[1] += 1.0
    doctored_reward.outcome.episode_return += 1.0
    assert any(p.startswith("step 1: reward") for p in replay_record(doctored_reward)[0].problems)
    cut = _played(env_id, seed=4)
    cut.actions_TN, cut.rewards_T, cut.latency_ms_TN = cut.actions_TN[:-1], cut.rewards_T[:-1], cut.latency_ms_TN[:-1]
    cut.outcome.length -= 1
    cut.outcome.episode_return = float(cut.rewards_T.sum())
    assert "the env goes on" in " ".join(replay_record(cut)[0].problems)
    other_seed = _played(env_id, seed=4)
    other_seed.seed = 5  # same actions from another start: positions, rewards or the end differ
    assert not replay_record(other_seed)[0].match
    # The CLI: exit 0 for the true record, 1 (and the reason) for a doctored one.
    good, bad = save_record(rec, tmp_path / "good"), save_record(doctored_reward, tmp_path / "bad")
    cli = [sys.executable, "-m", "marlctl.cli.app", "replay"]
    assert subprocess.run([*cli, str(good)], capture_output=True, timeout=120).returncode == 0
    out = subprocess.run([*cli, str(bad)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "step 1: reward" in " ".join(out.stderr.split())
