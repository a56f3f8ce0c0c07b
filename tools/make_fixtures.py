#!/usr/bin/env python3
"""Regenerate stitch's reference fixtures from HF transformers (DESIGN.md §4).

Writes, deterministically (running it twice gives byte-identical files):

  tests/fixtures/tiny_tokenizer/{llama,qwen}/   tiny byte-level BPE tokenizers (vocab 400) trained here
        tokenizer.json, tokenizer_config.json, cases.json (texts -> HF ids, for tokenizer tests)
  tests/fixtures/models/<name>/                 tiny random-weight models saved with save_pretrained
        config.json, generation_config.json, model.safetensors, tokenizer.json, tokenizer_config.json,
        reference.safetensors (HF float32 eager hidden states, logits, greedy continuations)
        gemma3_text also: config.legacy.json (the same model in the 4.x config spelling) and
        config.multimodal.json (Gemma3ForConditionalGeneration's config), both checked against HF

Usage: tools/.venv/bin/python tools/make_fixtures.py [--only NAME ...]

Needs torch + transformers + tokenizers + safetensors (tools/requirements.txt). Never touches the network.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse
import json
import math
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import transformers
from safetensors.torch import load_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

transformers.utils.logging.disable_progress_bar()

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
TOKENIZER_DIR = FIXTURES / "tiny_tokenizer"
MODELS_DIR = FIXTURES / "models"

# ----------------------------------------------------------------------------------------------
# 1. Tokenizers
# ----------------------------------------------------------------------------------------------

LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
QWEN2_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Order matters: these get ids VOCAB_SIZE-8 .. VOCAB_SIZE-1 (at the end, like Llama 3 / Qwen).
SPECIAL_TOKENS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
]
VOCAB_SIZE = 400  # 256 byte symbols + 136 merges + 8 special tokens

# Fixed training text (English + code). Changing it changes every fixture.
TRAINING_TEXT = r'''
The quick brown fox jumps over the lazy dog. The dog was not amused, and the fox ran into the forest.
Once upon a time there was a small village at the edge of a large forest. The people of the village
were farmers and they worked in the fields every day. In the evening they would sit together and tell
stories about the old days, when the river was wider and the winters were longer than they are now.
She said that she'd never seen anything like it. "We're going to be late," he replied, "and they'll
wait for us at the station." I'm sure you've heard this one before; it's the story that everyone knows.
A transformer model reads a sequence of tokens and predicts the next token. Each layer has an attention
block and a feed-forward block, and the residual stream carries information from one layer to the next.
Researchers study the activations of these models to understand what they represent and how they work.
The weather today is sunny with a high of 21 degrees and a low of 12 degrees. Tomorrow there will be
rain in the morning and clouds in the afternoon. On Monday, 3 March 2025, the meeting starts at 9:30.
Call 555-0123 or write to the office at 1600 Main Street. The total is $42.50 for 7 items (about 6.07 each).
Question: What is the capital of France? Answer: The capital of France is Paris.
Question: How many legs does a spider have? Answer: A spider has eight legs.
Café, naïve, résumé, über, Zürich and São Paulo are words with accents.

def fibonacci(n):
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
    a, b = 0, 1
    for _ in range(n - 1):
        a, b = b, a + b
    return b

for i in range(10):
    print(f"fib({i}) = {fibonacci(i)}")

class Counter:
    def __init__(self, start=0):
        self.value = start

    def increment(self, step=1):
        self.value += step
        return self.value

#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int total = 0;
    for (int i = 0; i < argc; i++) {
        total += atoi(argv[i]);
    }
    printf("total = %d\n", total);
    return 0;
}

std::vector<float> softmax(const std::vector<float>& x) {
    float max_value = *std::max_element(x.begin(), x.end());
    std::vector<float> out(x.size());
    float sum = 0.0f;
    for (size_t i = 0; i < x.size(); ++i) {
        out[i] = std::exp(x[i] - max_value);
        sum += out[i];
    }
    for (float& v : out) v /= sum;
    return out;
}

{"name": "stitch", "version": "0.1.0", "layers": [0, 1, 2, 3], "enabled": true, "scale": 0.125}
SELECT name, count(*) FROM tokens WHERE length > 3 GROUP BY name ORDER BY count DESC LIMIT 10;
'''


def _training_lines() -> list[str]:
    # Feed whole lines (keeping the newline) so whitespace/newline pre-tokens are seen in training.
    return TRAINING_TEXT.lstrip("\n").splitlines(keepends=True) * 3


def build_tokenizer(style: str) -> Tokenizer:
    """Train the tiny byte-level BPE for `style` in {"llama", "qwen"}; deterministic."""
    regex = LLAMA3_REGEX if style == "llama" else QWEN2_REGEX
    tok = Tokenizer(models.BPE())
    if style == "qwen":
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(SPECIAL_TOKENS),
        min_frequency=2,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_training_lines(), trainer=trainer)
    n_learned = tok.get_vocab_size()
    assert n_learned == VOCAB_SIZE - len(SPECIAL_TOKENS), f"{style}: trained vocab {n_learned}; enlarge TRAINING_TEXT"
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    assert tok.get_vocab_size() == VOCAB_SIZE

    bos_id = tok.token_to_id("<|begin_of_text|>")
    if style == "llama":
        tok.post_processor = processors.Sequence(
            [
                processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
                processors.TemplateProcessing(
                    single="<|begin_of_text|> $A",
                    pair="<|begin_of_text|> $A <|begin_of_text|>:1 $B:1",
                    special_tokens=[("<|begin_of_text|>", bos_id)],
                ),
            ]
        )
    else:
        tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)

    # Llama 3's tokenizer.json sets ignore_merges (a pre-token found whole in the vocab is taken as
    # one token without running merges); Qwen2's does not. Mirror both.
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = style == "llama"
    return Tokenizer.from_str(json.dumps(data))


def tokenizer_config(style: str, tok: Tokenizer) -> dict:
    added = {
        str(tok.token_to_id(t)): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for t in SPECIAL_TOKENS
    }
    if style == "llama":
        return {
            "added_tokens_decoder": added,
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "clean_up_tokenization_spaces": False,
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 131072,
            "tokenizer_class": "PreTrainedTokenizerFast",
        }
    return {
        "added_tokens_decoder": added,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 32768,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
    }


TOKENIZER_CASES = [
    "",
    "Hello",
    "Hello world",
    " Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "I'M sure they'll say we've done it; she'd agree. DON'T",
    "12345 67 8.90 1,000,000",
    "line one\nline two\n\n\nline four\r\n",
    "    indented\tand\ttabbed   \n   ",
    "def f(x):\n    return x * 2  # comment\n",
    "Café naïve résumé Zürich",
    "Cafe\u0301 (decomposed e + U+0301)",  # NFC folds this for qwen only
    "日本語のテキスト and 中文",
    "emoji: 🦙🚀 done",
    "<|begin_of_text|>already has a bos",
    "<|start_header_id|>user<|end_header_id|>\n\nHi there!<|eot_id|>",
    "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
    "text<|endoftext|>more<|end_of_text|>",
    "<|im_start|",  # not a special token: partial string
    "a  b   c    d",
    "!!!???...,,,",
    "x=[1,2,3];y={'a':1}",
]


def write_tokenizers() -> dict[str, Path]:
    """Train both tokenizers twice (reproducibility check), write them, return style -> folder."""
    out = {}
    for style in ("llama", "qwen"):
        tok = build_tokenizer(style)
        tok_again = build_tokenizer(style)
        assert tok.to_str() == tok_again.to_str(), f"{style} tokenizer training is not reproducible"
        folder = TOKENIZER_DIR / style
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        tok_json = json.loads(tok.to_str())
        _write_json(folder / "tokenizer.json", tok_json)
        _write_json(folder / "tokenizer_config.json", tokenizer_config(style, tok))

        # Cases: ids as HF's AutoTokenizer gives them from this folder (the path users take), checked
        # against the raw `tokenizers` pipeline so class-specific rebuilding in transformers v5 is caught.
        hf = AutoTokenizer.from_pretrained(str(folder))
        raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
        cases = []
        for text in TOKENIZER_CASES:
            ids = hf(text, add_special_tokens=True)["input_ids"]
            ids_plain = hf(text, add_special_tokens=False)["input_ids"]
            assert ids == raw.encode(text, add_special_tokens=True).ids, (style, text)
            assert ids_plain == raw.encode(text, add_special_tokens=False).ids, (style, text)
            cases.append(
                {
                    "text": text,
                    "ids": ids,
                    "ids_no_special": ids_plain,
                    "tokens": hf.convert_ids_to_tokens(ids_plain),
                    "decoded": hf.decode(ids_plain, skip_special_tokens=False),
                }
            )
        _write_json(
            folder / "cases.json",
            {
                "style": style,
                "notes": "ids = AutoTokenizer(text, add_special_tokens=True); ids_no_special with "
                "add_special_tokens=False; decoded = decode(ids_no_special, skip_special_tokens=False); "
                f"tokenizer_class={type(hf).__name__}; transformers {transformers.__version__}, "
                f"tokenizers {_tokenizers_version()}",
                "vocab_size": raw.get_vocab_size(),
                "special_tokens": {t: raw.token_to_id(t) for t in SPECIAL_TOKENS},
                "cases": cases,
            },
        )
        print(
            f"tokenizer {style}: vocab {raw.get_vocab_size()}, merges {len(tok_json['model']['merges'])}, "
            f"class {type(hf).__name__}, {len(cases)} cases"
        )
        out[style] = folder
    return out


def _tokenizers_version() -> str:
    import tokenizers

    return tokenizers.__version__


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    """Byte-reproducible safetensors writer.

    safetensors.torch.save_file emits __metadata__ in hash-map order, which changes run to run; this
    writes metadata and tensors sorted by name so regenerated fixtures are identical files.
    """
    dtypes = {torch.float32: "F32", torch.int32: "I32"}
    header = {"__metadata__": dict(sorted(metadata.items()))}
    blobs, offset = [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        data = t.numpy().tobytes()  # little-endian on every platform we run on
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    head = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little"))
        f.write(head)
        for data in blobs:
            f.write(data)
    back = load_file(str(path))
    assert sorted(back) == sorted(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------------------------
# 2. Models
# ----------------------------------------------------------------------------------------------

LLAMA_SPECIAL_PROMPT = "<|start_header_id|>user<|end_header_id|>\n\nWhat is 2+2?<|eot_id|>"
QWEN_SPECIAL_PROMPT = "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"

COMMON_PROMPTS = [
    "Hi",  # 1-token-ish
    "The capital of France is",  # medium
    # >= 40 tokens
    "Once upon a time there was a small village at the edge of a large forest, and every evening "
    "the farmers told stories about the river.",
    "Total: 42 items\nPrice 1234.5 on 2025-03-03",  # newline + digits
]

N_GREEDY = 16
MIN_MARGIN = 1e-3

# name -> spec. Sizes are deliberately odd; every model has GQA ratio > 1.
MODEL_SPECS = {
    "llama_tied": dict(
        style="llama",
        seed=1001,
        storage_dtype=torch.float32,
        config=dict(
            model_type="llama",
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=172,
            tie_word_embeddings=True,
            rms_norm_eps=1e-5,
            max_position_embeddings=16384,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=10000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                # head_dim 16, theta 1e4: wavelengths 6.3 .. 19869; with 2048 the thresholds are
                # 512 (high) and 2048 (low): 4 unscaled, 2 smoothed, 2 fully scaled frequencies.
                original_max_position_embeddings=2048,
            ),
        ),
    ),
    "llama_untied": dict(
        style="llama",
        seed=2002,
        legacy_config=True,
        storage_dtype=torch.bfloat16,
        config=dict(
            model_type="llama",
            hidden_size=96,
            num_hidden_layers=2,
            num_attention_heads=6,
            num_key_value_heads=2,
            intermediate_size=200,
            tie_word_embeddings=False,
            attention_bias=False,
            rms_norm_eps=1e-5,
            max_position_embeddings=131072,
            rope_parameters=dict(
                rope_type="llama3",
                rope_theta=500000.0,
                factor=8.0,
                low_freq_factor=1.0,
                high_freq_factor=4.0,
                original_max_position_embeddings=8192,
            ),
        ),
    ),
    "qwen2": dict(
        style="qwen",
        seed=3003,
        legacy_config=True,
        storage_dtype=torch.float16,
        config=dict(
            model_type="qwen2",
            hidden_size=80,
            num_hidden_layers=3,
            num_attention_heads=5,
            num_key_value_heads=1,
            intermediate_size=150,
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
            use_sliding_window=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
    ),
    "qwen3": dict(
        style="qwen",
        seed=4004,
        storage_dtype=torch.float32,
        config=dict(
            model_type="qwen3",
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=24,
            intermediate_size=128,
            tie_word_embeddings=False,
            attention_bias=False,
            rms_norm_eps=1e-6,
            max_position_embeddings=40960,
            use_sliding_window=False,
            rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        ),
    ),
    # Gemma 1 as the gemma-1.1 files on the hub spell it: hidden_act "gelu" beside hidden_activation
    # "gelu_pytorch_tanh". transformers 5 reads hidden_act for Gemma 1 (4.x forced the tanh form), so
    # this fixture runs the exact erf GELU; Gemma 2/3 below run the tanh approximation.
    "gemma": dict(
        style="llama",
        seed=5005,
        legacy_config=True,
        storage_dtype=torch.bfloat16,
        norm_mean=0.0,  # Gemma norms multiply by (1 + w): w near 0 is a multiplier near 1
        embed_std=0.3,
        final_norm=(-1.0, 1.0),
        extra_config_json=dict(hidden_activation="gelu_pytorch_tanh"),
        config=dict(
            model_type="gemma",
            hidden_size=64,
            num_hidden_layers=3,
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=24,  # not hidden / heads
            intermediate_size=171,
            hidden_act="gelu",
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=8192,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
    # Gemma 2 with its soft-caps lowered so that they bite at these sizes (checked below: attention
    # scores and logits beyond the caps), a 16-token window on alternate layers (legacy config: no
    # layer_types, so HF's default pattern applies: layer 0 sliding), query_pre_attn_scalar != head_dim.
    "gemma2": dict(
        style="llama",
        seed=6006,
        legacy_config=True,
        storage_dtype=torch.float32,
        norm_mean=0.0,
        embed_std=0.4,
        final_norm=(-1.0, 1.0),
        config=dict(
            model_type="gemma2",
            hidden_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=99,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=8192,
            query_pre_attn_scalar=24,
            sliding_window=16,
            attn_logit_softcapping=4.0,
            final_logit_softcapping=6.0,
            rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        ),
    ),
    # Gemma 3: q/k norms, 7 layers = 5 local + 1 global + 1 local (HF's default pattern of 6), an
    # 8-token window, local RoPE base 1e4 vs global 1e6 with linear scaling (x8) on the global layer
    # only. transformers 5 config (rope_parameters keyed by layer type); config.legacy.json holds
    # the 4.x spelling of the same model and config.multimodal.json the Gemma3ForConditionalGeneration
    # config, both checked here to give HF the same logits.
    "gemma3_text": dict(
        style="llama",
        seed=7007,
        storage_dtype=torch.float32,
        norm_mean=0.0,
        embed_std=0.3,
        final_norm=(-1.0, 1.0),
        config=dict(
            model_type="gemma3_text",
            hidden_size=48,
            num_hidden_layers=7,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            intermediate_size=83,
            hidden_activation="gelu_pytorch_tanh",
            tie_word_embeddings=True,
            rms_norm_eps=1e-6,
            max_position_embeddings=32768,
            query_pre_attn_scalar=20,
            sliding_window=8,
            rope_parameters=dict(
                sliding_attention=dict(rope_type="default", rope_theta=10000.0),
                full_attention=dict(rope_type="linear", factor=8.0, rope_theta=1000000.0),
            ),
        ),
    ),
}

GEMMA_TYPES = ("gemma", "gemma2", "gemma3_text")


def special_ids(tok: Tokenizer) -> dict[str, int]:
    return {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}


def make_config(spec: dict, tok: Tokenizer):
    sp = special_ids(tok)
    kw = dict(spec["config"])
    model_type = kw.pop("model_type")
    if spec["style"] == "llama":
        bos, eos, pad = sp["<|begin_of_text|>"], [sp["<|end_of_text|>"], sp["<|eot_id|>"]], None
    else:
        bos, eos, pad = sp["<|endoftext|>"], sp["<|im_end|>"], sp["<|endoftext|>"]
    if model_type not in GEMMA_TYPES:
        kw.setdefault("hidden_act", "silu")
    cfg = AutoConfig.for_model(
        model_type,
        vocab_size=tok.get_vocab_size(),
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
        initializer_range=0.02,
        **kw,
    )
    gen = GenerationConfig(bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)
    return cfg, gen


def rope_regimes(cfg) -> list[str]:
    """Which llama3 wavelength regime each rotary frequency falls in (mirrors HF's formula)."""
    rp = cfg.rope_parameters
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    orig = rp["original_max_position_embeddings"]
    low_wl, high_wl = orig / rp["low_freq_factor"], orig / rp["high_freq_factor"]
    out = []
    for i in range(0, head_dim, 2):
        wavelen = 2 * math.pi * rp["rope_theta"] ** (i / head_dim)
        regime = "unscaled" if wavelen < high_wl else ("scaled" if wavelen > low_wl else "smoothed")
        out.append(f"{wavelen:.1f}:{regime}")
    return out


@torch.no_grad()
def reinit_weights(
    model, seed: int, norm_mean: float = 1.0, embed_std: float = 0.5, final_norm: tuple | None = None
) -> None:
    """Replace HF's tiny-std init with a peakier one so greedy decoding is bug-sensitive.

    norm_mean: centre of the RMSNorm weights (1 for Llama/Qwen's w; 0 for Gemma's (1 + w), with a
    wider spread so that a forward pass that forgot the +1, or added it twice, is far off).
    embed_std: Gemma multiplies embeddings by sqrt(hidden); a smaller table keeps the scaled token
    embedding from swamping the residual (with tied weights that makes every model repeat its input).
    final_norm: (mean, std) of the final norm's weight instead (Gemma: w ~ N(-1, 1), so (1 + w) is
    centred on 0 and a tied model's logit for the current token gets no systematic boost)."""
    gen = torch.Generator().manual_seed(seed)

    def normal(shape, std, mean=0.0):
        return torch.randn(shape, generator=gen, dtype=torch.float32) * std + mean

    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if final_norm is not None and name == "model.norm.weight":
            new = normal(p.shape, final_norm[1], final_norm[0])
        elif name.endswith("norm.weight"):  # input/post_attention/pre/post_feedforward/final/q_norm/k_norm
            new = normal(p.shape, 0.1, 1.0) if norm_mean == 1.0 else normal(p.shape, 0.2, norm_mean)
        elif name.endswith(".bias"):
            new = normal(p.shape, 0.1)
        elif "embed_tokens" in name or "lm_head" in name:
            new = normal(p.shape, embed_std)
        else:  # projections: std ~ 1.6/sqrt(fan_in) (0.1 .. 0.2 at these sizes)
            new = normal(p.shape, 1.6 / math.sqrt(p.shape[1]))
        p.copy_(new.to(p.dtype))


def legacyize_config(path: Path) -> None:
    """Rewrite a 5.x config.json the way real hub checkpoints (written by transformers 4.x) look.

    transformers 5 writes `rope_parameters` (with rope_theta inside), `dtype` and, for qwen2/3,
    `layer_types`; Llama 3.x / Qwen2.5 downloads carry top-level `rope_theta`, `rope_scaling`
    (null or {"rope_type": "llama3", ...}), `torch_dtype` and no `layer_types`. The engine must read
    both, so half of the fixtures use each; the reference is computed from the rewritten file.
    """
    cfg = json.loads(path.read_text())
    rope = dict(cfg.pop("rope_parameters"))
    theta = rope.pop("rope_theta")
    legacy = {}
    for key, value in cfg.items():
        if key == "dtype":
            legacy["torch_dtype"] = value
            continue
        if key == "layer_types":
            continue
        if key == "sliding_window" and value is None:
            value = 4096  # hub Qwen files carry a window even with use_sliding_window false
        legacy[key] = value
    legacy["rope_theta"] = theta
    legacy["rope_scaling"] = rope if rope.get("rope_type", "default") != "default" else None
    path.write_text(json.dumps(dict(sorted(legacy.items())), indent=2) + "\n")


def hf_forward(model, ids: list[int]):
    x = torch.tensor([ids], dtype=torch.long)
    return model(input_ids=x, use_cache=False, output_hidden_states=True)


def greedy(model, ids: list[int], n: int):
    """Own greedy loop with HF's KV cache; no EOS stopping. Returns tokens, margins, step logits."""
    out = model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=True)
    tokens, margins, step_logits = [], [], []
    for step in range(n):
        last = out.logits[0, -1].float()
        top = torch.topk(last, 2)
        margins.append(float(top.values[0] - top.values[1]))
        nxt = int(torch.argmax(last))
        tokens.append(nxt)
        step_logits.append(last.clone())
        if step + 1 < n:
            out = model(
                input_ids=torch.tensor([[nxt]], dtype=torch.long),
                past_key_values=out.past_key_values,
                use_cache=True,
            )
    return tokens, margins, torch.stack(step_logits)


