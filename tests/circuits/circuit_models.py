"""Tiny models for the circuit tests, built in seconds and deterministic (seeded locally).

* :func:`induction_model`: a 2-layer LLaMA (grouped-query attention, rotary positions) trained on
  random sequences with a repeated segment until it does induction (``.. x1 .. x6 .. x1 x2 x3`` ->
  ``x4``); the heads that do it are found by exact ablation in the tests, not assumed.
* :func:`llama`: a tiny random LLaMA with grouped-query attention (4 query heads, 2 key-value
  heads); :func:`gpt2`: a tiny random GPT-2 with non-zero biases; :func:`random_task`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from support import VOCAB, make_tokenizer
from transformers import LlamaConfig, LlamaForCausalLM

import mechdiff
from mechdiff._runtime import torch_threads

WIDTH = 24
"""Training sequence length (``<bos>`` included)."""


def induction_batch(n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` training sequences of random tokens t0..t59 in which a random segment of 4-8 tokens
    repeats after a random gap, and the mask of the positions whose next token continues the
    repeat (the loss is taken there: only induction predicts them)."""
    ids = torch.randint(0, 60, (n, WIDTH), generator=gen)
    ids[:, 0] = len(VOCAB) - 1
    mask = torch.zeros(n, WIDTH - 1, dtype=torch.bool)
    for i in range(n):
        length = int(torch.randint(4, 9, (), generator=gen))
        a = 1 + int(torch.randint(0, 5, (), generator=gen))
        b = a + length + int(torch.randint(0, 4, (), generator=gen))
        ids[i, b:b + length] = ids[i, a:a + length]
        mask[i, b:b + length - 1] = True
    return ids, mask


def _llama_config(*, hidden: int, mlp: int, n_layers: int) -> LlamaConfig:
    """4 query heads sharing 2 key-value heads, untied embeddings, the tests' vocabulary."""
    return LlamaConfig(
        vocab_size=len(VOCAB), hidden_size=hidden, intermediate_size=mlp,
        num_hidden_layers=n_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=32, bos_token_id=len(VOCAB) - 1, eos_token_id=len(VOCAB) - 1,
        pad_token_id=len(VOCAB) - 2, tie_word_embeddings=False,
    )


def induction_model(steps: int = 800, seed: int = 0, *, lr: float = 3e-3) -> LlamaForCausalLM:
    """A 2-layer LLaMA (4 query heads sharing 2 key-value heads, d_model 32, rotary positions)
    trained on :func:`induction_batch` until it does induction (about 90% of repeats right)."""
    cfg = _llama_config(hidden=32, mlp=64, n_layers=2)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    with torch_threads(1):  # tiny matrices: one thread is fastest, and fair to other processes
        for _ in range(steps):
            ids, mask = induction_batch(32, gen)
            logits = model(ids).logits[:, :-1][mask]
            loss = torch.nn.functional.cross_entropy(logits, ids[:, 1:][mask])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def induction_task(n: int = 16, seed: int = 0, *, length: int = 6, query: int = 3) -> mechdiff.Task:
    """``r x1 .. xL s x1 .. x{query}`` -> ``x{query+1}`` (random fillers ``r``, ``s``); wrong
    answer ``x{query+2}``; corrupted: the repeated part replaced by fresh tokens, so no induction
    is possible (same token length)."""
    gen = torch.Generator().manual_seed(seed)
    prompts, answers, wrong, corrupted = [], [], [], []
    for _ in range(n):
        toks = torch.randperm(60, generator=gen).tolist()
        x, r, s, other = toks[:length], toks[length:length + 2], toks[length + 2:length + 4], \
            toks[length + 4:length + 4 + query]
        words = lambda ids: " ".join(f"t{i}" for i in ids)  # noqa: E731
        prompts.append(words(r + x + s + x[:query]))
        corrupted.append(words(r + x + s + other))
        answers.append(f"t{x[query]}")
        wrong.append(f"t{x[query + 1]}")
    return mechdiff.Task(prompts, answers=answers, wrong_answers=wrong, corrupted=corrupted,
                         name="induction")


def llama(seed: int, *, n_layers: int = 3, std: float = 0.15) -> LlamaForCausalLM:
    cfg = _llama_config(hidden=64, mlp=96, n_layers=n_layers)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        for p in model.parameters():
            p.data.normal_(0, std) if p.ndim == 2 else p.data.add_(0.1 * torch.randn_like(p))
    return model.eval()


def save_dir(model: torch.nn.Module, path: Path) -> Path:
    model.save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    return path


def gpt2(seed: int = 0, *, std: float = 0.1, biases: float = 0.1, n_layer: int = 3):
    """A tiny random GPT-2 (``n_layer`` x 4 heads, d_model 64) with non-zero biases (so the
    reconstruction's constants, ``b_O`` and ``W_pos``, are non-trivial)."""
    from support import make_model

    model = make_model(seed, n_layer=n_layer)
    gen = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim == 2:
                p.normal_(0, std, generator=gen)
            else:
                p.add_(biases * torch.randn(p.shape, generator=gen))
    return model.eval()


