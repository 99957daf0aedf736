"""Shared test helpers: tiny GPT-2 checkpoints built on the fly (random weights, seconds), never
the network; planted changes give ground truth. Imported as ``from support import ...`` (``tests/``
is on the test path)."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

N_LAYERS, N_HEADS, D_MODEL, N_CTX = 3, 4, 64, 32
VOCAB = [f"t{i}" for i in range(60)] + ["<pad>", "<bos>"]


def make_tokenizer(words: list[str] = VOCAB) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>", unk_token="<pad>"
    )


def make_model(seed: int = 0, *, n_layer: int = N_LAYERS, vocab: int = len(VOCAB)) -> GPT2LMHeadModel:
    cfg = GPT2Config(
        vocab_size=vocab, n_positions=N_CTX, n_embd=D_MODEL, n_layer=n_layer, n_head=N_HEADS,
        bos_token_id=vocab - 1, eos_token_id=vocab - 1, pad_token_id=vocab - 2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(cfg)
        # Larger-than-default weights so heads matter and gaps are well above float noise.
        for p in model.parameters():
            if p.ndim == 2:
                p.data.normal_(0, 0.2)
    return model.eval()


def save(model: GPT2LMHeadModel, path: Path, tokenizer: PreTrainedTokenizerFast | None = None) -> Path:
    model.save_pretrained(path)
    (tokenizer or make_tokenizer()).save_pretrained(path)
    return path


def plant_head(model: GPT2LMHeadModel, layer: int, head: int, seed: int = 1) -> GPT2LMHeadModel:
    """Change only W_O of one head (rows of c_proj that read that head's z)."""
    d_head = D_MODEL // N_HEADS
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.transformer.h[layer].attn.c_proj.weight  # Conv1D: [in = head*d_head, out]
        w[head * d_head:(head + 1) * d_head] += 0.5 * torch.randn(d_head, D_MODEL, generator=g)
    return model


def plant_mlp(model: GPT2LMHeadModel, layer: int, seed: int = 2) -> GPT2LMHeadModel:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        w = model.transformer.h[layer].mlp.c_proj.weight
        w += 0.2 * torch.randn(w.shape, generator=g)
    return model


def random_prompts(n: int, lengths: tuple[int, int] = (6, 12), seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(lengths[0], lengths[1] + 1, (n,), generator=g).tolist()
    return [" ".join(f"t{int(x)}" for x in torch.randint(0, 60, (s,), generator=g)) for s in sizes]


def unchecked(fn):
    """``fn`` without the jaxtyping/beartype wrapper the test session puts on mechdiff functions.

    Tests of mechdiff's own validation of bad option values call this: under the type-checking
    hook a wrong ``Literal`` is refused by beartype before mechdiff's own (typed, explained)
    check could run, which is what users without the hook get.
    """
    return inspect.unwrap(fn)


# ---------------------------------------------------------------- the command line

SUFFIX_MAGIC = {".pdf": b"%PDF", ".png": b"\x89PNG", ".svg": b"<?xml"}


def write_jsonl(path: Path, n: int = 8, seed: int = 0) -> Path:
    """A prompt file of ``n`` random prompts with answer ``t1`` and wrong answer ``t2``."""
    import json

    rows = [{"prompt": p, "answer": "t1", "wrong_answer": "t2"}
            for p in random_prompts(n, seed=seed)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def run_python(code: str, timeout: int = 300):
    """Run ``code`` in a fresh interpreter (nothing imported yet); asserts it exits 0 and
    returns the ``CompletedProcess`` (``stdout``, ``stderr`` as text)."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout)
    assert out.returncode == 0, out.stderr
    return out


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``mechdiff.cli.main(argv)`` with stdout and stderr captured."""
    import contextlib
    import io

    from mechdiff.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def table_rows(text: str) -> list[list[str]]:
    """The data rows of printed ranked tables, ``[rank, component, score, score, ...]``, with the
    intervals printed after each score (``[0.30, 0.58]``) left out; rows of edge tables
    (``MLP2->logits``) are not component rows."""
    rows = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit() and "->" not in parts[1]:  # not edges
            kept = [p for p in parts if not (p.startswith("[") or p.endswith("]"))]
            rows.append(kept)
    return rows


def check_figure(path: Path) -> None:
    """``path`` is a non-trivial PDF / PNG / SVG file."""
    assert path.is_file(), f"missing figure {path}"
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(SUFFIX_MAGIC[path.suffix]), path


def assert_one_line_error(code: int, stderr: str, *needles: str) -> None:
    """Exit status 2 and one ``mechdiff: error: ...`` line holding every needle, no traceback."""
    assert code == 2, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mechdiff: error: "), stderr
    assert "Traceback" not in stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


# ---------------------------------------------------------------- patching references


def reference_patch(recv, donor, task, kind: str, positions: str) -> torch.Tensor:
    """One full forward of the receiver per (site, position), hooks via TransformerLens."""
    tok = task.tokenize(recv.tokenizer, n_ctx=int(recv.cfg.n_ctx))
    _, dcache = donor.run_with_cache(tok.tokens)
    _, rcache = recv.run_with_cache(tok.tokens)
    idx = torch.arange(tok.n)
    width = tok.tokens.shape[1]
    n_sites = N_HEADS if kind == "heads" else 1
    pos_list = list(range(width)) if positions == "each" else [None]
    out = torch.zeros(N_LAYERS, n_sites, len(pos_list))
    for layer in range(N_LAYERS):
        for s in range(n_sites):
            for j, p in enumerate(pos_list):
                mask = torch.zeros(1, width, 1)
                if p is None:
                    mask[:] = 1
                else:
                    mask[:, p] = 1
                if kind == "heads":
                    name = f"blocks.{layer}.hook_attn_out"
                    z = f"blocks.{layer}.attn.hook_z"
                    delta = (dcache[z][:, :, s] @ donor.W_O[layer, s]
                             - rcache[z][:, :, s] @ recv.W_O[layer, s])
                else:
                    name = {"attn": f"blocks.{layer}.hook_attn_out",
                            "mlp": f"blocks.{layer}.hook_mlp_out",
                            "resid": f"blocks.{layer}.hook_resid_pre"}[kind]
                    delta = dcache[name] - rcache[name]

                def hook(act, hook, delta=delta, mask=mask):
                    return act + delta * mask

                logits = recv.run_with_hooks(tok.tokens, fwd_hooks=[(name, hook)])
                final = logits[idx, tok.read_pos]
                out[layer, s, j] = (final[idx, tok.answer_ids] - final[idx, tok.wrong_ids]).mean()
    out = out if kind == "heads" else out[:, 0]
    return out if positions == "each" else out.squeeze(-1)