def check_hidden_state_semantics(model, ids: list[int], hidden: torch.Tensor) -> None:
    """Check HF's hidden_states layout against forward hooks on the decoder layers."""
    captured = []
    hooks = [
        layer.register_forward_hook(lambda m, a, o: captured.append((o[0] if isinstance(o, tuple) else o).detach()))
        for layer in model.model.layers
    ]
    try:
        model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    n = len(model.model.layers)
    embeds = model.model.embed_tokens(torch.tensor([ids], dtype=torch.long))[0]
    assert torch.equal(embeds, hidden[0]), "hidden_states[0] is not the token embedding"
    for L in range(n - 1):
        assert torch.equal(captured[L][0], hidden[L + 1]), f"hidden_states[{L + 1}] != output of layer {L}"
    assert torch.equal(model.model.norm(captured[n - 1])[0], hidden[n]), "hidden_states[-1] is not post-norm"


def batched_check(model, prompts_ids: list[list[int]], ref_logits: list[torch.Tensor], pad_id: int) -> float:
    """Left-padded batch with attention_mask (+ matching position_ids) vs unbatched logits."""
    T = max(len(p) for p in prompts_ids)
    ids = torch.full((len(prompts_ids), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts_ids), T), dtype=torch.long)
    for b, p in enumerate(prompts_ids):
        ids[b, T - len(p) :] = torch.tensor(p)
        mask[b, T - len(p) :] = 1
    # HF 5.x forward() does not derive positions from the mask (generate() does); pass them.
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits
    worst = 0.0
    for b, p in enumerate(prompts_ids):
        diff = (logits[b, T - len(p) :] - ref_logits[b]).abs().max().item()
        worst = max(worst, diff)
    assert worst < 1e-4, f"batched vs unbatched logits differ by {worst}"
    return worst


