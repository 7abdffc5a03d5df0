#!/usr/bin/env python3
"""Converts GCIDE's dictd database to plain text: one dictionary entry per line, in index order.

Reads the uncompressed gcide.dict on stdin and its gcide.index (headword, offset, length in
dictd's base64) from the path given; writes UTF-8 lines on stdout. Each entry loses the markup
a reader does not see: the pronunciation between backslashes, source tags on their own line
(e.g. "[1913 Webster]"), the braces of cross references, the line breaks and the indentation;
letters written in GCIDE's codes become plain ones. Entries shared by several
headwords are written once; the database's own header entries (00-database-*) are skipped.

usage: zcat gcide.dict.dz | scripts/gcide_to_text.py gcide.index > gcide.txt
"""
import re
import sys

B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def b64_number(text):
    value = 0
    for ch in text:
        value = value * 64 + B64.index(ch)
    return value


PRONUNCIATION = re.compile(r"\\[^\\\n]*\\,?")
SOURCE_TAG = re.compile(r"^\s*\[[^\]]*\]\s*$")
SPACES = re.compile(r"\s+")
# GCIDE's ASCII codes for letters: ligatures "[ae]", diacritics such as '["o]' (o umlaut).
LIGATURE = re.compile(r"\[(ae|oe|AE|OE)\]")
DIACRITIC = re.compile(r"\[[\"`'^~=.,]([A-Za-z])\]")


def entry_text(raw):
    lines = [l for l in raw.splitlines() if l.strip() and not SOURCE_TAG.match(l)]
    text = PRONUNCIATION.sub("", " ".join(lines))
    text = DIACRITIC.sub(r"\1", LIGATURE.sub(r"\1", text)).replace("{", "").replace("}", "")
    return SPACES.sub(" ", text).strip()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: zcat gcide.dict.dz | gcide_to_text.py gcide.index > gcide.txt")
    data = sys.stdin.buffer.read()
    seen = set()
    with open(sys.argv[1], encoding="utf-8") as index:
        for number, line in enumerate(index, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) != 3:
                sys.exit(f"error: {sys.argv[1]}:{number}: expected 'word<TAB>offset<TAB>length'")
            word, offset, length = fields[0], b64_number(fields[1]), b64_number(fields[2])
            if word.startswith("00-database") or (offset, length) in seen:
                continue
            if offset + length > len(data):
                sys.exit(f"error: {sys.argv[1]}:{number}: entry '{word}' runs past the dictionary's end")
            seen.add((offset, length))
            text = entry_text(data[offset:offset + length].decode("utf-8", errors="replace"))
            if text:
                sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
