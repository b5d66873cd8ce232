#!/usr/bin/env python3
"""Write the demo SFT set: two-digit addition as conversations (maintainer tool).

    python3 tools/make_demo_sft.py   # -> dataset/demo/sft_train.jsonl, sft_heldout.jsonl

Every pair a + b with 10 <= a, b <= 99 is one conversation in minimind's SFT format; the
question is phrased one of several ways, the answer works the sum out column by column
and ends with it (see worked_answer), and `llmctl eval --exact-match` scores the whole
answer. 200 pairs (fixed seed) are held out: the demo's score is on
sums the model never saw.
"""
import json
import os
import random

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "dataset", "demo")
PHRASES = [
    "What is {a} + {b}?",
    "{a}+{b}=",
    "Add {a} and {b}.",
    "Compute {a} + {b}.",
    "What do you get when you add {a} to {b}?",
    "{a} 加 {b} 等于多少？",
]
HELDOUT = 200


def worked_answer(a, b):
    """Column addition written out: units, tens with the carry, then the sum.
    89 + 67 -> "9+7=16, 8+6+1=15, 156". Each step is a one-digit fact or a copy, which a
    small model learns in minutes; the bare sum alone takes it far longer."""
    units = a % 10 + b % 10
    carry = units // 10
    tens = a // 10 + b // 10 + carry
    return f"{a % 10}+{b % 10}={units}, {a // 10}+{b // 10}+{carry}={tens}, {a + b}"


def conversation(rng, a, b):
    q = rng.choice(PHRASES).format(a=a, b=b)
    return {"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": worked_answer(a, b)}]}


def main():
    rng = random.Random(2024)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    splits = {"sft_heldout.jsonl": pairs[:HELDOUT], "sft_train.jsonl": pairs[HELDOUT:]}
    for name, ps in splits.items():
        with open(os.path.join(OUT, name), "w", encoding="utf-8") as f:
            for a, b in ps:
                f.write(json.dumps(conversation(rng, a, b), ensure_ascii=False) + "\n")
        print(name, len(ps))


if __name__ == "__main__":
    main()
