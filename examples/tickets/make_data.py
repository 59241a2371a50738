"""Writes the tickets example's data (deterministic: run it again and the files come out byte-identical).

Support tickets made up for this example from the phrase lists below (no real customer text), routed to one of
three teams (billing, technical, account) and naming the product they are about. 300 training rows
(train.jsonl) and 120 for the official dev set (dev.csv), which the paper's `small` protocol splits in halves
into validation and test. Licence: CC0 1.0 (public domain), like the script; see LICENSE.md beside it.

    python examples/tickets/make_data.py
"""
from __future__ import annotations

import csv
import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRODUCTS = ["photo app", "cloud drive", "smart watch", "music service", "video editor", "password manager"]
ISSUES = {
    "billing": ["I was charged twice for the {p}", "my invoice for the {p} shows the wrong amount",
                "please refund my last payment for the {p}", "the {p} subscription renewed at a higher price",
                "my card was declined when I paid for the {p}"],
    "technical": ["the {p} crashes when I open it", "the {p} does not sync any more",
                  "after the update the {p} is very slow", "the {p} shows an error on start",
                  "I cannot connect the {p} to my network"],
    "account": ["I forgot the password of my {p} account", "please change the email address on my {p} account",
                "how do I delete my {p} account", "someone else logged in to my {p} account",
                "I want to add a second user to my {p} account"],
}
OPENERS = ["", "Hello, ", "Hi team, ", "Good morning, ", "Urgent: "]
CLOSERS = ["", " Thanks.", " Please help.", " Thank you in advance.", " This is the second time I write."]
SUBJECTS = {"billing": ["Payment problem", "Question about my bill", "Charge"],
            "technical": ["Bug", "It does not work", "Problem with the app"],
            "account": ["Login", "My account", "Account settings"]}


def rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        team = rng.choice(sorted(ISSUES))
        product = rng.choice(PRODUCTS)
        body = rng.choice(OPENERS) + rng.choice(ISSUES[team]).format(p=product) + "." + rng.choice(CLOSERS)
        out.append({"subject": rng.choice(SUBJECTS[team]), "body": body.strip(), "team": team, "product": product})
    return out


def main() -> None:
    with open(HERE / "train.jsonl", "w") as fh:
        for row in rows(300, seed=1):
            fh.write(json.dumps(row) + "\n")
    with open(HERE / "dev.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["subject", "body", "team", "product"])
        writer.writeheader()
        writer.writerows(rows(120, seed=2))


if __name__ == "__main__":
    main()
