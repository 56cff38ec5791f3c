"""The study runner: seed-spread summaries, the results file, resuming, and drift.

Summaries are checked against numbers worked out by hand; `differs` on rows built to
overlap or not; the file against its own strict reader (every kind of damage is one clear
error). The drift test re-runs each study's check cell and compares it with the stored row
bit for bit, so a stored table cannot silently stop describing the code.
"""
import json
import math
from pathlib import Path

import pytest
import torch

from minipeft.__main__ import main
from minipeft.course.studies import (STUDIES, Study, cell_label, check_reproduces, differs,
                                     format_table, ranking, read_results, run_study,
                                     summarize, write_results)
from minipeft.course.studies.catalog import (ADAPTERS, bias_changes, fine_tune,
                                             rank_lecture_numbers)
from minipeft.course.studies.results import seed_bars, summarize_values
from minipeft.course.studies.runner import estimated_minutes, one_thread
from minipeft.methods import AdapterConfig
from minipeft.tasks import load_examples

A, B, C = {"r": 1, "targets": ["q"]}, {"r": 8, "targets": ["q", "v"]}, {"r": 64, "targets": ["v"]}


def rows_for(values_by_cell: dict, metric: str = "accuracy") -> list[dict]:
    return [{"cell": cell, "seed": seed, "metric": metric, "value": value}
            for cell, values in values_by_cell for seed, value in enumerate(values)]


# --------------------------------------------------------------------------------------
# Summaries
# --------------------------------------------------------------------------------------
def test_summary_matches_the_hand_computation():
    # values 1, 2, 4: mean 7/3; deviations -4/3, -1/3, 5/3; squares sum 42/9; / (n-1) = 7/3
    s = summarize_values([1.0, 2.0, 4.0])
    assert s.mean == pytest.approx(7 / 3)
    assert s.std == pytest.approx(math.sqrt(7 / 3))
    assert (s.min, s.max, s.n) == (1.0, 4.0, 3)
    assert math.isnan(summarize_values([0.5]).std)  # one seed has no spread
    with pytest.raises(ValueError, match="no values"):
        summarize_values([])


def test_summarize_picks_one_cell_and_metric_from_the_rows():
    rows = rows_for([(A, [0.1, 0.3]), (B, [0.9, 0.7])]) + rows_for([(A, [5.0, 7.0])], "loss")
    assert summarize(rows, A, "accuracy").mean == pytest.approx(0.2)
    assert summarize(rows, B, "accuracy").max == 0.9
    assert summarize(rows, A, "loss").mean == 6.0
    with pytest.raises(ValueError, match="no rows for cell 'r=64 targets=v'"):
        summarize(rows, C, "accuracy")


def test_seed_bars_reach_from_each_mean_to_the_seed_minimum_and_maximum():
    rows = rows_for([(A, [0.1, 0.3, 0.5]), (B, [2.0, 3.0, 7.0])])
    means, (below, above) = seed_bars(rows, [A, B], "accuracy")
    # A: mean 0.3, min 0.1, max 0.5;  B: mean 4, min 2, max 7
    assert means == pytest.approx([0.3, 4.0])
    assert below == pytest.approx([0.2, 2.0]) and above == pytest.approx([0.2, 3.0])


def test_differs_only_when_the_seed_ranges_do_not_overlap():
    rows = rows_for([(A, [0.10, 0.20, 0.30]), (B, [0.35, 0.40, 0.50]),
                     (C, [0.25, 0.40, 0.45])])
    apart = differs(rows, A, B, "accuracy")
    assert apart.beyond_noise and apart.higher == "r=8 targets=q,v"
    assert apart.text == ("accuracy: r=8 targets=q,v > r=1 targets=q beyond the seed spread "
                          "(0.35–0.5 vs 0.1–0.3 over 3 and 3 seeds)")
    assert differs(rows, B, A, "accuracy").higher == "r=8 targets=q,v"  # order-free
    overlapping = differs(rows, A, C, "accuracy")  # 0.25 lies inside A's 0.10–0.30
    assert not overlapping.beyond_noise and overlapping.higher is None
    assert "within noise" in overlapping.text
    with pytest.raises(ValueError, match="at least 2 seeds"):
        differs(rows_for([(A, [0.1]), (B, [0.9])]), A, B, "accuracy")


