"""`python -m minipeft <command>`: pretrain, fine-tune, generate, inspect.

Run `python -m minipeft --help` (or `<command> --help`) for the options.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch


def cmd_info(args) -> None:
    from minipeft.methods import PRESETS
    from minipeft.pretrained import SIZES, checkpoint_report
    from minipeft.tasks import TASKS

    print("checkpoints (data/checkpoints):")
    for name, spec in SIZES.items():
        c = spec.config
        try:
            r = checkpoint_report(name)
            status = (f"{r['parameters']:,} params, validation loss {r['validation_loss']:.3f} "
                      f"(uniform ln V = {r['uniform_loss_lnV']:.3f})")
        except FileNotFoundError:
            status = "not built: python -m minipeft pretrain --size " + name
        print(f"  {name:6s} L={c.n_layer} d={c.d_model} heads={c.n_head}  {status}")
    print("tasks:", ", ".join(f"{t} ({s.metric})" for t, s in TASKS.items()))
    print("methods:", ", ".join(PRESETS))


def checkpointing(args) -> dict:
    return {"checkpoint_dir": args.checkpoint_dir, "checkpoint_every": args.checkpoint_every,
            "resume": args.resume}


def chosen_device(args, batch_size: int | None = None) -> torch.device:
    """--device and --precision checked, and under torchrun the process group joined:
    every mistake is reported here, before a model is built. Returns this process' device.

    `batch_size`: the global batch of a command that trains data-parallel under torchrun;
    None for a command that runs in one process only.
    """
    from minipeft import distributed
    from minipeft.device import check_precision, resolve_device

    device = resolve_device(args.device)
    check_precision(getattr(args, "precision", "fp32"), device)
    if distributed.launched_with_several_processes():
        if batch_size is None:
            raise ValueError(f"`{args.command}` runs in one process; start it without "
                             "torchrun (only finetune and pretrain train data-parallel)")
        distributed.check_batch_fits_world(batch_size, int(os.environ["WORLD_SIZE"]))
        device = distributed.init_from_environment(device)
    return device


def cmd_pretrain(args) -> None:
    from minipeft import distributed
    from minipeft.pretrained import pretrain, rebuild, recipe

    torch.set_num_threads(args.threads) if args.threads else None
    device = chosen_device(args, recipe(args.size).batch_size)
    options = dict(steps=args.steps, device=str(device), **checkpointing(args))
    try:
        if distributed.is_main_process():  # rank 0 alone writes the checkpoint file
            report = rebuild(args.size, progress=not args.quiet, **options)
            for key, value in report.items():
                print(f"{key}: {value}")
        else:
            pretrain(args.size, progress=False, **options)
    finally:
        distributed.finish()


def build_model(size: str, method: str):
    """A pretrained model wrapped by the named method's default config (see `info`)."""
    from minipeft.methods import PRESETS, get_peft_model
    from minipeft.pretrained import load_pretrained

    if method not in PRESETS:
        raise ValueError(f"unknown method {method!r}; choose from {sorted(PRESETS)}")
    return get_peft_model(load_pretrained(size), PRESETS[method]())


def check_save_path(path: Path, peft_type: str) -> None:
    """Fail before training, not after it, if the adapter could not be saved to `path`."""
    from minipeft.methods.base import check_save_target

    check_save_target(path, peft_type)
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"cannot save the adapter to {path}: {existing} is not a writable "
                         "folder; give a path you can write to")


# Steps `finetune` trains when --steps is not given: enough for LoRA on `small`, at its preset
# rate, to learn the task. Measured: sentiment 0.50 → 0.99 accuracy in 150 steps; paraphrase
# stays at chance after 150 steps (0.520 → 0.525) and reaches 0.750 after 600.
FINETUNE_STEPS = {"sentiment": 150, "paraphrase": 600, "table2text": 150, "unscramble": 150,
                  "arithmetic": 150}
# A final metric this close to the chance baseline means the run learned nothing yet.
NOT_LEARNED_MARGIN = 0.02


