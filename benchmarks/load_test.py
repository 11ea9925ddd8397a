"""Load test of the taps-ray service: N concurrent streaming clients for T seconds each.

Each client loops: send one streaming chat completion, read it to `data: [DONE]`, repeat until
the duration is over (requests still running at the end are finished and counted). Every
content chunk is timestamped on the client: time to first token (TTFT) is the first one's
delay, inter-token latency (ITL) the gaps between a request's consecutive content chunks.

Against a running server (standard library only, runs from any Python):

    python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 1,8 --duration 120

Both serving modes in one run (`--compare`: starts a local Ray, serves each Serve config in turn
on loopback, warms it up, runs every client count, shuts it down; needs the repo's venv):

    .venv/bin/python benchmarks/load_test.py --compare --clients 1,4,8,16 --duration 120 \
        --max-tokens 64 --out docs/bench/load-batching.json

`--modes` names the configs (default: one-at-a-time=serve_apps/one_at_a_time.yaml and
batched=serve_apps/default.yaml); `--set key=value` overrides every config's app args. Prints a
table: requests done, errors, aggregate tokens/s (completion tokens from the final usage chunk
/ wall time), p50/p95 TTFT and ITL, p50 request latency. `--out` writes every row as JSON.
`--api-key` (or OPENAI_API_KEY) sends `Authorization: Bearer`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path

PROMPTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Write a short, friendly note inviting a neighbour to a picnic on Saturday.",
    "Explain in two sentences why the sky is blue.",
    "A train travels 60 km in 45 minutes. What is its average speed in km/h?",
)
DEFAULT_MODES = ("one-at-a-time=serve_apps/one_at_a_time.yaml", "batched=serve_apps/default.yaml")
COLUMNS = (  # (header, summary key) of the printed table
    ("mode", "mode"), ("clients", "clients"), ("requests", "requests"), ("errors", "errors"),
    ("tokens/s", "tokens_per_s"), ("TTFT p50", "ttft_p50_s"), ("TTFT p95", "ttft_p95_s"),
    ("ITL p50", "itl_p50_s"), ("ITL p95", "itl_p95_s"), ("latency p50", "latency_p50_s"),
)


@dataclass
class Sample:
    latency_s: float
    first_token_s: float
    tokens: int
    gaps_s: list[float]  # between consecutive content chunks


@dataclass
class Tally:
    samples: list[Sample] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, sample: Sample | None, error: str | None = None) -> None:
        with self.lock:
            if sample is not None:
                self.samples.append(sample)
            if error is not None:
                self.errors.append(error)


def one_request(url: str, body: bytes, headers: dict[str, str], timeout: float) -> Sample:
    """Send one streaming request; raise on any HTTP or stream error."""
    start = time.perf_counter()
    times: list[float] = []  # arrival of each chunk with text
    tokens = 0
    req = urllib.request.Request(f"{url}/v1/chat/completions", body, headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                first = times[0] - start if times else 0.0
                gaps = [b - a for a, b in pairwise(times)]
                return Sample(time.perf_counter() - start, first, tokens, gaps)
            event = json.loads(line[len("data: "):])
            if "error" in event:
                raise RuntimeError(event["error"].get("message", "stream error"))
            if any(c["delta"].get("content") for c in event["choices"]):
                times.append(time.perf_counter())
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    raise RuntimeError("stream ended without [DONE]")


def request_body(args: argparse.Namespace, prompt: str, max_tokens: int) -> bytes:
    return json.dumps({
        "model": args.model, "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens, "temperature": args.temperature, "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()


def headers_of(args: argparse.Namespace) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    return headers


def client_loop(args: argparse.Namespace, url: str, index: int, deadline: float,
                tally: Tally) -> None:
    headers, n = headers_of(args), 0
    while time.perf_counter() < deadline:
        body = request_body(args, PROMPTS[(index + n) % len(PROMPTS)], args.max_tokens)
        n += 1
        try:
            tally.add(one_request(url, body, headers, args.timeout))
        except urllib.error.HTTPError as err:
            tally.add(None, f"HTTP {err.code}")
            time.sleep(float(err.headers.get("Retry-After") or 0.5))  # back off as told
        except (OSError, RuntimeError, ValueError) as err:
            tally.add(None, type(err).__name__)
            time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


def summarize(tally: Tally, wall_s: float, clients: int, args: argparse.Namespace) -> dict:
    lat = [s.latency_s for s in tally.samples]
    ttft = [s.first_token_s for s in tally.samples if s.first_token_s]
    gaps = [g for s in tally.samples for g in s.gaps_s]
    tokens = sum(s.tokens for s in tally.samples)
    errors: dict[str, int] = {}
    for e in tally.errors:
        errors[e] = errors.get(e, 0) + 1
    return {
        "clients": clients, "duration_s": args.duration, "max_tokens": args.max_tokens,
        "wall_s": round(wall_s, 2), "requests": len(tally.samples), "errors": len(tally.errors),
        "error_kinds": errors, "requests_per_s": round(len(tally.samples) / wall_s, 3),
        "tokens": tokens, "tokens_per_s": round(tokens / wall_s, 2),
        **{f"latency_p{q}_s": round(percentile(lat, q), 3) for q in (50, 95, 99)},
        **{f"ttft_p{q}_s": round(percentile(ttft, q), 3) for q in (50, 95, 99)},
        **{f"itl_p{q}_s": round(percentile(gaps, q), 4) for q in (50, 95, 99)},
    }


def run_clients(args: argparse.Namespace, url: str, clients: int) -> dict:
    """`clients` streaming clients against `url` for `args.duration` seconds."""
    tally, start = Tally(), time.perf_counter()
    deadline = start + args.duration
    threads = [threading.Thread(target=client_loop, args=(args, url, i, deadline, tally),
                                daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return summarize(tally, time.perf_counter() - start, clients, args)


def table(rows: list[dict]) -> str:
    """Markdown table of the summary rows."""
    lines = ["| " + " | ".join(h for h, _ in COLUMNS) + " |",
             "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(key, "")) for _, key in COLUMNS) + " |")
    return "\n".join(lines)


# --- driver: serve each mode in a local Ray, one after the other ---------------------------------


class LocalServer:
    """One Serve config on loopback in a fresh local Ray (not any cluster already running)."""

    def __init__(self, config: str, overrides: list[str], port: int):
        from taps_ray.cli.serve_cmd import read_plan

        _, apps = read_plan(Path(config), overrides)
        if len(apps) != 1:
            raise SystemExit(f"{config}: --compare serves configs with exactly one application")
        self.args, self.port = apps[0]["args"], port
        self.url = f"http://127.0.0.1:{port}"

    def __enter__(self) -> LocalServer:
        import ray
        from ray import serve

        from taps_ray.serving.app import build_app

        ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False,
                 log_to_driver=False)
        serve.start(http_options={"host": "127.0.0.1", "port": self.port})
        serve.run(build_app(self.args), name="taps", route_prefix="/")
        return self

    def __exit__(self, *exc: object) -> None:
        import ray
        from ray import serve

        serve.shutdown()
        ray.shutdown()


def served_model(url: str, headers: dict[str, str], timeout_s: float = 300.0) -> str:
    """The served model id, once the app answers /v1/models."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            req = urllib.request.Request(f"{url}/v1/models", headers=headers)
            with urllib.request.urlopen(req, timeout=30) as resp:
                return json.loads(resp.read())["data"][0]["id"]
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def warm_up(args: argparse.Namespace, url: str) -> None:
    """A few short requests at once: first calls (allocations, thread pools) are not measured."""
    threads = [threading.Thread(target=one_request, args=(
        url, request_body(args, PROMPTS[i], 8), headers_of(args), args.timeout))
        for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def compare(args: argparse.Namespace) -> list[dict]:
    rows = []
    for label, config in (m.split("=", 1) for m in args.modes):
        with LocalServer(config, args.set, args.port) as server:
            args.model = served_model(server.url, headers_of(args))
            warm_up(args, server.url)
            for clients in args.clients:
                row = {"mode": label, "config": config, **run_clients(args, server.url, clients)}
                print(f"{label}, {clients} clients: {row['tokens_per_s']} tokens/s, "
                      f"{row['requests']} requests, {row['errors']} errors", flush=True)
                rows.append(row)
    return rows


def write_json(path: str, args: argparse.Namespace, rows: list[dict]) -> None:
    """All rows with the run's settings; written to a temp name, then renamed."""
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    report = {"command": " ".join(sys.argv), "git_rev": rev, "cpus": os.cpu_count(),
              "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "set": args.set, "rows": rows}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)


def client_counts(text: str) -> list[int]:
    counts = [int(c) for c in text.split(",") if c.strip()]
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("--clients takes positive counts, e.g. 1,4,8,16")
    return counts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server root (no /v1)")
    p.add_argument("--compare", action="store_true",
                   help="serve each of --modes locally in turn and load-test each")
    p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), metavar="LABEL=CONFIG",
                   help="Serve configs --compare runs, in order")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="--compare: overrides of every config's app args")
    p.add_argument("--port", type=int, default=8000, help="--compare: loopback port to serve on")
    p.add_argument("--clients", type=client_counts, default=[4],
                   help="concurrent streaming clients; a comma list runs each in turn")
    p.add_argument("--duration", type=float, default=30.0, help="seconds per client count")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout (s)")
    p.add_argument("--json", action="store_true", help="print the rows as JSON, no table")
    p.add_argument("--out", default="", help="write the rows and settings to this JSON file")
    args = p.parse_args(argv)
    if args.duration <= 0 or args.max_tokens < 1:
        p.error("--duration and --max-tokens must be positive")
    if any("=" not in m for m in args.modes):
        p.error("--modes takes LABEL=CONFIG pairs, e.g. batched=serve_apps/default.yaml")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare:
        rows = compare(args)
    else:
        rows = [{"url": args.url, **run_clients(args, args.url, n)} for n in args.clients]
    if args.out:
        write_json(args.out, args, rows)
    if args.json:
        print(json.dumps(rows[0] if len(rows) == 1 else rows))
    else:
        print(table(rows))
    return 0 if all(row["requests"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