def test_ranking_orders_by_mean_and_judges_each_neighbour_pair():
    rows = rows_for([(A, [0.10, 0.20, 0.30]), (B, [0.35, 0.40, 0.50]),
                     (C, [0.25, 0.40, 0.45])])
    lines = ranking(rows, [A, B, C], "accuracy")  # means: B 0.417, C 0.367, A 0.2
    assert len(lines) == 2
    assert lines[0].startswith("accuracy: r=8 targets=q,v vs r=64 targets=v within noise")
    assert lines[1].startswith("accuracy: r=64 targets=v vs r=1 targets=q within noise")


def test_table_shows_mean_spread_and_the_lectures_number():
    rows = rows_for([(A, [0.10, 0.20, 0.30])])
    table = format_table(rows, [A], "accuracy", {"r=1 targets=q": "WikiSQL 68.8"})
    line = table.splitlines()[1]
    assert line.startswith("r=1 targets=q") and line.endswith("WikiSQL 68.8")
    assert "0.2 ± 0.1" in line and "0.1–0.3" in line


def test_bias_changes_average_each_type_over_blocks():
    deltas = {"blocks.0.attn.q.bias": torch.tensor([1.0, -3.0]),
              "blocks.1.attn.q.bias": torch.tensor([2.0]),
              "blocks.0.mlp.fc.bias": torch.tensor([-0.5]),
              "blocks.0.attn.q.weight": torch.ones(2, 2),  # a weight is not a bias
              "ln_f.bias": torch.tensor([9.0])}  # outside the blocks
    assert bias_changes(deltas) == {"delta_b_q": 2.0, "delta_b_fc": 0.5}


@pytest.mark.slow
def test_training_on_listed_examples_is_trains_own_recipe():
    """A study's subset cells train on a list of examples; given every training example that
    path must give `train`'s own numbers, so subset and all-data cells differ only in data."""
    setup = {**ADAPTERS.settings, "steps": 3, "eval_limit": 8}
    with one_thread():
        whole = fine_tune(setup, 0, AdapterConfig(), 3e-3)[1]
        listed = fine_tune(setup, 0, AdapterConfig(), 3e-3,
                           load_examples(setup["task"], "train"))[1]
    del whole["step_seconds"], listed["step_seconds"]
    assert listed == whole


def test_lecture_numbers_are_hu_et_al_table_6_and_table_5():
    numbers = rank_lecture_numbers()
    assert numbers["r=1 targets=q"] == "WikiSQL 68.8"
    assert numbers["r=64 targets=q,k,v,o"] == "WikiSQL 73.9"
    assert numbers["r=4 targets=q,v"] == "WikiSQL 73.7 | equal budget 73.7"
    assert numbers["r=8 targets=o"] == "equal budget 73.2"


# --------------------------------------------------------------------------------------
# The file and its strict reader
# --------------------------------------------------------------------------------------
def document(rows=None) -> dict:
    return {"study": "toy", "claim": "c", "code_version": {"torch": "x"}, "settings": {},
            "grid": [A, B], "seeds": [0, 1], "threads": 1,
            "rows": rows_for([(B, [0.5, 0.6]), (A, [0.1, 0.2])]) if rows is None else rows}


def test_results_round_trip_in_grid_order(tmp_path):
    path = write_results(tmp_path / "toy.json", document())
    stored = read_results(path)
    assert stored["grid"] == [A, B]
    assert [(cell_label(r["cell"]), r["seed"]) for r in stored["rows"]] == [
        ("r=1 targets=q", 0), ("r=1 targets=q", 1), ("r=8 targets=q,v", 0),
        ("r=8 targets=q,v", 1)]
    assert summarize(stored["rows"], B, "accuracy").mean == pytest.approx(0.55)


