"""The local grader: each submission runs in a child process; the parent scores it.

`grade` does not trust the submission. Why not simply `otter run`: otter executes the
notebook and then the tests in the *same* Python kernel, with the test files on disk
beside it, and reads the scores back from a pickle that kernel writes; outside Docker it
has no time limit. A submission can therefore replace the reference the tests call,
read the tests, forge the pickle, or hang the grader. Here, per submission:

1. The trusted parent process builds every case (public and hidden) and computes the
   expected values with minipeft *in its own process*, which never runs student code. So
   monkeypatching minipeft inside the submission changes nothing the grader compares with.
2. The submission runs in a child process (its own session, `python -m
   minipeft.course.homework --child`) in a fresh temporary directory that holds only a
   copy of the notebook (and whose parent holds only that directory): no test, no expected
   value is on disk there. The child receives
   the case *inputs* on stdin before any student code runs, executes the code cells one by
   one (an exception, `sys.exit` included, fails only its cell), and at each
   `grader.check("qN")` (and at the end for questions not checked yet) calls the student's
   function on the inputs and streams its outputs back as JSON, one line per question.
   Only the outputs cross back; no pickle is ever loaded from the child.
3. Wall-clock limit (default 120 s): the parent kills the child's whole process group when
   it expires. Questions whose outputs arrived before keep their points; the rest score 0
   with "time limit exceeded". `os._exit`, a crash or a killed child are handled the same
   way ("the submission ended before this question was graded").
4. Output cap: the child's file descriptors 1 and 2 point to /dev/null and Python's
   sys.stdout / sys.stderr keep only the first `OUTPUT_CAP` characters of what the
   submission prints; the parent also stops reading after `RESULTS_CAP` bytes.
5. Each submission's notebook is read into memory before any child starts, and each child
   has its own directory, so with --jobs N one submission cannot change another's input.

Inside a student's own notebook the tests call `check_exercise` (checking.py), which
computes the reference from a freshly imported copy of minipeft; the strict guarantee is
this grader's.

Not defended against: a submission that calls minipeft's own function instead of writing
it (the course library is installed for students), and a submission that attacks the
machine (the child runs as the same user; use a container for untrusted classes at scale).
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from minipeft.course.homework.checking import call_with, compare, from_json, to_json
from minipeft.course.homework.exercise_bank import Exercise, cases, exercises
from minipeft.files import atomic_write_text

REPO = Path(__file__).resolve().parents[3]
DEFAULT_GRADES = REPO / "build" / "homework" / "grades"
DEFAULT_TIMEOUT = 120.0
OUTPUT_CAP = 20_000  # characters of a submission's printing kept for its results.json
RESULTS_CAP = 50_000_000  # bytes the parent reads from one child before killing it
PUBLIC_POINTS, HIDDEN_POINTS = 1, 2


# ======================================================================================
# The child: runs one submission, streams each question's outputs to the parent
# ======================================================================================
class CappedText(io.TextIOBase):
    """sys.stdout / sys.stderr for the submission: keeps the first `cap` characters."""

    def __init__(self, cap: int):
        self.cap, self.parts, self.kept, self.dropped = cap, [], 0, 0

    def writable(self) -> bool:
        return True

    def write(self, text) -> int:
        text = str(text)
        room = self.cap - self.kept
        if room > 0:
            self.parts.append(text[:room])
            self.kept += min(room, len(text))
        self.dropped += max(0, len(text) - max(room, 0))
        return len(text)

    def take(self) -> str:
        """Everything kept since the last take(), with a note of what was cut."""
        text = "".join(self.parts)
        if self.dropped:
            text += f"\n[... {self.dropped} more characters of output cut]"
        self.parts, self.dropped = [], 0
        return text


class StubGrader:
    """Stands in for otter's Notebook in the child: check("qN") grades question qN now."""

    def __init__(self, on_check: Callable[[str], None], on_check_all: Callable[[], None]):
        self.check, self._check_all = on_check, on_check_all

    def check_all(self):
        self._check_all()

    def export(self, *args, **kwargs):
        return None

    def __getattr__(self, name):
        return lambda *args, **kwargs: None


def notebook_code_cells(notebook: dict) -> list[str]:
    """Source of every code cell; IPython magics and shell lines are commented out."""
    sources = []
    for cell in notebook.get("cells", []):
        if cell.get("cell_type") != "code":
            continue
        source = cell.get("source", "")
        source = "".join(source) if isinstance(source, list) else str(source)
        sources.append(re.sub(r"^(\s*)([%!])", r"\1# \2", source, flags=re.M))
    return sources