def not_learned_note(task: str, method: str, steps: int, metric: str, final: float,
                     chance: float) -> str | None:
    """The hint `finetune` prints when a run ends at chance, else None."""
    if final > chance + NOT_LEARNED_MARGIN:
        return None
    return (f"note: {metric} {final:.3f} is within {NOT_LEARNED_MARGIN} of chance "
            f"({chance:.3f}): {method} has not learned {task} in {steps} "
            f"step{'' if steps == 1 else 's'}; try more "
            f"steps (--steps {4 * steps}) or another learning rate (--lr)")


def cmd_finetune(args) -> None:
    """Fine-tune and report; under torchrun every rank trains and rank 0 alone evaluates,
    prints and saves."""
    from minipeft import distributed
    from minipeft.tasks import get_task

    metric = get_task(args.task).metric  # an unknown task fails here, before the model is built
    device = chosen_device(args, args.batch_size)
    try:
        torch.manual_seed(args.seed)  # the seed also fixes φ's random initialisation
        model = build_model(args.size, args.method).to(device)
        if args.save:
            check_save_path(Path(args.save), model.config.peft_type)
        if distributed.world_size() > 1:
            distributed.check_can_wrap(model)
        finetune_and_report(model, args, metric, main=distributed.is_main_process())
    finally:
        distributed.finish()


def finetune_and_report(model, args, metric: str, main: bool) -> None:
    from minipeft.methods import learning_rate
    from minipeft.tasks import chance_baseline
    from minipeft.train import answer_loss, evaluate_task, train

    steps = FINETUNE_STEPS[args.task] if args.steps is None else args.steps
    if main:
        print(f"{args.method} on {args.size}: ", end="")
        model.print_trainable_parameters()
        before = evaluate_task(model, args.task, "validation", limit=args.eval_limit)
        loss_before = answer_loss(model, args.task, "validation", limit=args.eval_limit)
    lr = learning_rate(args.method) if args.lr is None else args.lr
    result = train(model, args.task, steps=steps, lr=lr, batch_size=args.batch_size,
                   eval_limit=args.eval_limit, seed=args.seed, progress=not args.quiet,
                   precision=args.precision, **checkpointing(args))
    if not main:
        return
    loss_after = answer_loss(model, args.task, "validation", limit=args.eval_limit)
    chance = chance_baseline(args.task)
    print(f"validation {args.task}, {metric}: before {before:.3f} → after "
          f"{result.final_metric:.3f} (chance {chance:.3f}); answer loss "
          f"{loss_before:.3f} → {loss_after:.3f}; {steps} steps in {result.seconds:.1f}s "
          f"at lr {lr:g}")
    if note := not_learned_note(args.task, args.method, steps, metric, result.final_metric,
                                chance):
        print(note)
    if args.save:
        print("adapter saved to", model.save_pretrained(args.save))


def cmd_generate(args) -> None:
    from minipeft.pretrained import load_pretrained
    from minipeft.tokenizer import load_tokenizer

    device = chosen_device(args)
    model = load_pretrained(args.size).to(device)
    tokenizer = load_tokenizer()
    idx = torch.tensor([tokenizer.encode(args.prompt)], device=device)
    generator = torch.Generator(device=device).manual_seed(args.seed)
    out = model.generate(idx, args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, eos_id=tokenizer.eos_id, generator=generator)
    print(tokenizer.decode([t for t in out[0].tolist() if t != tokenizer.eos_id]))


def cmd_build_data(args) -> None:
    from minipeft.pretrained import rebuild
    from minipeft.tasks import write_task_data
    from minipeft.tokenizer import build_tokenizer

    build_tokenizer()
    write_task_data()
    for size in args.sizes:
        print(size, rebuild(size, progress=not args.quiet))


def cmd_demo(args) -> None:
    """The README's first command: LoRA on the sentiment task, start to finish."""
    from minipeft.demo import run_demo

    run_demo(device=chosen_device(args), precision=args.precision)


def cmd_slides(args) -> None:
    """Rebuild the lecture slides (slides/*.slides.html) from the executed notebooks."""
    from minipeft.course.slides import build_slides

    for path in build_slides(args.notebooks or None):
        print("wrote", path)