def build_model(name: str, spec: dict, tok_folder: Path, tok: Tokenizer) -> None:
    cfg, gen_cfg = make_config(spec, tok)
    if cfg.rope_parameters.get("rope_type") == "llama3":
        regimes = rope_regimes(cfg)
        kinds = {k: sum(r.split(":")[1] == k for r in regimes) for k in ("unscaled", "smoothed", "scaled")}
        print(f"  {name} llama3 rope (wavelength:regime per frequency): {' '.join(regimes)} -> {kinds}")
        assert all(kinds.values()), f"{name}: not all llama3 rope regimes hit"

    prompts = COMMON_PROMPTS + [LLAMA_SPECIAL_PROMPT if spec["style"] == "llama" else QWEN_SPECIAL_PROMPT]
    hf_tok = AutoTokenizer.from_pretrained(str(tok_folder))
    prompt_ids = [hf_tok(p, add_special_tokens=True)["input_ids"] for p in prompts]
    assert len(prompt_ids[2]) >= 40, f"long prompt has only {len(prompt_ids[2])} tokens"

    folder = MODELS_DIR / name
    for attempt in range(20):
        seed = spec["seed"] + 7919 * attempt
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation="eager", dtype=torch.float32)
        reinit_weights(model, seed, spec.get("norm_mean", 1.0), spec.get("embed_std", 0.5), spec.get("final_norm"))
        model.generation_config = gen_cfg
        model = model.to(spec["storage_dtype"])

        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            if spec.get("legacy_config"):
                legacyize_config(Path(tmp) / "config.json")
            if spec.get("extra_config_json"):
                conf = json.loads((Path(tmp) / "config.json").read_text())
                conf.update(spec["extra_config_json"])
                (Path(tmp) / "config.json").write_text(json.dumps(dict(sorted(conf.items())), indent=2) + "\n")
            # Reference: reload what was saved (so bf16/f16 rounding is in the weights), compute in f32.
            ref_model, info = AutoModelForCausalLM.from_pretrained(
                tmp, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
            )
            assert not any(info.values()), f"{name}: missing/unexpected/mismatched keys on reload: {info}"
            ref_model.eval()
            # Whatever format config.json is in, HF must read back the config we meant.
            for key in ("rope_parameters", "num_key_value_heads", "head_dim", "tie_word_embeddings", "rms_norm_eps"):
                assert getattr(ref_model.config, key, None) == getattr(cfg, key, None), (name, key)
            if cfg.model_type in GEMMA_TYPES:
                assert getattr(ref_model.config, "layer_types", None) == getattr(cfg, "layer_types", None), name
            else:
                assert all(t == "full_attention" for t in getattr(ref_model.config, "layer_types", None) or [])
            result = compute_reference(ref_model, prompt_ids, hf_tok)
            if result["min_margin"] <= MIN_MARGIN:
                print(f"  {name}: seed {seed} min greedy margin {result['min_margin']:.2e} too small, re-seeding")
                continue
            extra_files, extra_notes = {}, ""
            if cfg.model_type in GEMMA_TYPES:
                extra_files, extra_notes = gemma_checks(name, ref_model, Path(tmp), prompt_ids, result)
            if folder.exists():
                shutil.rmtree(folder)
            shutil.copytree(tmp, folder)
            for fname, text in extra_files.items():
                (folder / fname).write_text(text)
        break
    else:
        raise SystemExit(f"{name}: no seed gave greedy margins > {MIN_MARGIN}")

    for fname in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tok_folder / fname, folder / fname)
    for f in folder.iterdir():
        f.chmod(0o644)  # save_pretrained leaves model.safetensors 0600

    n_layers = cfg.num_hidden_layers
    meta = {
        "n_prompts": str(len(prompts)),
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "model": name,
        "seed": str(seed),
        "stored_dtype": str(spec["storage_dtype"]).replace("torch.", ""),
        "config_format": "legacy (rope_theta/rope_scaling/torch_dtype, as on the hub)"
        if spec.get("legacy_config")
        else "transformers 5 (rope_parameters/dtype/layer_types)",
        "notes": (
            "HF reference computed in float32 (weights loaded from model.safetensors and upcast), "
            "attn_implementation=eager, torch.no_grad, batch 1, no padding. "
            f"prompt.i.ids I32 [T]: tokenizer(text, add_special_tokens=True). "
            f"prompt.i.hidden_states F32 [n_layers+1={n_layers + 1}, T, hidden]: HF output_hidden_states; "
            "entry 0 = token embeddings (input of layer 0), entry L (1<=L<n_layers) = output of layer L-1 "
            "(blocks.{L-1}.resid_post), entry n_layers = AFTER the final norm (final_norm), not the last "
            "layer's raw output. prompt.i.resid_post_last F32 [T, hidden] = output of the last layer before "
            "the final norm (captured with a forward hook). prompt.i.logits F32 [T, vocab]. "
            f"prompt.i.greedy I32 [{N_GREEDY}]: own greedy loop (argmax, KV cache via past_key_values, "
            "no EOS stopping) continuing the prompt; prompt.i.greedy_margin F32 [16] = top1-top2 logit "
            f"at each step (all > {MIN_MARGIN}). Batched left-padded run checked within 1e-4 (max "
            f"{result['batched_diff']:.1e}); cached greedy logits checked against full recompute."
            + extra_notes
        ),
    }
    for i, text in enumerate(prompts):
        meta[f"prompt.{i}.text"] = text
    tensors = {}
    for i, r in enumerate(result["prompts"]):
        tensors[f"prompt.{i}.ids"] = torch.tensor(prompt_ids[i], dtype=torch.int32)
        tensors[f"prompt.{i}.hidden_states"] = r["hidden_states"].contiguous()
        tensors[f"prompt.{i}.resid_post_last"] = r["resid_post_last"].contiguous()
        tensors[f"prompt.{i}.logits"] = r["logits"].contiguous()
        tensors[f"prompt.{i}.greedy"] = torch.tensor(r["greedy"], dtype=torch.int32)
        tensors[f"prompt.{i}.greedy_margin"] = torch.tensor(r["margins"], dtype=torch.float32)
    write_safetensors(folder / "reference.safetensors", tensors, meta)

    sizes = {f.name: f.stat().st_size for f in sorted(folder.iterdir())}
    print(
        f"  {name}: seed {seed}, T={[len(p) for p in prompt_ids]}, min greedy margin "
        f"{result['min_margin']:.3f}, batched diff {result['batched_diff']:.1e}, "
        f"model.safetensors {sizes['model.safetensors']} B, reference.safetensors {sizes['reference.safetensors']} B"
    )
    for i, r in enumerate(result["prompts"]):
        print(f"    prompt {i} greedy: {hf_tok.decode(r['greedy'])!r}")
    assert sizes["model.safetensors"] < 1_100_000 and sizes["reference.safetensors"] < 1_600_000, sizes
    if cfg.model_type in GEMMA_TYPES:
        assert sum(sizes.values()) < 1_500_000, f"{name}: fixture folder is {sum(sizes.values())} B"


