"""Look inside tiny story models: attention heads and MLP neurons, as pictures; and interventions.

* `hooks`: record (`run_with_cache`) or patch (`patched`, `ablate_heads`, `set_neurons`) any
  activation through the model's own hook points;
* `heads`: per-head measures and a rule-based classification; `lexicon`: word classes for them;
* `neurons`: streamed top-k activations of neurons and of random directions;
* `plots`, `report`, `config`: PNGs and the self-contained HTML report of `tinystories interpret`;
* `attention_api`: the playground's attention view, a route added to the server;
* `transformer_lens`: `to_transformer_lens(loaded)`, the model as a TransformerLens HookedTransformer;
* `sae`, `features`: sparse autoencoders trained by SAELens on a hook point, and their feature report;
* `steering`: `steering_direction(spec)` (an SAE feature or a saved vector) and `steered(model, ...)`.

The last four need the `interp` extra (TransformerLens, SAELens), imported only when used:
``tinystories.interpret.to_transformer_lens`` and ``steering_direction`` resolve lazily, so this
package (and `tinystories --help`, which reads `interpret.config`) never imports torch for them.
"""

from __future__ import annotations

from typing import Any

LAZY = {"to_transformer_lens": "tinystories.interpret.transformer_lens",
        "steering_direction": "tinystories.interpret.steering"}


def __getattr__(name: str) -> Any:
    if name in LAZY:
        import importlib

        return getattr(importlib.import_module(LAZY[name]), name)
    raise AttributeError(f"module 'tinystories.interpret' has no attribute {name!r}")
