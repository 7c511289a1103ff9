"""``nsl train ...``: offline QT-Opt from the command line, one command per mode.

  nsl train pretrain  --data BAG... --steps N --output base.safetensors
  nsl train finetune  --init base.safetensors --base BAG... --target BAG... --output ft.safetensors
  nsl train scratch   --base BAG... --target BAG... --output scratch.safetensors
  nsl train continual --init base.safetensors --base BAG... --task NAME=BAG[,BAG...] ...
                      --output-dir DIR
  nsl train grasp-values --data BAG... --steps 3000 --output gv.safetensors
                      (then: finetune --init gv.safetensors)

finetune, scratch and continual run the fine-tuning recipe (nsl_trainer.recipe.FineTuneRecipe,
the trainer node's and the experiment's) unless told otherwise: each of its settings has a flag
(--steps, --target-fraction, --policy-weights, --mc-mix, --location-weight, --location-labels)
whose default is the recipe's. pretrain runs QTOptConfig's defaults.

The library (torch) is imported only when a command runs, so that ``nsl --help`` and the
other ``nsl`` commands start fast (the recipe and QTOptConfig's module import no torch).

Under torchrun every process trains (DistributedDataParallel; gloo on CPU, nccl on CUDA) and
rank 0 writes the files; the recipe's location loss trains in one process only, so switch it off:

  torchrun --standalone --nproc-per-node 2 -m nsl_trainer.cli finetune --location-weight 0
      --init ... --output ...
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
from typing import Any, Callable

from nsl_collector.errors import DatasetError
from nsl_policy.model_recipe import BASE_MODEL

from . import grasp_values_cli
from .cli_options import add_compute_and_network_options
from .config import POLICY_WEIGHTS, QTOptConfig
from .recipe import RECIPE_LOCATION_LABELS, FineTuneRecipe

RECIPE = FineTuneRecipe()
"""The fine-tuning recipe, whose settings are the defaults of finetune, scratch and continual."""

_KINDS = {int: "an integer", float: "a number"}


def checked(owner: type, name: str, convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """Return an argparse type: ``convert`` the flag's text, then check it by ``owner``'s rule.

    ``owner`` (a config dataclass whose fields all have defaults) is built with ``name`` set to
    the value, so the rule has one owner; argparse reports a refusal as ``argument --flag:
    <owner's message>`` and exits 2.
    """

    def parse(text: str) -> Any:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_KINDS[convert]}, got {text!r}") from None
        try:
            owner(**{name: value})
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    return parse


def _common(
    p: argparse.ArgumentParser, *, output: bool = True, recipe: FineTuneRecipe | None = None
) -> None:
    """Add training options; ``recipe``: the fine-tuning commands' defaults (None: pretrain)."""
    g = p.add_argument_group("training")
    if recipe is None:
        g.add_argument("--steps", type=int, required=True, help="gradient steps")
    else:
        g.add_argument(
            "--steps",
            type=checked(FineTuneRecipe, "steps", int),
            default=recipe.steps,
            help=f"gradient steps (per task for continual; default {recipe.steps}, the recipe's)",
        )
    if output:
        g.add_argument(
            "--output", required=True, help="result checkpoint (.safetensors), written atomically"
        )
        g.add_argument(
            "--run-dir",
            default=None,
            help="state, periodic checkpoints and TensorBoard logs "
            "(default: <output>.run next to the output)",
        )
    scale = QTOptConfig.finetune_lr_scale  # the class attribute: no QTOptConfig (torch) made
    g.add_argument(
        "--lr",
        type=float,
        default=None,
        help="learning rate (default: --base-lr"
        + ("" if recipe is None else f" x {scale:g}, QTOptConfig.finetune_learning_rate()")
        + ")",
    )
    g.add_argument(
        "--base-lr",
        type=float,
        default=None,
        help=f"pre-training learning rate (default {QTOptConfig.learning_rate:g}: "
        "QTOptConfig.learning_rate)",
    )
    g.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="transitions per step and process (default: QTOptConfig.batch_size)",
    )
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--target-action",
        choices=("cem", "random"),
        default="cem",
        help="max over next actions in the Bellman target: CEM (default) or best of N random",
    )
    g.add_argument(
        "--no-augment", action="store_true", help="no random-shift/photometric augmentation"
    )
    weights = QTOptConfig.policy_weights if recipe is None else recipe.policy_weights
    g.add_argument(
        "--policy-weights",
        choices=POLICY_WEIGHTS,
        default=weights,
        help="write the online network or its Polyak average (target network 1) as the "
        f"checkpoint (default {weights}"
        + (", as QT-Opt" if recipe is None else ", the recipe's")
        + "; see QTOptConfig.policy_weights)",
    )
    g.add_argument(
        "--conservative-weight",
        type=float,
        default=0.0,
        metavar="W",
        help="weight of the conservative (CQL) term that lowers actions the data never tried "
        "(default 0: plain QT-Opt; see QTOptConfig.conservative_weight)",
    )
    mc_mix = QTOptConfig.mc_mix if recipe is None else recipe.mc_mix
    g.add_argument(
        "--mc-mix",
        type=checked(QTOptConfig if recipe is None else FineTuneRecipe, "mc_mix", float),
        default=mc_mix,
        metavar="M",
        help="weight of the recorded episode's discounted return in the target, mixed with the "
        f"Bellman target (default {mc_mix:g}"
        + (": plain QT-Opt" if recipe is None else ", the recipe's; 0: plain QT-Opt")
        + "; see QTOptConfig.mc_mix)",
    )
    if recipe is not None:
        g.add_argument(
            "--location-weight",
            type=checked(FineTuneRecipe, "location_weight", float),
            default=recipe.location_weight,
            metavar="W",
            help="weight of the auxiliary object-location loss (default "
            f"{recipe.location_weight:g}, the recipe's; 0: none; see QTOptConfig.location_weight)",
        )
        g.add_argument(
            "--location-labels",
            choices=RECIPE_LOCATION_LABELS,
            default=recipe.location_labels,
            help="labels of the location loss: hindsight (where each successful grasp closed, "
            "from the episodes themselves) or none (no location loss) (default "
            f"{recipe.location_labels}, the recipe's)",
        )
    g.add_argument(
        "--grasp-fraction",
        type=float,
        default=0.0,
        metavar="F",
        help="extra share of each batch drawn from grasp attempts (episode-final steps) "
        "(default 0: uniform rows, as QT-Opt; see QTOptConfig.grasp_fraction)",
    )
    g.add_argument(
        "--checkpoint-every",
        type=int,
        default=1000,
        metavar="K",
        help="save training state + a policy checkpoint every K steps "
        "(0: only at the end; default 1000)",
    )
    g.add_argument(
        "--log-every", type=int, default=10, help="TensorBoard scalars every N steps (default 10)"
    )
    g.add_argument(
        "--no-resume",
        action="store_true",
        help="start over even if the run directory holds a state",
    )
    g.add_argument("--no-tensorboard", action="store_true")
    add_compute_and_network_options(g, "for a random init")
    g.add_argument(
        "--head",
        choices=("conv", "keypoints"),
        default=BASE_MODEL["head"],
        help="how a random init's network scores the action against the image (nsl_policy.model."
        f"QNetworkConfig.head; default {BASE_MODEL['head']}, the shipped base's). keypoints: a "
        "spatial softmax over a 16x16 map and an MLP of 256 units; conv: the action added to a "
        "4x4 feature map (docs/results/decisions.md)",
    )
    g.add_argument("--quiet", action="store_true", help="no progress bar")
    g.add_argument(
        "--strict",
        action="store_true",
        help="refuse data holding a damaged bag or episode (default: skip it with a warning "
        "naming the file, episode and reason, and train on the rest)",
    )