def child_main() -> None:
    """Entry point of the grading child (`python -m minipeft.course.homework --child`)."""
    job = json.loads(sys.stdin.read())  # the inputs, read before any student code runs
    channel = os.dup(1)  # private copy of the pipe to the parent
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    printed = CappedText(job["output_cap"])
    sys.stdout = sys.stderr = printed
    torch.set_num_threads(1)
    limit = job["file_size_limit"]
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    questions = job["questions"]
    done: set[str] = set()

    def send(message: dict) -> None:
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(channel, data):]

    def grade(question: str) -> None:
        if question not in questions or question in done:
            return
        done.add(question)
        spec = questions[question]
        function = namespace.get(spec["function"])
        outputs = []
        for arguments in spec["cases"]:
            try:
                if not callable(function):
                    raise NameError(f"no function named {spec['function']} is defined")
                outputs.append({"value": to_json(call_with(function, from_json(arguments)))})
            except BaseException as error:  # sys.exit inside the function fails this case only
                outputs.append({"error": f"{type(error).__name__}: {error}"[:500]})
        send({"question": question, "outputs": outputs, "printed": printed.take()})

    def grade_all() -> None:
        for question in questions:
            grade(question)

    fake_otter = type(sys)("otter")
    fake_otter.Notebook = lambda *args, **kwargs: StubGrader(grade, grade_all)
    sys.modules["otter"] = fake_otter
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for n, source in enumerate(notebook_code_cells(job["notebook"])):
        try:
            exec(compile(source, f"<cell {n + 1}>", "exec"), namespace)
        except BaseException:  # a failing cell (SystemExit too) does not stop the others
            printed.write(traceback.format_exc(limit=3))
    grade_all()
    send({"finished": True, "printed": printed.take()})


# ======================================================================================
# The parent: one child per submission, results.json and summary.csv
# ======================================================================================
@dataclass
class ChildRun:
    messages: list[dict]
    status: str  # "ok", "time limit exceeded (120 s)", "ended early (exit code 1)", ...


def run_child(notebook: dict, questions: dict, timeout: float) -> ChildRun:
    """Run one submission in its own process group and directory; kill it at `timeout`."""
    job = json.dumps({"notebook": notebook, "questions": questions, "output_cap": OUTPUT_CAP,
                      "file_size_limit": 100_000_000})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "MPLBACKEND": "Agg", "PYTHONDONTWRITEBYTECODE": "1"}
    with tempfile.TemporaryDirectory(prefix="minipeft-grade-") as private:
        workdir = Path(private, "submission")  # its parent holds nothing else either
        workdir.mkdir()
        (workdir / "submission.ipynb").write_text(json.dumps(notebook))
        process = subprocess.Popen([sys.executable, "-m", "minipeft.course.homework", "--child"],
                                   cwd=workdir, env=env, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                   start_new_session=True)
        lines: list[bytes] = []
        overflow = threading.Event()
        reader = threading.Thread(target=read_capped, args=(process.stdout, lines, overflow),
                                  daemon=True)
        reader.start()
        started = time.monotonic()
        try:
            process.stdin.write(job.encode())
            process.stdin.close()
        except BrokenPipeError:
            pass
        status = "ok"
        while process.poll() is None:
            if overflow.is_set():
                status = "stopped: the submission sent more than the results cap"
                break
            if time.monotonic() - started > timeout:
                status = f"time limit exceeded ({timeout:g} s)"
                break
            time.sleep(0.05)
        kill_group(process)
        reader.join(timeout=5)
    messages = []
    for line in lines:
        try:
            message = json.loads(line)
        except ValueError:
            continue  # not one of the child's lines
        if isinstance(message, dict):
            messages.append(message)
    if status == "ok" and not any(m.get("finished") for m in messages):
        status = f"ended early (exit code {process.returncode})"
    return ChildRun(messages, status)


def read_capped(stream, lines: list[bytes], overflow: threading.Event) -> None:
    total = 0
    for line in stream:
        total += len(line)
        if total > RESULTS_CAP:
            overflow.set()
            return
        lines.append(line)


