"""Write the demo task's sample files: support questions to a fictional coffee roaster, each with its fixed answer.

``support_train.jsonl`` is what the demo trains on, ``support_eval.jsonl`` what its eval suite asks. The questions
of both are phrasings of six requests (opening hours, delivery, returns, password, subscription, a person), cut
from the same wordings but never the same sentence: every eval question is absent from the training file, and
some of its wordings are held out of training altogether. Run ``python datasets_app/samples/demo/make_support_rows.py``
to write them again (seeded: the same files every time).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 14

ANSWERS = {
    "hours": "We are open Monday to Saturday, 8 am to 6 pm.",
    "delivery": "Orders ship within 2 working days and arrive in 3 to 5 days.",
    "returns": "Unopened bags can be returned within 30 days for a full refund.",
    "password": "Use the Forgot password link on the sign-in page.",
    "subscription": "Open Account, then Subscriptions, and press Cancel.",
    "person": "Write to help@kestrel.example and a person replies within a day.",
}
"""Kestrel Coffee's one answer to each kind of request (the company and the address are made up)."""

QUESTIONS = {
    "hours": [
        "When are you open?",
        "What are your opening hours?",
        "Are you open on Saturday?",
        "What time do you close?",
        "What time does the shop open?",
        "Are you open on Sundays?",
        "Until what time are you open today?",
        "What are the shop hours?",
        "Is the shop open in the morning?",
        "When do you open tomorrow?",
        "What hours is your store open?",
        "Are you open late in the evening?",
    ],
    "delivery": [
        "How long does delivery take?",
        "When will my order arrive?",
        "How fast do you ship?",
        "When do you ship my coffee?",
        "How many days until my package arrives?",
        "My order has not arrived yet, how long does shipping take?",
        "How long is the delivery time?",
        "When will you send my order?",
        "How quickly will my beans be delivered?",
        "How long until my parcel ships?",
        "What is your shipping time?",
        "How soon does an order arrive?",
    ],
    "returns": [
        "Can I return my coffee?",
        "How do I get a refund?",
        "Can I send back a bag I did not open?",
        "What is your return policy?",
        "I want my money back for an unopened bag.",
        "Do you accept returns?",
        "Can I get a refund on my order?",
        "How many days do I have to return a bag?",
        "Is it possible to return beans I bought?",
        "I would like to return my order.",
        "Can I have a refund for coffee I did not like?",
        "How do returns work?",
    ],
    "password": [
        "I forgot my password.",
        "How do I reset my password?",
        "I cannot sign in to my account.",
        "My password does not work.",
        "How can I change my password?",
        "I lost my password, what do I do?",
        "I am locked out of my account.",
        "How do I log in if I forgot the password?",
        "The sign-in page says my password is wrong.",
        "Can you reset my password?",
        "I need a new password.",
        "How do I recover my account password?",
    ],
    "subscription": [
        "How do I cancel my subscription?",
        "I want to stop my monthly coffee.",
        "Can I cancel my plan?",
        "How do I end my subscription?",
        "Please cancel my coffee subscription.",
        "I no longer want the monthly delivery.",
        "How can I stop my subscription?",
        "Where do I cancel the subscription?",
        "Is there a fee to cancel my subscription?",
        "I want to unsubscribe from the coffee club.",
        "How do I turn off my subscription?",
        "Can I stop the monthly bags?",
    ],
    "person": [
        "Can I talk to a person?",
        "How do I contact support?",
        "I want to speak to a human.",
        "What is your support e-mail?",
        "How can I reach your team?",
        "Is there someone I can write to?",
        "How do I get in touch with you?",
        "Can a real person help me?",
        "Who can I contact about a problem?",
        "What is your contact address?",
        "I need to talk to someone on your team.",
        "How do I reach customer service?",
    ],
}
"""Twelve wordings per request; the last ``HELD_OUT_WORDINGS`` of each are only ever asked by the eval file."""

OPENERS = ["", "Hi! ", "Hello, ", "Hey, ", "Good morning. ", "Quick question: "]
CLOSERS = ["", " Thanks!", " Thank you.", " Thanks in advance."]
HELD_OUT_WORDINGS = 3
EVAL_SEEN_WORDINGS = 2
"""Eval questions per request on wordings the training file also uses (with another opener or closer)."""


def question(opener: str, wording: str, closer: str) -> str:
    """One customer message: an optional greeting, the request, an optional thanks."""
    if opener.endswith(", "):
        wording = wording[0].lower() + wording[1:]
    return f"{opener}{wording}{closer}"


def chat_row(text: str, answer: str) -> dict[str, object]:
    """A chat row as the studio reads it: the question, then the fixed answer."""
    return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": answer}]}


def build_rows(rng: random.Random) -> tuple[list[dict[str, object]], list[dict[str, object]]]:
    """The training rows and the eval rows (no question in both), each shuffled."""
    train: list[dict[str, object]] = []
    evaluation: list[dict[str, object]] = []
    for intent, wordings in QUESTIONS.items():
        answer = ANSWERS[intent]
        seen, held_out = wordings[:-HELD_OUT_WORDINGS], wordings[-HELD_OUT_WORDINGS:]
        combos = [(opener, closer) for opener in OPENERS for closer in CLOSERS]
        asked: set[str] = set()
        for wording in seen:
            for opener, closer in rng.sample(combos, 4):
                asked.add(question(opener, wording, closer))
        for text in sorted(asked):
            train.append(chat_row(text, answer))
        # A held-out wording is asked once, with a greeting (the same draws as when the files were written).
        eval_questions = [question(rng.choice(combos[1:])[0], wording, "") for wording in held_out]
        while len(eval_questions) < HELD_OUT_WORDINGS + EVAL_SEEN_WORDINGS:
            text = question(rng.choice(OPENERS), rng.choice(seen), rng.choice(CLOSERS))
            if text not in asked and text not in eval_questions:
                eval_questions.append(text)
        evaluation.extend(chat_row(text, answer) for text in eval_questions)
    rng.shuffle(train)
    rng.shuffle(evaluation)
    return train, evaluation


def write(path: Path, rows: list[dict[str, object]]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


if __name__ == "__main__":
    train_rows, eval_rows = build_rows(random.Random(SEED))
    write(HERE / "support_train.jsonl", train_rows)
    write(HERE / "support_eval.jsonl", eval_rows)
    print(f"{len(train_rows)} training rows, {len(eval_rows)} eval rows")