@pytest.mark.parametrize("damage, message", [
    (lambda d: "{not json", "not valid JSON"),
    (lambda d: [1, 2], "not an object"),
    (lambda d: {k: v for k, v in d.items() if k != "rows"}, "keys missing \\['rows'\\]"),
    (lambda d: {**d, "extra": 1}, "unknown \\['extra'\\]"),
    (lambda d: {**d, "threads": "1"}, "'threads' should be a JSON int"),
    (lambda d: {**d, "grid": [A, A]}, "same cell twice"),
    (lambda d: {**d, "rows": [{**d["rows"][0], "seed": "0"}]}, "seed should be an integer"),
    (lambda d: {**d, "rows": [{**d["rows"][0], "cell": C}]}, "not in the grid"),
    (lambda d: {**d, "rows": [{**d["rows"][0], "value": float("nan")}]}, "finite number"),
    (lambda d: {**d, "rows": [{**d["rows"][0], "extra": 1}]}, "exactly the keys"),
    (lambda d: {**d, "rows": d["rows"][:1] * 2}, "repeats cell"),
])
def test_a_damaged_file_is_one_clear_error(tmp_path, damage, message):
    path = tmp_path / "toy.json"
    damaged = damage(document())
    path.write_text(damaged if isinstance(damaged, str) else json.dumps(damaged))
    with pytest.raises(ValueError, match=message) as caught:
        read_results(path)
    assert str(path) in str(caught.value) and "--restart" in str(caught.value)


def test_a_missing_file_says_how_to_make_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="reproduce nothing_here"):
        read_results(tmp_path / "nothing_here.json")


# --------------------------------------------------------------------------------------
# Running: one thread, resuming, code versions
# --------------------------------------------------------------------------------------
CALLS = []
KILL_AT = []  # (r, seed) of the cell at which a toy run is "killed"


def toy_cell(setup: dict, seed: int) -> dict[str, float]:
    """A cell that records its call and its thread count, and dies where told to."""
    CALLS.append((setup["r"], seed))
    if (setup["r"], seed) in KILL_AT:
        raise KeyboardInterrupt  # as if the run were killed here
    torch.manual_seed(seed)
    return {"score": setup["r"] + float(torch.rand(())), "threads": torch.get_num_threads()}


def toy_study(**settings) -> Study:
    return Study(name="toy", claim="c", settings=settings, cells=({"r": 1}, {"r": 2}),
                 run_cell=toy_cell, check_cell={"r": 1}, metric="score", seeds=2)


def test_a_study_runs_every_cell_on_one_thread_and_restores_the_setting(tmp_path):
    CALLS.clear()
    path = tmp_path / "toy.json"
    with one_thread():
        torch.set_num_threads(2)  # the caller's own setting, inside a block that restores
        stored = run_study(toy_study(), path=path, progress=False)
        assert torch.get_num_threads() == 2
    assert sorted(CALLS) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    assert {r["value"] for r in stored["rows"] if r["metric"] == "threads"} == {1.0}
    torch.manual_seed(1)
    expected = 2 + float(torch.rand(()))  # cell r=2 at seed 1, computed here
    assert summarize(read_results(path)["rows"], {"r": 2}, "score").max == expected
    assert check_reproduces(toy_study(), seed=1, path=path) == []


def test_a_killed_run_keeps_its_finished_cells_and_continues(tmp_path):
    path = tmp_path / "toy.json"
    CALLS.clear()
    KILL_AT[:] = [(2, 1)]
    try:
        with pytest.raises(KeyboardInterrupt):
            run_study(toy_study(), path=path, progress=False)
    finally:
        KILL_AT.clear()
    kept = {(cell_label(r["cell"]), r["seed"]) for r in read_results(path)["rows"]}
    assert kept == {("r=1", 0), ("r=2", 0), ("r=1", 1)}  # seed-major order, killed at the 4th
    CALLS.clear()
    run_study(toy_study(), path=path, progress=False)
    assert CALLS == [(2, 1)]  # only the cell the kill lost
    with pytest.raises(ValueError, match="another version of study 'toy'.*--restart"):
        run_study(toy_study(steps=5), path=path, progress=False)  # the definition changed
    CALLS.clear()
    run_study(toy_study(steps=5), path=path, progress=False, restart=True)
    assert len(CALLS) == 4  # --restart measures everything again


