"""Studies: the lectures' claims re-measured on the miniature, over several seeds.

A study is a named grid of cells (the settings it varies), each fine-tuned at several seeds
by the library's own `train`; the table goes to data/results/<study>.json. Start with

    python -m minipeft reproduce --list
    python -m minipeft reproduce rank_weight_type [--seeds N] [--jobs N] [--quick]

catalog.py  the studies and what each cell trains
prompt_catalog.py  the prompt-tuning studies (Lester et al., 2021; P-tuning v2; SPoT)
runner.py   running a study (one torch thread per cell, resumable, optional worker processes)
results.py  the file format, its strict reader, and the seed-spread summaries (`differs`)

Course tooling: the library (minipeft/*.py, minipeft/methods/) never imports this package.
"""
from minipeft.course.studies.catalog import STUDIES, get_study
from minipeft.course.studies.prompt_catalog import PROMPT_STUDIES
from minipeft.course.studies.results import (Comparison, Summary, cell_label, differs,
                                             format_table, ranking, read_results, summarize,
                                             write_results)
from minipeft.course.studies.runner import (Study, check_reproduces, estimated_minutes,
                                            results_path, run_study)

# prompt_catalog builds on catalog's fine_tune, so its studies join the registry here
STUDIES.update({study.name: study for study in PROMPT_STUDIES})

__all__ = ["STUDIES", "get_study", "Study", "run_study", "check_reproduces",
           "estimated_minutes", "results_path", "read_results", "write_results", "summarize",
           "Summary", "differs", "Comparison", "ranking", "format_table", "cell_label"]
