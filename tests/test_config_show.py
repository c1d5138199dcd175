"""Where every training setting comes from: the packaged files hold only deviations, `marlctl config show` says the layer."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from marlctl.cli.app import app
from marlctl.trainer.config import CONFIG_DIR, ConfigLayer, env_family, packaged_layers, resolve_layers
from marlctl.trainer.registry import ALGORITHMS, algorithm_spec
from typer.testing import CliRunner


def marlctl(*args: str) -> SimpleNamespace:
    """The real `marlctl` app, in process (no interpreter start per call): exit code, stdout, stderr."""
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def _applies_to(path: Path) -> list[tuple[str, str]]:
    """``(algo, env family)`` pairs that the packaged file ``path`` is a layer of."""
    if path.parent.name == "algo":
        return [(path.stem, "matrix"), (path.stem, "smax")]  # any family: the file sits below all of them
    family, _, qualifier = path.stem.partition(".")
    return [(algo, family) for algo in ALGORITHMS
            if qualifier in ("", algo, algorithm_spec(algo).kind)]


PACKAGED = sorted((CONFIG_DIR / "algo").glob("*.toml")) + sorted((CONFIG_DIR / "env").glob("*.toml"))


@pytest.mark.parametrize("path", PACKAGED, ids=[f"{p.parent.name}/{p.name}" for p in PACKAGED])
def test_every_packaged_key_differs_from_what_it_overrides(path: Path) -> None:
    """A packaged key that restates the value below it hides nothing but the truth: which layer decides."""
    pairs = _applies_to(path)
    assert pairs, f"{path.name} applies to no algorithm: its qualifier is neither value, policy nor an algorithm"
    name = f"{path.parent.name}/{path.name}"
    useless: dict[str, list[str]] = {}
    for algo, family in pairs:
        layers = packaged_layers(algo, family)
        names = [layer.name for layer in layers]
        assert name in names, (algo, family, names)
        at = names.index(name)
        run = ConfigLayer("command line", {"run": {"algo": algo}})
        below = resolve_layers([*layers[:at], run]).to_dict()
        with_it = resolve_layers([*layers[: at + 1], run]).to_dict()
        for section, values in layers[at].sections.items():
            for key in values:
                if below[section][key] == with_it[section][key]:
                    useless.setdefault(f"{section}.{key}", []).append(algo)
    # A key must change the value for at least one algorithm the file applies to.
    restated = [key for key, algos in useless.items() if len(algos) == len(pairs)]
    assert not restated, f"{name} restates what it overrides for every algorithm it applies to: {restated}"


def test_an_env_family_file_wins_over_the_algorithm_file_and_config_show_says_so() -> None:
    p = marlctl("config", "show", "--algo", "remix", "--env", "matrix:qtran", "--set", "optim.lr=0.003", "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    out = json.loads(p.stdout)
    settings = {s["key"]: s for s in out["settings"]}
    batch = settings["replay.batch_size"]
    assert (batch["value"], batch["source"], batch["overrides"]) == (32, "env/matrix.toml", [["algo/remix.toml", 128]])
    lr = settings["optim.lr"]
    assert (lr["value"], lr["source"]) == (0.003, "--set")
    assert ["algo/remix.toml", 0.001] in lr["overrides"] and ["default", 0.0005] in lr["overrides"]
    assert settings["learner.td_lambda"]["source"] == "algo/remix.toml"
    assert settings["mixer.central_embed_dim"] == {"key": "mixer.central_embed_dim", "value": 256,
                                                     "source": "default", "overrides": []}
    assert "env family's file wins over an algorithm's own file" in out["precedence"]
    table = marlctl("config", "show", "--algo", "remix", "--env", "matrix:qtran", "--changed")
    assert table.returncode == 0 and "env/matrix.toml" in table.stdout and "algo/remix.toml 128" in table.stdout
    assert "mixer.central_embed_dim" not in table.stdout  # --changed hides the defaults


def test_config_show_of_a_run_dir_reports_the_layers_it_was_made_from(tmp_path: Path) -> None:
    run = tmp_path / "run"
    p = marlctl("train", "--algo", "qtran-base", "--env", "matrix:qtran", "--steps", "64", "--device", "cpu",
                "--out", str(run), "--set", "run.progress=false", "--set", "mixer.joint_embed_dim=16")
    assert p.returncode == 0, p.stdout + p.stderr
    p = marlctl("config", "show", str(run), "--json")
    assert p.returncode == 0, p.stdout + p.stderr
    settings = {s["key"]: s for s in json.loads(p.stdout)["settings"]}
    assert (settings["mixer.joint_embed_dim"]["value"], settings["mixer.joint_embed_dim"]["source"]) == (16, "--set")
    optimizer = settings["optim.optimizer"]  # algo/qtran-base.toml says adam too: the top layer decides, no clash
    assert (optimizer["source"], optimizer["overrides"]) == ("env/matrix.toml", [["default", "rmsprop"]])
    assert settings["env.num_envs"]["source"] == "env/matrix.toml"
    assert settings["run.steps"]["source"] == "command line"
    (run / "config_sources.json").unlink()  # a run made before the record existed
    p = marlctl("config", "show", str(run), "--json")
    settings = {s["key"]: s for s in json.loads(p.stdout)["settings"]}
    assert settings["mixer.joint_embed_dim"]["source"] == "config.json"
    assert settings["mixer.central_embed_dim"]["source"] == "default"


@pytest.mark.parametrize(("args", "message"), [
    (("--algo", "qmixx", "--env", "matrix:qtran"), "unknown algorithm 'qmixx'; valid:"),
    (("--algo", "qmix", "--env", "smaxx:3m"), "unknown environment family 'smaxx'"),
    (("--algo", "qmix", "--env", "smax:3m", "--set", "mixer.width=3"), "unknown key(s) mixer.width"),
    (("--algo", "mappo", "--env", "smax:3m", "--set", "algo.gamma=0.9"), "unknown key(s) algo.gamma"),
])
def test_config_show_bad_input_is_the_train_command_s_one_line_error(args: tuple[str, ...], message: str) -> None:
    p = marlctl("config", "show", *args)
    assert p.returncode == 2, p.stdout + p.stderr
    assert message in " ".join(p.stderr.split()) and "Traceback" not in p.stderr


def test_env_family_names_the_family_of_an_id_with_options() -> None:
    assert env_family("predator_prey:agents=2,grid=5") == "predator_prey" and env_family("hallway") == "hallway"
