"""Our models in llama2.c's format: the file's layout, and (where the pinned llama2.c peer and a C
compiler are at hand) run.c writing exactly our greedy story."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
import torch

from tinystories.cli import main
from tinystories.errors import TinyStoriesError
from tinystories.infer.offline import TokenIds, generate
from tinystories.infer.params import SamplingParams
from tinystories.model.checkpoint import save_model
from tinystories.model.gpt import GPT, GPTConfig
from tinystories.model.llama2c import export_llama2c, run_c_id
from tinystories.tokenizer import Tokenizer

RUN_C = Path(__file__).parents[2] / "shared" / "peers" / "llama2c" / "run.c"


def model(tokenizer: Tokenizer, **kw: object) -> GPT:
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, context_length=64, n_layer=2, n_head=4, d_model=64,
                      arch="modern", **kw)).eval()
    with torch.no_grad():  # sharper than the init, so greedy text is not one token repeated
        for p in m.parameters():
            p.mul_(3)
    return m


def test_layout(tokenizer: Tokenizer, tmp_path: Path) -> None:
    for tied in (True, False):
        m = model(tokenizer, tie_embeddings=tied)
        path = export_llama2c(m, tmp_path / "m.bin", tokenizer.eos_id)
        data = path.read_bytes()
        header = struct.unpack("iiiiiii", data[:28])
        assert header == (64, m.cfg.ffn_dim, 2, 4, 4, 512 if tied else -512, 64)
        n_rope = 64 * (16 // 2) * 2
        floats = m.num_params() + n_rope  # (an untied output layer is among the parameters)
        assert len(data) == 28 + 4 * floats


def test_refuses_what_run_c_cannot_run(tokenizer: Tokenizer, tmp_path: Path) -> None:
    for kw in ({"qk_norm": True}, {"mlp": "relu2"}, {"rope_theta": 5000.0}):
        with pytest.raises(TinyStoriesError, match="run.c can only run"):
            export_llama2c(model(tokenizer, **kw), tmp_path / "m.bin", tokenizer.eos_id)


@pytest.mark.skipif(not RUN_C.exists() or not shutil.which("gcc"),
                    reason="needs llama2.c's run.c in ../shared/peers/llama2c (the project's shared folder "
                           "beside this checkout) and gcc (apt-get install gcc)")
def test_run_c_writes_our_greedy_story(tokenizer: Tokenizer, tmp_path: Path) -> None:
    m = model(tokenizer)
    folder = save_model(tmp_path / "model", m, tokenizer)
    assert main(["export-llama2c", str(folder), str(tmp_path / "m.bin")]) == 0
    subprocess.run(["gcc", "-O2", "-o", str(tmp_path / "run"), str(RUN_C), "-lm"], check=True)
    out = subprocess.run([str(tmp_path / "run"), str(tmp_path / "m.bin"), "-z", str(tmp_path / "m.tok.bin"),
                          "-t", "0", "-n", "40", "-i", ""], capture_output=True, check=True).stdout
    eos = tokenizer.eos_id
    ids = generate(m, TokenIds(eos), [[eos]], SamplingParams(max_new_tokens=40, temperature=0))[0]
    pieces = read_tokenizer(tmp_path / "m.tok.bin")
    assert pieces[1] == b"\n" and pieces[eos] == tokenizer.decode([1]).encode()  # the swap
    expected = b""
    run_c = [run_c_id(t, eos) for t in ids]
    for prev, token in zip([1, *run_c], run_c):  # what run.c prints for our tokens (its safe_printf rules)
        piece = pieces[token]
        if prev == 1 and piece.startswith(b" "):
            piece = piece[1:]
        if len(piece) == 1 and not (32 <= piece[0] < 127 or piece in b" \t\n\r\x0b\x0c"):
            continue
        expected += piece
    assert out.rstrip(b"\n") == expected.rstrip(b"\n") and len(expected) > 20


def read_tokenizer(path: Path) -> list[bytes]:
    data = path.read_bytes()
    pieces, pos = [], 4
    while pos < len(data):
        _, n = struct.unpack("fi", data[pos:pos + 8])
        pieces.append(data[pos + 8:pos + 8 + n])
        pos += 8 + n
    return pieces