def test_resuming_runs_only_the_missing_cells(tmp_path):
    CALLS.clear()
    path = tmp_path / "toy.json"
    run_study(toy_study(), seeds=1, path=path, progress=False)
    CALLS.clear()
    stored = run_study(toy_study(), seeds=2, path=path, progress=False)
    assert sorted(CALLS) == [(1, 1), (2, 1)]  # seed 0 was stored already
    assert stored["seeds"] == [0, 1] and len(stored["rows"]) == 2 * 2 * 3


def test_the_check_reports_a_stored_row_that_no_longer_reproduces(tmp_path):
    path = tmp_path / "toy.json"
    stored = run_study(toy_study(), path=path, progress=False)
    for row in stored["rows"]:
        if row["metric"] == "score" and row["cell"] == {"r": 1} and row["seed"] == 0:
            row["value"] += 1e-9
    write_results(path, stored)
    assert check_reproduces(toy_study(), path=path) == [
        f"score: stored {summarize(stored['rows'], {'r': 1}, 'score').min!r}, now "
        f"{summarize(stored['rows'], {'r': 1}, 'score').min - 1e-9!r}"]


def test_worker_processes_give_the_same_numbers(tmp_path):
    one = run_study(toy_study(), path=tmp_path / "one.json", progress=False)
    two = run_study(toy_study(), path=tmp_path / "two.json", progress=False, jobs=2)
    scores = [[(cell_label(r["cell"]), r["seed"], r["value"]) for r in write_and_read(
        tmp_path / name, doc)["rows"] if r["metric"] == "score"]
        for name, doc in (("a.json", one), ("b.json", two))]
    assert scores[0] == scores[1]


def write_and_read(path, doc):
    return read_results(write_results(path, doc))


def test_a_study_definition_is_checked():
    with pytest.raises(ValueError, match="lists a cell twice"):
        Study("x", "c", {}, ({"r": 1}, {"r": 1}), toy_cell, {"r": 1}, "score")
    with pytest.raises(ValueError, match="check_cell"):
        Study("x", "c", {}, ({"r": 1},), toy_cell, {"r": 2}, "score")
    with pytest.raises(ValueError, match="lecture numbers for cells"):
        Study("x", "c", {}, ({"r": 1},), toy_cell, {"r": 1}, "score",
              lecture_numbers={"r=3": "1.0"})


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------
def test_list_names_every_study(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    for name, study in STUDIES.items():
        assert any(line.split()[:3] == [name, str(len(study.cells)), str(study.seeds)]
                   for line in out.splitlines()), name
    # a column table: the seeds column ends at the same place on every line
    lines = out.splitlines()
    seeds_end = {len(line) - len(line.split(None, 3)[3]) for line in lines}
    assert len(seeds_end) == 1, out


@pytest.mark.parametrize("argv, message", [
    (["reproduce"], "name a study"),
    (["reproduce", "no_such_study"], "unknown study 'no_such_study'"),
    (["reproduce", "--list", "bitfit_biases"], "--list takes no study"),
    (["reproduce", "bitfit_biases", "--quick", "--seeds", "3"], "--quick re-runs one"),
])
def test_bad_reproduce_arguments_are_one_error(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# Drift: every stored table still describes the code
# --------------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", list(STUDIES))
def test_the_stored_table_reproduces(name):
    """Re-run the study's cheapest cell at seed 0: every stored metric (timings aside) must
    come back bit for bit. If a library change moves it on purpose, re-run the study with
    `python -m minipeft reproduce NAME --restart` and commit the new table."""
    assert check_reproduces(STUDIES[name]) == []


def test_the_readme_table_lists_every_study_with_its_stored_minutes():
    """The README's Studies table: one row per study, cells × seeds as defined and the
    minutes that the stored run took (what `reproduce --list` estimates from)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for name, study in STUDIES.items():
        rows = [line for line in readme.splitlines() if line.startswith(f"| `{name}` |")]
        assert len(rows) == 1, f"README: one Studies row for {name}"
        *_, shape, minutes, _ = rows[0].split("|")
        assert shape.strip() == f"{len(study.cells)} × {study.seeds}", name
        assert minutes.strip() == f"{estimated_minutes(study):.1f}", name
