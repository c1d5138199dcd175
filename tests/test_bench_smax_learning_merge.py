"""``bench/smax_learning.py --merge/--report-only``: cells of an earlier report (run dirs gone) join a new report,
incomparable reports are refused, and nothing trains. No learning here: the rows are written by the test."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "smax_learning.py"
ENV = "smax:2s3z,smac=1"


def _bench():
    spec = importlib.util.spec_from_file_location("smax_learning_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _report(path: Path, algo: str, wins: list[float], overrides: list[str], cpu: bool = False) -> Path:
    rows = [{"env": ENV, "algo": algo, "seed": seed, "env_steps": 1000, "updates": 3, "wall_s": 10.0 + seed,
             **({"cpu_s": 5.0 + 2 * seed} if cpu else {}),
             "commit": "abc", "run_dir": f"/gone/{algo}/seed{seed}", "train_win_rate": w / 2,
             "curve": [{"env_steps": 500, "win_rate": 0.0, "return": 1.0, "joint_win_rate": None},
                       {"env_steps": 1000, "win_rate": w, "return": 2.0, "joint_win_rate": None}]}
            for seed, w in enumerate(wins)]
    meta = {"steps": 1000, "overrides": overrides, "eval_interval": 500, "eval_episodes": 64}
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return path


def test_merge_reports_finished_cells_of_earlier_reports_and_trains_nothing(tmp_path: Path) -> None:
    bench = _bench()
    a = _report(tmp_path / "a.json", "qmix", [0.5, 0.75, 1.0], [])
    b = _report(tmp_path / "b.json", "mappo", [0.25, 0.25], [], cpu=True)
    out = tmp_path / "merged"
    argv = ["--envs", ENV, "--algos", "vdn", "--steps", "1000", "--eval-interval", "500", "--seeds", "0,1",
            "--runs", str(tmp_path / "runs"), "--out", str(out), "--merge", str(a), "--merge", str(b),
            "--report-only"]
    assert bench.main(argv) == 0
    assert not (tmp_path / "runs").exists()  # vdn's cells were not trained
    md = out.with_name("merged.md").read_text()
    qmix = next(line for line in md.splitlines() if line.startswith("| qmix |"))
    assert qmix.startswith("| qmix | 3 | 0.75 [") and "| 11 | - |" in qmix  # median wall s; CPU s not recorded
    mappo = next(line for line in md.splitlines() if line.startswith("| mappo |"))
    assert mappo.startswith("| mappo | 2 | 0.25 [0.25, 0.25]") and "| 10 | 6 |" in mappo  # median wall s, CPU s
    assert "| vdn |" not in md
    data = json.loads(out.with_name("merged.json").read_text())
    assert data["meta"]["merged"] == [str(a), str(b)] and len(data["rows"]) == 5
    assert out.with_name("merged.png").read_bytes().startswith(b"\x89PNG")


def test_merge_does_not_retrain_a_cell_an_earlier_report_holds(tmp_path: Path) -> None:
    """Without --report-only an unfinished grid cell is trained - unless a merged report already holds it."""
    bench = _bench()
    a = _report(tmp_path / "a.json", "qmix", [0.5], [])
    out = tmp_path / "m"
    assert bench.main(["--envs", ENV, "--algos", "qmix", "--steps", "1000", "--eval-interval", "500", "--seeds", "0",
                       "--runs", str(tmp_path / "runs"), "--out", str(out), "--merge", str(a)]) == 0
    assert not (tmp_path / "runs").exists()
    assert "| qmix | 1 | 0.50 [0.50, 0.50]" in out.with_name("m.md").read_text()


def test_merge_refuses_a_report_with_other_settings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = _bench()
    other = _report(tmp_path / "greedy.json", "tad-ppo", [0.5], ["algo.distill_target=greedy"])
    with pytest.raises(SystemExit):
        bench.main(["--steps", "1000", "--eval-interval", "500", "--merge", str(other), "--report-only",
                    "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert "not comparable" in err and "algo.distill_target=greedy" in err
    assert not (tmp_path / "x.md").exists()


def test_rewriting_a_report_keeps_its_notes_and_updates_its_tables(tmp_path: Path) -> None:
    """The analysis written under ``## Notes`` survives a ``--report-only`` rerun once more seeds are in, once."""
    bench = _bench()
    out = tmp_path / "r"
    argv = ["--envs", ENV, "--algos", "qmix", "--steps", "1000", "--eval-interval", "500", "--seeds", "0,1,2",
            "--runs", str(tmp_path / "runs"), "--out", str(out), "--report-only"]
    assert bench.main([*argv, "--merge", str(_report(tmp_path / "one.json", "qmix", [0.5], []))]) == 0
    md_path = out.with_name("r.md")
    notes = "## Notes (by hand)\n\n- seed 0 only: a lead, not a result.\n"
    md_path.write_text(md_path.read_text() + "\n" + notes)
    assert bench.main([*argv, "--merge", str(_report(tmp_path / "three.json", "qmix", [0.5, 1.0, 1.0], []))]) == 0
    md = md_path.read_text()
    assert "| qmix | 3 | 1.00 [" in md and "| qmix | 1 |" not in md  # the tables are the new ones
    assert md.count("## Notes") == 1 and md.endswith(notes)  # the notes are kept, once, at the end
    assert bench.main(argv + ["--merge", str(tmp_path / "three.json")]) == 0
    assert md_path.read_text() == md  # rewriting again changes nothing