def cmd_bench(args) -> None:
    """minipeft vs transformers + peft: training-step time and memory, inference latency."""
    from minipeft.course.bench import main as bench_main

    bench_main(args.bench_argv, prog="python -m minipeft bench")


def cmd_homework(args) -> None:
    """Homework: build student notebooks and autograder zips, or grade submissions."""
    from minipeft.course.homework import run_command

    run_command(args)


def cmd_reproduce(args) -> None:
    """Re-measure a lecture claim over seeds (a study), or list the studies."""
    from minipeft.course.studies.commands import run_command

    run_command(args)


def positive_int(text: str) -> int:
    """argparse type: an integer ≥ 1 (0 and negatives are errors, not "use the default")."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def positive_float(text: str) -> float:
    value = finite_float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = finite_float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {text}")
    return value


def finite_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}")
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def add_device_arguments(s: argparse.ArgumentParser, default: str = "auto",
                         precision: bool = True) -> None:
    from minipeft.device import DEVICE_CHOICES, PRECISIONS

    s.add_argument("--device", choices=DEVICE_CHOICES, default=default,
                   help=f"where to run: auto = cuda when this machine has a GPU, else cpu "
                        f"(default {default})")
    if precision:
        s.add_argument("--precision", choices=PRECISIONS, default="fp32",
                       help="fp32, or bf16 autocast for the forward pass (φ stays fp32)")


def add_checkpoint_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("--checkpoint-dir", default=None,
                   help="folder for the training checkpoint (checkpoint.pt)")
    s.add_argument("--checkpoint-every", type=positive_int, default=None,
                   help="write a checkpoint every N steps (needs --checkpoint-dir)")
    s.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --checkpoint-dir (same settings)")


def parser() -> argparse.ArgumentParser:
    from minipeft.pretrained import SIZES

    p = argparse.ArgumentParser(prog="python -m minipeft", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    sizes = list(SIZES)

    sub.add_parser("info", help="list checkpoints, tasks and methods").set_defaults(run=cmd_info)

    s = sub.add_parser("pretrain", help="pretrain one checkpoint from scratch into data/")
    s.add_argument("--size", choices=sizes, required=True)
    s.add_argument("--steps", type=positive_int, default=None,
                   help="override the recipe's step count")
    s.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    # cpu by default: `pretrain` reproduces the shipped checkpoints bit for bit on a CPU.
    # The recipe trains in fp32 (no --precision), as the shipped checkpoints were.
    add_device_arguments(s, default="cpu", precision=False)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    add_checkpoint_arguments(s)
    s.set_defaults(run=cmd_pretrain)

    s = sub.add_parser("finetune", help="fine-tune a checkpoint on a task, print the metric")
    s.add_argument("--size", choices=sizes, default="small")
    s.add_argument("--task", default="sentiment")
    s.add_argument("--method", default="lora", help="a method preset, e.g. lora, full (see info)")
    s.add_argument("--steps", type=positive_int, default=None,
                   help="training steps (default: the task's, enough for LoRA on small: "
                        + ", ".join(f"{t} {n}" for t, n in FINETUNE_STEPS.items()) + ")")
    s.add_argument("--lr", type=positive_float, default=None,
                   help="AdamW learning rate (default: the method's, e.g. 3e-3 for lora, "
                        "3e-2 for ia3 and prompt)")
    s.add_argument("--batch-size", type=positive_int, default=16)
    s.add_argument("--eval-limit", type=positive_int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--save", default=None, help="directory to save the adapter to")
    s.add_argument("--quiet", action="store_true")
    add_device_arguments(s)
    add_checkpoint_arguments(s)
    s.set_defaults(run=cmd_finetune)

    s = sub.add_parser("generate", help="continue a prompt with a pretrained model")
    s.add_argument("--size", choices=sizes, default="small")
    s.add_argument("--prompt", default="the red fox")
    s.add_argument("--max-new-tokens", type=positive_int, default=40)
    s.add_argument("--temperature", type=non_negative_float, default=0.8,
                   help="0 = greedy decoding")
    s.add_argument("--top-k", type=positive_int, default=20)
    s.add_argument("--seed", type=int, default=0)
    add_device_arguments(s, precision=False)
    s.set_defaults(run=cmd_generate)

    s = sub.add_parser("build-data", help="regenerate tokenizer, task files and checkpoints")
    s.add_argument("--sizes", nargs="*", choices=sizes, default=sizes)
    s.add_argument("--quiet", action="store_true")
    s.set_defaults(run=cmd_build_data)

    s = sub.add_parser("demo", help="the main demo: LoRA fine-tuning end to end")
    add_device_arguments(s)
    s.set_defaults(run=cmd_demo)

    s = sub.add_parser("slides", help="build slides/*.slides.html from the executed notebooks")
    s.add_argument("notebooks", nargs="*", help="notebook files (default: all of notebooks/)")
    s.set_defaults(run=cmd_slides)

    s = sub.add_parser("homework", help="build the homework (otter-grader) or grade "
                                         "submissions")
    homework = s.add_subparsers(dest="homework_command", required=True)
    h = homework.add_parser("build", help="student notebooks and Gradescope zips from "
                                          "notebooks/homework/")
    h.add_argument("--out", default="build/homework", help="output folder (default build/homework)")
    h.add_argument("--homework", nargs="*", default=None,
                   help="build only these, e.g. hw1_rank_svd (default: every master notebook)")
    h = homework.add_parser("grade", help="grade submitted notebooks, each in its own process")
    h.add_argument("submissions", nargs="+", help="submitted notebooks (.ipynb)")
    h.add_argument("--homework", required=True, help="which homework, e.g. hw1_rank_svd")
    h.add_argument("--out", default="build/homework/grades",
                   help="folder for <submission>/results.json and summary.csv")
    h.add_argument("--timeout", type=positive_float, default=120.0,
                   help="wall-clock seconds per submission (default 120)")
    h.add_argument("--jobs", type=positive_int, default=1, help="submissions graded at once")
    s.set_defaults(run=cmd_homework)

    s = sub.add_parser("reproduce", help="re-measure a lecture's claim over several seeds "
                                          "into data/results/STUDY.json (--list: the studies)")
    s.add_argument("study", nargs="?", help="the study's name (see --list)")
    s.add_argument("--list", action="store_true", help="each study: cells, seeds, minutes")
    s.add_argument("--seeds", type=positive_int, default=None,
                   help="seeds 0..N-1 (default: the study's own, 3 or 5)")
    s.add_argument("--jobs", type=positive_int, default=1,
                   help="cells run at once, each in its own process on one thread")
    s.add_argument("--quick", action="store_true",
                   help="re-run only the study's check cell at seed 0 and compare it with "
                        "the stored row (writes nothing)")
    s.add_argument("--restart", action="store_true",
                   help="discard the stored table instead of continuing it")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(run=cmd_reproduce)

    # The benchmark's options are defined in minipeft.course.bench, which is imported only when
    # the command runs; its arguments (--help included) are handed over unparsed (see main).
    s = sub.add_parser("bench", add_help=False,
                       help="benchmark against transformers + peft (needs requirements-dev.txt; "
                            "`bench --help` lists its options)")
    s.set_defaults(run=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one `error:` line and exit status 2 (1 for a
    failure minipeft did not foresee, with its type named; MINIPEFT_DEBUG=1 shows the
    traceback instead)."""
    cli = parser()
    args, unparsed = cli.parse_known_args(argv)
    if args.command == "bench":
        args.bench_argv = unparsed
    elif unparsed:
        cli.error(f"unrecognized arguments: {' '.join(unparsed)}")
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError, ArithmeticError) as err:
        if os.environ.get("MINIPEFT_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # a bug: still one line, with what kind of failure it was
        if os.environ.get("MINIPEFT_DEBUG"):
            raise
        print(f"error: {type(err).__name__}: {err} (run with MINIPEFT_DEBUG=1 for the "
              "traceback)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
