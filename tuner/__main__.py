"""Tuner without the UI.

    python -m tuner train CONFIG.json
    python -m tuner generate --run RUN_DIR --prompts FILE [--out FILE]

`train` runs the same engine as the Train tab and writes the same run folder.
CONFIG.json holds TrainConfig's keys (r, lora_alpha, learning_rate, …, plus
base_model, dataset, method) and optionally `output_dir`: the folder that gets
the run folder (default: the data root's runs/). With "method": "dpo" or "kto",
`dataset` is a preference JSONL in TRL's shapes (prompt/chosen/rejected;
prompt/completion/label; see tuner.preference) and "init_adapter": RUN_DIR
continues a finished LoRA run. Relative `dataset` and `init_adapter` paths are
read relative to the config file. Works under `accelerate launch` too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _train(args) -> int:
    from tuner import models, preference
    from tuner.config import TrainConfig
    from tuner.paths import Layout, data_root
    from tuner.records import FINISHED, new_run_id, start_record
    from tuner.runs import run_to_end
    from tuner.train import RunControl

    config_path = Path(args.config)
    try:
        values = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        print(f"error: cannot read {config_path}: {exc}", file=sys.stderr)
        return 2
    if not isinstance(values, dict):
        print(f"error: {config_path} must hold a JSON object of settings", file=sys.stderr)
        return 2
    layout = Layout(data_root())
    output_dir = Path(values.pop("output_dir", None) or layout.runs)
    for key in ("dataset", "init_adapter"):  # paths relative to the config file
        if isinstance(values.get(key), str) and values[key] and not Path(values[key]).is_absolute():
            values[key] = str((config_path.parent / values[key]).resolve())
    try:
        # a run that continues an adapter records that adapter's rank, alpha and modules
        config = preference.continued(TrainConfig.from_dict(values))
    except (ValueError, TypeError) as exc:
        print(f"error: {config_path}: {exc}", file=sys.stderr)
        return 2
    if not Path(config.dataset).is_file():
        print(f"error: {config_path}: dataset file not found: {config.dataset or '(none)'}", file=sys.stderr)
        return 2

    import torch
    from accelerate import PartialState

    # cpu=True without a GPU: under `accelerate launch --multi_gpu` (or torchrun) the processes of a
    # CPU machine join one gloo group, as Trainer's own (use_cpu) state does; else each thinks it is alone
    state = PartialState(cpu=not torch.cuda.is_available())
    # every process of an `accelerate launch` must agree on the run folder
    run_id = args.run_id or new_run_id(config)
    if state.num_processes > 1 and not args.run_id:
        from accelerate.utils import broadcast_object_list

        run_id = broadcast_object_list([run_id])[0]
    run_dir = output_dir / run_id
    # the model is prepared (the bundled GGUF converted, once) by the main process first; the
    # others wait, then find it ready (converting it at the same time, one of them failed)
    failure = None
    with state.main_process_first():
        try:
            models.resolve(config.base_model, layout.models)
        except Exception as exc:  # noqa: BLE001 - each process says why it cannot go on
            failure = exc
    if failure is not None:
        print(f"error (process {state.process_index} of {state.num_processes}): {config.base_model}: {failure}",
              file=sys.stderr, flush=True)
        return 1
    if state.is_main_process:
        run_dir.mkdir(parents=True, exist_ok=True)
        start_record(run_dir, run_id, config)
    state.wait_for_everyone()

    def row(r):
        if state.is_main_process:
            print(json.dumps(r), flush=True)

    record = run_to_end(config, run_dir, RunControl(append=row), layout.models)
    if state.is_main_process:
        print(f"{record['status']}: {run_dir}")
        if record.get("message"):
            print(record["message"])
    elif record["status"] not in FINISHED:  # a failing rank says why, not only the main one
        print(f"error (process {state.process_index} of {state.num_processes}): {record['status']}: "
              f"{record.get('message') or 'no message'}", file=sys.stderr, flush=True)
    return 0 if record["status"] in FINISHED else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuner", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p_train = sub.add_parser("train", help="train from a JSON config, writing a run folder")
    p_train.add_argument("config")
    p_train.add_argument("--run-id", help="name of the run folder (default: time-dataset-random)")
    p_train.set_defaults(func=_train)
    from tuner import cli_generate

    cli_generate.add_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
