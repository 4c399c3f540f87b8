"""The interpretability report's settings (`tinystories interpret`)."""

from __future__ import annotations

from dataclasses import dataclass

from tinystories.config import Config, setting
from tinystories.data.corpus import EncodingErrors

DEFAULT_TEXT = ("Once upon a time, there was a little girl named Lily. She loved to play with her ball in "
                "the park. One day, Lily saw a big dog. She was scared, but the dog was friendly.")


@dataclass(frozen=True)
class InterpretConfig(Config):
    model: str = setting("", "model folder (ours, or a Hugging Face GPT-Neo/Llama folder)")
    out: str = setting("", "output folder (default: reports/interpret-MODEL)")
    text: str = setting(DEFAULT_TEXT, "the story the attention heatmaps show")
    corpus: str = setting("bundled:valid", "stories searched for neuron activations and averaged over for "
                                           "head measures (file, folder, hf:NAME, bundled:train|valid)")
    encoding_errors: EncodingErrors = setting("strict", "invalid UTF-8 in a corpus: strict (stop, naming the file "
                                                        "and byte), replace (U+FFFD) or skip (drop the story)")
    layer: int = setting(0, "MLP layer whose neurons are searched", ge=0)
    top_k: int = setting(8, "top activations kept per neuron and random direction", ge=1, le=1000)
    n_units: int = setting(6, "neurons (and random directions) shown", ge=1, le=1000, flag="units")
    neuron_ids: list[int] = setting(help="neurons to show; empty = --units neurons drawn with --seed",
                                    factory=list, flag="neuron")
    n_random: int = setting(64, "random directions searched (the baseline's statistics)", ge=1,
                            flag="random-directions")
    heads: list[str] = setting(help="extra heads to draw, as LAYER.HEAD", factory=list, flag="head")
    head_stories: int = setting(64, "corpus stories (besides --text) the head measures average over", ge=0)
    max_stories: int = setting(2000, "corpus stories searched for neurons (0 = all)", ge=0)
    max_text_tokens: int = setting(48, "tokens of --text shown in the heatmaps", ge=3)
    batch_size: int = setting(16, "stories run together", ge=1)
    seed: int = setting(0, "seed of the shown neurons and random directions", ge=0)
    device: str = setting("auto", "torch device: auto, cpu, cuda, mps")
    threads: int = setting(0, "CPU threads for torch; 0 = one per core not busy with other work", ge=0, le=4096)

    where = "interpret"
