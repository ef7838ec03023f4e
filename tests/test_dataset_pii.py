"""The PII detector: recall on generated personal data, precision on look-alikes, redaction and masking."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import pytest
from faker import Faker

from datasets_app.engine.pii import PLACEHOLDERS, Finding, find_pii, redact, redact_row

PHONE_LOCALES = ("en_US", "de_DE", "fr_FR", "en_GB")
IBAN_LOCALES = ("en_US", "de_DE", "fr_FR", "en_GB", "es_ES", "it_IT", "nl_NL")
CARD_TYPES = ("visa16", "visa13", "visa19", "mastercard", "amex", "discover", "jcb15", "jcb16", "diners", "maestro")
SENTENCES = (
    "Please reach me at {} before Friday.",
    "{} is what the form says.",
    "My details: {}; thanks!",
    "Customer wrote (see {}) and asked for a refund.",
    "Send it to {}.",
)


def fakers(locales: tuple[str, ...], seed: int) -> list[Faker]:
    generators = [Faker(locale) for locale in locales]
    for offset, generator in enumerate(generators):
        generator.seed_instance(seed + offset)
    return generators


def in_groups(value: str, size: int = 4, separator: str = " ") -> str:
    return separator.join(value[i : i + size] for i in range(0, len(value), size))


def generated_phones() -> list[str]:
    return [fake.phone_number() for fake in fakers(PHONE_LOCALES, 100) for _ in range(250)]


def generated_emails() -> list[str]:
    values = []
    for fake in fakers((*PHONE_LOCALES, "es_ES", "it_IT"), 200):
        values += [fake.email() for _ in range(60)] + [fake.free_email() for _ in range(30)]
        values += [fake.company_email() for _ in range(30)]
    return values


def generated_cards() -> list[str]:
    numbers = [
        fake.credit_card_number(card_type)
        for fake in fakers(("en_US", "en_GB"), 300)
        for card_type in CARD_TYPES
        for _ in range(25)
    ]
    numbers = [number for number in numbers if 13 <= len(number) <= 19]  # 12-digit Maestro numbers are out of scope
    return numbers + [in_groups(n) for n in numbers[::2]] + [in_groups(n, separator="-") for n in numbers[1::2]]


def generated_ibans() -> list[str]:
    ibans = [fake.iban() for fake in fakers(IBAN_LOCALES, 400) for _ in range(100)]
    return ibans[::2] + [in_groups(iban) for iban in ibans[1::2]]


def in_sentences(values: list[str]) -> list[tuple[str, str]]:
    chooser = random.Random(7)
    return [(value, chooser.choice(SENTENCES).format(value)) for value in values]


def recall(kind: str, values: list[str]) -> float:
    found = sum(
        any(finding.kind == kind and finding.value == value for finding in find_pii(text))
        for value, text in in_sentences(values)
    )
    return found / len(values)


@pytest.mark.parametrize(
    ("kind", "generate"),
    [
        ("email", generated_emails),
        ("phone", generated_phones),
        ("credit_card", generated_cards),
        ("iban", generated_ibans),
    ],
)
def test_recall_on_generated_values_is_at_least_95_percent(kind: str, generate: Callable[[], list[str]]) -> None:
    values = generate()
    assert len(values) >= 500
    assert recall(kind, values) >= 0.95


def test_generated_values_are_redacted_with_typed_placeholders() -> None:
    samples = {
        "email": generated_emails()[:100],
        "phone": generated_phones()[::10],
        "credit_card": generated_cards()[::10],
        "iban": generated_ibans()[::10],
    }
    for kind, values in samples.items():
        detected = [
            (value, text)
            for value, text in in_sentences(values)
            if any(finding.value == value for finding in find_pii(text))
        ]
        assert len(detected) >= 0.95 * len(values)
        for value, text in detected:
            redacted = redact(text)
            assert value not in redacted
            assert PLACEHOLDERS[kind] in redacted


def test_masked_examples_never_show_the_whole_value() -> None:
    values = generated_emails()[:50] + generated_phones()[:50] + generated_cards()[:50] + generated_ibans()[:50]
    values += ["192.168.10.20", "2001:db8::8a2e:370:7334", "AKIAIOSFODNN7EXAMPLE", "a@b.co"]
    findings = [finding for value in values for finding in find_pii(f"value: {value}")]
    assert len(findings) >= len(values) * 0.95
    for finding in findings:
        assert finding.value not in finding.masked
        assert "*" in finding.masked


@pytest.mark.parametrize(
    ("value", "masked"),
    [
        ("jane.doe@example.com", "j***@example.com"),
        ("4242 4242 4242 4242", "**** **** **** 4242"),
        ("DE89 3704 0044 0532 0130 00", "DE89 **** **** **** **30 00"),
        ("+1 555 123 0123", "+1 *** *** 0123"),
    ],
)
def test_masked_forms_match_the_documented_examples(value: str, masked: str) -> None:
    (finding,) = find_pii(f"Here: {value}.")
    assert finding.value == value
    assert finding.masked == masked


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("Call +1 (555) 123-4567 today", "phone", "+1 (555) 123-4567"),
        ("Ruf an: 030 1234567", "phone", "030 1234567"),
        ("Office +44 20 7946 0958.", "phone", "+44 20 7946 0958"),
        ("E.164 +14155552671 works", "phone", "+14155552671"),
        ("Appelez le 04 15 39 15 00", "phone", "04 15 39 15 00"),
        ("US 206.269.0743x9150 ext", "phone", "206.269.0743x9150"),
        ("Pay DE89370400440532013000 now", "iban", "DE89370400440532013000"),
        ("Amex 3782 822463 10005 please", "credit_card", "3782 822463 10005"),
        ("server 10.20.30.40 is down", "ip_address", "10.20.30.40"),
        ("via 2001:db8::1 routed", "ip_address", "2001:db8::1"),
        ("aws AKIAIOSFODNN7EXAMPLE key", "secret", "AKIAIOSFODNN7EXAMPLE"),
        ("token ghp_" + "a1B2c3D4e5" * 4 + " here", "secret", "ghp_" + "a1B2c3D4e5" * 4),
        (
            "pat github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
            "secret",
            "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
        ),
        ("slack xoxb-123456789012-abcdefGHIJKL", "secret", "xoxb-123456789012-abcdefGHIJKL"),
        ("openai sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t", "secret", "sk-proj-Ab3dEf6hIj9kLm2nOp5qRs8t"),
        ("studio atl_0123456789ab_" + "Zx9" * 12, "secret", "atl_0123456789ab_" + "Zx9" * 12),
        ("team key atk_abcdef012345_" + "Qw-7" * 10, "secret", "atk_abcdef012345_" + "Qw-7" * 10),
        ('config api_key = "f3A9kQ2mZ7xW1pL8vB4n"', "secret", "f3A9kQ2mZ7xW1pL8vB4n"),
        ("secret: 9sKd83JfmQ02lZpX7wVb", "secret", "9sKd83JfmQ02lZpX7wVb"),
        ("Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.Zm9vYmFy12", "secret", "eyJhbGciOiJIUzI1NiJ9.e30.Zm9vYmFy12"),
    ],
)
def test_detects_each_kind_in_its_common_formats(text: str, kind: str, value: str) -> None:
    assert [(finding.kind, finding.value) for finding in find_pii(text)] == [(kind, value)]


def test_private_key_block_is_one_secret_including_its_body() -> None:
    text = (
        "key:\n-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEAu1SU1LfVLPHCozMxH2Mo\n"
        "4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onL\n-----END RSA PRIVATE KEY-----\nbye"
    )
    assert redact(text) == "key:\n[SECRET]\nbye"


@pytest.mark.parametrize(
    "text",
    [
        "On 2024-01-15 at 10:30 we shipped release 2.3.1 (build 20240115).",
        "Dates: 15.01.2024, 01/15/2024, 2024/01/15, 15-01-2024 and 01/02/2024 12 people came.",
        "In 1999, 2000 and 2001 the town grew from 83 000 to 1 250 000 people; 1,234,567.89 USD.",
        "Python 3.11.7, CUDA 12.1, torch 2.13.0, Windows 10.0.19041.1052, v1.2.3-rc.4.",
        "ISBN 978-3-16-148410-0 and 0-306-40615-2; ZIP 12345-6789; order #100234; port 8080.",
        "Timestamps 1700000000000 and 1700000000; lr=2e-5; batch 32; 3.14159265358979.",
        "Matrix 0 0 0 0 0 0 0 0 0 0 and decimals 0.123456789 and 0.5.",
        "sha 3f786850e387550fdab836ed7e6dc881de23001b uuid 123e4567-e89b-12d3-a456-426614174000",
        "Loopback 127.0.0.1, ::1 and 0.0.0.0; invalid 999.10.10.10; times 12:30:45; std::vector<int>.",
        "The password is hunter2; api_key=YOUR_API_KEY_HERE; secret: my_secret_value; token: 50256.",
        "Use the sk-learn wrapper in your task-management scripts; mac 00:1A:2B:3C:4D:5E.",
        "The meeting is on Tuesday; bring 3 copies of the 12-page report and 2 pens.",
    ],
)
def test_dates_years_versions_and_prose_are_not_flagged(text: str) -> None:
    assert find_pii(text) == []


def test_card_numbers_failing_luhn_are_not_flagged() -> None:
    numbers = [card for card in generated_cards()[:300] if " " not in card and "-" not in card]
    for number in numbers:
        wrong = number[:-1] + str((int(number[-1]) + 1) % 10)
        assert find_pii(f"Card {wrong} on file.") == [], wrong
        assert find_pii(f"Card {in_groups(wrong)} on file.") == [], wrong


def test_ibans_failing_mod_97_are_not_flagged() -> None:
    for iban in generated_ibans()[:300]:
        compact = iban.replace(" ", "")
        wrong = compact[:2] + f"{(int(compact[2:4]) + 1) % 100:02d}" + compact[4:]
        assert not [finding for finding in find_pii(f"IBAN {wrong}.") if finding.kind == "iban"], wrong
    assert find_pii("IBAN DE88 3704 0044 0532 0130 00 and DE89370400440532013001") == []


def test_overlapping_findings_keep_the_longest() -> None:
    (finding,) = find_pii("GB18 KECQ 2744 5514 0193 28")  # its digits alone pass the Luhn check
    assert finding.kind == "iban"


def test_redact_replaces_every_kind_with_its_placeholder() -> None:
    text = (
        "Mail bob@example.org or call +49 30 1234567; card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32, "
        "host 203.0.113.9, key AKIAIOSFODNN7EXAMPLE."
    )
    assert redact(text) == (
        "Mail [EMAIL] or call [PHONE]; card [CREDIT_CARD], IBAN [IBAN], host [IP_ADDRESS], key [SECRET]."
    )


def test_redact_row_keeps_the_structure_of_a_chat_row() -> None:
    row: dict[str, Any] = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "I am ann@example.com"},
            {"role": "assistant", "content": "Noted, Ann."},
        ],
        "id": 7,
    }
    assert redact_row(row) == {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "I am [EMAIL]"},
            {"role": "assistant", "content": "Noted, Ann."},
        ],
        "id": 7,
    }
    assert row["messages"][1]["content"] == "I am ann@example.com"  # the input row is not changed


def test_redact_row_covers_every_text_field_of_preference_and_instruction_rows() -> None:
    preference = {
        "prompt": [{"role": "user", "content": "Who is at 198.51.100.7?"}],
        "chosen": [{"role": "assistant", "content": "I can't say."}],
        "rejected": [{"role": "assistant", "content": "Call 020 7946 0958"}],
    }
    instruction = {"prompt": "Write to max@example.de", "completion": "Done: max@example.de"}
    assert redact_row(preference)["prompt"][0]["content"] == "Who is at [IP_ADDRESS]?"
    assert redact_row(preference)["rejected"][0]["content"] == "Call [PHONE]"
    assert redact_row(instruction) == {"prompt": "Write to [EMAIL]", "completion": "Done: [EMAIL]"}
    assert redact_row({"text": "plain"}) == {"text": "plain"}


def test_findings_report_their_span_in_the_text() -> None:
    text = "a: x@y.org, b: 192.0.2.1"
    assert find_pii(text) == [Finding("email", 3, 10, "x@y.org"), Finding("ip_address", 15, 24, "192.0.2.1")]