def kill_group(process: subprocess.Popen) -> None:
    """SIGKILL the child and anything it started (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def expected_values(homework: str) -> dict[str, tuple[list, list]]:
    """{question: (case inputs, expected outputs)}, computed here, never in a child."""
    table = {}
    for question, exercise in exercises(homework).items():
        inputs = cases(homework, exercise)
        table[question] = (inputs, [call_with(exercise.reference, args) for args in inputs])
    return table


def score_submission(homework: str, run: ChildRun, table: dict) -> dict:
    """Gradescope's results.json for one submission."""
    graded = {m["question"]: m for m in run.messages if "question" in m}
    tests, printed = [], "".join(m.get("printed", "") for m in run.messages)
    for question, exercise in exercises(homework).items():
        _, expected = table[question]
        message = graded.get(question)
        for which, points, chosen in (("public", PUBLIC_POINTS, [0]),
                                      ("hidden", HIDDEN_POINTS, range(1, len(expected)))):
            if message is None:
                problem = ("time limit exceeded before this question was graded"
                           if run.status.startswith("time") else
                           f"the submission ended before this question was graded ({run.status})")
            else:
                problem = first_problem(exercise, message["outputs"], expected, chosen)
            tests.append({"name": f"{question} {exercise.function} ({which})",
                          "score": 0 if problem else points, "max_score": points,
                          "visibility": "visible" if which == "public" else "hidden",
                          "output": problem or "passed"})
    return {"score": sum(t["score"] for t in tests), "tests": tests,
            "output": f"status: {run.status}\n{printed}"}


def first_problem(exercise: Exercise, outputs: list, expected: list, chosen) -> str:
    if not isinstance(outputs, list) or len(outputs) != len(expected):
        return "the submission sent no complete set of results"
    for n, i in enumerate(chosen):
        output = outputs[i] if isinstance(outputs[i], dict) else {}
        if "value" not in output:
            return f"case {n + 1}: {str(output.get('error', 'no result'))[:500]}"
        try:
            got = from_json(output["value"])
        except Exception as error:
            return f"case {n + 1}: unreadable result ({type(error).__name__})"
        problem = compare(expected[i], got, exercise.rtol, exercise.atol)
        if problem:
            return f"case {n + 1}: {problem}"
    return ""


def grade(homework: str, submissions: list[str | Path], out: str | Path = DEFAULT_GRADES,
          timeout: float = DEFAULT_TIMEOUT, jobs: int = 1, progress: bool = True) -> list[dict]:
    """Grade notebooks; write OUT/<stem>/results.json and OUT/summary.csv. Returns the results."""
    from tqdm import tqdm

    table = expected_values(homework)
    paths = [Path(s) for s in submissions]
    notebooks = [read_submission(p) for p in paths]  # all read before any submission runs
    stems = [p.stem for p in paths]
    repeated = sorted({s for s in stems if stems.count(s) > 1})
    if repeated:
        raise ValueError(f"submissions {repeated} share a file name; results are written to "
                         "OUT/<file name>/, so rename them apart")
    if jobs < 1 or timeout <= 0:
        raise ValueError(f"--jobs must be ≥ 1 and --timeout > 0, got {jobs} and {timeout}")
    questions = {q: {"function": exercises(homework)[q].function,
                     "cases": [to_json(args) for args in inputs]}
                 for q, (inputs, _) in table.items()}

    def one(notebook: dict | str) -> dict:
        if isinstance(notebook, str):  # unreadable: the reason
            return {"score": 0, "tests": [], "output": f"status: {notebook}"}
        return score_submission(homework, run_child(notebook, questions, timeout), table)

    out = Path(out)
    results = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for stem, result in tqdm(zip(stems, pool.map(one, notebooks)), total=len(paths),
                                 desc=f"grading {homework}", unit="submission",
                                 disable=not progress):
            atomic_write_text(out / stem / "results.json", json.dumps(result, indent=1))
            results.append(result)
    write_summary(out / "summary.csv", stems, results, list(table))
    return results


def read_submission(path: Path) -> dict | str:
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        return f"not a readable notebook ({type(error).__name__}: {error})"
    return notebook if isinstance(notebook, dict) else "not a notebook"


def write_summary(path: Path, stems: list[str], results: list[dict], questions: list[str]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["submission", "total", *questions, "status"])
    for stem, result in zip(stems, results):
        per_question = {q: 0 for q in questions}
        for test in result["tests"]:
            per_question[test["name"].split()[0]] += test["score"]
        status = result["output"].splitlines()[0].removeprefix("status: ")
        writer.writerow([stem, result["score"], *(per_question[q] for q in questions), status])
    atomic_write_text(path, buffer.getvalue())

