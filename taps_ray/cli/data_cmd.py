"""`taps-ray data`: list the registered datasets and show rendered samples.

    taps-ray data list [--json]
    taps-ray data sample NAME [-n 3] [--target smollm2-135m-instruct]
"""

from __future__ import annotations

import argparse
import json

from taps_ray.data.hub import hub_reachable
from taps_ray.data.records import Record, turn_messages, user_turns
from taps_ray.data.registry import (
    Resolution,
    count_rows,
    dataset_names,
    get_spec,
    list_datasets,
    load_records,
    local_path,
    resolve,
)
from taps_ray.errors import TapsError

DEFAULT_TARGET = "smollm2-135m-instruct"
ANSWER_PLACEHOLDER = "<the model's own answer to turn {n}>"


def add_parser(subparsers) -> None:
    """Register `data list` and `data sample` on the top-level subparsers."""
    data = subparsers.add_parser("data", help="list datasets and show rendered samples")
    data.set_defaults(func=lambda _args: _print_help(data))
    commands = data.add_subparsers(dest="data_command", metavar="ACTION")
    listing = commands.add_parser("list", help="datasets, where they resolve and their row counts")
    listing.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    listing.set_defaults(func=run_list)
    sample = commands.add_parser("sample", help="show records rendered with a target's template")
    sample.add_argument("name", help=f"dataset name: {', '.join(dataset_names())}")
    sample.add_argument("-n", type=int, default=3, help="how many records (default 3)")
    sample.add_argument("--target", default=DEFAULT_TARGET, help="tokenizer: alias, hub id, folder")
    sample.add_argument("--max-length", type=int, default=2048, help="truncate to this many tokens")
    sample.set_defaults(func=run_sample)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def run_list(args: argparse.Namespace) -> int:
    rows = [_list_row(res) for res in _resolutions()]
    print(json.dumps(rows, indent=2) if args.json else _table(rows))
    return 0


def _resolutions() -> list[Resolution]:
    # Probe the hub once, and only when some local copy is absent.
    specs = list_datasets()
    all_local = all((p := local_path(s)) is not None and p.is_file() for s in specs)
    hub = False if all_local else hub_reachable()
    return [resolve(spec.name, hub=hub) for spec in specs]


def _list_row(res: Resolution) -> dict:
    # Rows are counted for local copies only: counting a hub dataset means downloading it.
    rows = count_rows(res.name) if res.resolved == "local" else None
    path = str(res.path) if res.path is not None else None
    return {"name": res.name, "kind": res.kind, "resolved": res.resolved, "rows": rows,
            "path": path}


def _table(rows: list[dict]) -> str:
    header = ("name", "kind", "resolved", "rows", "path")
    cells = [header] + [tuple(_cell(row[key]) for key in header) for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in cells
    )


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def run_sample(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise TapsError(f"-n must be at least 1 (got {args.n}); pass how many records to show")
    if args.max_length < 1:
        raise TapsError(f"--max-length must be at least 1 (got {args.max_length})")
    spec = get_spec(args.name)
    records = load_records(args.name, limit=args.n)
    from taps_ray.models.target import load_tokenizer  # lazy: pulls in torch/transformers

    tokenizer = load_tokenizer(args.target)
    for record in records:
        print(_header(record))
        body = _show_source(tokenizer, record, args.max_length) if spec.kind == "source" else (
            _show_benchmark(tokenizer, record))
        print(body, end="\n\n")
    return 0


def _header(record: Record) -> str:
    extra = f" [{record.category}]" if record.category else ""
    return f"=== {record.id}{extra} ==="


def _show_source(tokenizer, record: Record, max_length: int) -> str:
    from taps_ray.data.render import format_masked, render_conversation

    example = render_conversation(tokenizer, record.messages, max_length=max_length)
    stats = f"({len(example.input_ids)} tokens, {example.num_masked} in the loss, marked « »)"
    return f"{stats}\n{format_masked(tokenizer, example)}"


def _show_benchmark(tokenizer, record: Record) -> str:
    from taps_ray.data.render import render_prompt

    parts = []
    for turn in range(len(user_turns(record))):
        answers = [ANSWER_PLACEHOLDER.format(n=k + 1) for k in range(turn)]
        ids = render_prompt(tokenizer, turn_messages(record, turn, answers))
        parts.append(f"--- turn {turn + 1} prompt ({len(ids)} tokens) ---\n"
                     f"{tokenizer.decode(ids, skip_special_tokens=False)}")
    if record.reference:
        parts.append(f"--- reference ---\n{record.reference}")
    return "\n".join(parts)

