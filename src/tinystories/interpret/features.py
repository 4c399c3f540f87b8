"""An HTML report on a sparse autoencoder's features (`tinystories interpret features`).

For the most active features (by how often they fire on the corpus) and a seeded sample of
other live features: their top-activating story snippets with per-token highlighting, a
histogram of their nonzero activations, and the tokens their decoder direction promotes and
suppresses through the unembedding.

Promoted/suppressed tokens are direct logit attribution of the decoder direction: the unit
decoder row (mapped through the MLP's output projection first for ``mlp.hook_post`` SAEs) times
the unembedding ``lm_head.weight``, leaving the final norm out (its scale depends on the whole
residual stream, not on the feature; this is the standard "norm-free" reading). It says which
next tokens the feature pushes up or down when added to the stream, not what it was trained on.

The SAE is loaded with SAELens (`SAE.load_from_disk`), the model with `load_any`; activations
come from our model's hook point, encoded by the SAE. EOS positions are left out, as in training.
"""

from __future__ import annotations

import html
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from tinystories.config import read_structured
from tinystories.data.corpus import read_stories
from tinystories.errors import TinyStoriesError
from tinystories.html import page
from tinystories.interpret.config import FeaturesConfig
from tinystories.interpret.hooks import run_with_cache
from tinystories.interpret.neurons import ActsFn, context_examples, corpus_batches, stream_top_k
from tinystories.interpret.plots import display_token, plot_histogram
from tinystories.interpret.report import img_html, snippets_html
from tinystories.interpret.sae import hook_width, import_sae_lens
from tinystories.interpret.transformer_lens import our_hook_name
from tinystories.model.gpt import GPT
from tinystories.model.loader import load_any
from tinystories.utils import atomic_write, write_json


def load_sae(folder: str | Path, device: str | torch.device = "cpu") -> tuple[Any, str]:
    """An SAE folder in SAELens's format, and the hook point of ours it reads (from its metadata:
    ``tinystories_hook``, else SAELens's ``hook_name`` mapped back from TransformerLens's names)."""
    sae_lens = import_sae_lens()
    folder = Path(folder)
    if not (folder / "cfg.json").is_file():
        raise TinyStoriesError(f"{folder} is not an SAE folder (no cfg.json); train one with "
                               "`tinystories interpret sae MODEL --out FOLDER`")
    try:
        sae = sae_lens.SAE.load_from_disk(str(folder), device=str(device))
    except (OSError, ValueError, KeyError) as exc:
        raise TinyStoriesError(f"{folder}: SAELens cannot load this SAE ({exc})") from exc
    meta = sae.cfg.metadata
    hook = meta.get("tinystories_hook") or our_hook_name(str(meta.get("hook_name") or ""))
    return sae.eval(), hook


def feature_acts(model: GPT, sae: Any, hook: str, eos_id: int) -> ActsFn:
    """Token ids [B, T] -> SAE feature activations [B, T, d_sae] (0 at EOS positions)."""
    @torch.no_grad()
    def fn(idx: torch.Tensor) -> torch.Tensor:
        _, cache = run_with_cache(model, idx, names=[hook])
        feats = sae.encode(cache.store[hook].float().to(sae.device)).to(idx.device)
        return feats.masked_fill((idx == eos_id)[..., None], 0.0)
    return fn


@torch.no_grad()
def logit_effects(model: GPT, hook: str, directions: torch.Tensor) -> torch.Tensor:
    """[n, vocab]: each unit direction [n, d_in] (residual stream, or MLP neurons for mlp.hook_post)
    through the unembedding, without the final norm."""
    d = directions / directions.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    if hook.endswith("mlp.hook_post"):
        layer = int(hook.split(".")[1])
        d = d @ model.layers()[layer].mlp.proj.weight.T.float()
    return d @ model.lm_head.weight.T.float()


