"""Look inside tiny story models: attention heads and MLP neurons, as pictures.

* `hooks`: `run_with_cache(model, idx)` -> logits and every activation (attention patterns too);
* `heads`: per-head measures and a rule-based classification; `lexicon`: word classes for them;
* `neurons`: streamed top-k activations of neurons and of random directions;
* `plots`, `report`: PNGs and the self-contained HTML report of `tinystories interpret`.
"""
