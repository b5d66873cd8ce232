#!/usr/bin/env python3
"""Rebuild dataset/demo/ from Debian packages (maintainer tool, not run by `make`).

Sources (both public domain / free, shipped by Debian 12):
  * bible-kjv   -> the King James Bible; one document per chapter (verse numbers dropped)
  * fortunes-zh -> Chinese fortunes, 300 Tang poems, 100 Song lyrics; one document per entry

Output is minimind pretrain format, one {"text": ...} per line. Every 20th document
(deterministic) goes to the held-out split.

    apt-get install bible-kjv fortunes-zh && python3 tools/make_demo_corpus.py
"""
import json
import os
import re
import subprocess
from itertools import zip_longest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "dataset", "demo")
ANSI = re.compile(r"\x1b\[[0-9;]*m")
VERSE = re.compile(r"^([1-3]?[A-Za-z]+)(\d+):(\d+) (.*)$")


def bible_chapters():
    text = subprocess.run(["bible", "-f", "gen1:1-rev22:21"], check=True,
                          capture_output=True, text=True).stdout
    chapter, key = [], None
    for line in text.splitlines():
        m = VERSE.match(line)
        if not m:
            continue
        k = (m.group(1), m.group(2))
        if k != key and chapter:
            yield " ".join(chapter)
            chapter = []
        key = k
        chapter.append(m.group(4).strip())
    if chapter:
        yield " ".join(chapter)


def fortunes(name):
    with open(f"/usr/share/games/fortunes/{name}", encoding="utf-8", errors="replace") as f:
        raw = ANSI.sub("", f.read())
    for entry in raw.split("\n%\n"):
        entry = entry.strip("\n")
        if len(entry) >= 8:
            yield entry


def main():
    docs = []
    # interleave so both languages land in both splits
    for en, zh in zip_longest(bible_chapters(), fortunes("chinese")):
        docs += [d for d in (en, zh) if d]
    docs += list(fortunes("tang300")) + list(fortunes("song100"))
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "train.jsonl"), "w", encoding="utf-8") as tr, \
         open(os.path.join(OUT, "heldout.jsonl"), "w", encoding="utf-8") as ho:
        for i, d in enumerate(docs):
            (ho if i % 20 == 19 else tr).write(json.dumps({"text": d}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