# ----------------------------------------------------------------------------------------------
# 3. Gemma-specific checks: the family facts a fixture claims to exercise are really exercised
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def gemma_checks(name: str, model, tmp: Path, prompt_ids: list[list[int]], result: dict) -> tuple[dict, str]:
    """Asserts what the Gemma fixture is for; returns extra files for the folder and notes."""
    cfg = model.config
    notes, files = "", {}
    longest = max(len(p) for p in prompt_ids)
    layer_types = list(getattr(cfg, "layer_types", None) or [])
    if cfg.model_type == "gemma":
        act = type(model.model.layers[0].mlp.act_fn).__name__
        assert act == "GELUActivation", f"{name}: expected HF to run exact GELU for hidden_act=gelu, got {act}"
        notes += f" HF runs {act} (exact erf GELU) for hidden_act=gelu although hidden_activation says gelu_pytorch_tanh."
    if cfg.model_type in ("gemma2", "gemma3_text"):
        assert "sliding_attention" in layer_types and "full_attention" in layer_types, layer_types
        assert longest > cfg.sliding_window + 8, f"{name}: prompts ({longest}) must outrun the window {cfg.sliding_window}"
        notes += f" layer_types {layer_types}, sliding_window {cfg.sliding_window}, longest prompt {longest} tokens."
    if cfg.model_type == "gemma2":
        notes += " " + softcap_activity(name, model, prompt_ids)
    if cfg.model_type == "gemma3_text":
        files["config.legacy.json"] = gemma3_legacy_check(name, model, tmp, prompt_ids, result)
        files["config.multimodal.json"] = gemma3_multimodal_check(name, model, prompt_ids, result)
        notes += (
            " config.legacy.json: the same model in the 4.x spelling (rope_theta, rope_local_base_freq, "
            "rope_scaling, sliding_window_pattern, no layer_types); HF gives identical logits from it. "
            "config.multimodal.json: Gemma3ForConditionalGeneration config (model_type gemma3, text_config) "
            "whose checkpoint (as transformers 5.17 saves it) names these weights language_model.model.*; "
            "HF gives the same logits."
        )
    return files, notes


