"""Planted heads are classified as what they were built to do; the lexicon finds names and pronouns."""

from __future__ import annotations

import torch

from tinystories.interpret.heads import head_stats, related_keys
from tinystories.interpret.lexicon import Lexicon, find_names, token_words
from tinystories.model.gpt import GPT, GPTConfig

T = 32  # context = positional one-hot width = head_dim


def planted_model() -> GPT:
    """One neo layer, three heads: 0 attends to t-1, 1 to the first token, 2 uniformly.

    Positions are one-hot in dims 0..31 (tokens live in dims 32..95), so after LayerNorm
    h_t[t] is large and the other positional dims are slightly negative. Head 0's queries
    are the positional part shifted by one (q_t[i] = h_t[i+1]), its keys the positional part,
    so q_t . k_j peaks at j = t-1. Head 1's query is the sum of the positional dims (the same
    constant for every t) and its key reads dim 0, which is only large at position 0.
    """
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50, context_length=T, n_layer=1, n_head=3, d_model=96, arch="neo")
    model = GPT(cfg).eval()
    hd = cfg.head_dim
    with torch.no_grad():
        model.tok_emb.weight.zero_()
        model.tok_emb.weight[:, T:] = 0.1 * torch.randn(50, 96 - T)
        model.pos_emb.weight.copy_(torch.eye(T, 96))
        w = torch.zeros(3 * cfg.d_model, cfg.d_model)
        q, k = w[:cfg.d_model], w[cfg.d_model:2 * cfg.d_model]
        for i in range(T - 1):  # head 0: previous token
            q[i, i + 1] = 1.0
        k[:T, :T] = torch.eye(T)
        q[hd, :T] = 1.0  # head 1: sink on position 0
        k[hd, 0] = 3.0
        # head 2 (rows 2*hd..3*hd) stays zero: uniform attention
        w[2 * cfg.d_model:] = torch.randn(cfg.d_model, cfg.d_model) * 0.02
        model.blocks[0].attn.qkv.weight.copy_(w)
    return model


def test_planted_heads_are_classified() -> None:
    model = planted_model()
    gen = torch.Generator().manual_seed(3)
    seqs = [torch.randint(1, 50, (n,), generator=gen).tolist() for n in (T, 20, 25)]
    strings = [[f" w{i}" for i in s] for s in seqs]
    stats = head_stats(model, seqs, strings, Lexicon())
    assert stats.labels == [["previous-token", "sink", "diffuse"]]
    assert stats.prev_token[0, 0] > 0.99 and stats.first_token[0, 1] > 0.99
    assert abs(stats.mean_distance[0, 0] - 1.0) < 0.01
    assert stats.entropy[0, 2] > 0.99  # uniform head: normalised entropy 1
    assert stats.entropy[0, 0] < 0.05
    assert stats.mean_distance[0, 2] > 5
    rows = stats.rows()
    assert len(rows) == 3 and rows[1]["class"] == "sink"


def test_planted_same_token_head_is_semantic() -> None:
    """One head whose query matches keys of the same token (and avoids itself): a copy-finding head.

    Tokens are one-hot in dims 0..15, positions in dims 16..31; q = [tok, -2 pos], k = [tok, pos],
    so q_t . k_j is high for earlier copies of token t, low for t itself.
    """
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=16, context_length=16, n_layer=1, n_head=1, d_model=32, arch="neo")
    model = GPT(cfg).eval()
    with torch.no_grad():
        model.tok_emb.weight.copy_(torch.eye(16, 32))
        model.pos_emb.weight.copy_(torch.cat([torch.zeros(16, 16), torch.eye(16)], dim=1))
        w = torch.zeros(96, 32)
        w[:16, :16] = torch.eye(16)
        w[16:32, 16:] = -2 * torch.eye(16)
        w[32:64] = torch.eye(32)
        w[64:] = torch.randn(32, 32) * 0.02
        model.blocks[0].attn.qkv.weight.copy_(w)
    gen = torch.Generator().manual_seed(1)
    seqs = []
    for _ in range(6):
        seq = [15]  # position 0: a token used nowhere else
        while len(seq) < 16:
            t = int(torch.randint(0, 6, (1,), generator=gen))
            if t != seq[-1]:  # no immediate repeats: those count as previous-token, not semantic
                seq.append(t)
        seqs.append(seq)
    stats = head_stats(model, seqs, [[f" w{i}" for i in s] for s in seqs], Lexicon())
    assert stats.labels == [["semantic"]]
    assert stats.semantic[0, 0] > 0.9 and stats.semantic_lift[0, 0] > 3


def test_lexicon_words_names_and_relations() -> None:
    text = 'Once upon a time, Lily met a dog named Spot. She said, "Hi Spot!" Spot wagged.'
    assert {"Lily", "Spot"} <= find_names([text])
    assert "Once" not in find_names([text]) and "She" not in find_names([text])
    strings = ["<|endoftext|>", "Once", " L", "ily", " saw", " Sp", "ot", ".", " She", " saw", " Sp", "ot", "'s", " cat"]
    words = token_words(strings)
    assert words[2] == words[3] == "Lily" and words[7] == "" and words[11] == "Spot's"
    lex = Lexicon.build([text])
    assert lex.word_class("Lily") == "name" and lex.word_class("Spot's") == "name"
    assert lex.word_class("She") == "pronoun" and lex.word_class("cat") == "noun"
    ids = list(range(len(strings)))
    ids[10], ids[11], ids[9] = ids[5], ids[6], ids[4]  # the repeated tokens share ids
    rel = related_keys(ids, strings, lex)
    assert rel[8, 2] and rel[8, 3] and rel[8, 5]  # "She" -> Lily, Spot
    assert rel[10, 5] and rel[9, 4] and not rel[9, 8]  # same token; and distance >= 2 only
    assert not rel[8, 0] and not rel[13].any()
