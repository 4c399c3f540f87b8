import json
from pathlib import Path

import pytest
import torch

from tinystories.errors import TinyStoriesError
from tinystories.model.checkpoint import WEIGHTS_NAME, load_model, save_model
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.model.losses import linear_cross_entropy
from tinystories.model.presets import PRESETS, count_params
from tinystories.tokenizer import Tokenizer, train_bpe

ARCHS = [{"arch": "neo"}, {"arch": "neo", "local_window": 5}, {"arch": "modern"}, {"arch": "modern", "tie_embeddings": False}]


def small(**kw: object) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, context_length=40, n_layer=2, n_head=2, d_model=16, **kw)).eval()


def test_paper_zoo_sizes() -> None:
    counts = {name: count_params(cfg)[0] for name, cfg in PRESETS.items()}
    # The paper's labels, within the slack of its 10K-token vocabulary and position table.
    for name, label in [("1M", 1.0), ("3M", 3.0), ("8M", 8.0), ("28M", 28.0), ("33M", 33.0), ("21M-1L", 21.0)]:
        assert label * 0.85e6 < counts[name] < label * 1.15e6, (name, counts[name])
    assert counts["15M-llama2c"] == 15_191_712  # llama2.c's stories15M
    assert PRESETS["21M-1L"].n_layer == 1


