"""Course tooling, not taught: the homework autograder (`homework.py`).

Imported lazily by the command line (`python -m minipeft homework ...`); nothing in
`minipeft.model` or `minipeft.methods` imports it.
"""
