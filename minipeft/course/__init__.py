"""Course tooling, not taught: the homework autograder (`homework/`), the slide builder
(`slides.py`) and the benchmark against transformers + peft (`bench.py`).

Imported lazily by the command line (`python -m minipeft homework|slides|bench ...`);
nothing in `minipeft.model` or `minipeft.methods` imports it (tests/test_structure.py).
"""
