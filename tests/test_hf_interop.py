"""Hugging Face interop: our models load in transformers and theirs load here, with equal logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinystories.cli import main
from tinystories.errors import TinyStoriesError
from tinystories.infer.offline import generate
from tinystories.infer.params import PRESETS, SamplingParams
from tinystories.model.checkpoint import load_model, save_model
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.model.hf import export_hf, load_hf_model
from tinystories.model.loader import load_any
from tinystories.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers", reason="needs transformers: pip install -e '.[dev]'")
SEQ = 40  # longer than the local window below, so local attention really bites


def _ours(tmp: Path, tokenizer: Tokenizer, **kw: object) -> Path:
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layer=3, n_head=4, d_model=32, **kw)
    return save_model(tmp / "ours", GPT(cfg).eval(), tokenizer, {"training": {"lr": 0.001, "steps": 10}})


def _tokens(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("kw", [{"arch": "neo", "local_window": 8}, {"arch": "neo"},
                                {"arch": "modern", "tie_embeddings": False, "norm_eps": 1e-6, "rope_theta": 500.0}])
def test_export_matches_transformers(tmp_path: Path, tokenizer: Tokenizer, kw: dict) -> None:
    loaded = load_model(_ours(tmp_path, tokenizer, **kw))
    out = export_hf(loaded, tmp_path / "hf", PRESETS["story"])
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == ("GPTNeoForCausalLM" if kw["arch"] == "neo" else "LlamaForCausalLM")
    idx = _tokens(tokenizer.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(hf(idx).logits, loaded.model(idx)[0], atol=1e-4, rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(out)
    text = "Once upon a time, Lily saw a big 🐶 dog."
    assert tok(text).input_ids == tokenizer.encode(text)
    assert tok.eos_token == tok.bos_token == tok.unk_token == "<|endoftext|>"
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlicense: mit")
    assert "pipeline_tag: text-generation" in card and "- roneneldan/TinyStories" in card
    assert f"{loaded.model.num_params():,}" in card and '"lr": 0.001' in card
    # `generate` starts from our story settings, not HF's (top-k 50, 20 new tokens).
    gen, story = transformers.GenerationConfig.from_pretrained(out), PRESETS["story"]
    assert gen.do_sample and (gen.temperature, gen.top_p, gen.top_k, gen.max_length) == (
        story.temperature, story.top_p, story.top_k, loaded.model.cfg.context_length)
    assert gen.eos_token_id == gen.bos_token_id == tokenizer.eos_id


def _save_hf(model: object, tokenizer: Tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer.hf, eos_token="<|endoftext|>",
                                                bos_token="<|endoftext|>", unk_token="<|endoftext|>")
    fast.save_pretrained(folder)
    return folder


def _hf_neo(vocab: int) -> object:
    cfg = transformers.GPTNeoConfig(vocab_size=vocab, max_position_embeddings=64, hidden_size=32, num_layers=2,
                                    num_heads=4, attention_types=[[["global", "local"], 1]], window_size=6,
                                    intermediate_size=96, bos_token_id=0, eos_token_id=0)
    return transformers.GPTNeoForCausalLM(cfg)


def _hf_llama(vocab: int) -> object:
    cfg = transformers.LlamaConfig(vocab_size=vocab, max_position_embeddings=64, hidden_size=32,
                                   intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=4, rms_norm_eps=1e-5, tie_word_embeddings=True,
                                   bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


@pytest.mark.parametrize("build", [_hf_neo, _hf_llama])
def test_import_transformers_model(tmp_path: Path, tokenizer: Tokenizer, build: object) -> None:
    torch.manual_seed(0)
    hf = build(tokenizer.vocab_size).eval()
    folder = _save_hf(hf, tokenizer, tmp_path / "hf")
    loaded = load_any(folder)  # dispatches to load_hf_model: no "model" section
    idx = _tokens(tokenizer.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)
    prompt = [tokenizer.eos_id, *tokenizer.encode("Once upon a time")]
    assert tokenizer.eos_id == 0
    ours = generate(loaded.model, loaded.tokenizer, [prompt], SamplingParams(max_new_tokens=15, temperature=0))[0]
    theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=15,
                         pad_token_id=0)[0, len(prompt):].tolist()
    assert ours == (theirs[:theirs.index(0)] if 0 in theirs else theirs)
    assert len(ours) > 3
    # ...and back out again: the round trip is exact.
    back = transformers.AutoModelForCausalLM.from_pretrained(export_hf(loaded, tmp_path / "again", PRESETS["story"])).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(idx).logits, hf(idx).logits, atol=1e-4, rtol=0)


def test_cli_round_trip(tmp_path: Path, tokenizer: Tokenizer, capsys: pytest.CaptureFixture) -> None:
    src = _ours(tmp_path, tokenizer, arch="modern")
    assert main(["export-hf", str(src), str(tmp_path / "hf")]) == 0
    assert main(["import-hf", str(tmp_path / "hf"), str(tmp_path / "back")]) == 0
    a, b = load_model(src), load_model(tmp_path / "back")  # a regular tinystories folder again
    idx = _tokens(tokenizer.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(a.model(idx)[0], b.model(idx)[0], atol=1e-5, rtol=0)
    assert b.config["hf_model_type"] == "llama"


def test_unsupported_and_missing(tmp_path: Path, tokenizer: Tokenizer) -> None:
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=tokenizer.vocab_size, n_embd=32,
                                                                n_layer=1, n_head=4, n_positions=32))
    folder = _save_hf(gpt2, tokenizer, tmp_path / "gpt2")
    with pytest.raises(TinyStoriesError, match="'gpt2' is not supported.*GPT-Neo.*Llama"):
        load_hf_model(folder)
    gqa = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=4, num_key_value_heads=2))
    with pytest.raises(TinyStoriesError, match="grouped-query"):
        load_hf_model(_save_hf(gqa, tokenizer, tmp_path / "gqa"))
    with pytest.raises(TinyStoriesError, match="local Hugging Face cache"):
        load_hf_model("roneneldan/TinyStories-not-a-real-model-xyz")


def test_import_official_shaped_checkpoint(tmp_path: Path, tokenizer: Tokenizer) -> None:
    """Shaped like roneneldan/TinyStories-*: GPT-Neo, vocab 50257, context 2048, window 256, 16 heads,
    tokenizer as vocab.json + merges.txt (GPT2Tokenizer), sequence longer than the window."""
    torch.manual_seed(0)
    cfg = transformers.GPTNeoConfig(vocab_size=50257, max_position_embeddings=2048, hidden_size=64, num_layers=2,
                                    num_heads=16, attention_types=[[["global", "local"], 1]], window_size=256,
                                    bos_token_id=50256, eos_token_id=50256)
    hf = transformers.GPTNeoForCausalLM(cfg).eval()
    folder = tmp_path / "TinyStories-like"
    hf.save_pretrained(folder)
    tokenizer.hf.model.save(str(folder))  # vocab.json + merges.txt
    (folder / "tokenizer_config.json").write_text(
        '{"tokenizer_class": "GPT2Tokenizer", "eos_token": "<|endoftext|>", "bos_token": "<|endoftext|>"}')
    loaded = load_hf_model(folder)
    assert (loaded.model.cfg.context_length, loaded.model.cfg.local_window, loaded.model.cfg.n_head) == (2048, 256, 16)
    text = "Once upon a time, there was a big dog. " * 10
    assert loaded.tokenizer.encode(text) == tokenizer.encode(text)
    idx = torch.randint(0, 50257, (1, 300), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(idx)[0], hf(idx).logits, atol=1e-4, rtol=0)