def random_task(n: int, seed: int = 0, *, lengths: tuple[int, int] = (6, 11),
                corrupt: int = 2) -> mechdiff.Task:
    """Random prompts of unequal lengths, random answers / wrong answers, and corrupted prompts
    whose last ``corrupt`` tokens are replaced."""
    from support import random_prompts

    gen = torch.Generator().manual_seed(seed)
    clean = random_prompts(n, lengths=lengths, seed=seed)
    corrupted = []
    for p in clean:
        words = p.split()
        fresh = torch.randint(0, 60, (corrupt,), generator=gen).tolist()
        corrupted.append(" ".join(words[:-corrupt] + [f"t{i}" for i in fresh]))
    answers = [f"t{int(i)}" for i in torch.randint(0, 30, (n,), generator=gen)]
    wrong = [f"t{int(i)}" for i in torch.randint(30, 60, (n,), generator=gen)]
    return mechdiff.Task(clean, answers=answers, wrong_answers=wrong, corrupted=corrupted,
                         name="random")


SUBSET = 8
"""Tokens t0 .. t7: the alphabet of :func:`successor_task` (a head of d_head 8 can map it)."""


def successor(token: int) -> int:
    return (token + 1) % SUBSET


def successor_task(n: int = 24, seed: int = 0, *, query: int = 3) -> mechdiff.Task:
    """Induction prompts ``r x1 .. x6 s x1 .. x{query}`` over the alphabet t0..t7 (fillers from
    t8..t59) scored as ``logit(succ(x{query+1})) - logit(x{query+1})``: the base model, doing
    induction, prefers the repeat; a fine-tune that learned "the successor of the token induction
    finds" prefers the successor. Corrupted prompts replace the repeated part by fillers."""
    gen = torch.Generator().manual_seed(seed)
    prompts, answers, wrong, corrupted = [], [], [], []
    while len(prompts) < n:
        x = torch.randperm(SUBSET, generator=gen)[:6].tolist()
        target = x[query]
        if successor(target) in x[:query + 1]:
            continue  # keep the successor out of what the prompt already repeats
        fill = (8 + torch.randperm(52, generator=gen)[:4 + query]).tolist()
        words = [f"t{i}" for i in fill[:2] + x + fill[2:4]]
        prompts.append(" ".join(words + [f"t{i}" for i in x[:query]]))
        corrupted.append(" ".join(words + [f"t{i}" for i in fill[4:]]))
        answers.append(f"t{successor(target)}")
        wrong.append(f"t{target}")
    return mechdiff.Task(prompts, answers=answers, wrong_answers=wrong, corrupted=corrupted,
                         name="successor")


def rescaled(model: LlamaForCausalLM, heads: list[tuple[int, int]], *, factor: float = 1.5,
             mlp: float = 1.2) -> LlamaForCausalLM:
    """A fine-tune that only rescales existing components: the output maps (``o_proj`` columns)
    of ``heads`` by ``factor`` and every MLP's output by ``mlp``."""
    import copy

    out = copy.deepcopy(model)
    d_head = out.config.hidden_size // out.config.num_attention_heads
    with torch.no_grad():
        for layer, head in heads:
            out.model.layers[layer].self_attn.o_proj.weight[:, head * d_head:(head + 1) * d_head] \
                *= factor
        for block in out.model.layers:
            block.mlp.down_proj.weight *= mlp
    return out.eval()


def new_head(model: LlamaForCausalLM, layer: int, kv_head: int, *, strength: float = 8.0,
             seed: int = 0) -> LlamaForCausalLM:
    """A fine-tune that writes new V/O maps into key-value head ``kv_head`` of ``layer`` (heads
    the base barely uses): its values read which of t0..t7 a position holds, the first query head
    of the group writes the *successor*'s unembedding direction, the others are silenced. Query
    and key maps are untouched, so the heads attend where they did."""
    import copy

    out = copy.deepcopy(model)
    cfg = out.config
    d_head = cfg.hidden_size // cfg.num_attention_heads
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    attn = out.model.layers[layer].self_attn
    norm = out.model.layers[layer].input_layernorm
    # The layer's normalized input at positions holding each token (averaged over contexts).
    gen = torch.Generator().manual_seed(seed)
    ids, _ = induction_batch(64, gen)
    ids[:, 1:] = torch.where(torch.rand(ids[:, 1:].shape, generator=gen) < 0.4,
                             torch.randint(0, SUBSET, ids[:, 1:].shape, generator=gen),
                             ids[:, 1:])
    with torch.no_grad():
        hidden = out(ids, output_hidden_states=True).hidden_states[layer]
        normed = norm(hidden)
        n = torch.stack([normed[ids == t].mean(0) for t in range(SUBSET)])  # [8, d_model]
        w_v = torch.linalg.pinv(n).T  # rows: read token i as the unit vector e_i
        attn.v_proj.weight[kv_head * d_head:(kv_head + 1) * d_head] = w_v
        u = out.lm_head.weight * out.model.norm.weight  # logit directions in the residual
        u = u / u.norm(dim=-1, keepdim=True)
        first = kv_head * group
        cols = torch.stack([u[successor(t)] for t in range(SUBSET)], dim=1)  # [d_model, 8]
        attn.o_proj.weight[:, first * d_head:(first + 1) * d_head] = strength * cols
        for h in range(first + 1, first + group):
            attn.o_proj.weight[:, h * d_head:(h + 1) * d_head] = 0.0
    return out.eval()
