"""Look inside tiny story models: attention heads and MLP neurons, as pictures; and interventions.

* `hooks`: record (`run_with_cache`) or patch (`patched`, `ablate_heads`, `set_neurons`) any
  activation through the model's own hook points;
* `heads`: per-head measures and a rule-based classification; `lexicon`: word classes for them;
* `neurons`: streamed top-k activations of neurons and of random directions;
* `plots`, `report`, `config`: PNGs and the self-contained HTML report of `tinystories interpret`;
* `attention_api`: the playground's attention view, a route added to the server.
"""