def _mixing(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--base", nargs="*", default=[], metavar="BAG", help="base-task bags or dataset folders"
    )
    p.add_argument(
        "--target-fraction",
        type=checked(FineTuneRecipe, "target_fraction", float),
        default=RECIPE.target_fraction,
        metavar="F",
        help="probability that a sample comes from target data "
        f"(default {RECIPE.target_fraction:g}, the recipe's)",
    )


def recipe_of(args: argparse.Namespace) -> FineTuneRecipe:
    """Return the fine-tuning recipe that a finetune, scratch or continual command asks for."""
    return FineTuneRecipe.from_fields(args)  # each recipe field has a flag of its name


def add_commands(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="offline QT-Opt: pretrain, finetune, scratch, continual",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="train_command", required=True)
    c = sub.add_parser(
        "pretrain", help="train from a random init at the pre-training learning rate"
    )
    c.add_argument(
        "--data", nargs="+", required=True, metavar="BAG", help="bags or dataset folders"
    )
    _common(c)
    c.set_defaults(fn=cmd_train, mode="pretrain")
    c = sub.add_parser(
        "finetune",
        help="fine-tune a checkpoint on base + target data with the fine-tuning recipe",
    )
    c.add_argument("--init", required=True, help="checkpoint to start from")
    c.add_argument(
        "--target",
        nargs="+",
        required=True,
        metavar="BAG",
        help="target-task bags or dataset folders",
    )
    _mixing(c)
    _common(c, recipe=RECIPE)
    c.set_defaults(fn=cmd_train, mode="finetune")
    c = sub.add_parser(
        "scratch", help="the fine-tune recipe from a random init (the paper's comparison)"
    )
    c.add_argument("--target", nargs="+", required=True, metavar="BAG")
    _mixing(c)
    _common(c, recipe=RECIPE)
    c.set_defaults(fn=cmd_train, mode="scratch")
    c = sub.add_parser(
        "continual", help="fine-tune a chain of tasks, each from the previous result"
    )
    c.add_argument(
        "--init", default=None, help="checkpoint the chain starts from (default: random init)"
    )
    c.add_argument(
        "--task",
        action="append",
        required=True,
        metavar="NAME=BAG[,BAG...]",
        help="a task and its data, in order (repeat)",
    )
    c.add_argument(
        "--output-dir",
        required=True,
        help="NN-<task>.safetensors and their run directories go here",
    )
    c.add_argument(
        "--accumulate", action="store_true", help="earlier tasks' data joins the base data"
    )
    _mixing(c)
    _common(c, output=False, recipe=RECIPE)
    c.set_defaults(fn=cmd_train, mode="continual")
    grasp_values_cli.add_command(sub)


