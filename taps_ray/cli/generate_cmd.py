"""`taps-ray generate`: speculative decoding of one prompt, optionally checked for losslessness.

The adaptive speed policy by default (trees cut to the tokens/s-optimal size, plain steps while
speculation measures slower), seeded by this machine's cost profile when one was calibrated;
`--policy fixed` verifies the whole tree every step (the study's setting).
"""

from __future__ import annotations

import argparse
import json
import sys

from taps_ray.config.schema import DEFAULT_TARGET, TreeConfig
from taps_ray.errors import TapsError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="speculative decoding of one prompt")
    p.add_argument("--target", default=DEFAULT_TARGET, help="alias, hub id or local HF folder")
    p.add_argument("--drafter", default="untrained",
                   help="drafter folder, 'untrained', or 'prompt-lookup[:num_tokens=10,...]'")
    p.add_argument("--prompt", required=True, help="prompt text")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--tree", default="60/5/10", help="total_tokens/depth/top_k (published: 60/5/10)"
    )
    p.add_argument("--device", default=None)
    p.add_argument("--policy", choices=("adaptive", "fixed"), default="adaptive",
                   help="adaptive: tokens/s-optimal trees and a fallback to plain steps; "
                        "fixed: verify the whole tree every step")
    p.add_argument("--profile", default=None, metavar="FILE",
                   help="cost profile JSON of this machine (default: the one `taps-ray "
                        "calibrate` saved for this target, if any)")
    p.add_argument(
        "--check-lossless",
        action="store_true",
        help="also decode plainly (same sampling and seed): report whether the outputs are "
             "identical (at T > 0 too: sampling draws are keyed by position) and the speedup "
             "over plain decoding",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def parse_tree(text: str) -> TreeConfig:
    parts = text.split("/")
    if len(parts) != 3 or not all(x.isdigit() and int(x) > 0 for x in parts):
        raise TapsError(f"--tree '{text}' must be total_tokens/depth/top_k, e.g. 60/5/10")
    return TreeConfig(*map(int, parts))


def run(args: argparse.Namespace) -> int:
    from taps_ray.decoding.engine import SpeculativeEngine, generate_plain
    from taps_ray.decoding.sampling import SamplingParams
    from taps_ray.models.target import load_target
    from taps_ray.serving.policy import check_profile_file

    if args.max_new_tokens <= 0:
        raise TapsError("--max-new-tokens must be > 0")
    try:
        sampling = SamplingParams(args.temperature, args.top_p, args.top_k)
    except ValueError as err:
        raise TapsError(str(err)) from None
    tree = parse_tree(args.tree)
    if args.profile:
        check_profile_file(args.profile)  # corrupt or missing: refused before loading models
    target = load_target(args.target, device=args.device)
    policy = _policy(args.policy, args.profile, target)
    engine = SpeculativeEngine(target, [_drafter(args.drafter, target)], tree, policy=policy)
    prompt_ids = encode_prompt(target.tokenizer, args.prompt, args.chat)
    if args.check_lossless:  # both timings then start warm (first calls allocate)
        generate_plain(target, prompt_ids, sampling, 2)
    result = engine.generate(prompt_ids, sampling, args.max_new_tokens, seed=args.seed)
    report = _report(target, result, policy)
    if args.check_lossless:
        plain = generate_plain(target, prompt_ids, sampling, args.max_new_tokens, seed=args.seed)
        report.update(_against_plain(result, plain))
    _print(report, args.json)
    return 1 if report.get("lossless") is False else 0


def _against_plain(result, plain) -> dict:
    """Losslessness and speed against plain decoding of the same prompt (timed, same run)."""
    speedup = result.tokens_per_s / plain.tokens_per_s if plain.tokens_per_s > 0 else None
    return {
        "lossless": plain.tokens == result.tokens,
        "plain_tokens_per_s": round(plain.tokens_per_s, 2),
        "speedup": None if speedup is None else round(speedup, 3),
    }


def _policy(mode: str, profile: str | None, target):
    """The speed policy; an explicitly named profile must fit this machine (else exit 2)."""
    from taps_ray.decoding.adaptive import make_policy
    from taps_ray.serving.policy import machine_profile

    if mode != "adaptive" and not profile:
        return make_policy(mode)
    return make_policy(mode, machine_profile(target, profile or "", _note))


def _note(line: str) -> None:
    """A remark on stderr, so --json's stdout stays one JSON object."""
    print(f"taps-ray: {line}", file=sys.stderr)


def encode_prompt(tokenizer, text: str, chat: bool) -> list[int]:
    if chat:
        rendered = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=True
        )
        return tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return tokenizer(text)["input_ids"]


def _drafter(spec: str, target):
    from taps_ray.decoding.prompt_lookup import load_drafter_spec

    return load_drafter_spec(spec, target)


def _report(target, result, policy) -> dict:
    from taps_ray.serving.live import fallbacks

    split = result.time_split()
    steps = len(result.steps)
    speculative = sum(s.speculative for s in result.steps)
    return {
        "text": target.tokenizer.decode(result.tokens, skip_special_tokens=True),
        "new_tokens": result.new_tokens,
        "steps": steps,
        "tau": round(result.tau, 4),
        "tokens_per_s": round(result.tokens_per_s, 2),
        "policy": policy.name,
        "speculative_share": round(speculative / steps, 4) if steps else 0.0,
        "guard_fallbacks": fallbacks(policy),
        "finish_reason": result.finish_reason,
        "time_s": {
            "prefill": round(result.prefill_s, 4),
            **{k: round(v, 4) for k, v in split.items()},
        },
    }


def _print(report: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    print(report["text"])
    print("---")
    for key, value in report.items():
        if key != "text":
            print(f"{key}: {value}")
