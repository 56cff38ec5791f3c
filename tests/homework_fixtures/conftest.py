"""These notebooks are submissions for the grader (tests/test_homework.py), not notebooks to
run: one loops forever, one calls os._exit. Keep nbval from collecting them."""
collect_ignore_glob = ["*.ipynb"]
