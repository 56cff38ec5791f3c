"""The homework grader: fixture submissions get their exact scores, whatever they do.

tests/homework_fixtures/ holds submissions of hw1_rank_svd (5 questions, 1 public + 2 hidden
points each, 15 in all), made from the released student notebook. All of them are graded
once, by the command line with --jobs 2, and every test reads that run's files.
"""
import csv
import json
import zipfile
from pathlib import Path

import pytest
import torch

from minipeft.__main__ import main
from minipeft.course import homework

FIXTURES = Path(__file__).resolve().parent / "homework_fixtures"
TIMEOUT = 25  # seconds per submission: the infinite loop costs exactly this

# submission → (total, per question q1..q5, what it does)
EXPECTED = {
    "solved": (15, [3, 3, 3, 3, 3]),  # the master's solutions
    "released": (0, [0, 0, 0, 0, 0]),  # the student notebook as built: every body is `...`
    "raises_in_q2": (12, [3, 0, 3, 3, 3]),  # lora_forward raises
    "infinite_loop": (6, [3, 3, 0, 0, 0]),  # loops after q2: q1, q2 keep their points
    "prints_megabytes": (15, [3, 3, 3, 3, 3]),  # 10 MB of printing, cut
    "sys_exit": (15, [3, 3, 3, 3, 3]),  # sys.exit(1) fails only its cell
    "os_exit": (9, [3, 3, 3, 0, 0]),  # os._exit(0) after q3 ends the child
    "deletes_files": (15, [3, 3, 3, 3, 3]),  # empties its folder, forges a results.json
    "missing_module": (12, [3, 0, 3, 3, 3]),  # q2's cell imports a module that does not exist
    "monkeypatch_reference": (12, [3, 0, 3, 3, 3]),  # wrong q2, minipeft patched to agree
    "wrong_shape_dtype": (9, [3, 0, 3, 0, 3]),  # q2 transposed output, q4 float64
    "reads_hidden_tests": (13, [1, 3, 3, 3, 3]),  # finds no tests; q1 hard-codes the public case
    "off_by_one_scale": (12, [3, 0, 3, 3, 3]),  # α/(r+1) in lora_forward
    "transposed": (13, [3, 3, 3, 1, 3]),  # ΔWᵀ: passes the symmetric public case only
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    out = tmp_path_factory.mktemp("grades")
    notebooks = sorted(str(p) for p in FIXTURES.glob("*.ipynb"))
    code = main(["homework", "grade", "--homework", "hw1_rank_svd", *notebooks, "--out", str(out),
                 "--timeout", str(TIMEOUT), "--jobs", "2"])
    assert code == 0
    return out


def summary(out: Path) -> dict[str, dict]:
    with open(out / "summary.csv", newline="") as f:
        return {row["submission"]: row for row in csv.DictReader(f)}


def results(out: Path, name: str) -> dict:
    return json.loads((out / name / "results.json").read_text())


def test_every_fixture_is_listed():
    assert sorted(p.stem for p in FIXTURES.glob("*.ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_exact_score(graded, name):
    total, per_question = EXPECTED[name]
    row = summary(graded)[name]
    assert float(row["total"]) == total
    assert [float(row[f"q{i}"]) for i in range(1, 6)] == per_question
    assert results(graded, name)["score"] == total


def test_results_json_has_gradescope_fields(graded):
    result = results(graded, "transposed")
    assert set(result) >= {"score", "tests"}
    assert len(result["tests"]) == 10  # public and hidden test of each of 5 questions
    for test in result["tests"]:
        assert set(test) >= {"name", "score", "max_score", "visibility", "output"}
        assert test["visibility"] in ("visible", "hidden")
    hidden_q4 = next(t for t in result["tests"] if t["name"].startswith("q4") and "hidden" in t["name"])
    assert hidden_q4["score"] == 0 and hidden_q4["max_score"] == 2
    assert "case 1" in hidden_q4["output"]  # says which case failed and why


def test_time_limit_keeps_earlier_questions(graded):
    assert summary(graded)["infinite_loop"]["status"] == f"time limit exceeded ({TIMEOUT} s)"
    q3 = next(t for t in results(graded, "infinite_loop")["tests"] if t["name"].startswith("q3"))
    assert "time limit exceeded" in q3["output"]


def test_os_exit_is_reported(graded):
    assert summary(graded)["os_exit"]["status"].startswith("ended early")


def test_printing_is_capped(graded):
    text = (graded / "prints_megabytes" / "results.json").read_text()
    assert len(text) < 5 * homework.OUTPUT_CAP  # it printed 10,000,000 characters
    assert "more characters of output cut" in text


def test_hidden_tests_are_not_beside_the_submission(graded):
    output = results(graded, "reads_hidden_tests")["output"]
    assert "FILES BESIDE ME: ['submission.ipynb']" in output
    assert "HIDDEN TESTS FOUND: []" in output


def test_forged_file_is_ignored(graded):
    assert results(graded, "deletes_files")["score"] == 15  # not the 1000 it wrote


def test_wrong_dtype_is_named(graded):
    q4 = [t for t in results(graded, "wrong_shape_dtype")["tests"] if t["name"].startswith("q4")]
    assert all("dtype" in t["output"] for t in q4)


def test_build_writes_student_notebook_and_zip(tmp_path):
    student, zip_path = homework.build(tmp_path, ["hw1_rank_svd"])
    assert student == tmp_path / "hw1_rank_svd" / "student" / "hw1_rank_svd.ipynb"
    assert zip_path == tmp_path / "hw1_rank_svd" / "autograder" / "hw1_rank_svd-autograder.zip"
    code = [c["source"] for c in json.loads(student.read_text())["cells"]
            if c["cell_type"] == "code"]
    released = [c["source"] for c in json.loads((FIXTURES / "released.ipynb").read_text())["cells"]
                if c["cell_type"] == "code"]
    assert ["".join(s) if isinstance(s, list) else s for s in code] == \
        ["".join(s) if isinstance(s, list) else s for s in released]  # the fixture is current
    assert not any("r * (d_in + d_out)" in "".join(s) for s in code)  # no solution left
    with zipfile.ZipFile(zip_path) as z:
        names = set(z.namelist())
        assert {f"tests/q{i}.py" for i in range(1, 6)} <= names
        assert "files/minipeft/methods/lora.py" in names
        # the tests on Gradescope import check_exercise from minipeft.course.homework
        assert {f"files/minipeft/course/homework/{m}.py" for m in
                ("__init__", "__main__", "assign", "checking", "exercise_bank", "grader")} <= names
        assert "'hidden': True" in z.read("tests/q2.py").decode()


def test_notebook_check_uses_a_fresh_reference(monkeypatch):
    """grader.check in a notebook: replacing minipeft's function does not move the target."""
    import minipeft.methods.qlora as qlora
    from minipeft.course.homework import exercise_bank

    def zeros():
        return torch.zeros(16)

    def paper_table():  # NF4 as printed in Dettmers et al. (2023), Appendix E
        return torch.tensor([-1.0, -0.6961928009986877, -0.5250730514526367,
                             -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
                             -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
                             0.24611230194568634, 0.33791524171829224, 0.44070982933044434,
                             0.5626170039176941, 0.7229568362236023, 1.0])

    monkeypatch.setattr(qlora, "nf4_levels_from_quantiles", zeros)
    monkeypatch.setattr(exercise_bank, "ref_nf4_levels", zeros)
    with pytest.raises(AssertionError, match="nf4_levels"):
        homework.check_exercise("hw2_quantization", "q2", zeros, "hidden")
    homework.check_exercise("hw2_quantization", "q2", paper_table, "hidden")  # still the target


def test_hidden_cases_have_random_shapes():
    exercise = homework.exercises("hw1_rank_svd")["q2"]
    shapes = {tuple(args[1].shape) for args in homework.cases("hw1_rank_svd", exercise)[1:]}
    assert len(shapes) >= 3


def test_compare_names_shape_and_dtype():
    expected = torch.zeros(2, 3)
    assert "shape" in homework.compare(expected, torch.zeros(3, 2), 1e-5, 1e-6)
    assert "dtype" in homework.compare(expected, torch.zeros(2, 3, dtype=torch.float64), 1e-5, 1e-6)
    assert homework.compare(expected, torch.full((2, 3), 1e-7), 1e-5, 1e-6) == ""
    assert "differ" in homework.compare(expected, torch.full((2, 3), 1e-3), 1e-5, 1e-6)
    assert homework.compare(3, torch.tensor(3), 0, 0) == ""  # a 0-dim tensor is a number
    assert "expected 3" in homework.compare(3, 4, 0, 0)


def test_unknown_homework_is_one_clear_error():
    with pytest.raises(ValueError, match="unknown homework 'hw9'.*hw1_rank_svd"):
        homework.exercises("hw9")
