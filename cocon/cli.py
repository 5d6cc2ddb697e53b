"""`cocon <command> ...`: the one command line of the pipeline (`python -m cocon <command>` without an
installed entry point). The rules call every stage this way; `cocon <command> --help` documents each.

Every command takes its configuration as `--config FILE` (a whole YAML config) and/or `--config-json`
(the config sections a job depends on, as the rules pass them; cocon.workflow.jobs).
"""

from __future__ import annotations

import importlib
import sys

# command -> (module with main(argv), what it does), in pipeline order
COMMANDS: dict[str, tuple[str, str]] = {
    "demo": ("cocon.sources.demo", "generate the embedded demo dataset (videos + UCF101-style annotations)"),
    "manifest": ("cocon.sources.ingest", "read a dataset's annotations into the sharded manifest (TSV)"),
    "frames": ("cocon.preprocess.frames", "decode and resize the videos of one shard into an rgb HDF5 shard"),
    "flow": ("cocon.preprocess.flow", "optical flow (TVL1 or Farneback) of an rgb shard"),
    "seg": ("cocon.preprocess.seg", "person segmentation probability (mmsegmentation) of an rgb shard"),
    "pose": ("cocon.preprocess.pose", "pose keypoint heatmaps (mmpose) of an rgb shard"),
    "summary": ("cocon.preprocess.summary", "report every video that failed preprocessing"),
    "views-figure": ("cocon.evaluate.views_figure", "figures of what preprocessing produced: a few videos, every view"),
    "train": ("cocon.train.command", "run a training method: cpc (stage 1), cocon (stage 2), finetune"),
    "evaluate": ("cocon.evaluate.dense", "dense test of a fine-tuned classifier on one view"),
    "features": ("cocon.evaluate.features", "pretrained video features for the analyses"),
    "report": ("cocon.evaluate.report", "accuracy tables, ensembles, analyses and metrics.json of a run"),
    "claim": ("cocon.evaluate.claim", "Random vs CPC vs CoCon over seeds: claim.json and claim.md"),
    "gpus": ("cocon.workflow.gpus", "run a command on N GPUs of its own (workstations): cocon gpus N -- cmd"),
    "launch": ("cocon.workflow.launch", "run a training command on every node of a SLURM job (runtime.nodes > 1)"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: cocon <command> [options]   (cocon <command> --help for its options)", "", "commands:"]
    lines += [f"  {name:<{width}}  {what}" for name, (_, what) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"cocon: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    sys.argv = [f"cocon {name}", *rest]
    result = module.main(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