@torch.no_grad()
def softcap_activity(name: str, model, prompt_ids: list[list[int]]) -> str:
    """Counts attention scores and logits beyond Gemma 2's soft-caps (pre-cap), and asserts some are."""
    mod = sys.modules[type(model.model.layers[0].self_attn).__module__]
    original = mod.eager_attention_forward
    seen = dict(calls=0, visible=0, over=0, max=0.0)

    def spy(module, query, key, value, attention_mask, dropout=0.0, scaling=None, softcap=None, **kw):
        k = mod.repeat_kv(key, module.num_key_value_groups)
        scores = (torch.matmul(query, k.transpose(2, 3)) * scaling).abs()
        visible = torch.ones_like(scores, dtype=torch.bool)
        if attention_mask is not None:
            visible = visible & (attention_mask[:, :, :, : k.shape[-2]] == 0)
        seen["calls"] += 1
        seen["visible"] += int(visible.sum())
        seen["over"] += int((visible & (scores > softcap)).sum())
        seen["max"] = max(seen["max"], float(scores[visible].max()))
        return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, softcap=softcap, **kw)

    mod.eager_attention_forward = spy
    try:
        raw_over, raw_total, raw_max = 0, 0, 0.0
        for ids in prompt_ids:
            out = model(input_ids=torch.tensor([ids]), use_cache=False, output_hidden_states=True)
            raw = model.lm_head(out.hidden_states[-1])  # hidden_states[-1] is after the final norm
            cap = model.config.final_logit_softcapping
            assert torch.allclose(cap * torch.tanh(raw / cap), out.logits, atol=1e-5)
            raw_over += int((raw.abs() > cap).sum())
            raw_total += raw.numel()
            raw_max = max(raw_max, float(raw.abs().max()))
    finally:
        mod.eager_attention_forward = original
    acap = model.config.attn_logit_softcapping
    fcap = model.config.final_logit_softcapping
    assert seen["calls"] > 0, "the eager attention spy was never called"
    assert seen["over"] > 0.01 * seen["visible"] and seen["max"] > 1.5 * acap, (name, seen)
    assert raw_over > 0.01 * raw_total and raw_max > 1.5 * fcap, (name, raw_over, raw_total, raw_max)
    msg = (
        f"Soft-caps active: {seen['over']}/{seen['visible']} visible attention scores beyond the cap {acap} "
        f"(max |score| {seen['max']:.1f}); {raw_over}/{raw_total} logits beyond the cap {fcap} (max |logit| {raw_max:.1f})."
    )
    print(f"  {name}: {msg}")
    return msg


