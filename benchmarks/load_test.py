"""Load test of a running taps-ray service: N concurrent streaming clients for T seconds.

Each client loops: send one streaming chat completion, read it to `data: [DONE]`, repeat until
the duration is over (requests still running at the end are finished and counted). Standard
library only, so it runs from any Python.

    .venv/bin/python benchmarks/load_test.py --url http://127.0.0.1:8000 --clients 8 \
        --duration 120 --max-tokens 64 [--json]

Prints requests/s, tokens/s (completion tokens from the final usage chunk), p50/p95/p99 request
latency and time to first token, and the error count. `--api-key` (or OPENAI_API_KEY) sends
`Authorization: Bearer`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

PROMPTS = (
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in "
    "May. How many clips did Natalia sell altogether in April and May?",
    "Write a short, friendly note inviting a neighbour to a picnic on Saturday.",
    "Explain in two sentences why the sky is blue.",
    "A train travels 60 km in 45 minutes. What is its average speed in km/h?",
)


@dataclass
class Sample:
    latency_s: float
    first_token_s: float
    tokens: int


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
    first, tokens = 0.0, 0
    req = urllib.request.Request(f"{url}/v1/chat/completions", body, headers, method="POST")
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        for raw in resp:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return Sample(time.perf_counter() - start, first, tokens)
            event = json.loads(line[len("data: "):])
            if "error" in event:
                raise RuntimeError(event["error"].get("message", "stream error"))
            if not first and any(c["delta"].get("content") for c in event["choices"]):
                first = time.perf_counter() - start
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
    raise RuntimeError("stream ended without [DONE]")


def client_loop(args: argparse.Namespace, index: int, deadline: float, tally: Tally) -> None:
    headers = {"Content-Type": "application/json"}
    if args.api_key:
        headers["Authorization"] = f"Bearer {args.api_key}"
    n = 0
    while time.perf_counter() < deadline:
        prompt = PROMPTS[(index + n) % len(PROMPTS)]
        n += 1
        body = json.dumps({
            "model": args.model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": args.max_tokens, "temperature": args.temperature, "stream": True,
            "stream_options": {"include_usage": True},
        }).encode()
        try:
            tally.add(one_request(args.url, body, headers, args.timeout))
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


def summarize(tally: Tally, wall_s: float, args: argparse.Namespace) -> dict:
    lat = [s.latency_s for s in tally.samples]
    ttft = [s.first_token_s for s in tally.samples if s.first_token_s]
    tokens = sum(s.tokens for s in tally.samples)
    errors: dict[str, int] = {}
    for e in tally.errors:
        errors[e] = errors.get(e, 0) + 1
    return {
        "url": args.url, "clients": args.clients, "duration_s": args.duration,
        "max_tokens": args.max_tokens, "wall_s": round(wall_s, 2),
        "requests": len(tally.samples), "errors": len(tally.errors), "error_kinds": errors,
        "requests_per_s": round(len(tally.samples) / wall_s, 3),
        "tokens": tokens, "tokens_per_s": round(tokens / wall_s, 2),
        **{f"latency_p{q}_s": round(percentile(lat, q), 3) for q in (50, 95, 99)},
        **{f"ttft_p{q}_s": round(percentile(ttft, q), 3) for q in (50, 95, 99)},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:8000", help="server root (no /v1)")
    p.add_argument("--clients", type=int, default=4, help="concurrent streaming clients")
    p.add_argument("--duration", type=float, default=30.0, help="seconds to keep sending")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    p.add_argument("--timeout", type=float, default=300.0, help="per-request timeout (s)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    args = p.parse_args(argv)
    if args.clients < 1 or args.duration <= 0 or args.max_tokens < 1:
        p.error("--clients, --duration and --max-tokens must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    tally, start = Tally(), time.perf_counter()
    deadline = start + args.duration
    threads = [threading.Thread(target=client_loop, args=(args, i, deadline, tally), daemon=True)
               for i in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    report = summarize(tally, time.perf_counter() - start, args)
    if args.json:
        print(json.dumps(report))
    else:
        for key, value in report.items():
            print(f"{key}: {value}")
    return 1 if not tally.samples else 0


if __name__ == "__main__":
    sys.exit(main())