@pytest.mark.parametrize("kw", ARCHS)
def test_kv_cache_step_equals_full_forward(kw: dict) -> None:
    model = small(**kw)
    idx = torch.randint(0, 97, (3, 30))
    full, _ = model(idx)
    cache = model.new_cache(3)
    chunks = [model(idx[:, :11], cache=cache)[0], model(idx[:, 11:20], cache=cache)[0]]
    chunks += [model(idx[:, t:t + 1], cache=cache)[0] for t in range(20, 30)]
    torch.testing.assert_close(torch.cat(chunks, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", ARCHS)
def test_left_padding_changes_nothing(kw: dict) -> None:
    model = small(**kw)
    row = torch.randint(1, 97, (1, 12))
    alone, _ = model(row)
    padded = torch.cat([torch.zeros(1, 7, dtype=torch.long), row], 1)
    out, _ = model(padded, pad=torch.tensor([7]))
    torch.testing.assert_close(out[:, 7:], alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kw", ARCHS)
def test_fused_loss_matches_reference(kw: dict) -> None:
    model = small(**kw).train()
    idx, targets = torch.randint(0, 97, (4, 33)), torch.randint(0, 97, (4, 33))
    targets[0, :9] = -1
    _, ref = model(idx, targets)
    ref.backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fused = model.loss(idx, targets)
    fused.backward()
    torch.testing.assert_close(fused, ref)
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("kw", ARCHS)
def test_fused_loss_under_bfloat16_autocast_stays_near_float32(kw: dict) -> None:
    """`dtype=bfloat16` training on a CPU: the fused loss's matmuls in bfloat16, its sums in
    float32. Loss within 0.1% of float32's and every gradient within 2% (relative norm), as
    close as autocast's plain path gets."""
    torch.manual_seed(0)
    model = small(**kw).train()
    idx, targets = torch.randint(0, 97, (8, 33)), torch.randint(0, 97, (8, 33))
    targets[0, :9] = -1

    def run(fused: bool, dtype: torch.dtype) -> tuple[torch.Tensor, list[torch.Tensor]]:
        model.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            loss = model.loss(idx, targets) if fused else model(idx, targets)[1]
        assert loss is not None and loss.dtype == torch.float32
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters()]

    ref, ref_grads = run(False, torch.float32)
    for fused in (True, False):
        loss, grads = run(fused, torch.bfloat16)
        torch.testing.assert_close(loss, ref, rtol=1e-3, atol=0)
        for g, r in zip(grads, ref_grads):
            assert g.dtype == torch.float32 and float((g - r).norm() / r.norm()) < 0.02


def test_fused_loss_chunking_is_exact() -> None:
    h, w = torch.randn(50, 8, requires_grad=True), torch.randn(30, 8, requires_grad=True)
    t = torch.randint(0, 30, (50,))
    a = linear_cross_entropy(h, w, t, chunk=7)
    b = torch.nn.functional.cross_entropy(h @ w.T, t)
    torch.testing.assert_close(a, b)


def test_neo_attention_is_unscaled_like_gpt_neo() -> None:
    model = small(arch="neo")
    assert model.blocks[0].attn.scale == 1.0 and small(arch="modern").blocks[0].attn.scale == 8 ** -0.5


@pytest.mark.parametrize("arch", ["neo", "modern"])
def test_dropout_leaves_the_attention_pattern_alone(arch: str) -> None:
    """`dropout` drops on the embeddings and the residual branches only: in training, the fused
    attention and the explicit pattern (computed when a hook listens) draw the same random numbers
    and agree. `attention_dropout` drops on the pattern itself."""
    idx = torch.randint(0, 97, (2, 24))

    def seeded(model: GPT) -> torch.Tensor:
        torch.manual_seed(1)
        return model(idx)[0]

    model = small(arch=arch, dropout=0.3).train()
    fused = seeded(model)
    with model.hooked({"blocks.0.attn.hook_pattern": lambda pattern: None}):
        explicit = seeded(model)
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(fused, seeded(model.eval()))  # it does drop in training

    for attention_dropout, drops in [(0.0, False), (0.5, True)]:
        model = small(arch=arch, attention_dropout=attention_dropout).train()
        assert torch.allclose(seeded(model), seeded(model.eval()), atol=1e-6) != drops


def test_context_overflow_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="longer than the model's context of 40"):
        small()(torch.zeros(1, 41, dtype=torch.long))


def test_checkpoint_round_trip_and_bad_input(tmp_path: Path, tokenizer: Tokenizer, stories: list[str]) -> None:
    model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=32, n_layer=1, n_head=2, d_model=16))
    folder = save_model(tmp_path / "m", model.eval(), tokenizer)
    loaded = load_model(folder)
    idx = torch.randint(0, 512, (2, 20))
    torch.testing.assert_close(loaded.model(idx)[0], model(idx)[0], atol=0, rtol=0)
    assert loaded.model.lm_head.weight is loaded.model.tok_emb.weight

    other = train_bpe(stories[:100], vocab_size=300)
    other.save(tmp_path / "other.json")
    with pytest.raises(TinyStoriesError, match="does not match the model"):
        load_model(folder, tokenizer_path=tmp_path / "other.json")

    good = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(good[: len(good) // 2])
    with pytest.raises(TinyStoriesError, match="corrupt or not a safetensors file"):
        load_model(folder)
    (folder / WEIGHTS_NAME).write_bytes(good)

    cfg = json.loads((folder / "config.json").read_text())
    cfg["model"]["n_layers"] = 3
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TinyStoriesError, match=r"unknown key\(s\) \['n_layers'\]"):
        load_model(folder)
    cfg["model"].pop("n_layers")
    cfg["model"]["d_model"] = 32
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(TinyStoriesError, match="does not fit the config"):
        load_model(folder)
    with pytest.raises(TinyStoriesError, match="model folder not found"):
        load_model(tmp_path / "missing")


@pytest.mark.slow
def test_loading_a_model_does_not_import_the_compiler(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """Building on the meta device without init (`shapes_only`) keeps torch._dynamo out of a
    fresh process (1.2-1.5 s of start-up), and leaves torch.nn.init as it was."""
    import subprocess
    import sys

    torch.manual_seed(0)
    folder = save_model(tmp_path / "m", GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=16, n_layer=1,
                                                      n_head=2, d_model=16)), tokenizer)
    code = ("import sys, torch; from tinystories.model.checkpoint import load_model; fill = torch.nn.init.normal_; "
            f"m = load_model({str(folder)!r}).model; assert 'torch._dynamo' not in sys.modules, 'dynamo imported'; "
            "assert torch.nn.init.normal_ is fill; print(float(m.tok_emb.weight.detach().abs().sum()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert float(out) == pytest.approx(float(load_model(folder).model.tok_emb.weight.detach().abs().sum()))
    assert float(out) > 0