@contextlib.contextmanager
def distributed(device_arg: str):
    """Initialise torch.distributed when started by torchrun (WORLD_SIZE > 1); yield the device."""
    # torch is heavy: imported when a command runs (module doc).
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device_arg == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    else:
        device = device_arg
    if world <= 1:
        yield device
        return
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


class _Bar:
    """tqdm progress on the console (rank 0 only)."""

    def __init__(self, total: int, desc: str, enabled: bool) -> None:
        self.bar = None
        if enabled:
            from tqdm import tqdm  # heavy: imported when a command runs (module doc)

            self.bar = tqdm(
                total=total, desc=desc, unit="step", dynamic_ncols=True, file=sys.stderr
            )

    def __call__(self, step: int, m: dict) -> None:
        if self.bar is None:
            return
        if self.bar.n == 0 and step > 1:
            self.bar.update(step - 1)  # resumed
        self.bar.update(step - self.bar.n)
        if step % 10 == 0 or step == self.bar.total:
            self.bar.set_postfix(
                loss=f"{m['loss']:.4f}",
                q=f"{m['mean_q']:.3f}",
                td=f"{m['td_error']:.3f}",
                target=f"{m['target_fraction']:.2f}",
                refresh=False,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _parse_tasks(items: list[str]) -> list[tuple[str, list[str]]]:
    tasks = []
    for item in items:
        name, sep, paths = item.partition("=")
        if not sep or not name or not paths:
            raise ValueError(f"--task expects NAME=BAG[,BAG...], got {item!r}")
        tasks.append((name, [p for p in paths.split(",") if p]))
    return tasks


def cmd_train(args: argparse.Namespace) -> int:
    """Run ``nsl train pretrain|finetune|scratch|continual``; return the exit code."""
    from nsl_policy.checkpoint import CheckpointError  # loads torch: only when a command runs

    try:
        return _run(args)
    except (
        DatasetError,
        CheckpointError,
        ValueError,
        FileNotFoundError,
        FloatingPointError,
    ) as exc:
        print(f"nsl train {args.mode}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"nsl train {args.mode}: interrupted; run the same command again to resume",
            file=sys.stderr,
        )
        return 130


def qtopt_config_of(args: argparse.Namespace) -> QTOptConfig:
    """Return the QT-Opt settings a command line asks for (the recipe's on top, but pretrain)."""
    if args.mode == "pretrain":
        recipe = None
    else:
        recipe = recipe_of(args)
        if recipe.uses_location and args.conservative_weight > 0:
            raise ValueError(
                "--conservative-weight > 0 needs the location loss off (--location-weight 0): "
                "the two are not implemented together"
            )
    config = QTOptConfig(
        **({} if args.batch_size is None else {"batch_size": args.batch_size}),
        **({} if args.base_lr is None else {"learning_rate": args.base_lr}),
        target_action=args.target_action,
        augment=not args.no_augment,
        seed=args.seed,
        policy_weights=args.policy_weights,
        conservative_weight=args.conservative_weight,
        grasp_fraction=args.grasp_fraction,
        mc_mix=args.mc_mix,
    )
    return config if recipe is None else recipe.qtopt_config(config)


def _run(args) -> int:
    # torch (also under the nsl_policy and nsl_trainer modules) is imported when a command runs.
    import torch
    import torch.distributed as dist

    from nsl_policy.model import QNetworkConfig
    from nsl_policy.model_recipe import KEYPOINTS_RECIPE
    from nsl_trainer.data import load_datasets
    from nsl_trainer.runs import continual, train

    if args.steps < 1:
        raise ValueError(f"--steps must be >= 1, got {args.steps}")
    config = qtopt_config_of(args)
    if config.location_weight > 0 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ValueError(
            "the location loss (--location-weight > 0) trains in one process only, not under "
            "torchrun; pass --location-weight 0 (or --location-labels none) or run one process"
        )
    target_fraction = 0.0 if args.mode == "pretrain" else args.target_fraction
    if args.threads is not None:
        torch.set_num_threads(max(1, args.threads))
    model_config = QNetworkConfig(
        image_size=args.image_size,
        width=args.width,
        head=args.head,
        **(KEYPOINTS_RECIPE if args.head == "keypoints" else {}),
    )
    with distributed(args.device) as device:
        rank = dist.get_rank() if dist.is_initialized() else 0
        show = rank == 0 and not args.quiet
        opts: dict[str, Any] = dict(
            learning_rate=args.lr,
            seed=args.seed,
            config=config,
            device=device,
            checkpoint_every=args.checkpoint_every,
            log_every=args.log_every,
            resume=not args.no_resume,
            tensorboard=not args.no_tensorboard,
        )
        if args.mode != "finetune":
            opts["model_config"] = model_config
        if args.mode == "continual":
            tasks = _parse_tasks(args.task)
            bars: list[_Bar] = []

            def factory(i: int, name: str):
                bars.append(_Bar(args.steps, f"{i + 1}/{len(tasks)} {name}", show))
                return bars[-1]

            opts.pop("model_config") if args.init else None
            results = continual(
                args.init,
                args.base,
                tasks,
                args.steps,
                output_dir=args.output_dir,
                accumulate=args.accumulate,
                progress_factory=factory,
                load=functools.partial(load_datasets, strict=args.strict),
                target_fraction=target_fraction,
                **{k: v for k, v in opts.items() if k != "resume"},
                resume=not args.no_resume,
            )
            for b in bars:
                b.close()
        else:
            bar = _Bar(args.steps, args.mode, show)
            base = args.data if args.mode == "pretrain" else args.base
            target = [] if args.mode == "pretrain" else args.target
            if args.mode == "finetune":
                opts["init_checkpoint"] = args.init
            opts["target_fraction"] = target_fraction
            try:
                results = [
                    train(
                        args.mode,
                        base,
                        target,
                        args.steps,
                        output_path=args.output,
                        run_dir=args.run_dir,
                        progress=bar,
                        strict=args.strict,
                        **opts,
                    )
                ]
            finally:
                bar.close()
        world = dist.get_world_size() if dist.is_initialized() else 1
        for r in results:
            if world > 1:  # every rank reports the hash of its own weights
                print(f"rank {rank}/{world}: checkpoint {r.checkpoint_id}", flush=True)
            if rank == 0:
                m = r.metrics
                resumed = f", resumed from step {r.resumed_from}" if r.resumed_from else ""
                loss, fraction = m.get("loss", float("nan")), m.get("target_fraction", 0)
                print(
                    f"wrote {r.checkpoint_path} (checkpoint {r.checkpoint_id}, {r.mode}, "
                    f"{r.steps} steps{resumed}; loss {loss:.4f}, target fraction {fraction:.2f}; "
                    f"run dir {r.run_dir})",
                    flush=True,
                )
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the parser of ``python -m nsl_trainer.cli`` (``nsl train``'s commands)."""
    parser = argparse.ArgumentParser(prog="nsl_trainer.cli")
    sub = parser.add_subparsers(dest="command", required=True)
    add_commands(sub)
    return parser


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Parse a ``train`` command line (the leading ``train`` may be left out)."""
    argv = list(argv)
    if argv[:1] != ["train"]:
        argv = ["train", *argv]
    return build_parser().parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point for ``python -m nsl_trainer.cli`` (e.g. under torchrun)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
