"""`tinystories sample`: stories from a model, streamed to the terminal."""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from tinystories.cli.options import add_config_flags, add_field, add_fields, build_from_args
from tinystories.config import Config, setting
from tinystories.infer.params import STEER_ALPHA, SamplingParams, preset


@dataclass(frozen=True)
class SampleConfig(Config):
    model: str = setting("", "model folder (e.g. runs/demo/checkpoint), or a Hugging Face GPT-Neo/Llama folder")
    prompts: list[str] = setting(help="story beginning (repeatable); empty = a story from scratch",
                                 factory=lambda: [""], flag="prompt")
    samples: int = setting(1, "stories per prompt", ge=1, le=10_000)
    sampling: SamplingParams = setting(help="how stories are sampled", factory=lambda: preset("story", seed=0))
    steer: list[str] = setting(help="add a direction while writing (repeatable): SAE_FOLDER:FEATURE (unit length), "
                                    "FILE.pt, or FILE.npy@HOOK", factory=list)
    alpha: float = setting(STEER_ALPHA, "how much of each --steer direction to add", ge=-1e4, le=1e4)
    device: str = setting("auto", "torch device: auto, cpu, cuda, cuda:1, mps")
    threads: int = setting(0, "CPU threads for torch; 0 = one per core not busy with other work", ge=0, le=4096)

    where = "sample"


def setup_sample(p: argparse.ArgumentParser) -> None:
    p.description = ("Continue story beginnings with a model folder (ours or a Hugging Face GPT-Neo/Llama "
                     "folder). With one prompt the story streams as it is written.\n\nExample:\n"
                     "  tinystories sample runs/demo/checkpoint --prompt 'Once upon a time' -n 2 --seed 1")
    add_field(p, SampleConfig, "model", positional=True, metavar="MODEL")
    add_field(p, SampleConfig, "prompts", repeat=True)
    add_field(p, SampleConfig, "samples", short="-n")
    add_field(p, SampleConfig, "sampling.stop", repeat=True)
    add_field(p, SampleConfig, "steer", repeat=True)
    add_fields(p, SampleConfig, ["sampling.max_new_tokens", "sampling.temperature", "sampling.top_k",
                                 "sampling.top_p", "sampling.min_p", "sampling.repetition_penalty",
                                 "sampling.seed", "alpha", "device", "threads"])
    add_config_flags(p)
    p.set_defaults(func=run_sample)


def run_sample(args: argparse.Namespace) -> int:
    import torch

    from tinystories.errors import SteeringError, TinyStoriesError
    from tinystories.infer.engine import Event
    from tinystories.infer.offline import complete
    from tinystories.interpret.steering import steering_direction
    from tinystories.model.loader import load_any
    from tinystories.utils import pick_device, set_threads

    cfg = build_from_args(SampleConfig, args)
    set_threads(cfg.threads)
    loaded = load_any(cfg.model, pick_device(cfg.device))
    tok = loaded.tokenizer
    adds: dict[str, torch.Tensor] = {}
    for spec in cfg.steer:  # directions at one hook point add up
        hook, vector = steering_direction(spec)
        adds[hook] = adds.get(hook, torch.zeros_like(vector)) + cfg.alpha * vector
    texts = [p for p in cfg.prompts for _ in range(cfg.samples)]
    try:
        if len(texts) == 1:  # stream token by token, the prompt first (once the engine took it)
            shown = [texts[0]]

            def show(_row: int, ev: Event) -> None:
                sys.stdout.write(shown.pop() + ev.text if shown else ev.text)
                sys.stdout.flush()

            complete(loaded.model, tok, texts, cfg.sampling, emit=show, adds=adds)
            print()
            return 0
        stories = complete(loaded.model, tok, texts, cfg.sampling, adds=adds)
    except SteeringError as exc:
        raise TinyStoriesError(f"--steer: {exc}") from exc
    for text, story in zip(texts, stories):
        print(text + story)
        print("-" * 40)
    return 0


SETUP = {"sample": setup_sample}