def build_feature_report(cfg: FeaturesConfig, out: Path, device: torch.device) -> Path:
    """Write report.html (images embedded), the histogram PNGs, features.json and features_config.json."""
    sae, hook = load_sae(cfg.sae, device)
    trained = Path(cfg.sae) / "sae_config.json"
    model_path = cfg.model or (str(read_structured(trained, "SAE settings").get("model", "")) if trained.exists() else "")
    if not model_path:
        raise TinyStoriesError(f"{cfg.sae} does not say which model it was trained on; pass --model")
    loaded = load_any(model_path, device)
    model, tok = loaded.model.eval(), loaded.tokenizer
    if hook not in model.hook_points() or sae.cfg.d_in != hook_width(model, hook):
        raise TinyStoriesError(f"the SAE in {cfg.sae} reads {hook!r} ({sae.cfg.d_in} wide), which model "
                               f"{model_path} does not have")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "features_config.json", {**asdict(cfg), "model": model_path, "hook": hook})
    stories, _ = read_stories(cfg.corpus, errors=cfg.encoding_errors)
    stories = stories[:cfg.max_stories] if cfg.max_stories else stories
    acts = feature_acts(model, sae, hook, tok.eos_id)
    ctx = model.cfg.context_length
    n_features = sae.cfg.d_sae
    fired = torch.zeros(n_features, dtype=torch.float64)
    n_tokens = 0

    def counting(idx: torch.Tensor) -> torch.Tensor:
        nonlocal n_tokens
        a = acts(idx)
        valid = idx != tok.eos_id  # padding is EOS too
        fired.add_((a > 0).sum((0, 1)).double().cpu())
        n_tokens += int(valid.sum())
        return a

    with tqdm(total=len(stories), desc="features", unit="story") as bar:
        top = stream_top_k(counting, corpus_batches(stories, tok, ctx, cfg.batch_size), n_features, device,
                           cfg.top_k, bar)
    freq = fired / max(n_tokens, 1)
    by_freq = torch.argsort(freq, descending=True, stable=True)
    most = [int(f) for f in by_freq[:cfg.top_features] if freq[f] > 0]
    rest = [int(f) for f in by_freq[cfg.top_features:] if freq[f] > 0]
    gen = torch.Generator().manual_seed(cfg.seed)
    sampled = sorted(rest[int(i)] for i in torch.randperm(len(rest), generator=gen)[:cfg.random_features])
    shown = most + sampled

    values: dict[int, list[np.ndarray]] = {f: [] for f in shown}  # second pass: the shown features' histograms
    ids = torch.tensor(shown, dtype=torch.long)
    for idx, _, _ in tqdm(corpus_batches(stories, tok, ctx, cfg.batch_size), desc="histograms", unit="batch",
                          total=-(-len(stories) // cfg.batch_size)):
        a = acts(idx.to(device))[..., ids.to(device)].reshape(-1, len(shown)).cpu().numpy()
        for j, f in enumerate(shown):
            values[f].append(a[a[:, j] > 0, j])
    examples = context_examples(acts, tok, stories, top, shown, ctx, device)
    effects = logit_effects(model, hook, sae.W_dec.detach().float()[ids.to(sae.W_dec.device)].to(device)).cpu()
    n_show = cfg.logit_tokens

    records, sections = [], []
    for j, f in enumerate(shown):
        vals = np.concatenate(values[f]) if values[f] else np.zeros(0)
        up = torch.topk(effects[j], n_show)
        down = torch.topk(-effects[j], n_show)
        promoted = [(display_token(t), round(float(v), 3)) for t, v in
                    zip(tok.token_strings(up.indices.tolist()), up.values, strict=True)]
        suppressed = [(display_token(t), round(float(-v), 3)) for t, v in
                      zip(tok.token_strings(down.indices.tolist()), down.values, strict=True)]
        kind = "most active" if f in most else "random"
        hist = plot_histogram(vals, f"feature {f}: {len(vals)} active tokens", out / f"feature_{f}_hist.png")
        records.append({"feature": f, "kind": kind, "frequency": round(float(freq[f]), 6),
                        "max_activation": round(float(vals.max()), 4) if len(vals) else 0.0,
                        "promoted": promoted, "suppressed": suppressed,
                        "top_examples": [asdict(e) for e in examples[f]]})
        sections.append(f"""<h3>Feature {f} <small>({kind}; active on {float(freq[f]):.2%} of tokens, max
{records[-1]["max_activation"]:.3g})</small></h3>
{snippets_html(examples[f])}
{img_html(hist, f"feature {f} histogram")}
<p><b>Promotes:</b> {_tokens_html(promoted)}<br><b>Suppresses:</b> {_tokens_html(suppressed)}</p>""")
    live = int((freq > 0).sum())
    write_json(out / "features.json", {"sae": cfg.sae, "hook": hook, "model": model_path, "stories": len(stories),
                                       "tokens": n_tokens, "live_features": live, "features": records})
    body = f"""<h1>SAE features: {html.escape(loaded.name)} at {html.escape(hook)}</h1>
<p class="lead">SAE {html.escape(cfg.sae)}: {n_features} features over {sae.cfg.d_in} dimensions. Corpus
{html.escape(cfg.corpus)} ({len(stories)} stories, {n_tokens} tokens; end-of-text positions left out).
Settings: features_config.json; numbers: features.json.</p>
<p class="finding">{live} of {n_features} features fire on this corpus ({n_features - live} never do). Shown: the
{len(most)} most often active features, then {len(sampled)} drawn at random (seed {cfg.seed}) from the other live
ones.</p>
<p>Each feature: its top {cfg.top_k} activations in context (red = activation, the top token bold and underlined;
hover a token for its value), a histogram of its activations where it fires, and the tokens its decoder direction
promotes and suppresses through the unembedding (unit decoder row times the output embedding, final norm left
out).</p>
{"".join(sections)}
"""
    report = out / "report.html"
    with atomic_write(report) as out_file:
        out_file.write(page(f"{loaded.name}: SAE features", body))
    return report


def _tokens_html(pairs: list[tuple[str, float]]) -> str:
    return " ".join(f"<code>{html.escape(t)}</code> <small>{v:+.2f}</small>" for t, v in pairs)