def _reference_logits(result: dict) -> list[torch.Tensor]:
    return [r["logits"] for r in result["prompts"]]


@torch.no_grad()
def gemma3_legacy_check(name: str, model, tmp: Path, prompt_ids: list[list[int]], result: dict) -> str:
    """The 4.x spelling of the Gemma 3 config; HF must read it as the same model."""
    conf = json.loads((tmp / "config.json").read_text())
    rp = conf.pop("rope_parameters")
    full, sliding = dict(rp["full_attention"]), dict(rp["sliding_attention"])
    conf.pop("layer_types")
    conf["torch_dtype"] = conf.pop("dtype")
    conf["rope_theta"] = full.pop("rope_theta")
    conf["rope_local_base_freq"] = sliding.pop("rope_theta")
    assert sliding == {"rope_type": "default"}, sliding
    conf["rope_scaling"] = full if full.get("rope_type", "default") != "default" else None
    pattern = model.config.layer_types.index("full_attention") + 1
    conf["sliding_window_pattern"] = pattern
    conf.pop("_sliding_window_pattern", None)  # what transformers 5 writes; 4.x files have only the above
    text = json.dumps(dict(sorted(conf.items())), indent=2) + "\n"
    with tempfile.TemporaryDirectory() as tmp2:
        for f in tmp.iterdir():
            shutil.copyfile(f, Path(tmp2) / f.name)
        (Path(tmp2) / "config.json").write_text(text)
        legacy = AutoModelForCausalLM.from_pretrained(tmp2, dtype=torch.float32, attn_implementation="eager").eval()
    assert legacy.config.rope_parameters == model.config.rope_parameters, legacy.config.rope_parameters
    assert legacy.config.layer_types == model.config.layer_types, legacy.config.layer_types
    for ids, want in zip(prompt_ids, _reference_logits(result)):
        got = legacy(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
        assert torch.equal(got, want), f"{name}: legacy config changes HF's logits"
    print(f"  {name}: legacy config (pattern {pattern}) reads back as the same model")
    return text


@torch.no_grad()
def gemma3_multimodal_check(name: str, model, prompt_ids: list[list[int]], result: dict) -> str:
    """Gemma3ForConditionalGeneration around the same text weights: its config.json nests the text
    model's under text_config and its checkpoint names them language_model.model.*; text-only input
    must give the same logits."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, SiglipVisionConfig

    vision = SiglipVisionConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14
    )
    text_dict = model.config.to_dict()
    text_dict.pop("_name_or_path", None)  # the temporary folder the reference was loaded from
    text_cfg = type(model.config).from_dict(text_dict)
    mm_cfg = Gemma3Config(
        text_config=text_cfg,
        vision_config=vision,
        mm_tokens_per_image=4,
        eos_token_id=model.config.eos_token_id,
        bos_token_id=model.config.bos_token_id,
    )
    torch.manual_seed(0)
    mm = Gemma3ForConditionalGeneration(mm_cfg).eval()
    missing = mm.model.language_model.load_state_dict(model.model.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    mm.tie_weights()
    with tempfile.TemporaryDirectory() as tmp2:
        mm.save_pretrained(tmp2)
        # transformers 5.17 names these model.language_model.* in memory but saves them the way the
        # hub's 4.x checkpoints do: language_model.model.* (the engine reads both).
        names = set(load_file(str(Path(tmp2) / "model.safetensors")))
        want = {"language_model.model." + k for k in model.model.state_dict()}
        assert want <= names, (sorted(want - names)[:5], sorted(names)[:5])
        assert not any("lm_head" in n for n in names)  # tied
        text = (Path(tmp2) / "config.json").read_text()
        back = Gemma3ForConditionalGeneration.from_pretrained(tmp2, dtype=torch.float32, attn_implementation="eager")
        back.eval()
    conf = json.loads(text)
    assert conf["model_type"] == "gemma3" and conf["text_config"]["model_type"] == "gemma3_text"
    worst = 0.0
    for ids, want_logits in zip(prompt_ids, _reference_logits(result)):
        got = back(input_ids=torch.tensor([ids]), use_cache=False).logits[0].float()
        worst = max(worst, float((got - want_logits).abs().max()))
    assert worst < 1e-5, f"{name}: Gemma3ForConditionalGeneration logits differ by {worst}"
    print(f"  {name}: Gemma3ForConditionalGeneration config + language_model.model.* names agree (max diff {worst:.1e})")
    return text


@torch.no_grad()
def compute_reference(model, prompt_ids: list[list[int]], hf_tok) -> dict:
    n_layers = model.config.num_hidden_layers
    results, all_margins, logits_list = [], [], []
    for ids in prompt_ids:
        out = hf_forward(model, ids)
        hidden = torch.stack([h[0] for h in out.hidden_states]).float()
        assert hidden.shape[0] == n_layers + 1
        check_hidden_state_semantics(model, ids, hidden)
        captured = []
        hook = model.model.layers[-1].register_forward_hook(
            lambda m, a, o: captured.append((o[0] if isinstance(o, tuple) else o).detach())
        )
        model(input_ids=torch.tensor([ids], dtype=torch.long), use_cache=False)
        hook.remove()
        logits = out.logits[0].float()
        toks, margins, step_logits = greedy(model, ids, N_GREEDY)
        # Cached decoding must agree with a full recompute of prompt + generated tokens.
        full = model(input_ids=torch.tensor([ids + toks[:-1]], dtype=torch.long), use_cache=False).logits[0]
        recompute = full[len(ids) - 1 :].float()
        assert torch.equal(recompute.argmax(-1), torch.tensor(toks)), "cached greedy != full recompute argmax"
        assert (recompute - step_logits).abs().max() < 1e-4, "cached logits drift from full recompute"
        all_margins += margins
        logits_list.append(logits)
        results.append(
            dict(
                hidden_states=hidden,
                resid_post_last=captured[0][0].float(),
                logits=logits,
                greedy=toks,
                margins=margins,
            )
        )
    pad_id = hf_tok.pad_token_id if hf_tok.pad_token_id is not None else hf_tok.eos_token_id
    batched = batched_check(model, prompt_ids, logits_list, pad_id)
    return dict(prompts=results, min_margin=min(all_margins), batched_diff=batched)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", nargs="*", choices=sorted(MODEL_SPECS), help="models to rebuild (default: all)")
    args = ap.parse_args()

    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bit-stable reductions regardless of the machine's core count
    print(f"transformers {transformers.__version__}, torch {torch.__version__}, tokenizers {_tokenizers_version()}")
    tok_folders = write_tokenizers()
    for name in args.only or list(MODEL_SPECS):
        spec = MODEL_SPECS[name]
        tok = Tokenizer.from_file(str(tok_folders[spec["style"]] / "tokenizer.json"))
        build_model(name, spec, tok_folders[spec["style"]], tok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
