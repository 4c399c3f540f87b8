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


@dataclass(frozen=True)
class SAEConfig(Config):
    """`tinystories interpret sae`: a TopK sparse autoencoder on one hook point, trained by SAELens."""

    model: str = setting("", "model folder (ours, or a Hugging Face GPT-Neo/Llama folder)")
    hook: str = setting("", "hook point whose activations it encodes, e.g. blocks.2.resid_post or "
                            "blocks.2.hook_resid_post (default: the middle layer's resid_post)")
    out: str = setting("", "output folder, loadable by SAELens's SAE.load_from_disk "
                           "(default: reports/sae-MODEL-HOOK)")
    corpus: str = setting("bundled:train", "training stories (file, folder, hf:NAME, bundled:train|valid)")
    eval_corpus: str = setting("bundled:valid", "held-out stories the quality figures are measured on")
    encoding_errors: EncodingErrors = setting("strict", "invalid UTF-8 in a corpus: strict, replace or skip")
    expansion: int = setting(16, "features per activation dimension (d_sae = expansion x d_in)", ge=1, le=1024)
    k: int = setting(32, "TopK: features active per token (the L0)", ge=1, le=100_000)
    tokens: int = setting(2_000_000, "training tokens (activations) seen", ge=1)
    batch_size: int = setting(4096, "activations per optimizer step", ge=1, le=1_000_000)
    lr: float = setting(4e-4, "Adam learning rate (constant, then decayed over the last 20%)", gt=0, le=1)
    context: int = setting(128, "tokens per window of the corpus run through the model (capped at its "
                                "context)", ge=2, le=1_000_000)
    buffer: int = setting(65536, "activations shuffled together before training on them", ge=1)
    eval_tokens: int = setting(32768, "held-out tokens for L0, variance explained, dead/dense features and "
                                      "the CE-loss score", ge=1)
    dense: float = setting(0.1, "a feature active on more than this share of tokens counts as dense", gt=0, le=1)
    checkpoints: int = setting(4, "checkpoints during training (a rerun resumes from the last)", ge=0, le=1000)
    seed: int = setting(0, "seed of the initialisation and the data order", ge=0)
    device: str = setting("auto", "torch device: auto, cpu, cuda, mps")
    threads: int = setting(0, "CPU threads for torch; 0 = one per core not busy with other work", ge=0, le=4096)

    where = "sae"


@dataclass(frozen=True)
class FeaturesConfig(Config):
    """`tinystories interpret features`: an HTML report on an SAE's features."""

    sae: str = setting("", "SAE folder (written by `tinystories interpret sae`)")
    model: str = setting("", "model folder (default: the one the SAE was trained on)")
    out: str = setting("", "output folder (default: SAE/features)")
    corpus: str = setting("bundled:valid", "stories searched for top activations")
    encoding_errors: EncodingErrors = setting("strict", "invalid UTF-8 in a corpus: strict, replace or skip")
    max_stories: int = setting(1000, "corpus stories searched (0 = all)", ge=0)
    top_features: int = setting(8, "most active features shown (by how often they fire)", ge=0, le=10_000)
    random_features: int = setting(8, "randomly drawn live features shown besides", ge=0, le=10_000)
    top_k: int = setting(8, "top activations shown per feature", ge=1, le=1000)
    logit_tokens: int = setting(8, "tokens shown that each feature's decoder direction promotes and "
                                   "suppresses", ge=1, le=100)
    batch_size: int = setting(16, "stories run together", ge=1)
    seed: int = setting(0, "seed of the random features", ge=0)
    device: str = setting("auto", "torch device: auto, cpu, cuda, mps")
    threads: int = setting(0, "CPU threads for torch; 0 = one per core not busy with other work", ge=0, le=4096)

    where = "features"
